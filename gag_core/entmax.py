"""α-entmax (Peters, Niculae & Martins 2019): p = [(α−1)z − τ]_+^{1/(α−1)} with τ such that Σp = 1.

α = 1 is softmax, α = 2 sparsemax, α = 1.5 the default of PLADIS/GAG. Masked entries (−inf) get exactly 0;
a fully masked row gives all zeros (never NaN). float16/bfloat16 inputs are computed in float32.

Fast paths (sort-free, exact):
- sparsemax: Michelot's fixed point τ ← (Σ_S z − 1)/|S|, S = {z > τ}, rising monotonically from below.
- 1.5-entmax: Newton on f(τ) = Σ(z/2 − τ)_+² − 1 from τ₀ = max − 1 (rises monotonically, never overshoots),
  finished exactly by the closed-form root on the identified support, checked and repeated until exact.
- other α: bisection on τ to 1e-6, then normalised.
`entmax_reference` beside them is the slow, obviously correct sort-based algorithm used by the tests.
"""
from __future__ import annotations

import math

import torch

_HALF = (torch.float16, torch.bfloat16)


def check_alpha(alpha) -> float:
    """Validate α ∈ [1, 2] and return it as a float."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a number in [1, 2], got {alpha!r}") from None
    if not (1.0 <= a <= 2.0):
        raise ValueError(f"alpha must be in [1, 2], got {alpha!r}")
    return a


def _row_max(x: torch.Tensor) -> torch.Tensor:
    """Row max over the last dim with fully masked rows (max = −inf) replaced by 0.  # (..., 1)"""
    m = x.amax(dim=-1, keepdim=True)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _sparsemax_threshold(x: torch.Tensor, max_iter: int | None = None) -> torch.Tensor:
    """τ of sparsemax over the last dim by Michelot's fixed point: τ = (Σ_S x − 1)/|S|, S = {x > τ}."""
    tau = _row_max(x) - 1.0
    n = x.shape[-1]
    for _ in range(max_iter or n):
        support = x > tau
        k = support.sum(dim=-1, keepdim=True)
        s = torch.where(support, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=-1, keepdim=True)
        new_tau = (s - 1.0) / k.clamp_min(1)
        new_tau = torch.where(k > 0, new_tau, tau)
        # Michelot rises monotonically and stops as soon as the support is stable: then τ is exact.
        if torch.equal(x > new_tau, support):
            return new_tau
        tau = new_tau
    return tau


def _entmax15_threshold(x: torch.Tensor, max_iter: int = 50) -> torch.Tensor:
    """τ of 1.5-entmax over the last dim for x = z/2: Σ(x − τ)_+² = 1, by Newton + exact closed form."""
    tau = _row_max(x) - 1.0  # f(τ₀) ≥ 0, so τ₀ ≤ τ*
    done = torch.zeros_like(tau, dtype=torch.bool)
    result = tau.clone()
    for _ in range(max_iter):
        d = (x - tau).clamp_min_(0)  # (..., M)
        support = d > 0
        k = support.sum(dim=-1, keepdim=True).to(x.dtype)
        s1 = d.sum(dim=-1, keepdim=True)
        s2 = (d * d).sum(dim=-1, keepdim=True)
        # Closed form on S: k·t² − 2t·Σ(x−τ) + Σ(x−τ)² − 1 = 0 in t = τ' − τ, smaller root.
        kc = k.clamp_min(1)
        mean = s1 / kc
        disc = (1.0 - (s2 - s1 * mean)) / kc
        cand = tau + mean - disc.clamp_min(0).sqrt()
        # Exact iff every element of S stays strictly above the candidate (then S is the true support).
        x_min_s = torch.where(support, x, x.new_full((), math.inf)).amin(dim=-1, keepdim=True)
        # k = 0 only on a fully masked row (τ₀ < max otherwise): nothing to solve there.
        exact = ((disc >= 0) & (x_min_s > cand)) | (k == 0)
        new = exact & ~done
        result = torch.where(new, cand, result)
        done = done | exact
        if bool(done.all()):
            return result
        # Newton step from below (f convex, decreasing): τ ← τ + f(τ)/(2 Σ(x − τ)_+), stays ≤ τ*.
        tau = torch.where(done, tau, tau + (s2 - 1.0) / (2.0 * s1).clamp_min(torch.finfo(x.dtype).tiny))
    return torch.where(done, result, tau)


def _entmax_bisect(z: torch.Tensor, alpha: float, n_iter: int = 60, tol: float = 1e-6) -> torch.Tensor:
    """α-entmax over the last dim by bisection on τ until the bracket is below `tol`, then normalised."""
    am1 = alpha - 1.0
    x = z * am1
    hi = _row_max(x)
    lo = hi - 1.0  # p_max ≤ 1 ⇒ τ* ≥ max − 1;  τ* < max
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    for _ in range(n_iter):
        mid = (lo + hi) * 0.5
        mass = (x - mid).clamp_min(0).pow(1.0 / am1).sum(dim=-1, keepdim=True)
        too_low = mass >= 1.0
        lo = torch.where(too_low, mid, lo)
        hi = torch.where(too_low, hi, mid)
        if bool(((hi - lo) <= tol).all()):
            break
    p = (x - lo).clamp_min(0).pow(1.0 / am1)
    total = p.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, p / total.clamp_min(torch.finfo(x.dtype).tiny), zero)


