"""Benchmark of the warm model cache on a 20-shard Tier II audit of a GPT-2-small-sized pair.

  python scripts/bench_cache.py [--bin target/release/neurodiff] [--dir out/bench-act]
                                [--shards 20] [--shard-samples 2] [--seq-len 64]

Makes (once, then reuses) bench_activations.py's GPT-2-small-sized pair (124M fp32 parameters
each), then runs in this one run `neurodiff audit --analyses activations,logit-lens` over
`--shards` corpus shards per analysis twice: with the model cache off (`--model-cache-bytes 0`:
every shard loads both models) and on (the default bound). From each audit's log (the `models
ready` line each shard writes) it sums the seconds spent loading, and prints the wall time, the
loading time and its share of the wall time of each, with the results compared (they must be
equal: the cache changes where the models come from, not what they compute).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_activations import make_pair  # noqa: E402
from bench_scale import compare  # noqa: E402


def audit(a, cache_bytes, out):
    """Wall seconds, the shards' summed loading seconds and how many were warm, the results."""
    cmd = [a.bin, "audit", os.path.join(a.dir, "base"), os.path.join(a.dir, "ft"),
           "--analyses", "activations,logit-lens", "--max-samples", str(a.shards * a.shard_samples),
           "--shard-samples", str(a.shard_samples), "--seq-len", str(a.seq_len), "--batch-size",
           str(a.shard_samples), "--model-cache-bytes", str(cache_bytes), "--quiet", "--out", out]
    env = dict(os.environ, RUST_LOG="neurodiff_exec=info", NO_COLOR="1")
    started = time.perf_counter()
    run = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{run.stderr[-2000:]}")
    ready = re.findall(r"load_s=([0-9.e-]+) warm=(true|false)", run.stderr)
    load = sum(float(s) for s, _ in ready)
    warm = sum(w == "true" for _, w in ready)
    results = json.load(open(os.path.join(out, "results.json")))
    return wall, load, len(ready), warm, results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/neurodiff")
    ap.add_argument("--dir", default="out/bench-act")
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--shard-samples", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    a = ap.parse_args()
    make_pair(a.dir)
    print(f"threads {os.cpu_count()}, {a.shards} shards x 2 analyses, {a.shard_samples} samples "
          f"x up to {a.seq_len} tokens each", flush=True)
    rows = {}
    for name, bytes_ in [("cache off", 0), ("cache on", 8 << 30)]:
        rows[name] = audit(a, bytes_, os.path.join(a.dir, f"report-cache-{bytes_}"))
        wall, load, shards, warm, _ = rows[name]
        print(f"{name:9s}: {wall:7.1f} s wall, {load:6.1f} s loading over {shards} shards "
              f"({warm} warm): {100 * load / wall:4.1f}% of the wall time", flush=True)
    worst = compare(rows["cache off"][4]["analyses"], rows["cache on"][4]["analyses"], "analyses")
    off, on = rows["cache off"][0], rows["cache on"][0]
    print(f"results equal (largest relative difference {worst:.1e}); the cache saves "
          f"{off - on:.1f} s ({100 * (off - on) / off:.0f}% of the wall time)")


if __name__ == "__main__":
    main()
