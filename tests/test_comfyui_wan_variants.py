"""Wan's variants (comfy.model_base subclasses of WAN21) on tiny seeded models of the host's own classes.

Each variant keeps Wan's umT5 text cross-attention (keys = the 512 text rows) and adds paths of its own; what the
pack decides per class (nodes/families.py, the wan row's `variants`), read from comfy/ldm/wan/ and checked here by
recording every attention call of a sampling run:

| class (net) | added paths | guided | dense |
|---|---|---|---|
| WAN21_Vace (VaceWanModel) | control blocks after main block i, same block id, own self- and text cross-attention on the control stream | main block's text cross-attention | control blocks (a second text cross-attention under one id) |
| WAN21_Camera (CameraWanModel) | camera adapter added to the patch embedding | text cross-attention | (no attention added) |
| WAN21_HuMo (HumoWanModel) | audio cross-attention after the text one (16 audio tokens per frame) | text cross-attention | audio cross-attention |
| WAN22_S2V (WanModel_S2V) | reference / motion rows appended to the video stream; audio injector (no transformer_options: unseen) | text cross-attention of the whole stream | audio injection |
| WAN22_Animate (AnimateWanModel) | face adapter (called without transformer_options: never reaches an override), pose added to the embedding | text cross-attention | face adapter, I2V CLIP cross-attention |
| WAN_Animate2 (WanAnimate2Model) | pose branch, its own blocks' self- and cross-attention on the pose rows, per-frame self-attention | generation stream's text cross-attention | pose branch (fewer query rows than the video), CLIP cross-attention |
| WAN21_SCAIL, WAN21_SCAIL2 (SCAILWanModel, SCAIL2WanModel) | [reference | video | pose] rows in one stream | text cross-attention of the whole stream | CLIP cross-attention |
| WAN21_FlowRVS (WanModel) | none (another model type) | text cross-attention | — |
| WAN22_WanDancer, WAN21_CausalAR | music encoder / block-causal KV cache | — | pass through (not checked) |
"""
from __future__ import annotations

import logging
import types
from types import SimpleNamespace

import pytest
import torch

from conftest import pack_module, seeded_patcher
from test_comfyui_nodes import GAG, Recorder
from test_comfyui_tiny import comfy  # noqa: F401  (fixture)
from test_comfyui_video import CallLog

pytestmark = pytest.mark.comfyui

BASE = dict(image_model="wan2.1", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=64, ffn_dim=128, freq_dim=32,
            text_dim=32, out_dim=16, num_heads=2, num_layers=2, qk_norm=True, cross_attn_norm=True, eps=1e-6)
TEXT, REAL, CLIP_TOKENS = 512, 11, 257
LATENT = (2, 8, 8)  # (T, H, W): 2 · 4 · 4 = 32 video tokens
TOKENS = 2 * 4 * 4

# variant -> (supported_models class, model_base class, unet_config overrides, extra conditioning(gen), query rows
# of the guided calls)
VARIANTS = {
    "vace": ("WAN21_Vace", "WAN21_Vace", dict(model_type="vace", vace_layers=2, vace_in_dim=96), None, TOKENS),
    "camera": ("WAN21_Camera", "WAN21_Camera", dict(model_type="camera", in_dim=32), "camera", TOKENS),
    "humo": ("WAN21_HuMo", "WAN21_HuMo", dict(model_type="humo"), "humo", TOKENS),
    "animate2": ("WAN_Animate2", "WAN_Animate2", dict(model_type="animate2", in_dim=36), "animate2", TOKENS),
    "scail": ("WAN21_SCAIL", "WAN21_SCAIL", dict(model_type="scail", in_dim=20), "scail", 16 + TOKENS + TOKENS),
    "s2v": ("WAN22_S2V", "WAN22_S2V", dict(model_type="s2v", audio_inject_layers=[0, 1]), "s2v",
            TOKENS + 16),  # video + reference rows
    "animate": ("WAN22_Animate", "WAN22_Animate", dict(model_type="animate", in_dim=36), "animate", TOKENS),
    "scail2": ("WAN21_SCAIL2", "WAN21_SCAIL2", dict(model_type="scail2", in_dim=20), "scail", 16 + TOKENS + TOKENS),
    "dancer": ("WAN22_WanDancer", "WAN22_WanDancer", dict(model_type="wandancer", in_dim=36,
                                                          audio_inject_layers=[0, 1]), "dancer", TOKENS),
    "flowrvs": ("WAN21_FlowRVS", "WAN21_FlowRVS", dict(model_type="flow_rvs"), None, TOKENS),
}


