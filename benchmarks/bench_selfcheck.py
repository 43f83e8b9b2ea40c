"""The fused kernel's self-check report at the family shapes: one guided call per class, then the report table.

gag_core checks each kernel class once against its PyTorch path on a slice of the first real call
(gag_core.kernel_self_check_report()); this runs one call per class (SDXL and Wan cross-attention with the
host's dense output, FLUX.1, SD3 and Qwen-Image joint attention; GAG and PLADIS; fp16 and bf16) and prints a
markdown table of the checks: relative error, tolerance, verdict, seconds.

    python benchmarks/bench_selfcheck.py              # CUDA, full shapes
    python benchmarks/bench_selfcheck.py --interpret  # no GPU: small shapes through Triton's interpreter
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if "--interpret" in sys.argv:  # must precede the first Triton import
    os.environ["GAG_TRITON_INTERPRET"] = "1"
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gag_core  # noqa: E402
from gag_core import kernels  # noqa: E402

# (name, mode, batch, heads, image rows, keys, head_dim)
SHAPES = [
    ("sdxl", "cross", 2, 10, 4096, 77, 64),
    ("wan", "cross", 2, 40, 2048, 512, 128),
    ("sd3", "joint", 1, 24, 4096, 333, 64),
    ("flux", "joint", 1, 24, 4096, 512, 128),
    ("qwen_image", "joint", 1, 24, 4096, 1024, 128),
]
TINY = [(n, m, 1, 2, 24, min(k, 40), 16) for n, m, _, _, _, k, _ in SHAPES]


def one_call(name, mode, b, h, n, m, d, dtype, method, device):
    g = torch.Generator(device=device).manual_seed(0)
    params = dict(method=method, scale=5.0 if method == "gag" else 2.0, beta=0.0, tau=15.0, alpha=1.5)

    def dense(q, k, v, mask):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    if mode == "cross":
        q = torch.randn(b, h, n, d, device=device, dtype=dtype, generator=g)
        k, v = (torch.randn(b, h, m, d, device=device, dtype=dtype, generator=g) for _ in range(2))
        why = kernels.unsupported_reason_cross(q, k, v, alpha=1.5, o_dense=q)
        gag_core.gag_attention(q, k, v, dense=dense, **params)
    else:
        q, k, v = (torch.randn(b, h, m + n, d, device=device, dtype=dtype, generator=g) for _ in range(3))
        why = None
        gag_core.joint_gag_attention(q, k, v, text_range=(0, m), **params)
    return why


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interpret", action="store_true", help="no GPU: small shapes through Triton's interpreter")
    args = ap.parse_args()
    if args.interpret:
        device, shapes = "cpu", TINY
    elif torch.cuda.is_available():
        device, shapes = "cuda", SHAPES
    else:
        raise SystemExit("no CUDA GPU (use --interpret to exercise the script on the CPU)")
    notes = []
    for shape in shapes:
        for dtype in (torch.float16, torch.bfloat16):
            for method in ("gag", "pladis"):
                why = one_call(*shape, dtype, method, device)
                if why:
                    notes.append(f"{shape[0]} {dtype}: kernel not applicable ({why})")
    report = gag_core.kernel_self_check_report()
    print(f"self-checks on {torch.cuda.get_device_name() if device == 'cuda' else 'CPU (Triton interpreter)'}, "
          f"torch {torch.__version__}\n")
    print("| class | relative error | tolerance | ok | seconds |\n|---|---|---|---|---|")
    for r in report:
        cls = " ".join(str(x) for x in r["class"])
        print(f"| {cls} | {r['error']:.3g} | {r['tolerance']:.3g} | {'yes' if r['ok'] else '**no**'} | "
              f"{r['seconds']:.2f} |")
    for line in notes:
        print(line)
    return 0 if report and all(r["ok"] for r in report) else 1


if __name__ == "__main__":
    sys.exit(main())
