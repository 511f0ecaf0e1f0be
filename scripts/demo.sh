#!/usr/bin/env bash
# The main job on an embedded default, no servers: sets up the Python/libtorch environment if
# needed, builds `neurodiff`, writes model organisms (a base and copies with planted changes of
# known place and rank) and audits the rank-update organism against its base: the weights, and
# both models run on the built-in generic corpus (activation differences per block and hook, the
# differential logit lens). Ends with the path of report.html. Pass another organism name to
# audit that one instead: attn-scaled or lora (planted), or a trained one, {astronomy,cooking,
# sailing}-{full,blocks,lora}: a tiny Llama pretrained and narrowly fine-tuned on CPU (about six
# minutes the first time, then cached under ~/.cache/neurodiff).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release -p neurodiff-cli
bin=target/release/neurodiff
organism="${1:-rank-update}"
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
exec $bin audit "$dir/base" "${target[@]}" --analyses weights,activations,logit-lens --out "out/audit-$organism"
