"""Save and load the bundled model as safetensors (float16 on disk, float32 in memory, config in the metadata)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from .mmdit import MMDiT, MMDiTConfig
from .model import Config, UNet

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "tiny_t2i.safetensors"  # the UNet
DEFAULT_MMDIT_WEIGHTS = WEIGHTS_DIR / "tiny_mmdit.safetensors"
ARCHS = {"unet": (UNet, Config), "mmdit": (MMDiT, MMDiTConfig)}
DEFAULT_PATHS = {"unet": DEFAULT_WEIGHTS, "mmdit": DEFAULT_MMDIT_WEIGHTS}


def save(model: UNet | MMDiT, path: str | Path, meta: dict[str, str]) -> None:
    """Write the model's parameters as float16 safetensors with `meta` (must include 'config'; 'arch' is added)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"arch": getattr(model, "arch", "unet"), **meta})
    tmp.replace(path)


def metadata(path: str | Path = DEFAULT_WEIGHTS) -> dict[str, str]:
    """The metadata stored with the weights (config, training steps and time)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load(path: str | Path = DEFAULT_WEIGHTS) -> UNet | MMDiT:
    """Build the model the metadata names (UNet when unnamed) from its stored config; float32, eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model weights at {str(path)!r}; train them with "
                                "python -m demo.train [--arch mmdit]")
    meta = metadata(path)
    arch = meta.get("arch", "unet")
    if arch not in ARCHS:
        raise ValueError(f"weights {str(path)!r} name an unknown architecture {arch!r}; known: {sorted(ARCHS)}")
    model_cls, cfg_cls = ARCHS[arch]
    raw = json.loads(meta["config"])
    cfg = cfg_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    model = model_cls(cfg)
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)
