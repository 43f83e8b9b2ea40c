"""Which attention calls are guided: the facts of one model pass that every layout shares (`PassInfo`) and one
object per layout (`LAYOUTS`: `Unet`, `Joint`, `Cross`) that holds its own state for the pass, reads the host's
markers and picks the guided calls. A family row (nodes/families.py) names its layout; `add_family_facts` builds
the pass's layout object from the row, `route_call` hands each call to it.
Blocks: by the ids the host sets (`block_type` / `block_index`), or, for families without ids
(`block_ids=False`), by counting the routed calls of the pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .blocks import BlockSelection


@dataclass(frozen=True)
class Route:
    """A guided call: "cross" (text keys only) or "joint" (MMDiT) at `block`; for joint, the text span and the
    end of the guided rows (rows from `guided_stop` on are reference tokens and keep the dense output)."""

    kind: str
    block: tuple[str, int]
    text_range: tuple[int, int] | None = None
    guided_stop: int | None = None
    guided_start: int = 0  # rows before it keep the dense output too (MiniMax H3's audio between text and video)


@dataclass
class PassInfo:
    """Facts of one model pass (one apply_model call) that every layout shares, written by the APPLY_MODEL
    wrapper; `layout` holds the pass's own layout state (`LAYOUTS[kind]`; `add_family_facts` fills it in)."""

    kind: str  # the layout (LAYOUTS key): "unet", "mmdit" or "cross"
    text_len: int  # text tokens (keys of cross-attention; text span of joint attention)
    image_tokens: int = 0  # tokens of the main latent, 0 when unknown
    block_ids: bool = True  # False: count the routed calls to number the blocks (SD3, LTX)
    in_cross: bool = False  # the host's attn2 marker: True between the attn2 patch pair patch.py adds (UNet)
    joint_calls: int = 0  # without block ids: routed calls seen so far in this pass
    call_groups: tuple[tuple[str, int], ...] = ()  # without block ids: (group, block count) in call order
    routed: int = 0  # calls route_call sent to guidance in this pass (the run-level "nothing guided" check)
    layout: Layout | None = None  # None: the default state of LAYOUTS[kind]

    def __post_init__(self):
        if self.layout is None:
            self.layout = LAYOUTS.get(self.kind, Layout)()


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


def _padded(n: int, net) -> int:
    """`n` tokens padded up to the net's `pad_tokens_multiple` (Z-Image pads caption and image to 32)."""
    multiple = int(getattr(net, "pad_tokens_multiple", 0) or 0)
    return -(-n // multiple) * multiple if multiple > 1 else n


def add_family_facts(info: PassInfo, family, net, latent_shape, extra: dict | None) -> PassInfo:
    """`info` completed from the family row (nodes/families.py) and apply_model's keyword conditioning `extra`:
    image tokens counted with the row's `patch` (net attributes or a number) where the net's `patch_size` is not
    the count's; the `text_conds` tokens joined to the text span, padded up to the net's multiple (Z-Image);
    without block ids, the `block_counts` groups in call order (HiDream); the pass's layout (`LAYOUTS[kind].of`)."""
    conds, patch, counts = extra or {}, family.patch, family.block_counts
    if patch and latent_shape is not None:
        patch = patch if isinstance(patch, int) else tuple(getattr(net, name, None) or 1 for name in patch)
        info.image_tokens = image_token_count(latent_shape, patch)
    info.text_len += sum(n * _cond_tokens(conds.get(name)) for name, n in family.text_conds)
    info.text_len = _padded(info.text_len, net)
    if not family.block_ids and counts and not callable(counts) and len(counts) > 1:
        try:
            info.call_groups = tuple((group, len(getattr(net, attr))) for group, attr in counts)
        except (AttributeError, TypeError):
            pass
    info.layout = LAYOUTS.get(info.kind, Layout).of(family, net, info, conds)
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
    try:
        return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) and len(value) == 2 else None
    except (TypeError, ValueError):
        return None


def _reference_tokens(transformer_options: dict) -> int:
    """Reference-latent tokens the host says it appended (FLUX Kontext, Qwen-Image-Edit on 0.3x), else 0."""
    refs = transformer_options.get("reference_image_num_tokens")
    try:
        return sum(int(r) for r in refs) if isinstance(refs, (tuple, list)) else 0
    except (TypeError, ValueError):
        return 0


class Layout:
    """A layout's rule and its state for one pass; this base routes nothing (a pass whose packed sequence its row
    cannot read stays dense)."""

    @classmethod
    def of(cls, family, net, info: PassInfo, conds: dict) -> Layout:
        return cls()  # the state of a pass of `family` from its row, net, shared facts and conditioning

    def route(self, info: PassInfo, q_len: int, k_len: int, options: dict, selection: BlockSelection) -> Route | None:
        return None  # the Route of a call with q_len queries and k_len keys, or None to leave it dense


class Unet(Layout):
    """UNet cross-attention: attn2 calls (the attn2 patch pair marks them: `info.in_cross`) whose keys are the text
    tokens, in a selected block (the host's `transformer_options["block"]`)."""

    def route(self, info, q_len, k_len, transformer_options, selection):
        if not info.in_cross or k_len != info.text_len:
            return None
        block = transformer_options.get("block")
        if not (isinstance(block, (tuple, list)) and len(block) == 2):
            return None
        group, index = str(block[0]), int(block[1])
        return Route("cross", (group, index)) if selection.contains(group, index) else None


