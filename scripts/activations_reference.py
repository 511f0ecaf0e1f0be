"""Independent reference for NeuroDiff's activation analyses and differential logit lens.

The states are read where transformers and TransformerLens put them
(transformers' `output_hidden_states`; forward hooks on the decoder layer, its attention and its
MLP, i.e. TransformerLens' `blocks.{l}.hook_resid_pre/hook_attn_out/hook_resid_mid/hook_mlp_out/
hook_resid_post`, `transformer_lens/components/transformer_block.py`), and the lens as the
diffing toolkit reads a residual state (science-of-finetuning/diffing-toolkit
`src/diffing/utils/model.py`, `logit_lens`: the model's final norm, then its unembedding);
KL(p_ft || p_base) per token over the shared vocabulary.

  python scripts/activations_reference.py check NEURODIFF_BIN

For each committed parity fixture (crates/core/tests/fixtures: llama, gpt2, qwen2, qwen3, olmo2) as the base, a
fine-tuned copy is made here with block 1 perturbed (seeded noise, stored in fp32), and a small
JSONL corpus of samples of varied length is written. `neurodiff audit BASE FT --analyses
activations,logit-lens` runs on it with a batch size and shard size that split the samples
unevenly; this script computes the contract's statistics with transformers in float64, one
sample at a time with no padding, and compares:

  activations.layers[]: mean_diff_norm, mean_rel_diff, mean_cosine for every block and hook
  logit_lens.layers[].kl_mean and logit_lens.output.kl_mean

to 1e-4 relative. A block's `hook_resid_post` is its output before any final norm (a forward hook
on the decoder layer, as TransformerLens' `blocks.{l}.hook_resid_post` and the diffing toolkit's
nnsight reads of `layers[l].output` take it; transformers' last `hidden_states` entry is normed),
so the last block's lens equals the output logits and its KL equals the output's. The blocks before the perturbed one must be exactly zero (cosine exactly 1).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors.torch import load_file, save_file

transformers.utils.logging.disable_progress_bar()
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "crates", "core", "tests", "fixtures")
ARCHS = ["llama", "gpt2", "qwen2", "qwen3", "olmo2", "gemma2", "gemma3_text", "phi3"]
PERTURBED = 1
SEQ_LEN = 24
TOLERANCE = 1e-4
SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    "Which layers moved?",
    "Is the change low-rank, and did a narrow fine-tune leave readable traces in the model?",
    "the of and to in is that for it as was with be by on not he I this are or his " * 3,
    "NeuroDiff compares a base model with its fine-tuned checkpoint.",
    "Safety teams audit adapters.",
    "model diffing audits what fine-tuning changed, layer by layer, before every release",
]
HOOKS = ["hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"]


def make_finetune(base, out):
    shutil.copytree(base, out)
    for f in os.listdir(out):
        if f.endswith(".safetensors") and f != "reference.safetensors":
            tensors = load_file(os.path.join(out, f))
            g = torch.Generator().manual_seed(11)
            for k, v in tensors.items():
                if f".{PERTURBED}." in k and v.dim() == 2:
                    noise = 0.05 * torch.randn(v.shape, generator=g)
                    tensors[k] = (v.float() + noise * v.float().std()).to(v.dtype)
            save_file(tensors, os.path.join(out, f), metadata={"format": "pt"})
    os.remove(os.path.join(out, "reference.safetensors"))


def parts(model):
    """Blocks, each block's attention and MLP modules, the final norm and the unembedding."""
    if hasattr(model, "transformer"):
        blocks = model.transformer.h
        return blocks, [(b.attn, b.mlp) for b in blocks], model.transformer.ln_f
    blocks = model.model.layers
    if hasattr(blocks[0], "post_feedforward_layernorm"):
        # Norms after each sublayer (OLMo 2): what attention and the MLP add to the residual
        # stream is the normed output, as hook_attn_out and hook_mlp_out define it.
        return (blocks, [(b.post_attention_layernorm, b.post_feedforward_layernorm) for b in blocks],
                model.model.norm)
    return blocks, [(b.self_attn, b.mlp) for b in blocks], model.model.norm


