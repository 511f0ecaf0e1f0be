"""Benchmark of BatchTopK crosscoder training: NeuroDiff (`neurodiff bench-dictionary`, tch)
against the same loop in PyTorch, on the same synthetic activations, in one run.

  python scripts/bench_crosscoder.py NEURODIFF_BIN [--device cpu|cuda] [--d 256] [--expansion 16]
                                     [--k 64] [--batch 2048] [--steps 30] [--tokens 65536]

The loop is the one docs/crosscoder.md defines (BatchTopK over the batch, L2 loss plus the
auxiliary loss over dead latents, global-norm clipping, Adam), in float32. Each side runs in its
own process (so peak memory is its own): the PyTorch side is this script re-invoked with
`--torch-side`, which makes the same data from the same seed. Prints tokens/s and peak memory
of each and their ratio. On a GPU the peak memory is also sampled from nvidia-smi while each
side runs.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

import torch


def synthetic(n, d, seed=0):
    """Paired activations: sparse combinations of random directions per model, plus noise."""
    g = torch.Generator().manual_seed(seed)
    feats = min(8 * d, 4096)
    dirs = torch.randn(2, feats, d, generator=g)
    dirs /= dirs.norm(dim=-1, keepdim=True)
    acts = (torch.rand(n, feats, generator=g) < 0.01).float() * torch.rand(n, feats, generator=g)
    return (torch.einsum("nf,mfd->nmd", acts, dirs) + 0.01 * torch.randn(n, 2, d, generator=g)).contiguous()


def make_data(path, n, d):
    """Writes `acts` as safetensors by hand (no dependency beyond torch)."""
    x = synthetic(n, d).numpy()
    header = json.dumps({"acts": {"dtype": "F32", "shape": list(x.shape), "data_offsets": [0, x.nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        f.write(x.astype("<f4").tobytes())


def torch_side(args):
    dev = torch.device(args.device)
    x_all = synthetic(args.tokens, args.d).to(dev)
    n, m, d = x_all.shape
    f = args.expansion * d
    mean = x_all.mean(0)
    scale = 1.0 / (x_all.var(0, unbiased=False).sum(-1) + 1e-8).sqrt()
    g = torch.Generator().manual_seed(0)
    w = torch.randn(m, d, f, generator=g)
    w = (w / w.norm(dim=1, keepdim=True) * 0.1).to(dev)
    W_enc = torch.nn.Parameter(w.clone())
    b_enc = torch.nn.Parameter(torch.zeros(f, device=dev))
    W_dec = torch.nn.Parameter(w.transpose(1, 2).contiguous())
    b_dec = torch.nn.Parameter(torch.zeros(m, d, device=dev))
    params = [W_enc, b_enc, W_dec, b_dec]
    opt = torch.optim.Adam(params, lr=1e-4)
    since = torch.zeros(f, dtype=torch.long, device=dev)
    dead_tokens = args.batch * 4
    k, batch = args.k, args.batch
    per_epoch = n // batch
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=gen).to(dev)

    def step(t):
        nonlocal since
        i = t % per_epoch
        x = (x_all[perm[i * batch:(i + 1) * batch]] - mean) * scale[None, :, None]
        post = torch.relu(torch.einsum("bmd,mdf->bf", x, W_enc) + b_enc)
        c = W_dec.norm(dim=2).sum(0)
        scaled = post * c
        idx = scaled.detach().flatten().topk(k * batch, sorted=False).indices
        mask = torch.zeros_like(scaled).flatten().scatter_(0, idx, 1.0).reshape(scaled.shape)
        fcode = post * mask
        x_hat = torch.einsum("bf,mfd->bmd", fcode, W_dec) + b_dec
        e = x - x_hat
        fired = fcode.detach().sum(0) > 0
        since = (since + batch).masked_fill(fired, 0)
        dead = since >= dead_tokens
        loss = e.norm(dim=-1).mean()
        n_dead = int(dead.sum())
        if n_dead > 0:
            k_aux = min(d // 2, n_dead)
            masked = scaled.detach().masked_fill(~dead[None], float("-inf"))
            aux_idx = masked.topk(k_aux, dim=-1, sorted=False).indices
            sel = torch.zeros_like(post).scatter_(-1, aux_idx, 1.0)
            r = e.detach().reshape(batch, -1)
            x_aux = torch.einsum("bf,mfd->bmd", post * sel, W_dec).reshape(batch, -1)
            aux = ((r - x_aux) ** 2).sum(-1).mean() / ((r - r.mean(0)) ** 2).sum(-1).mean()
            loss = loss + aux.nan_to_num(0.0) / 32
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    for t in range(args.warmup):
        step(t)
    sync()
    start = time.perf_counter()
    for t in range(args.warmup, args.warmup + args.steps):
        step(t)
    sync()
    secs = time.perf_counter() - start
    print(json.dumps({
        "impl": "pytorch", "device": args.device, "dict_size": f, "steps": args.steps,
        "batch": batch, "seconds": secs, "tokens_per_s": args.steps * batch / secs,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
    }))


def sampled_gpu_peak(proc):
    """Polls nvidia-smi while `proc` runs; the largest memory in use (MiB), or None."""
    peak = [None]

    def poll():
        while proc.poll() is None:
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                used = max(float(v) for v in out.split())
                peak[0] = used if peak[0] is None else max(peak[0], used)
            except Exception:  # noqa: BLE001 (no nvidia-smi: no GPU figure)
                return
            time.sleep(0.2)

    t = threading.Thread(target=poll)
    t.start()
    return t, peak


def run(cmd, device):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    poller = sampled_gpu_peak(proc) if device.startswith("cuda") else None
    out, _ = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    result = json.loads(out.strip().splitlines()[-1])
    if poller:
        poller[0].join()
        result["gpu_used_peak_mib"] = poller[1][0]
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("neurodiff", nargs="?")
    p.add_argument("--device", default="cpu")
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--expansion", type=int, default=16)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--torch-side", action="store_true")
    args = p.parse_args()
    if args.torch_side:
        return torch_side(args)
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "acts.safetensors")
        make_data(data, args.tokens, args.d)
        common = ["--expansion", str(args.expansion), "--k", str(args.k), "--batch", str(args.batch),
                  "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device]
        rust = run([args.neurodiff, "bench-dictionary", data] + common, args.device)
        py = run([sys.executable, __file__, "--torch-side", "--tokens", str(args.tokens), "--d", str(args.d)]
                 + common, args.device)
    print(f"crosscoder training, d={args.d}, {rust['dict_size']} latents, k={args.k}, batch {args.batch}, "
          f"{args.steps} timed steps, {args.device} (threads: {torch.get_num_threads()})")
    for r in (rust, py):
        gpu = f", GPU in use at peak {r['gpu_used_peak_mib']:.0f} MiB" if r.get("gpu_used_peak_mib") else ""
        print(f"  {r['impl']:>9}: {r['tokens_per_s']:10.0f} tokens/s, peak RSS {r['peak_rss_mib']:.0f} MiB{gpu}")
    print(f"  ratio neurodiff/pytorch: {rust['tokens_per_s'] / py['tokens_per_s']:.2f}x tokens/s, "
          f"{rust['peak_rss_mib'] / py['peak_rss_mib']:.2f}x peak RSS")
    print(json.dumps({"neurodiff": rust, "pytorch": py}))


if __name__ == "__main__":
    main()
