"""Cost of the web chart's statistics: one sampler step of guided calls with the chart off and on, interleaved.

A "step" is `--calls` guided cross-attention calls (gag_core.gag_attention with the host's dense output, as the
nodes call it) at one shape; with the chart on every call adds to a GuidanceStats and the step ends with one
`summary()` (the message nodes/telemetry.py sends). Rounds alternate off / on; the ratio is the median of
per-round ratios. Host reads (tensor → Python number) per step are counted too: the chart adds one, whatever
the number of calls (statistics stay on the device until `summary`).

    python benchmarks/bench_stats.py [--device cpu|cuda] [--calls 20] [--rounds 7] [--shape sdxl|small]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gag_core  # noqa: E402

SHAPES = {  # (batch, heads, query tokens, keys, head_dim)
    "sdxl": (2, 20, 1024, 77, 64),  # SDXL's 32×32 level at 1024², cond + uncond
    "small": (2, 10, 256, 77, 64),
}


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def step(q, k, v, o_d, calls, chart, device):
    stats = gag_core.GuidanceStats() if chart else None
    t0 = time.perf_counter()
    for _ in range(calls):
        gag_core.gag_attention(q, k, v, method="gag", scale=5.0, dense=lambda *a: o_d, stats=stats)
    if stats is not None:
        stats.summary()
    sync(device)
    return time.perf_counter() - t0


def count_reads(fn) -> int:
    names = ("item", "tolist", "__float__", "__int__", "__bool__")
    real = {n: getattr(torch.Tensor, n) for n in names}
    log = []
    try:
        for n in names:
            setattr(torch.Tensor, n, lambda self, *a, _n=n, **k: (log.append(_n), real[_n](self, *a, **k))[1])
        fn()
    finally:
        for n, f in real.items():
            setattr(torch.Tensor, n, f)
    return len(log)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--shape", choices=list(SHAPES), default="sdxl")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) / float16 (CUDA default) / bfloat16")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype or ("float16" if args.device == "cuda" else "float32"))
    b, h, n, m, d = SHAPES[args.shape]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, h, n, d, generator=g).to(args.device, dtype)
    k, v = (torch.randn(b, h, m, d, generator=g).to(args.device, dtype) for _ in range(2))
    o_d = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    for chart in (False, True):  # warm-up (and the kernel's self-check on CUDA)
        step(q, k, v, o_d, 2, chart, args.device)
    off, on = [], []
    for r in range(args.rounds):
        for chart in ((False, True) if r % 2 == 0 else (True, False)):
            (on if chart else off).append(step(q, k, v, o_d, args.calls, chart, args.device))
    ratio = statistics.median(x / y for x, y in zip(on, off))
    reads_off = count_reads(lambda: step(q, k, v, o_d, args.calls, False, args.device))
    reads_on = count_reads(lambda: step(q, k, v, o_d, args.calls, True, args.device))
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{dev}, torch {torch.__version__}, {dtype}, shape {args.shape} (B, H, N, M, D) = {SHAPES[args.shape]}, "
          f"{args.calls} guided calls per step, {args.rounds} rounds")
    print(f"step, chart off: {1e3 * statistics.median(off):.1f} ms; chart on: {1e3 * statistics.median(on):.1f} ms; "
          f"on / off = {ratio:.4f} ({100 * (ratio - 1):+.2f} %, median of per-round ratios)")
    print(f"host reads per step: chart off {reads_off}, chart on {reads_on} (+{reads_on - reads_off})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
