"""Save and load the bundled model as safetensors (float16 on disk, float32 in memory, config in the metadata)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from .model import Config, UNet

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "tiny_t2i.safetensors"


def save(model: UNet, path: str | Path, meta: dict[str, str]) -> None:
    """Write the model's parameters as float16 safetensors with `meta` (must include 'config')."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def metadata(path: str | Path = DEFAULT_WEIGHTS) -> dict[str, str]:
    """The metadata stored with the weights (config, training steps and time)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load(path: str | Path = DEFAULT_WEIGHTS) -> UNet:
    """Build the UNet from the stored config and load its weights (float32, eval mode)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model weights at {str(path)!r}; train them with python -m demo.train")
    raw = json.loads(metadata(path)["config"])
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    model = UNet(cfg)
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)
