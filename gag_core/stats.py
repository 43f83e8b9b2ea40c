"""Running statistics of the GAG update, for the live guidance chart (off unless asked for).

The sums stay on the device of the attention calls that add to them: `add` launches a few reductions and no
host read, so a guided call never waits for the GPU. `summary` (once per sampler step, where the chart's message
is sent) reads them back in one transfer.
"""
from __future__ import annotations

import torch

_FIELDS = ("rel_guidance_sum", "capped", "parallel_energy", "orthogonal_energy")


def sums_dtype(device: torch.device) -> torch.dtype:
    """The sums' dtype: float64 where the device has it (a video step adds ~10⁸ (token, head) terms)."""
    return torch.float32 if device.type == "mps" else torch.float64


class GuidanceStats:
    """Sums over (token, head) of ‖λ·c·G‖/‖O_s‖, capped count, ‖Δ∥‖² and ‖Δ⊥‖²; `calls` counts attention calls."""

    def __init__(self):
        self.tokens = 0  # host ints: from shapes, no device read
        self.calls = 0
        self._sums: torch.Tensor | None = None  # (4,) the _FIELDS sums on the calls' device
        self._host: list[float] | None = None  # the last read-back of _sums (None: not read since the last add)

    @torch.no_grad()
    def add(self, *, o_sparse_norm, update_norm, capped, delta_par_sq, delta_perp_sq) -> None:
        """Accumulate one call's per-(token, head) tensors (any matching shapes), on their device: no host read."""
        eps = torch.finfo(torch.float32).tiny
        rel = update_norm.float() / o_sparse_norm.float().clamp_min(eps)
        part = torch.stack([rel.sum(), capped.sum().float(), delta_par_sq.float().sum(),
                            delta_perp_sq.float().sum()])  # (4,)
        part = part.to(sums_dtype(part.device))
        self._sums = part if self._sums is None or self._sums.device != part.device else self._sums.add_(part)
        self.tokens += rel.numel()
        self.calls += 1
        self._host = None

    def add_sums(self, sums: torch.Tensor, *, tokens: int) -> None:
        """Accumulate one call's (4,) sums (gag_core.kernels.ops returns them from a compiled graph's op)."""
        self._sums = sums if self._sums is None or self._sums.device != sums.device else self._sums + sums
        self.tokens += tokens
        self.calls += 1
        self._host = None

    def _values(self) -> list[float]:
        """The four sums as Python floats: one device read, none when nothing was added since the last one."""
        if self._host is None:
            self._host = [0.0] * len(_FIELDS) if self._sums is None else [float(x) for x in self._sums.tolist()]
        return self._host

    @property
    def rel_guidance_sum(self) -> float:
        return self._values()[0]

    @property
    def capped(self) -> int:
        return int(round(self._values()[1]))

    @property
    def parallel_energy(self) -> float:
        return self._values()[2]

    @property
    def orthogonal_energy(self) -> float:
        return self._values()[3]

    def summary(self) -> dict:
        """Means per (token, head): relative guidance size, capped fraction, parallel share of ‖Δ‖² (one read)."""
        rel, capped, par, perp = self._values()
        n = max(self.tokens, 1)
        energy = par + perp
        return {
            "calls": self.calls,
            "tokens": self.tokens,
            "rel_guidance": rel / n,
            "capped_fraction": capped / n,
            "parallel_energy": par / n,
            "orthogonal_energy": perp / n,
            "parallel_share": par / energy if energy > 0 else 0.0,
        }

    def reset(self) -> None:
        """Zero every sum."""
        self.__init__()
