"""Recommended GAG settings per model family: the one table the nodes, workflows and web panel follow."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

# Where a preset value comes from (`Preset.source`): the README's settings table and the web menu's tooltip show it.
PROVENANCE = ("paper", "public port", "measured here", "extrapolated")


@dataclass(frozen=True)
class Preset:
    """Starting point for one family: λ (scale), β, τ, α, step window and guided blocks."""

    family: str
    label: str
    scale: float  # λ
    beta: float  # β, weight of the orthogonal component
    tau: float  # τ, norm cap on G (0 = off)
    alpha: float  # α of α-entmax
    start_percent: float
    end_percent: float
    blocks: str  # UNet: "input,output" ...; MMDiT: "double,single"
    pladis_scale: float  # PLADIS s (out = O_d + s·(O_s − O_d))
    scale_range: tuple[float, float]  # range worth exploring for λ
    beta_range: tuple[float, float]
    note: str
    # provenance of the values, one PROVENANCE entry each: ((field or "all", source), ...); "all" covers the rest
    source: tuple[tuple[str, str], ...] = (("all", "extrapolated"),)

    def __post_init__(self):
        for name, where in self.source:
            if where not in PROVENANCE or (name != "all" and name not in self.__dataclass_fields__):
                raise ValueError(f"preset {self.family!r}: bad source entry {(name, where)!r}; sources: {PROVENANCE}")

    def source_of(self, name: str) -> str:
        """Where the value of field `name` comes from (one of PROVENANCE)."""
        table = dict(self.source)
        return table.get(name, table.get("all", "extrapolated"))

    def as_dict(self) -> dict:
        return asdict(self)


# Sources. paper: the GAG paper (β = 0, the norm cap τ, α = 1.5 entmax, every step guided) and PLADIS (s = 2.0; UNet
# input + output blocks, middle excluded). public port: public re-implementations of GAG for SDXL and FLUX.1
# (λ 5–10, τ 15). measured here: this project's demo (docs/evidence.md). extrapolated: carried over from another
# family without a measurement on this one. Where the demo contradicts a kept value, the README's settings table
# says why at that row.
_RULE = (("beta", "paper"), ("alpha", "paper"), ("start_percent", "paper"), ("end_percent", "paper"))
_UNET = _RULE + (("blocks", "paper"), ("pladis_scale", "paper"))
_PORTED = (("scale", "public port"), ("tau", "public port"))


# The measurement behind every joint-attention row's λ, appended to its note (the preset menu's tooltip shows it).
_JOINT_LAMBDA = ("λ on the demo's FLUX.1-like MMDiT (docs/evidence.md): at 20 steps with CFG 1–5 were neutral and "
                 "10–20 lost alignment; at 4 steps without CFG 2 gained most and 5 a little. At λ = 5 the chart "
                 "reads ≈ 0.3 with CFG, a third of a UNet's reading at the same λ.")


_JOINT_FAMILIES = frozenset({"flux1", "flux2", "qwen_image", "sd3", "omnigen2", "boogu", "ideogram4", "lens",
                             "hunyuan_image21", "joyimage", "pixeldit", "cogvideox", "zimage", "chroma",
                             "hunyuan_video", "krea2", "hidream", "minimax_h3"})


def _with_evidence(p: Preset) -> Preset:
    """A joint-attention row with the measurement behind its λ appended to its note."""
    return replace(p, note=f"{p.note} {_JOINT_LAMBDA}") if p.family in _JOINT_FAMILIES else p


PRESETS: dict[str, Preset] = {
    p.family: _with_evidence(p)
    for p in (
        Preset("sd15", "SD 1.5", 1.0, 0.0, 15.0, 1.5, 0.0, 1.0, "input,output", 2.0, (0.5, 3.0), (0.0, 0.3),
               "UNet cross-attention (77 CLIP tokens). λ = 1: on the SD 1.5-like demo UNet λ ≥ 2 lost single "
               "objects with CFG; λ = 1 was neutral with CFG and gained at 4 steps without it.",
               source=_UNET + (("scale", "measured here"), ("scale_range", "measured here"))),
        Preset("sdxl", "SDXL", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "input,output", 2.0, (2.0, 10.0), (0.0, 0.3),
               "CFG 5–7, 25–50 steps. Raise λ towards 10 for stronger prompt adherence; keep β ≤ 0.3.",
               source=_UNET + _PORTED),
        Preset("dmd2", "DMD2 / distilled SDXL", 3.0, 0.0, 15.0, 1.5, 0.0, 1.0, "input,output", 2.0, (1.0, 6.0),
               (0.0, 0.2), "4-step distilled SDXL (DMD2, Lightning, Hyper) at CFG 1: GAG is the only guidance.",
               source=_UNET + (("tau", "public port"),)),
        Preset("flux1", "FLUX.1", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double,single", 2.0, (2.0, 10.0), (0.0, 0.3),
               "Joint attention: only image-query × text-key weights change. Works for dev and schnell.",
               source=_RULE + _PORTED),
        Preset("flux2", "FLUX.2", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double,single", 2.0, (2.0, 10.0), (0.0, 0.3),
               "As FLUX.1; FLUX.2 pads text to 512 tokens at the front.", source=_RULE),
        Preset("qwen_image", "Qwen-Image", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double", 2.0, (2.0, 10.0), (0.0, 0.3),
               "MMDiT with double-stream blocks only.", source=_RULE),
        Preset("sd3", "SD3 / SD3.5", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double", 2.0, (2.0, 10.0), (0.0, 0.3),
               "MMDiT joint attention [context | image].", source=_RULE),
        Preset("wan", "Wan 2.1 / 2.2", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double", 2.0, (2.0, 10.0), (0.0, 0.3),
               "Video: text cross-attention of every block (umT5, 512 keys); self-attention and the I2V image "
               "cross-attention stay dense.", source=_RULE),
        Preset("omnigen2", "OmniGen2", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double", 2.0, (2.0, 10.0), (0.0, 0.3),
               "Single stream [text | references | image]: image queries × text keys; reference rows stay dense.",
               source=_RULE),
        Preset("boogu", "Boogu", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double,single", 2.0, (2.0, 10.0), (0.0, 0.3),
               "OmniGen2-style [text | references | image], double- then single-stream blocks: image queries × "
               "text keys; reference rows and the image-only self-attention stay dense.", source=_RULE),
        Preset("ideogram4", "Ideogram 4", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double", 2.0, (2.0, 10.0), (0.0, 0.3),
               "Single stream [text | image]: image queries × text keys; the image-only unconditional pass runs "
               "dense.", source=_RULE),
        Preset("kandinsky5", "Kandinsky 5", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double", 2.0, (2.0, 10.0), (0.0, 0.3),
               "Cross-attention DiT (video and image): text cross-attention of every visual block; the text blocks "
               "and self-attention stay dense.", source=_RULE),
        Preset("lens", "Lens", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double", 2.0, (2.0, 10.0), (0.0, 0.3),
               "Dual-stream MMDiT [image | text]: image queries × text keys; padded text stays masked.", source=_RULE),
        Preset("hunyuan_image21", "HunyuanImage 2.1", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double,single", 2.0,
               (2.0, 10.0), (0.0, 0.3), "HunyuanVideo's joint blocks on images: image queries × the LLM and byT5 "
               "text keys.", source=_RULE),
        Preset("joyimage", "JoyImage", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double", 2.0, (2.0, 10.0), (0.0, 0.3),
               "Joint [image | references | text]: target image queries × text keys; reference rows stay dense.",
               source=_RULE),
        Preset("pixeldit", "PixelDiT", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double", 2.0, (2.0, 10.0), (0.0, 0.3),
               "Pixel-space DiT: the patch blocks' joint [text | patches] attention, patch queries × text keys; the "
               "pixel blocks stay dense.", source=_RULE),
        Preset("cogvideox", "CogVideoX", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double", 2.0, (2.0, 10.0), (0.0, 0.3),
               "Joint [text | video]: video queries × text keys.", source=_RULE),
        Preset("anima", "Anima", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double", 2.0, (2.0, 10.0), (0.0, 0.3),
               "Cross-attention DiT (Cosmos-Predict2 blocks): text cross-attention of every block (the LLM "
               "adapter's 512 keys); self-attention stays dense.", source=_RULE),
        Preset("cosmos_predict2", "Cosmos-Predict2", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double", 2.0, (2.0, 10.0),
               (0.0, 0.3), "Cross-attention DiT: text cross-attention of every block; self-attention stays dense.",
               source=_RULE),
        Preset("ltxv", "LTX-Video / LTX-2", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double", 2.0, (2.0, 10.0), (0.0, 0.3),
               "Video: video-query × text-key cross-attention of every block; LTX-2's audio queries stay dense.",
               source=_RULE),
        Preset("zimage", "Z-Image / Lumina 2", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double", 2.0, (2.0, 10.0),
               (0.0, 0.3), "Joint [caption | image] in every main layer; Z-Image Turbo runs at CFG 1, where GAG is "
               "the only guidance.", source=_RULE),
        Preset("chroma", "Chroma / Chroma Radiance", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double,single", 2.0,
               (2.0, 10.0), (0.0, 0.3), "FLUX layout [text | image] without pooled vector; as FLUX.1.", source=_RULE),
        Preset("hunyuan_video", "HunyuanVideo / 1.5", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double,single", 2.0,
               (2.0, 10.0), (0.0, 0.3), "Video, FLUX-style blocks; 1.5's byT5 tokens count as text.", source=_RULE),
        Preset("krea2", "Krea 2", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "single", 2.0, (2.0, 10.0), (0.0, 0.3),
               "Single stream [text | image | reference]; reference rows stay dense.", source=_RULE),
        Preset("hidream", "HiDream", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double,single", 2.0, (2.0, 10.0), (0.0, 0.3),
               "Joint [image | T5 + LLM]: the whole text block of each layer is the text span.", source=_RULE),
        Preset("minimax_h3", "MiniMax H3", 5.0, 0.0, 15.0, 1.5, 0.0, 1.0, "double", 2.0, (2.0, 10.0),
               (0.0, 0.3), "Text-, image- (keyframe) and reference-to-video: target video queries × text keys "
               "(Qwen3-VL vision tokens of the prompt included); keyframe, reference and audio rows stay dense.",
               source=_RULE),
    )
}


def get_preset(family: str) -> Preset:
    """Return the preset for `family`, with a clear error for an unknown one."""
    try:
        return PRESETS[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(PRESETS)}") from None
