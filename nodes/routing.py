"""Which attention calls are guided: the per-pass facts (`PassInfo`) and one routing rule per layout (`LAYOUTS`).

A family row (nodes/families.py) names its layout; `route_call` dispatches on `PassInfo.kind` (= that layout):
- "unet": UNet cross-attention (attn2, keys = the text tokens) in selected blocks; ComfyUI says which block
  (`transformer_options["block"]`) and an attn2 patch pair marks the calls that run inside attn2.
- "mmdit": joint attention [text | image | reference] (`text_order="first"`) or [image | text] ("last") of
  selected blocks. The text span comes from the conditioning (`text_len`) or, where the host gives it, from
  `transformer_options["img_slice"]` (FLUX single blocks, Qwen-Image on 0.3x); the sequence must hold at least
  the latent's image tokens next to it. Reference latents (FLUX Kontext, Qwen-Image-Edit) come after the image
  (`transformer_options["reference_image_num_tokens"]` where the host gives it): never taken for text, their rows
  keep the dense output (`Route.guided_stop`), so the reference is read as without guidance.
- "cross": DiT cross-attention whose keys are the text only (Wan, LTX-Video): a call with `text_len` keys and
  a query length other than the text's is the text cross-attention; self-attention (q and k lengths equal and
  the block's first call), image-conditioning cross-attention (Wan I2V's 257 CLIP tokens: another key length)
  and queries of another stream (`dense_query_lens`, LTX-2's audio) stay dense; where the host numbers its blocks,
  a text cross-attention after the block's second self-attention is a side branch's and stays dense (Wan VACE's
  control blocks reuse the main block's id).
Blocks: by the ids the host sets (`block_type` / `block_index`), or, for families without ids
(`block_ids=False`), by counting the routed calls of the pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from .blocks import BlockSelection


@dataclass
class PassInfo:
    """Facts of one model pass (one apply_model call), written by the APPLY_MODEL wrapper."""

    kind: str  # the layout (routing.LAYOUTS key): "unet", "mmdit" or "cross"
    text_len: int  # text tokens (keys of cross-attention; text span of joint attention)
    image_tokens: int = 0  # tokens of the main latent, 0 when unknown
    block_ids: bool = True  # False: count the routed calls to number the blocks (SD3, LTX)
    in_cross: bool = False  # UNet: True between the attn2 patch and the attn2 output patch
    joint_calls: int = 0  # families without block ids: routed calls seen so far in this pass
    text_order: str = "first"  # joint: text before ("first") or after ("last") the image tokens
    dense_query_lens: tuple[int, ...] = ()  # cross: query lengths of streams that stay dense (LTX-2 audio)
    block_calls: dict = field(default_factory=dict)  # cross: attention calls seen per block id
    text_blocks: set = field(default_factory=set)  # cross: block ids whose text cross-attention was routed
    block_selfs: dict = field(default_factory=dict)  # cross: self-attention calls seen per block id
    routed: int = 0  # calls route_call sent to guidance in this pass (the run-level "nothing guided" check)
    seq_len: int = 0  # joint: the exact length of [text | image (+ pad)]; calls of other lengths stay dense (0: any,
    # -1: none)
    call_groups: tuple[tuple[str, int], ...] = ()  # no block ids: (group, block count) in call order (HiDream)
    stream_tokens: int = 0  # joint: tokens of other latent streams packed between text and image (kept dense)


@dataclass(frozen=True)
class Route:
    """A guided call: "cross" (text keys only) or "joint" (MMDiT) at `block`; for joint, the text span and the
    end of the guided rows (rows from `guided_stop` on are reference tokens and keep the dense output)."""

    kind: str
    block: tuple[str, int]
    text_range: tuple[int, int] | None = None
    guided_stop: int | None = None
    guided_start: int = 0  # rows before it keep the dense output too (MiniMax H3's audio between text and video)


def image_token_count(latent_shape, patch_size) -> int:
    """Tokens of a latent (B, C, H, W) or (B, C, T, H, W) after ⌈H/p⌉·⌈W/p⌉ patching (times ⌈T/p_t⌉)."""
    p_t = 1
    if isinstance(patch_size, (tuple, list)):
        p_t = int(patch_size[0] or 1) if len(patch_size) == 3 else 1
        patch_size = patch_size[-1]
    p = max(int(patch_size or 1), 1)
    shape = tuple(latent_shape)
    if len(shape) < 4:
        return 0
    frames = math.ceil(shape[2] / max(p_t, 1)) if len(shape) == 5 else 1
    return frames * math.ceil(shape[-2] / p) * math.ceil(shape[-1] / p)


def _cond_tokens(value) -> int:
    """Tokens of a conditioning tensor (B, [layers,] L, C): its size L; 0 for anything else."""
    shape = getattr(value, "shape", None)
    return int(shape[-2]) if shape is not None and len(shape) >= 3 else 0


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple if multiple > 1 else n


def add_family_facts(info: PassInfo, family, net, latent_shape, extra: dict | None) -> PassInfo:
    """`info` completed with what a family row says about its joint sequence (nodes/families.py):
    - the net's `patch` (Krea 2) or `patch_spatial` / `patch_temporal` (MiniTrainDIT) when it has no
      `patch_size` sets the image tokens, as the net's `patch_size_t` (CogVideoX 1.5) does; `token_grid` rows
      (Ideogram 4, Lens) take a latent that is already their token grid (2×2 patches packed into the channels):
      one token per latent pixel;
    - `text_conds`: conditioning entries (apply_model keywords) whose tokens are part of the text span
      (HunyuanVideo 1.5's byT5 and CLIP-vision tokens, HiDream's LLM tokens, twice per block);
    - the net's `pad_tokens_multiple` (Z-Image): caption and image are each padded up to a multiple;
    - `exact_sequence`: the joint call is exactly [text | image (+ pad)]: calls of another length (packed
      reference images: Z-Image Omni, HunyuanVideo's ref_latent, HiDream E1) stay dense;
    - `text_order` may be a callable(net) (HunyuanVideo: [image | text] on ComfyUI 0.8, [text | image] later);
    - without block ids, `block_counts` pairs number the counted calls group by group (HiDream);
    - `stream_rows`: callable(conditioning) -> rows packed between the text and the guided image rows (MiniMax
      H3's keyframe rows or reference blocks and target audio, read from the host's segment table); they keep
      the dense output; None = unreadable: seq_len −1, no call is routed."""
    if getattr(net, "patch_size", None) is None and latent_shape is not None:
        if getattr(net, "patch", None):  # Krea 2
            info.image_tokens = image_token_count(latent_shape, net.patch)
        elif getattr(net, "patch_spatial", None):  # Cosmos-Predict2's MiniTrainDIT, Anima: (t, h, w) patches
            patch = (int(getattr(net, "patch_temporal", 1) or 1), int(net.patch_spatial), int(net.patch_spatial))
            info.image_tokens = image_token_count(latent_shape, patch)
    p_t = getattr(net, "patch_size_t", None)
    if p_t and isinstance(getattr(net, "patch_size", None), int) and latent_shape is not None \
            and len(latent_shape) == 5:  # CogVideoX 1.5: frames are patched too
        info.image_tokens = image_token_count(latent_shape, (int(p_t), net.patch_size, net.patch_size))
    if getattr(family, "token_grid", False) and latent_shape is not None and len(latent_shape) == 4:
        info.image_tokens = int(latent_shape[-2]) * int(latent_shape[-1])  # Ideogram 4, Lens: one token per pixel
    conds = extra or {}
    info.text_len += sum(n * _cond_tokens(conds.get(name)) for name, n in getattr(family, "text_conds", ()))
    multiple = int(getattr(net, "pad_tokens_multiple", 0) or 0)
    info.text_len = _round_up(info.text_len, multiple)
    streams = getattr(family, "stream_rows", None)
    rows = 0 if streams is None else streams(conds, net)  # e.g. MiniMax H3: [text | cond / refs | audio | video]
    info.stream_tokens = int(rows or 0)
    if getattr(family, "exact_sequence", False) and info.image_tokens > 0:
        info.seq_len = info.text_len + info.stream_tokens + _round_up(info.image_tokens, multiple)
    if rows is None:
        info.seq_len = -1  # a packed layout the row cannot read: no call matches, the pass stays dense
    if callable(family.text_order):
        info.text_order = family.text_order(net)
    counts = family.block_counts
    if not family.block_ids and counts and not callable(counts) and len(counts) > 1:
        try:
            info.call_groups = tuple((group, len(getattr(net, attr))) for group, attr in counts)
        except (AttributeError, TypeError):
            info.call_groups = ()
    return info


def in_window(sigma: float, sigma_start: float, sigma_end: float) -> bool:
    """Guidance is active while sigma_end ≤ σ ≤ sigma_start (σ falls as sampling proceeds)."""
    return sigma_end <= sigma <= sigma_start


def _host_block(info: PassInfo, transformer_options: dict) -> tuple[str, int] | None:
    """The block id the host set (`block_type`, `block_index`), or the count of routed calls without ids."""
    if info.block_ids:
        group, index = transformer_options.get("block_type"), transformer_options.get("block_index")
        if index is None:
            return None
        return str(group or "double"), int(index)  # Cosmos-Predict2 / Anima set block_index only
    index = info.joint_calls
    info.joint_calls += 1
    if not info.call_groups:
        return "double", index
    for group, count in info.call_groups:  # e.g. HiDream: its double blocks, then its single blocks
        if index < count:
            return group, index
        index -= count
    return None  # more calls than the net has blocks: not a block we can name


def _int_pair(value) -> tuple[int, int] | None:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        try:
            return int(value[0]), int(value[1])
        except (TypeError, ValueError):
            return None
    return None


def _reference_tokens(transformer_options: dict) -> int:
    """Reference-latent tokens the host says it appended (FLUX Kontext, Qwen-Image-Edit on 0.3x), else 0."""
    refs = transformer_options.get("reference_image_num_tokens")
    if not isinstance(refs, (tuple, list)):
        return 0
    try:
        return sum(int(r) for r in refs)
    except (TypeError, ValueError):
        return 0


def route_unet(info: PassInfo, q_len: int, k_len: int, transformer_options: dict,
               selection: BlockSelection) -> Route | None:
    """UNet: attn2 calls whose keys are the text, in a selected `block`."""
    if not info.in_cross or k_len != info.text_len:
        return None
    block = transformer_options.get("block")
    if not (isinstance(block, (tuple, list)) and len(block) == 2):
        return None
    group, index = str(block[0]), int(block[1])
    return Route("cross", (group, index)) if selection.contains(group, index) else None


def route_joint(info: PassInfo, q_len: int, k_len: int, transformer_options: dict,
                selection: BlockSelection) -> Route | None:
    """Joint attention: [text | image | reference] or [image | text], image rows × text keys guided."""
    if q_len != k_len or (info.seq_len and q_len != info.seq_len):
        return None
    text_len = info.text_len
    host = _int_pair(transformer_options.get("img_slice"))
    if info.text_order == "first" and host is not None and host[1] == q_len and 0 < host[0] < q_len:
        text_len = host[0]  # the host says where the image starts: [txt_len, total]
    if q_len < text_len + max(info.image_tokens, 1):
        return None
    block = _host_block(info, transformer_options)
    if block is None or not selection.contains(*block):
        return None
    refs = _reference_tokens(transformer_options)
    if info.text_order == "last":
        start = q_len - text_len
        stop = info.image_tokens if info.image_tokens > 0 else start
        return Route("joint", block, (start, q_len), min(stop, start))
    if 0 < refs < q_len - text_len:
        stop = q_len - refs
    else:
        stop = text_len + info.stream_tokens + info.image_tokens if info.image_tokens > 0 else q_len
    return Route("joint", block, (0, text_len), stop, text_len + info.stream_tokens if info.stream_tokens else 0)


def route_cross(info: PassInfo, q_len: int, k_len: int, transformer_options: dict,
                selection: BlockSelection) -> Route | None:
    """DiT cross-attention: keys = the `text_len` text tokens, queries = the latent's tokens."""
    first, key = True, None
    if info.block_ids:  # the host numbers its blocks: remember which block has had its self-attention
        key = (transformer_options.get("block_type"), transformer_options.get("block_index"))
        first = info.block_calls.get(key, 0) == 0
        info.block_calls[key] = info.block_calls.get(key, 0) + 1
        if q_len == k_len and (first or k_len != info.text_len):
            info.block_selfs[key] = info.block_selfs.get(key, 0) + 1
    if k_len != info.text_len or q_len < max(info.image_tokens, 1):
        return None
    if q_len == k_len and (first or not info.block_ids):
        return None  # q and k of one length: self-attention unless the block already ran it
    if q_len in info.dense_query_lens and q_len != info.image_tokens:
        return None  # another stream's queries (LTX-2 audio) keep the dense output
    if key is not None:  # a side branch under the block's id (Wan VACE's control block runs after main block i
        # with block_index i) opens with a self-attention of its own: text cross-attention after a second
        # self-attention, once the block's own text cross-attention has run, stays dense
        if key in info.text_blocks and info.block_selfs.get(key, 0) > 1:
            return None
        info.text_blocks.add(key)
    block = _host_block(info, transformer_options)
    if block is None or not selection.contains(*block):
        return None
    return Route("cross", block)


LayoutRule = Callable[[PassInfo, int, int, dict, BlockSelection], "Route | None"]
LAYOUTS: dict[str, LayoutRule] = {"unet": route_unet, "mmdit": route_joint, "cross": route_cross}


def route_call(info: PassInfo, q_len: int, k_len: int, transformer_options: dict,
               selection: BlockSelection) -> Route | None:
    """The Route of an attention call with `q_len` queries and `k_len` keys, or None to leave it dense."""
    if info.text_len <= 0:
        return None
    rule = LAYOUTS.get(info.kind)
    route = None if rule is None else rule(info, q_len, k_len, transformer_options, selection)
    if route is not None:
        info.routed += 1
    return route
