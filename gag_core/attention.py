"""Dense and sparse attention from the same logits, combined by the GAG or PLADIS rule.

Cross-attention (UNet, video DiTs): z = q·kᵀ·scale, P_d = softmax(z), P_s = α-entmax(z) and
    O_s = O_d + (P_s − P_d)·v,  out = rule(O_s, O_d),
where O_d is the dense output the host's chain returns (another pack's override included) or P_d·v. With
α = 1 (P_s = P_d) or λ = 0 under PLADIS the result is that O_d exactly.
Joint attention (MMDiT, single stream): for every guided image row, z_t are its logits over the text keys only,
    O_s^t = α-entmax(z_t)·v_t,  O_d^t = softmax(z_t)·v_t,  g = rule(O_s^t, O_d^t),
    out = O_d + m·(g − O_d^t),
with m = Σ_text softmax(z) the row's dense joint mass on the text keys (from the dense pass's log-sum-exp, or,
through a host kernel that returns no lse, as one extra value channel of that same call: text_mass_extension).
So out − O_d lies in the span of the text values, and text rows, reference rows and image keys stay dense.
Queries are processed in chunks so the working memory stays under `max_chunk_bytes` (default 256 MiB,
`GAG_MAX_CHUNK_MB` overrides it) whatever the sequence length. On CUDA the fused Triton kernel
(gag_core.kernels) runs instead, after checking itself once per class of call against this PyTorch path.
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Callable

import torch
import torch.nn.functional as F

from .combine import gag_combine, pladis_combine, rule_for_stats
from .entmax import call_logits, entmax
from .validate import (ENV_DISABLE_TRITON, ENV_MAX_CHUNK_MB, ENV_TRITON_INTERPRET, HALF_DTYPES, METHODS,
                       check_mask, check_params, check_qkv, check_range, check_softmax_scale)

DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20
SELF_CHECK_ROWS = 8

logger = logging.getLogger("gag_core")

DenseFn = Callable[..., "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]

__all__ = ["DEFAULT_MAX_CHUNK_BYTES", "METHODS", "TEXT_MASS_PAD", "dense_attention_with_lse", "gag_attention",
           "joint_gag_attention", "kernel_self_check_report", "max_chunk_bytes", "sparse_dense_attention",
           "text_mass_agrees", "text_mass_extension"]


def max_chunk_bytes() -> int:
    """The working-memory cap for one query chunk: GAG_MAX_CHUNK_MB (MiB) or 256 MiB."""
    env = os.environ.get(ENV_MAX_CHUNK_MB)
    if env:
        try:
            mb = float(env)
        except ValueError:
            raise ValueError(f"{ENV_MAX_CHUNK_MB} must be a number of MiB, got {env[:40]!r}") from None
        if not (mb > 0 and math.isfinite(mb)):
            raise ValueError(f"{ENV_MAX_CHUNK_MB} must be > 0, got {env[:40]!r}")
        return int(mb * 2**20)
    return DEFAULT_MAX_CHUNK_BYTES


# ----------------------------------------------------------------------------------------------- helpers

def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in HALF_DTYPES else dtype


def _expand_heads(q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Grouped-query k or v (B, Hkv, M, D) repeated to q's H heads, head h reading kv head h // (H/Hkv)."""
    rep = q.shape[1] // t.shape[1]
    return t if rep == 1 else t.repeat_interleave(rep, dim=1)


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


def _scaled_keys(k: torch.Tensor, dtype: torch.dtype, sm_scale: float) -> torch.Tensor:
    """kᵀ·scale in `dtype`, formed once per call: scaling the few keys is cheaper than every query chunk.  # (B, H, D, M)"""
    return (k.to(dtype) * sm_scale).transpose(-1, -2)


def _logits(q: torch.Tensor, k_t: torch.Tensor, mask, dtype: torch.dtype) -> torch.Tensor:
    """z = q·(kᵀ·scale) (+ mask) in `dtype`, from keys prepared by `_scaled_keys`.  # (B, H, n, M)"""
    return _apply_mask(torch.matmul(q.to(dtype), k_t), mask)


