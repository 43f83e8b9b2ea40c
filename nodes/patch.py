"""Patching a ComfyUI model with GAG / PLADIS through its official hooks, on a clone.

`apply_guidance` clones the ModelPatcher and adds one APPLY_MODEL wrapper (key "comfyui_gag"; a later GAG or
PLADIS node on the same model replaces an earlier one). For each model pass inside the start/end window the
wrapper records the text length and latent size (`PassInfo`) and hands the model a shallow copy of
transformer_options whose `optimized_attention_override` is a `GuidedAttention`. ComfyUI calls that for every
attention; calls that `routing.route_call` does not select go straight on, the others get GAG or PLADIS with
the dense output from the kernel ComfyUI chose. An OUTER_SAMPLE wrapper (`run_check.RunWatch`, same key) counts
the guided calls of each sampling run and logs one warning, with the reason, when a run guided none. Inputs are
checked first (`inputs.check_inputs`, `blocks.parse_blocks` against the model's own blocks).

Chaining: an override that was already in transformer_options (NAG, SageAttention patches, ...) is kept and
called in place of the raw kernel, for unguided calls and for the dense output of guided ones: GAG is the
outer layer and works on what the other override returns. Nothing in model_options is changed, so the
caller's model, and a bypassed node, give the baseline exactly. Imports no ComfyUI module.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import torch

from ..gag_core.attention import gag_attention, joint_gag_attention
from ..gag_core.presets import get_preset
from . import telemetry
from .attention_call import AttentionCall, bind_attention_call, mask_to_4d, output_from_bhld, output_to_bhld
from .blocks import BlockSelection, describe_blocks, matches_any, model_blocks, parse_blocks
from .families import Family, describe_model, detect_family, supported_labels
from .inputs import METHODS, check_inputs
from .routing import PassInfo, Route, image_token_count, in_window, route_call
from .run_check import OUTER_SAMPLE, RunWatch

logger = logging.getLogger("comfyui_gag")

APPLY_MODEL = "apply_model"  # comfy.patcher_extension.WrappersMP.APPLY_MODEL
WRAPPER_KEY = "comfyui_gag"
# Set COMFYUI_GAG_STRICT=1 (the tests do) to raise errors inside guided attention instead of falling back.
STRICT = os.environ.get("COMFYUI_GAG_STRICT") == "1"

_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Log `message` as a warning the first time `key` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)


@dataclass(frozen=True)
class GuidanceSettings:
    """Everything a patched model needs: the rule (method, λ or s, β, τ, α), where and when it applies."""

    family: Family
    method: str
    scale: float
    beta: float
    tau: float | None
    alpha: float
    selection: BlockSelection
    sigma_start: float
    sigma_end: float
    node_key: str | None = None


class GuidedAttention:
    """The optimized_attention_override of one model pass: guide the routed calls, pass the others on."""

    def __init__(self, settings: GuidanceSettings, info: PassInfo, previous=None):
        self.settings = settings
        self.info = info
        self.previous = previous  # an override that was already there; it is called instead of the kernel

    def call_next(self, func, args, kwargs):
        """What ComfyUI would have run without us: the previous override, or the kernel itself."""
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def __call__(self, func, *args, **kwargs):
        call = bind_attention_call(args, kwargs)
        route = None
        if call is not None:
            route = route_call(self.info, call.q_len, call.k_len, call.transformer_options, self.settings.selection)
        if route is None:
            return self.call_next(func, args, kwargs)
        try:
            return self.guided(func, call, route)
        except Exception as e:  # never break a run: fall back to the dense attention
            if STRICT:
                raise
            warn_once(f"guided-error:{type(e).__name__}",
                      f"[GAG] guided attention failed ({type(e).__name__}: {e}); this call runs unguided.")
            return self.call_next(func, args, kwargs)

    def guided(self, func, call: AttentionCall, route: Route) -> torch.Tensor:
        """GAG / PLADIS on one call; the dense output is the one ComfyUI's own call would have returned."""
        s = self.settings
        heads = call.heads
        q, k, v = call.q_bhld(), call.k_bhld(), call.v_bhld()  # (B, H, N, D), (B, H_kv, M, D), (B, H_kv, M, Dv)

        dense_out = []

        def dense(_q, _k, _v, _mask):
            dense_out.append(output_to_bhld(self.call_next(func, call.args, call.kwargs), heads,
                                            call.skip_output_reshape))  # (B, H, N, D)
            return dense_out[-1]

        options = dict(method=s.method, scale=s.scale, beta=s.beta, tau=s.tau, alpha=s.alpha,
                       mask=mask_to_4d(call.mask), dense=dense,
                       stats=telemetry.stats_for(s.node_key, call.transformer_options), **call.gag_options())
        if route.kind == "cross":
            out = gag_attention(q, k, v, **options)
        else:
            out = joint_gag_attention(q, k, v, text_range=route.text_range, **options)
            if route.guided_stop is not None and route.guided_stop < out.shape[2]:
                out[:, :, route.guided_stop:] = dense_out[-1][:, :, route.guided_stop:]  # reference rows: dense
        return output_from_bhld(out, call.skip_output_reshape)


