"""Which model families the nodes guide: one `Family` row each, recognised by class lineage (no ComfyUI import).

How to add a family (a row and a layout rule, never a new code path):
1. Add a `Family(...)` row to `FAMILY_ROWS` below:
   - `key`: its row in gag_core.presets.PRESETS (add that row too; `blocks` there uses the `kind` grammar);
   - `kind`: the block grammar of nodes/blocks.py: "unet" (input / middle / output) or "mmdit" (double /
     single); DiT families whose blocks set `block_type="double"` (Wan) or have no ids (LTX) use "mmdit";
   - `layout`: the name of the routing rule in `routing.LAYOUTS` that picks the guided calls and their text
     span: "unet" (UNet attn2), "mmdit" (joint [text | image | reference] or, with `text_order="last"`,
     [image | text]), "cross" (DiT cross-attention: keys = the text only, e.g. Wan, LTX-Video);
     a new layout is one class in routing.py (its per-pass state and rule) registered in `routing.LAYOUTS`;
   - `classes`: exact comfy.model_base class names (a subclass can change the layout: list it only when tested);
   - `variants`: subclasses of those classes the host ships, each checked by a tiny-model test, as
     (class name, what is guided and what stays dense); a subclass in no row and not in `PASS_THROUGH` passes
     through with a warning naming it and its supported ancestor (`classify`);
   - `modes`: conditioning modes the routing guides, where a class has several (MiniMax H3: t2va, fl2va,
     ref2va); read by tools/coverage.py; () = every mode;
   - `nets`: the diffusion network class names the model must carry (a BaseModel around another net is refused);
   - `block_ids`: False when the host sets no block ids (SD3, LTX): the routed calls are counted instead;
   - `text_order`: joint layouts only, "first" ([text | image]) or "last" ([image | text]);
   - `block_counts`: how to read the model's block numbers, so a typed `blocks` item that matches no block is
     an error listing the real ones: pairs (group, attribute of the diffusion net whose len() is that group's
     block count, numbered 0 … n−1 as the host's `block_index`), e.g. `(("double", "blocks"),)` for Wan, or a
     callable(net) -> {group: block numbers} (`blocks.unet_attention_blocks`). Leave it empty when unsure:
     any number is then accepted, and a sampling run that guides nothing logs a warning saying why.
2. `GuidancePatch.pass_info` (nodes/patch.py) and `routing.add_family_facts` build the shared facts (`PassInfo`)
   and the layout's own object for the pass (`LAYOUTS[...].of`) from the row: a quirk is data on the row (`patch`,
   `text_conds`, `exact_sequence`, `text_order`) or a function it names (`stream_rows`), never a PassInfo field.
3. Test it on a tiny model of the host's own classes (tests/test_comfyui_tiny.py, test_comfyui_joint_families.py,
   test_comfyui_image_families.py; variants: test_comfyui_wan_variants.py; MiniMax H3: test_comfyui_minimax.py).
   tools/coverage.py then counts its templates as guided (docs/coverage.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .blocks import unet_attention_blocks


@dataclass(frozen=True)
class Family:
    """A guided family: preset key, block grammar, routing layout, the classes that carry it."""

    key: str  # key of gag_core.presets.PRESETS
    kind: str  # block grammar (nodes/blocks.py GROUPS): "unet" or "mmdit"
    label: str
    block_ids: bool = True  # False: the host gives no block ids (SD3, LTX); routed calls are counted instead
    layout: str = ""  # routing.LAYOUTS key; "" = same as kind ("unet" or "mmdit")
    classes: tuple[str, ...] = ()  # comfy.model_base class names
    nets: tuple[str, ...] = ()  # diffusion network class names
    # joint layouts: text before ("first") or after ("last") the image tokens, or callable(net) -> either
    text_order: str | Callable = "first"
    # ((group, net attribute whose len() is the count), ...) or callable(net) -> {group: numbers}; () = unknown
    block_counts: tuple[tuple[str, str], ...] | Callable = ()
    # joint: (apply_model conditioning keyword, times) whose tokens join the text span (routing.add_family_facts)
    text_conds: tuple[tuple[str, int], ...] = ()
    exact_sequence: bool = False  # joint: only calls exactly [text | image (+ pad)] are guided (packed refs: dense)
    # joint: callable(apply_model conditioning) -> rows packed between the text and the guided rows (kept dense);
    # None from it = a pass whose layout cannot be read: it stays dense
    stream_rows: Callable | None = None
    variants: tuple[tuple[str, str], ...] = ()  # (checked subclass of `classes`, what it guides / keeps dense)
    modes: tuple[str, ...] = ()  # conditioning modes guided (coverage accounting); () = every mode
    # image tokens: by the net's attributes (p,) or (p_t, p, p), or a number (1: the latent is its token grid)
    patch: tuple[str, ...] | int = ()  # () = by the net's `patch_size`

    @property
    def rule(self) -> str:
        """The routing layout this family uses."""
        return self.layout or self.kind


_UNET_NETS = ("UNetModel",)
_FLUX_BLOCKS = (("double", "double_blocks"), ("single", "single_blocks"))
_MINI_TRAIN_PATCH = ("patch_temporal", "patch_spatial", "patch_spatial")  # MiniTrainDIT's (t, h, w) patches


def reference_rows(conds: dict, net=None) -> int:
    """OmniGen2 / Boogu: rows of the reference images packed between the text and the target image
    ([text | references | image]): ⌈h/p⌉·⌈w/p⌉ per `ref_latents` entry (B, C, h, w), p = the net's patch
    size."""
    p = max(int(getattr(net, "patch_size", 2) or 2), 1)
    return sum(-(-int(r.shape[-2]) // p) * -(-int(r.shape[-1]) // p) for r in conds.get("ref_latents") or ()
               if getattr(r, "ndim", 0) >= 4)


def packed_stream_rows(conds: dict, net=None) -> int | None:
    """MiniMax H3: rows between the text and the target video in the host's packed sequence
    [text | keyframe cond rows or reference blocks | target audio | target video], read from the segment
    table (`minimax_payload["layout"].segments`: (start, stop, kind)) the host builds once per sampling run;
    without it, the latent streams after the first ((B, C, 2, T) audio: 2·T rows each); None when the pass
    packs conditioning rows that neither tells (then it stays dense)."""
    payload = conds.get("minimax_payload")
    payload = payload if isinstance(payload, dict) else {}
    segments = getattr(payload.get("layout"), "segments", None)
    if segments:
        text = next((b for a, b, kind in segments if kind == "text"), None)
        video = next((a for a, b, kind in segments if kind == "video"), None)
        return None if text is None or video is None else int(video) - int(text)
    if payload.get("keyframes") or payload.get("refs"):
        return None
    shapes = conds.get("latent_shapes")
    if not isinstance(shapes, (list, tuple)) or len(shapes) < 2:
        return 0
    total = 0
    for shape in shapes[1:]:
        rows = 1
        for n in tuple(shape)[2:]:
            rows *= int(n)
        total += rows
    return total


def flux_layers_text_order(net) -> str:
    """Text position in FLUX-style blocks: ComfyUI 0.8's HunyuanVideo flags `flipped_img_txt` ([image | text])."""
    blocks = getattr(net, "double_blocks", None)
    return "last" if blocks and getattr(blocks[0], "flipped_img_txt", False) else "first"

