"""GPU cost of the fused Triton GAG kernel against one dense scaled_dot_product_attention call.

Shapes (issue 6): SDXL cross-attention (B = 2, M = 77 text keys, D = 64; H = 10 with N = 4096 and H = 20 with
N = 1024), FLUX joint attention (B = 1, H = 24, 512 text + 4096 image tokens, D = 128), Qwen-Image joint
attention (1024 and 200 text tokens + 4096 image tokens, D = 128; 1024 is the kernel's limit) and Wan's text
cross-attention (H = 40, 32760 video tokens × 512 keys, D = 128). For each it prints
the median time over CUDA events after warm-up of
  dense   one F.scaled_dot_product_attention call (cross: q × 77 keys; joint: the whole 4608² joint call)
  fused   the kernel: cross computes z, entmax, O_s, O_d and the GAG rule in one pass (dense output included);
          joint guides the image rows from the host's dense output and log-sum-exp (the dense call not included)
  torch   gag_core's PyTorch path for the same call (GAG_DISABLE_TRITON=1), for scale
and the ratio fused ÷ dense (targets: ≤ 1.0 at the SDXL shapes, ≤ 0.25 at the FLUX shape) and the bandwidth
the fused kernel achieves (bytes it must move ÷ time).
Usage:
  python benchmarks/bench_kernels.py [--dtype float16|bfloat16] [--iters 50] [--sweep] [--markdown]
  python benchmarks/bench_kernels.py --interpret   # no GPU: run every code path at tiny shapes on the CPU
                                                     # through Triton's interpreter (times are meaningless)
--sweep also times a grid of tile configurations per shape and prints the fastest (for tuning _config).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if "--interpret" in sys.argv:  # must precede the first Triton import
    os.environ["GAG_TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import gag_core  # noqa: E402
from gag_core import kernels  # noqa: E402

PARAMS = {"method": "gag", "scale": 7.0, "beta": 0.0, "tau": 15.0, "alpha": 1.5}
SHAPES = [  # name, kind, B, H, N (queries or joint length), M (keys or text tokens), D
    ("SDXL 64² (H10, N4096)", "cross", 2, 10, 4096, 77, 64),
    ("SDXL 32² (H20, N1024)", "cross", 2, 20, 1024, 77, 64),
    ("FLUX joint (H24, 512+4096)", "joint", 1, 24, 4608, 512, 128),
    ("Qwen-Image joint (H24, 1024+4096)", "joint", 1, 24, 5120, 1024, 128),
    ("Qwen-Image joint, short prompt (H24, 200+4096)", "joint", 1, 24, 4296, 200, 128),
    ("Wan cross (H40, N32760, 512 keys)", "cross", 1, 40, 32760, 512, 128),
]
TINY = [  # the same code paths at interpreter-sized shapes
    ("tiny cross", "cross", 1, 2, 64, 77, 64),
    ("tiny joint", "joint", 1, 2, 96, 32, 64),
]


def timer(fn, iters: int, warmup: int) -> float:
    """Median seconds of fn(): CUDA events on a GPU, wall clock otherwise."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fused_bytes(kind, b, h, n, m, d, elem: int, image_rows: int) -> int:
    """Bytes the fused kernel must move at least: q, k, v in; out (and for joint O_d, lse) over the guided rows."""
    kv = 2 * b * h * m * d * elem
    if kind == "cross":
        return b * h * n * d * elem * 2 + kv
    return b * h * image_rows * (d * elem * 3 + 4) + kv  # q, O_d in, out written, lse (float32)


def make_case(kind, b, h, n, m, d, dtype, device):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn((b, h, n, d), generator=gen).mul(1.5).to(dtype).to(device)
    length = n if kind == "joint" else m
    k = torch.randn((b, h, length, d), generator=gen).to(dtype).to(device)
    v = torch.randn((b, h, length, d), generator=gen).to(dtype).to(device)
    return q, k, v


