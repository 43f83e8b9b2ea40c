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

import contextlib
import contextvars
import logging
import math
import os
import time
import warnings

import torch

from .validate import ENV_COMPILE, HALF_DTYPES, check_alpha


def _row_max(x: torch.Tensor) -> torch.Tensor:
    """Row max over the last dim with fully masked rows (max = −inf) replaced by 0.  # (..., 1)"""
    m = x.amax(dim=-1, keepdim=True)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _shift(x: torch.Tensor) -> torch.Tensor:
    """x − max(x) per row: τ then lies in [−1, 0], where float32 resolves it finely whatever the logit scale."""
    return x - _row_max(x)


def _sparsemax_michelot(x: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`iters` rounds of Michelot's τ ← (Σ_S x − 1)/|S|, S = {x > τ}, from τ₀ = max − 1; (τ, exact?) per row.

    τ rises monotonically from below and is exact as soon as S stops changing. No data-dependent control
    flow, so torch.compile can fuse it into one pass per row.
    """
    tau = _row_max(x) - 1.0
    for _ in range(iters + 1):
        support = x > tau
        k = support.sum(dim=-1, keepdim=True)
        s = torch.where(support, x, torch.zeros_like(x)).sum(dim=-1, keepdim=True)
        new_tau = torch.where(k > 0, (s - 1.0) / k.clamp_min(1), tau)
        # exact iff no element of S fell below the new τ (ties at τ weigh 0 either way)
        stable = (support & (x >= new_tau)).sum(dim=-1, keepdim=True) == k
        tau = new_tau
    return tau, stable


def _entmax15_newton(x: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`iters` Newton steps on f(τ) = Σ(x − τ)_+² − 1 from τ₀ = max − 1, then the closed-form root on the
    support S = {x > τ}; returns (τ, exact?) per row.

    f is convex and decreasing, so Newton from f(τ₀) ≥ 0 rises monotonically and never passes τ*: S ⊇ S*.
    The closed form k·t² − 2t·Σ(x−τ) + Σ(x−τ)² − 1 = 0 (t = τ' − τ, smaller root) is exact iff S = S*, which
    holds iff every element of S stays strictly above it. No data-dependent control flow (compilable).
    """
    tau = _row_max(x) - 1.0
    for _ in range(iters):
        d = (x - tau).clamp_min(0)
        s1 = d.sum(dim=-1, keepdim=True)
        s2 = (d * d).sum(dim=-1, keepdim=True)
        # s1 = 0 only on a fully masked row: leave its τ alone there.
        tau = torch.where(s1 > 0, tau + (s2 - 1.0) / (2.0 * s1).clamp_min(torch.finfo(x.dtype).tiny), tau)
    d = (x - tau).clamp_min(0)
    support = d > 0
    k = support.sum(dim=-1, keepdim=True).to(x.dtype)
    s1 = d.sum(dim=-1, keepdim=True)
    s2 = (d * d).sum(dim=-1, keepdim=True)
    kc = k.clamp_min(1)
    mean = s1 / kc
    disc = (1.0 - (s2 - s1 * mean)) / kc
    cand = tau + mean - disc.clamp_min(0).sqrt()
    x_min_s = torch.where(support, x, torch.full_like(x, math.inf)).amin(dim=-1, keepdim=True)
    # k = 0 only on a fully masked row (τ₀ < max otherwise): nothing to solve there. Ties at τ weigh 0.
    exact = ((disc >= 0) & (x_min_s >= cand)) | (k == 0)
    return torch.where(exact, cand, tau), exact


def _refine(threshold_fn, x: torch.Tensor, iters: int, max_iters: int) -> torch.Tensor:
    """τ from `threshold_fn(x, iters)`, re-solved with more iterations on the few rows not yet exact."""
    tau, exact = threshold_fn(x, iters)
    while not bool(exact.all()) and iters < max_iters:  # past max_iters τ is converged to rounding
        iters *= 2
        rows = (~exact).reshape(-1).nonzero().squeeze(-1)
        flat_x, flat_tau = x.reshape(-1, x.shape[-1]), tau.reshape(-1, 1).clone()
        sub_tau, sub_exact = threshold_fn(flat_x[rows], iters)
        flat_tau[rows] = sub_tau
        tau = flat_tau.reshape(tau.shape)
        exact = exact.clone().reshape(-1, 1)
        exact[rows] = sub_exact
        exact = exact.reshape(tau.shape)
    return tau


NEWTON_ITERS = 5  # measured: ≥ 99.99 % of rows of random 77-key logits are exact after 5 steps
MICHELOT_ITERS = 4


def _sparsemax_threshold(x: torch.Tensor) -> torch.Tensor:
    """Exact τ of sparsemax over the last dim."""
    return _refine(_sparsemax_michelot, x, MICHELOT_ITERS, 2 * x.shape[-1] + 8)


def _entmax15_threshold(x: torch.Tensor) -> torch.Tensor:
    """Exact τ of 1.5-entmax over the last dim for x = z/2 (Σ(x − τ)_+² = 1)."""
    return _refine(_entmax15_newton, x, NEWTON_ITERS, 4 * x.shape[-1] + 64)


def _entmax_bisect(z: torch.Tensor, alpha: float, n_iter: int = 100, tol: float | None = None) -> torch.Tensor:
    """α-entmax over the last dim by bisection on τ until the bracket is below `tol`, then normalised.

    tol defaults to 1e-6 (1e-12 for float64, so float64 gradients are checkable).
    """
    if tol is None:
        tol = 1e-12 if z.dtype == torch.float64 else 1e-6
    am1 = alpha - 1.0
    x = _shift(z * am1)
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
    bad = torch.isnan(p.sum(dim=-1, keepdim=True))  # NaN rows are the fully masked ones (one cheap reduction)
    return torch.where(bad, torch.zeros((), dtype=p.dtype, device=p.device), p) if bool(bad.any()) else p


def _entmax15_probs(z: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """1.5-entmax p = (z/2 − τ)_+² from `iters` Newton steps + closed form; (p, exact?) per row (compilable)."""
    x = _shift(z * 0.5)
    tau, exact = _entmax15_newton(x, iters)
    d = (x - tau).clamp_min(0)
    return d * d, exact


def _entmax15_probs_eager(z: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`_entmax15_probs` for eager runs: the same steps in two reused buffers (fresh row-sized temporaries cost
    more than the arithmetic on a CPU: measured 2× faster uncompiled; the compiler prefers the pure form)."""
    x = z.mul(0.5)
    x.sub_(_row_max(x))  # (..., M) shifted: max 0
    d = torch.empty_like(x)
    tiny = torch.finfo(x.dtype).tiny
    tau = torch.full_like(x[..., :1], -1.0)  # τ₀ = max − 1
    for _ in range(iters):
        torch.sub(x, tau, out=d).clamp_min_(0)
        s1 = d.sum(dim=-1, keepdim=True)
        s2 = torch.linalg.vecdot(d, d).unsqueeze(-1)
        tau = torch.where(s1 > 0, tau + (s2 - 1.0) / (2.0 * s1).clamp_min(tiny), tau)
    torch.sub(x, tau, out=d).clamp_min_(0)
    k = torch.count_nonzero(d, dim=-1).unsqueeze(-1).to(x.dtype)
    s1 = d.sum(dim=-1, keepdim=True)
    s2 = torch.linalg.vecdot(d, d).unsqueeze(-1)
    kc = k.clamp_min(1)
    mean = s1 / kc
    disc = (1.0 - (s2 - s1 * mean)) / kc
    cand = tau + mean - disc.clamp_min(0).sqrt()
    x_min_s = x.masked_fill_(d <= 0, math.inf).amin(dim=-1, keepdim=True)  # x is not needed after this
    exact = ((disc >= 0) & (x_min_s >= cand)) | (k == 0)
    # p = (x − τ)_+² on the final τ: d holds (x − τ_Newton)_+, shift it by τ_Newton − τ where exact.
    # (≤ 0: Newton stays below τ*, so zeros — masked keys among them — stay exactly 0; k = 0 rows stay 0.)
    shift = torch.where(exact & (k > 0), tau - cand, torch.zeros_like(tau)).clamp_max_(0)
    d.add_(shift).clamp_min_(0)
    return d.mul_(d), exact


def _sparsemax_probs(z: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """sparsemax p = (z − τ)_+ from `iters` Michelot rounds; (p, exact?) per row (compilable)."""
    x = _shift(z)
    tau, exact = _sparsemax_michelot(x, iters)
    return (x - tau).clamp_min(0), exact


_COMPILED: dict = {}
_COMPILE_MIN_NUMEL = 2**20  # calls (or lone tensors) smaller than this never compile
_COMPILE_MIN_CHUNK = 2**16  # nor pieces smaller than this
# What GAG_COMPILE=auto (or unset) means; a host may change it (set_compile_default).
_AUTO = {"compile": True, "min_call_logits": 0}
_CALL_LOGITS = contextvars.ContextVar("gag_call_logits", default=0)  # B·H·N·M of the attention call running
_log = logging.getLogger("gag_core")


def set_compile_default(enabled: bool, *, min_call_logits: int = 0) -> None:
    """What GAG_COMPILE unset / 'auto' means: compile large CPU inputs (True, gag_core's default) or never, and
    with `min_call_logits` only inside attention calls with at least that many logits (B·H·N·M).

    The ComfyUI nodes compile only calls of ≥ 2²⁴ logits (joint and video models), where one sampling step
    repays the compile; UNet-size calls stay eager (docs/method.md, nodes section). GAG_COMPILE=1 / 0 still force it.
    """
    _AUTO["compile"], _AUTO["min_call_logits"] = bool(enabled), int(min_call_logits)


@contextlib.contextmanager
def call_logits(numel: int):
    """Within: the attention call being computed has `numel` logits (its chunks are what gets compiled)."""
    token = _CALL_LOGITS.set(int(numel))
    try:
        yield
    finally:
        _CALL_LOGITS.reset(token)


def _use_compile(z: torch.Tensor) -> bool:
    """GAG_COMPILE=1 always, 0 never; unset / auto: on CPU, for pieces of ≥ 2¹⁶ elements of a call (or a lone
    tensor) of ≥ 2²⁰ elements and at least the host's minimum of logits, unless the host set it off."""
    mode = os.environ.get(ENV_COMPILE, "auto")
    if mode == "0" or _COMPILED.get("broken"):
        return False
    if mode == "1":
        return True
    size = max(z.numel(), _CALL_LOGITS.get())  # the whole call decides, so all its chunks run alike
    return (_AUTO["compile"] and z.device.type == "cpu" and z.numel() >= _COMPILE_MIN_CHUNK
            and size >= max(_COMPILE_MIN_NUMEL, _AUTO["min_call_logits"]))


def compiled_or_eager(fn, *args, size_hint: torch.Tensor, eager=None):
    """fn(*args) through torch.compile when enabled for `size_hint`, else `eager` (default fn) uncompiled;
    eager also if compiling fails (warned once).

    The first compiled call of each function is logged with its duration and how to turn compiling off.
    """
    if _use_compile(size_hint):
        compiled = _COMPILED.get(fn)
        first = compiled is None
        if first:
            compiled = _COMPILED[fn] = torch.compile(fn, dynamic=True)
            if not _COMPILED.get("announced"):
                _COMPILED["announced"] = True
                _log.warning("gag_core: compiling the CPU fast paths with torch.compile (%s=%s); the first call "
                             "takes a while. Set %s=0 to run eagerly.", ENV_COMPILE,
                             os.environ.get(ENV_COMPILE, "auto"), ENV_COMPILE)
        try:
            t0 = time.perf_counter()
            out = compiled(*args)
            if first:
                _log.info("gag_core: torch.compile of %s took %.1f s (cached on disk for later runs; %s=0 "
                          "turns it off).", fn.__name__, time.perf_counter() - t0, ENV_COMPILE)
            return out
        except Exception as exc:  # no C++ compiler, unsupported platform, ...
            _COMPILED["broken"] = True
            warnings.warn(f"gag_core: torch.compile unavailable ({type(exc).__name__}: {exc}); running eagerly")
    return (eager or fn)(*args)


def _fast_probs(fn, z: torch.Tensor, iters: int, eager=None):
    return compiled_or_eager(fn, z, iters, size_hint=z, eager=eager)


def _entmax_forward(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """α-entmax over the last dim of a float32/float64 tensor (no autograd)."""
    if alpha == 1.0:
        return _softmax_masked(z)
    if alpha == 1.5:
        p, exact = _fast_probs(_entmax15_probs, z, NEWTON_ITERS, eager=_entmax15_probs_eager)
        if not bool(exact.all()):
            rows = ~exact.squeeze(-1)
            x = _shift(z[rows] * 0.5)
            p[rows] = (x - _entmax15_threshold(x)).clamp_min(0) ** 2
        return p
    if alpha == 2.0:
        p, exact = _fast_probs(_sparsemax_probs, z, MICHELOT_ITERS)
        if not bool(exact.all()):
            rows = ~exact.squeeze(-1)
            x = _shift(z[rows])
            p[rows] = (x - _sparsemax_threshold(x)).clamp_min(0)
        return p
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
    x = z.float() if z.dtype in HALF_DTYPES else z
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