FAMILY_ROWS: tuple[Family, ...] = (
    Family("sd15", "unet", "SD 1.x / 2.x", classes=("BaseModel", "SD15_instructpix2pix"), nets=_UNET_NETS,
           block_counts=unet_attention_blocks),
    Family("sdxl", "unet", "SDXL", classes=("SDXL", "SDXLRefiner", "SDXL_instructpix2pix"), nets=_UNET_NETS,
           block_counts=unet_attention_blocks),
    Family("flux1", "mmdit", "FLUX.1", classes=("Flux",), nets=("Flux",), block_counts=_FLUX_BLOCKS, variants=(
        ("LongCatImage", "LongCat-Image: FLUX blocks, text position ids shifted, no pooled vector; edit references "
                         "stay dense"),
    )),
    Family("flux2", "mmdit", "FLUX.2", classes=("Flux2",), nets=("Flux",), block_counts=_FLUX_BLOCKS),
    # Mage-Flow (`MageFlow`, a QwenImage subclass on 0.33) runs Qwen-Image's blocks on its own net: patch 1 (one
    # token per latent pixel), [text | image | reference], `reference_image_num_tokens` set (tests/
    # test_comfyui_image_families.py).
    Family("qwen_image", "mmdit", "Qwen-Image", classes=("QwenImage",),
           nets=("QwenImageTransformer2DModel", "MageFlowTransformer2DModel"),
           block_counts=(("double", "transformer_blocks"),), variants=(
               ("MageFlow", "Mage-Flow: Qwen-Image's joint blocks on a patch-1 net; edit references stay dense"),
           )),
    Family("sd3", "mmdit", "SD3 / SD3.5", block_ids=False, classes=("SD3",),
           nets=("OpenAISignatureMMDITWrapper", "MMDiT"), block_counts=(("double", "joint_blocks"),)),
    # Joint / single-stream image and video DiTs (tests/test_comfyui_joint_families.py has what each host sends).
    # Z-Image (supported_models.ZImage) builds a Lumina2: [caption padded to 32 | image padded to 32].
    Family("zimage", "mmdit", "Z-Image / Lumina 2", classes=("Lumina2",), nets=("NextDiT",), exact_sequence=True,
           block_counts=(("double", "layers"),)),
    Family("chroma", "mmdit", "Chroma / Chroma Radiance", classes=("Chroma", "ChromaRadiance"),
           nets=("Chroma", "ChromaRadiance"), block_counts=_FLUX_BLOCKS),
    Family("hunyuan_video", "mmdit", "HunyuanVideo / 1.5", classes=("HunyuanVideo", "HunyuanVideo15"),
           nets=("HunyuanVideo",), text_order=flux_layers_text_order, text_conds=(("txt_byt5", 1), ("clip_fea", 1)),
           exact_sequence=True, block_counts=_FLUX_BLOCKS, variants=(
               ("HunyuanVideo15_SR_Distilled", "1.5 super-resolution: the same blocks; only the channels it "
                                               "concatenates to the latent differ"),
           )),
    # HunyuanImage 2.1 runs HunyuanVideo's net on images: 2-D patches, [text | byT5 | image] (0.8.0: [image |
    # text]). Its refiner (HunyuanImage21Refiner, 3-D patches on a video-shaped latent) is not checked: it passes.
    Family("hunyuan_image21", "mmdit", "HunyuanImage 2.1", classes=("HunyuanImage21",),
           nets=("HunyuanVideo",), text_order=flux_layers_text_order, text_conds=(("txt_byt5", 1),),
           exact_sequence=True, block_counts=_FLUX_BLOCKS),
    # JoyImage (0.33): double blocks joint over [target image | references | text], block ids set; reference rows
    # (edit) stay dense.
    Family("joyimage", "mmdit", "JoyImage", classes=("JoyImage",), nets=("JoyImageTransformer3DModel",),
           text_order="last", block_counts=(("double", "double_blocks"),)),
    # PixelDiT (pixel space): patch blocks joint over [text (cut to txt_max_length) | image patches], no block ids;
    # then pixel blocks attend the patches alone (dense). A prompt past txt_max_length is another length: dense.
    Family("pixeldit", "mmdit", "PixelDiT", block_ids=False, classes=("PixelDiTT2I",), nets=("PixDiT_T2I",),
           exact_sequence=True, block_counts=(("double", "patch_blocks"),)),
    # CogVideoX (0.33): joint [text | video] without block ids (T5, padded to 226); 1.5 patches frames too.
    Family("cogvideox", "mmdit", "CogVideoX", block_ids=False, classes=("CogVideoX",),
           nets=("CogVideoXTransformer3DModel",), exact_sequence=True, block_counts=(("double", "blocks"),),
           patch=("patch_size_t", "patch_size", "patch_size")),
    Family("krea2", "mmdit", "Krea 2", classes=("Krea2",), nets=("SingleStreamDiT",), patch=("patch",),
           block_counts=(("single", "blocks"),)),
    Family("hidream", "mmdit", "HiDream", block_ids=False, classes=("HiDream",),
           nets=("HiDreamImageTransformer2DModel",), text_order="last",
           text_conds=(("encoder_hidden_states_llama3", 2),), exact_sequence=True,
           block_counts=(("double", "double_stream_blocks"), ("single", "single_stream_blocks")),
           modes=("i1",)),  # HiDream-E1 edits (image_cond packed beside the target) are another length: dense
    # MiniMax H3: one packed batch-1 sequence, no block ids: [text | target audio | target video] (t2va),
    # [text | keyframe cond rows | audio | video] (fl2va), [text | reference blocks | audio | video] (ref2va).
    # The target video rows are guided against the text span; keyframe rows, reference blocks and every audio row
    # keep the dense output. The Qwen3-VL vision tokens of an image prompt sit inside the text span (the encoder's
    # output, `c_crossattn`): they are conditioning keys, as in Qwen-Image-Edit.
    Family("minimax_h3", "mmdit", "MiniMax H3", block_ids=False, classes=("MiniMaxH3",),
           nets=("MiniMaxH3Model",), exact_sequence=True, stream_rows=packed_stream_rows,
           block_counts=(("double", "blocks"),), modes=("t2va", "fl2va", "ref2va")),
    # Video DiTs with text cross-attention. Wan 2.1 and 2.2 A14B (T2V, I2V) are WAN21, the 5B TI2V is WAN22;
    # blocks set block_type "double" and block_index. LTX-Video (LTXV) and LTX-2 (LTXAV) set no block ids.
    # Variants (tests/test_comfyui_wan_variants.py): each block's text cross-attention is guided; what each adds
    # stays dense.
    Family("wan", "mmdit", "Wan 2.1 / 2.2", layout="cross", classes=("WAN21", "WAN22"), nets=("WanModel",),
           block_counts=(("double", "blocks"),), variants=(
               ("WAN21_Vace", "VACE: the control blocks (run after main block i under its id) stay dense"),
               ("WAN21_Camera", "Camera: the camera adapter adds to the patch embedding, no attention of its own"),
               ("WAN21_HuMo", "HuMo: the audio cross-attention (after the text one) stays dense"),
               ("WAN22_S2V", "S2V: the text cross-attention reads the whole stream (video, reference, motion "
                             "rows); the audio injector stays dense"),
               ("WAN22_Animate", "Animate: face adapter and pose embedding stay dense, as the I2V CLIP "
                                 "cross-attention"),
               ("WAN_Animate2", "Animate 2: the pose branch (its blocks' attention) and the CLIP cross-attention "
                                "stay dense"),
               ("WAN21_SCAIL", "SCAIL: the text cross-attention reads the whole [reference | video | pose] "
                               "stream; the CLIP cross-attention stays dense"),
               ("WAN21_SCAIL2", "SCAIL-2: as SCAIL, with its identity mask stream added to the embedding"),
               ("WAN21_FlowRVS", "FlowRVS: Wan's own net under another model type"),
               ("WAN22_WanDancer", "WanDancer: the music encoder and injector stay dense (called without "
                                   "transformer_options), as the two CLIP cross-attentions"),
           )),
    # OmniGen2 and Boogu (0.33): no block ids; caption, image and reference refiners run alone first, then one
    # sequence [text | references | image] (Boogu: double-stream blocks joint over it, with an image-only
    # self-attention each, then single-stream blocks); reference rows stay dense.
    Family("omnigen2", "mmdit", "OmniGen2", block_ids=False, classes=("Omnigen2",),
           nets=("OmniGen2Transformer2DModel",), exact_sequence=True, stream_rows=reference_rows,
           block_counts=(("double", "layers"),)),
    Family("boogu", "mmdit", "Boogu", block_ids=False, classes=("Boogu",), nets=("BooguTransformer2DModel",),
           exact_sequence=True, stream_rows=reference_rows,
           block_counts=(("double", "double_stream_layers"), ("single", "single_stream_layers"))),
    # Ideogram 4: one stream [text | image] without block ids (the unconditional pass runs the image alone: no
    # text, dense); padded text is a segment of its own under a block-diagonal mask.
    Family("ideogram4", "mmdit", "Ideogram 4", block_ids=False, classes=("Ideogram4",),
           nets=("Ideogram4Transformer2DModel",), exact_sequence=True, patch=1,
           block_counts=(("double", "layers"),)),
    # Lens: dual-stream MMDiT [image | text] (text of 4 encoder layers side by side in the channels), block ids
    # set; padded text masked (additive key mask); the latent is its token grid.
    Family("lens", "mmdit", "Lens", classes=("Lens",), nets=("LensTransformer2DModel",), text_order="last",
           exact_sequence=True, patch=1, block_counts=(("double", "transformer_blocks"),)),
    # Kandinsky 5 (video and image): text blocks (text self-attention, no block ids yet), then visual blocks with
    # ids: self-attention, then text cross-attention.
    Family("kandinsky5", "mmdit", "Kandinsky 5", layout="cross", classes=("Kandinsky5", "Kandinsky5Image"),
           nets=("Kandinsky5",), block_counts=(("double", "visual_transformer_blocks"),)),
    # Cosmos-Predict2's MiniTrainDIT and Anima (MiniTrainDIT + an LLM adapter whose output, padded to 512, is the
    # context): self-attention then text cross-attention per block; 0.33 sets `block_index` only.
    Family("anima", "mmdit", "Anima", layout="cross", classes=("Anima",), nets=("Anima",),
           patch=_MINI_TRAIN_PATCH, block_counts=(("double", "blocks"),)),
    # 0.8.0's MiniTrainDIT sets no block ids: Cosmos-Predict2's calls are counted (self-attention: q, k of one
    # length; a text exactly as long as the image would read as self-attention there and stay dense).
    Family("cosmos_predict2", "mmdit", "Cosmos-Predict2", layout="cross", block_ids=False, patch=_MINI_TRAIN_PATCH,
           classes=("CosmosPredict2",), nets=("MiniTrainDIT",), block_counts=(("double", "blocks"),)),
    Family("ltxv", "mmdit", "LTX-Video / LTX-2", layout="cross", block_ids=False, classes=("LTXV", "LTXAV"),
           nets=("LTXVModel", "LTXAVModel"), block_counts=(("double", "transformer_blocks"),)),
)

