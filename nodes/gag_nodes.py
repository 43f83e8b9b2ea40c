"""The ComfyUI nodes (V3 schema): GAG, GAG (advanced) and PLADIS. Defaults come from gag_core.presets."""
from __future__ import annotations

from comfy_api.latest import io

from ..gag_core.entmax import set_compile_default
from ..gag_core.presets import PRESETS, get_preset
from .blocks import AUTO, BLOCKS_HELP
from .families import detect_family, supported_labels
from .patch import METHODS, apply_guidance

CATEGORY = "model_patches/attention_guidance"
# Inside ComfyUI gag_core compiles (CPU) only attention calls of ≥ 2²⁴ logits (B·H·N·M: FLUX.1 / Qwen-Image at
# 1024², video models), where one sampling step repays the ~40 s first compile; UNet-size calls (SDXL at 1024²:
# 6.3M) stay eager, where a run does not repay it (docs/method.md, nodes section). GAG_COMPILE=1 / 0 force it on / off.
COMPILE_MIN_CALL_LOGITS = 2**24
set_compile_default(True, min_call_logits=COMPILE_MIN_CALL_LOGITS)
# UI defaults: the SDXL preset (λ, β, τ, α, s). At run time the detected family's preset sets the rest
# (τ, α, step window and blocks for the simple nodes; blocks for 'auto').
_UI = get_preset("sdxl")


def _scale_ranges() -> str:
    """The presets' λ ranges, families with the same range grouped: 'SDXL, FLUX.1: 2–10; DMD2: 1–6'."""
    groups: dict[tuple[float, float], list[str]] = {}
    for p in PRESETS.values():
        groups.setdefault(tuple(p.scale_range), []).append(p.label)
    return "; ".join(f"{', '.join(labels)}: {lo:g}–{hi:g}" for (lo, hi), labels in groups.items())


SCALE_TIP = ("λ, guidance scale of GAG: out = O_s + λ·c·G, extrapolating from the sparse (α-entmax) text "
             "retrieval O_s along G. In joint attention (FLUX, Qwen-Image, SD3, ...) the rule acts on the text keys "
             "only and is mixed back with each image token's text attention mass m: out = O_d + m·(g − O_d^text). "
             "0 gives plain sparse attention. Useful ranges: " + _scale_ranges() + ".")
BETA_TIP = ("β, weight of the orthogonal component Δ⊥ of Δ = O_s − O_d in G = Δ∥ + β·Δ⊥ (O_s, O_d: sparse and "
            "dense retrieval over the text keys). 0 keeps only the part parallel to O_s (the paper's default, most "
            "stable); 1 with τ = 0 is PLADIS with s = 1 + λ.")
TAU_TIP = "τ, norm cap: G is scaled by c = min(1, τ/‖G‖) per token and head, which keeps large λ stable. 0 = no cap."
ALPHA_TIP = ("α of α-entmax for the sparse attention O_s: 1.0 = softmax (no change), 1.5 = entmax (default), "
             "2.0 = sparsemax.")
METHOD_TIP = ("gag: out = O_s + λ·c·G (geometry-aware, capped). pladis: out = O_d + s·(O_s − O_d), with s = scale "
              "(PLADIS, the special case β = 1 without cap); β and τ are ignored.")
START_TIP = "Fraction of the schedule (0 = first step) where guidance starts; before it attention is untouched."
END_TIP = "Fraction of the schedule (1 = last step) where guidance ends; after it attention is untouched."
MODEL_TIP = (f"The diffusion model to guide ({supported_labels()}); any other model passes through unchanged, "
             "with one warning.")
PLADIS_SCALE_TIP = ("s, PLADIS scale: out = O_d + s·(O_s − O_d) in every guided cross-attention, O_s the α-entmax "
                    "and O_d the softmax output. 1 = plain sparse attention; the PLADIS paper uses 2.0.")
OUT_TIP = "The same model with guided cross-attention (a clone; the input model is not modified)."


def _model_input():
    return io.Model.Input("model", tooltip=MODEL_TIP)


def _node_key(cls) -> str | None:
    hidden = getattr(cls, "hidden", None)
    return getattr(hidden, "unique_id", None) if hidden is not None else None


