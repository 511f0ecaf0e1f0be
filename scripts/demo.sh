#!/usr/bin/env bash
# The main job on an embedded default, no servers: sets up the Python/libtorch environment if
# needed, builds `neurodiff`, trains the model organisms (a tiny Llama pretrained and narrowly
# fine-tuned on CPU; about six minutes the first time, then cached under ~/.cache/neurodiff) and
# audits astronomy-full against its base with every analysis: the weights; on the built-in
# generic corpus the activation differences and the differential logit lens; the readable
# traces, cross-model activation patching, model stitching and steering, graded against the
# organism's ground truth; then, for a trained organism, a crosscoder and an SAE on the
# activation differences (Tier III) on generic text mixed with its domain's held-out text. Ends
# with the paths of both report.html files. Pass another organism name to
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
$bin audit "$dir/base" "${target[@]}" --analyses weights,activations,logit-lens,traces,cmap,stitching,steering --out "out/audit-$organism"
# Tier III: a crosscoder and an SAE on the differences, on generic text interleaved with the
# fine-tune's held-out domain text (a trained organism's), at block 4.
domain="${organism%%-*}"
if [ -f "$dir/data/$domain-heldout.jsonl" ]; then
  python - "$dir/data/$domain-heldout.jsonl" out/mixed-$domain.jsonl <<'PY'
import gzip, json, sys
generic = [json.loads(l)["text"] for l in gzip.open("crates/core/corpus/generic.jsonl.gz", "rt")]
domain = open(sys.argv[1]).read().splitlines()
with open(sys.argv[2], "w") as out:
    for g, d in zip(generic, domain):
        out.write(json.dumps({"text": g}) + "\n" + d + "\n")
PY
  $bin audit "$dir/base" "${target[@]}" --analyses crosscoder,sae-diff --corpus "out/mixed-$domain.jsonl" \
    --max-samples 512 --seq-len 32 --shard-samples 128 --dict-layer 4 --dict-expansion 4 --dict-k 16 \
    --dict-batch 512 --dict-steps 1500 --dict-lr 3e-3 --dict-samples 512 --out "out/audit-$organism-dictionaries"
fi
