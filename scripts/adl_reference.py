"""Independent reference for NeuroDiff's readable traces, Patchscope and steering.

  python scripts/adl_reference.py check NEURODIFF_BIN

Written from the anchors' code, not from docs/: science-of-finetuning/diffing-toolkit
  src/diffing/methods/activation_difference_lens/method.py
      (`compute_differences`: delta_j = mean over samples of h_ft - h_base at the layer's output;
       `_compute_and_save_norms`: n_ft = mean per-token norm of the fine-tune's states, first 5
       positions skipped)
  src/diffing/utils/model.py
      (`logit_lens`: softmax(lm_head(ln_final(delta))) and softmax(lm_head(-ln_final(delta)));
       `patchscope_lens`: each prompt's top 16384 intersected, mean probability over prompts;
       `default_id_prompt_targets`: the three identity prompts)
  src/diffing/methods/activation_difference_lens/auto_patch_scope.py
      (`run_auto_patch_scope_for_position`: the scale grid; `_maybe_scale`: delta/||delta|| * n_ft;
       the state at the layer's output at the prompt's last token replaced; 20 tokens kept)
  src/diffing/methods/activation_difference_lens/steering.py and util.py
      (`generate_steered`, `load_position_mean_vector`: alpha * n_ft * delta/||delta|| added to the
       layer's output at every position)
and nnterp's `StandardizedTransformer.steer` / `layers_output` (the decoder layer's output, read
here with a forward hook on the layer: before any final norm).

Two choices the anchors make with an LLM are NeuroDiff's own and are implemented here as
docs/results-schema.md states them, so the check covers them too: Patchscope's scale is the one
with the most tokens in the top 20 of all three prompts that are in no unpatched prompt's top 20
(the smallest on ties); steering's curves (KL to the unsteered fine-tune, perplexity, domain
mass per alpha, the mean difference over every token but the BOS) replace the toolkit's
coherence grader.

For each committed parity fixture (llama, gpt2, qwen2, qwen3, olmo2) a fine-tune is made with block 1 perturbed
(scripts/activations_reference.py) and a ground truth naming four token ids is written beside it.
`neurodiff audit BASE FT --analyses traces,steering` reads block 1 (where delta != 0); this script
computes everything in float64 with transformers, one sample at a time without padding, and
compares: traces' n_ft, ||delta_j||, the logit lens of delta_j and of its negation, the two halves'
top 20, Patchscope's chosen scale, its per-scale agreed/novel counts and its 20 tokens with their
mean probabilities; steering's ||delta||, n_ft, and KL, perplexity and domain mass for every target
and alpha. Values to 1e-4 relative; token ranks where the reference's probabilities tell them apart.
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
POSITIONS = 5
LAYER = PERTURBED
NORM_SKIP = 5
ALPHAS = [0.0, 0.5, 1.0, 2.0]
DOMAIN_IDS = [5, 17, 42, 100]
ID_PROMPTS = [
    "man -> man\n1135 -> 1135\nhello -> hello\n?",
    "bear -> bear\n42 -> 42\nblue -> blue\n?",
    "921 -> 921\ntarget -> target\nanna -> anna\n?",
]
INTERSECTION_TOP_K = 16384
TOKENS_K = 20


def scale_grid():
    """`run_auto_patch_scope_for_position`'s scales."""
    fine = [round(0.5 + i * 0.1, 1) for i in range(16)]
    ints = [3.0, 4.0, 5.0, 10.0, 20.0]
    lin = [round(float(v), 1) for v in torch.linspace(20.0, 200.0, steps=10)]
    return sorted(set(fine + ints + lin))


def run(model, ids, add=None, replace=None):
    """Logits of one sample and the layer's output; `add`: a vector added to the layer's output
    at every position; `replace`: (position, vector) written over it."""
    block = parts(model)[0][LAYER]
    caught = {}

    def hook(m, a, o):
        h = o[0] if isinstance(o, tuple) else o
        if add is not None:
            h = h + add
        if replace is not None:
            h = h.clone()
            h[0, replace[0]] = replace[1]
        caught["h"] = h[0]
        return (h,) + tuple(o[1:]) if isinstance(o, tuple) else h

    handle = block.register_forward_hook(hook)
    with torch.no_grad():
        out = model(ids)
    handle.remove()
    return out.logits[0], caught["h"]


def lens(model, v, sign=1.0):
    """`logit_lens`: the final norm, then (optionally negated) the unembedding."""
    with torch.no_grad():
        return unembed(model, sign * parts(model)[2](v)).softmax(-1)


