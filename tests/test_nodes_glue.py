"""Unit tests of the node glue that needs no ComfyUI: block selection, family detection, argument binding, routing."""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def glue(name: str):
    """Import nodes/<name>.py inside a package view of the repository, without running the top-level __init__."""
    if "gag_glue" not in sys.modules:
        pkg = types.ModuleType("gag_glue")
        pkg.__path__ = [str(REPO_ROOT)]
        sys.modules["gag_glue"] = pkg
    return importlib.import_module(f"gag_glue.nodes.{name}")


blocks = glue("blocks")
families = glue("families")
attention_call = glue("attention_call")
routing = glue("routing")


# ----------------------------------------------------------------------------------------------- blocks

def test_blocks_auto_uses_the_default():
    sel = blocks.parse_blocks("auto", "unet", "input,output")
    assert sel.contains("input", 4) and sel.contains("output", 0)
    assert not sel.contains("middle", 0)
    assert blocks.parse_blocks("  ", "mmdit", "double").contains("double", 7)
    assert not blocks.parse_blocks("", "mmdit", "double").contains("single", 0)


def test_blocks_indices_and_ranges_merge():
    sel = blocks.parse_blocks("input:4-5, output:2, output:7, middle", "unet", "input")
    assert sel.contains("input", 4) and sel.contains("input", 5) and not sel.contains("input", 6)
    assert sel.contains("output", 2) and sel.contains("output", 7) and not sel.contains("output", 3)
    assert sel.contains("middle", 0)
    # a whole group wins over indices of the same group
    sel = blocks.parse_blocks("double:1, double", "mmdit", "double")
    assert all(sel.contains("double", i) for i in range(50))


def test_blocks_all_covers_every_group_of_the_kind():
    sel = blocks.parse_blocks("ALL", "mmdit", "double")
    assert sel.contains("double", 3) and sel.contains("single", 30)
    assert not sel.contains("input", 1)


@pytest.mark.parametrize("text, kind, fragment", [
    ("double", "unet", "'double'"),
    ("input", "mmdit", "'input'"),
    ("output:3-1", "unet", "output:3-1"),
    ("output:x", "unet", "output:x"),
    ("bogus", "unet", "'bogus'"),
    (",", "unet", "selects no block"),
])
def test_blocks_bad_input_is_quoted(text, kind, fragment):
    with pytest.raises(ValueError) as e:
        blocks.parse_blocks(text, kind, "input,output")
    assert fragment in str(e.value)


def test_blocks_other_kind_gets_a_hint():
    with pytest.raises(ValueError, match="mmdit group"):
        blocks.parse_blocks("single", "unet", "input")


def test_blocks_describe_round_trips():
    sel = blocks.parse_blocks("output:1-2, input", "unet", "input")
    again = blocks.parse_blocks(sel.describe(), "unet", "input")
    assert again == sel


# ----------------------------------------------------------------------------------------------- families

def fake_model(cls_name: str, net_name: str | None, module: str = "comfy.model_base"):
    cls = type(cls_name, (), {"__module__": module})
    obj = cls()
    if net_name is not None:
        obj.diffusion_model = type(net_name, (), {})()
    return obj


@pytest.mark.parametrize("cls_name, net, key", [
    ("BaseModel", "UNetModel", "sd15"),
    ("SDXL", "UNetModel", "sdxl"),
    ("SDXLRefiner", "UNetModel", "sdxl"),
    ("Flux", "Flux", "flux1"),
    ("Flux2", "Flux", "flux2"),
    ("QwenImage", "QwenImageTransformer2DModel", "qwen_image"),
    ("SD3", "OpenAISignatureMMDITWrapper", "sd3"),
])
def test_detect_supported_families(cls_name, net, key):
    fam = families.detect_family(fake_model(cls_name, net))
    assert fam is not None and fam.key == key
    assert fam.kind == ("unet" if key in ("sd15", "sdxl") else "mmdit")


@pytest.mark.parametrize("cls_name, net, module", [
    ("AuraFlow", "MMDiT", "comfy.model_base"),  # no row
    ("StableAudio1", "AudioDiffusionTransformer", "comfy.model_base"),  # audio
    ("PixArt", "PixArtMS", "comfy.model_base"),  # attention outside wrap_attn: no row
    ("BaseModel", "SomethingElse", "comfy.model_base"),  # BaseModel around another network
    ("SDXL", "UNetModel", "my_pack.models"),  # a look-alike outside comfy.model_base
    ("SDXL", None, "comfy.model_base"),
])
def test_detect_refuses_unknown(cls_name, net, module):
    assert families.detect_family(fake_model(cls_name, net, module)) is None


