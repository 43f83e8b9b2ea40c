"""Resource use of the fused kernel per launch class and CUDA target, compiled ahead of time without a GPU.

Each launch class is built the way gag_core launches it (`_cross_plan` / `_joint_plan` → `_launch_spec`, from
CPU tensors of the family's shapes and layout), bound and specialised by Triton's own binder for the target,
compiled by `triton.compile` (Triton's ptxas), and its registers, stack and local bytes are read from the cubin
by the cuobjdump in Triton's wheel. A spill shows as stack or local bytes > 0. Shared memory is Triton's request
per program, checked against the target's per-block limit. Triton's cache keeps the compiled kernels, so a
second run only reads them back.

    python -m gag_core.kernels.resources [--full] [--targets 80,86,89,90] [--json FILE] [--markdown] [--jobs N]

Run it in a process where Triton is not in interpreter mode (TRITON_INTERPRET unset).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import torch

# compute capability -> (GPUs, max shared memory per block in bytes, with the opt-in carve-out)
TARGETS = {
    80: ("A100", 166912),
    86: ("RTX 30xx, A10, A40", 101376),
    89: ("RTX 40xx, L4, L40", 101376),
    90: ("H100, H200", 232448),
}
KEY_BUCKETS = (16, 32, 64, 128, 256, 512, 1024)  # _config's tiles depend on the key count's power of two
MODES = ("cross", "cross_dense", "joint")  # MODE_CROSS, MODE_CROSS_DENSE_GIVEN (the nodes' cross calls), MODE_JOINT


@dataclass(frozen=True)
class LaunchClass:
    """One compiled variant of the kernel: the call's shape class and its compile-time switches."""

    family: str  # where the shape occurs
    mode: str  # one of MODES
    keys: int  # keys of the guided block (the text keys in joint mode)
    head_dim: int
    dtype: str  # "float16" or "bfloat16"
    method: str = "gag"  # "gag" or "pladis"
    alpha: float = 1.5  # 1.5 and 2 have closed forms; any other α takes the general Newton path
    mask: str = "none"  # "none", "bool", "add" (a key-padding mask (B, 1, 1, keys))
    stats: bool = False  # the chart's statistics (GAG, or PLADIS run as GAG: rule_for_stats)
    cap: bool = True  # τ > 0
    heads: int = 24
    rows: int = 4096  # guided query rows (image tokens)

    @property
    def name(self) -> str:
        sw = [self.method, f"α{self.alpha:g}", f"mask={self.mask}"] + (["stats"] if self.stats else []) + \
             ([] if self.cap else ["no-cap"])
        return f"{self.family} {self.mode} M={self.keys} D={self.head_dim} {self.dtype} " + " ".join(sw)


# (family, mode, keys, head_dim, heads): the shapes the pack's families launch (nodes/routing.py layouts)
FAMILY_SHAPES = (
    ("sd15", "cross_dense", 77, 40, 8), ("sd15", "cross_dense", 77, 80, 8), ("sd15", "cross_dense", 77, 160, 8),
    ("sdxl", "cross_dense", 77, 64, 10), ("sdxl 3×77", "cross_dense", 231, 64, 10),
    ("ltxv", "cross_dense", 128, 64, 32), ("wan", "cross_dense", 512, 128, 40),
    ("sd3", "joint", 333, 64, 24), ("flux", "joint", 512, 128, 24), ("qwen_image", "joint", 1024, 128, 24),
)


def _variants(full: bool):
    """Compile-time switch sets: every one (full), else the heaviest of each kind (each a superset of the
    default launch's code: statistics, a mask and the cap on top of it)."""
    if full:
        for method, alpha, mask, stats, cap in itertools.product(("gag", "pladis"), (1.5, 2.0, 1.25),
                                                                 ("none", "bool", "add"), (False, True),
                                                                 (True, False)):
            if method == "pladis" and (stats or not cap):  # PLADIS with stats runs as GAG; τ is unused
                continue
            yield dict(method=method, alpha=alpha, mask=mask, stats=stats, cap=cap)
        return
    yield dict(method="gag", alpha=1.5, mask="bool", stats=True, cap=True)  # closed-form α, the presets' 1.5
    yield dict(method="gag", alpha=1.25, mask="add", stats=True, cap=True)  # general α (Newton only)
    yield dict(method="pladis", alpha=1.25, mask="add", stats=False, cap=True)


