"""Whole-step overhead of GAG / PLADIS at real model width, through ComfyUI's KSampler, on the CPU (or CUDA).

Builds the host's own model classes (comfy.supported_models.SDXL / Flux / QwenImage) at their real width --
real channel counts, head counts, head dims and token counts at 1024x1024 -- with seeded random weights, and
samples them through nodes.common_ksampler (euler / normal) unguided, with the GAG node and with the PLADIS
node, interleaved round-robin (the order rotates every round); each ratio is the median of per-round ratios,
so load from other processes hits all settings alike.

Depth is the one thing reduced, by the same reduction for every setting: each transformer stack keeps
`--depth` blocks (default 1) in place of the real count (SDXL: every SpatialTransformer keeps its level,
resnets, up/downsamplers and projections and runs `depth` BasicTransformerBlocks instead of 2 or 10; FLUX.1:
`depth` double + `depth` single blocks instead of 19 + 38; Qwen-Image: `depth` blocks instead of 60).
Forward hooks time every transformer block, so the full-depth step is extrapolated per block kind:

    T_full = T_step + sum over kinds of (n_full / n_run - 1) * (time in blocks of that kind during the step)

for the baseline and for each guided setting alike; the printed arithmetic shows the terms.

Reported per model and setting: step time and its ratio to the baseline (median of per-round ratios, wall
clock; process CPU time beside it), the time in the guided attention calls (a timing override on the
baseline, a timing wrapper around the pack's override on the guided settings: the same calls, bucketed by
the same rule) and its share of the baseline step, peak memory (tensor memory from the PyTorch profiler's
allocation events on CPU, torch.cuda.max_memory_allocated on CUDA; "with weights" adds the parameter
bytes) and the full-depth extrapolation. `--profile` adds one profiled step per setting (not in the
medians) and prints the operators whose self time grows most over the baseline.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/bench_realwidth.py [--quick] [--models sdxl flux1 qwen_image]
        [--rounds 2] [--steps 1] [--depth 1] [--threads 2] [--profile] [--attention pytorch|default]
        [--dtype float32|float16|bfloat16] [--chart] [--compile]

--chart adds GAG+chart / PLADIS+chart: the same nodes with the web chart's statistics on (the pack's telemetry
subscribed, messages dropped). --compile adds baseline / GAG / PLADIS +compile: ComfyUI's TorchCompileModel
(inductor) applied after the guidance node, on a second model without the timing hooks, each compared with the
compiled baseline (benchmarks/gpu_check.sh runs both on CUDA).
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER = {  # GAG paper, H100: (baseline s, GAG s, GAG %, PLADIS %, peak memory GAG %)
    "sdxl": "SDXL 50 steps 5.042 s -> GAG 5.783 s (+14.7 %), PLADIS +10.4 %, peak memory +0.9 %",
    "flux1": "FLUX.1-schnell 4 steps 1.342 s -> GAG 1.823 s (+35.8 %), PLADIS +16.8 %, peak memory +3.8 %",
}
NODES = {
    "GAG": ("GeometryAwareAttentionGuidance", dict(scale=5.0, beta=0.0)),
    "PLADIS": ("PLADISGuidance", dict(scale=2.0)),
}


# ------------------------------------------------------------------------------------------ model setups

def sdxl_setup(depth: int) -> dict:
    """SDXL base at 1024x1024: latent 4x128x128, levels of 4096 (640 ch, 10 heads) and 1024 (1280 ch, 20 heads)
    image tokens, 77 CLIP tokens of 2048 channels, CFG 5 (cond + uncond in one batch of 2)."""
    d = depth
    config = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                  num_classes="sequential", adm_in_channels=2816, in_channels=4, model_channels=320,
                  num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, d, d, d, d], channel_mult=[1, 2, 4],
                  transformer_depth_middle=d, use_linear_in_transformer=True, context_dim=2048, num_head_channels=64,
                  transformer_depth_output=[0, 0, 0, d, d, d, d, d, d], use_temporal_attention=False,
                  use_temporal_resblock=False)
    # block kinds: (group, tokens) -> (blocks run, blocks in the real model); input 2 and output 3 res blocks
    # per level, 2 transformer blocks each at 4096 tokens, 10 at 1024, middle 10.
    kinds = {("io", 4096): (5 * d, 5 * 2), ("io", 1024): (5 * d, 5 * 10), ("middle", 1024): (d, 10)}
    return dict(cls="SDXL", config=config, latent=(4, 128, 128), text=77, text_dim=2048, cfg=5.0,
                extra=lambda g: {"pooled_output": torch.randn(1, 1280, generator=g), "width": 1024, "height": 1024},
                block_class="BasicTransformerBlock", kinds=kinds, tokens="4096 / 1024 img + 77 txt, batch 2 (CFG)",
                kind_of=lambda name, x: ("middle" if name.startswith("middle_block") else "io", x.shape[1]),
                guided=lambda q_len, k_len, opts: k_len != q_len and str(opts.get("block", ("",))[0]) in
                ("input", "output"))


def flux1_setup(depth: int) -> dict:
    """FLUX.1-dev at 1024x1024: 3072 wide, 24 heads x 128, 4096 image + 512 T5 tokens, double and single blocks,
    guidance-distilled (CFG 1: one pass of batch 1 per step)."""
    config = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                  hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=depth, depth_single_blocks=depth,
                  axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True,
                  txt_ids_dims=[])
    kinds = {"double": (depth, 19), "single": (depth, 38)}
    return dict(cls="Flux", config=config, latent=(16, 128, 128), text=512, text_dim=4096, cfg=1.0,
                extra=lambda g: {"pooled_output": torch.randn(1, 768, generator=g), "guidance": 3.5},
                block_class=("DoubleStreamBlock", "SingleStreamBlock"), kinds=kinds,
                tokens="4096 img + 512 txt, batch 1",
                kind_of=lambda name, x: "double" if name.startswith("double") else "single",
                guided=lambda q_len, k_len, opts: True)


def qwen_image_setup(depth: int, text: int = 256) -> dict:
    """Qwen-Image at 1024x1024: 3072 wide, 24 heads x 128, 4096 image + `text` Qwen2.5-VL tokens (3584 ch),
    double-stream blocks only; CFG 1 here (one pass of batch 1 per step, the per-pass cost is what is measured)."""
    config = dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=depth,
                  attention_head_dim=128, num_attention_heads=24, joint_attention_dim=3584,
                  axes_dims_rope=(16, 56, 56))
    return dict(cls="QwenImage", config=config, latent=(16, 128, 128), text=text, text_dim=3584, cfg=1.0,
                extra=lambda g: {}, block_class="QwenImageTransformerBlock", kinds={"double": (depth, 60)},
                tokens=f"4096 img + {text} txt, batch 1", kind_of=lambda name, x: "double",
                guided=lambda q_len, k_len, opts: True)


SETUPS = {"sdxl": sdxl_setup, "flux1": flux1_setup, "qwen_image": qwen_image_setup}


# ------------------------------------------------------------------------------------------ instruments

class Clock:
    """Per-step accumulators: time in transformer blocks per kind and in the guided attention calls."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.blocks = defaultdict(float)  # kind -> seconds
        self.block_calls = defaultdict(int)
        self.guided = 0.0  # seconds in attention calls of the guided bucket
        self.guided_calls = 0
        self.attention = 0.0  # seconds in all attention calls
        self.attention_calls = 0


