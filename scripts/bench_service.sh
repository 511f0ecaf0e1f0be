#!/usr/bin/env bash
# The service's load benchmark (crates/cli/benches/service_load.rs) on a release build, against
# PostgreSQL and Redis as these machines run them and Garage (started if needed).
#   scripts/bench_service.sh [N]     N concurrent audits, default 20
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
source scripts/services.sh
cargo bench -p neurodiff-cli --bench service_load -- "${1:-20}"
