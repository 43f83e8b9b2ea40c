"""Step time of a tiny ComfyUI model compiled by the host's TorchCompileModel (inductor, CPU), with and without GAG.

    COMFYUI_PATH=<ComfyUI> python benchmarks/bench_compile.py [family] [latent size] [steps] [interleaved]

Builds the seeded tiny model of tests/test_comfyui_tiny.py and, for each configuration in a fresh process
(eager, eager + GAG, compiled, GAG after and before the compile node), samples once to warm up (the compile),
then times `steps` euler steps (CFG 2: one batched cond + uncond pass per step), best of two. Prints ms per
step, the graph breaks and graphs torch._dynamo counted while compiling, and the largest difference from the
eager result of the same model. With `interleaved`, one process times eager, eager + GAG, compiled and compiled
then GAG in alternating rounds (medians; for a machine whose load changes). Numbers: docs/compatibility.md.
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


CONFIGS = ("eager", "eager + GAG", "compiled", "compiled, then GAG", "GAG, then compiled")


def _host(family: str):
    """The host with its extra nodes, the tiny `family` model, and the GAG (λ 5) and TorchCompileModel patches."""
    c = Comfy()
    asyncio.run(c.nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))

    def gag(m):
        return c.run_node("GeometryAwareAttentionGuidanceAdvanced", model=m, method="gag", scale=5.0, beta=0.0,
                          tau=15.0, alpha=1.5, start_percent=0.0, end_percent=1.0, blocks="auto")

    def compiled(m):
        return c.run_node("TorchCompileModel", model=m, backend="inductor")

    return c, c.build(family), gag, compiled


def run_one(config: str, family: str, size: int, steps: int) -> None:
    """Time one configuration (a fresh process each, so no compiled graph is shared between them)."""
    # dynamo's default recompile limit (8), as in ComfyUI: frames past it run eagerly, in every configuration
    from torch._dynamo.utils import counters

    c, base, gag, compiled = _host(family)

    model = {"eager": lambda: base, "eager + GAG": lambda: gag(base), "compiled": lambda: compiled(base),
             "compiled, then GAG": lambda: gag(compiled(base)), "GAG, then compiled": lambda: compiled(gag(base))}
    m = model[config]()
    counters.clear()
    t0 = time.perf_counter()
    c.sample(m, family, steps=2, size=size)  # warm-up: the compile happens here
    warm = time.perf_counter() - t0
    breaks, graphs = sum(counters["graph_break"].values()), counters["stats"].get("unique_graphs", 0)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        out = c.sample(m, family, steps=steps, size=size)
        times.append((time.perf_counter() - t0) / steps)
    reference = c.sample(gag(base) if "GAG" in config else base, family, steps=steps, size=size)
    err = float((out - reference).abs().max() / reference.abs().max())
    print(f"RESULT {config:20s} {min(times) * 1000:8.1f} ms/step  warm-up {warm:6.1f} s  graph breaks while "
          f"compiling {breaks}  graphs {graphs}  max|out − eager| / max|eager| {err:.1e}", flush=True)


def interleaved(family: str, size: int, steps: int, rounds: int = 7) -> None:
    """Eager, eager + GAG, compiled, compiled then GAG in one process, timed in interleaved rounds (median), so
    a shared machine's changing load falls on every configuration alike."""
    import statistics

    from torch._dynamo.utils import counters

    c, base, gag, to_compiled = _host(family)
    compiled = to_compiled(base)
    models = {"eager": base, "eager + GAG": gag(base), "compiled": compiled, "compiled, then GAG": gag(compiled)}
    outs, warm = {}, {}
    for label, m in models.items():
        counters.clear()
        t0 = time.perf_counter()
        outs[label] = c.sample(m, family, steps=steps, size=size)
        warm[label] = (time.perf_counter() - t0, sum(counters["graph_break"].values()),
                       counters["stats"].get("unique_graphs", 0))
    times = {label: [] for label in models}
    for _ in range(rounds):
        for label, m in models.items():
            t0 = time.perf_counter()
            c.sample(m, family, steps=steps, size=size)
            times[label].append((time.perf_counter() - t0) / steps)
    for label in models:
        w, breaks, graphs = warm[label]
        ref = outs["eager + GAG" if "GAG" in label else "eager"]
        err = float((outs[label] - ref).abs().max() / ref.abs().max())
        print(f"{label:20s} {statistics.median(times[label]) * 1000:8.1f} ms/step (median of {rounds}, min "
              f"{min(times[label]) * 1000:.1f})  first run {w:6.1f} s  graph breaks while compiling {breaks}  "
              f"graphs {graphs}  max|out − eager| / max|eager| {err:.1e}", flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {family} tiny, latent {size}x{size}, "
          f"{steps} steps of CFG 2, interleaved rounds")


def main(family: str = "sd15", size: int = 32, steps: int = 4) -> None:
    import subprocess

    for config in CONFIGS:
        proc = subprocess.run([sys.executable, __file__, family, str(size), str(steps), config], capture_output=True,
                              text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
        print(lines[-1][7:] if lines else f"{config}: failed\n{proc.stderr[-2000:]}", flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {family} tiny, latent {size}x{size}, "
          f"{steps} steps of CFG 2, best of 2")


if __name__ == "__main__":
    args = sys.argv[1:]
    family, size, steps = (args[0] if args else "sd15", int(args[1]) if len(args) > 1 else 32,
                           int(args[2]) if len(args) > 2 else 4)
    if len(args) > 3 and args[3] == "interleaved":
        interleaved(family, size, steps)
    elif len(args) > 3:
        run_one(args[3], family, size, steps)
    else:
        main(family, size, steps)
