"""One warning when a whole sampling run guided nothing, saying why (nothing is silently a no-op).

`RunWatch` is an OUTER_SAMPLE wrapper (comfy.patcher_extension.WrappersMP.OUTER_SAMPLE: once around each
sampling run of the patched model). It hands the APPLY_MODEL wrapper (`GuidancePatch`) a fresh `RunTally`;
each model pass reports to it (σ, inside the step window or not, guidance installed or not, calls routed).
When the run ends with zero guided calls, one warning names the reason: no step inside the window, no text
conditioning, blocks that match none of the model's calls, or calls of a layout the routing does not know.
Imports no ComfyUI module.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from .blocks import describe_blocks, matches_any

logger = logging.getLogger("comfyui_gag")

OUTER_SAMPLE = "outer_sample"  # comfy.patcher_extension.WrappersMP.OUTER_SAMPLE


@dataclass
class RunTally:
    """What one sampling run's model passes did."""

    passes: int = 0  # model passes (APPLY_MODEL calls)
    in_window: int = 0  # passes whose σ lay inside the step window
    installed: int = 0  # passes guidance was installed on (inside the window, with text conditioning)
    routed: int = 0  # attention calls sent to guidance
    sigma_max: float = -math.inf
    sigma_min: float = math.inf
    text_len: int = 0  # facts of the last installed pass (for the message)
    image_tokens: int = 0

    def saw_pass(self, sigma, in_window: bool, info) -> None:
        """Record one model pass; `info` is its PassInfo (None: guidance not installed)."""
        self.passes += 1
        if sigma is not None:
            self.sigma_max, self.sigma_min = max(self.sigma_max, sigma), min(self.sigma_min, sigma)
        self.in_window += bool(in_window)
        if info is not None:
            self.installed += 1
            self.text_len, self.image_tokens = int(info.text_len), int(getattr(info, "image_tokens", 0) or 0)


def _g(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else ("inf" if x > 0 else "-inf")


class RunWatch:
    """OUTER_SAMPLE wrapper: count a run's guided calls and warn once when there were none."""

    def __init__(self, patch, start: float, end: float, available=None):
        self.patch = patch  # the GuidancePatch of the same node (it reports to `patch.tally`)
        self.start, self.end = start, end  # the node's step window, in percent of the schedule
        self.available = available  # the model's blocks (blocks.model_blocks), None when unknown

    def __call__(self, executor, *args, **kwargs):
        tally, outer = RunTally(), getattr(self.patch, "tally", None)
        self.patch.tally = tally
        try:
            return executor(*args, **kwargs)
        finally:
            self.patch.tally = outer
            reason = self.reason(tally)
            if reason is not None:
                logger.warning("[GAG] this sampling run was not guided at all (0 guided attention calls in %d model "
                               "passes): %s", tally.passes, reason)

    def reason(self, tally: RunTally) -> str | None:
        """Why `tally`'s run guided nothing, or None when it guided something (or never ran the model)."""
        if tally.passes == 0 or tally.routed > 0:
            return None
        s = self.patch.settings
        if tally.in_window == 0:
            return (f"no step fell inside the step window start_percent {self.start:g} – end_percent {self.end:g} "
                    f"(σ from {_g(s.sigma_start)} down to {_g(s.sigma_end)}); this run's σ went from "
                    f"{_g(tally.sigma_max)} to {_g(tally.sigma_min)}. Widen the window or use more steps.")
        if tally.installed == 0:
            return "no model pass inside the window had text conditioning (c_crossattn) to guide against."
        facts = (f"{s.family.label}, {s.family.rule} layout, text of {tally.text_len} tokens"
                 + (f", {tally.image_tokens} image tokens" if tally.image_tokens else ""))
        if self.available is None:
            return (f"the blocks '{s.selection.describe()}' matched none of the model's attention calls, or the "
                    f"calls do not have the layout the routing expects ({facts}). Check `blocks`; if it is "
                    "right, this variant of the family is not recognised.")
        if not matches_any(s.selection, self.available):
            return (f"the blocks '{s.selection.describe()}' match none of this model's blocks "
                    f"({describe_blocks(self.available)}).")
        return (f"no attention call had the layout the routing expects ({facts}; blocks "
                f"'{s.selection.describe()}' of this model's {describe_blocks(self.available)}): this variant "
                "of the family is not recognised, or its text conditioning is shorter than the routing needs.")
