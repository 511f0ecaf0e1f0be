"""Independent reference for NeuroDiff's CMAP and stitching (docs/results-schema.md).

  python scripts/tier2_reference.py check NEURODIFF_BIN

For each committed parity fixture (llama, gpt2, qwen2, qwen3, olmo2) as the base, a fine-tuned copy is made with
block 1 perturbed (as scripts/activations_reference.py does). `neurodiff audit BASE FT --analyses
cmap,stitching` runs on a small corpus with uneven batches and shards; this script computes,
with transformers in float64, one sample at a time with no padding, through PyTorch hooks:

  cmap.cells[].recovery        1 - sum KL(p_donor || p_patched) / sum KL(p_donor || p_recipient)
  stitching.points[]           kl_to_base, kl_to_ft, loss for every split k and both orders

and compares them to 1e-4 (relative, with 1e-7 absolute for values near zero). It also checks the
exact zeros the perturbed block predicts: no recovery before block 1, and zero KL to the
fine-tune exactly where every perturbed block comes from it. The readable traces, Patchscope and
steering have their own reference, written from the diffing toolkit: scripts/adl_reference.py.
"""

import json
import os
import subprocess
import sys

import torch
import transformers

sys.path.insert(0, os.path.dirname(__file__))
from activations_reference import (  # noqa: E402
    FIXTURES, PERTURBED, SAMPLES, check_fixtures, make_finetune, parts, unembed)

transformers.utils.logging.disable_progress_bar()
ARCHS = ["llama", "gpt2", "qwen2", "qwen3", "olmo2", "gemma2", "gemma3_text", "phi3"]
SEQ_LEN = 24
TOLERANCE = 1e-4
COMPONENTS = ["attn_out", "mlp_out", "resid_post"]


def first(o):
    return o[0] if isinstance(o, tuple) else o


def with_first(o, x):
    return (x,) + tuple(o[1:]) if isinstance(o, tuple) else x


def module(model, layer, component):
    blocks, mods, _ = parts(model)
    return {"attn_out": mods[layer][0], "mlp_out": mods[layer][1], "resid_post": blocks[layer]}[component]


def forward(model, ids, cache=(), patch=None, pre=None):
    """Logits of one sample; `cache`: (layer, component) outputs to keep; `patch`: ((layer,
    component), value) replacing that output; `pre`: (layer, value) replacing block layer's input."""
    caught, handles = {}, []
    for key in cache:
        handles.append(module(model, *key).register_forward_hook(
            lambda m, a, o, key=key: caught.__setitem__(key, first(o)[0].clone())))
    if patch is not None:
        (key, value) = patch
        handles.append(module(model, *key).register_forward_hook(
            lambda m, a, o: with_first(o, value.unsqueeze(0))))
    if pre is not None:
        layer, value = pre
        blocks = parts(model)[0]

        def hook(m, args, kwargs):
            if args:
                return (value.unsqueeze(0),) + tuple(args[1:]), kwargs
            kwargs["hidden_states"] = value.unsqueeze(0)
            return args, kwargs
        handles.append(blocks[layer].register_forward_pre_hook(hook, with_kwargs=True))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    for h in handles:
        h.remove()
    return out.logits[0], out.hidden_states, caught


def read_out(model, x):
    with torch.no_grad():
        return unembed(model, parts(model)[2](x))


def kl(p_logits, q_logits):
    v = min(p_logits.shape[-1], q_logits.shape[-1])
    lp, lq = p_logits[:, :v].log_softmax(-1), q_logits[:, :v].log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1).sum().item()


def nll(logits, ids):
    if ids.shape[1] < 2:
        return 0.0
    return -logits[:-1].log_softmax(-1).gather(1, ids[0, 1:, None]).sum().item()