def unembed(model, x):
    """The unembedding of a normed state. The toolkit's `logit_lens` is lm_head(norm(x)); where a
    model soft-caps its logits (Gemma 2's `final_logit_softcapping`), NeuroDiff's lens applies the
    same cap so that the last block's lens is the model's own output. This is the one deviation
    from the toolkit's lens, and only for such models (the cap is monotonic: ranks are unchanged)."""
    logits = model.get_output_embeddings()(x)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def run(model, ids):
    """hidden_states, and per block the attention and MLP outputs and the block's own output.

    The block's output is caught by a forward hook on the decoder layer itself, as TransformerLens'
    `blocks.{l}.hook_resid_post` and nnsight's `model.layers[l].output[0]` read it: before any
    final norm. transformers' `hidden_states[n]` is the final norm's output instead, so
    `hidden_states[l + 1]` is used nowhere here for a block's state."""
    blocks, mods, _ = parts(model)
    caught = {}
    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_hook(
            lambda m, a, o, i=i: caught.__setitem__(("block", i), o[0] if isinstance(o, tuple) else o)))
    for i, (attn, mlp) in enumerate(mods):
        handles.append(attn.register_forward_hook(
            lambda m, a, o, i=i: caught.__setitem__(("attn", i), o[0] if isinstance(o, tuple) else o)))
        handles.append(mlp.register_forward_hook(
            lambda m, a, o, i=i: caught.__setitem__(("mlp", i), o)))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    for h in handles:
        h.remove()
    return out, caught


def states(out, caught, layer, hook):
    hs = out.hidden_states
    if hook == "hook_resid_pre":
        return hs[layer][0]
    if hook == "hook_attn_out":
        return caught[("attn", layer)][0]
    if hook == "hook_resid_mid":
        return hs[layer][0] + caught[("attn", layer)][0]
    if hook == "hook_mlp_out":
        return caught[("mlp", layer)][0]
    return caught[("block", layer)][0]


def reference(base_dir, ft_dir):
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(base_dir, "tokenizer.json"))
    load = lambda d: transformers.AutoModelForCausalLM.from_pretrained(
        d, dtype=torch.float64, attn_implementation="eager").eval()
    base, ft = load(base_dir), load(ft_dir)
    n = base.config.num_hidden_layers
    sums = {(l, h): [0.0, 0.0, 0.0] for l in range(n) for h in HOOKS}
    kl = {l: 0.0 for l in list(range(n)) + ["output"]}
    tokens = 0
    for text in SAMPLES:
        ids = torch.tensor([tok(text)["input_ids"][:SEQ_LEN]])
        ob, cb = run(base, ids)
        of, cf = run(ft, ids)
        tokens += ids.shape[1]
        for l in range(n):
            for h in HOOKS:
                xb, xf = states(ob, cb, l, h), states(of, cf, l, h)
                d = (xf - xb).norm(dim=-1)
                bn, fn = xb.norm(dim=-1), xf.norm(dim=-1)
                s = sums[(l, h)]
                s[0] += d.sum().item()
                s[1] += (d / bn.clamp_min(1e-30)).sum().item()
                s[2] += ((xf * xb).sum(-1) / (bn * fn).clamp_min(1e-30)).sum().item()
        for l in list(range(n)) + ["output"]:
            if l == "output":
                lb, lf = ob.logits[0], of.logits[0]
            else:
                lb = unembed(base, parts(base)[2](states(ob, cb, l, "hook_resid_post")))
                lf = unembed(ft, parts(ft)[2](states(of, cf, l, "hook_resid_post")))
                if l == n - 1:
                    # The last block's lens is the model's own output.
                    for got, want in [(lb, ob.logits[0]), (lf, of.logits[0])]:
                        assert (got - want).abs().max().item() < 1e-9, "last-block lens != logits"
            v = min(lb.shape[-1], lf.shape[-1])
            pb, pf = lb[:, :v].log_softmax(-1), lf[:, :v].log_softmax(-1)
            kl[l] += (pf.exp() * (pf - pb)).sum(-1).sum().item()
    act = {k: [x / tokens for x in v] for k, v in sums.items()}
    return act, {k: v / tokens for k, v in kl.items()}, tokens