def variant_conditioning(kind, seed: int):
    gen = torch.Generator().manual_seed(seed)
    context = torch.zeros(1, TEXT, 32)
    context[:, : REAL + seed] = torch.randn(1, REAL + seed, 32, generator=gen)
    extra = {}
    if kind == "humo":  # whisper features per latent frame: (B, frames, window 8, 5 layers, 1280)
        extra["audio_embed"] = torch.randn(1, LATENT[0], 8, 5, 1280, generator=gen)
    if kind == "camera":  # Wan 2.1 Camera is I2V-shaped: its workflows feed CLIP vision
        extra["clip_vision_output"] = SimpleNamespace(
            penultimate_hidden_states=torch.randn(1, CLIP_TOKENS, 1280, generator=gen))
    if kind == "animate2":
        extra["clip_vision_output"] = SimpleNamespace(
            penultimate_hidden_states=torch.randn(1, CLIP_TOKENS, 1280, generator=gen))
        extra["pose_video_latent"] = torch.randn(1, 16, LATENT[0] - 1, *LATENT[1:], generator=gen)
    if kind == "dancer":  # CLIP of the first frame and of the reference image, music features (B, frames, 35)
        for key in ("clip_vision_output", "clip_vision_output_ref"):
            extra[key] = SimpleNamespace(penultimate_hidden_states=torch.randn(1, CLIP_TOKENS, 1280, generator=gen))
        extra["audio_embed"] = torch.randn(1, 9, 35, generator=gen)
    if kind == "s2v":  # a reference image latent appended to the video stream
        extra["reference_latents"] = [torch.randn(1, 16, 1, *LATENT[1:], generator=gen)]
    if kind == "animate":  # the face path needs 512-pixel face crops: its attention is called without
        # transformer_options (comfy/ldm/wan/model_animate.py FaceBlock), so no override ever sees it
        extra["clip_vision_output"] = SimpleNamespace(
            penultimate_hidden_states=torch.randn(1, CLIP_TOKENS, 1280, generator=gen))
        extra["pose_video_latent"] = torch.randn(1, 16, LATENT[0] - 1, *LATENT[1:], generator=gen)
    if kind == "scail":
        extra["clip_vision_output"] = SimpleNamespace(
            penultimate_hidden_states=torch.randn(1, CLIP_TOKENS, 1280, generator=gen))
        extra["reference_latents"] = [torch.randn(1, 16, 1, *LATENT[1:], generator=gen)]
        extra["pose_video_latent"] = torch.randn(1, 16, LATENT[0], *LATENT[1:], generator=gen)
    return [[context, extra]]


def build(comfy, variant: str, seed: int = 0):
    cls_name, base_name, overrides, _, _ = VARIANTS[variant]
    if not hasattr(comfy.supported_models, cls_name):
        pytest.skip(f"this ComfyUI has no {cls_name}")
    import comfy.model_base as model_base

    if not hasattr(model_base, base_name):
        pytest.skip(f"this ComfyUI has no model_base.{base_name}")
    model_config = getattr(comfy.supported_models, cls_name)(dict(BASE, **overrides))
    return seeded_patcher(model_config, seed)


