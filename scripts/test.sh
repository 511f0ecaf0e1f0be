#!/usr/bin/env bash
# Runs NeuroDiff's whole test suite on a fresh machine: sets up the Python/libtorch environment
# if needed, builds, runs the Rust tests (parity with transformers on the committed fixtures,
# hooks, malformed input, hub cache, the CLI, the store on PostgreSQL, Redis and S3, the API, and
# the whole service with a scheduler and workers), then checks `neurodiff inspect` against
# transformers on freshly made checkpoints that are not among the fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# PostgreSQL as these machines run it; the store tests make their own databases on it.
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
# Garage (S3): installed once into a fixed prefix, started if not running, AWS_* exported.
source scripts/garage.sh
cargo build --workspace --all-targets
cargo test --workspace "$@"
python scripts/parity.py check-inspect target/debug/neurodiff --seed 7