def bench_shape(name, kind, b, h, n, m, d, dtype, device, iters, warmup, sweep):
    q, k, v = make_case(kind, b, h, n, m, d, dtype, device)
    row = {"shape": name}
    if kind == "cross":
        dense = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
        fused = lambda cfg=None: kernels.fused_cross_attention(q, k, v, config=cfg, **PARAMS)  # noqa: E731
        torch_path = lambda: gag_core.gag_attention(q, k, v, **PARAMS)  # noqa: E731
        image_rows = n
    else:
        text = (0, m)
        o_d, lse = gag_core.dense_attention_with_lse(q, k, v)
        dense = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
        fused = lambda cfg=None: kernels.fused_joint_attention(q, k, v, text_range=text, lse=lse,  # noqa: E731
                                                               o_dense=o_d, config=cfg, **PARAMS)
        torch_path = lambda: gag_core.joint_gag_attention(q, k, v, text_range=text,  # noqa: E731
                                                          dense=lambda *_: (o_d, lse), **PARAMS)
        image_rows = n - m
    if fused() is None:
        reason = (kernels.unsupported_reason_cross(q, k, v, **PARAMS) if kind == "cross" else
                  kernels.unsupported_reason_joint(q, k, v, text_range=(0, m), lse=lse, o_dense=o_d, **PARAMS))
        raise SystemExit(f"{name}: the fused kernel does not apply: {reason}")
    row["dense_ms"] = timer(dense, iters, warmup) * 1e3
    row["fused_ms"] = timer(fused, iters, warmup) * 1e3
    os.environ[kernels.DISABLE_ENV] = "1"
    try:
        row["torch_ms"] = timer(torch_path, max(3, iters // 10), 1) * 1e3
    finally:
        del os.environ[kernels.DISABLE_ENV]
    row["ratio"] = row["fused_ms"] / row["dense_ms"]
    elem = torch.finfo(dtype).bits // 8
    row["gbps"] = fused_bytes(kind, b, h, n, m, d, elem, image_rows) / (row["fused_ms"] / 1e3) / 1e9
    if sweep:
        row["best"] = sweep_configs(fused, m, d, iters, warmup)
    return row


def sweep_configs(fused, m, d, iters, warmup):
    """Time a grid of tile configurations; return (ms, config) of the fastest that runs."""
    block_m = max(16, kernels._next_pow2(m))
    results = []
    for block_n in (16, 32, 64):
        for num_warps in (2, 4, 8, 16):
            for block_d in (16, 32, 64):
                for block_mc in sorted({min(block_m, 64), min(block_m, 128), block_m}):
                    cfg = {"BLOCK_N": block_n, "BLOCK_M": block_m, "BLOCK_MC": block_mc, "BLOCK_D": block_d,
                           "num_warps": num_warps}
                    if block_d > kernels._next_pow2(d) or block_n * block_m > 65536:
                        continue
                    try:
                        if fused(cfg) is None:
                            continue
                        results.append((timer(lambda: fused(cfg), iters, warmup) * 1e3, cfg))
                    except Exception as exc:  # a configuration the GPU cannot hold
                        print(f"  skip {cfg}: {type(exc).__name__}", file=sys.stderr)
    return min(results, key=lambda r: r[0]) if results else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--sweep", action="store_true", help="also search tile configurations per shape")
    ap.add_argument("--markdown", action="store_true", help="print a README table")
    ap.add_argument("--interpret", action="store_true", help="no GPU: tiny shapes through Triton's interpreter")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    if args.interpret:
        device, shapes, iters, warmup, gpu = "cpu", TINY, 2, 1, "CPU (Triton interpreter; times meaningless)"
    elif torch.cuda.is_available():
        device, shapes, iters, warmup = "cuda", SHAPES, args.iters, args.warmup
        gpu = torch.cuda.get_device_name()
    else:
        raise SystemExit("no CUDA GPU: nothing to time (use --interpret to exercise the script on the CPU)")
    if not kernels.triton_available():
        raise SystemExit(f"triton is not available: {kernels._loaded.get('error')}")
    import triton

    print(f"device: {gpu}; torch {torch.__version__}, triton {triton.__version__}, dtype {args.dtype}; "
          f"GAG λ={PARAMS['scale']}, β={PARAMS['beta']}, τ={PARAMS['tau']}, α={PARAMS['alpha']}")
    rows = [bench_shape(*shape, dtype, device, iters, warmup, args.sweep and not args.interpret)
            for shape in shapes]
    if args.markdown:
        print(f"\n| shape ({gpu}, {args.dtype}) | dense SDPA ms | fused GAG ms | fused ÷ dense | "
              f"fused GB/s | PyTorch path ms |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['shape']} | {r['dense_ms']:.3f} | {r['fused_ms']:.3f} | {r['ratio']:.2f} | "
                  f"{r['gbps']:.0f} | {r['torch_ms']:.3f} |")
    else:
        for r in rows:
            line = (f"{r['shape']:28s} dense {r['dense_ms']:8.3f} ms  fused {r['fused_ms']:8.3f} ms  "
                    f"ratio {r['ratio']:5.2f}  {r['gbps']:7.1f} GB/s  PyTorch path {r['torch_ms']:8.3f} ms")
            if r.get("best"):
                line += f"\n{'':28s} best config {r['best'][1]}: {r['best'][0]:.3f} ms"
            print(line)


if __name__ == "__main__":
    main()