def close(got, ref):
    return abs(got - ref) <= TOLERANCE * abs(ref) + 1e-12


def cmd_check(args):
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.jsonl")
        with open(corpus, "w") as f:
            for s in SAMPLES:
                f.write(json.dumps({"text": s}) + "\n")
        for arch in ARCHS:
            base = os.path.abspath(os.path.join(FIXTURES, arch))
            ft = os.path.join(tmp, arch + "-ft")
            make_finetune(base, ft)
            out = os.path.join(tmp, arch + "-report")
            subprocess.run([args.bin, "audit", base, ft, "--analyses", "activations,logit-lens",
                            "--corpus", corpus, "--seq-len", str(SEQ_LEN), "--batch-size", "3",
                            "--shard-samples", "4", "--quiet", "--out", out],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results = json.load(open(os.path.join(out, "results.json")))["analyses"]
            act, kl, tokens = reference(base, ft)
            worst, bad = 0.0, []
            got_tokens = results["activations"]["n_tokens"]
            if got_tokens != tokens:
                bad.append(f"n_tokens {got_tokens} vs {tokens}")
            for row in results["activations"]["layers"]:
                ref = act[(row["layer"], row["hook"])]
                for name, r in zip(["mean_diff_norm", "mean_rel_diff", "mean_cosine"], ref):
                    g = row[name]
                    worst = max(worst, abs(g - r) / max(abs(r), 1e-30) if r else abs(g - r))
                    if not close(g, r):
                        bad.append(f"block {row['layer']} {row['hook']} {name}: {g!r} vs {r!r}")
                    if row["layer"] < PERTURBED and g != (1.0 if name == "mean_cosine" else 0.0):
                        bad.append(f"block {row['layer']} {row['hook']} {name}: {g!r}, expected exactly unchanged")
            lens = results["logit_lens"]
            for row in lens["layers"] + [lens["output"]]:
                key = "output" if row["layer"] is None else row["layer"]
                g, r = row["kl_mean"], kl[key]
                worst = max(worst, abs(g - r) / max(abs(r), 1e-30) if r else abs(g - r))
                if not close(g, r):
                    bad.append(f"logit lens {key} kl_mean: {g!r} vs {r!r}")
                if key == len(lens["layers"]) - 1 and not close(g, lens["output"]["kl_mean"]):
                    bad.append(f"logit lens of the last block {g!r} != output {lens['output']['kl_mean']!r}")
                if key != "output" and key < PERTURBED and g != 0.0:
                    bad.append(f"logit lens {key}: {g!r}, expected exactly 0")
            failures += bool(bad)
            print(f"{arch:6s} {tokens} tokens, worst relative error {worst:.2e} {'FAIL' if bad else 'ok'}")
            for b in bad[:20]:
                print("    " + b)
    sys.exit(1 if failures else 0)


def check_args(doc):
    """The `check NEURODIFF_BIN` command line every reference script takes."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("bin")
    return p.parse_args()


def check_fixtures(doc, check_arch, archs=ARCHS):
    """Runs `check_arch(bin, arch, corpus, tmp)` on every fixture with SAMPLES as the corpus and
    exits 0 when every one passed."""
    args = check_args(doc)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.jsonl")
        with open(corpus, "w") as f:
            for s in SAMPLES:
                f.write(json.dumps({"text": s}) + "\n")
        for arch in archs:
            ok &= check_arch(args.bin, arch, corpus, tmp)
    sys.exit(0 if ok else 1)


def main():
    cmd_check(check_args(__doc__))


if __name__ == "__main__":
    main()