def _chunk_rows(n: int, bytes_per_row: int, cap: int | None) -> int:
    cap = max_chunk_bytes() if cap is None else cap
    return max(1, min(n, cap // max(bytes_per_row, 1)))


def _combine(o_s, o_d, rule, stats):
    method, scale, beta, tau = rule
    if method == "pladis":
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


# ----------------------------------------------------------------------------------------------- dense + lse

def dense_attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None, *,
                             softmax_scale: float | None = None):
    """O_d = softmax(q·kᵀ·scale + mask)·v and its row log-sum-exp, from PyTorch's fused kernels when possible."""
    check_qkv(q, k, v)
    k, v = _expand_heads(q, k), _expand_heads(q, v)
    sm = check_softmax_scale(softmax_scale, q.shape[-1])
    mask4 = check_mask(mask, q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    bias = None
    if mask4 is not None:
        bias = mask4.to(q.dtype) if mask4.dtype != torch.bool else \
            torch.zeros((), dtype=q.dtype, device=q.device).masked_fill(~mask4, -math.inf)
        bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    try:
        if q.device.type == "cpu":
            # (the default scale is left implicit: an explicit one takes a slower path, measured 9 % at D = 128)
            extra = {} if sm == q.shape[-1] ** -0.5 else {"scale": sm}
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, 0.0, False, attn_mask=bias, **extra)
            if bool(torch.isfinite(lse).all()):
                return out, lse.float()
        elif q.is_cuda:
            res = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True, scale=sm)
            return res[0], res[1][..., : q.shape[2]].float()
    except (RuntimeError, NotImplementedError, AttributeError, TypeError):
        pass
    o_d = F.scaled_dot_product_attention(q, k, v, attn_mask=mask4, scale=sm)
    return torch.nan_to_num(o_d), _row_lse(q, k, mask4, None, sm)


TEXT_MASS_PAD = 8  # channels added to q, k, v: v's text indicator, then zeros to the kernels' 8-channel alignment


def text_mass_extension(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_range, *,
                        softmax_scale: float | None = None):
    """(q', k', v') whose dense attention at the default scale 1/√W (W = D + 8) is [O_d | m | 0…]:
    q' = (q·scale·√W | 0), k' = (k | 0), v' = (v | 1 on the text keys | 0); m = Σ_text softmax(z), the row's
    dense text mass, so a host kernel returns it with O_d instead of a second pass for the log-sum-exp."""
    check_qkv(q, k, v)
    s, e = check_range(text_range, k.shape[2], "text_range")
    sm = check_softmax_scale(softmax_scale, q.shape[-1])
    width = q.shape[-1] + TEXT_MASS_PAD
    q_x = F.pad(q * (sm * math.sqrt(width)), (0, TEXT_MASS_PAD))  # (B, H, N, W)
    k_x = F.pad(k, (0, TEXT_MASS_PAD))  # (B, H, L, W)
    v_x = F.pad(v, (0, TEXT_MASS_PAD))  # (B, H, L, Dv + 8)
    v_x[:, :, s:e, v.shape[-1]] = 1.0
    return q_x, k_x, v_x


