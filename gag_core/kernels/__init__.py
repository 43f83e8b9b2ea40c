"""Optional fused Triton fast path for gag_attention / joint_gag_attention.

`fused_cross_attention` and `fused_joint_attention` return the guided output, or None when the fast path does
not apply; the caller then runs the PyTorch path. Triton is imported lazily, on the first call that could use
it, so `import gag_core` never needs Triton.

Environment:
- GAG_DISABLE_TRITON=1    never use the kernel (forces the PyTorch fallback).
- GAG_TRITON_INTERPRET=1  run the kernel on CPU tensors through Triton's interpreter (tests). Triton fixes its
                          interpreter mode when it is imported, so this must be set before the first kernel call
                          of the process; it then also sets TRITON_INTERPRET=1 if Triton is not imported yet.
`unsupported_reason_cross` / `unsupported_reason_joint` say in words why a call would fall back: only the
kernel's own limits (dtypes, sizes, devices); parameters, masks and ranges are validated once, by gag_core
(gag_core/validate.py), before these functions are called.
"""
from __future__ import annotations

import math
import os
import sys
import warnings

import torch

from ..combine import rule_for_stats
from ..validate import ENV_DISABLE_TRITON as DISABLE_ENV, ENV_TRITON_INTERPRET as INTERPRET_ENV

MAX_KEYS = 1024
MAX_HEAD_DIM = 256
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_TRITON = (3, 0)

MAX_NEWTON_ITER = 30

_loaded: dict = {}
_failed: set = set()  # launch configurations that raised once; they fall back from then on


def _load():
    """Import Triton and the kernel module once; return the module or None (the error is kept for messages)."""
    if "module" in _loaded:
        return _loaded["module"]
    if os.environ.get(INTERPRET_ENV) == "1" and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    module = None
    try:
        import triton

        version = tuple(int(x) for x in triton.__version__.split(".")[:2])
        if version < MIN_TRITON:
            raise ImportError(f"triton {triton.__version__} is older than {'.'.join(map(str, MIN_TRITON))}")
        from . import triton_gag as module
    except Exception as exc:  # ImportError, or a Triton build that fails on this platform
        _loaded["error"] = f"{type(exc).__name__}: {exc}"
    _loaded["module"] = module
    return module


def triton_available() -> bool:
    """True when Triton imports and the kernel module loads."""
    return _load() is not None


def interpreting() -> bool:
    """True when the kernel runs through Triton's interpreter (TRITON_INTERPRET=1 at Triton import)."""
    module = _load()
    return module is not None and type(module.gag_fused_kernel).__name__ == "InterpretedFunction"


# ----------------------------------------------------------------------------------------------- support checks

def _alpha_reason(alpha) -> str | None:
    return None if 1.0 < float(alpha) <= 2.0 else f"alpha {alpha!r} is not in (1, 2] (α = 1 is plain softmax)"


def _device_reason(tensors) -> str | None:
    if os.environ.get(DISABLE_ENV) == "1":
        return f"{DISABLE_ENV}=1"
    device = tensors[0].device
    if any(t.device != device for t in tensors):
        return "tensors are on different devices"
    if device.type == "cpu":
        if os.environ.get(INTERPRET_ENV) != "1":
            return f"CPU tensors (set {INTERPRET_ENV}=1 to run Triton's interpreter)"
        if _load() is None:
            return f"triton unavailable ({_loaded.get('error')})"
        if not interpreting():
            return f"Triton was imported without TRITON_INTERPRET=1 before {INTERPRET_ENV}=1 took effect"
        return None
    if device.type != "cuda":
        return f"device {device.type!r} is not CUDA"
    if _load() is None:
        return f"triton unavailable ({_loaded.get('error')})"
    return None


