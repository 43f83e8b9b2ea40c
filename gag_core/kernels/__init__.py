"""Optional fused Triton fast path for gag_attention / joint_gag_attention.

`fused_cross_attention` and `fused_joint_attention` return the guided output, or None when the fast path does
not apply; the caller then runs the PyTorch path. Triton is imported lazily, on the first call that could use
it, so `import gag_core` never needs Triton.

Environment:
- GAG_DISABLE_TRITON=1    never use the kernel (forces the PyTorch fallback).
- GAG_TRITON_INTERPRET=1  run the kernel on CPU tensors through Triton's interpreter (tests). Triton fixes its
                          interpreter mode when it is imported, so this must be set before the first kernel call
                          of the process; it then also sets TRITON_INTERPRET=1 if Triton is not imported yet.
`unsupported_reason_cross` / `unsupported_reason_joint` say in words why a call would fall back.
"""
from __future__ import annotations

import math
import os
import sys
import warnings

import torch

DISABLE_ENV = "GAG_DISABLE_TRITON"
INTERPRET_ENV = "GAG_TRITON_INTERPRET"
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

def _param_reason(method, scale, beta, tau, alpha) -> str | None:
    if method not in ("gag", "pladis"):
        return f"method {method!r} is not 'gag' or 'pladis'"
    for name, x in (("scale", scale), ("beta", beta)):
        if not isinstance(x, (int, float)) or not math.isfinite(x):
            return f"{name} {x!r} is not a finite number"
    if tau is not None and (not isinstance(tau, (int, float)) or math.isnan(tau) or tau < 0):
        return f"tau {tau!r} is not None or a number >= 0"
    if not isinstance(alpha, (int, float)) or not (1.0 < alpha <= 2.0):
        return f"alpha {alpha!r} is not in (1, 2]"
    return None


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


def unsupported_reason_cross(q, k, v, *, method, scale, beta, tau, alpha, mask=None, o_dense=None,
                             out=None) -> str | None:
    """Why `fused_cross_attention` would return None for these arguments; None when the kernel applies."""
    reason = _qkv_reason(q, k, v) or _param_reason(method, scale, beta, tau, alpha)
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


def unsupported_reason_joint(q, k, v, *, text_range, lse, o_dense, method, scale, beta, tau, alpha,
                             mask=None, out=None) -> str | None:
    """Why `fused_joint_attention` would return None for these arguments; None when the kernel applies."""
    reason = _qkv_reason(q, k, v) or _param_reason(method, scale, beta, tau, alpha)
    if reason:
        return reason
    b, h, n, _ = q.shape
    length, dv = k.shape[2], v.shape[3]
    if n != length:
        return f"q length {n} != k length {length}"
    try:
        s, e = (int(x) for x in text_range)
    except (TypeError, ValueError):
        return f"text_range {text_range!r} is not a (start, stop) pair"
    if not (0 <= s < e <= length):
        return f"text_range {text_range!r} is not inside [0, {length}]"
    if s == 0 and e == length:
        return "no image rows"
    if e - s > MAX_KEYS:
        return f"{e - s} text keys > {MAX_KEYS}"
    reason = (_tensor_reason("lse", lse, (b, h, length), q.device)
              or _tensor_reason("o_dense", o_dense, (b, h, length, dv), q.device)
              or _mask_reason(mask, (b, h, length, length), q.device)
              or _out_reason(out, (b, h, length, dv), q))
    return reason or _device_reason([q, k, v])


# ----------------------------------------------------------------------------------------------- launch

