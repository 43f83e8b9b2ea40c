"""Shared test setup: import paths, marker skipping, and loading the pack the way ComfyUI does."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Appended, not prepended: ComfyUI's own top-level `nodes` module must win over our `nodes/` package.
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
# Tests run gag_core eagerly unless they opt in: torch.compile would add tens of seconds per shape.
os.environ.setdefault("GAG_COMPILE", "0")
PACK_NAME = "comfyui_gag"


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


@pytest.fixture(autouse=True)
def _seed_python_random(request):
    """Each test draws its random seeds from Python's `random`, seeded from its own id: CI runs are reproducible.

    GAG_TEST_SEED=<n> shifts every test's stream, to look for flaky properties on purpose.
    """
    import random
    import zlib

    random.seed(zlib.crc32(request.node.nodeid.encode()) + int(os.environ.get("GAG_TEST_SEED", "0")))


def pytest_collection_modifyitems(config, items):
    skip_comfy = pytest.mark.skip(reason="COMFYUI_PATH is not set")
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU")
    has_gpu = _cuda_available()
    for item in items:
        if "comfyui" in item.keywords and not COMFYUI_PATH:
            item.add_marker(skip_comfy)
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


def add_comfyui_to_path() -> Path:
    """Put the ComfyUI checkout at COMFYUI_PATH first on sys.path and return it."""
    if not COMFYUI_PATH:
        pytest.skip("COMFYUI_PATH is not set")
    path = Path(COMFYUI_PATH).resolve()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    if not _cuda_available() and "comfy.model_management" not in sys.modules:
        import comfy.cli_args  # without a GPU, model_management must be told to use the CPU before its import

        comfy.cli_args.args.cpu = True
    return path


def load_pack(name: str = PACK_NAME):
    """Import the repository root as a package, as ComfyUI imports a custom node folder."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module


def pack_module(patch_module, name: str):
    """The loaded pack's submodule `name` (e.g. "families"), found beside its `patch` module."""
    return importlib.import_module(patch_module.__name__.rsplit(".", 1)[0] + "." + name)


def seeded_patcher(model_config, seed: int = 0, dtype=None, buffers: bool = False):
    """A CPU ModelPatcher around `model_config`'s tiny model, weights redrawn from `seed`: matrices N(0, 1/fan_in),
    vectors N(0, 0.02²) (+1 for norms) so attention logits are not degenerate; `buffers`: float buffers N(0, 0.25)
    too (SD3's pos_embed is torch.empty)."""
    import torch
    from comfy.model_patcher import ModelPatcher

    model_config.set_inference_dtype(torch.float32 if dtype is None else dtype, None)
    base = model_config.get_model({})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in base.diffusion_model.named_parameters():
            if p.ndim >= 2:
                w = torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5
            else:
                w = torch.randn(p.shape, generator=gen) * 0.02 + (1.0 if "norm" in name else 0.0)
            p.copy_(w.to(p.dtype))
        for buf in base.diffusion_model.buffers() if buffers else ():
            if buf.is_floating_point():
                buf.copy_((torch.randn(buf.shape, generator=gen) * 0.5).to(buf.dtype))
    base.diffusion_model.eval()
    cpu = torch.device("cpu")
    return ModelPatcher(base, load_device=cpu, offload_device=cpu)


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    return add_comfyui_to_path()
