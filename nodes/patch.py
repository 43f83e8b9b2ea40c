"""Patching a ComfyUI model with GAG / PLADIS through its official hooks, on a clone.

`apply_guidance` clones the ModelPatcher and adds one APPLY_MODEL wrapper (key "comfyui_gag"; a later GAG or
PLADIS node on the same model replaces an earlier one). For each model pass inside the start/end window the
wrapper records the text length and latent size (`PassInfo`) and hands the model a shallow copy of
transformer_options whose `optimized_attention_override` is a `GuidedAttention`. ComfyUI calls that for every
attention; calls that `routing.route_call` does not select go straight on, the others get GAG or PLADIS. An OUTER_SAMPLE wrapper (`run_check.RunWatch`, same key) counts
the guided calls of each sampling run and logs one warning, with the reason, when a run guided none. Inputs are
checked first (`inputs.check_inputs`, `blocks.parse_blocks` against the model's own blocks).

Chaining: an override that was already in transformer_options (NAG, SageAttention patches, ...) is kept and
called in place of the raw kernel, for unguided calls and for the dense output O_d of guided ones: GAG is the
outer layer, and its sparse branch is a correction to what the other override returns (cross-attention
O_s = O_d + (P_s − P_d)·v, joint out = O_d + m·(g − O_d^t)), so α = 1 gives that override's output exactly.
Without one, guided calls compute O_d in gag_core from the same q, k, v (joint attention: PyTorch's SDPA with
its log-sum-exp, so the text mass needs no second pass); unguided calls always run the host's kernel. Nothing in model_options is changed, so the
caller's model, and a bypassed node, give the baseline exactly. Imports no ComfyUI module.

Attention replacements: another node's attn2 replacement (`set_model_attn2_replace`: IP-Adapter, ...) calls the
kernel itself, past the override; on UNet passes it is wrapped (`GuidedReplacement`) so that its output is O_d
and the same correction applies; one that is itself sparse-attention guidance (PLADIS) is left alone.
Compiled models (TorchCompileModel drops the guards on transformer_options): the override and the wrapper are
opaque to torch.compile (one graph break per attention call; routing and guidance run as plain Python with the
current run's settings), and guided passes run inside `CompiledPass`, a pass-through torch-function mode that
keys their graphs apart from those of unguided passes (docs/compatibility.md).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass

import torch

from ..gag_core.attention import gag_attention, joint_gag_attention, text_mass_agrees, text_mass_extension
from ..gag_core.presets import get_preset
from . import telemetry
from .attention_call import (AttentionCall, bind_attention_call, mask_to_4d, output_from_bhld, output_to_bhld,
                             to_bhld)
from .blocks import BlockSelection, describe_blocks, matches_any, model_blocks, parse_blocks
from .families import (MODEL_CLASSES, Family, describe_model, detect_family, supported_labels,
                       unsupported_reason)
from .inputs import METHODS, check_inputs
from .routing import PassInfo, Route, add_family_facts, image_token_count, in_window, route_call
from .run_check import OUTER_SAMPLE, RunWatch, notify

logger = logging.getLogger("comfyui_gag")

APPLY_MODEL = "apply_model"  # comfy.patcher_extension.WrappersMP.APPLY_MODEL
WRAPPER_KEY = "comfyui_gag"
# Set COMFYUI_GAG_STRICT=1 (the tests do) to raise errors inside guided attention instead of falling back.
STRICT = os.environ.get("COMFYUI_GAG_STRICT") == "1"

_warned: set[str] = set()
# Functions torch.compile must not trace: the routing and guidance of every call run as plain Python, each call
# (one graph break per attention call of a guided pass), so no decision or counter is frozen into a graph.
_opaque = getattr(getattr(torch, "compiler", None), "disable", None) or (lambda fn: fn)
# attn2 replacements that are themselves sparse-attention guidance (sd-perturbed-attention's PLADIS): their
# blocks are left to them, not guided twice (docs/compatibility.md)
SPARSE_GUIDANCE_NAMES = ("pladis",)


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


_TEXT_MASS_VERDICT: dict[tuple, bool] = {}  # chained override's (module, qualname) -> passed the text-mass check


def _override_key(fn) -> tuple:
    return getattr(fn, "__module__", None), getattr(fn, "__qualname__", type(fn).__qualname__)


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

    @_opaque
    def __call__(self, func, *args, **kwargs):
        with _outside_compiled_pass():
            return self.dispatch(func, args, kwargs)

    def dispatch(self, func, args: tuple, kwargs: dict):
        """Route one call: guided (GAG / PLADIS) or passed on unchanged."""
        try:  # never break a run: anything that goes wrong in routing or guidance runs the call unguided
            call = bind_attention_call(args, kwargs)
            route = None if call is None else route_call(self.info, call.q_len, call.k_len,
                                                         call.transformer_options, self.settings.selection)
            if route is not None:
                return self.guided(func, call, route)
        except Exception as e:
            if STRICT:
                raise
            message = f"[GAG] guided attention failed ({type(e).__name__}: {str(e)[:300]}); this call runs unguided."
            warn_once(message, message)
        return self.call_next(func, args, kwargs)

    def chain_passes_text_mass(self, dense, call: AttentionCall, route: Route, q, k, v, done: dict) -> bool:
        """Whether the chained override may give m as an extra value channel: checked on its first joint call by
        comparing with its plain call and the row lse (an override that changes outputs, like NAG, fails and
        keeps the lse pass; a plain kernel passes), then remembered for that override's code."""
        key = _override_key(self.previous)
        if key not in _TEXT_MASS_VERDICT:
            sm = call.softmax_scale
            try:
                o_x = done[True] = dense(*text_mass_extension(q, k, v, route.text_range, softmax_scale=sm), None)
                o_d = done[False] = dense(q, k, v, None)  # both kept for this call's guidance
                ok = text_mass_agrees(o_x, o_d, q, k, route.text_range, mask=mask_to_4d(call.mask),
                                      softmax_scale=sm)
            except Exception as e:  # e.g. a kernel that takes only some head widths
                logger.info("[GAG] %s: no text-mass channel (%s: %s)", key[1], type(e).__name__, str(e)[:200])
                ok = False
            _TEXT_MASS_VERDICT[key] = ok
            logger.info("[GAG] joint attention through %s: dense text mass from %s", key[1],
                        "an extra value channel of its call" if ok else "a log-sum-exp pass")
        return _TEXT_MASS_VERDICT[key]

    def guided(self, func, call: AttentionCall, route: Route) -> torch.Tensor:
        """GAG / PLADIS on one call. O_d: a chained override's output when there is one (the sparse branch is then a
        correction to it), else gag_core's own dense pass from the same q, k, v (which also gives the joint lse)."""
        s = self.settings
        heads = call.heads
        q, k, v = call.q_bhld(), call.k_bhld(), call.v_bhld()  # (B, H, N, D), (B, H_kv, M, D), (B, H_kv, M, Dv)
        dense, text_mass, done = None, False, {}
        if self.previous is not None:
            def dense(q_, k_, v_, _mask):  # every keyword of the host's call reaches the chain (scale: see with_qkv)
                wide = q_.shape[-1] != q.shape[-1]  # the text-mass extension (joint calls), else the host's call
                if wide not in done:  # (the text-mass check may have run it already)
                    args = call.with_qkv(q_, k_, v_) if wide else (call.args, call.kwargs)
                    done[wide] = output_to_bhld(self.call_next(func, *args), heads, call.skip_output_reshape)
                return done.pop(wide)

            if route.kind != "cross" and v.shape[-1] == q.shape[-1]:
                text_mass = self.chain_passes_text_mass(dense, call, route, q, k, v, done)
        options = dict(method=s.method, scale=s.scale, beta=s.beta, tau=s.tau, alpha=s.alpha,
                       mask=mask_to_4d(call.mask), dense=dense,
                       stats=telemetry.stats_for(s.node_key, call.transformer_options), **call.gag_options())
        if route.kind == "cross":
            out = gag_attention(q, k, v, **options)
        else:  # rows from guided_stop on (reference latents), and before guided_start, keep the dense output
            stop = q.shape[2] if route.guided_stop is None else min(route.guided_stop, q.shape[2])
            rows = None if route.guided_stop is None and not route.guided_start else (route.guided_start, stop)
            out = joint_gag_attention(q, k, v, text_range=route.text_range, guided_rows=rows,
                                      dense_text_mass=text_mass, **options)
        return output_from_bhld(out, call.skip_output_reshape)


