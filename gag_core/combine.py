"""The GAG and PLADIS extrapolation rules on a (sparse, dense) attention-output pair.

GAG (arXiv 2603.02531, eq. 13), per token and head over head_dim:
    Δ = O_s − O_d,  Δ∥ = (⟨Δ, O_s⟩/‖O_s‖²)·O_s,  G = Δ∥ + β(Δ − Δ∥),  c = min(1, τ/‖G‖),  out = O_s + λ·c·G.
PLADIS (arXiv 2503.07677): out = O_d + s·(O_s − O_d).
"""
from __future__ import annotations

import torch

from .entmax import compiled_or_eager
from .validate import HALF_DTYPES, check_scale, check_tau


def _check_pair(o_sparse: torch.Tensor, o_dense: torch.Tensor) -> None:
    if not (torch.is_floating_point(o_sparse) and torch.is_floating_point(o_dense)):
        raise ValueError(f"attention outputs must be floating point, got {o_sparse.dtype} and {o_dense.dtype}")
    if o_sparse.shape != o_dense.shape:
        raise ValueError(f"o_sparse and o_dense must have the same shape, got {tuple(o_sparse.shape)} "
                         f"and {tuple(o_dense.shape)}")


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=-1, keepdim=True)


def _gag_rule(o_s: torch.Tensor, o_d: torch.Tensor, scale: torch.Tensor, beta: torch.Tensor, tau: torch.Tensor):
    """The GAG rule over the last dim with 0-d tensor parameters (tau ≤ 0: no cap); one pass per row, compilable.

    Uses G = βΔ + (1 − β)Δ∥, ‖Δ∥‖² = ⟨Δ,O_s⟩²/‖O_s‖² and ‖G‖² = β²‖Δ‖² + (1 − β²)‖Δ∥‖² (Δ∥ ⟂ Δ⊥), so
    out = O_s·(1 + λc(1 − β)·⟨Δ,O_s⟩/‖O_s‖²) + λcβ·Δ needs no explicit projection. Returns out and the
    per-row ‖O_s‖², ‖Δ∥‖², ‖Δ‖², ‖G‖ and λc for statistics.
    """
    delta = o_s - o_d  # Δ
    ns2 = _dot(o_s, o_s)  # ‖O_s‖²
    dp = _dot(delta, o_s)  # ⟨Δ, O_s⟩
    coef = torch.where(ns2 > 0, dp / ns2.clamp_min(torch.finfo(o_s.dtype).tiny), torch.zeros_like(dp))
    par_sq = coef * dp
    delta_sq = _dot(delta, delta)
    g_norm = (beta * beta * delta_sq + (1.0 - beta * beta) * par_sq).clamp_min(0).sqrt()
    c = torch.where(tau > 0, tau / torch.maximum(g_norm, tau), torch.ones_like(g_norm))  # min(1, τ/‖G‖)
    lc = scale * c
    out = o_s * (1.0 + lc * (1.0 - beta) * coef) + (lc * beta) * delta
    return out, ns2, par_sq, delta_sq, g_norm, lc


def _gag_rule_eager(o_s: torch.Tensor, o_d: torch.Tensor, scale: torch.Tensor, beta: torch.Tensor, tau: torch.Tensor):
    """`_gag_rule` for eager runs: row dot products by vecdot and the output built in place (two row-sized
    temporaries instead of seven; the compiler fuses the pure form by itself)."""
    delta = o_s - o_d  # Δ
    ns2 = torch.linalg.vecdot(o_s, o_s).unsqueeze(-1)  # ‖O_s‖²
    dp = torch.linalg.vecdot(delta, o_s).unsqueeze(-1)  # ⟨Δ, O_s⟩
    coef = torch.where(ns2 > 0, dp / ns2.clamp_min(torch.finfo(o_s.dtype).tiny), torch.zeros_like(dp))
    par_sq = coef * dp
    delta_sq = torch.linalg.vecdot(delta, delta).unsqueeze(-1)
    g_norm = (beta * beta * delta_sq + (1.0 - beta * beta) * par_sq).clamp_min(0).sqrt()
    c = torch.where(tau > 0, tau / torch.maximum(g_norm, tau), torch.ones_like(g_norm))  # min(1, τ/‖G‖)
    lc = scale * c
    out = torch.mul(o_s, 1.0 + lc * (1.0 - beta) * coef).addcmul_(delta, lc * beta)
    return out, ns2, par_sq, delta_sq, g_norm, lc


def gag_combine(o_sparse: torch.Tensor, o_dense: torch.Tensor, *, scale: float, beta: float = 0.0,
                tau: float | None = 15.0, dim: int = -1, stats=None) -> torch.Tensor:
    """out = O_s + λ·min(1, τ/‖G‖)·G with G = Δ∥ + β·Δ⊥ and Δ = O_s − O_d, projected on O_s over `dim`."""
    _check_pair(o_sparse, o_dense)
    scale, beta, tau = check_scale(scale), check_scale(beta, "beta"), check_tau(tau)
    out_dtype = o_sparse.dtype
    o_s = (o_sparse.float() if out_dtype in HALF_DTYPES else o_sparse).movedim(dim, -1)
    o_d = o_dense.to(o_s.dtype).movedim(dim, -1)
    params = [torch.tensor(x, dtype=o_s.dtype, device=o_s.device) for x in (scale, beta, tau or 0.0)]
    out, ns2, par_sq, delta_sq, g_norm, lc = compiled_or_eager(_gag_rule, o_s, o_d, *params, size_hint=o_s,
                                                              eager=_gag_rule_eager)
    if stats is not None:
        stats.add(o_sparse_norm=ns2.sqrt(), update_norm=lc.abs() * g_norm,
                  capped=(g_norm > tau) if tau is not None else torch.zeros_like(g_norm, dtype=torch.bool),
                  delta_par_sq=par_sq, delta_perp_sq=(delta_sq - par_sq).clamp_min(0))
    return out.movedim(-1, dim).to(out_dtype)


def pladis_combine(o_sparse: torch.Tensor, o_dense: torch.Tensor, *, scale: float) -> torch.Tensor:
    """PLADIS: out = O_d + s·(O_s − O_d)."""
    _check_pair(o_sparse, o_dense)
    scale = check_scale(scale)
    o_s = o_sparse.float() if o_sparse.dtype in HALF_DTYPES else o_sparse
    return torch.lerp(o_dense.to(o_s.dtype), o_s, scale).to(o_sparse.dtype)  # lerp(a, b, s) = a + s(b − a)


def rule_for_stats(method: str, scale: float, beta: float, tau, stats):
    """(method, λ or s, β, τ) to run: PLADIS with statistics is GAG with λ = s − 1, β = 1, no cap (same output)."""
    if method == "pladis" and stats is not None:  # O_d + s(O_s − O_d) = O_s + (s − 1)Δ
        return "gag", scale - 1.0, 1.0, None
    return method, scale, beta, tau


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
