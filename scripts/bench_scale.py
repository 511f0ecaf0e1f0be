"""Benchmark of the block-streamed paired forward on a Llama-3.2-1B-shaped pair.

  python scripts/bench_scale.py [--bin target/release/neurodiff] [--dir out/bench-scale]
                                [--dtype bf16|fp32] [--samples 8] [--seq-len 64] [--batch 8]
                                [--range-bytes N]

Makes (once, then reuses) a pair with Llama-3.2-1B's shapes (d_model 2048, 16 blocks, 32 query
and 8 key/value heads, MLP 8192, vocabulary 128,256, tied embeddings, llama3 RoPE; 1.24B
parameters each), random bf16 weights, the fine-tune perturbed in blocks 8-11, and a byte-level
BPE tokenizer trained on the built-in corpus. Then, in this one run, each side in a process of
its own at the same thread count (all cores):

  1. `neurodiff audit --analyses activations,logit-lens --dtype D`: the block-streamed paired
     forward (each analysis its own pass), the per-token statistics and the lens at every
     block, and the report;
  2. transformers with both models loaded in D (`from_pretrained(dtype=...)`), each batch
     through both with `output_hidden_states=True`, and the same lens: every block's hidden
     state through the final norm and the (tied) unembedding, KL(ft || base) per token in
     fp32, plus the per-token norm of each hidden-state difference.

It prints peak RSS (the kernel's `ru_maxrss` of each process) and tokens/s of each side, and
the ratios. Loading is included on both sides; the audit also hashes both checkpoints.

With `--range-bytes N` the audit also runs as layer-range shards (each link at most N bytes of
both models' block weights, handing the residual streams on through the store) and its results
are compared with the one-shard audit's (every number to 1e-6).
"""

import argparse
import json
import os
import sys
import time

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_activations import samples  # noqa: E402  (the same built-in corpus samples)

SHAPE = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
             num_key_value_heads=8, head_dim=64, vocab_size=128256)


def config():
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", **SHAPE,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "tie_word_embeddings": True, "hidden_act": "silu", "attention_bias": False,
        "mlp_bias": False, "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "bfloat16",
    }