def now() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def hook_blocks(net: torch.nn.Module, setup: dict, clock: Clock) -> None:
    """Time every transformer block of `net` with forward hooks, by block kind."""
    names = setup["block_class"] if isinstance(setup["block_class"], tuple) else (setup["block_class"],)
    found = 0
    for name, mod in net.named_modules():
        if type(mod).__name__ not in names:
            continue
        found += 1

        def pre(module, args, name=name):
            x = args[0] if args else None
            module._bench_kind = setup["kind_of"](name, x)
            module._bench_t0 = now()

        def post(module, args, output):
            clock.blocks[module._bench_kind] += now() - module._bench_t0
            clock.block_calls[module._bench_kind] += 1

        mod.register_forward_pre_hook(pre)
        mod.register_forward_hook(post)
    if not found:
        raise RuntimeError(f"no {names} module found in {type(net).__name__}")


def call_lengths(args, kwargs):
    """(q length, k length, transformer_options) of one attention call, in either of ComfyUI's layouts."""
    q = args[0] if args else kwargs.get("q", kwargs.get("query"))
    k = args[1] if len(args) > 1 else kwargs.get("k", kwargs.get("key"))
    skip = kwargs.get("skip_reshape", args[6] if len(args) > 6 else False)
    dim = 2 if skip else 1
    return q.shape[dim], k.shape[dim], kwargs.get("transformer_options") or {}


