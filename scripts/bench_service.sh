#!/usr/bin/env bash
# The service's load benchmark (crates/cli/benches/service_load.rs) on a release build, against
# PostgreSQL and Redis as these machines run them and Garage (started if needed).
#   scripts/bench_service.sh [N]     N concurrent audits, default 20
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
source scripts/garage.sh
cargo bench -p neurodiff-cli --bench service_load -- "${1:-20}"
