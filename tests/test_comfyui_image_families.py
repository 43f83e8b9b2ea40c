"""0.33's newer image families on tiny seeded models of the host's own classes (skipped where the host lacks them).

How text enters, read from the host's code (ComfyUI 0.33.0) and checked here by recording every attention call:

| class (net) | text enters by | layout | guided | dense |
|---|---|---|---|---|
| MageFlow (MageFlowTransformer2DModel), a QwenImage subclass | Qwen-Image's joint blocks (`block_type` "double", `block_index`) | [text T | image | reference], patch 1: one token per latent pixel; `reference_image_num_tokens` set | image rows × text keys | reference rows (edit), text rows |
| Anima (Anima = MiniTrainDIT + LLM adapter) | cross-attention of every block, keys = the adapter's output padded to 512 (the conditioning) | per block: self-attention, then text cross-attention; `block_index` only (no `block_type`) | text cross-attention | self-attention |
| CosmosPredict2 (MiniTrainDIT) | as Anima, T5 keys | as Anima | text cross-attention | self-attention |
"""
from __future__ import annotations

import pytest
import torch

from conftest import pack_module, seeded_patcher
from test_comfyui_nodes import GAG, Recorder
from test_comfyui_tiny import comfy  # noqa: F401  (fixture)
from test_comfyui_video import CallLog

pytestmark = pytest.mark.comfyui

MINI_TRAIN_DIT = dict(max_img_h=64, max_img_w=64, max_frames=8, in_channels=16, out_channels=16, patch_spatial=2,
                      patch_temporal=1, concat_padding_mask=True, model_channels=64, num_blocks=2, num_heads=2,
                      mlp_ratio=2.0, crossattn_emb_channels=32, pos_emb_cls="rope3d", use_adaln_lora=True,
                      adaln_lora_dim=16, extra_per_block_abs_pos_emb=False)
# family -> (supported_models class, model_base class, unet_config, latent shape, family key)
FAMILIES = {
    "mage_flow": ("MageFlow", "MageFlow", dict(image_model="mage_flow", in_channels=128, out_channels=128, num_layers=2,
                                               attention_head_dim=32, num_attention_heads=2, joint_attention_dim=32,
                                               axes_dims_rope=(8, 12, 12)), (1, 128, 4, 4), "qwen_image"),
    "anima": ("Anima", "Anima", dict(image_model="anima", **MINI_TRAIN_DIT), (1, 16, 1, 8, 8), "anima"),
    "cosmos_predict2": ("CosmosT2IPredict2", "CosmosPredict2", dict(image_model="cosmos_predict2", **MINI_TRAIN_DIT),
                        (1, 16, 1, 8, 8), "cosmos_predict2"),
}
OMNIGEN = dict(patch_size=2, in_channels=16, hidden_size=64, num_refiner_layers=1, num_attention_heads=2,
               num_kv_heads=1, multiple_of=16, axes_dim_rope=(8, 12, 12), axes_lens=(300, 512, 512))
FAMILIES.update({
    "omnigen2": ("Omnigen2", "Omnigen2", dict(image_model="omnigen2", num_layers=2, text_feat_dim=32, **OMNIGEN),
                 (1, 16, 8, 8), "omnigen2"),
    "boogu": ("Boogu", "Boogu", dict(image_model="boogu", num_layers=1, num_double_stream_layers=1,
                                     instruction_feat_dim=32, **OMNIGEN), (1, 16, 8, 8), "boogu"),
})
FAMILIES["ideogram4"] = ("Ideogram4", "Ideogram4", dict(image_model="ideogram4", in_channels=128, num_layers=2,
                                                         num_attention_heads=2, attention_head_dim=32,
                                                         intermediate_size=64, adaln_dim=32, llm_features_dim=32,
                                                         rope_theta=10000, mrope_section=[4, 6, 6]),
                          (1, 128, 4, 4), "ideogram4")
FAMILIES["kandinsky5_image"] = ("Kandinsky5Image", "Kandinsky5Image", dict(
    image_model="kandinsky5", in_visual_dim=16, out_visual_dim=16, in_text_dim=32, in_text_dim2=32, time_dim=32,
    model_dim=64, ff_dim=128, visual_embed_dim=64, patch_size=(1, 2, 2), num_text_blocks=1, num_visual_blocks=2,
    axes_dims=(8, 12, 12)), (1, 16, 8, 8), "kandinsky5")
