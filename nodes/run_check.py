"""One warning when a sampling run guided nothing, or only part of what was selected, saying why.

`RunWatch` is an OUTER_SAMPLE wrapper (comfy.patcher_extension.WrappersMP.OUTER_SAMPLE: once around each
sampling run of the patched model). It hands the APPLY_MODEL wrapper (`GuidancePatch`) a fresh `RunTally` and
says whether the run's model is compiled; each model pass reports to it (σ, inside the step window or not,
guidance installed or not, calls routed, other nodes' attn2 replacements met). When the run ends with zero
guided calls, one warning names the reason: no step inside the window, no text conditioning, attention replaced
by another node (which blocks), the model compiled, blocks that match none of the model's calls, or calls of a
layout the routing does not know; blocks left to another node's sparse guidance are named even when the rest
was guided. The warning goes to the log and, once per run, to the browser (`notify`: the pack's websocket
channel, event NOTICE_EVENT; web/gag.js shows it as a toast). A run that ends by interrupt or error reports
nothing and drops its unsent chart statistics, so the next run starts clean. Imports no ComfyUI module.
"""
from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field

from . import telemetry
from .blocks import describe_blocks, matches_any

logger = logging.getLogger("comfyui_gag")

OUTER_SAMPLE = "outer_sample"  # comfy.patcher_extension.WrappersMP.OUTER_SAMPLE
NOTICE_EVENT = "comfyui_gag.notice"  # websocket message {"node", "prompt_id", "level", "message"} (web/gag.js)
TORCH_COMPILE_KWARGS = "torch_compile_kwargs"  # model_options key of comfy_api.torch_helpers' compile wrapper


def _server():
    """ComfyUI's running PromptServer, or None (tests, scripts: no browser to tell)."""
    return getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)


def notify(message: str, node_key=None, level: str = "warning") -> bool:
    """Send `message` to the page that queued the running prompt (all pages when unknown) as NOTICE_EVENT."""
    sender = telemetry.TELEMETRY.sender  # the server's send_sync once web_routes registered it
    if sender is None:
        return False
    server = _server()
    client = getattr(server, "client_id", None) if server is not None else None
    try:
        sender(NOTICE_EVENT, {"node": None if node_key is None else str(node_key),
                              "prompt_id": telemetry.TELEMETRY.current_prompt_id(),
                              "level": level, "message": message}, client)
        return True
    except Exception as e:  # the notice must never break a run
        logger.info("[GAG] notice not sent to the browser (%s: %s)", type(e).__name__, e)
        return False


def compile_note(model_options, base_model=None) -> str | None:
    """How a sampling run's model is compiled ("TorchCompileModel (inductor)", "torch.compile"), or None."""
    options = model_options if isinstance(model_options, dict) else {}
    kwargs = options.get(TORCH_COMPILE_KWARGS)
    if isinstance(kwargs, dict):
        return f"TorchCompileModel ({kwargs.get('backend', '?')})"
    wrappers = options.get("wrappers", {})
    keys = wrappers.get("apply_model", {}) if isinstance(wrappers, dict) else {}
    if isinstance(keys, dict) and any("compile" in str(k).lower() for k in keys):
        return "a torch.compile wrapper"
    net = getattr(base_model, "diffusion_model", None)
    if net is not None and type(net).__name__ == "OptimizedModule":
        return "torch.compile"
    return None


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
    replaced: dict = field(default_factory=dict)  # block -> (other node's attn2 function, guided?, own guidance?)

    def saw_replacements(self, seen: dict) -> None:
        """Record one pass's attn2 replacements of other nodes ({block: (name, guided, own guidance)})."""
        for block, entry in seen.items():
            if entry[1] or block not in self.replaced:
                self.replaced[block] = entry

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


def _blocks(blocks) -> str:
    return ", ".join(f"{g} {i}" for g, i in sorted(blocks, key=str))


class RunWatch:
    """OUTER_SAMPLE wrapper: count a run's guided calls and warn once when there were none (or some were left)."""

    def __init__(self, patch, start: float, end: float, available=None):
        self.patch = patch  # the GuidancePatch of the same node (it reports to `patch.tally`)
        self.start, self.end = start, end  # the node's step window, in percent of the schedule
        self.available = available  # the model's blocks (blocks.model_blocks), None when unknown

    def __call__(self, executor, *args, **kwargs):
        tally, outer = RunTally(), getattr(self.patch, "tally", None)
        outer_compiled = getattr(self.patch, "compiled", None)
        guider = getattr(executor, "class_obj", None)
        patcher = getattr(guider, "model_patcher", None)
        options = getattr(guider, "model_options", None) or getattr(patcher, "model_options", None)
        self.patch.tally = tally
        self.patch.compiled = compile_note(options, getattr(patcher, "model", None))
        node_key = getattr(getattr(self.patch, "settings", None), "node_key", None)
        telemetry.TELEMETRY.drop_step(node_key)  # a step cut off before this run never reaches its chart
        finished = False
        try:
            out = executor(*args, **kwargs)
            finished = True
            return out
        finally:
            compiled = self.patch.compiled
            self.patch.tally, self.patch.compiled = outer, outer_compiled
            if not finished:
                telemetry.TELEMETRY.drop_step(node_key)  # cut off: no statistics, no verdict
            else:
                self.report(tally, compiled, node_key)

    def report(self, tally: RunTally, compiled=None, node_key=None) -> str | None:
        """Log (and send to the browser) what a finished run did not guide; returns the message."""
        reason = self.reason(tally, compiled)
        if reason is not None:
            message = (f"[GAG] this sampling run was not guided at all (0 guided attention calls in {tally.passes} "
                       f"model passes): {reason}")
        else:
            message = self.partial(tally)
        if message is None:
            return None
        logger.warning(message)
        notify(message, node_key)
        return message

    @staticmethod
    def partial(tally: RunTally) -> str | None:
        """Blocks left to another node's own sparse guidance in a run that guided the rest, else None."""
        own = {b: e[0] for b, e in tally.replaced.items() if e[2]}
        if not own or tally.routed == 0:
            return None
        names = ", ".join(sorted(set(own.values())))
        return (f"[GAG] cross-attention of blocks {_blocks(own)} is replaced by {names}, itself a sparse-attention "
                "guidance (PLADIS): GAG leaves those blocks to it and guides the others. Remove one of the two "
                "nodes to guide every block once.")

    def reason(self, tally: RunTally, compiled=None) -> str | None:
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
        if tally.replaced:
            own = {b for b, e in tally.replaced.items() if e[2]}
            names = ", ".join(sorted({e[0] for e in tally.replaced.values()}))
            if own:
                return (f"the cross-attention of blocks {_blocks(tally.replaced)} is replaced by another node "
                        f"({names}), itself a sparse-attention guidance (PLADIS): GAG does not guide it twice. "
                        "Remove one of the two nodes.")
            return (f"the cross-attention of blocks {_blocks(tally.replaced)} is replaced by another node ({names}) "
                    "and guidance on top of it failed (see the earlier warning), or the selected blocks are "
                    "others.")
        if compiled:
            return (f"the model is compiled ({compiled}) and its compiled graphs ran no guided attention call. "
                    "Put the compile node after GAG, or clear the compile cache (restart), and report it.")
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