@dataclass
class Joint(Layout):
    """Joint attention [text | image | reference] ("first") or [image | text] ("last"), image rows × text keys
    guided. The text span is `text_len`, or the host's `img_slice` (FLUX single blocks, Qwen-Image on 0.3x); the
    sequence holds at least the image tokens next to it. Reference rows (the host's `reference_image_num_tokens`:
    FLUX Kontext, Qwen-Image-Edit) and rows of streams packed between text and image (MiniMax H3's audio,
    OmniGen2's references) keep the dense output (`Route.guided_stop`, `guided_start`)."""

    text_order: str = "first"  # text before ("first") or after ("last") the image tokens
    seq_len: int = 0  # exact length of [text | streams | image (+ pad)]: calls of other lengths stay dense; 0: any
    stream_tokens: int = 0  # rows of other streams packed between text and image (MiniMax H3): kept dense

    @classmethod
    def of(cls, family, net, info, conds):
        """From the row's `text_order`, `stream_rows` (None: unreadable, the pass stays dense), `exact_sequence`."""
        rows = 0 if family.stream_rows is None else family.stream_rows(conds, net)
        if rows is None:
            return Layout()
        order = family.text_order(net) if callable(family.text_order) else family.text_order
        seq_len = 0
        if family.exact_sequence and info.image_tokens > 0:
            seq_len = info.text_len + int(rows) + _padded(info.image_tokens, net)
        return cls(order, seq_len, int(rows))

    def route(self, info, q_len, k_len, transformer_options, selection):
        if q_len != k_len or (self.seq_len and q_len != self.seq_len):
            return None
        text_len = info.text_len
        host = _int_pair(transformer_options.get("img_slice"))
        if self.text_order == "first" and host is not None and host[1] == q_len and 0 < host[0] < q_len:
            text_len = host[0]  # the host says where the image starts: [txt_len, total]
        if q_len < text_len + max(info.image_tokens, 1):
            return None
        block = _host_block(info, transformer_options)
        if block is None or not selection.contains(*block):
            return None
        if self.text_order == "last":
            start = q_len - text_len
            stop = info.image_tokens if info.image_tokens > 0 else start
            return Route("joint", block, (start, q_len), min(stop, start))
        refs = _reference_tokens(transformer_options)
        if 0 < refs < q_len - text_len:
            stop = q_len - refs
        else:
            stop = text_len + self.stream_tokens + info.image_tokens if info.image_tokens > 0 else q_len
        return Route("joint", block, (0, text_len), stop, text_len + self.stream_tokens if self.stream_tokens else 0)


@dataclass
class Cross(Layout):
    """DiT cross-attention whose keys are the text only (Wan, LTX-Video): a call with `text_len` keys and another
    query length is the text cross-attention; self-attention (q, k of one length, the block's first call), image
    cross-attention (Wan I2V's CLIP tokens: another key length) and other streams' queries (LTX-2's audio) stay
    dense; under host block ids, a text cross-attention after the block's second self-attention is a side
    branch's (Wan VACE's control blocks reuse the main block's id) and stays dense."""

    dense_query_lens: tuple[int, ...] = ()  # query lengths of the other latent streams x packs (LTX-2's audio)
    selfs: dict = field(default_factory=dict)  # host block id (once it had a call) -> its self-attentions so far
    texts: set = field(default_factory=set)  # host block ids whose text cross-attention was routed

    @classmethod
    def of(cls, family, net, info, conds):
        """The other streams' query lengths from `latent_shapes` (LTX-2: video, then audio (B, C, T, F): T)."""
        shapes = conds.get("latent_shapes")
        if isinstance(shapes, (list, tuple)) and all(isinstance(sh, (list, tuple)) for sh in shapes):
            return cls(tuple(int(sh[2]) for sh in shapes[1:] if len(sh) >= 3))
        return cls()

    def route(self, info, q_len, k_len, transformer_options, selection):
        first, key = True, None
        if info.block_ids:  # the host numbers its blocks: remember which block has had its self-attention
            key = (transformer_options.get("block_type"), transformer_options.get("block_index"))
            first = key not in self.selfs
            self.selfs[key] = self.selfs.get(key, 0) + (q_len == k_len and (first or k_len != info.text_len))
        if k_len != info.text_len or q_len < max(info.image_tokens, 1):
            return None
        if q_len == k_len and (first or not info.block_ids):
            return None  # q and k of one length: self-attention unless the block already ran it
        if q_len in self.dense_query_lens and q_len != info.image_tokens:
            return None  # another stream's queries (LTX-2 audio) keep the dense output
        if key is not None:  # a side branch's text cross-attention (after the block's own) stays dense
            if key in self.texts and self.selfs.get(key, 0) > 1:
                return None
            self.texts.add(key)
        block = _host_block(info, transformer_options)
        if block is None or not selection.contains(*block):
            return None
        return Route("cross", block)


LAYOUTS: dict[str, type[Layout]] = {"unet": Unet, "mmdit": Joint, "cross": Cross}


def route_call(info: PassInfo, q_len: int, k_len: int, transformer_options: dict,
               selection: BlockSelection) -> Route | None:
    """The Route of an attention call with `q_len` queries and `k_len` keys, or None to leave it dense."""
    if info.text_len <= 0:
        return None
    route = info.layout.route(info, q_len, k_len, transformer_options, selection)
    if route is not None:
        info.routed += 1
    return route
