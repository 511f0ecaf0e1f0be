"""Benchmark of the weight audit against a PyTorch script, on a GPT-2-small-sized pair.

  python scripts/bench_weights.py [--bin target/release/neurodiff] [--dir out/bench]

Makes (once, then reuses) a GPT-2-small-sized pair, 124M fp32 parameters each: a random base
and a fine-tuned copy whose every 2-D delta is full rank (small dense noise) with a strong
low-rank part, like a real fine-tune. Then, in this one run, it times:
  1. reading both checkpoints once from the page cache (the bandwidth floor);
  2. `neurodiff audit --spectrum none` (Frobenius, relative, cosine, max: one pass);
  3. `neurodiff audit` with full spectra;
  4. a PyTorch script computing the same metrics per tensor with torch.linalg in float64
     (the accuracy the audit promises: within 1e-4 of a float64 SVD),
and prints the ratios, plus the largest relative disagreement between the two sets of metrics.
"""

import argparse
import json
import math
import os
import subprocess
import time

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def gpt2_small_shapes():
    """GPT-2 small's tensors as the original hub checkpoint names them (124M parameters)."""
    d, v, ctx, layers = 768, 50257, 1024, 12
    shapes = {"wte.weight": (v, d), "wpe.weight": (ctx, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for i in range(layers):
        for name, shape in [("ln_1.weight", (d,)), ("ln_1.bias", (d,)), ("attn.c_attn.weight", (d, 3 * d)),
                            ("attn.c_attn.bias", (3 * d,)), ("attn.c_proj.weight", (d, d)), ("attn.c_proj.bias", (d,)),
                            ("ln_2.weight", (d,)), ("ln_2.bias", (d,)), ("mlp.c_fc.weight", (d, 4 * d)),
                            ("mlp.c_fc.bias", (4 * d,)), ("mlp.c_proj.weight", (4 * d, d)), ("mlp.c_proj.bias", (d,))]:
            shapes[f"h.{i}.{name}"] = shape
    return shapes


def make_pair(d):
    """Written with torch alone (no transformers), so the GPU machine can make it too."""
    base_path, ft_path = os.path.join(d, "base"), os.path.join(d, "ft")
    if os.path.exists(os.path.join(ft_path, "model.safetensors")):
        return base_path, ft_path
    g = torch.Generator().manual_seed(0)
    base, ft = {}, {}
    for name, shape in gpt2_small_shapes().items():
        if len(shape) == 2:
            w = 0.02 * torch.randn(shape, generator=g)
            m, n = shape
            low = torch.randn(m, 8, generator=g) @ torch.randn(8, n, generator=g) * (0.002 / math.sqrt(8))
            delta = low + 1e-4 * torch.randn(shape, generator=g)
        else:
            w = torch.ones(shape) if "ln" in name and name.endswith("weight") else torch.zeros(shape)
            delta = 1e-3 * torch.randn(shape, generator=g)
        base[name], ft[name] = w, w + delta
    config = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024, "vocab_size": 50257}
    for path, tensors in ((base_path, base), (ft_path, ft)):
        os.makedirs(path, exist_ok=True)
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(config, f)
    return base_path, ft_path


def read_floor(paths):
    start = time.perf_counter()
    total = 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    return time.perf_counter() - start, total


def torch_metrics(base_file, ft_file, full_svd=False, device="cpu"):
    """The same metrics with torch.linalg: float64 singular values (svdvals), or, as a naive
    script would, a full torch.linalg.svd (U, S, Vh) in the checkpoint's dtype."""
    out = {}
    with safe_open(base_file, "pt") as b, safe_open(ft_file, "pt") as f:
        for name in b.keys():
            if name not in f.keys():
                continue
            wb, wf = b.get_tensor(name).to(device).double(), f.get_tensor(name).to(device).double()
            d = wf - wb
            fro, base_fro = d.norm().item(), wb.norm().item()
            m = {"fro": fro}
            if base_fro > 0:  # zero-initialised biases have no relative change or cosine
                m.update(rel_fro=fro / base_fro,
                         cosine=(wb.flatten() @ wf.flatten()).item() / (base_fro * wf.norm().item()))
            if d.dim() == 2 and fro > 0:
                if full_svd:
                    s = torch.linalg.svd(d.float(), full_matrices=False)[1].double()
                else:
                    s = torch.linalg.svdvals(d)
                p = s / s.sum()
                p = p[p > 0]
                m.update(spectral=s[0].item(), nuclear=s.sum().item(), stable_rank=fro**2 / s[0].item() ** 2,
                         effective_rank=math.exp(-(p * p.log()).sum().item()))
            out[name] = m
    return out


def run(cmd):
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{proc.stderr}")
    # "audited N tensors in S shards in X s; ..." is the in-process analysis time.
    analysis = float(proc.stderr.split(" shards in ")[1].split("s;")[0])
    return wall, analysis


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default="target/release/neurodiff")
    p.add_argument("--dir", default="out/bench")
    p.add_argument("--device", default="cpu", help="where neurodiff and the PyTorch script compute (cpu or cuda)")
    p.add_argument("--full-svd-baseline", action="store_true",
                   help="also time a naive script that calls torch.linalg.svd (U, S, Vh) in fp32 (slow)")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count())
    base, ft = make_pair(args.dir)
    files = [os.path.join(base, "model.safetensors"), os.path.join(ft, "model.safetensors")]
    read_floor(files)  # warm the page cache
    floor, nbytes = min(read_floor(files) for _ in range(3))

    fro_wall, fro_pass = min((run([args.bin, "audit", base, ft, "--spectrum", "none", "--quiet",
                                   "--out", os.path.join(args.dir, "report-fro")]) for _ in range(3)), key=lambda r: r[1])
    full_wall, full_pass = run([args.bin, "audit", base, ft, "--quiet", "--device", args.device,
                                "--out", os.path.join(args.dir, "report-full")])

    start = time.perf_counter()
    reference = torch_metrics(*files, device=args.device)
    if args.device != "cpu":
        torch.cuda.synchronize()
    torch_s = time.perf_counter() - start
    naive_s = None
    if args.full_svd_baseline:
        start = time.perf_counter()
        torch_metrics(*files, full_svd=True, device=args.device)
        naive_s = time.perf_counter() - start

    got = {t["name"]: t for t in json.load(open(os.path.join(args.dir, "report-full", "results.json")))["analyses"]["weights"]["tensors"]}
    worst = 0.0
    for name, want in reference.items():
        for k, v in want.items():
            if v:
                worst = max(worst, abs(got[name][k] - v) / abs(v))

    print(f"machine: {os.cpu_count()} cores; pair: 2 x {nbytes / 2 / 1e6:.0f} MB fp32 (GPT-2 small)")
    print(f"read both checkpoints from page cache   {floor:8.3f} s")
    print(f"neurodiff norms-only pass (in process)  {fro_pass:8.3f} s   ratio to read floor {fro_pass / floor:5.2f}x (target <= 2x); command wall {fro_wall:.2f} s")
    print(f"neurodiff full-spectrum audit (wall)    {full_wall:8.3f} s   (analysis {full_pass:.2f} s)")
    print(f"device for spectra (both sides)         {args.device}")
    print(f"PyTorch float64 svdvals script          {torch_s:8.3f} s   speed-up of the full audit {torch_s / full_wall:5.1f}x (target >= 20x)")
    if naive_s is not None:
        print(f"PyTorch fp32 full-SVD (U,S,Vh) script   {naive_s:8.3f} s   speed-up of the full audit {naive_s / full_wall:5.1f}x")
    print(f"largest relative metric disagreement    {worst:.2e} (bound 1e-4)")


if __name__ == "__main__":
    main()