def weights(g):
    d, i, v = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["vocab_size"]
    kv = SHAPE["num_key_value_heads"] * SHAPE["head_dim"]
    rnd = lambda *s: (torch.randn(*s, generator=g) * 0.02).to(torch.bfloat16)
    w = {"model.embed_tokens.weight": rnd(v, d), "model.norm.weight": torch.ones(d, dtype=torch.bfloat16)}
    for l in range(SHAPE["num_hidden_layers"]):
        p = f"model.layers.{l}."
        w.update({
            p + "input_layernorm.weight": torch.ones(d, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": torch.ones(d, dtype=torch.bfloat16),
            p + "self_attn.q_proj.weight": rnd(d, d), p + "self_attn.k_proj.weight": rnd(kv, d),
            p + "self_attn.v_proj.weight": rnd(kv, d), p + "self_attn.o_proj.weight": rnd(d, d),
            p + "mlp.gate_proj.weight": rnd(i, d), p + "mlp.up_proj.weight": rnd(i, d),
            p + "mlp.down_proj.weight": rnd(d, i),
        })
    return w


def make_pair(d):
    if os.path.exists(os.path.join(d, "ft", "tokenizer.json")):
        return
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(samples(5000), trainers.BpeTrainer(
        vocab_size=16000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    g = torch.Generator().manual_seed(0)
    w = weights(g)
    for side in ("base", "ft"):
        if side == "ft":
            for name, t in w.items():
                if any(f"layers.{l}.mlp" in name for l in range(8, 12)):
                    w[name] = (t.float() + 0.004 * torch.randn(t.shape, generator=g)).to(torch.bfloat16)
        out = os.path.join(d, side)
        os.makedirs(out, exist_ok=True)
        save_file(w, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
        json.dump(config(), open(os.path.join(out, "config.json"), "w"), indent=2)
        tok.save(os.path.join(out, "tokenizer.json"))


def batches(d, n, seq_len, batch):
    tok = Tokenizer.from_file(os.path.join(d, "base", "tokenizer.json"))
    ids = [e.ids[:seq_len] for e in tok.encode_batch(samples(n))]
    for i in range(0, len(ids), batch):
        chunk = ids[i:i + batch]
        width = max(map(len, chunk))
        x = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for r, s in enumerate(chunk):
            x[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = 1
        yield x, mask


def transformers_side(d, dtype, n, seq_len, batch):
    import transformers
    torch.set_num_threads(os.cpu_count())
    started = time.perf_counter()
    kind = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    load = lambda s: transformers.AutoModelForCausalLM.from_pretrained(os.path.join(d, s), dtype=kind).eval()
    base, ft = load("base"), load("ft")
    loaded = time.perf_counter() - started
    tokens = 0
    with torch.no_grad():
        for x, mask in batches(d, n, seq_len, batch):
            keep = mask.bool()
            tokens += int(keep.sum())
            hb = base.model(x, attention_mask=mask, output_hidden_states=True).hidden_states
            hf = ft.model(x, attention_mask=mask, output_hidden_states=True).hidden_states
            for l in range(1, len(hb)):
                a, b = hb[l][keep], hf[l][keep]
                (b.float() - a.float()).norm(dim=-1)
                last = l == len(hb) - 1  # transformers' last hidden state is already normed
                for rows in torch.split(torch.arange(a.shape[0]), 64):
                    lb = base.lm_head(a[rows] if last else base.model.norm(a[rows])).float().log_softmax(-1)
                    lf = ft.lm_head(b[rows] if last else ft.model.norm(b[rows])).float().log_softmax(-1)
                    (lf.exp() * (lf - lb)).sum(-1)
    print(json.dumps({"seconds": time.perf_counter() - started, "load_s": loaded, "tokens": tokens}))


def measured(cmd, stdout=None):
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        if stdout is not None:
            os.dup2(stdout, 1)
        os.execvp(cmd[0], cmd)
    started = time.perf_counter()
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        sys.exit(f"{' '.join(cmd)} failed ({status})")
    return wall, usage.ru_maxrss / 1024


def compare(x, y, path):
    """The largest relative difference between two results documents' numbers; any other
    difference (keys, lengths, text) fails, as does a number off by more than 1e-6."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        if isinstance(x, dict):
            assert x.keys() == y.keys(), path
            return max([compare(x[k], y[k], f"{path}.{k}") for k in x if k != "elapsed_s"], default=0.0)
        if isinstance(x, list):
            assert len(x) == len(y), path
            return max([compare(p, q, f"{path}[{i}]") for i, (p, q) in enumerate(zip(x, y))], default=0.0)
        assert x == y, (path, x, y)
        return 0.0
    rel = abs(x - y) / max(abs(x), abs(y), 1e-30)
    assert rel <= 1e-6 or abs(x - y) <= 1e-12, (path, x, y)
    return rel


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/neurodiff")
    ap.add_argument("--dir", default="out/bench-scale")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--side", choices=["both", "neurodiff", "transformers"], default="both")
    ap.add_argument("--range-bytes", type=int, default=0)
    ap.add_argument("--transformers-side", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.transformers_side:
        return transformers_side(a.dir, a.dtype, a.samples, a.seq_len, a.batch)
    make_pair(a.dir)
    tokens = sum(int(m.sum()) for _, m in batches(a.dir, a.samples, a.seq_len, a.batch))
    print(f"threads {os.cpu_count()}, dtype {a.dtype}, {tokens} tokens "
          f"({a.samples} samples x up to {a.seq_len}, batch {a.batch})", flush=True)
    rows = {}
    if a.side in ("both", "neurodiff"):
        report = os.path.join(a.dir, f"report-{a.dtype}")
        rows["neurodiff"] = measured([
            a.bin, "audit", os.path.join(a.dir, "base"), os.path.join(a.dir, "ft"),
            "--analyses", "activations,logit-lens", "--dtype", a.dtype, "--max-samples", str(a.samples),
            "--seq-len", str(a.seq_len), "--batch-size", str(a.batch), "--shard-samples", str(a.samples),
            "--quiet", "--out", report])
        results = json.load(open(os.path.join(report, "results.json")))
        assert results["analyses"]["activations"]["n_tokens"] == tokens
        print(f"neurodiff    : {rows['neurodiff'][0]:8.1f} s  {tokens / rows['neurodiff'][0]:7.2f} tokens/s  "
              f"peak RSS {rows['neurodiff'][1]:7.0f} MiB", flush=True)
        if a.range_bytes:
            ranged = os.path.join(a.dir, f"report-{a.dtype}-ranges")
            wall, rss = measured([
                a.bin, "audit", os.path.join(a.dir, "base"), os.path.join(a.dir, "ft"),
                "--analyses", "activations,logit-lens", "--dtype", a.dtype, "--max-samples", str(a.samples),
                "--seq-len", str(a.seq_len), "--batch-size", str(a.batch), "--shard-samples", str(a.samples),
                "--range-bytes", str(a.range_bytes), "--quiet", "--out", ranged])
            other = json.load(open(os.path.join(ranged, "results.json")))
            worst = compare(results["analyses"], other["analyses"], "analyses")
            print(f"as layer ranges ({a.range_bytes} bytes each): {wall:8.1f} s  peak RSS {rss:7.0f} MiB; "
                  f"results equal, largest relative difference {worst:.1e}", flush=True)
    if a.side in ("both", "transformers"):
        out_path = os.path.join(a.dir, f"transformers-{a.dtype}.json")
        with open(out_path, "w") as f:
            rows["transformers"] = measured([
                sys.executable, __file__, "--transformers-side", "--dir", a.dir, "--dtype", a.dtype,
                "--samples", str(a.samples), "--seq-len", str(a.seq_len), "--batch", str(a.batch)], f.fileno())
        hf = json.load(open(out_path))
        assert hf["tokens"] == tokens, (hf["tokens"], tokens)
        print(f"transformers : {rows['transformers'][0]:8.1f} s  {tokens / rows['transformers'][0]:7.2f} tokens/s  "
              f"peak RSS {rows['transformers'][1]:7.0f} MiB (loading {hf['load_s']:.1f} s)", flush=True)
    if len(rows) == 2:
        (nw, nr), (tw, tr) = rows["neurodiff"], rows["transformers"]
        print(f"throughput ratio (neurodiff / transformers): {tw / nw:.2f}x; peak memory ratio: {nr / tr:.2f}")


if __name__ == "__main__":
    main()