def _softmax_masked(z: torch.Tensor) -> torch.Tensor:
    """softmax over the last dim, all zeros on fully masked rows."""
    p = torch.softmax(z, dim=-1)
    return torch.nan_to_num(p, nan=0.0) if not bool(torch.isfinite(p).all()) else p


def _entmax_forward(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """α-entmax over the last dim of a float32/float64 tensor (no autograd)."""
    if alpha == 1.0:
        return _softmax_masked(z)
    if alpha == 2.0:
        tau = _sparsemax_threshold(z)
        return (z - tau).clamp_min(0)
    if alpha == 1.5:
        x = z * 0.5
        tau = _entmax15_threshold(x)
        d = (x - tau).clamp_min_(0)
        return d.mul_(d)
    return _entmax_bisect(z, alpha)


class EntmaxFunction(torch.autograd.Function):
    """Autograd for α-entmax: dz = q⊙dp − q·(⟨q, dp⟩/Σq), q = p^{2−α} on the support (Peters et al. 2019)."""

    @staticmethod
    def forward(ctx, z, alpha):
        p = _entmax_forward(z, alpha)
        ctx.alpha = alpha
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, dp):
        (p,) = ctx.saved_tensors
        alpha = ctx.alpha
        if alpha == 1.0:
            g = p * (dp - (p * dp).sum(dim=-1, keepdim=True))
            return g, None
        q = torch.where(p > 0, p.pow(2.0 - alpha), torch.zeros_like(p))
        qsum = q.sum(dim=-1, keepdim=True)
        coef = (q * dp).sum(dim=-1, keepdim=True) / qsum.clamp_min(torch.finfo(p.dtype).tiny)
        return q * dp - q * coef, None


def entmax(z: torch.Tensor, alpha: float = 1.5, dim: int = -1) -> torch.Tensor:
    """α-entmax(z) along `dim`: argmax_p ⟨p, z⟩ + H^T_α(p) on the simplex; α=1 softmax, α=2 sparsemax."""
    alpha = check_alpha(alpha)
    if not torch.is_floating_point(z):
        raise ValueError(f"entmax needs a floating-point tensor, got dtype {z.dtype}")
    if z.dim() == 0:
        raise ValueError("entmax needs at least one dimension, got a 0-d tensor")
    out_dtype = z.dtype
    x = z.float() if z.dtype in _HALF else z
    x = x.movedim(dim, -1)
    if x.shape[-1] == 0:
        return z.clone()
    if torch.is_grad_enabled() and x.requires_grad:
        p = EntmaxFunction.apply(x, alpha)
    else:
        p = _entmax_forward(x, alpha)
    return p.movedim(-1, dim).to(out_dtype)


def entmax_reference(z: torch.Tensor, alpha: float = 1.5, dim: int = -1) -> torch.Tensor:
    """Slow reference: sort-based exact τ (α ∈ {1.5, 2}), float64 bisection otherwise; masked rows → 0."""
    alpha = check_alpha(alpha)
    x = z.double().movedim(dim, -1)
    finite_row = torch.isfinite(x).any(dim=-1, keepdim=True)
    x = torch.where(finite_row, x, torch.zeros_like(x))  # fully masked row: any τ, zeroed below
    if alpha == 1.0:
        p = torch.softmax(x, dim=-1)
    elif alpha in (1.5, 2.0):
        y = x * 0.5 if alpha == 1.5 else x
        srt, _ = torch.sort(y, dim=-1, descending=True)
        k = torch.arange(1, y.shape[-1] + 1, dtype=y.dtype, device=y.device)
        cs = srt.nan_to_num(neginf=0.0).cumsum(dim=-1)
        if alpha == 2.0:
            taus = (cs - 1.0) / k
        else:
            mean = cs / k
            mean_sq = (srt.nan_to_num(neginf=0.0) ** 2).cumsum(dim=-1) / k
            ss = k * (mean_sq - mean**2)
            taus = mean - ((1.0 - ss) / k).clamp_min(0).sqrt()
        valid = (taus <= srt) & torch.isfinite(srt)
        support = valid.sum(dim=-1, keepdim=True).clamp_min(1)
        tau = taus.gather(-1, support - 1)
        p = (y - tau).clamp_min(0)
        if alpha == 1.5:
            p = p**2
    else:
        p = _entmax_bisect(x, alpha, n_iter=200, tol=1e-12)
    p = torch.where(finite_row, p, torch.zeros_like(p))
    return p.movedim(-1, dim).to(z.dtype)
