"""The one place where gag_core checks its inputs: parameters, tensors, masks and text ranges.

Every check raises ValueError with a message that quotes the offending value, cut to a readable length.
Shared constants (method names, half dtypes, environment switches) live here too.
"""
from __future__ import annotations

import math

import torch

METHODS = ("gag", "pladis")
HALF_DTYPES = (torch.float16, torch.bfloat16)
# Environment switches read by gag_core.
ENV_COMPILE = "GAG_COMPILE"  # torch.compile of the CPU fast paths: 1 always, 0 never (see entmax.py)
ENV_MAX_CHUNK_MB = "GAG_MAX_CHUNK_MB"  # working-memory cap of one query chunk, MiB
ENV_DISABLE_TRITON = "GAG_DISABLE_TRITON"  # 1: never use the fused Triton kernel
ENV_TRITON_INTERPRET = "GAG_TRITON_INTERPRET"  # 1: run the kernel on CPU tensors in Triton's interpreter
MAX_QUOTE = 80


def quote(value, limit: int = MAX_QUOTE) -> str:
    """repr(value) cut to `limit` characters, so an error never echoes unbounded input."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"{text[: limit - 20]}...({len(text)} chars)"


def _real(value, name: str) -> float:
    """float(value) for a real number; bools and strings are refused (a slider never sends them)."""
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise ValueError(f"{name} must be a number, got {quote(value)}")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a number, got {quote(value)}") from None


def check_scale(scale, name: str = "scale") -> float:
    """A finite real number (λ, s, β ...)."""
    s = _real(scale, name)
    if not math.isfinite(s):
        raise ValueError(f"{name} must be finite, got {quote(scale)}")
    return s


def check_tau(tau) -> float | None:
    """τ ≥ 0; None, 0 or inf mean no cap (a zero cap would only switch guidance off; use scale 0)."""
    if tau is None:
        return None
    t = _real(tau, "tau")
    if math.isnan(t) or t < 0:
        raise ValueError(f"tau must be >= 0 (0 or None = no cap), got {quote(tau)}")
    return None if t == 0 or math.isinf(t) else t


def check_alpha(alpha) -> float:
    """α ∈ [1, 2] of α-entmax."""
    a = _real(alpha, "alpha")
    if not (1.0 <= a <= 2.0):
        raise ValueError(f"alpha must be in [1, 2], got {quote(alpha)}")
    return a


def check_method(method) -> str:
    """'gag' or 'pladis'."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {quote(method)}")
    return method


def check_softmax_scale(softmax_scale, head_dim: int) -> float:
    """The logit scale: None gives 1/√d; otherwise a finite number > 0."""
    if softmax_scale is None:
        return head_dim ** -0.5
    s = _real(softmax_scale, "softmax_scale")
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"softmax_scale must be a finite number > 0 or None, got {quote(softmax_scale)}")
    return s


def check_params(method, scale, beta, tau, alpha):
    """(method, λ or s, β, τ, α), each validated."""
    return check_method(method), check_scale(scale), check_scale(beta, "beta"), check_tau(tau), check_alpha(alpha)


def check_qkv(q, k, v) -> None:
    """q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv) with H a multiple of Hkv (grouped-query heads)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, L, D), got shape {tuple(t.shape)}")
        if not torch.is_floating_point(t):
            raise ValueError(f"{name} must be floating point, got dtype {t.dtype}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"batch sizes differ: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[1] != v.shape[1] or k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"head counts differ: q has {q.shape[1]}, k {k.shape[1]}, v {v.shape[1]} heads "
                         "(k and v need the same count, one that divides q's)")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k head_dim differ: {q.shape[3]} vs {k.shape[3]}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v lengths differ: {k.shape[2]} vs {v.shape[2]}")


def check_mask(mask, b: int, h: int, n: int, m: int) -> torch.Tensor | None:
    """The mask as a 4-D view broadcastable to (B, H, N, M) (bool True = attend, or additive float), or None."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dim() > 4:
        raise ValueError(f"mask must have at most 4 dims, got shape {tuple(mask.shape)}")
    target = (b, h, n, m)
    try:
        ok = torch.broadcast_shapes(mask.shape, target) == torch.Size(target)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to (B, H, N, M) = {target}")
    if mask.dtype != torch.bool and not torch.is_floating_point(mask):
        raise ValueError(f"mask must be bool (True = attend) or an additive float mask, got dtype {mask.dtype}")
    return mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))


def check_range(value, length: int, name: str, *, allow_empty: bool = False) -> tuple[int, int]:
    """A (start, stop) pair of ints with 0 ≤ start < stop ≤ length (start ≤ stop when allow_empty)."""
    try:
        s, e = value
        if any(isinstance(x, bool) or not float(x).is_integer() for x in (s, e)):
            raise TypeError
        s, e = int(s), int(e)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a (start, stop) pair of ints, got {quote(value)}") from None
    ok = 0 <= s <= e <= length if allow_empty else 0 <= s < e <= length
    if not ok:
        rel = "<=" if allow_empty else "<"
        raise ValueError(f"{name} {quote(value)} must satisfy 0 <= start {rel} stop <= {length}")
    return s, e