class TimingOverride:
    """A transparent optimized_attention_override for the baseline: runs the kernel, times the calls."""

    def __init__(self, setup: dict, clock: Clock):
        self.setup, self.clock = setup, clock

    def __call__(self, func, *args, **kwargs):
        t0 = now()
        out = func(*args, **kwargs)
        record(self.setup, self.clock, args, kwargs, now() - t0)
        return out


def record(setup, clock, args, kwargs, seconds):
    q_len, k_len, opts = call_lengths(args, kwargs)
    clock.attention += seconds
    clock.attention_calls += 1
    if setup["guided"](q_len, k_len, opts):
        clock.guided += seconds
        clock.guided_calls += 1


def time_guided_attention(patch_module, state: dict) -> None:
    """Wrap the pack's GuidedAttention.__call__ once so that its calls are timed into state['clock']."""
    cls = patch_module.GuidedAttention
    if getattr(cls, "_bench_wrapped", False):
        return
    original = cls.__call__

    def timed(self, func, *args, **kwargs):
        if state.get("clock") is None:  # not timed (compiled settings): no synchronisation either
            return original(self, func, *args, **kwargs)
        t0 = now()
        out = original(self, func, *args, **kwargs)
        if state.get("clock") is not None:
            record(state["setup"], state["clock"], args, kwargs, now() - t0)
        return out

    cls.__call__ = timed
    cls._bench_wrapped = True


def peak_tensor_bytes(fn) -> int:
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
    return _peak_from_events(prof)


def _peak_from_events(prof) -> int:
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