def test_every_family_has_a_preset():
    presets = importlib.import_module("gag_glue.gag_core.presets")
    for key, fam in families.FAMILIES.items():
        preset = presets.get_preset(key)
        blocks.parse_blocks(preset.blocks, fam.kind, preset.blocks)  # the preset's blocks parse for its kind


def test_the_joint_lambda_evidence_is_on_exactly_the_joint_attention_families():
    """presets names the demo MMDiT's measurement on the rows whose routing rule is joint attention ("mmdit")."""
    presets = importlib.import_module("gag_glue.gag_core.presets")
    joint = {key for key, fam in families.FAMILIES.items() if fam.rule == "mmdit"}
    assert presets._JOINT_FAMILIES == joint
    assert all((presets._JOINT_LAMBDA in p.note) == (key in joint) for key, p in presets.PRESETS.items())


# ----------------------------------------------------------------------------------------------- binding

def rand(*shape):
    return torch.randn(*shape)


def test_bind_positional_and_keywords():
    q, k, v = rand(2, 5, 8), rand(2, 3, 8), rand(2, 3, 8)
    opts = {"block": ("input", 1)}
    call = attention_call.bind_attention_call((q, k, v, 2), {"transformer_options": opts, "_inside_attn_wrapper": True})
    assert call.heads == 2 and call.mask is None and not call.skip_reshape
    assert call.q_len == 5 and call.k_len == 3 and call.transformer_options is opts
    mask = rand(5, 3)
    call = attention_call.bind_attention_call((q, k, v), {"heads": 4, "mask": mask, "skip_reshape": False})
    assert call.heads == 4 and call.mask is mask
    # Qwen-Image passes the mask as the fifth positional argument
    qb, kb, vb = rand(1, 2, 9, 4), rand(1, 2, 9, 4), rand(1, 2, 9, 4)
    call = attention_call.bind_attention_call((qb, kb, vb, 2, mask), {"skip_reshape": True})
    assert call.mask is mask and call.skip_reshape and call.q_len == 9 and call.k_len == 9


def test_bind_aliases_and_missing():
    q, k, v = rand(1, 4, 6), rand(1, 4, 6), rand(1, 4, 6)
    call = attention_call.bind_attention_call((), {"query": q, "key": k, "value": v, "num_heads": 3})
    assert call is not None and call.q is q and call.heads == 3
    assert attention_call.bind_attention_call((q, k, v), {}) is None  # no heads
    assert attention_call.bind_attention_call((q, k), {"heads": 2}) is None  # no v
    assert attention_call.bind_attention_call((q, k, v, "x"), {}) is None


def test_layouts_round_trip():
    b, n, h, d = 2, 7, 3, 5
    x = rand(b, n, h * d)
    t = attention_call.to_bhld(x, h, False)
    assert t.shape == (b, h, n, d)
    assert torch.equal(t[:, 1], x[:, :, d:2 * d])
    assert torch.equal(attention_call.output_from_bhld(t, False), x)
    assert torch.equal(attention_call.output_to_bhld(x, h, False), t)
    assert attention_call.output_from_bhld(t, True) is t
    assert attention_call.to_bhld(t, h, True) is t
    # SD3 passes v as (B, L, H, D)
    v4 = rand(b, n, h, d)
    assert torch.equal(attention_call.to_bhld(v4, h, False), v4.transpose(1, 2))


def test_mask_to_4d_follows_comfy_pytorch_kernel():
    assert attention_call.mask_to_4d(None) is None
    assert attention_call.mask_to_4d(rand(5, 3)).shape == (1, 1, 5, 3)
    assert attention_call.mask_to_4d(rand(2, 5, 3)).shape == (2, 1, 5, 3)
    assert attention_call.mask_to_4d(rand(2, 4, 5, 3)).shape == (2, 4, 5, 3)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        attention_call.mask_to_4d(rand(3))


# ----------------------------------------------------------------------------------------------- routing

UNET_SEL = blocks.parse_blocks("input,output", "unet", "input,output")
MMDIT_SEL = blocks.parse_blocks("double,single", "mmdit", "double,single")