FAMILIES["longcat"] = ("LongCatImage", "LongCatImage", dict(
    image_model="flux", in_channels=16, out_channels=16, vec_in_dim=None, context_in_dim=32, hidden_size=64,
    mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[8, 12, 12], theta=10000, patch_size=2,
    qkv_bias=True, guidance_embed=False, txt_ids_dims=[1, 2]), (1, 16, 8, 8), "flux1")
FAMILIES["lens"] = ("Lens", "Lens", dict(image_model="lens", patch_size=2, in_channels=128, out_channels=32,
                                          num_layers=2, attention_head_dim=32, num_attention_heads=2, enc_hidden_dim=8,
                                          axes_dims_rope=(8, 12, 12)), (1, 128, 4, 4), "lens")
FAMILIES["joyimage"] = ("JoyImage", "JoyImage", dict(image_model="joyimage", patch_size=[1, 2, 2], in_channels=16,
                                                     hidden_size=64, num_attention_heads=2, text_dim=32, num_layers=2,
                                                     rope_dim_list=[8, 12, 12]), (1, 16, 1, 8, 8), "joyimage")
FAMILIES["pixeldit"] = ("PixelDiTT2I", "PixelDiTT2I", dict(
    image_model="pixeldit_t2i", in_channels=3, num_groups=2, hidden_size=64, pixel_hidden_size=4,
    pixel_attn_hidden_size=32, pixel_num_groups=2, patch_depth=2, pixel_depth=1, patch_size=4, txt_embed_dim=32,
    txt_max_length=16), (1, 3, 16, 16), "pixeldit")
FAMILIES["kandinsky5_video"] = ("Kandinsky5", "Kandinsky5", dict(
    FAMILIES["kandinsky5_image"][2], visual_embed_dim=132), (1, 16, 2, 8, 8), "kandinsky5")  # + image cond, mask
_COGVIDEOX = dict(image_model="cogvideox", num_attention_heads=2, attention_head_dim=32, in_channels=16,
                 out_channels=16, time_embed_dim=32, text_embed_dim=32, num_layers=2, sample_width=8, sample_height=8,
                 sample_frames=5, max_text_seq_length=16, use_rotary_positional_embeddings=True)
FAMILIES["cogvideox"] = ("CogVideoX_T2V", "CogVideoX", _COGVIDEOX, (1, 16, 2, 8, 8), "cogvideox")
FAMILIES["cogvideox15"] = ("CogVideoX_T2V", "CogVideoX", dict(_COGVIDEOX, patch_size_t=2, sample_frames=9),
                           (1, 16, 4, 8, 8), "cogvideox")
# 2 frames × 4 × 4 (others: IMAGE_TOKENS)
TOKENS = {"kandinsky5_video": 2 * 16, "cogvideox": 2 * 16, "cogvideox15": 2 * 16}
# guided blocks of one pass (no block ids on these: counted calls, double then single)
BLOCKS = {"boogu": [("double", 0), ("single", 0)],
          "longcat": [("double", 0), ("double", 1), ("single", 0), ("single", 1)]}
IMAGE_TOKENS = 16  # 4 × 4 latent pixels (Mage-Flow, patch 1); 8 × 8 / 2² (MiniTrainDIT)


def build(comfy, family: str, seed: int = 0):
    cls_name, base_name, config, _, _ = FAMILIES[family]
    import comfy.model_base as model_base

    if not hasattr(comfy.supported_models, cls_name) or not hasattr(model_base, base_name):
        pytest.skip(f"this ComfyUI has no {cls_name}")
    model_config = getattr(comfy.supported_models, cls_name)(dict(config))
    model_config.unet_config.update(config)  # over the class's unet_extra_config (Ideogram 4's full size)
    return seeded_patcher(model_config, seed)


def conditioning(family: str, length: int, seed: int, reference=None):
    gen = torch.Generator().manual_seed(seed)
    extra = {} if reference is None else {"reference_latents": [reference]}
    if family == "lens":  # 4 encoder layers side by side: (B, S, 4 · 8)
        return [[torch.randn(1, length, 32, generator=gen), extra]]
    if family == "longcat":
        extra["pooled_output"] = None
    if family.startswith("kandinsky5"):  # the pooled CLIP vector
        extra["pooled_output"] = torch.randn(1, 32, generator=gen)
    if family in ("omnigen2", "boogu", "ideogram4"):  # their encoder hands a mask (all ones here): num_tokens
        extra["attention_mask"] = torch.ones(1, length, dtype=torch.long)
    return [[torch.randn(1, length, 32, generator=gen), extra]]