def _qkv_reason(q, k, v) -> str | None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            return f"{name} is not a 4-D tensor"
        if t.dtype not in DTYPES:
            return f"{name} dtype {t.dtype} is not float16, bfloat16 or float32"
        if t.numel() >= 2**31:
            return f"{name} has {t.numel()} elements (>= 2**31)"
    if not (q.dtype == k.dtype == v.dtype):
        return f"dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}"
    b, h, n, d = q.shape
    if k.shape[:2] != (b, h) or v.shape[:2] != (b, h) or k.shape[3] != d or v.shape[2] != k.shape[2]:
        return f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match"
    if d > MAX_HEAD_DIM or v.shape[3] > MAX_HEAD_DIM:
        return f"head_dim {d}/{v.shape[3]} > {MAX_HEAD_DIM}"
    if 0 in (n, k.shape[2], d, v.shape[3]):
        return "empty sequence"
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return "inputs require grad (the kernel has no backward)"
    return None


def _tensor_reason(name, t, shape, device) -> str | None:
    if not isinstance(t, torch.Tensor):
        return f"{name} is not a tensor"
    if t.device != device:
        return f"{name} is on {t.device}, not {device}"
    if not torch.is_floating_point(t):
        return f"{name} dtype {t.dtype} is not floating point"
    if tuple(t.shape) != tuple(shape):
        return f"{name} shape {tuple(t.shape)} is not {tuple(shape)}"
    return None


def _mask_reason(mask, shape, device) -> str | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        return "mask is not a tensor"
    if mask.device != device:
        return f"mask is on {mask.device}, not {device}"
    if mask.dtype != torch.bool and mask.dtype not in DTYPES:
        return f"mask dtype {mask.dtype} is not bool, float16, bfloat16 or float32"
    try:
        ok = mask.dim() <= 4 and torch.broadcast_shapes(mask.shape, shape) == torch.Size(shape)
    except RuntimeError:
        ok = False
    return None if ok else f"mask shape {tuple(mask.shape)} does not broadcast to {tuple(shape)}"


def _out_reason(out, shape, q) -> str | None:
    if out is None:
        return None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(shape) or out.dtype != q.dtype:
        return f"out is not a {q.dtype} tensor of shape {tuple(shape)}"
    return None if out.device == q.device else f"out is on {out.device}, not {q.device}"


def unsupported_reason_cross(q, k, v, *, alpha, mask=None, o_dense=None, out=None, **_params) -> str | None:
    """Why `fused_cross_attention` would return None for these arguments; None when the kernel applies."""
    reason = _qkv_reason(q, k, v) or _alpha_reason(alpha)
    if reason:
        return reason
    if k.shape[2] > MAX_KEYS:
        return f"{k.shape[2]} keys > {MAX_KEYS}"
    b, h, n, _ = q.shape
    m, dv = k.shape[2], v.shape[3]
    reason = _mask_reason(mask, (b, h, n, m), q.device)
    if reason is None and o_dense is not None:
        reason = _tensor_reason("o_dense", o_dense, (b, h, n, dv), q.device)
    return reason or _out_reason(out, (b, h, n, dv), q) or _device_reason([q, k, v])


def unsupported_reason_joint(q, k, v, *, text_range, lse, o_dense, alpha, mask=None, out=None,
                             **_params) -> str | None:
    """Why `fused_joint_attention` would return None for these arguments; None when the kernel applies."""
    reason = _qkv_reason(q, k, v) or _alpha_reason(alpha)
    if reason:
        return reason
    b, h, n, _ = q.shape
    length, dv = k.shape[2], v.shape[3]
    s, e = text_range
    if e - s > MAX_KEYS:
        return f"{e - s} text keys > {MAX_KEYS}"
    reason = (_tensor_reason("lse", lse, (b, h, n), q.device)
              or _tensor_reason("o_dense", o_dense, (b, h, n, dv), q.device)
              or _mask_reason(mask, (b, h, n, length), q.device)
              or _out_reason(out, (b, h, n, dv), q))
    return reason or _device_reason([q, k, v])


# ----------------------------------------------------------------------------------------------- launch

