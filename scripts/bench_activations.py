"""Benchmark of the paired forward pass against transformers, on a GPT-2-small-sized pair.

  python scripts/bench_activations.py [--bin target/release/neurodiff] [--dir out/bench-act]
                                      [--samples 32] [--seq-len 128] [--batch 16]

Makes (once, then reuses) a GPT-2-small-sized pair (124M fp32 parameters each, random, the
fine-tune perturbed in its later blocks) with a byte-level BPE tokenizer, and takes the first
`--samples` samples of the built-in corpus. Then, in this one run, each side in a process of
its own at the same thread count (all cores), it times:

  1. `neurodiff audit --analyses activations`: both models on the same right-padded batches,
     every hook of every block cached, and the per-token statistics accumulated;
  2. transformers doing less: both models' bodies (no unembedding, which neither side needs)
     with `output_hidden_states=True` on the same batches (no statistics), in fp32 under
     `torch.no_grad()`;

and prints tokens/s and peak RSS of each, and the ratios. Each side's time includes loading
the two models (the audit's also planning, the corpus and writing the report).
"""

import argparse
import gzip
import json
import os
import resource
import sys
import time

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CORPUS = os.path.join(os.path.dirname(__file__), "..", "crates", "core", "corpus", "generic.jsonl.gz")


def samples(n):
    out = []
    with gzip.open(CORPUS, "rt") as f:
        for line in f:
            out.append(json.loads(line)["text"])
            if len(out) == n:
                break
    return out


def make_pair(d):
    if os.path.exists(os.path.join(d, "ft", "tokenizer.json")):
        return
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(samples(5000), trainer)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    for side in ("base", "ft"):
        if side == "ft":
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if any(f"h.{i}." in name for i in range(6, 12)) and p.dim() == 2:
                        p.add_(0.01 * torch.randn_like(p))
        out = os.path.join(d, side)
        model.save_pretrained(out)
        tok.save(os.path.join(out, "tokenizer.json"))


def transformers_side(d, n, seq_len, batch):
    torch.set_num_threads(os.cpu_count())
    started = time.perf_counter()
    tok = Tokenizer.from_file(os.path.join(d, "base", "tokenizer.json"))
    load = lambda s: transformers.GPT2LMHeadModel.from_pretrained(os.path.join(d, s), dtype=torch.float32).eval()
    base, ft = load("base"), load("ft")
    ids = [e.ids[:seq_len] for e in tok.encode_batch(samples(n))]
    tokens = 0
    with torch.no_grad():
        for i in range(0, len(ids), batch):
            chunk = ids[i:i + batch]
            width = max(map(len, chunk))
            x = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for r, s in enumerate(chunk):
                x[r, :len(s)] = torch.tensor(s)
                mask[r, :len(s)] = 1
            tokens += int(mask.sum())
            for m in (base, ft):
                # The body only (GPT2Model): hidden states without the unembedding, as the
                # activation analysis computes them.
                out = m.transformer(x, attention_mask=mask, output_hidden_states=True)
                assert len(out.hidden_states) == 13
    print(json.dumps({"seconds": time.perf_counter() - started, "tokens": tokens}))


def peak_rss_of(cmd):
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.execvp(cmd[0], cmd)
    started = time.perf_counter()
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        sys.exit(f"{' '.join(cmd)} failed ({status})")
    return wall, usage.ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/neurodiff")
    ap.add_argument("--dir", default="out/bench-act")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--transformers-side", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.transformers_side:
        return transformers_side(a.dir, a.samples, a.seq_len, a.batch)
    make_pair(a.dir)
    report = os.path.join(a.dir, "report")
    rust_wall, rust_rss = peak_rss_of([
        a.bin, "audit", os.path.join(a.dir, "base"), os.path.join(a.dir, "ft"), "--analyses", "activations",
        "--max-samples", str(a.samples), "--seq-len", str(a.seq_len), "--batch-size", str(a.batch),
        "--shard-samples", str(a.samples), "--quiet", "--out", report])
    tokens = json.load(open(os.path.join(report, "results.json")))["analyses"]["activations"]["n_tokens"]
    out_path = os.path.join(a.dir, "transformers.json")
    with open(out_path, "w") as f:
        pid = os.fork()
        if pid == 0:
            os.dup2(f.fileno(), 1)
            os.execvp(sys.executable, [sys.executable, __file__, "--transformers-side", "--dir", a.dir,
                                       "--samples", str(a.samples), "--seq-len", str(a.seq_len),
                                       "--batch", str(a.batch)])
        started = time.perf_counter()
        _, status, usage = os.wait4(pid, 0)
        hf_wall, hf_rss = time.perf_counter() - started, usage.ru_maxrss / 1024
    hf = json.load(open(out_path))
    assert hf["tokens"] == tokens, (hf["tokens"], tokens)
    print(f"threads {os.cpu_count()}, {tokens} tokens ({a.samples} samples x up to {a.seq_len}, batch {a.batch})")
    print(f"neurodiff activations : {rust_wall:7.2f} s  {tokens / rust_wall:8.1f} tokens/s  peak RSS {rust_rss:7.0f} MiB")
    print(f"transformers forward  : {hf_wall:7.2f} s  {tokens / hf_wall:8.1f} tokens/s  peak RSS {hf_rss:7.0f} MiB")
    print(f"throughput ratio (neurodiff / transformers): {hf_wall / rust_wall:.2f}x; "
          f"peak memory ratio: {rust_rss / hf_rss:.2f}")


if __name__ == "__main__":
    main()
