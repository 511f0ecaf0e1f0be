#!/usr/bin/env bash
# Benchmark of layer-range shards over the service (crates/cli/benches/ranges.rs) on the
# Llama-3.2-1B-shaped pair of scripts/bench_scale.py (made first if missing), against
# PostgreSQL and Redis as these machines run them and Garage (started if needed).
#   scripts/bench_ranges.sh [RANGE_BYTES]     default 1e9 (4 links of 4 blocks)
#   ND_BENCH_PROFILE=debug scripts/bench_ranges.sh    the debug build (no release build)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
source scripts/services.sh
[ -f out/bench-scale/ft/model.safetensors ] ||
  python -c "import sys; sys.path.insert(0, 'scripts'); import bench_scale as b; b.make_pair('out/bench-scale')"
if [ "${ND_BENCH_PROFILE:-release}" = debug ]; then
  cargo test --workspace --bench ranges -- "${1:-1000000000}"
else
  cargo bench -p neurodiff-cli --bench ranges -- "${1:-1000000000}"
fi
