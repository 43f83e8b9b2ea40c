"""Which attention calls are guided, and how: every guided call goes through gag_core's entry points.

Cross-attention (the UNet) calls gag_core.gag_attention; joint attention over [text, image] (the MMDiT) calls
gag_core.joint_gag_attention with the text key span, except the one ablation kept here, `gag_row`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

import gag_core
from gag_core import GuidanceStats

from .model import dense_attention

METHODS = ("baseline", "pladis", "gag", "sparse", "gag_row")
PASSES = ("both", "cond")
TAU_MODES = ("abs", "rel")


@dataclass(frozen=True)
class Guidance:
    """One guidance setting of the sweep; `label` names it in tables and grids.

    method: baseline (dense attention), pladis (out = O_d + s·(O_s − O_d)), gag (out = O_s + λ·c·G), sparse
    (out = O_s, i.e. PLADIS with s = 1) or, for joint attention only, gag_row (the ablation: GAG projected on
    the whole joint row, `row_projected_joint_gag`). tau_mode "abs" caps ‖G‖ at τ; "rel" caps it at τ·‖O_s‖
    per token and head (cross-attention only).
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
        if self.tau_mode == "rel" and self.method == "gag_row":
            raise ValueError("tau_mode 'rel' is not available for the gag_row ablation")
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
            name = "GAG whole-row" if self.method == "gag_row" else "GAG"
            head = f"{name} λ={self.scale:g} β={self.beta:g} τ={cap}"
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

        cond_rows: the rows of the batch that are conditional passes (None: all rows are). The model passes
        text_range = (start, stop) of the text keys for joint attention, nothing for cross-attention.
        """

        def attend(index: int, q, k, v, mask, text_range=None):
            if self.layers is not None and index not in self.layers:
                return dense_attention(index, q, k, v, mask)
            if self.passes == "cond" and cond_rows is not None:
                out = dense_attention(index, q, k, v, mask)  # (B, H, N, D)
                m = mask[cond_rows] if mask is not None and mask.shape[0] > 1 else mask
                out[cond_rows] = self._guided(q[cond_rows], k[cond_rows], v[cond_rows], m, text_range)
                return out
            return self._guided(q, k, v, mask, text_range)

        return attend

    def _guided(self, q, k, v, mask, text_range=None):
        """One guided attention call: cross-attention (text_range None) or joint attention over [text, image]."""
        if text_range is not None:
            return self._guided_joint(q, k, v, mask, text_range)
        if self.method == "gag_row":
            raise ValueError("gag_row (GAG projected on the whole joint row) needs joint attention, not a UNet")
        if self.method == "sparse":
            return gag_core.gag_attention(q, k, v, method="pladis", scale=1.0, alpha=self.alpha, mask=mask)
        if self.method == "pladis":
            return gag_core.gag_attention(q, k, v, method="pladis", scale=self.scale, alpha=self.alpha, mask=mask)
        if self.tau_mode == "abs" or not self.tau:
            return gag_core.gag_attention(q, k, v, method="gag", scale=self.scale, beta=self.beta, tau=self.tau,
                                          alpha=self.alpha, mask=mask, stats=self.stats)
        return relative_cap_gag(q, k, v, scale=self.scale, beta=self.beta, tau=self.tau, alpha=self.alpha,
                                mask=mask, stats=self.stats)


    def _guided_joint(self, q, k, v, mask, text_range):
        """One guided joint-attention call through gag_core.joint_gag_attention (gag_row: the demo's ablation)."""
        if self.tau_mode == "rel" and self.tau and self.method == "gag":
            raise ValueError("tau_mode 'rel' is implemented for cross-attention only (the UNet)")
        common = dict(text_range=text_range, alpha=self.alpha, mask=mask)
        if self.method == "sparse":
            return gag_core.joint_gag_attention(q, k, v, method="pladis", scale=1.0, **common)
        if self.method == "pladis":
            return gag_core.joint_gag_attention(q, k, v, method="pladis", scale=self.scale, **common)
        if self.method == "gag_row":
            return row_projected_joint_gag(q, k, v, scale=self.scale, beta=self.beta, tau=self.tau, stats=self.stats,
                                           **common)
        return gag_core.joint_gag_attention(q, k, v, method="gag", scale=self.scale, beta=self.beta, tau=self.tau,
                                            stats=self.stats, **common)


def row_projected_joint_gag(q, k, v, *, text_range: tuple[int, int], scale: float, beta: float, tau: float | None,
                            alpha: float, mask=None, stats=None) -> torch.Tensor:
    """Ablation, the joint rule before gag_core's text-retrieval rule: GAG on (O_s, O_d) of the whole joint row.

    O_d = softmax(z)·v over all keys, m = the row's dense mass on the text keys, O_s = O_d + m·(entmax −
    softmax)(z_t)·v_t with both distributions over the text keys alone, then out = gag_combine(O_s, O_d): Δ is
    projected on the whole row O_s (mostly image self-attention content). Text query rows stay dense.
    q, k, v (B, H, L, D); mask bool (True = attend) broadcastable to (B, H, L, L).
    """
    s, e = text_range
    z = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, L, L)
    if mask is not None:
        z = z.masked_fill(~mask, -math.inf)
    lse = torch.logsumexp(z, dim=-1, keepdim=True)  # (B, H, L, 1)
    o_d = torch.softmax(z, dim=-1) @ v.float()  # (B, H, L, D)
    z_t = z[..., s:e]  # (B, H, L, M_text)
    mass = torch.exp(torch.logsumexp(z_t, dim=-1, keepdim=True) - lse).nan_to_num(0.0).clamp(max=1.0)
    p_diff = gag_core.entmax(z_t, alpha) - gag_core.entmax(z_t, 1.0)  # (B, H, L, M_text)
    o_s = o_d + mass * (p_diff @ v[:, :, s:e].float())
    img = torch.ones(q.shape[2], dtype=torch.bool, device=q.device)
    img[s:e] = False  # text query rows keep the dense output
    out = o_d.clone()
    out[:, :, img] = gag_core.gag_combine(o_s[:, :, img], o_d[:, :, img], scale=scale, beta=beta, tau=tau, stats=stats)
    return out.to(q.dtype)


def relative_cap_gag(q, k, v, *, scale: float, beta: float, tau: float, alpha: float, mask=None, stats=None):
    """GAG with the cap c = min(1, τ·‖O_s‖/‖G‖) per token and head, from gag_core's own pieces.

    The GAG rule is positively homogeneous in (O_s, O_d), so rule(O_s, O_d; τ‖O_s‖) = n·rule(O_s/n, O_d/n; τ)
    with n = ‖O_s‖: normalise, apply gag_core.gag_combine with the absolute cap τ, scale back.
    """
    o_s, o_d = gag_core.sparse_dense_attention(q, k, v, alpha=alpha, mask=mask)  # (B, H, N, D) each
    n = o_s.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(o_s.dtype).tiny)  # (B, H, N, 1)
    return n * gag_core.gag_combine(o_s / n, o_d / n, scale=scale, beta=beta, tau=tau, stats=stats)