def profiled_step(fn):
    """(peak tensor bytes, {op name: self CPU seconds}) of one fn() under the PyTorch profiler."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts, profile_memory=True) as prof:
        fn()
    ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    return _peak_from_events(prof), ops


# ------------------------------------------------------------------------------------------ the run

def build(comfy, setup: dict, seed: int = 0, dtype=torch.float32):
    """The real-width model (reduced depth) in a ModelPatcher, weights from a seeded normal (fan-in scaled)."""
    model_config = getattr(comfy.supported_models, setup["cls"])(setup["config"])
    model_config.set_inference_dtype(dtype, None)
    base = model_config.get_model({})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in base.diffusion_model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / (p[0].numel() ** 0.5))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02 + (1.0 if "norm" in name else 0.0))
        for buf in base.diffusion_model.buffers():
            if buf.is_floating_point() and buf.numel() and not torch.isfinite(buf).all():
                buf.zero_()
    base.diffusion_model.eval()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        base.to(device)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=cpu)


def conditioning(setup: dict, seed: int):
    gen = torch.Generator().manual_seed(seed)
    context = torch.randn(1, setup["text"], setup["text_dim"], generator=gen)
    return [[context, setup["extra"](gen)]]


def weight_bytes(model) -> int:
    net = model.model.diffusion_model
    return sum(t.numel() * t.element_size() for t in list(net.parameters()) + list(net.buffers()))


def run_model(comfy, key: str, args) -> dict:
    setup = SETUPS[key](args.depth)
    state = {"setup": setup, "clock": None}
    time_guided_attention(comfy.patch, state)
    t0 = time.perf_counter()
    dtype = getattr(torch, args.dtype)
    model = build(comfy, setup, dtype=dtype)
    wbytes = weight_bytes(model)
    clock = Clock()
    hook_blocks(model.model.diffusion_model, setup, clock)
    base = model.clone()
    base.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = \
        TimingOverride(setup, clock)
    models = {"baseline": base}
    for label, (node_id, inputs) in NODES.items():
        models[label] = comfy.run_node(node_id, model=model, **inputs)
    if args.chart:  # the web chart shown: the pack's telemetry subscribed for node "12", messages dropped
        telemetry = sys.modules[comfy.patch.__name__.rsplit(".", 1)[0] + ".telemetry"].TELEMETRY
        telemetry.sender = lambda event, data, client: None
        telemetry.subscribe("bench", ["12"])
        for label, (node_id, inputs) in NODES.items():
            models[label + "+chart"] = comfy.run_node(node_id, unique_id="12", model=model, **inputs)
    if args.compile:  # TorchCompileModel after the guidance node, on a second model without timing hooks
        model_c = build(comfy, setup, dtype=dtype)
        models["baseline+compile"] = compiled(model_c)
        for label, (node_id, inputs) in NODES.items():
            models[label + "+compile"] = compiled(comfy.run_node(node_id, model=model_c, **inputs))
    positive, negative = conditioning(setup, 1), conditioning(setup, 2)
    c, h, w = setup["latent"]
    print(f"\n## {key}: {setup['tokens']}; {wbytes / 2**30:.2f} GiB of weights at depth {args.depth} "
          f"(built in {time.perf_counter() - t0:.0f} s)", flush=True)

    def run(m, steps=args.steps):
        latent = {"samples": torch.zeros(1, c, h, w)}
        comfy.nodes.common_ksampler(m, 0, steps, setup["cfg"], "euler", "normal", positive, negative,
                                    latent, denoise=1.0, disable_noise=False)

    # Warm-up: one step of every setting at the measured size, so torch.compile compiles what the default policy
    # compiles (it decides by call size) and the weights are paged in before anything is timed.
    t0 = time.perf_counter()
    for m in models.values():
        run(m, steps=1)
    print(f"   warm-up (one step per setting): {time.perf_counter() - t0:.0f} s", flush=True)
    labels = list(models)
    rows = {lab: [] for lab in labels}  # per round: dict of measurements
    for r in range(args.rounds):
        order = labels[r % len(labels):] + labels[: r % len(labels)]
        for lab in order:
            gc.collect()
            clock.reset()
            state["clock"] = clock if lab != "baseline" and not lab.endswith("+compile") else None
            w0, c0 = now(), time.process_time()
            run(models[lab])
            wall, cpu = now() - w0, time.process_time() - c0
            state["clock"] = None
            rows[lab].append(dict(wall=wall, cpu=cpu, blocks=dict(clock.blocks), calls=dict(clock.block_calls),
                                  guided=clock.guided, guided_calls=clock.guided_calls, attention=clock.attention))
            print(f"   round {r + 1} {lab:8s} {wall:7.1f} s wall, {cpu:7.1f} s CPU, guided calls "
                  f"{clock.guided_calls} in {clock.guided:.2f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    mem, ops = {}, {}
    if args.profile:
        for lab in labels:
            gc.collect()
            mem[lab], ops[lab] = profiled_step(lambda: run(models[lab]))
    elif args.memory:
        for lab in labels:
            gc.collect()
            mem[lab] = peak_tensor_bytes(lambda: run(models[lab]))
    return dict(key=key, setup=setup, rows=rows, mem=mem, ops=ops, wbytes=wbytes, steps=args.steps)


def compiled(model):
    """What ComfyUI's TorchCompileModel node (comfy_extras/nodes_torch_compile.py) does to a model, inductor."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    options = {}
    try:
        from comfy_extras.nodes_torch_compile import skip_torch_compile_dict

        options["guard_filter_fn"] = skip_torch_compile_dict
    except ImportError:
        pass
    m = model.clone()
    set_torch_compile_wrapper(model=m, backend="inductor", options=options or None)
    return m


def med(xs):
    return statistics.median(xs)


