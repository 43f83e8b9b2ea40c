"""Which cross-attention calls are guided, and how: every guided call goes through gag_core's entry points."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

import gag_core
from gag_core import GuidanceStats

from .model import dense_attention

METHODS = ("baseline", "pladis", "gag", "sparse")
PASSES = ("both", "cond")
TAU_MODES = ("abs", "rel")


@dataclass(frozen=True)
class Guidance:
    """One guidance setting of the sweep; `label` names it in tables and grids.

    method: baseline (dense attention), pladis (out = O_d + s·(O_s − O_d)), gag (out = O_s + λ·c·G) or sparse
    (out = O_s, i.e. PLADIS with s = 1). tau_mode "abs" caps ‖G‖ at τ; "rel" caps it at τ·‖O_s‖ per token and head.
    passes: guide both CFG passes or only the conditional one. window: [start, end) as fractions of the sampling
    steps. layers: indices of the guided cross-attention layers (None = all).
    """

    method: str = "baseline"
    scale: float = 0.0  # λ for gag, s for pladis
    beta: float = 0.0
    tau: float | None = 15.0
    tau_mode: str = "abs"
    alpha: float = 1.5
    passes: str = "both"
    window: tuple[float, float] = (0.0, 1.0)
    layers: frozenset[int] | None = None
    layers_name: str = "all"
    stats: GuidanceStats | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.passes not in PASSES:
            raise ValueError(f"passes must be one of {PASSES}, got {self.passes!r}")
        if self.tau_mode not in TAU_MODES:
            raise ValueError(f"tau_mode must be one of {TAU_MODES}, got {self.tau_mode!r}")
        a, b = self.window
        if not (0.0 <= a < b <= 1.0):
            raise ValueError(f"window must satisfy 0 <= start < end <= 1, got {self.window!r}")

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. 'GAG λ=5 β=0 τ=15' plus any non-default options."""
        if self.method == "baseline":
            return "baseline"
        if self.method == "sparse":
            head = f"sparse α={self.alpha:g}"
        elif self.method == "pladis":
            head = f"PLADIS s={self.scale:g}"
        else:
            cap = "off" if not self.tau else (f"{self.tau:g}·‖Os‖" if self.tau_mode == "rel" else f"{self.tau:g}")
            head = f"GAG λ={self.scale:g} β={self.beta:g} τ={cap}"
        extra = []
        if self.method != "sparse" and self.alpha != 1.5:
            extra.append(f"α={self.alpha:g}")
        if self.passes != "both":
            extra.append("cond-only")
        if self.window != (0.0, 1.0):
            extra.append(f"steps {self.window[0]:g}-{self.window[1]:g}")
        if self.layers is not None:
            extra.append(f"layers {self.layers_name}")
        return " ".join([head, *extra])

    def active(self, step: int, steps: int) -> bool:
        """Is sampling step `step` of `steps` inside the guidance window?"""
        if self.method == "baseline":
            return False
        frac = step / steps
        return self.window[0] <= frac < self.window[1]

    def attention(self, cond_rows: slice | None = None):
        """The model's attention function: guided for the chosen layers (and rows), dense elsewhere.

        cond_rows: the rows of the batch that are conditional passes (None: all rows are).
        """

        def attend(index: int, q, k, v, mask):
            if self.layers is not None and index not in self.layers:
                return dense_attention(index, q, k, v, mask)
            if self.passes == "cond" and cond_rows is not None:
                out = dense_attention(index, q, k, v, mask)  # (B, H, N, D)
                m = mask[cond_rows] if mask is not None and mask.shape[0] > 1 else mask
                out[cond_rows] = self._guided(q[cond_rows], k[cond_rows], v[cond_rows], m)
                return out
            return self._guided(q, k, v, mask)

        return attend

    def _guided(self, q, k, v, mask):
        """One guided cross-attention call through gag_core."""
        if self.method == "sparse":
            return gag_core.gag_attention(q, k, v, method="pladis", scale=1.0, alpha=self.alpha, mask=mask)
        if self.method == "pladis":
            return gag_core.gag_attention(q, k, v, method="pladis", scale=self.scale, alpha=self.alpha, mask=mask)
        if self.tau_mode == "abs" or not self.tau:
            return gag_core.gag_attention(q, k, v, method="gag", scale=self.scale, beta=self.beta, tau=self.tau,
                                          alpha=self.alpha, mask=mask, stats=self.stats)
        return relative_cap_gag(q, k, v, scale=self.scale, beta=self.beta, tau=self.tau, alpha=self.alpha,
                                mask=mask, stats=self.stats)


def relative_cap_gag(q, k, v, *, scale: float, beta: float, tau: float, alpha: float, mask=None, stats=None):
    """GAG with the cap c = min(1, τ·‖O_s‖/‖G‖) per token and head, from gag_core's own pieces.

    The GAG rule is positively homogeneous in (O_s, O_d), so rule(O_s, O_d; τ‖O_s‖) = n·rule(O_s/n, O_d/n; τ)
    with n = ‖O_s‖: normalise, apply gag_core.gag_combine with the absolute cap τ, scale back.
    """
    o_s, o_d = gag_core.sparse_dense_attention(q, k, v, alpha=alpha, mask=mask)  # (B, H, N, D) each
    n = o_s.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(o_s.dtype).tiny)  # (B, H, N, 1)
    return n * gag_core.gag_combine(o_s / n, o_d / n, scale=scale, beta=beta, tau=tau, stats=stats)
