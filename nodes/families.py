"""Which model families the nodes guide, recognised from ComfyUI's model classes by name (no ComfyUI import)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """A guided family: its preset key, its attention layout ("unet" or "mmdit") and how to find its blocks."""

    key: str  # key of gag_core.presets.PRESETS
    kind: str  # "unet": cross-attention attn2; "mmdit": joint attention [text | image | reference]
    label: str
    block_ids: bool = True  # False: the host gives no block ids (SD3), joint calls are counted instead


FAMILIES: dict[str, Family] = {
    f.key: f
    for f in (
        Family("sd15", "unet", "SD 1.x / 2.x"),
        Family("sdxl", "unet", "SDXL"),
        Family("flux1", "mmdit", "FLUX.1"),
        Family("flux2", "mmdit", "FLUX.2"),
        Family("qwen_image", "mmdit", "Qwen-Image"),
        Family("sd3", "mmdit", "SD3 / SD3.5", block_ids=False),
    )
}

# comfy.model_base class name -> family key. Exact class names only: a subclass (a video, audio or edit
# variant) can change the layout, so it is unsupported until it is tested.
MODEL_CLASSES: dict[str, str] = {
    "BaseModel": "sd15",
    "SD15_instructpix2pix": "sd15",
    "SDXL": "sdxl",
    "SDXLRefiner": "sdxl",
    "SDXL_instructpix2pix": "sdxl",
    "Flux": "flux1",
    "Flux2": "flux2",
    "QwenImage": "qwen_image",
    "SD3": "sd3",
}

# The diffusion network each family must carry (class name), so a BaseModel around another net is refused.
DIFFUSION_CLASSES: dict[str, tuple[str, ...]] = {
    "unet": ("UNetModel",),
    "flux1": ("Flux",),
    "flux2": ("Flux",),
    "qwen_image": ("QwenImageTransformer2DModel",),
    "sd3": ("OpenAISignatureMMDITWrapper", "MMDiT"),
}


def detect_family(base_model) -> Family | None:
    """The Family of a comfy.model_base model (ModelPatcher.model), or None when the nodes do not support it."""
    cls = type(base_model)
    if not cls.__module__.endswith("model_base"):
        return None
    key = MODEL_CLASSES.get(cls.__name__)
    if key is None:
        return None
    family = FAMILIES[key]
    net = getattr(base_model, "diffusion_model", None)
    wanted = DIFFUSION_CLASSES["unet" if family.kind == "unet" else key]
    if net is None or type(net).__name__ not in wanted:
        return None
    return family


def describe_model(base_model) -> str:
    """A short name for log messages: model class and diffusion network class."""
    net = getattr(base_model, "diffusion_model", None)
    return f"{type(base_model).__name__} ({type(net).__name__ if net is not None else 'no diffusion_model'})"
