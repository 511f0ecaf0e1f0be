#!/usr/bin/env bash
# Runs NeuroDiff's whole test suite on a fresh machine: sets up the Python/libtorch environment
# if needed, builds, runs the Rust tests (parity with transformers on the committed fixtures,
# hooks, malformed input, hub cache, the CLI), then checks `neurodiff inspect` against
# transformers on freshly made checkpoints that are not among the fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --workspace --all-targets
cargo test --workspace "$@"
python scripts/parity.py check-inspect target/debug/neurodiff --seed 7
