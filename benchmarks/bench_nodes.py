"""Overhead of the nodes in ComfyUI: sample tiny SDXL and FLUX.1 models with and without GAG / PLADIS.

Runs ComfyUI's KSampler path (nodes.common_ksampler) on the seeded tiny models of tests/test_comfyui_tiny.py
and prints, per family, the best wall time and process CPU time of a full sampling run (runs interleaved; on a
shared CPU the CPU time is the steadier figure) and the peak tensor memory, each as a ratio to the unguided
model. Peak memory: torch.cuda.max_memory_allocated on CUDA; on CPU the running sum of the PyTorch profiler's
allocation and free events (tensor memory only, not the process RSS).

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/bench_nodes.py [--steps 3] [--size 32] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# Text tokens per family: SDXL's CLIP window, FLUX.1-schnell's T5 length. CFG: SDXL 5 (cond + uncond in one
# batch), FLUX.1 1.0 (guidance-distilled, one pass per step).
SETUPS = {"sdxl": dict(text=77, cfg=5.0), "flux1": dict(text=256, cfg=1.0)}
NODES = {
    "GAG": ("GeometryAwareAttentionGuidance", dict(scale=5.0, beta=0.0)),
    "PLADIS": ("PLADISGuidance", dict(scale=2.0)),
}


def peak_memory(fn) -> int:
    """Peak bytes of tensor memory allocated while fn() runs (CUDA allocator stats, else profiler events)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = []
    for e in prof.events():
        if e.name == "[memory]":
            changes.append((e.time_range.start, e.cpu_memory_usage))
        elif e.self_cpu_memory_usage:
            changes.append((e.time_range.start, e.self_cpu_memory_usage))
    changes.sort()
    current = peak = 0
    for _, delta in changes:
        current += delta
        peak = max(peak, current)
    return peak


def best_times(fns: dict, repeats: int) -> dict:
    """Best (wall, process CPU) seconds of each fn() over `repeats` rounds, run interleaved after one warm-up
    round so that load from other processes falls on all alike; the minimum is the least disturbed run."""
    times = {k: [] for k in fns}
    for r in range(repeats + 1):
        for k, fn in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if r > 0:
                times[k].append((time.perf_counter() - w0, time.process_time() - c0))
    return {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--size", type=int, default=32, help="latent height = width")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs)")
    args = parser.parse_args()
    if not os.environ.get("COMFYUI_PATH"):
        print("bench_nodes: set COMFYUI_PATH to a ComfyUI checkout (its requirements installed) to run it.",
              file=sys.stderr)
        return 1
    torch.manual_seed(0)
    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from test_comfyui_tiny import Comfy

    comfy = Comfy()
    comfy.patch.STRICT = True
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"ComfyUI sampling, euler/normal, {args.steps} steps, latent {args.size}x{args.size}, {device}, "
          f"torch {torch.__version__}; best of {args.repeats} interleaved runs")
    print(f"{'family':8} {'tokens img+txt':>15} {'node':7} {'wall s':>8} {'x base':>7} {'CPU s':>8} {'x base':>7} "
          f"{'peak MB':>8} {'x base':>7}")
    for family in args.families:
        setup = SETUPS[family]
        model = comfy.build(family)
        positive = comfy.conditioning(family, setup["text"], seed=1)
        negative = comfy.conditioning(family, setup["text"], seed=2)
        models = {"none": model}
        for label, (node_id, inputs) in NODES.items():
            models[label] = comfy.run_node(node_id, model=model, **inputs)
        patch_size = 2 if family == "flux1" else 1
        tokens = f"{(args.size // patch_size) ** 2}+{setup['text']}"
        runs = {}
        for label, m in models.items():
            def run(m=m):
                comfy.sample(m, family, steps=args.steps, cfg=setup["cfg"], size=args.size,
                             positive=positive, negative=negative)
            runs[label] = run
        times = best_times(runs, args.repeats)
        mems = {label: peak_memory(run) for label, run in runs.items()}
        (base_wall, base_cpu), base_mem = times["none"], max(mems["none"], 1)
        for label in runs:
            wall, cpu = times[label]
            print(f"{family:8} {tokens:>15} {label:7} {wall:8.3f} {wall / base_wall:7.2f} {cpu:8.3f} "
                  f"{cpu / base_cpu:7.2f} {mems[label] / 2**20:8.1f} {mems[label] / base_mem:7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