def _replacement_name(fn) -> str:
    """A short name of another node's attention function for messages: module.qualname."""
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    module = str(getattr(target, "__module__", "") or "")
    return f"{module.rsplit('.', 1)[-1]}.{target.__qualname__}" if module else str(target.__qualname__)


def is_sparse_guidance(fn) -> bool:
    """Whether an attn2 replacement is itself sparse-attention guidance (PLADIS by name): left alone, not doubled."""
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    text = f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}".lower()
    return any(name in text for name in SPARSE_GUIDANCE_NAMES)


class GuidedReplacement:
    """Another node's attn2 replacement (IP-Adapter, ...) under guidance: its output is the chained dense output
    O_d, then O_s = O_d + (P_s − P_d)·v from the same q, k, v and the rule (α = 1 gives its output exactly)."""

    def __init__(self, fn, settings: GuidanceSettings, info: PassInfo, seen: dict):
        self.fn = fn
        self.settings = settings
        self.info = info
        self.seen = seen  # this pass's {block: (name, guided?, own guidance?)}, read by the run check
        self.name = _replacement_name(fn)
        self.own_guidance = is_sparse_guidance(fn)

    @_opaque
    def __call__(self, q, k, v, extra_options):  # q (B, N, H·D), k and v (B, M, H·D); returns (B, N, H·D)
        with _outside_compiled_pass():
            return self.run(q, k, v, extra_options)

    def run(self, q, k, v, extra_options):
        """The replacement's output, guided when the route selects its block."""
        info, route = self.info, None
        block = extra_options.get("block")
        key = tuple(block) if isinstance(block, (tuple, list)) else ("?", -1)
        if not self.own_guidance:
            try:
                route = route_call(info, q.shape[1], k.shape[1], extra_options, self.settings.selection)
            except Exception as e:
                if STRICT:
                    raise
                warn_once(f"route {self.name}", f"[GAG] could not route {self.name} ({type(e).__name__}: {e}).")
        if route is not None or key not in self.seen:
            self.seen[key] = (self.name, route is not None, self.own_guidance)
        was = info.in_cross
        info.in_cross = False  # attention the replacement runs itself (with transformer_options) is not guided again
        try:
            o_d = self.fn(q, k, v, extra_options)
        finally:
            info.in_cross = was
        if route is None:
            return o_d
        try:
            return self.guided(q, k, v, o_d, extra_options)
        except Exception as e:
            if STRICT:
                raise
            message = (f"[GAG] guidance on top of {self.name} failed ({type(e).__name__}: {str(e)[:300]}); its "
                       "output is kept unguided.")
            warn_once(message, message)
            self.seen[key] = (self.name, False, False)
            return o_d

    def guided(self, q, k, v, o_d, extra_options) -> torch.Tensor:
        """The rule on the replacement's output: O_d = its output (B, N, H·D), P_s and P_d from q, k, v."""
        s = self.settings
        heads = int(extra_options["n_heads"])
        if not isinstance(o_d, torch.Tensor) or o_d.shape[:2] != q.shape[:2] or o_d.shape[-1] % heads:
            raise ValueError(f"its output has shape {tuple(getattr(o_d, 'shape', ()))}, expected (B, N, H·D) "
                             f"for q {tuple(q.shape)}")
        qb, kb, vb = (to_bhld(t, heads, False) for t in (q, k, v))  # (B, H, N, D), (B, H, M, D), (B, H, M, Dv)
        if o_d.shape[-1] // heads != vb.shape[-1]:
            raise ValueError(f"its output width {o_d.shape[-1]} is not {heads} heads of v's {vb.shape[-1]}")
        dense_out = output_to_bhld(o_d, heads, False)  # (B, H, N, Dv)
        out = gag_attention(qb, kb, vb, method=s.method, scale=s.scale, beta=s.beta, tau=s.tau, alpha=s.alpha,
                            dense=lambda *_: dense_out, stats=telemetry.stats_for(s.node_key, extra_options))
        return output_from_bhld(out, False).to(o_d.dtype)