class GeometryAwareAttentionGuidance(io.ComfyNode):
    """GAG with the family preset for everything but λ and β."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GeometryAwareAttentionGuidance",
            display_name="Geometry-Aware Attention Guidance (GAG)",
            category=CATEGORY,
            description=("Sparse-vs-dense cross-attention guidance (arXiv 2603.02531) with no extra model pass. "
                         "Only image-query × text-key attention changes; self-attention is untouched."),
            inputs=[
                _model_input(),
                io.Float.Input("scale", default=_UI.scale, min=0.0, max=20.0, step=0.1, round=0.01,
                               display_mode=io.NumberDisplay.slider, tooltip=SCALE_TIP),
                io.Float.Input("beta", default=_UI.beta, min=0.0, max=1.0, step=0.01, round=0.01,
                               display_mode=io.NumberDisplay.slider, tooltip=BETA_TIP),
            ],
            outputs=[io.Model.Output(tooltip=OUT_TIP)],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, scale, beta) -> io.NodeOutput:
        preset = _family_preset(model)
        extra = {} if preset is None else dict(tau=preset.tau, alpha=preset.alpha,
                                               start_percent=preset.start_percent, end_percent=preset.end_percent)
        return io.NodeOutput(apply_guidance(model, method="gag", scale=scale, beta=beta, blocks=AUTO,
                                            node_key=_node_key(cls), **extra))


class GeometryAwareAttentionGuidanceAdvanced(io.ComfyNode):
    """GAG or PLADIS with every setting exposed."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GeometryAwareAttentionGuidanceAdvanced",
            display_name="Geometry-Aware Attention Guidance (GAG, advanced)",
            category=CATEGORY,
            description="GAG / PLADIS with the rule, sparsity, norm cap, step window and guided blocks exposed.",
            inputs=[
                _model_input(),
                io.Combo.Input("method", options=list(METHODS), default="gag", tooltip=METHOD_TIP),
                io.Float.Input("scale", default=_UI.scale, min=0.0, max=30.0, step=0.1, round=0.01,
                               display_mode=io.NumberDisplay.slider, tooltip=SCALE_TIP + " For pladis: s."),
                io.Float.Input("beta", default=_UI.beta, min=0.0, max=1.0, step=0.01, round=0.01,
                               display_mode=io.NumberDisplay.slider, tooltip=BETA_TIP),
                io.Float.Input("tau", default=_UI.tau, min=0.0, max=200.0, step=0.5, round=0.01, tooltip=TAU_TIP),
                io.Float.Input("alpha", default=_UI.alpha, min=1.0, max=2.0, step=0.05, round=0.01,
                               tooltip=ALPHA_TIP),
                io.Float.Input("start_percent", default=_UI.start_percent, min=0.0, max=1.0, step=0.001,
                               tooltip=START_TIP),
                io.Float.Input("end_percent", default=_UI.end_percent, min=0.0, max=1.0, step=0.001,
                               tooltip=END_TIP),
                io.String.Input("blocks", default=AUTO, tooltip=BLOCKS_HELP),
            ],
            outputs=[io.Model.Output(tooltip=OUT_TIP)],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, method, scale, beta, tau, alpha, start_percent, end_percent, blocks) -> io.NodeOutput:
        return io.NodeOutput(apply_guidance(model, method=method, scale=scale, beta=beta, tau=tau, alpha=alpha,
                                            start_percent=start_percent, end_percent=end_percent, blocks=blocks,
                                            node_key=_node_key(cls)))


class PLADISGuidance(io.ComfyNode):
    """PLADIS: out = O_d + s·(O_s − O_d) in the family's preset blocks."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PLADISGuidance",
            display_name="PLADIS (sparse attention extrapolation)",
            category=CATEGORY,
            description=("PLADIS (arXiv 2503.07677): extrapolates cross-attention from softmax towards α-entmax, "
                         "the special case of GAG with β = 1 and no cap."),
            inputs=[
                _model_input(),
                io.Float.Input("scale", default=_UI.pladis_scale, min=0.0, max=10.0, step=0.05, round=0.01,
                               display_mode=io.NumberDisplay.slider, tooltip=PLADIS_SCALE_TIP),
            ],
            outputs=[io.Model.Output(tooltip=OUT_TIP)],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, scale) -> io.NodeOutput:
        preset = _family_preset(model)
        extra = {} if preset is None else dict(alpha=preset.alpha, start_percent=preset.start_percent,
                                               end_percent=preset.end_percent)
        return io.NodeOutput(apply_guidance(model, method="pladis", scale=scale, blocks=AUTO,
                                            node_key=_node_key(cls), **extra))


def _family_preset(model):
    family = detect_family(getattr(model, "model", None))
    return None if family is None else get_preset(family.key)


NODES = [GeometryAwareAttentionGuidance, GeometryAwareAttentionGuidanceAdvanced, PLADISGuidance]