def patchscope(ft, tok, v, nbar):
    grid = scale_grid()
    unpatched, top20, cum, count = set(), [], None, None
    for prompt in ID_PROMPTS:
        ids = torch.tensor([tok(prompt)["input_ids"]])
        last = ids.shape[1] - 1
        clean = run(ft, ids)[0][last].softmax(-1)
        unpatched |= set(clean.topk(20).indices.tolist())
        probs = torch.stack([run(ft, ids, replace=(last, s * nbar * v))[0][last].softmax(-1)
                            for s in grid])
        top20.append(probs)
        k = min(INTERSECTION_TOP_K, probs.shape[-1])
        values, idx = probs.topk(k, dim=-1)
        c = torch.zeros_like(probs).scatter(1, idx, values)
        n = torch.zeros_like(probs).scatter(1, idx, torch.ones_like(values))
        cum = c if cum is None else cum + c
        count = n if count is None else count + n
    score = cum / len(ID_PROMPTS) * (count == len(ID_PROMPTS))
    points, ambiguous = [], False
    for si, s in enumerate(grid):
        sets = []
        for p in top20:
            vals, idx = p[si].topk(21)
            # A near-tie at the 20th place lets float32 and float64 disagree on the set.
            ambiguous |= bool(vals[19] - vals[20] < 1e-5 * vals[19])
            sets.append(set(idx[:20].tolist()))
        agreed = set.intersection(*sets)
        points.append((s, len(agreed), len(agreed - unpatched)))
    chosen = max(range(len(grid)), key=lambda i: (points[i][2], -i))
    top = score[chosen].topk(TOKENS_K)
    return points, chosen, top.indices.tolist(), top.values.tolist(), score[chosen], ambiguous


def reference(base_dir, ft_dir):
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(base_dir, "tokenizer.json"))
    load = lambda d: transformers.AutoModelForCausalLM.from_pretrained(
        d, dtype=torch.float64, attn_implementation="eager").eval()
    base, ft = load(base_dir), load(ft_dir)
    # The tokens the tokenizer prepends (a BOS): left out of steering's mean difference.
    skip = len(tok("a")["input_ids"]) - len(tok("a", add_special_tokens=False)["input_ids"])
    d = base.config.hidden_size
    sums = {(j, h): torch.zeros(d, dtype=torch.float64) for j in range(POSITIONS) for h in range(3)}
    counts = {(j, h): 0 for j in range(POSITIONS) for h in range(3)}
    steer_sum, steer_n, norm_sum, norm_n = torch.zeros(d, dtype=torch.float64), 0, 0.0, 0
    samples = [torch.tensor([tok(t)["input_ids"][:SEQ_LEN]]) for t in SAMPLES]
    for i, ids in enumerate(samples):
        hb, hf = run(base, ids)[1], run(ft, ids)[1]
        diff = hf - hb
        for j in range(min(POSITIONS, ids.shape[1])):
            for h in [0, 1 + i % 2]:
                sums[(j, h)] += diff[j]
                counts[(j, h)] += 1
        steer_sum += diff[skip:].sum(0)
        steer_n += max(ids.shape[1] - skip, 0)
        norms = hf[NORM_SKIP:].norm(dim=-1)
        norm_sum += norms.sum().item()
        norm_n += norms.numel()
    nbar = norm_sum / norm_n
    traces = {}
    for j in range(POSITIONS):
        delta = sums[(j, 0)] / counts[(j, 0)]
        halves = [lens(ft, sums[(j, h)] / counts[(j, h)]).topk(20).indices.tolist() for h in [1, 2]]
        traces[j] = {
            "delta_norm": delta.norm().item(),
            "lens": lens(ft, delta),
            "negative": lens(ft, delta, -1.0),
            "halves": halves,
            "patchscope": patchscope(ft, tok, delta / delta.norm(), nbar),
        }
    delta = steer_sum / steer_n
    v = delta / delta.norm() * nbar
    curves = {}
    for target, model in [("base", base), ("finetuned", ft)]:
        for a in ALPHAS:
            kl = nll = mass = 0.0
            tokens = targets = 0
            for ids in samples:
                lf = run(ft, ids)[0]
                ls = run(model, ids, add=a * v)[0]
                vocab = min(lf.shape[-1], ls.shape[-1])
                pf, ps = lf[:, :vocab].log_softmax(-1), ls[:, :vocab].log_softmax(-1)
                kl += (pf.exp() * (pf - ps)).sum().item()
                tokens += ids.shape[1]
                lp = ls[:-1].log_softmax(-1)
                nll -= lp.gather(1, ids[0, 1:, None]).sum().item()
                mass += lp.exp()[:, DOMAIN_IDS].sum().item()
                targets += ids.shape[1] - 1
            curves[(target, a)] = (kl / tokens, torch.tensor(nll / targets).exp().item(), mass / targets)
    return nbar, traces, {"delta_norm": delta.norm().item(), "nbar": nbar, "curves": curves}