def _config(m_keys: int, qk_d: int, v_d: int, elem_bytes: int = 2) -> dict:
    """Tile sizes: all keys of BLOCK_N rows in registers (~32 logits a thread), ≤ 16 KiB of k or v per step.

    Checked by gag_core.kernels.resources (tests/test_kernel_resources.py): compiled for sm_80/86/89/90 without
    a GPU at every launch class; the spills that remain are listed in docs/gpu.md. Not yet timed on a GPU
    (benchmarks/bench_kernels.py --sweep searches around it). A head_dim that is not a multiple of 16 (SD1.5's
    40) gets 16-column steps: its strides are not specialised as 16-divisible, so k and v load element by
    element, and wider steps spilled (592 B at D = 40).
    """
    block_m = max(16, _next_pow2(m_keys))
    block_n = max(16, min(64, 4096 // block_m))
    block_d = max(16, min(64, _next_pow2(max(qk_d, v_d)), 16384 // (block_m * elem_bytes)))
    if qk_d % 16 or v_d % 16:
        block_d = 16
    num_warps = 4 if block_m <= 128 else 8 if block_m <= 512 else 16
    block_mc = min(block_m, 128)
    return {"BLOCK_N": block_n, "BLOCK_M": block_m, "BLOCK_MC": block_mc, "BLOCK_D": block_d, "num_warps": num_warps}


def _next_pow2(x: int) -> int:
    """Smallest power of two ≥ x."""
    return 1 << max(0, (int(x) - 1).bit_length())


def _mask_args(mask, shape, col0: int, col1: int, device):
    """(kind, tensor, 4 strides) for the kernel: the mask broadcast to `shape`, keys sliced to [col0, col1)."""
    if mask is None:
        return 0, torch.empty(1, device=device), (0, 0, 0, 0)
    m = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape)).expand(shape)[:, :, :, col0:col1]
    if m.dtype == torch.bool:
        return 1, m.view(torch.uint8), m.stride()
    return 2, m, m.stride()


def _c(x) -> int:
    """The int of a tl.constexpr switch of the kernel module."""
    return int(getattr(x, "value", x))


def _launch_spec(*, q, k, v, out, o_dense, lse, mask_kind, mask_t, mask_strides, mode, method, scale, beta, tau,
                 alpha, softmax_scale, segments, stats_buf=None, config=None):
    """(grid, args, constexprs, options) of one launch over the (at most two) query row `segments`; grid[0] may be 0.

    Needs only the tensors' shapes, strides, dtypes and addresses, so gag_core.kernels.resources compiles the
    same launch ahead of time from CPU tensors."""
    module = _load()
    b, h, n_rows, qk_d = q.shape
    m_keys, v_d = k.shape[2], v.shape[3]
    cfg = dict(_config(m_keys, qk_d, v_d, q.element_size()), **(config or {}))
    block_n = cfg["BLOCK_N"]
    (s0, e0), (s1, e1) = (list(segments) + [(0, 0), (0, 0)])[:2]
    nb0 = _cdiv(e0 - s0, block_n)
    grid = (nb0 + _cdiv(e1 - s1, block_n), b * h)
    od = o_dense if o_dense is not None else out  # unused placeholders keep the signature fixed
    od_strides = o_dense.stride() if o_dense is not None else (0, 0, 0, 0)
    ls = lse if lse is not None else out
    ls_strides = lse.stride() if lse is not None else (0, 0, 0)
    alpha_kind = {1.5: module.ALPHA_15, 2.0: module.ALPHA_2}.get(float(alpha), module.ALPHA_GENERAL)
    cap = tau is not None and tau > 0 and math.isfinite(tau)
    # The interpreter's bfloat16 dot is wrong (raw bits in numpy): it gets float32 operands instead.
    dot_f32 = q.dtype == torch.float32 or (interpreting() and q.dtype == torch.bfloat16)
    st = stats_buf if stats_buf is not None else out
    sm = float(softmax_scale) if softmax_scale is not None else qk_d ** -0.5
    args = (q, k, v, od, ls, mask_t, out, st, *q.stride(), *k.stride(), *v.stride(), *od_strides, *ls_strides,
            *mask_strides, *out.stride(), st.stride(0) if stats_buf is not None else 0,
            h, m_keys, s0, e0, s1, e1, n_rows, nb0,
            sm, float(scale), float(beta), float(tau) if cap else 0.0, float(alpha))
    constants = dict(
        BLOCK_N=block_n, KT=cfg["BLOCK_M"] // cfg["BLOCK_MC"], BLOCK_MC=cfg["BLOCK_MC"], QK_D=qk_d, V_D=v_d,
        BLOCK_D=cfg["BLOCK_D"], MODE=_c(mode), ALPHA_KIND=_c(alpha_kind), MASK_KIND=_c(mask_kind), CAP=cap,
        METHOD=_c(module.METHOD_GAG if method == "gag" else module.METHOD_PLADIS), MAX_ITER=MAX_NEWTON_ITER,
        TOL=1e-4 if _c(alpha_kind) != _c(module.ALPHA_GENERAL) else 1e-5, DOT_F32=dot_f32, DOT_PRECISION="ieee",
        STATS=stats_buf is not None,
    )
    return grid, args, constants, {"num_warps": cfg["num_warps"], "num_stages": cfg.get("num_stages", 1)}


def _launch(**kw):
    """Launch the fused kernel as `_launch_spec` describes it; None if it fails."""
    grid, args, constants, options = _launch_spec(**kw)
    q, out = kw["q"], kw["out"]
    if grid[0] == 0:
        return out
    key = (q.device.type, q.dtype, tuple(sorted(constants.items())))
    if key in _failed:
        return None
    kernel = _load().gag_fused_kernel
    try:
        if q.is_cuda:
            with torch.cuda.device(q.device):
                kernel[grid](*args, **constants, **options)
        else:
            kernel[grid](*args, **constants, **options)
    except Exception as exc:  # a Triton/driver combination that cannot build or run it: use PyTorch instead
        _failed.add(key)
        warnings.warn(f"gag_core.kernels: the fused Triton kernel failed ({type(exc).__name__}: {exc}); "
                      f"falling back to the PyTorch path for this configuration", RuntimeWarning, stacklevel=3)
        return None
    return out


def _cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for non-negative ints."""
    return (a + b - 1) // b


def _stats_buffer(stats, b, h, rows, device):
    """Per-row statistics written by the kernel: ‖O_s‖, ‖λcG‖, capped, ‖Δ∥‖², ‖Δ⊥‖².  # (5, B, H, rows)"""
    return None if stats is None else torch.zeros((5, b, h, rows), dtype=torch.float32, device=device)


def _add_stats(stats, buf) -> None:
    """Hand the kernel's per-row statistics to a GuidanceStats, as gag_combine does."""
    stats.add(o_sparse_norm=buf[0], update_norm=buf[1], capped=buf[2] > 0.5, delta_par_sq=buf[3],
              delta_perp_sq=buf[4])


# ----------------------------------------------------------------------------------------------- public API

def fused_cross_attention(q, k, v, *, method, scale, beta, tau, alpha, softmax_scale=None, mask=None, o_dense=None,
                          out=None, stats=None, config=None):
    """GAG/PLADIS cross-attention in one kernel: O_s = O_d + (E − P_d)·v, out = rule(O_s, O_d); else None.

    O_d = `o_dense` (the host chain's output) or P_d·v. Arguments are validated by gag_core before this is
    called. `out` (optional, (B, H, N, Dv), q's dtype, not aliasing an input) receives the result; `stats`
    (optional gag_core.GuidanceStats) gets the same per-(token, head) sums as gag_combine gives it (PLADIS as
    GAG with λ = s − 1, β = 1, no cap, as there); `config` overrides the tile sizes for benchmarking.
    """
    if unsupported_reason_cross(q, k, v, alpha=alpha, mask=mask, o_dense=o_dense, out=out):
        return None
    method, scale, beta, tau = rule_for_stats(method, scale, beta, tau, stats)
    kw, stats_buf = _cross_plan(q, k, v, method=method, scale=scale, beta=beta, tau=tau, alpha=alpha,
                                softmax_scale=softmax_scale, mask=mask, o_dense=o_dense, out=out, stats=stats,
                                config=config)
    res = _launch(**kw)
    if res is not None and stats_buf is not None:
        _add_stats(stats, stats_buf)
    return res


def _cross_plan(q, k, v, *, method, scale, beta, tau, alpha, softmax_scale, mask, o_dense, out, stats, config):
    """(`_launch` keywords, statistics buffer or None) of a cross call whose rule is already `rule_for_stats`'."""
    b, h, n, _ = q.shape
    m_keys, v_d = k.shape[2], v.shape[3]
    if out is None:  # q's layout (ComfyUI's (B, N, H, D) views stay views of one (B, N, H·D) buffer)
        out = torch.empty_like(q) if v_d == q.shape[3] else q.new_empty((b, h, n, v_d))
    kind, mask_t, mask_strides = _mask_args(mask, (b, h, n, m_keys), 0, m_keys, q.device)
    mode = _load().MODE_CROSS if o_dense is None else _load().MODE_CROSS_DENSE_GIVEN
    stats_buf = _stats_buffer(stats, b, h, n, q.device)
    return dict(q=q, k=k, v=v, out=out, o_dense=o_dense, lse=None, mask_kind=kind, mask_t=mask_t,
                mask_strides=mask_strides, mode=mode, method=method, scale=scale, beta=beta, tau=tau,
                alpha=alpha, softmax_scale=softmax_scale, segments=[(0, n)], stats_buf=stats_buf,
                config=config), stats_buf


def fused_joint_attention(q, k, v, *, text_range, lse, o_dense, method, scale, beta, tau, alpha, segments=None,
                          softmax_scale=None, mask=None, out=None, stats=None, config=None):
    """Joint attention: rows in `segments` get O_d + m·(rule(O_s^t, O_d^t) − O_d^t) on the text keys, others O_d.

    q (B, H, N, D), k/v (B, H, L, D), `text_range` = (start, stop) key columns of the text, `lse` (B, H, N) the
    full-row dense log-sum-exp, `o_dense` (B, H, N, Dv) the dense output, `segments` (at most two (start, stop)
    query row ranges; default: the rows on either side of the text when N = L). `out`, `stats` (guided rows
    only) and `config` as in `fused_cross_attention`.
    """
    s, e = (int(x) for x in text_range)
    if unsupported_reason_joint(q, k, v, text_range=(s, e), lse=lse, o_dense=o_dense, alpha=alpha, mask=mask,
                                out=out):
        return None
    method, scale, beta, tau = rule_for_stats(method, scale, beta, tau, stats)
    if segments is None:
        segments = [(0, s), (e, q.shape[2])]
    segments = [(int(a), int(c)) for a, c in segments if c > a]
    if len(segments) > 2:
        return None
    kw, stats_buf = _joint_plan(q, k, v, text_range=(s, e), lse=lse, o_dense=o_dense, method=method, scale=scale,
                                beta=beta, tau=tau, alpha=alpha, segments=segments, softmax_scale=softmax_scale,
                                mask=mask, out=out, stats=stats, config=config)
    kw["out"].copy_(o_dense)
    res = _launch(**kw)
    if res is not None and stats_buf is not None:
        _add_stats(stats, torch.cat([stats_buf[..., a:c] for a, c in segments], dim=-1))  # guided rows only
    return res


def _joint_plan(q, k, v, *, text_range, lse, o_dense, method, scale, beta, tau, alpha, segments, softmax_scale,
                mask, out, stats, config):
    """(`_launch` keywords, statistics buffer or None) of a joint call (rule as `rule_for_stats` gives it)."""
    s, e = text_range
    b, h, n, _ = q.shape
    length = k.shape[2]
    if out is None:
        out = torch.empty_like(o_dense, dtype=q.dtype)
    kind, mask_t, mask_strides = _mask_args(mask, (b, h, n, length), s, e, q.device)
    stats_buf = _stats_buffer(stats, b, h, n, q.device)
    return dict(q=q, k=k[:, :, s:e], v=v[:, :, s:e], out=out, o_dense=o_dense, lse=lse, mask_kind=kind,
                mask_t=mask_t, mask_strides=mask_strides, mode=_load().MODE_JOINT, method=method, scale=scale,
                beta=beta, tau=tau, alpha=alpha, softmax_scale=softmax_scale, segments=segments,
                stats_buf=stats_buf, config=config), stats_buf


__all__ = [
    "DISABLE_ENV", "INTERPRET_ENV", "MAX_KEYS", "fused_cross_attention", "fused_joint_attention", "interpreting",
    "triton_available", "unsupported_reason_cross", "unsupported_reason_joint",
]
