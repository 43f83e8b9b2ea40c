"""The guided attention call as two torch.library custom ops, so a torch.compile'd model keeps it in its graph.

Inside a compiled region (TorchCompileModel), gag_core calls `guided_cross` / `guided_joint` instead of its
Python dispatch: the compiler sees one opaque op with a fake implementation (output shapes only), and the op's
body runs eagerly at run time: the fused Triton kernel after its self-check, or the PyTorch path, exactly as
an eager call. The host's dense attention runs outside the op, in the graph; its output comes in as a tensor.
The chart's statistics come back as the call's (4,) device sums (GuidanceStats order), added outside.
Outputs are contiguous (B, H, N, Dv), as the fake implementations say (inductor lays out the graph from them):
the kernel writes q's layout, so a compiled call may copy once more than an eager one. Needs torch ≥ 2.4
(torch.library.custom_op); older torch compiles the Python dispatch instead.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..stats import sums_dtype

NAMESPACE = "comfyui_gag"


def _call_sums(stats, device) -> torch.Tensor:
    """The (4,) sums a GuidanceStats gathered in the op's body (zeros when none)."""
    if stats is not None and stats._sums is not None:
        return stats._sums.to(device)
    return torch.zeros(4, dtype=sums_dtype(device), device=device)


@torch.library.custom_op(f"{NAMESPACE}::guided_cross", mutates_args=())
def guided_cross(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o_dense: Optional[torch.Tensor],
                 mask: Optional[torch.Tensor], method: str, scale: float, beta: float, tau: float, alpha: float,
                 softmax_scale: float, with_stats: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, sums): gag_attention's guided part on validated inputs (k, v at q's heads, mask 4-D or None);
    tau ≤ 0 means no cap."""
    from .. import attention
    from ..stats import GuidanceStats

    stats = GuidanceStats() if with_stats else None
    out = attention._cross_guided(q, k, v, mask, o_dense, method, scale, beta, tau if tau > 0 else None, alpha,
                                  softmax_scale, stats, None)
    return out.contiguous(), _call_sums(stats, q.device)  # the fake's layout: the compiler trusts it


@guided_cross.register_fake
def _(q, k, v, o_dense, mask, method, scale, beta, tau, alpha, softmax_scale, with_stats):
    b, h, n, _ = q.shape
    return q.new_empty((b, h, n, v.shape[3])), q.new_empty((4,), dtype=sums_dtype(q.device))


@torch.library.custom_op(f"{NAMESPACE}::guided_joint", mutates_args=())
def guided_joint(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o_dense: torch.Tensor,
                 lse: Optional[torch.Tensor], mass: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                 text_start: int, text_stop: int, segments: list[int], method: str, scale: float, beta: float,
                 tau: float, alpha: float, softmax_scale: float,
                 with_stats: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, sums): joint_gag_attention's guided part (segments flattened as [a0, c0, a1, c1, …]); o_dense is
    not written."""
    from .. import attention
    from ..stats import GuidanceStats

    stats = GuidanceStats() if with_stats else None
    segs = [(segments[i], segments[i + 1]) for i in range(0, len(segments), 2)]
    out = attention._joint_guided(q, k, v, mask, o_dense, lse, (text_start, text_stop), segs, method, scale, beta,
                                  tau if tau > 0 else None, alpha, softmax_scale, stats, None, mass, in_place=False)
    return out.contiguous(), _call_sums(stats, q.device)  # the fake's layout: the compiler trusts it


@guided_joint.register_fake
def _(q, k, v, o_dense, lse, mass, mask, text_start, text_stop, segments, method, scale, beta, tau, alpha,
      softmax_scale, with_stats):
    b, h, n, _ = q.shape
    return q.new_empty((b, h, n, v.shape[3])), q.new_empty((4,), dtype=sums_dtype(q.device))