class Checker:
    def __init__(self):
        self.bad, self.worst = [], 0.0

    def value(self, what, got, ref):
        self.worst = max(self.worst, abs(got - ref) / max(abs(ref), 1e-7))
        if abs(got - ref) > TOLERANCE * abs(ref) + 1e-7:
            self.bad.append(f"{what}: {got!r} vs {ref!r}")

    def tokens(self, what, got, probs):
        """`got` (id, prob) in order against the reference's full distribution `probs`."""
        ref = probs.topk(len(got))
        for i, (gid, gp) in enumerate(got):
            rid, rp = ref.indices[i].item(), ref.values[i].item()
            if gid != rid and abs(probs[gid].item() - rp) > TOLERANCE * rp + 1e-9:
                self.bad.append(f"{what}: rank {i} is id {gid}, expected {rid}")
            self.value(f"{what} prob at rank {i}", gp, rp)


def check_arch(bin_, arch, corpus, tmp):
    base = os.path.abspath(os.path.join(FIXTURES, arch))
    ft = os.path.join(tmp, arch + "-ft")
    make_finetune(base, ft)
    with open(os.path.join(ft, "ground_truth.json"), "w") as f:
        json.dump({"organism": "adl-reference", "domain_words": ["x"],
                   "domain_tokens": [{"word": "x", "token": "x", "id": i} for i in DOMAIN_IDS]}, f)
    out = os.path.join(tmp, arch + "-adl")
    subprocess.run([bin_, "audit", base, ft, "--analyses", "traces,steering", "--corpus", corpus,
                    "--seq-len", str(SEQ_LEN), "--batch-size", "3", "--shard-samples", "4",
                    "--trace-layer", str(LAYER), "--steer-layers", str(LAYER),
                    "--steer-alphas", ",".join(str(a) for a in ALPHAS), "--max-new-tokens", "2",
                    "--quiet", "--out", out], check=True, stdout=subprocess.DEVNULL)
    results = json.load(open(os.path.join(out, "results.json")))["analyses"]
    nbar, traces, steer = reference(base, ft)
    c = Checker()
    tr = results["traces"]
    if tr["layer"] != LAYER:
        c.bad.append(f"traces layer {tr['layer']} vs {LAYER}")
    c.value("traces nbar_ft", tr["nbar_ft"], nbar)
    ambiguous = 0
    for p in tr["positions"]:
        j, r = p["position"], traces[p["position"]]
        if r["delta_norm"] < 1e-6:
            c.bad.append(f"δ_{j}: the reference's δ is zero; the check would be degenerate")
        c.value(f"δ_{j} delta_norm", p["delta_norm"], r["delta_norm"])
        pairs = lambda lst: [(t["id"], t["prob"]) for t in lst["top_tokens"][:20]]
        c.tokens(f"δ_{j} logit lens", pairs(p["logit_lens"]), r["lens"])
        c.tokens(f"δ_{j} negative", pairs(p["negative"]), r["negative"])
        for h in range(2):
            got, want = p["half_top_ids"][h], r["halves"][h]
            if len(set(got) ^ set(want)) > 2:
                c.bad.append(f"δ_{j} half {h}: top 20 {got} vs {want}")
        points, chosen, ids, probs, score, amb = r["patchscope"]
        ps = p["patchscope"]
        if amb:
            ambiguous += 1
        else:
            if abs(ps["scale"] - points[chosen][0]) > 1e-9:
                c.bad.append(f"δ_{j} Patchscope scale {ps['scale']} vs {points[chosen][0]}")
            for g, (s, agreed, novel) in zip(ps["scales"], points):
                if (g["agreed"], g["novel"]) != (agreed, novel):
                    c.bad.append(f"δ_{j} Patchscope s={s}: agreed/novel {g['agreed']}/{g['novel']} "
                                 f"vs {agreed}/{novel}")
            c.tokens(f"δ_{j} Patchscope tokens", [(t["id"], t["prob"]) for t in ps["top_tokens"]], score)
        if [g["scale"] for g in ps["scales"]] != [pt[0] for pt in points]:
            c.bad.append(f"δ_{j} Patchscope grid {[g['scale'] for g in ps['scales']]}")
    st = results["steering"]
    block = st["blocks"][0]
    c.value("steering delta_norm", block["delta_norm"], steer["delta_norm"])
    c.value("steering nbar_ft", block["nbar_ft"], steer["nbar"])
    for pt in st["curves"]:
        kl, ppl, mass = steer["curves"][(pt["target"], pt["alpha"])]
        what = f"steering {pt['target']} α={pt['alpha']}"
        c.value(what + " kl_to_ft", pt["kl_to_ft"], kl)
        c.value(what + " perplexity", pt["perplexity"], ppl)
        c.value(what + " domain_mass", pt["domain_mass"], mass)
    if len(st["curves"]) != 2 * len(ALPHAS):
        c.bad.append(f"steering: {len(st['curves'])} curve points")
    note = f", {ambiguous} Patchscope position(s) with a near-tie skipped" if ambiguous else ""
    print(f"{arch:6s} worst relative error {c.worst:.2e}{note} {'FAIL' if c.bad else 'ok'}")
    for b in c.bad[:20]:
        print("    " + b)
    return not c.bad and ambiguous < POSITIONS


def main():
    check_fixtures(__doc__, check_arch, ARCHS)


if __name__ == "__main__":
    main()
