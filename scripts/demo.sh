#!/usr/bin/env bash
# The main job on an embedded default, no servers: sets up the Python/libtorch environment if
# needed, builds `neurodiff`, and inspects a bundled tiny Llama-family checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build -p neurodiff-cli
exec target/debug/neurodiff inspect crates/core/tests/fixtures/llama \
  --prompt "${1:-The quick brown fox jumps over the lazy dog}"
