"""CPU speed and memory of gag_core against one dense SDPA call and a naive reference, measured in one run.

Prints, for the SDXL cross-attention shape and a FLUX-like joint shape scaled for CPU:
  (a) gag_attention time ÷ one dense F.scaled_dot_product_attention call   (target ≤ 3.0 / ≤ 2.0)
  (b) naive reference (entmax package + explicit matmuls, unchunked) ÷ gag_attention   (target ≥ 2)
and PLADIS (s = 2) beside GAG, which must be no slower.
Timings are interleaved (dense, gag, naive, dense, ...) and each ratio is the median of per-round ratios,
so load from other processes on a shared machine hits all three alike. Usage:
  python benchmarks/bench_attention.py [--rounds 7] [--threads 2] [--eager]
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import gag_core  # noqa: E402


def naive_cross(q, k, v, scale, beta=0.0, tau=15.0):
    """Reference: entmax package + explicit matmuls + the GAG rule as written, no chunking."""
    from entmax import entmax15

    z = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    o_s = entmax15(z, dim=-1) @ v
    o_d = torch.softmax(z, dim=-1) @ v
    return gag_core.gag_combine_reference(o_s, o_d, scale=scale, beta=beta, tau=tau).to(q.dtype)


def naive_joint(q, k, v, text, scale, beta=0.0, tau=15.0):
    """Reference for joint attention: full logits; image rows get O_d + m·(rule(O_s^t, O_d^t) − O_d^t)."""
    from entmax import entmax15

    s, e = text
    z = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    p = torch.softmax(z, dim=-1)
    o_d = p @ v
    z_t, v_t = z[..., s:e], v[:, :, s:e]
    o_s_t, o_d_t = entmax15(z_t, dim=-1) @ v_t, torch.softmax(z_t, dim=-1) @ v_t
    g = gag_core.gag_combine_reference(o_s_t, o_d_t, scale=scale, beta=beta, tau=tau)
    out = (o_d + p[..., s:e].sum(-1, keepdim=True) * (g - o_d_t)).to(q.dtype)
    out[:, :, s:e] = o_d[:, :, s:e]
    return out


def interleaved(fns: dict, rounds: int) -> dict:
    """Median seconds of each fn and median per-round ratio to the first, timed round-robin."""
    for f in fns.values():  # warm-up (and torch.compile)
        f()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            gc.collect()
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    base = next(iter(fns))
    return {name: (statistics.median(ts), statistics.median(t / b for t, b in zip(ts, times[base])))
            for name, ts in times.items()}


def shapes():
    """The two benchmark cases: (title, inputs, guided call, naive call, target for ratio (a))."""
    g = torch.Generator().manual_seed(0)
    # SDXL cross-attention: B=2 (CFG), H=10, 64×64 latent tokens, 77 text tokens, head_dim 64.
    b, h, n, m, d = 2, 10, 4096, 77, 64
    q, k, v = (torch.randn(b, h, length, d, generator=g) for length in (n, m, m))
    yield ("SDXL cross (B=2, H=10, N=4096, M=77, D=64)", (q, k, v),
           lambda: gag_core.gag_attention(q, k, v, scale=5.0), lambda: naive_cross(q, k, v, 5.0), 3.0,
           lambda: gag_core.gag_attention(q, k, v, method="pladis", scale=2.0))
    # FLUX-like joint attention scaled for CPU: 256 text + 1024 image tokens, 24 heads of 128.
    b, h, nt, ni, d = 1, 24, 256, 1024, 128
    qj, kj, vj = (torch.randn(b, h, nt + ni, d, generator=g) for _ in range(3))
    text = (0, nt)
    yield ("FLUX-like joint (B=1, H=24, 256 text + 1024 image, D=128)", (qj, kj, vj),
           lambda: gag_core.joint_gag_attention(qj, kj, vj, text_range=text, scale=5.0),
           lambda: naive_joint(qj, kj, vj, text, 5.0), 2.0,
           lambda: gag_core.joint_gag_attention(qj, kj, vj, text_range=text, method="pladis", scale=2.0))


def peak_extra_mib(case: int, threads: int) -> float:
    """Peak resident-memory growth (MiB) of one guided call beyond its inputs and output, in a fresh process."""
    # Eager (the larger working set; torch.compile would add its own compiler's memory to a first call).
    res = subprocess.run([sys.executable, __file__, "--memory-case", str(case), "--threads", str(threads)],
                         capture_output=True, text=True, env={**os.environ, "GAG_COMPILE": "0"})
    return float(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else float("nan")


def _memory_case(case: int) -> None:
    title, (q, k, v), guided, *_ = list(shapes())[case]
    out = torch.empty(q.shape[:3] + v.shape[3:])  # the output's own pages are not "extra"
    out.fill_(0)
    del out
    base = vm_hwm_kib()
    guided()
    print((vm_hwm_kib() - base) / 1024)


def vm_hwm_kib() -> int:
    """This process's peak resident memory (VmHWM, KiB). Unlike ru_maxrss it is not inherited across exec."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--eager", action="store_true", help="disable torch.compile of the entmax threshold")
    ap.add_argument("--memory-case", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.eager:
        os.environ["GAG_COMPILE"] = "0"
    torch.set_num_threads(args.threads)
    if args.memory_case is not None:
        return _memory_case(args.memory_case)
    print(f"torch {torch.__version__}, {args.threads} threads, compile={os.environ.get('GAG_COMPILE', 'auto')}, "
          f"rounds={args.rounds}", flush=True)
    for i, (title, (q, k, v), guided, naive, target, pladis) in enumerate(shapes()):
        res = interleaved({"dense SDPA": lambda: F.scaled_dot_product_attention(q, k, v),
                           "guided (gag_core)": guided, "naive reference": naive, "PLADIS (gag_core)": pladis},
                          args.rounds)
        err = (guided() - naive()).abs().max().item()
        report(title, res, err, peak_extra_mib(i, args.threads), target)


def report(title, res, err, mem, target_a):
    names = list(res)
    (t_d, _), (t_g, ratio_a), (t_n, ratio_n), (t_p, ratio_p) = (res[x] for x in names)
    ratio_b = ratio_n / ratio_a
    print(f"\n{title}")
    for name in names:
        print(f"  {name:22s} {res[name][0] * 1e3:8.1f} ms")
    print(f"  (a) gag ÷ dense   = {ratio_a:5.2f}   (target ≤ {target_a})  {'OK' if ratio_a <= target_a else 'MISS'}")
    print(f"  (b) naive ÷ gag   = {ratio_b:5.2f}   (target ≥ 2)  {'OK' if ratio_b >= 2 else 'MISS'}")
    print(f"  PLADIS ÷ dense    = {ratio_p:5.2f}   (PLADIS ÷ gag {ratio_p / ratio_a:.2f})")
    print(f"  max |gag − naive| = {err:.2e};  peak extra memory (eager, fresh process) ≈ {mem:.0f} MiB",
          flush=True)


if __name__ == "__main__":
    main()
