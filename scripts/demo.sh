#!/usr/bin/env bash
# The main job on an embedded default, no servers: sets up the Python/libtorch environment if
# needed, builds `neurodiff`, trains the model organisms (a tiny Llama pretrained and narrowly
# fine-tuned on CPU; about six minutes the first time, then cached under ~/.cache/neurodiff) and
# audits astronomy-full against its base with every analysis: the weights; on the built-in
# generic corpus the activation differences and the differential logit lens; the readable
# traces, cross-model activation patching, model stitching and steering, graded against the
# organism's ground truth. Ends with the path of report.html. Pass another organism name to
# audit that one instead: {astronomy,cooking,sailing}-{full,blocks,lora} (trained), or
# rank-update, attn-scaled, lora (planted changes of known place and rank).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release -p neurodiff-cli
bin=target/release/neurodiff
organism="${1:-astronomy-full}"
case "$organism" in
  *-full|*-blocks|*-lora) dir=out/trained; $bin organisms --trained --out "$dir" ;;
  *) dir=out/organisms; $bin organisms --out "$dir" ;;
esac
if [ -f "$dir/$organism/adapter_config.json" ]; then
  target=(--adapter "$dir/$organism")
else
  target=("$dir/$organism")
fi
echo "ground truth: $(tr -d '\n' < "$dir/$organism/ground_truth.json" | tr -s ' ' | cut -c1-600)" >&2
exec $bin audit "$dir/base" "${target[@]}" --analyses weights,activations,logit-lens,traces,cmap,stitching,steering --out "out/audit-$organism"