def sample(comfy, model, family: str, reference=None):
    shape = FAMILIES[family][3]
    out = comfy.nodes.common_ksampler(model, 0, 2, 2.0, "euler", "normal", conditioning(family, 7, 1, reference),
                                      conditioning(family, 9, 2, reference), {"samples": torch.zeros(shape)},
                                      denoise=1.0)
    return out[0]["samples"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_guides_exactly_the_intended_calls(comfy, monkeypatch, family):
    families = pack_module(comfy.patch, "families")
    model = build(comfy, family)
    assert families.detect_family(model.model).key == FAMILIES[family][4]
    baseline = sample(comfy, model, family)
    rec = Recorder(comfy, monkeypatch)
    log = CallLog(comfy, monkeypatch)
    out = sample(comfy, comfy.run_node(GAG, model=model, scale=5.0, beta=0.0), family)
    assert torch.isfinite(out).all() and not torch.equal(out, baseline)
    passes = rec.per_pass()
    assert rec.passes == len(passes) >= 2  # every pass guided (prompts of 7 and 9 tokens may run apart)
    for guided in passes.values():
        assert [g["block"] for g in guided] == BLOCKS.get(family, [("double", 0), ("double", 1)])
    img = TOKENS.get(family, IMAGE_TOKENS)
    for g in rec.guided:
        t = g["text_len"]
        assert t in (7, 9)
        if family in ("lens", "joyimage"):  # joint [image | text]: image rows × text keys
            assert g["kind"] == "joint" and g["q_len"] == g["k_len"] == t + IMAGE_TOKENS
            assert g["text_range"] == (IMAGE_TOKENS, IMAGE_TOKENS + t) and g["guided_stop"] == IMAGE_TOKENS
        elif family in ("mage_flow", "omnigen2", "boogu", "ideogram4", "longcat", "pixeldit", "cogvideox",
                        "cogvideox15"):  # [text | image]
            assert g["kind"] == "joint" and g["q_len"] == g["k_len"] == t + img
            assert g["text_range"] == (0, t) and g["guided_stop"] == t + img
        else:  # cross-attention: image queries × the text keys
            assert g["kind"] == "cross" and g["q_len"] == img and g["k_len"] == t
    if family in ("omnigen2", "boogu"):  # the caption, image refiners (and Boogu's image self-attention): dense
        assert {(q, k) for q, k, _ in log.calls} - {(g["q_len"], g["k_len"]) for g in rec.guided} <= \
            {(IMAGE_TOKENS, IMAGE_TOKENS)} | {(t, t) for t in (7, 9)}
    if family in ("anima", "cosmos_predict2", "kandinsky5_image", "kandinsky5_video"):  # self- and text cross-attn
        calls = [c for c in log.calls if c[:2] != (7, 7) and c[:2] != (9, 9)]  # Kandinsky's text blocks: dense
        assert sorted({(q, k) for q, k, _ in calls}) == sorted(
            {(img, img)} | {(img, t) for t in {g["text_len"] for g in rec.guided}})
        assert len(calls) == 2 * len(rec.guided)


def test_mage_flow_edit_reference_rows_stay_dense(comfy, monkeypatch):
    """Mage-Flow edit: [text | image | reference]; the host says how many reference tokens it appended."""
    model = build(comfy, "mage_flow")
    reference = torch.randn(1, 128, 4, 4, generator=torch.Generator().manual_seed(3))
    rec = Recorder(comfy, monkeypatch)
    out = sample(comfy, comfy.run_node(GAG, model=model, scale=5.0, beta=0.0), "mage_flow", reference)
    assert torch.isfinite(out).all() and rec.guided
    for g in rec.guided:
        t = g["text_len"]
        assert g["q_len"] == t + 2 * IMAGE_TOKENS and g["guided_stop"] == t + IMAGE_TOKENS


@pytest.mark.parametrize("family", ["omnigen2", "boogu"])
def test_omnigen_edit_reference_rows_stay_dense(comfy, monkeypatch, family):
    """OmniGen2 / Boogu edit: [text | reference | image]; the reference rows (an 8 × 4 latent: 8 rows) keep the
    dense output, the image rows after them are guided."""
    model = build(comfy, family)
    reference = torch.randn(1, 16, 8, 4, generator=torch.Generator().manual_seed(3))
    rec = Recorder(comfy, monkeypatch, keep_tensors=True)
    out = sample(comfy, comfy.run_node(GAG, model=model, scale=5.0, beta=0.0), family, reference)
    assert torch.isfinite(out).all() and rec.guided
    for g in rec.guided:
        t = g["text_len"]
        assert g["q_len"] == t + 8 + IMAGE_TOKENS and g["text_range"] == (0, t)
        assert g["guided_stop"] == t + 8 + IMAGE_TOKENS  # rows [t + 8, end) guided; [t, t + 8) dense (below)
        call, got = g["tensors"]
        ac = pack_module(comfy.patch, "attention_call")
        q, k, v = (ac.to_bhld(x, call.heads, call.skip_reshape) for x in (call.q, call.k, call.v))
        if k.shape[1] != q.shape[1]:  # GQA: each k/v head serves q.shape[1] // k.shape[1] query heads
            k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
        got = ac.output_to_bhld(got, call.heads, call.skip_output_reshape).double()
        dense = torch.softmax(q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v.double()
        torch.testing.assert_close(got[:, :, : t + 8], dense[:, :, : t + 8], rtol=1e-4, atol=1e-5)
        assert (got[:, :, t + 8:] - dense[:, :, t + 8:]).abs().max() > 1e-4


def test_ideogram4_padded_text_stays_out_of_the_guidance(comfy, monkeypatch):
    """Ideogram 4 with padded text: the pad rows are a segment of their own (block-diagonal mask); the guided image
    rows change by values of the real text keys only, and every other row keeps the dense output."""
    model = build(comfy, "ideogram4")
    gen = torch.Generator().manual_seed(4)
    mask = torch.ones(1, 9, dtype=torch.long)
    mask[:, 6:] = 0  # 6 real tokens, 3 pads
    cond = [[torch.randn(1, 9, 32, generator=gen), {"attention_mask": mask}]]
    rec = Recorder(comfy, monkeypatch, keep_tensors=True)
    patched = comfy.run_node(GAG, model=model, scale=5.0, beta=0.3)
    out = comfy.nodes.common_ksampler(patched, 0, 1, 1.0, "euler", "normal", cond, cond,
                                      {"samples": torch.zeros(1, 128, 4, 4)}, denoise=1.0)[0]["samples"]
    assert torch.isfinite(out).all() and rec.guided
    ac = pack_module(comfy.patch, "attention_call")
    for g in rec.guided:
        assert g["q_len"] == 9 + IMAGE_TOKENS and g["text_range"] == (0, 9)
        call, got = g["tensors"]
        q, k, v = (ac.to_bhld(x, call.heads, call.skip_reshape).double() for x in (call.q, call.k, call.v))
        got = ac.output_to_bhld(got, call.heads, call.skip_output_reshape).double()
        bias = call.mask.double() if call.mask is not None else 0.0
        dense = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias, -1) @ v
        torch.testing.assert_close(got[:, :, :9], dense[:, :, :9], rtol=1e-4, atol=1e-5)
        delta = got[:, :, 9:] - dense[:, :, 9:]
        v_real = v[:, :, :6]
        coef = torch.linalg.lstsq(v_real.transpose(-1, -2), delta.transpose(-1, -2)).solution
        residual = delta - (v_real.transpose(-1, -2) @ coef).transpose(-1, -2)
        assert delta.abs().max() > 1e-4 and residual.abs().max() < 1e-4 * max(1.0, float(delta.abs().max()))


# ---------------------------------------------------------------------------------- HunyuanVideo 1.5 super-resolution
# HunyuanVideo15_SR_Distilled (a HunyuanVideo15 subclass on 0.8.0 and 0.33.0) differs from its parent only by what it
# concatenates to the latent's channels (the upscaled low-resolution video, 2·C + 2 channels) and a time flag: the
# same joint blocks and sequence. Checked as HunyuanVideo 1.5: same guided blocks, text span and rows.
def test_hunyuan_video15_super_resolution_is_guided_as_its_parent(monkeypatch):
    from test_comfyui_joint_families import CONFIGS, HUNYUAN_IMAGE, MODEL_BASE, JointComfy, host_version

    jc = JointComfy()
    CONFIGS["hunyuan_video15_sr"] = ("HunyuanVideo15_SR_Distilled",
                                     dict(CONFIGS["hunyuan_video15"][1], in_channels=98), (32, 2), 32)
    MODEL_BASE["hunyuan_video15_sr"] = "HunyuanVideo15_SR_Distilled"
    try:
        families = pack_module(jc.patch, "families")
        model = jc.build("hunyuan_video15_sr")
        assert families.detect_family(model.model).key == "hunyuan_video"
        rec = Recorder(jc, monkeypatch)
        out = jc.sample(jc.run_node(GAG, model=model, scale=5.0, beta=0.0), "hunyuan_video15_sr",
                        positive=jc.conditioning("hunyuan_video15", 7, seed=1),
                        negative=jc.conditioning("hunyuan_video15", 9, seed=2))
        assert torch.isfinite(out).all()
        passes = rec.per_pass()
        assert rec.passes == len(passes) >= 2
        last = host_version(jc) == "0.8"  # [image | text] on 0.8.0, [text | image] later
        for guided in passes.values():
            assert [g["block"] for g in guided] == [("double", 0), ("single", 0)]
            for g in guided:
                n = g["q_len"] - HUNYUAN_IMAGE
                assert n in (3 + 7, 3 + 9) and g["kind"] == "joint"  # 3 byT5 tokens before the prompt
                assert g["text_range"] == ((HUNYUAN_IMAGE, g["q_len"]) if last else (0, n))
    finally:
        CONFIGS.pop("hunyuan_video15_sr", None)
        MODEL_BASE.pop("hunyuan_video15_sr", None)


# ---------------------------------------------------------------------------------- HunyuanImage 2.1
# HunyuanImage21 (0.8.0 and 0.33.0) builds HunyuanVideo's net with 2-D patches: the joint blocks read [text T | byT5
# B | image] (0.8.0: [image | text T | byT5 B]); T + B is the text span.
def test_hunyuan_image21_guides_image_rows_on_the_llm_and_byt5_text(monkeypatch):
    from test_comfyui_joint_families import BYT5_DIM, CONFIGS, MODEL_BASE, JointComfy, host_version

    jc = JointComfy()
    CONFIGS["hunyuan_image21"] = ("HunyuanImage21", dict(
        image_model="hunyuan_video", in_channels=64, out_channels=64, vec_in_dim=None, context_in_dim=32,
        hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[16, 16], theta=256,
        patch_size=[1, 1], qkv_bias=True, guidance_embed=False, byt5=True, meanflow=False,
        use_cond_type_embedding=False, vision_in_dim=None, meanflow_sum=False), (64, None), 32)
    MODEL_BASE["hunyuan_image21"] = "HunyuanImage21"
    try:
        families = pack_module(jc.patch, "families")
        model = jc.build("hunyuan_image21")
        assert families.detect_family(model.model).key == "hunyuan_image21"
        gen = torch.Generator().manual_seed(1)
        conds = [[[torch.randn(1, t, 32, generator=gen), {"conditioning_byt5small": torch.randn(1, 3, BYT5_DIM,
                                                                                              generator=gen)}]]
                 for t in (7, 9)]
        rec = Recorder(jc, monkeypatch)
        out = jc.sample(jc.run_node(GAG, model=model, scale=5.0, beta=0.0), "hunyuan_image21", size=4,
                        positive=conds[0], negative=conds[1])
        assert torch.isfinite(out).all()
        passes = rec.per_pass()
        assert rec.passes == len(passes) >= 2
        last = host_version(jc) == "0.8"
        for guided in passes.values():
            assert [g["block"] for g in guided] == [("double", 0), ("single", 0)]
            for g in guided:
                n = g["q_len"] - IMAGE_TOKENS
                assert n in (7 + 3, 9 + 3) and g["kind"] == "joint"
                assert g["text_range"] == ((IMAGE_TOKENS, g["q_len"]) if last else (0, n))
    finally:
        CONFIGS.pop("hunyuan_image21", None)
        MODEL_BASE.pop("hunyuan_image21", None)


def test_joyimage_edit_reference_rows_stay_dense(comfy, monkeypatch):
    """JoyImage edit: [target image | reference | text]; rows past the target image are not guided."""
    model = build(comfy, "joyimage")
    reference = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    rec = Recorder(comfy, monkeypatch)
    out = sample(comfy, comfy.run_node(GAG, model=model, scale=5.0, beta=0.0), "joyimage", reference)
    assert torch.isfinite(out).all() and rec.guided
    for g in rec.guided:
        t = g["text_len"]
        assert g["q_len"] == 2 * IMAGE_TOKENS + t and g["text_range"] == (2 * IMAGE_TOKENS, 2 * IMAGE_TOKENS + t)
        assert g["guided_stop"] == IMAGE_TOKENS