def _with_cross_markers(patches: dict | None, info: PassInfo) -> dict:
    """A copy of transformer_options["patches"] with an attn2 patch pair that flags the calls inside attn2."""

    def mark_attn2(n, context, value, extra_options):
        info.in_cross = True
        return n, context, value

    def unmark_attn2(n, extra_options):
        info.in_cross = False
        return n

    out = dict(patches or {})
    out["attn2_patch"] = list(out.get("attn2_patch", [])) + [mark_attn2]
    out["attn2_output_patch"] = list(out.get("attn2_output_patch", [])) + [unmark_attn2]
    return out


def _sigma_of(t) -> float | None:
    if isinstance(t, torch.Tensor):
        return float(t.detach().float().max()) if t.numel() else None
    try:
        return float(t)
    except (TypeError, ValueError):
        return None


class GuidancePatch:
    """The APPLY_MODEL wrapper: per pass, decide if guidance is active and install `GuidedAttention`."""

    def __init__(self, settings: GuidanceSettings):
        self.settings = settings
        self.tally = None  # the running sampling run's RunTally, set by RunWatch (nodes/run_check.py)

    def pass_info(self, x, t, c_crossattn, base_model) -> PassInfo | None:
        """The PassInfo of this pass, or None when it runs unguided (outside the window, no text)."""
        s = self.settings
        sigma = _sigma_of(t)
        if sigma is None or not in_window(sigma, s.sigma_start, s.sigma_end):
            return None
        if not isinstance(c_crossattn, torch.Tensor) or c_crossattn.ndim != 3 or c_crossattn.shape[1] == 0:
            return None
        text_len = int(c_crossattn.shape[1])
        family = s.family
        if family.rule == "unet":
            return PassInfo("unet", text_len)
        net = getattr(base_model, "diffusion_model", None)
        text_len += int(getattr(net, "register_length", 0) or 0)  # SD3 register tokens precede the context
        tokens = image_token_count(x.shape, getattr(net, "patch_size", 1)) if isinstance(x, torch.Tensor) else 0
        return PassInfo(family.rule, text_len, tokens, block_ids=family.block_ids, text_order=family.text_order)

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        transformer_options = {} if transformer_options is None else transformer_options
        info = self.pass_info(x, t, c_crossattn, getattr(executor, "class_obj", None))
        tally = self.tally
        if tally is not None:
            sigma = _sigma_of(t)
            tally.saw_pass(sigma, sigma is not None and in_window(sigma, self.settings.sigma_start,
                                                                  self.settings.sigma_end), info)
        if info is None:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        options = dict(transformer_options)
        options["optimized_attention_override"] = GuidedAttention(
            self.settings, info, transformer_options.get("optimized_attention_override"))
        if info.kind == "unet":
            options["patches"] = _with_cross_markers(transformer_options.get("patches"), info)
        out = executor(x, t, c_concat, c_crossattn, control, options, **kwargs)
        if tally is not None:
            tally.routed += getattr(info, "routed", 0)
        return out


def apply_guidance(model, *, method: str, scale: float, beta: float = 0.0, tau=15.0, alpha: float = 1.5,
                   start_percent: float = 0.0, end_percent: float = 1.0, blocks: str = "auto",
                   node_key: str | None = None):
    """A clone of ModelPatcher `model` that runs GAG / PLADIS; an unsupported model comes back unchanged."""
    checked = check_inputs(method, scale, beta, tau, alpha, start_percent, end_percent)  # before any family
    method, scale, beta, tau, alpha = checked.method, checked.scale, checked.beta, checked.tau, checked.alpha
    start, end = checked.start, checked.end
    family = detect_family(getattr(model, "model", None))
    if family is None:
        logger.warning("[GAG] %s is not a supported model (%s); the model passes through unguided.",
                       describe_model(getattr(model, "model", None)), supported_labels())
        return model
    preset = get_preset(family.key)
    available = model_blocks(family.block_counts, getattr(model.model, "diffusion_model", None))
    selection = parse_blocks(blocks, family.kind, preset.blocks, available)  # typed items checked against it
    if available is not None and not matches_any(selection, available):
        logger.warning("[GAG] blocks %r match none of this %s model's blocks (%s): nothing will be guided.",
                       selection.describe(), family.label, describe_blocks(available))
    sampling = model.get_model_object("model_sampling")
    sigma_start, sigma_end = float(sampling.percent_to_sigma(start)), float(sampling.percent_to_sigma(end))
    if start <= 0.0:
        sigma_start = math.inf
    if end >= 1.0:
        sigma_end = 0.0
    settings = GuidanceSettings(family, method, scale, beta, tau, alpha, selection, sigma_start, sigma_end,
                                None if node_key is None else str(node_key))
    patched = model.clone()
    patched.remove_wrappers_with_key(APPLY_MODEL, WRAPPER_KEY)
    patched.remove_wrappers_with_key(OUTER_SAMPLE, WRAPPER_KEY)
    guidance = GuidancePatch(settings)
    patched.add_wrapper_with_key(APPLY_MODEL, WRAPPER_KEY, guidance)
    patched.add_wrapper_with_key(OUTER_SAMPLE, WRAPPER_KEY, RunWatch(guidance, start, end, available))
    telemetry.attach(patched, settings.node_key)  # per-step statistics for the web chart (no-op unless shown)
    rule = f"lambda={scale:g}, beta={beta:g}, tau={tau}" if method == "gag" else f"s={scale:g}"
    logger.info("[GAG] %s on %s: %s, alpha=%g, blocks %s, percent %g-%g", method.upper(), family.label, rule,
                alpha, selection.describe(), start, end)
    return patched
