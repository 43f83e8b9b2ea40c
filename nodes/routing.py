"""Which attention calls are guided: the per-pass facts (text length, image tokens, schedule) and the routing rule.

UNet: only cross-attention (attn2, keys = text tokens) in selected blocks; ComfyUI says which block
(`transformer_options["block"]`), and an attn2 patch pair marks the calls that run inside attn2.
MMDiT: only the joint attention [text | image | reference] of selected blocks; the text span is
[0, text_len) with text_len taken from the conditioning, and the sequence must hold at least the latent's
image tokens after it. Reference latents (FLUX Kontext, Qwen-Image-Edit) come after the image: they are never
taken for text, and their rows keep the dense output (`Route.guided_stop`), so the reference is read as without
guidance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .blocks import BlockSelection


@dataclass
class PassInfo:
    """Facts of one model pass (one apply_model call), written by the APPLY_MODEL wrapper."""

    kind: str  # "unet" or "mmdit"
    text_len: int  # text tokens (keys of UNet cross-attention; text span of MMDiT joint attention)
    image_tokens: int = 0  # tokens of the main latent (MMDiT), 0 when unknown
    block_ids: bool = True  # False: count joint calls to number the blocks (SD3)
    in_cross: bool = False  # UNet: True between the attn2 patch and the attn2 output patch
    joint_calls: int = 0  # MMDiT without block ids: joint calls seen so far in this pass


@dataclass(frozen=True)
class Route:
    """A guided call: "cross" (UNet attn2) or "joint" (MMDiT) at `block`; for joint, the text span and the end
    of the guided rows (rows from `guided_stop` on are reference tokens and keep the dense output)."""

    kind: str
    block: tuple[str, int]
    text_range: tuple[int, int] | None = None
    guided_stop: int | None = None


def image_token_count(latent_shape, patch_size) -> int:
    """Tokens of a latent (B, C, H, W) or (B, C, T, H, W) after ⌈H/p⌉·⌈W/p⌉ patching (times T)."""
    if isinstance(patch_size, (tuple, list)):
        patch_size = patch_size[-1]
    p = max(int(patch_size or 1), 1)
    shape = tuple(latent_shape)
    if len(shape) < 4:
        return 0
    frames = shape[2] if len(shape) == 5 else 1
    return frames * math.ceil(shape[-2] / p) * math.ceil(shape[-1] / p)


def in_window(sigma: float, sigma_start: float, sigma_end: float) -> bool:
    """Guidance is active while sigma_end ≤ σ ≤ sigma_start (σ falls as sampling proceeds)."""
    return sigma_end <= sigma <= sigma_start


def route_call(info: PassInfo, q_len: int, k_len: int, transformer_options: dict,
               selection: BlockSelection) -> Route | None:
    """The Route of an attention call with `q_len` queries and `k_len` keys, or None to leave it dense."""
    if info.text_len <= 0:
        return None
    if info.kind == "unet":
        if not info.in_cross or k_len != info.text_len:
            return None
        block = transformer_options.get("block")
        if not (isinstance(block, (tuple, list)) and len(block) == 2):
            return None
        group, index = str(block[0]), int(block[1])
        return Route("cross", (group, index)) if selection.contains(group, index) else None
    if info.kind != "mmdit" or q_len != k_len or q_len < info.text_len + max(info.image_tokens, 1):
        return None
    if info.block_ids:
        group, index = transformer_options.get("block_type"), transformer_options.get("block_index")
        if group is None or index is None:
            return None
        group, index = str(group), int(index)
    else:
        group, index = "double", info.joint_calls
        info.joint_calls += 1
    if not selection.contains(group, index):
        return None
    stop = info.text_len + info.image_tokens if info.image_tokens > 0 else q_len
    return Route("joint", (group, index), (0, info.text_len), stop)
