"""The nodes' inputs checked at the boundary, whatever sent them (the front end's widget limits, the API, a script).

Every check raises ValueError naming the input and quoting the value, cut to a readable length.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from ..gag_core.validate import METHODS, check_method, quote  # noqa: F401  (METHODS: re-exported for the nodes)


def check_number(value, name: str, lo: float | None = None, hi: float | None = None, *,
                 allow_inf: bool = False) -> float:
    """A real number (not a string or a bool) in [lo, hi]; NaN and (unless `allow_inf`) ±inf refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {quote(value)} ({type(value).__name__})")
    x = float(value)
    if math.isnan(x) or (math.isinf(x) and not allow_inf):
        raise ValueError(f"{name} must be a finite number, got {quote(value)}")
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        bound = f">= {lo:g}" if hi is None else f"in [{lo:g}, {hi:g}]"
        raise ValueError(f"{name} must be {bound}, got {quote(value)}")
    return x


def check_tau(tau) -> float | None:
    """τ ≥ 0 as the cap of GAG; None, 0 and inf mean no cap (returned as None)."""
    if tau is None:
        return None
    t = check_number(tau, "tau (norm cap τ)", 0.0, allow_inf=True)
    return None if t == 0 or math.isinf(t) else t


def check_window(start_percent, end_percent) -> tuple[float, float]:
    """0 ≤ start_percent < end_percent ≤ 1: an empty window would guide nothing, so it is refused."""
    s = check_number(start_percent, "start_percent", 0.0, 1.0)
    e = check_number(end_percent, "end_percent", 0.0, 1.0)
    if s > e:
        raise ValueError(f"start_percent {quote(start_percent)} must not exceed end_percent {quote(end_percent)}")
    if s == e:
        raise ValueError(f"start_percent and end_percent are both {quote(start_percent)}: the step window is empty "
                         "and nothing would be guided; set end_percent above start_percent (or bypass the node)")
    return s, e


@dataclass(frozen=True)
class NodeInputs:
    """The validated rule and window: method, λ or s, β, τ (None = no cap), α, start and end percent."""

    method: str
    scale: float
    beta: float
    tau: float | None
    alpha: float
    start: float
    end: float


def check_inputs(method, scale, beta, tau, alpha, start_percent, end_percent) -> NodeInputs:
    """Every numeric input of the nodes: λ (or s) ≥ 0, β ∈ [0, 1], τ ≥ 0, α ∈ [1, 2], 0 ≤ start < end ≤ 1."""
    method = check_method(method)
    name = "scale (λ)" if method == "gag" else "scale (s)"
    start, end = check_window(start_percent, end_percent)
    return NodeInputs(method, check_number(scale, name, 0.0), check_number(beta, "beta (β)", 0.0, 1.0),
                      check_tau(tau), check_number(alpha, "alpha (α)", 1.0, 2.0), start, end)