def test_unet_routes_only_attn2_with_text_keys_in_selected_blocks():
    info = routing.PassInfo("unet", text_len=77)
    opts = {"block": ("input", 4)}
    assert routing.route_call(info, 1024, 77, opts, UNET_SEL) is None  # outside attn2
    info.in_cross = True
    r = routing.route_call(info, 1024, 77, opts, UNET_SEL)
    assert r == routing.Route("cross", ("input", 4))
    # the image having exactly as many tokens as the prompt does not confuse it
    assert routing.route_call(info, 77, 77, opts, UNET_SEL) is not None
    assert routing.route_call(info, 1024, 16, opts, UNET_SEL) is None  # keys are not the text (e.g. IP tokens)
    assert routing.route_call(info, 1024, 77, {"block": ("middle", 0)}, UNET_SEL) is None
    assert routing.route_call(info, 1024, 77, {}, UNET_SEL) is None


def test_mmdit_text_first_span_and_blocks():
    info = routing.PassInfo("mmdit", text_len=12, image_tokens=64)
    opts = {"block_type": "single", "block_index": 3}
    r = routing.route_call(info, 76, 76, opts, MMDIT_SEL)
    assert r == routing.Route("joint", ("single", 3), (0, 12), 76)
    only_double = blocks.parse_blocks("double:0-1", "mmdit", "double")
    assert routing.route_call(info, 76, 76, opts, only_double) is None
    assert routing.route_call(info, 76, 76, {"block_type": "double", "block_index": 1}, only_double) is not None
    assert routing.route_call(info, 76, 76, {}, MMDIT_SEL) is None  # no block ids


def test_mmdit_reference_tokens_are_not_text():
    # [text | image | reference image]: the span stays the conditioning's length.
    info = routing.PassInfo("mmdit", text_len=12, image_tokens=64)
    r = routing.route_call(info, 12 + 64 + 64, 12 + 64 + 64, {"block_type": "double", "block_index": 0}, MMDIT_SEL)
    assert r.text_range == (0, 12) and r.guided_stop == 12 + 64  # reference rows stay dense
    unknown = routing.PassInfo("mmdit", text_len=12, image_tokens=0)  # image size unknown: guide every row
    assert routing.route_call(unknown, 90, 90, {"block_type": "double", "block_index": 0}, MMDIT_SEL).guided_stop == 90


def test_mmdit_skips_image_only_and_cross_shaped_calls():
    info = routing.PassInfo("mmdit", text_len=12, image_tokens=64)
    opts = {"block_type": "double", "block_index": 0}
    assert routing.route_call(info, 64, 64, opts, MMDIT_SEL) is None  # SD3.5 image-only attention
    assert routing.route_call(info, 76, 12, opts, MMDIT_SEL) is None  # not joint
    assert routing.route_call(routing.PassInfo("mmdit", 0, 64), 76, 76, opts, MMDIT_SEL) is None


def test_sd3_counts_joint_calls_for_block_numbers():
    info = routing.PassInfo("mmdit", text_len=10, image_tokens=16, block_ids=False)
    sel = blocks.parse_blocks("double:1", "mmdit", "double")
    seen = []
    for length in (26, 16, 26, 26):  # joint, image-only, joint, joint
        seen.append(routing.route_call(info, length, length, {}, sel))
    assert seen[0] is None and seen[1] is None and seen[3] is None
    assert seen[2] == routing.Route("joint", ("double", 1), (0, 10), 26)
    assert info.joint_calls == 3


def test_image_token_count():
    assert routing.image_token_count((2, 16, 8, 8), 2) == 16
    assert routing.image_token_count((2, 16, 9, 7), 2) == 5 * 4  # padded to the patch size
    assert routing.image_token_count((1, 16, 1, 8, 8), 2) == 16  # Qwen-Image (B, C, T, H, W)
    assert routing.image_token_count((1, 128, 6, 4), 1) == 24
    assert routing.image_token_count((1, 16, 8, 8), (1, 2, 2)) == 16
    assert routing.image_token_count((8, 8), 2) == 0


@pytest.mark.parametrize("sigma, active", [(14.6, False), (10.0, True), (5.0, True), (1.0, True), (0.5, False)])
def test_window(sigma, active):
    assert routing.in_window(sigma, 10.0, 1.0) is active