def _with_guided_replacements(replace: dict | None, settings: GuidanceSettings, info: PassInfo, seen: dict):
    """A copy of transformer_options["patches_replace"] whose attn2 replacements run under guidance."""
    if not isinstance(replace, dict) or not isinstance(replace.get("attn2"), dict) or not replace["attn2"]:
        return replace
    out = dict(replace)
    out["attn2"] = {key: fn if isinstance(fn, GuidedReplacement) else GuidedReplacement(fn, settings, info, seen)
                    for key, fn in replace["attn2"].items()}
    return out


class CompiledPass(torch.overrides.TorchFunctionMode):
    """Entered around each guided pass of a compiled model; it changes nothing. torch.compile keys its graphs on
    the torch-function mode stack, while the host's TorchCompileModel drops every guard on transformer_options: so
    a graph traced for an unguided pass (the compiled baseline, a step outside the window) is never replayed for a
    guided one, which would guide nothing."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _outside_compiled_pass():
    """Within: the CompiledPass mode is off (guidance runs eagerly here; the mode would only add Python per op)."""
    mode = None
    try:
        stack = torch.overrides._get_current_function_mode_stack()
        if stack and isinstance(stack[-1], CompiledPass):
            mode = torch.overrides._pop_mode()
    except Exception:  # a torch without these helpers: keep the mode (correct, slower)
        mode = None
    try:
        yield
    finally:
        if mode is not None:
            torch.overrides._push_mode(mode)


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
        self.compiled = None  # RunWatch: how the run's model is compiled (torch.compile), None when it is not

    def pass_info(self, x, t, c_crossattn, base_model, extra: dict | None = None) -> PassInfo | None:
        """The PassInfo of this pass, or None when it runs unguided (outside the window, no text); `extra` is
        apply_model's keyword conditioning (LTX-2 packs video and audio into one x and says `latent_shapes`)."""
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
        patch = getattr(net, "patch_size", 1)
        tokens = image_token_count(x.shape, patch) if isinstance(x, torch.Tensor) else 0
        shapes = (extra or {}).get("latent_shapes")
        if isinstance(shapes, (list, tuple)) and shapes and all(isinstance(sh, (list, tuple)) for sh in shapes):
            tokens = image_token_count(shapes[0], patch)  # x packs several streams: the first is the video
        info = PassInfo(family.rule, text_len, tokens, block_ids=family.block_ids)
        return add_family_facts(info, family, net, x.shape if isinstance(x, torch.Tensor) else None, extra)

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        transformer_options = {} if transformer_options is None else transformer_options
        info = self.pass_info(x, t, c_crossattn, getattr(executor, "class_obj", None), kwargs)
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
        replaced: dict = {}  # attn2 replacements of other nodes seen in this pass: {block: (name, guided, own)}
        if info.kind == "unet":
            options["patches"] = _with_cross_markers(transformer_options.get("patches"), info)
            if transformer_options.get("patches_replace"):
                options["patches_replace"] = _with_guided_replacements(transformer_options["patches_replace"],
                                                                       self.settings, info, replaced)
        try:
            if self.compiled:
                with CompiledPass():
                    return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)
            return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)
        finally:  # counted as they happened, also when the pass is interrupted
            if tally is not None:
                tally.routed += getattr(info, "routed", 0)
                tally.saw_replacements(replaced)


