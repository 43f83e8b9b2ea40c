"""Step time of a tiny ComfyUI model compiled by the host's TorchCompileModel (inductor, CPU), with and without GAG.

    COMFYUI_PATH=<ComfyUI> python benchmarks/bench_compile.py [family] [latent size] [steps]

Builds the seeded tiny model of tests/test_comfyui_tiny.py, samples once per configuration to warm up (the
compile), then times `steps` euler steps (CFG 2, so one batched cond + uncond pass per step) and prints seconds
per step: eager, eager + GAG, compiled, compiled + GAG (GAG after and before the compile node), and the number of
graph breaks torch._dynamo counted while compiling the GAG model. Also checks that the compiled GAG result equals
the eager GAG result within float noise. Numbers: docs/compatibility.md.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GAG_COMPILE", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402

from test_comfyui_tiny import Comfy  # noqa: E402


def main(family: str = "sd15", size: int = 32, steps: int = 4) -> None:
    c = Comfy()
    asyncio.run(c.nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    from torch._dynamo.utils import counters

    base = c.build(family)

    def gag(m):
        return c.run_node("GeometryAwareAttentionGuidanceAdvanced", model=m, method="gag", scale=5.0, beta=0.0,
                          tau=15.0, alpha=1.5, start_percent=0.0, end_percent=1.0, blocks="auto")

    def compiled(m):
        return c.run_node("TorchCompileModel", model=m, backend="inductor")

    def timed(m, label):
        counters.clear()
        t0 = time.perf_counter()
        c.sample(m, family, steps=2, size=size)  # warm-up: the compile happens here
        warm = time.perf_counter() - t0
        breaks = sum(counters["graph_break"].values())
        t0 = time.perf_counter()
        out = c.sample(m, family, steps=steps, size=size)
        per_step = (time.perf_counter() - t0) / steps
        print(f"{label:28s} {per_step * 1000:8.1f} ms/step  (warm-up {warm:6.1f} s, graph breaks while "
              f"compiling {breaks})", flush=True)
        return out

    eager = timed(gag(base), "eager + GAG")
    timed(base, "eager")
    timed(compiled(base), "compiled (inductor)")
    after = timed(gag(compiled(base)), "compiled, then GAG")
    before = timed(compiled(gag(base)), "GAG, then compiled")
    for label, out in (("compiled, then GAG", after), ("GAG, then compiled", before)):
        err = float((out - eager).abs().max() / eager.abs().max())
        print(f"{label}: max |compiled − eager GAG| / max |eager GAG| = {err:.2e}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {family} tiny, latent {size}x{size}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "sd15", int(args[1]) if len(args) > 1 else 32, int(args[2]) if len(args) > 2 else 4)