def _config(m_keys: int, qk_d: int, v_d: int, elem_bytes: int = 2) -> dict:
    """Tile sizes: all keys of BLOCK_N rows in registers (~32 logits a thread), ≤ 16 KiB of k or v per step.

    Checked by compiling for sm_80 and sm_90 without a GPU (Triton 3.9's ptxas): no register spills at the SDXL
    and FLUX shapes; not yet timed on a GPU (benchmarks/bench_kernels.py --sweep searches around it).
    """
    block_m = max(16, _next_pow2(m_keys))
    block_n = max(16, min(64, 4096 // block_m))
    block_d = max(16, min(64, _next_pow2(max(qk_d, v_d)), 16384 // (block_m * elem_bytes)))
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


def _launch(*, q, k, v, out, o_dense, lse, mask_kind, mask_t, mask_strides, mode, method, scale, beta, tau,
            alpha, seg0_end, seg1_start, n_rows, stats_buf=None, config=None):
    """Launch the fused kernel over the row segments [0, seg0_end) and [seg1_start, n_rows); None if it fails."""
    module = _load()
    b, h, _, qk_d = q.shape
    m_keys, v_d = k.shape[2], v.shape[3]
    cfg = dict(_config(m_keys, qk_d, v_d, q.element_size()), **(config or {}))
    block_n = cfg["BLOCK_N"]
    nb0 = _cdiv(seg0_end, block_n)
    grid = (nb0 + _cdiv(n_rows - seg1_start, block_n), b * h)
    od = o_dense if o_dense is not None else out  # unused placeholders keep the signature fixed
    od_strides = o_dense.stride() if o_dense is not None else (0, 0, 0, 0)
    ls = lse if lse is not None else out
    ls_strides = lse.stride() if lse is not None else (0, 0, 0)
    alpha_kind = {1.5: module.ALPHA_15, 2.0: module.ALPHA_2}.get(float(alpha), module.ALPHA_GENERAL)
    cap = tau is not None and tau > 0 and math.isfinite(tau)
    # The interpreter's bfloat16 dot is wrong (raw bits in numpy): it gets float32 operands instead.
    dot_f32 = q.dtype == torch.float32 or (interpreting() and q.dtype == torch.bfloat16)
    st = stats_buf if stats_buf is not None else out
    args = (q, k, v, od, ls, mask_t, out, st, *q.stride(), *k.stride(), *v.stride(), *od_strides, *ls_strides,
            *mask_strides, *out.stride(), st.stride(0) if stats_buf is not None else 0,
            h, m_keys, seg0_end, seg1_start, n_rows, nb0,
            qk_d ** -0.5, float(scale), float(beta), float(tau) if cap else 0.0, float(alpha))
    constants = dict(
        BLOCK_N=block_n, KT=cfg["BLOCK_M"] // cfg["BLOCK_MC"], BLOCK_MC=cfg["BLOCK_MC"], QK_D=qk_d, V_D=v_d,
        BLOCK_D=cfg["BLOCK_D"], MODE=mode, METHOD=module.METHOD_GAG if method == "gag" else module.METHOD_PLADIS,
        ALPHA_KIND=alpha_kind, MASK_KIND=mask_kind, CAP=cap, MAX_ITER=MAX_NEWTON_ITER,
        TOL=1e-4 if alpha_kind != module.ALPHA_GENERAL else 1e-5, DOT_F32=dot_f32, DOT_PRECISION="ieee",
        STATS=stats_buf is not None,
    )
    key = (q.device.type, q.dtype, tuple(sorted(constants.items())))
    if key in _failed:
        return None
    try:
        if q.is_cuda:
            with torch.cuda.device(q.device):
                module.gag_fused_kernel[grid](*args, **constants, num_warps=cfg["num_warps"],
                                              num_stages=cfg.get("num_stages", 1))
        else:
            module.gag_fused_kernel[grid](*args, **constants, num_warps=cfg["num_warps"],
                                          num_stages=cfg.get("num_stages", 1))
    except Exception as exc:  # a Triton/driver combination that cannot build or run it: use PyTorch instead
        _failed.add(key)
        warnings.warn(f"gag_core.kernels: the fused Triton kernel failed ({type(exc).__name__}: {exc}); "
                      f"falling back to the PyTorch path for this configuration", RuntimeWarning, stacklevel=3)
        return None
    return out


def _cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for non-negative ints."""
    return (a + b - 1) // b


def _stats_buffer(stats, method, b, h, rows, device):
    """Per-row statistics written by the kernel: ‖O_s‖, ‖λcG‖, capped, ‖Δ∥‖², ‖Δ⊥‖².  # (5, B, H, rows)"""
    if stats is None or method != "gag":
        return None
    return torch.zeros((5, b, h, rows), dtype=torch.float32, device=device)


def _add_stats(stats, buf) -> None:
    """Hand the kernel's per-row statistics to a GuidanceStats, as gag_combine does."""
    stats.add(o_sparse_norm=buf[0], update_norm=buf[1], capped=buf[2] > 0.5, delta_par_sq=buf[3],
              delta_perp_sq=buf[4])


# ----------------------------------------------------------------------------------------------- public API

def fused_cross_attention(q, k, v, *, method, scale, beta, tau, alpha, mask=None, o_dense=None, out=None,
                          stats=None, config=None):
    """GAG/PLADIS cross-attention in one kernel: out = rule(α-entmax(z)·v, softmax(z)·v or o_dense); else None.

    `out` (optional, (B, H, N, Dv), q's dtype, not aliasing an input) receives the result; `stats` (optional
    gag_core.GuidanceStats) gets the same per-(token, head) sums as gag_combine gives it (GAG only, as there);
    `config` overrides the tile sizes (BLOCK_N, BLOCK_M, BLOCK_MC, BLOCK_D, num_warps) for benchmarking.
    """
    if unsupported_reason_cross(q, k, v, method=method, scale=scale, beta=beta, tau=tau, alpha=alpha, mask=mask,
                                o_dense=o_dense, out=out):
        return None
    b, h, n, _ = q.shape
    m_keys, v_d = k.shape[2], v.shape[3]
    if out is None:
        out = torch.empty_like(q) if v_d == q.shape[3] else q.new_empty((b, h, n, v_d))
    kind, mask_t, mask_strides = _mask_args(mask, (b, h, n, m_keys), 0, m_keys, q.device)
    mode = 0 if o_dense is None else 1
    stats_buf = _stats_buffer(stats, method, b, h, n, q.device)
    res = _launch(q=q, k=k, v=v, out=out, o_dense=o_dense, lse=None, mask_kind=kind, mask_t=mask_t,
                  mask_strides=mask_strides, mode=mode, method=method, scale=scale, beta=beta, tau=tau,
                  alpha=alpha, seg0_end=n, seg1_start=n, n_rows=n, stats_buf=stats_buf, config=config)
    if res is not None and stats_buf is not None:
        _add_stats(stats, stats_buf)
    return res


def fused_joint_attention(q, k, v, *, text_range, lse, o_dense, method, scale, beta, tau, alpha, mask=None,
                          out=None, stats=None, config=None):
    """Joint attention: image rows get rule(O_d + m·(entmax − softmax)(z_text)·v_text, O_d); text rows O_d.

    `lse` (B, H, L) is the full-row dense log-sum-exp, `o_dense` (B, H, L, Dv) the dense output; `out`,
    `stats` (image rows only) and `config` as in `fused_cross_attention`.
    """
    if unsupported_reason_joint(q, k, v, text_range=text_range, lse=lse, o_dense=o_dense, method=method,
                                scale=scale, beta=beta, tau=tau, alpha=alpha, mask=mask, out=out):
        return None
    s, e = (int(x) for x in text_range)
    b, h, length, _ = q.shape
    if out is None:
        out = torch.empty_like(o_dense, dtype=q.dtype)
    out[:, :, s:e] = o_dense[:, :, s:e]
    kind, mask_t, mask_strides = _mask_args(mask, (b, h, length, length), s, e, q.device)
    stats_buf = _stats_buffer(stats, method, b, h, length, q.device)
    res = _launch(q=q, k=k[:, :, s:e], v=v[:, :, s:e], out=out, o_dense=o_dense, lse=lse, mask_kind=kind,
                  mask_t=mask_t, mask_strides=mask_strides, mode=2, method=method, scale=scale, beta=beta,
                  tau=tau, alpha=alpha, seg0_end=s, seg1_start=e, n_rows=length, stats_buf=stats_buf,
                  config=config)
    if res is not None and stats_buf is not None:
        _add_stats(stats, torch.cat([stats_buf[..., :s], stats_buf[..., e:]], dim=-1))  # image rows only
    return res


__all__ = [
    "DISABLE_ENV", "INTERPRET_ENV", "MAX_KEYS", "fused_cross_attention", "fused_joint_attention", "interpreting",
    "triton_available", "unsupported_reason_cross", "unsupported_reason_joint",
]
