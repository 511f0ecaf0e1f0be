#!/usr/bin/env bash
# Benchmark of traces, CMAP, stitching and steering on a GPT-2-small-sized pair
# (crates/cli/benches/tier2.rs) on a release build, embedded and over the service with one and
# two workers, against PostgreSQL and Redis as these machines run them and Garage.
#   scripts/bench_tier2.sh [SAMPLES]     samples of the built-in corpus, default 16
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
source scripts/services.sh
cargo bench -p neurodiff-cli --bench tier2 -- "${1:-16}"