def launch_classes(full: bool = False) -> list[LaunchClass]:
    """Family shapes and key buckets, both dtypes, the switch variants.

    full: every key bucket up to 1024 at D 64 and 128 in every mode, both dtypes for every variant. Quick (the
    test): the family shapes in their mode (and plain cross for the cross ones), the buckets ≥ 256 keys of the
    modes the nodes launch, each variant in one dtype (alternating: fp16 and bf16 compile to the same
    register use)."""
    shapes = list(FAMILY_SHAPES)
    if full:
        shapes += [("bucket", m, k, d, 24) for m, k, d in itertools.product(MODES, KEY_BUCKETS, (64, 128))]
    else:
        shapes += [(f, "cross", k, d, h) for f, m, k, d, h in FAMILY_SHAPES if f in ("sdxl", "sdxl 3×77", "wan")]
        shapes += [("bucket", m, k, d, 24) for m, k, d in itertools.product(("cross_dense", "joint"),
                                                                             (256, 512, 1024), (64, 128))]
    out, seen = [], set()
    for j, (family, mode, keys, d, heads) in enumerate(shapes):
        for i, var in enumerate(_variants(full)):
            for dtype in ("float16", "bfloat16") if full else (("float16", "bfloat16")[(i + j) % 2],):
                key = (mode, 1 << max(4, (keys - 1).bit_length()), d, dtype, tuple(var.items()))
                if key not in seen:  # same bucket, head_dim and switches: the same compiled kernel
                    seen.add(key)
                    out.append(LaunchClass(family, mode, keys, d, dtype, heads=heads, **var))
    return out


# ----------------------------------------------------------------------------------------------- build + compile

def _tensors(cls: LaunchClass):
    """CPU tensors of the class's shape in ComfyUI's layout: (B, N, H·D) buffers viewed as (B, H, N, D)."""
    dtype = getattr(torch, cls.dtype)
    b = 2 if cls.mode != "joint" else 1
    h, d = cls.heads, cls.head_dim
    n = cls.rows + (cls.keys if cls.mode == "joint" else 0)
    length = n if cls.mode == "joint" else cls.keys

    def bhnd(rows):
        return torch.empty(b, rows, h * d, dtype=dtype).view(b, rows, h, d).transpose(1, 2)

    q, k, v = bhnd(n), bhnd(length), bhnd(length)
    mask = None
    if cls.mask == "bool":
        mask = torch.ones(b, 1, 1, length, dtype=torch.bool)
    elif cls.mask == "add":
        mask = torch.zeros(b, 1, 1, length, dtype=dtype)
    return q, k, v, mask


def launch_spec(cls: LaunchClass, config: dict | None = None):
    """(grid, args, constexprs, options) of the launch gag_core makes for `cls` (`config`: tile overrides)."""
    from .. import kernels
    from ..stats import GuidanceStats

    q, k, v, mask = _tensors(cls)
    stats = GuidanceStats() if cls.stats else None
    rule = dict(method=cls.method, scale=5.0 if cls.method == "gag" else 2.0, beta=0.0,
                tau=15.0 if cls.cap else 0.0)
    method, scale, beta, tau = kernels.rule_for_stats(rule["method"], rule["scale"], rule["beta"], rule["tau"], stats)
    common = dict(method=method, scale=scale, beta=beta, tau=tau, alpha=cls.alpha, softmax_scale=None, mask=None,
                  out=None, stats=stats, config=config)
    if cls.mode == "joint":
        b, h, n, _ = q.shape
        s, e = 0, cls.keys
        mask4 = None if mask is None else mask.expand(b, 1, 1, n)
        kw, _ = kernels._joint_plan(q, k, v, text_range=(s, e), lse=torch.empty(b, h, n), o_dense=torch.empty_like(q),
                                    segments=[(e, n)], **dict(common, mask=mask4))
    else:
        o_dense = torch.empty_like(q[:, :, :, :v.shape[3]]) if cls.mode == "cross_dense" else None
        kw, _ = kernels._cross_plan(q, k, v, o_dense=o_dense, **dict(common, mask=mask))
    return kernels._launch_spec(**kw)


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def tools_available() -> str | None:
    """None when Triton (not interpreting), its ptxas and cuobjdump are present; else why not."""
    try:
        import triton  # noqa: F401
    except Exception as exc:
        return f"triton unavailable ({type(exc).__name__}: {exc})"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1 (the interpreter compiles nothing)"
    for tool in ("ptxas", "cuobjdump"):
        if not os.access(_tool(tool), os.X_OK):
            return f"no {tool} in Triton's wheel ({_tool(tool)})"
    return None


