"""Running statistics of the GAG update, for the live guidance chart (off unless asked for)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GuidanceStats:
    """Sums over (token, head) of ‖λ·c·G‖/‖O_s‖, capped count, ‖Δ∥‖² and ‖Δ⊥‖²; `calls` counts attention calls."""

    tokens: int = 0
    calls: int = 0
    rel_guidance_sum: float = 0.0
    capped: int = 0
    parallel_energy: float = 0.0
    orthogonal_energy: float = 0.0

    @torch.no_grad()
    def add(self, *, o_sparse_norm, update_norm, capped, delta_par_sq, delta_perp_sq) -> None:
        """Accumulate one call's per-(token, head) tensors (any matching shapes)."""
        eps = torch.finfo(torch.float32).tiny
        rel = update_norm.float() / o_sparse_norm.float().clamp_min(eps)
        self.tokens += rel.numel()
        self.calls += 1
        self.rel_guidance_sum += float(rel.sum())
        self.capped += int(capped.sum())
        self.parallel_energy += float(delta_par_sq.float().sum())
        self.orthogonal_energy += float(delta_perp_sq.float().sum())

    def summary(self) -> dict:
        """Means per (token, head): relative guidance size, capped fraction, parallel share of ‖Δ‖²."""
        n = max(self.tokens, 1)
        energy = self.parallel_energy + self.orthogonal_energy
        return {
            "calls": self.calls,
            "tokens": self.tokens,
            "rel_guidance": self.rel_guidance_sum / n,
            "capped_fraction": self.capped / n,
            "parallel_energy": self.parallel_energy / n,
            "orthogonal_energy": self.orthogonal_energy / n,
            "parallel_share": self.parallel_energy / energy if energy > 0 else 0.0,
        }

    def reset(self) -> None:
        """Zero every sum."""
        self.__init__()
