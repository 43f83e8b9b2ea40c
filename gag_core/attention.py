"""Dense and sparse attention from the same logits, combined by the GAG or PLADIS rule.

Cross-attention (UNet): z = q·kᵀ/√d, O_d = softmax(z)·v, O_s = α-entmax(z)·v, out = rule(O_s, O_d).
Joint attention (MMDiT): only image-query × text-key weights change; each image row keeps its dense text mass
m = Σ_text softmax(z), the text block becomes m·α-entmax(z_text), so O_s = O_d + m·(entmax − softmax)(z_text)·v_text.
Queries are processed in chunks so the working memory stays under `max_chunk_bytes` (default 256 MiB,
`GAG_MAX_CHUNK_MB` overrides it) whatever the sequence length.
"""
from __future__ import annotations

import math
import os
from typing import Callable

import torch
import torch.nn.functional as F

from .combine import check_scale, check_tau, gag_combine, pladis_combine
from .entmax import check_alpha, entmax

METHODS = ("gag", "pladis")
DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20
_HALF = (torch.float16, torch.bfloat16)

DenseFn = Callable[..., "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


def max_chunk_bytes() -> int:
    """The working-memory cap for one query chunk: GAG_MAX_CHUNK_MB (MiB) or 256 MiB."""
    env = os.environ.get("GAG_MAX_CHUNK_MB")
    if env:
        try:
            mb = float(env)
        except ValueError:
            raise ValueError(f"GAG_MAX_CHUNK_MB must be a number of MiB, got {env!r}") from None
        if mb <= 0:
            raise ValueError(f"GAG_MAX_CHUNK_MB must be > 0, got {env!r}")
        return int(mb * 2**20)
    return DEFAULT_MAX_CHUNK_BYTES


# ----------------------------------------------------------------------------------------------- validation

def _check_method(method) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, L, D), got shape {tuple(t.shape)}")
        if not torch.is_floating_point(t):
            raise ValueError(f"{name} must be floating point, got dtype {t.dtype}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"batch sizes differ: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not (q.shape[1] == k.shape[1] == v.shape[1]):
        raise ValueError(f"head counts differ: q has {q.shape[1]}, k {k.shape[1]}, v {v.shape[1]} heads")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k head_dim differ: {q.shape[3]} vs {k.shape[3]}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v lengths differ: {k.shape[2]} vs {v.shape[2]}")


def _check_mask(mask, b: int, h: int, n: int, m: int) -> torch.Tensor | None:
    """Return the mask as a 4-D view broadcastable to (B, H, N, M), or None."""
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


def _check_params(method, scale, beta, tau, alpha):
    return _check_method(method), check_scale(scale), check_scale(beta, "beta"), check_tau(tau), check_alpha(alpha)


# ----------------------------------------------------------------------------------------------- helpers

def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _HALF else dtype


def _mask_rows(mask: torch.Tensor | None, a: int, b: int, c0: int = 0, c1: int | None = None):
    """Slice a 4-D broadcastable mask to query rows [a, b) and key columns [c0, c1)."""
    if mask is None:
        return None
    rows = slice(a, b) if mask.shape[2] != 1 else slice(None)
    cols = slice(c0, c1) if mask.shape[3] != 1 else slice(None)
    return mask[:, :, rows, cols]


def _apply_mask(z: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """z with masked keys at −inf (bool mask, True = attend) or plus an additive float mask."""
    if mask is None:
        return z
    if mask.dtype == torch.bool:
        return z.masked_fill_(~mask, -math.inf)
    return z.add_(mask.to(z.dtype))


def _scaled_keys(k: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """kᵀ/√d in `dtype`, formed once per call: scaling the few keys is cheaper than every query chunk.  # (B, H, D, M)"""
    return (k.to(dtype) * k.shape[-1] ** -0.5).transpose(-1, -2)


def _logits(q: torch.Tensor, k_t: torch.Tensor, mask, dtype: torch.dtype) -> torch.Tensor:
    """z = q·(kᵀ/√d) (+ mask) in `dtype`, from keys prepared by `_scaled_keys`.  # (B, H, n, M)"""
    return _apply_mask(torch.matmul(q.to(dtype), k_t), mask)


def _chunk_rows(n: int, bytes_per_row: int, cap: int | None) -> int:
    cap = max_chunk_bytes() if cap is None else cap
    return max(1, min(n, cap // max(bytes_per_row, 1)))


def _combine(o_s, o_d, method, scale, beta, tau, stats):
    if method == "pladis":
        if stats is not None:  # O_d + s(O_s − O_d) = O_s + (s − 1)Δ: GAG with λ = s − 1, β = 1, no cap
            return gag_combine(o_s, o_d, scale=scale - 1.0, beta=1.0, tau=None, stats=stats)
        return pladis_combine(o_s, o_d, scale=scale)
    return gag_combine(o_s, o_d, scale=scale, beta=beta, tau=tau, stats=stats)


def _call_dense(dense: DenseFn, q, k, v, mask, out_shape):
    """Run the host's dense attention; return (O_d, lse or None), checking the shapes it gives back."""
    res = dense(q, k, v, mask)
    o_d, lse = (res[0], res[1]) if isinstance(res, (tuple, list)) else (res, None)
    if not isinstance(o_d, torch.Tensor) or tuple(o_d.shape) != tuple(out_shape):
        got = tuple(o_d.shape) if isinstance(o_d, torch.Tensor) else type(o_d).__name__
        raise ValueError(f"dense attention returned {got}, expected shape {tuple(out_shape)}")
    if lse is not None and tuple(lse.shape) != tuple(out_shape[:3]):
        raise ValueError(f"dense attention returned lse of shape {tuple(lse.shape)}, expected {tuple(out_shape[:3])}")
    return o_d, lse


def _try_kernel(name: str, *args, **kwargs):
    """Call the fused Triton kernel `name` from gag_core.kernels when present; None when it does not apply."""
    if os.environ.get("GAG_DISABLE_TRITON") == "1":
        return None
    try:
        from . import kernels
    except ImportError:
        return None
    fn = getattr(kernels, name, None)
    return None if fn is None else fn(*args, **kwargs)


def _wants_kernel(q: torch.Tensor) -> bool:
    return q.is_cuda or os.environ.get("GAG_TRITON_INTERPRET") == "1"


# ----------------------------------------------------------------------------------------------- dense + lse

def dense_attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None):
    """O_d = softmax(q·kᵀ/√d + mask)·v and its row log-sum-exp, from PyTorch's fused kernels when possible."""
    _check_qkv(q, k, v)
    mask4 = _check_mask(mask, q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    bias = None
    if mask4 is not None:
        bias = mask4.to(q.dtype) if mask4.dtype != torch.bool else \
            torch.zeros((), dtype=q.dtype, device=q.device).masked_fill(~mask4, -math.inf)
    try:
        if q.device.type == "cpu":
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, 0.0, False, attn_mask=None if bias is None else bias.expand(
                    q.shape[0], q.shape[1], q.shape[2], k.shape[2]))
            if bool(torch.isfinite(lse).all()):
                return out, lse.float()
        elif q.is_cuda:
            res = torch.ops.aten._scaled_dot_product_efficient_attention(
                q, k, v, None if bias is None else bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2]),
                True)
            return res[0], res[1][..., : q.shape[2]].float()
    except (RuntimeError, NotImplementedError, AttributeError, TypeError):
        pass
    o_d = F.scaled_dot_product_attention(q, k, v, attn_mask=mask4)
    return torch.nan_to_num(o_d), _row_lse(q, k, mask4, None)


def _row_lse(q: torch.Tensor, k: torch.Tensor, mask4, cap: int | None) -> torch.Tensor:
    """Row log-sum-exp of the logits, in chunks.  # (B, H, N)"""
    b, h, n, _ = q.shape
    dtype = _compute_dtype(q.dtype)
    step = _chunk_rows(n, b * h * k.shape[2] * 4 * 2, cap)
    out = torch.empty(b, h, n, dtype=torch.float32, device=q.device)
    k_t = _scaled_keys(k, dtype)
    for a in range(0, n, step):
        e = min(n, a + step)
        out[:, :, a:e] = torch.logsumexp(_logits(q[:, :, a:e], k_t, _mask_rows(mask4, a, e), dtype), dim=-1)
    return out


# ----------------------------------------------------------------------------------------------- public API

def sparse_dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, alpha: float = 1.5,
                           mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(O_s, O_d) = (α-entmax(z)·v, softmax(z)·v) from the same logits z = q·kᵀ/√d, unchunked."""
    _check_qkv(q, k, v)
    alpha = check_alpha(alpha)
    mask4 = _check_mask(mask, q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    dtype = _compute_dtype(q.dtype)
    z = _logits(q, _scaled_keys(k, dtype), mask4, dtype)
    vv = v.to(dtype)
    return (entmax(z, alpha) @ vv).to(q.dtype), (entmax(z, 1.0) @ vv).to(q.dtype)


def gag_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, method: str = "gag", scale: float,
                  beta: float = 0.0, tau: float | None = 15.0, alpha: float = 1.5, mask=None,
                  dense: DenseFn | None = None, stats=None, max_chunk_bytes: int | None = None) -> torch.Tensor:
    """Cross-attention with GAG (O_s + λ·c·G) or PLADIS (O_d + s·(O_s − O_d)).  q (B,H,N,D), k/v (B,H,M,D)."""
    _check_qkv(q, k, v)
    method, scale, beta, tau, alpha = _check_params(method, scale, beta, tau, alpha)
    b, h, n, _ = q.shape
    m, dv = k.shape[2], v.shape[3]
    mask4 = _check_mask(mask, b, h, n, m)
    out_shape = (b, h, n, dv)

    o_d_full = None
    if dense is not None:
        o_d_full, _ = _call_dense(dense, q, k, v, mask, out_shape)
    if _wants_kernel(q):
        fused = _try_kernel("fused_cross_attention", q, k, v, method=method, scale=scale, beta=beta, tau=tau,
                            alpha=alpha, mask=mask4, o_dense=o_d_full, stats=stats)
        if fused is not None:
            return fused

    dtype = _compute_dtype(q.dtype)
    vv, k_t = v.to(dtype), _scaled_keys(k, dtype)
    out = torch.empty(out_shape, dtype=q.dtype, device=q.device)
    # Working set per query row, measured (tests/test_attention.py): ~14 key-length rows (logits, both
    # probability rows, exponentials and entmax temporaries) and ~12 head_dim rows (outputs, rule temporaries).
    step = _chunk_rows(n, b * h * (14 * m + 12 * dv) * torch.finfo(dtype).bits // 8, max_chunk_bytes)
    for a in range(0, n, step):
        e = min(n, a + step)
        z = _logits(q[:, :, a:e], k_t, _mask_rows(mask4, a, e), dtype)  # (B, H, n, M)
        if o_d_full is None:
            # softmax = 1-entmax (fully masked rows → 0); fusing both into one compiled pass measured slower
            o_s, o_d = entmax(z, alpha) @ vv, entmax(z, 1.0) @ vv  # (B, H, n, Dv)
        else:
            o_s, o_d = entmax(z, alpha) @ vv, o_d_full[:, :, a:e].to(dtype)
        del z
        out[:, :, a:e] = _combine(o_s, o_d, method, scale, beta, tau, stats)
    return out


def _check_text_range(text_range, length: int) -> tuple[int, int]:
    try:
        s, e = (int(x) for x in text_range)
    except (TypeError, ValueError):
        raise ValueError(f"text_range must be a (start, stop) pair of ints, got {text_range!r}") from None
    if not (0 <= s < e <= length):
        raise ValueError(f"text_range {text_range!r} must satisfy 0 <= start < stop <= sequence length {length}")
    return s, e


def joint_gag_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, text_range, method: str = "gag",
                        scale: float, beta: float = 0.0, tau: float | None = 15.0, alpha: float = 1.5, mask=None,
                        dense: DenseFn | None = None, stats=None,
                        max_chunk_bytes: int | None = None) -> torch.Tensor:
    """MMDiT joint attention where only image rows × text keys are sparsified (dense text mass kept), then guided."""
    _check_qkv(q, k, v)
    method, scale, beta, tau, alpha = _check_params(method, scale, beta, tau, alpha)
    b, h, n, _ = q.shape
    length, dv = k.shape[2], v.shape[3]
    if n != length:
        raise ValueError(f"joint attention needs q and k of the same length, got {n} and {length}")
    s, e = _check_text_range(text_range, length)
    mask4 = _check_mask(mask, b, h, n, length)
    out_shape = (b, h, n, dv)

    if dense is not None:
        o_d, lse = _call_dense(dense, q, k, v, mask, out_shape)
    else:
        o_d, lse = dense_attention_with_lse(q, k, v, mask)
    if s == 0 and e == n:  # no image tokens: nothing to guide
        return o_d.to(q.dtype)

    if _wants_kernel(q):
        lse_full = lse if lse is not None else _row_lse(q, k, mask4, max_chunk_bytes)
        fused = _try_kernel("fused_joint_attention", q, k, v, text_range=(s, e), lse=lse_full, o_dense=o_d,
                            method=method, scale=scale, beta=beta, tau=tau, alpha=alpha, mask=mask4, stats=stats)
        if fused is not None:
            return fused

    dtype = _compute_dtype(q.dtype)
    k_text, v_t = _scaled_keys(k[:, :, s:e], dtype), v[:, :, s:e].to(dtype)
    k_all = _scaled_keys(k, dtype) if lse is None else None
    out = o_d.to(q.dtype, copy=True)
    m_t = e - s
    row_bytes = b * h * (14 * m_t + 12 * dv + (2 * length if lse is None else 0)) * torch.finfo(dtype).bits // 8
    step = _chunk_rows(n, row_bytes, max_chunk_bytes)
    for seg_a, seg_e in ((0, s), (e, n)):  # image rows before and after the text span
        for a in range(seg_a, seg_e, step):
            c = min(seg_e, a + step)
            if lse is None:
                lse_c = torch.logsumexp(_logits(q[:, :, a:c], k_all, _mask_rows(mask4, a, c), dtype), dim=-1)
            else:
                lse_c = lse[:, :, a:c].to(dtype)
            z_t = _logits(q[:, :, a:c], k_text, _mask_rows(mask4, a, c, s, e), dtype)  # (B, H, n, M_text)
            lse_t = torch.logsumexp(z_t, dim=-1, keepdim=True)
            # Dense text mass m of each row (0 where the row or its text block is fully masked).
            mass = torch.exp(lse_t - lse_c.unsqueeze(-1)).nan_to_num_(0.0).clamp_(max=1.0)
            p_diff = entmax(z_t, alpha) - entmax(z_t, 1.0)
            del z_t
            o_d_c = o_d[:, :, a:c].to(dtype)
            o_s_c = o_d_c + mass * (p_diff @ v_t)
            out[:, :, a:c] = _combine(o_s_c, o_d_c, method, scale, beta, tau, stats)
    return out