FAMILIES: dict[str, Family] = {f.key: f for f in FAMILY_ROWS}

# comfy.model_base class name -> family key (derived from the rows).
MODEL_CLASSES: dict[str, str] = {cls: f.key for f in FAMILY_ROWS for cls in f.classes}

# family key -> the diffusion network class names it must carry (derived from the rows).
DIFFUSION_CLASSES: dict[str, tuple[str, ...]] = {f.key: f.nets for f in FAMILY_ROWS}


# comfy.model_base subclass name -> family key, for the checked variants (derived from the rows).
VARIANT_CLASSES: dict[str, str] = {cls: f.key for f in FAMILY_ROWS for cls, _ in f.variants}

_ROOT = "BaseModel"  # every model_base class derives from it: lineage through it alone relates nothing


def lineage(base_model) -> tuple[str, ...]:
    """The comfy.model_base class names of a model's type, itself first (its MRO within model_base)."""
    return tuple(c.__name__ for c in type(base_model).__mro__ if c.__module__.endswith("model_base"))


def classify(mro: tuple[str, ...]) -> tuple[Family | None, str]:
    """(family, "") for a guided class, (None, reason) for a known pass-through or an unchecked subclass of a
    guided class, (None, "") for a class the rows do not know; `mro` = `lineage(model)` (class first)."""
    if not mro:
        return None, ""
    name = mro[0]
    if name in PASS_THROUGH:
        return None, PASS_THROUGH[name]
    key = MODEL_CLASSES.get(name) or VARIANT_CLASSES.get(name)
    if key is not None:
        return FAMILIES[key], ""
    for parent in mro[1:]:
        if parent != _ROOT and parent in MODEL_CLASSES:
            fam = FAMILIES[MODEL_CLASSES[parent]]
            return None, (f"{name} is a subclass of {parent} ({fam.label}) that nobody has checked: its attention "
                          "layout may differ, so it is not guided")
    return None, ""


