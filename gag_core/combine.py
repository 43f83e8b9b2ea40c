"""The GAG and PLADIS extrapolation rules on a (sparse, dense) attention-output pair.

GAG (arXiv 2603.02531, eq. 13), per token and head over head_dim:
    Δ = O_s − O_d,  Δ∥ = (⟨Δ, O_s⟩/‖O_s‖²)·O_s,  G = Δ∥ + β(Δ − Δ∥),  c = min(1, τ/‖G‖),  out = O_s + λ·c·G.
PLADIS (arXiv 2503.07677): out = O_d + s·(O_s − O_d).
"""
from __future__ import annotations

import math

import torch

_HALF = (torch.float16, torch.bfloat16)


def check_scale(scale, name: str = "scale") -> float:
    """Validate a finite real guidance scale."""
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {scale!r}") from None
    if not math.isfinite(s):
        raise ValueError(f"{name} must be finite, got {scale!r}")
    return s


def check_tau(tau) -> float | None:
    """Validate τ ≥ 0; None or 0 means no cap (a zero cap would only switch guidance off; use scale 0)."""
    if tau is None:
        return None
    try:
        t = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"tau must be a non-negative number or None, got {tau!r}") from None
    if math.isnan(t) or t < 0:
        raise ValueError(f"tau must be >= 0 (0 or None = no cap), got {tau!r}")
    return None if t == 0 or math.isinf(t) else t


def _check_pair(o_sparse: torch.Tensor, o_dense: torch.Tensor) -> None:
    if not (torch.is_floating_point(o_sparse) and torch.is_floating_point(o_dense)):
        raise ValueError(f"attention outputs must be floating point, got {o_sparse.dtype} and {o_dense.dtype}")
    if o_sparse.shape != o_dense.shape:
        raise ValueError(f"o_sparse and o_dense must have the same shape, got {tuple(o_sparse.shape)} "
                         f"and {tuple(o_dense.shape)}")


def _dot(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    return (a * b).sum(dim=dim, keepdim=True)


def gag_combine(o_sparse: torch.Tensor, o_dense: torch.Tensor, *, scale: float, beta: float = 0.0,
                tau: float | None = 15.0, dim: int = -1, stats=None) -> torch.Tensor:
    """out = O_s + λ·min(1, τ/‖G‖)·G with G = Δ∥ + β·Δ⊥ and Δ = O_s − O_d, projected on O_s over `dim`."""
    _check_pair(o_sparse, o_dense)
    scale, beta, tau = check_scale(scale), check_scale(beta, "beta"), check_tau(tau)
    out_dtype = o_sparse.dtype
    o_s = o_sparse.float() if out_dtype in _HALF else o_sparse
    o_d = o_dense.to(o_s.dtype)
    tiny = torch.finfo(o_s.dtype).tiny
    delta = o_s - o_d  # Δ
    ns2 = _dot(o_s, o_s, dim)  # ‖O_s‖²
    dp = _dot(delta, o_s, dim)  # ⟨Δ, O_s⟩
    coef = torch.where(ns2 > 0, dp / ns2.clamp_min(tiny), torch.zeros_like(dp))  # Δ∥ = coef·O_s
    par_sq = coef * dp  # ‖Δ∥‖² = ⟨Δ,O_s⟩²/‖O_s‖²
    if beta != 0.0 or stats is not None:
        delta_sq = _dot(delta, delta, dim)
    if beta != 0.0:
        # ‖G‖² = β²‖Δ‖² + (1 − β²)‖Δ∥‖²  (Δ∥ ⟂ Δ⊥)
        g_sq = (beta * beta) * delta_sq + (1.0 - beta * beta) * par_sq
    else:
        g_sq = par_sq
    g_norm = g_sq.clamp_min(0).sqrt()
    if tau is None:
        c = torch.ones_like(g_norm)
    else:
        c = tau / torch.maximum(g_norm, torch.full_like(g_norm, tau))  # min(1, τ/‖G‖), 1 when G = 0
    lc = scale * c
    # out = O_s + λc(βΔ + (1 − β)·coef·O_s)
    out = o_s * (1.0 + lc * (1.0 - beta) * coef)
    if beta != 0.0:
        out = out + (lc * beta) * delta
    if stats is not None:
        stats.add(o_sparse_norm=ns2.sqrt(), update_norm=lc.abs() * g_norm,
                  capped=(g_norm > tau) if tau is not None else torch.zeros_like(g_norm, dtype=torch.bool),
                  delta_par_sq=par_sq, delta_perp_sq=(delta_sq - par_sq).clamp_min(0))
    return out.to(out_dtype)


def pladis_combine(o_sparse: torch.Tensor, o_dense: torch.Tensor, *, scale: float) -> torch.Tensor:
    """PLADIS: out = O_d + s·(O_s − O_d)."""
    _check_pair(o_sparse, o_dense)
    scale = check_scale(scale)
    o_d = o_dense.to(o_sparse.dtype)
    return torch.lerp(o_d, o_sparse, scale) if o_sparse.dtype not in _HALF else \
        (o_d.float() + scale * (o_sparse.float() - o_d.float())).to(o_sparse.dtype)


def gag_combine_reference(o_sparse: torch.Tensor, o_dense: torch.Tensor, *, scale: float, beta: float = 0.0,
                          tau: float | None = 15.0, dim: int = -1) -> torch.Tensor:
    """Slow reference of the GAG rule, literally as written, in float64."""
    o_s, o_d = o_sparse.double(), o_dense.double()
    delta = o_s - o_d
    ns2 = (o_s * o_s).sum(dim, keepdim=True)
    par = torch.where(ns2 > 0, (delta * o_s).sum(dim, keepdim=True) / ns2, torch.zeros_like(ns2)) * o_s
    perp = delta - par
    g = par + beta * perp
    gn = g.norm(dim=dim, keepdim=True)
    tau = check_tau(tau)
    c = torch.ones_like(gn) if tau is None else torch.where(gn > tau, tau / gn, torch.ones_like(gn))
    return (o_s + scale * c * g).to(o_sparse.dtype)