def text_mass_agrees(o_x: torch.Tensor, o_d: torch.Tensor, q: torch.Tensor, k: torch.Tensor, text_range, *,
                     mask=None, softmax_scale: float | None = None, rows: int = SELF_CHECK_ROWS) -> bool:
    """Whether a dense pass on `text_mass_extension` tensors (o_x) acted as plain attention: its first Dv channels
    match the plain call's O_d and its text channel matches m = exp(lse_t − lse) on the first `rows` rows."""
    dv = o_d.shape[-1]
    if tuple(o_x.shape) != tuple(o_d.shape[:3]) + (dv + TEXT_MASS_PAD,):
        return False
    k = _expand_heads(q, k)
    s, e = check_range(text_range, k.shape[2], "text_range")
    sm = check_softmax_scale(softmax_scale, q.shape[-1])
    mask4 = check_mask(mask, q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    r = min(rows, q.shape[2])
    lse = _row_lse(q[:, :, :r], k, _mask_rows(mask4, 0, r), None, sm)
    lse_t = _row_lse(q[:, :, :r], k[:, :, s:e], _mask_rows(mask4, 0, r, s, e), None, sm)
    m_ref = torch.exp(lse_t - lse).nan_to_num(0.0)
    tol = max(8 * torch.finfo(o_x.dtype).eps, 1e-5)  # a few roundings of the output dtype (bf16: 6 %)
    m_ok = bool(((o_x[:, :, :r, dv].float() - m_ref).abs() <= tol * m_ref + 1e-6).all())
    d_ok = bool(((o_x[..., :dv].float() - o_d.float()).abs() <= tol * (float(o_d.float().abs().amax()) or 1.0)).all())
    return m_ok and d_ok


def _row_lse(q: torch.Tensor, k: torch.Tensor, mask4, cap: int | None, sm_scale: float) -> torch.Tensor:
    """Row log-sum-exp of the logits, in chunks.  # (B, H, N)"""
    b, h, n, _ = q.shape
    dtype = _compute_dtype(q.dtype)
    step = _chunk_rows(n, b * h * k.shape[2] * 4 * 2, cap)
    out = torch.empty(b, h, n, dtype=torch.float32, device=q.device)
    k_t = _scaled_keys(k, dtype, sm_scale)
    for a in range(0, n, step):
        e = min(n, a + step)
        out[:, :, a:e] = torch.logsumexp(_logits(q[:, :, a:e], k_t, _mask_rows(mask4, a, e), dtype), dim=-1)
    return out


# ----------------------------------------------------------------------------------------------- PyTorch paths

def _cross_torch(q, k, v, mask4, o_d_full, rule, alpha, sm_scale, stats, cap) -> torch.Tensor:
    """Cross-attention rows: O_s = O_d + (P_s − P_d)·v with O_d = o_d_full or P_d·v, then the rule."""
    b, h, n, _ = q.shape
    m, dv = k.shape[2], v.shape[3]
    dtype = _compute_dtype(q.dtype)
    vv, k_t = v.to(dtype), _scaled_keys(k, dtype, sm_scale)
    out = torch.empty((b, h, n, dv), dtype=q.dtype, device=q.device)
    # Working set per query row, measured (tests/test_attention.py): ~14 key-length rows (logits, both
    # probability rows, exponentials and entmax temporaries) and ~12 head_dim rows (outputs, rule temporaries).
    step = _chunk_rows(n, b * h * (14 * m + 12 * dv) * torch.finfo(dtype).bits // 8, cap)
    with call_logits(b * h * n * m):  # the whole call decides whether its chunks are compiled
        for a in range(0, n, step):
            e = min(n, a + step)
            z = _logits(q[:, :, a:e], k_t, _mask_rows(mask4, a, e), dtype)  # (B, H, n, M)
            p_d = entmax(z, 1.0)  # softmax = 1-entmax (fully masked rows → 0)
            p_s = p_d.clone() if alpha == 1.0 else entmax(z, alpha)
            del z
            if o_d_full is None:
                o_d, o_s = p_d @ vv, p_s @ vv  # (B, H, n, Dv)
            else:
                o_d = o_d_full[:, :, a:e].to(dtype)
                o_s = o_d + p_s.sub_(p_d) @ vv
            out[:, :, a:e] = _combine(o_s, o_d, rule, stats)
    return out


def _joint_torch(q, k, v, mask4, o_d, lse, text, segments, rule, alpha, sm_scale, stats, cap,
                 mass=None, in_place=False) -> torch.Tensor:
    """Joint-attention rows in `segments`: out = O_d + m·(rule(O_s^t, O_d^t) − O_d^t); other rows O_d.
    m: `mass` (B, H, N, in [0, 1]) when the dense pass gave it, else exp(lse_t − lse) from the row lse (computed if None).
    in_place: write into o_d (the caller's own dense output) instead of a copy of it."""
    b, h, n, _ = q.shape
    length, dv = k.shape[2], v.shape[3]
    s, e = text
    dtype = _compute_dtype(q.dtype)
    k_text, v_t = _scaled_keys(k[:, :, s:e], dtype, sm_scale), v[:, :, s:e].to(dtype)
    full_lse = lse is None and mass is None  # neither given: one more pass over all keys for the row lse
    k_all = _scaled_keys(k, dtype, sm_scale) if full_lse else None
    out = o_d if in_place and o_d.dtype == q.dtype else o_d.to(q.dtype, copy=True)
    row_bytes = b * h * (14 * (e - s) + 12 * dv + (2 * length if full_lse else 0)) * torch.finfo(dtype).bits // 8
    step = _chunk_rows(n, row_bytes, cap)
    with call_logits(b * h * n * (e - s)):
        for seg_a, seg_e in segments:
            for a in range(seg_a, seg_e, step):
                c = min(seg_e, a + step)
                z_t = _logits(q[:, :, a:c], k_text, _mask_rows(mask4, a, c, s, e), dtype)  # (B, H, n, M_text)
                # Dense text mass m of each row (0 where the row or its text block is fully masked).
                if mass is not None:
                    m_c = mass[:, :, a:c, None]
                else:
                    lse_c = lse[:, :, a:c].to(dtype) if lse is not None else torch.logsumexp(
                        _logits(q[:, :, a:c], k_all, _mask_rows(mask4, a, c), dtype), dim=-1)
                    lse_t = torch.logsumexp(z_t, dim=-1, keepdim=True)
                    m_c = torch.exp(lse_t - lse_c.unsqueeze(-1)).nan_to_num_(0.0).clamp_(max=1.0)
                p_d = entmax(z_t, 1.0)  # softmax over the text keys alone (fully masked rows → 0)
                p_s = p_d if alpha == 1.0 else entmax(z_t, alpha)  # α = 1: Δ = 0 exactly, out = O_d exactly
                o_d_t = p_d @ v_t  # (B, H, n, Dv)
                o_s_t = o_d_t if alpha == 1.0 else p_s @ v_t
                del z_t, p_s, p_d
                g = _combine(o_s_t, o_d_t, rule, stats)
                out[:, :, a:c] = (o_d[:, :, a:c].to(dtype) + m_c * (g.to(dtype) - o_d_t)).to(q.dtype)
    return out


# ----------------------------------------------------------------------------------------------- kernel, self-checked

_trust: dict[tuple, bool] = {}  # kernel class -> passed its self-check (False: failed, PyTorch from then on)
_check_log: list[dict] = []  # one entry per self-check run in this process (class, error, tolerance, seconds)
# Relative error (per row, see _rel_error) the kernel may show against the PyTorch path on the same call, per
# unit of 1 + |λ|: 10× the worst of 60 random interpreter calls of every mode, method and α (float32 7e-7,
# float16 2.8e-4, bfloat16 2.7e-3); a wrong kernel is off by orders of magnitude more.
SELF_CHECK_RTOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 3e-2, torch.float64: 1e-5}


def _kernels():
    """gag_core.kernels when the fused path may run at all, else None."""
    if os.environ.get(ENV_DISABLE_TRITON) == "1":
        return None
    try:
        from . import kernels
    except ImportError:
        return None
    return kernels


def _wants_kernel(q: torch.Tensor) -> bool:
    return q.is_cuda or os.environ.get(ENV_TRITON_INTERPRET) == "1"


def _rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max over rows of ‖got − ref‖ / max(‖ref‖, 1e-3·mean‖ref‖), in float32."""
    got, ref = got.float(), ref.float()
    num = (got - ref).norm(dim=-1)
    den = ref.norm(dim=-1)
    floor = max(float(den.mean()) * 1e-3, torch.finfo(torch.float32).tiny)
    err = (num / den.clamp_min(floor)).max()
    return float(err) if bool(torch.isfinite(err)) else math.inf


def _self_checked(cls: tuple, run_slice_kernel, run_slice_torch, scale: float) -> bool:
    """True when the kernel class `cls` may be trusted; the first call checks a slice of the real call."""
    state = _trust.get(cls)
    if state is not None:
        return state
    t0 = time.perf_counter()
    try:
        got = run_slice_kernel()
    except Exception as exc:  # a launch that raises: PyTorch for this class from now on
        _trust[cls] = False
        logger.warning("[GAG] fused kernel %s failed its first launch (%s: %s); using the PyTorch path for this "
                       "class of call from now on", cls, type(exc).__name__, str(exc)[:200])
        return False
    if got is None:  # the kernel does not apply to this call; nothing learnt about the class
        return False
    ref = run_slice_torch()
    err = _rel_error(got, ref)
    tol = SELF_CHECK_RTOL.get(ref.dtype, 1e-1) * (1.0 + abs(scale))
    ok = err <= tol
    _trust[cls] = ok
    _check_log.append({"class": cls, "error": err, "tolerance": tol, "ok": ok, "seconds": time.perf_counter() - t0})
    if not ok:
        logger.warning("[GAG] fused kernel %s disagrees with the PyTorch path on its self-check (relative error "
                       "%.3g > tolerance %.3g); using the PyTorch path for this class of call from now on",
                       cls, err, tol)
    return ok


def kernel_self_check_report() -> list[dict]:
    """The self-checks run in this process: kernel class, relative error, tolerance, verdict and seconds."""
    return [dict(x) for x in _check_log]


def _cross_kernel(q, k, v, mask4, o_d_full, rule, alpha, sm_scale, stats):
    kernels = _kernels()
    if kernels is None or not _wants_kernel(q):
        return None
    method, scale, beta, tau = rule
    kw = dict(method=method, scale=scale, beta=beta, tau=tau, alpha=alpha, softmax_scale=sm_scale)
    cls = ("cross", q.device.type, q.dtype, q.shape[-1], v.shape[-1], method, alpha, o_d_full is not None,
           None if mask4 is None else mask4.dtype)
    r = min(q.shape[2], SELF_CHECK_ROWS)
    m_sl = _mask_rows(mask4, 0, r)
    o_sl = None if o_d_full is None else o_d_full[:, :, :r]
    if not _self_checked(
            cls,
            lambda: kernels.fused_cross_attention(q[:, :, :r], k, v, mask=m_sl, o_dense=o_sl, **kw),
            lambda: _cross_torch(q[:, :, :r], k, v, m_sl, o_sl, rule, alpha, sm_scale, None, None), scale):
        return None
    return kernels.fused_cross_attention(q, k, v, mask=mask4, o_dense=o_d_full, stats=stats, **kw)


def _joint_kernel(q, k, v, mask4, o_d, lse, text, segments, rule, alpha, sm_scale, stats, cap, mass=None):
    kernels = _kernels()
    if kernels is None or not _wants_kernel(q):
        return None
    if lse is None and mass is not None:  # the kernel reads m = exp(lse_t − lse): lse = lse_t − log m (text keys only)
        s, e = text
        lse_t = _row_lse(q, k[:, :, s:e], _mask_rows(mask4, 0, None, s, e), cap, sm_scale)
        m = mass.float()
        lse = torch.where(m > 0, lse_t - torch.log(m), torch.full_like(lse_t, math.inf))  # m = 0 → exp(−inf) = 0
    elif lse is None:
        lse = _row_lse(q, k, mask4, cap, sm_scale)
    method, scale, beta, tau = rule
    kw = dict(method=method, scale=scale, beta=beta, tau=tau, alpha=alpha, softmax_scale=sm_scale, text_range=text)
    cls = ("joint", q.device.type, q.dtype, q.shape[-1], v.shape[-1], method, alpha,
           None if mask4 is None else mask4.dtype)
    a = segments[0][0]
    r = min(segments[0][1], a + SELF_CHECK_ROWS)
    m_sl = _mask_rows(mask4, a, r)
    sl = [(0, r - a)]
    if not _self_checked(
            cls,
            lambda: kernels.fused_joint_attention(q[:, :, a:r], k, v, segments=sl, lse=lse[:, :, a:r],
                                                  o_dense=o_d[:, :, a:r], mask=m_sl, **kw),
            lambda: _joint_torch(q[:, :, a:r], k, v, m_sl, o_d[:, :, a:r], lse[:, :, a:r], text, sl, rule, alpha,
                                 sm_scale, None, None), scale):
        return None
    return kernels.fused_joint_attention(q, k, v, segments=segments, lse=lse, o_dense=o_d, mask=mask4, stats=stats,
                                         **kw)


# ----------------------------------------------------------------------------------------------- public API

def sparse_dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, alpha: float = 1.5,
                           mask=None, softmax_scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(O_s, O_d) = (α-entmax(z)·v, softmax(z)·v) from the same logits z = q·kᵀ·scale, unchunked."""
    check_qkv(q, k, v)
    _, _, _, _, alpha = check_params("gag", 0.0, 0.0, None, alpha)
    k, v = _expand_heads(q, k), _expand_heads(q, v)
    mask4 = check_mask(mask, q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    dtype = _compute_dtype(q.dtype)
    z = _logits(q, _scaled_keys(k, dtype, check_softmax_scale(softmax_scale, q.shape[-1])), mask4, dtype)
    vv = v.to(dtype)
    return (entmax(z, alpha) @ vv).to(q.dtype), (entmax(z, 1.0) @ vv).to(q.dtype)


def gag_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, method: str = "gag", scale: float,
                  beta: float = 0.0, tau: float | None = 15.0, alpha: float = 1.5, mask=None,
                  dense: DenseFn | None = None, stats=None, max_chunk_bytes: int | None = None,
                  softmax_scale: float | None = None) -> torch.Tensor:
    """Cross-attention with GAG (O_s + λ·c·G) or PLADIS (O_d + s·(O_s − O_d)), O_s = O_d + (P_s − P_d)·v.

    q (B, H, N, D), k/v (B, Hkv, M, D) with H a multiple of Hkv; `dense(q, k, v, mask)` gives O_d (the host's
    chain), else O_d = P_d·v; softmax_scale None = 1/√D.
    """
    check_qkv(q, k, v)
    method, scale, beta, tau, alpha = check_params(method, scale, beta, tau, alpha)
    sm = check_softmax_scale(softmax_scale, q.shape[-1])
    k, v = _expand_heads(q, k), _expand_heads(q, v)
    b, h, n, _ = q.shape
    mask4 = check_mask(mask, b, h, n, k.shape[2])
    o_d_full = None if dense is None else _call_dense(dense, q, k, v, mask, (b, h, n, v.shape[3]))[0]
    if _compiling():  # one custom op in the compiled graph; its body is the eager call below
        out, sums = _ops().guided_cross(q, k, v, o_d_full, mask4, method, float(scale), float(beta),
                                        float(tau or 0.0), float(alpha), float(sm), stats is not None)
        if stats is not None:
            stats.add_sums(sums, tokens=b * h * n)
        return out
    return _cross_guided(q, k, v, mask4, o_d_full, method, scale, beta, tau, alpha, sm, stats, max_chunk_bytes)


def _cross_guided(q, k, v, mask4, o_d_full, method, scale, beta, tau, alpha, sm, stats, max_chunk_bytes):
    """gag_attention after validation and the dense pass: the self-checked kernel, else the PyTorch path."""
    rule = rule_for_stats(method, scale, beta, tau, stats)
    fused = _cross_kernel(q, k, v, mask4, o_d_full, rule, alpha, sm, stats)
    if fused is not None:
        return fused
    return _cross_torch(q, k, v, mask4, o_d_full, rule, alpha, sm, stats, max_chunk_bytes)


def _compiling() -> bool:
    """True while torch.compile traces the caller (then the guided part goes through gag_core.kernels.ops)."""
    compiler = getattr(torch, "compiler", None)
    if compiler is None or not hasattr(compiler, "is_compiling") or not hasattr(torch.library, "custom_op"):
        return False  # torch < 2.4: no custom ops; the Python dispatch is traced as before
    return compiler.is_compiling()


def _ops():
    from .kernels import ops

    return ops


def _guided_segments(guided_rows, text: tuple[int, int], n: int, length: int) -> list[tuple[int, int]]:
    """The query row ranges that get guidance: `guided_rows` (default all) less the text rows when q is the
    whole joint sequence."""
    g0, g1 = (0, n) if guided_rows is None else check_range(guided_rows, n, "guided_rows", allow_empty=True)
    if n != length:
        return [(g0, g1)] if g1 > g0 else []
    s, e = text
    return [(a, c) for a, c in ((g0, min(g1, s)), (max(g0, e), g1)) if c > a]


def joint_gag_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, text_range, method: str = "gag",
                        scale: float, beta: float = 0.0, tau: float | None = 15.0, alpha: float = 1.5, mask=None,
                        dense: DenseFn | None = None, stats=None, max_chunk_bytes: int | None = None,
                        softmax_scale: float | None = None, guided_rows=None,
                        dense_text_mass: bool = False) -> torch.Tensor:
    """Joint attention, image rows: out = O_d + m·(rule(O_s^t, O_d^t) − O_d^t) on the text keys `text_range`.

    q (B, H, N, D), k/v (B, Hkv, L, D); text_range = (start, stop) key columns of the text; guided_rows =
    (start, stop) query rows to guide (default: all, less the text rows when N = L); other rows keep O_d.
    `dense(q, k, v, mask)` gives O_d or (O_d, lse) (the host's chain), else PyTorch's SDPA with its lse.
    dense_text_mass: `dense` takes any width at the default scale 1/√width, so it is called on
    `text_mass_extension(q, k, v)` and returns m with O_d (no log-sum-exp pass); an O_d-wide answer is used too.
    """
    check_qkv(q, k, v)
    method, scale, beta, tau, alpha = check_params(method, scale, beta, tau, alpha)
    sm = check_softmax_scale(softmax_scale, q.shape[-1])
    k, v = _expand_heads(q, k), _expand_heads(q, v)
    b, h, n, _ = q.shape
    length, dv = k.shape[2], v.shape[3]
    text = check_range(text_range, length, "text_range")
    segments = _guided_segments(guided_rows, text, n, length)
    mask4 = check_mask(mask, b, h, n, length)
    mass = None
    if dense is not None and dense_text_mass:
        res = dense(*text_mass_extension(q, k, v, text, softmax_scale=sm), mask)
        if isinstance(res, torch.Tensor) and tuple(res.shape) == (b, h, n, dv + TEXT_MASS_PAD):
            # (B, H, N, Dv), (B, H, N); m in [0, 1], 0 on rows the kernel left NaN (fully masked)
            o_d, lse = res[..., :dv], None
            mass = res[..., dv].to(_compute_dtype(q.dtype)).nan_to_num(0.0).clamp_(0.0, 1.0)
        else:  # a dense that answered O_d-wide (it did not use the channel): checked as usual
            o_d, lse = _call_dense(lambda *_: res, q, k, v, mask, (b, h, n, dv))
    elif dense is not None:
        o_d, lse = _call_dense(dense, q, k, v, mask, (b, h, n, dv))
    else:
        o_d, lse = dense_attention_with_lse(q, k, v, mask4, softmax_scale=sm)
    if not segments:  # no image rows: nothing to guide
        return o_d.to(q.dtype)
    if _compiling():  # one custom op in the compiled graph; its body is the eager call below
        out, sums = _ops().guided_joint(q, k, v, o_d, lse, mass, mask4, text[0], text[1],
                                        [x for seg in segments for x in seg], method, float(scale), float(beta),
                                        float(tau or 0.0), float(alpha), float(sm), stats is not None)
        if stats is not None:
            stats.add_sums(sums, tokens=b * h * sum(c - a for a, c in segments))
        return out
    # o_d is this call's own (gag_core's SDPA, or the chain's fresh output): guided rows overwrite it in place
    return _joint_guided(q, k, v, mask4, o_d, lse, text, segments, method, scale, beta, tau, alpha, sm, stats,
                         max_chunk_bytes, mass, in_place=True)


def _joint_guided(q, k, v, mask4, o_d, lse, text, segments, method, scale, beta, tau, alpha, sm, stats,
                  max_chunk_bytes, mass, in_place):
    """joint_gag_attention after validation and the dense pass: the self-checked kernel, else the PyTorch path."""
    rule = rule_for_stats(method, scale, beta, tau, stats)
    fused = _joint_kernel(q, k, v, mask4, o_d, lse, text, segments, rule, alpha, sm, stats, max_chunk_bytes, mass)
    if fused is not None:
        return fused
    return _joint_torch(q, k, v, mask4, o_d, lse, text, segments, rule, alpha, sm, stats, max_chunk_bytes, mass,
                        in_place=in_place)