def sample(comfy, model, variant: str):
    kind = VARIANTS[variant][3]
    latent = {"samples": torch.zeros((1, 16) + LATENT)}
    out = comfy.nodes.common_ksampler(model, 0, 2, 2.0, "euler", "normal", variant_conditioning(kind, 1),
                                      variant_conditioning(kind, 2), latent, denoise=1.0)
    return out[0]["samples"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_guides_one_text_cross_attention_per_block(comfy, monkeypatch, variant):
    families = pack_module(comfy.patch, "families")
    model = build(comfy, variant)
    assert families.detect_family(model.model).key == "wan"
    baseline = sample(comfy, model, variant)
    rec = Recorder(comfy, monkeypatch)
    log = CallLog(comfy, monkeypatch)
    out = sample(comfy, comfy.run_node(GAG, model=model, scale=5.0, beta=0.0), variant)
    assert torch.isfinite(out).all() and not torch.equal(out, baseline)
    passes = rec.per_pass()
    assert rec.passes == 2 and len(passes) == 2
    rows = VARIANTS[variant][4]
    for guided in passes.values():
        assert [g["block"] for g in guided] == [("double", 0), ("double", 1)]
        for g in guided:
            assert g["kind"] == "cross" and g["k_len"] == TEXT and g["batch"] == 2
            assert g["q_len"] == rows  # the stream's rows (S2V, SCAIL: reference / pose rows packed with the video)
    text_calls = [c for c in log.calls if c[1] == TEXT and c[0] != TEXT]
    side = {"vace": 2 * 2, "animate2": 2 * 2}.get(variant, 0)  # text cross-attention of side branches
    assert len(text_calls) == len(rec.guided) + side
    if variant == "animate2":  # the pose branch: one latent frame fewer than the generation stream
        assert {c[0] for c in text_calls} == {TOKENS, TOKENS - 16}


@pytest.mark.parametrize("cls_name", ["WAN21_CausalAR"])
def test_unchecked_wan_variants_pass_through_with_the_reason(comfy, caplog, cls_name):
    import comfy.model_base as model_base

    if not hasattr(model_base, cls_name):
        pytest.skip(f"this ComfyUI has no model_base.{cls_name}")
    base = getattr(model_base, cls_name).__new__(getattr(model_base, cls_name))
    model = types.SimpleNamespace(model=base)
    with caplog.at_level(logging.WARNING):
        assert comfy.patch.apply_guidance(model, method="gag", scale=5.0) is model
    messages = [r.getMessage() for r in caplog.records if "not a supported model" in r.getMessage()]
    assert len(messages) == 1 and cls_name in messages[0]


def test_a_subclass_nobody_checked_passes_through_naming_it(comfy, caplog):
    import comfy.model_base as model_base

    sub = type("WAN21_Unchecked", (model_base.WAN21,), {"__module__": "comfy.model_base"})
    model = types.SimpleNamespace(model=sub.__new__(sub))
    with caplog.at_level(logging.WARNING):
        assert comfy.patch.apply_guidance(model, method="gag", scale=5.0) is model
    messages = [r.getMessage() for r in caplog.records if "not a supported model" in r.getMessage()]
    assert len(messages) == 1 and "WAN21_Unchecked is a subclass of WAN21" in messages[0]


def test_an_i2v_shaped_variant_without_clip_vision_guides_both_text_key_calls(comfy, monkeypatch):
    """Wan 2.1 Camera (I2V-shaped) run without CLIP vision: its image branch then reads the text rows as keys too;
    both text-key calls of the block are the block's own (before any second self-attention) and are guided, as
    for Wan 2.1 I2V without CLIP."""
    model = build(comfy, "camera")
    rec = Recorder(comfy, monkeypatch)
    log = CallLog(comfy, monkeypatch)
    latent = {"samples": torch.zeros((1, 16) + LATENT)}
    comfy.nodes.common_ksampler(comfy.run_node(GAG, model=model, scale=5.0, beta=0.0), 0, 2, 2.0, "euler", "normal",
                                variant_conditioning(None, 1), variant_conditioning(None, 2), latent, denoise=1.0)
    text_calls = [c for c in log.calls if c[1] == TEXT and c[0] != TEXT]
    assert len(text_calls) == 2 * 2 * 2 == len(rec.guided)  # 2 passes × 2 blocks × (image branch, text)