def detect_family(base_model) -> Family | None:
    """The Family of a comfy.model_base model (ModelPatcher.model), or None when the nodes do not support it."""
    if not type(base_model).__module__.endswith("model_base"):
        return None
    family, _ = classify(lineage(base_model))
    if family is None:
        return None
    net = getattr(base_model, "diffusion_model", None)
    if net is None or not any(c.__name__ in family.nets for c in type(net).__mro__):
        return None  # a variant's net subclasses the row's (VACE: VaceWanModel < WanModel)
    return family


# Known comfy.model_base classes that pass through unguided, and why (the warning quotes it; README lists them).
PASS_THROUGH: dict[str, str] = {
    "QwenImage21": "Qwen-Image 2.1's block-causal attention (target queries against a cached text prefix, q "
                   "length ≠ k length) is not in the ComfyUI versions tested (0.8.0, 0.33.0)",
    "ZImagePixelSpace": "the pixel-space Z-Image (NextDiTPixelSpace) has not been tested",
    "HunyuanVideoI2V": "the image-to-video variant has not been tested",
    "HunyuanVideoSkyreelsI2V": "the SkyReels image-to-video variant has not been tested",
    "HiDreamO1": "HiDream-O1 is a unified LLM-style transformer: its prompt prefix runs causally through SDPA "
                 "directly (no override sees it) and only the generation queries reach the override, against "
                 "[prefix | generation] keys (q length ≠ k length, the prefix KV-cached): a layout the nodes do not "
                 "route",
    "ErnieImage": "ERNIE-Image calls its attention without transformer_options (comfy/ldm/ernie/model.py), so "
                  "no attention override ever sees it",
    "WAN21_CausalAR": "Wan causal autoregressive generation (causal forcing) runs its frame blocks against a KV "
                      "cache of earlier frames, calling its blocks without transformer_options "
                      "(comfy/ldm/wan/ar_model.py forward_block): no attention override ever sees them",
}


def unsupported_reason(base_model) -> str:
    """Why a known model class passes through unguided ("" when the class is not a known one)."""
    if not type(base_model).__module__.endswith("model_base"):
        return ""
    return classify(lineage(base_model))[1]


def supported_labels() -> str:
    """The supported families for messages: 'SD 1.x / 2.x, SDXL, ...'."""
    return ", ".join(f.label for f in FAMILY_ROWS)


def describe_model(base_model) -> str:
    """A short name for log messages: model class and diffusion network class."""
    net = getattr(base_model, "diffusion_model", None)
    return f"{type(base_model).__name__} ({type(net).__name__ if net is not None else 'no diffusion_model'})"