def apply_guidance(model, *, method: str, scale: float, beta: float = 0.0, tau=15.0, alpha: float = 1.5,
                   start_percent: float = 0.0, end_percent: float = 1.0, blocks: str = "auto",
                   node_key: str | None = None):
    """A clone of ModelPatcher `model` that runs GAG / PLADIS; an unsupported model comes back unchanged."""
    checked = check_inputs(method, scale, beta, tau, alpha, start_percent, end_percent)  # before any family
    method, scale, beta, tau, alpha = checked.method, checked.scale, checked.beta, checked.tau, checked.alpha
    start, end = checked.start, checked.end
    family = detect_family(getattr(model, "model", None))
    if family is None:
        base = getattr(model, "model", None)
        reason = unsupported_reason(base)
        net = getattr(base, "diffusion_model", None)
        if type(base).__name__ in MODEL_CLASSES and net is not None and type(base).__module__.endswith("model_base"):
            message = (f"[GAG] the {describe_model(base)} model's transformer was replaced by "
                       f"{type(net).__module__}.{type(net).__qualname__} (a Nunchaku-style loader?): its attention "
                       "does not run through ComfyUI's attention functions, so GAG cannot reach it. The model "
                       "passes through unguided.")
            logger.warning(message)
            notify(message, node_key)
            return model
        if reason:
            logger.warning("[GAG] %s is not a supported model: %s. The model passes through unguided (supported: "
                           "%s).", describe_model(base), reason, supported_labels())
        else:
            logger.warning("[GAG] %s is not a supported model (%s); the model passes through unguided.",
                           describe_model(base), supported_labels())
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