def report(res: dict, args) -> None:
    rows, setup, steps = res["rows"], res["setup"], res["steps"]
    base = rows["baseline"]
    print(f"\n### {res['key']} at real width, depth {args.depth} (per step; ratios = median of per-round ratios, "
          f"{len(base)} round(s))")
    print(f"{'setting':9} {'step s':>8} {'x base':>7} {'CPU x':>7} {'guided attn s':>14} {'calls':>6} "
          f"{'call x':>7} {'peak MiB':>9} {'x base':>7} {'w/ weights':>10}")
    full = {}
    for lab, rs in rows.items():
        ratio = med([r["wall"] / b["wall"] for r, b in zip(rs, base)])
        cpu_ratio = med([r["cpu"] / b["cpu"] for r, b in zip(rs, base)])
        g = med([r["guided"] for r in rs]) / steps
        call_ratio = med([r["guided"] / max(b["guided"], 1e-9) for r, b in zip(rs, base)])
        mem = res["mem"].get(lab)
        mem_s = "" if mem is None else (
            f"{mem / 2**20:9.0f} {mem / max(res['mem']['baseline'], 1):7.3f} "
            f"{(mem + res['wbytes']) / (res['mem']['baseline'] + res['wbytes']):10.4f}")
        print(f"{lab:9} {med([r['wall'] for r in rs]) / steps:8.2f} {ratio:7.3f} {cpu_ratio:7.3f} {g:14.2f} "
              f"{rs[0]['guided_calls'] // steps:6d} {call_ratio:7.2f} {mem_s}")
        # full-depth extrapolation per round, then the median
        ext = []
        for r in rs:
            extra = sum((nf / nr - 1.0) * r["blocks"].get(kind, 0.0) for kind, (nr, nf) in setup["kinds"].items())
            ext.append((r["wall"] + extra) / steps)
        full[lab] = ext
    if "baseline+compile" in rows:  # compiled settings against the compiled baseline
        for lab in [x for x in rows if x.endswith("+compile") and x != "baseline+compile"]:
            ratio = med([r["wall"] / b["wall"] for r, b in zip(rows[lab], rows["baseline+compile"])])
            print(f"  {lab} vs baseline+compile: x{ratio:.3f} ({100 * (ratio - 1):+.1f} %) per step at depth "
                  f"{args.depth}")
    share = med([b["guided"] / b["wall"] for b in base])
    print(f"share of the baseline step in the calls GAG guides: {100 * share:.1f} % "
          f"(all attention calls: {100 * med([b['attention'] / b['wall'] for b in base]):.1f} %)")
    print("full-depth extrapolation: T_full = T_step + sum_kind (n_full / n_run - 1) * T_kind  (one round shown, s)")
    for lab, rs in rows.items():
        r = rs[len(rs) // 2]
        terms = " + ".join(f"({nf}/{nr} - 1) x {r['blocks'].get(kind, 0.0) / steps:.2f} [{fmt_kind(kind)}]"
                           for kind, (nr, nf) in setup["kinds"].items())
        print(f"  {lab:8s} {r['wall'] / steps:.2f} + {terms} = {full[lab][len(rs) // 2]:.1f} s")
    for lab in rows:
        if lab == "baseline":
            continue
        ratio = med([x / b for x, b in zip(full[lab], full["baseline"])])
        print(f"  {lab}: full-depth step {med(full[lab]):.1f} s vs {med(full['baseline']):.1f} s -> "
              f"x{ratio:.3f} ({100 * (ratio - 1):+.1f} %)")
    share_full = [b["guided"] * guided_scale(setup) / steps / fb for b, fb in zip(base, full["baseline"])]
    print(f"  share of the full-depth baseline step in the guided calls: {100 * med(share_full):.1f} % "
          f"(guided calls x {guided_scale(setup):.1f})")
    # The steadier estimate on a loaded machine: only the guided calls differ between the settings, so the
    # overhead is their extra time (same round, same calls) over the baseline step, at run and at full depth.
    for lab, rs in rows.items():
        if lab == "baseline":
            continue
        extra = [(r["guided"] - b["guided"]) / steps for r, b in zip(rs, base)]
        at_run = med([x / (b["wall"] / steps) for x, b in zip(extra, base)])
        at_full = med([x * guided_scale(setup) / fb for x, fb in zip(extra, full["baseline"])])
        print(f"  {lab}: extra time in the guided calls {med(extra):.2f} s per step -> {100 * at_run:+.1f} % of the "
              f"step at depth {args.depth}, x {guided_scale(setup):.1f} calls -> {100 * at_full:+.1f} % at full depth")
    if res["ops"]:
        print_ops(res["ops"], steps)


def fmt_kind(kind) -> str:
    return "-".join(str(x) for x in kind) if isinstance(kind, tuple) else str(kind)


def guided_scale(setup) -> float:
    """Guided calls in the real model ÷ guided calls in the run (guided block kinds only)."""
    if setup["cls"] == "SDXL":
        nr = sum(nr for kind, (nr, nf) in setup["kinds"].items() if kind[0] == "io")
        nf = sum(nf for kind, (nr, nf) in setup["kinds"].items() if kind[0] == "io")
        return nf / nr
    nr = sum(nr for nr, nf in setup["kinds"].values())
    nf = sum(nf for nr, nf in setup["kinds"].values())
    return nf / nr


def print_ops(ops: dict, steps: int, top: int = 12) -> None:
    """Operators whose self CPU time grows most over the baseline (one profiled step each)."""
    labels = list(ops)
    names = set().union(*ops.values())
    grow = sorted(names, key=lambda n: -(max(ops[lab].get(n, 0.0) for lab in labels[1:]) - ops[labels[0]].get(n, 0.0)))
    print(f"profile (one step each): the {top} operators whose self CPU time grows most, s per step")
    print(f"  {'operator':58s} " + " ".join(f"{lab:>9s}" for lab in labels))
    for n in grow[:top]:
        print(f"  {n[:58]:58s} " + " ".join(f"{ops[lab].get(n, 0.0) / steps:9.3f}" for lab in labels))
    print(f"  {'total (all operators)':58s} " + " ".join(f"{sum(ops[lab].values()) / steps:9.3f}" for lab in labels))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1, help="sampling steps per run (euler: one model call each)")
    ap.add_argument("--depth", type=int, default=1, help="transformer blocks kept per stack / per kind")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--profile", action="store_true", help="one more profiled step per setting: memory + ops")
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory step")
    ap.add_argument("--attention", choices=("pytorch", "default"), default="pytorch",
                    help="ComfyUI's attention kernel: pytorch SDPA (--use-pytorch-cross-attention) or its CPU default")
    ap.add_argument("--quick", action="store_true", help="1 round, 1 step, no memory or profile step")
    ap.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                    help="model weights and activations (ComfyUI's inference dtype)")
    ap.add_argument("--compile", action="store_true",
                    help="add baseline / GAG / PLADIS under TorchCompileModel (inductor), against their own baseline")
    ap.add_argument("--chart", action="store_true", help="add GAG / PLADIS with the web chart's statistics on")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.steps, args.memory, args.profile = 1, 1, False, False
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        print("bench_realwidth: set COMFYUI_PATH to a ComfyUI checkout (its requirements installed).", file=sys.stderr)
        return 1
    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(path).resolve()))
    from comfy.cli_args import args as comfy_args

    if args.attention == "pytorch":
        comfy_args.use_pytorch_cross_attention = True
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from test_comfyui_tiny import Comfy

    comfy = Comfy()
    comfy.patch.STRICT = True
    import comfy.ldm.modules.attention as host_attention  # noqa: E402 (after ComfyUI's own setup)

    device = "cuda " + torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"cpu, {torch.get_num_threads()} threads"
    print(f"ComfyUI {comfy_version(path)}, host attention {host_attention.optimized_attention.__name__}, {device}, "
          f"torch {torch.__version__}, {args.dtype}, euler/normal {args.steps} step(s), {args.rounds} interleaved "
          f"round(s), depth {args.depth}, load average {os.getloadavg()[0]:.1f}, "
          f"GAG_COMPILE={os.environ.get('GAG_COMPILE', 'auto')}", flush=True)
    for key in args.models:
        res = run_model(comfy, key, args)
        report(res, args)
        if key in PAPER:
            print(f"paper (H100): {PAPER[key]}")
        del res
        gc.collect()
    return 0


def comfy_version(path: str) -> str:
    try:
        ns: dict = {}
        exec((Path(path) / "comfyui_version.py").read_text(), ns)
        return ns.get("__version__", "?")
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