def compile_class(cls: LaunchClass, cc: int, config: dict | None = None) -> dict:
    """Compile `cls` for sm_`cc` (`config`: tile overrides, for tuning).

    Returns {"regs", "stack", "local" (bytes per thread), "shared" (bytes per program), "num_warps", "seconds"}."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    from .. import kernels

    t0 = time.perf_counter()
    fn = kernels._load().gag_fused_kernel
    _grid, args, constants, options = launch_spec(cls, config)
    target = GPUTarget("cuda", cc, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, opts = binder(*args, **constants, **options)
    opts, signature, constexprs, attrs = fn._pack_args(backend, dict(constants, **options), bound, spec, opts)
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=opts.__dict__)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        dump = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", path], capture_output=True, text=True,
                              check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", dump)
    if m is None:
        raise RuntimeError(f"no resource line in cuobjdump's output: {dump[:400]!r}")
    regs, stack, static_shared, local = (int(x) for x in m.groups())
    return {"regs": regs, "stack": stack, "local": local, "shared": int(compiled.metadata.shared) + static_shared,
            "num_warps": options["num_warps"], "seconds": time.perf_counter() - t0}


def _work(item):
    cls, cc = item
    try:
        return cls, cc, compile_class(cls, cc)
    except Exception as exc:  # a class that does not compile is a finding, not a crash of the sweep
        return cls, cc, {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def measure(classes, targets, jobs: int = 1, progress=None) -> list[dict]:
    """Compile every class for every target; one row per (class, target)."""
    items = [(c, cc) for c in classes for cc in targets]
    if jobs > 1:
        import concurrent.futures as cf
        import multiprocessing as mp

        pool = cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"))
        results = pool.map(_work, items, chunksize=4)
    else:
        pool, results = None, map(_work, items)
    rows = []
    for c, cc, r in results:
        rows.append(dict(asdict(c), name=c.name, cc=cc, smem_limit=TARGETS[cc][1], **r))
        if progress:
            progress(len(rows), len(items), rows[-1])
    if pool is not None:
        pool.shutdown()
    return rows


def problems(row: dict) -> list[str]:
    """What is wrong with one measured row: an error, a spill, or shared memory over the target's limit."""
    if "error" in row:
        return [row["error"]]
    out = []
    if row["stack"] or row["local"]:
        out.append(f"spill: {row['stack']} B stack, {row['local']} B local per thread ({row['regs']} registers)")
    if row["shared"] > row["smem_limit"]:
        out.append(f"shared memory {row['shared']} B > {row['smem_limit']} B")
    return out


def markdown(rows: list[dict]) -> str:
    """One line per class: regs / stack / shared (KiB) per target."""
    targets = sorted({r["cc"] for r in rows})
    by = {}
    for r in rows:
        by.setdefault(r["name"], {})[r["cc"]] = r
    lines = ["| class | warps | " + " | ".join(f"sm_{cc} regs/stack/smem KiB" for cc in targets) + " |",
             "|---|---|" + "---|" * len(targets)]
    for name, per in by.items():
        cells = []
        for cc in targets:
            r = per.get(cc)
            if r is None:
                cells.append("")
            elif "error" in r:
                cells.append("error")
            else:
                mark = " **spill**" if r["stack"] or r["local"] else ""
                cells.append(f"{r['regs']}/{r['stack'] + r['local']}/{r['shared'] / 1024:.0f}{mark}")
        warps = next((r.get("num_warps", "") for r in per.values() if "num_warps" in r), "")
        lines.append(f"| {name} | {warps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="every switch combination (slow), not the quick set")
    ap.add_argument("--targets", default="80,86,89,90")
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("GAG_RESOURCE_JOBS", "1")))
    ap.add_argument("--filter", default="", help="only classes whose name contains this")
    a = ap.parse_args(argv)
    why = tools_available()
    if why:
        print(f"cannot compile: {why}", file=sys.stderr)
        return 2
    targets = [int(x) for x in a.targets.split(",")]
    classes = [c for c in launch_classes(a.full) if a.filter in c.name]
    t0 = time.perf_counter()
    rows = measure(classes, targets, a.jobs, progress=lambda i, n, r: print(
        f"[{i}/{n}] sm_{r['cc']} {r['name']}: {'; '.join(problems(r)) or 'ok'} "
        f"({r.get('regs')} regs, {r.get('seconds', 0):.1f} s)", file=sys.stderr, flush=True))
    print(f"{len(rows)} compiles in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    if a.markdown:
        print(markdown(rows))
    bad = [(r["name"], r["cc"], p) for r in rows for p in problems(r)]
    for name, cc, p in bad:
        print(f"sm_{cc} {name}: {p}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