def reference(base_dir, ft_dir):
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(base_dir, "tokenizer.json"))
    load = lambda d: transformers.AutoModelForCausalLM.from_pretrained(
        d, dtype=torch.float64, attn_implementation="eager").eval()
    base, ft = load(base_dir), load(ft_dir)
    n = base.config.num_hidden_layers
    models = {"base": base, "ft": ft}
    keys = [(l, c) for l in range(n) for c in COMPONENTS]
    cmap = {(l, c, d): 0.0 for (l, c) in keys for d in ["ft_into_base", "base_into_ft"]}
    gap = {"ft_into_base": 0.0, "base_into_ft": 0.0}
    stitch = {(d, k): [0.0, 0.0, 0.0] for d in ["base_then_ft", "ft_then_base"] for k in range(n + 1)}
    loss = {"base": 0.0, "ft": 0.0}
    tokens = targets = 0
    for text in SAMPLES:
        ids = torch.tensor([tok(text)["input_ids"][:SEQ_LEN]])
        tokens += ids.shape[1]
        targets += ids.shape[1] - 1
        clean = {m: forward(models[m], ids, cache=keys) for m in models}
        (lb, hb, cb), (lf, hf, cf) = clean["base"], clean["ft"]
        loss["base"] += nll(lb, ids)
        loss["ft"] += nll(lf, ids)
        gap["ft_into_base"] += kl(lf, lb)
        gap["base_into_ft"] += kl(lb, lf)
        for (l, c) in keys:
            patched = forward(base, ids, patch=((l, c), cf[(l, c)]))[0]
            cmap[(l, c, "ft_into_base")] += kl(lf, patched)
            patched = forward(ft, ids, patch=((l, c), cb[(l, c)]))[0]
            cmap[(l, c, "base_into_ft")] += kl(lb, patched)
        for d, (src, dst) in {"base_then_ft": ("base", "ft"), "ft_then_base": ("ft", "base")}.items():
            hs, cache = clean[src][1], clean[src][2]
            for k in range(n + 1):
                if k < n:
                    logits = forward(models[dst], ids, pre=(k, hs[k][0]))[0]
                else:
                    logits = read_out(models[dst], cache[(n - 1, "resid_post")])
                s = stitch[(d, k)]
                s[0] += kl(lb, logits)
                s[1] += kl(lf, logits)
                s[2] += nll(logits, ids)
    recovery = {k: 1 - v / gap[k[2]] for k, v in cmap.items()}
    stitch = {k: [v[0] / tokens, v[1] / tokens, v[2] / targets] for k, v in stitch.items()}
    return recovery, stitch, {k: v / targets for k, v in loss.items()}


def close(got, ref):
    return abs(got - ref) <= TOLERANCE * abs(ref) + 1e-7


def check_arch(bin_, arch, corpus, tmp):
    base = os.path.abspath(os.path.join(FIXTURES, arch))
    ft = os.path.join(tmp, arch + "-ft")
    make_finetune(base, ft)
    out = os.path.join(tmp, arch + "-report")
    subprocess.run([bin_, "audit", base, ft, "--analyses", "cmap,stitching",
                    "--corpus", corpus, "--seq-len", str(SEQ_LEN), "--batch-size", "3",
                    "--shard-samples", "4", "--quiet", "--out", out],
                   check=True, stdout=subprocess.DEVNULL)
    results = json.load(open(os.path.join(out, "results.json")))["analyses"]
    recovery, stitch, loss = reference(base, ft)
    bad, worst = [], 0.0

    def compare(what, g, r):
        nonlocal worst
        worst = max(worst, abs(g - r) / max(abs(r), 1e-7))
        if not close(g, r):
            bad.append(f"{what}: {g!r} vs {r!r}")

    for cell in results["cmap"]["cells"]:
        key = (cell["layer"], cell["component"], cell["direction"])
        compare(f"cmap {key}", cell["recovery"], recovery[key])
        if cell["layer"] < PERTURBED and cell["recovery"] != 0.0:
            bad.append(f"cmap {key}: {cell['recovery']!r}, expected exactly 0 before the perturbed block")
    st = results["stitching"]
    compare("stitching loss_base", st["loss_base"], loss["base"])
    compare("stitching loss_ft", st["loss_ft"], loss["ft"])
    for p in st["points"]:
        r = stitch[(p["direction"], p["k"])]
        for name, v in zip(["kl_to_base", "kl_to_ft", "loss"], r):
            compare(f"stitching {p['direction']} k={p['k']} {name}", p[name], v)
        from_ft = p["k"] <= PERTURBED if p["direction"] == "base_then_ft" else p["k"] > PERTURBED
        if from_ft != (p["kl_to_ft"] == 0.0):
            bad.append(f"stitching {p['direction']} k={p['k']}: kl_to_ft {p['kl_to_ft']!r}, "
                       f"expected {'exactly 0' if from_ft else 'above 0'}")
    print(f"{arch:6s} worst relative error {worst:.2e} {'FAIL' if bad else 'ok'}")
    for b in bad[:20]:
        print("    " + b)
    return not bad


def main():
    check_fixtures(__doc__, check_arch, ARCHS)


if __name__ == "__main__":
    main()
