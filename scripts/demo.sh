#!/usr/bin/env bash
# The main job on an embedded default, no servers: sets up the Python/libtorch environment if
# needed, builds `neurodiff`, writes model organisms (a base and copies with planted changes of
# known place and rank) and audits the rank-update organism against its base: the weights, and
# both models run on the built-in generic corpus (activation differences per block and hook, the
# differential logit lens). Ends with the path of report.html. Pass another organism name
# (attn-scaled, lora) to audit that one instead.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release -p neurodiff-cli
bin=target/release/neurodiff
organism="${1:-rank-update}"
$bin organisms --out out/organisms
if [ "$organism" = lora ]; then
  target=(--adapter out/organisms/lora)
else
  target=(out/organisms/"$organism")
fi
echo "ground truth: $(cat out/organisms/$organism/ground_truth.json | tr -d '\n ' )" >&2
exec $bin audit out/organisms/base "${target[@]}" --analyses weights,activations,logit-lens --out "out/audit-$organism"
