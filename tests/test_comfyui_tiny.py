"""Tiny seeded models from ComfyUI's own classes, the pack loaded by ComfyUI's loader, and ComfyUI's sampler.

Shared by test_comfyui_nodes.py and benchmarks/bench_nodes.py. Needs COMFYUI_PATH (tests skip without it).
Each model is built as `comfy.supported_models.X(unet_config).get_model({})` with a small config, its weights
(and floating buffers) re-initialised from a seeded normal so attention logits are not degenerate, and wrapped
in a CPU ModelPatcher.
"""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
import torch

from conftest import seeded_patcher

REPO_ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("sd15", "sdxl", "flux1", "flux2", "qwen_image", "sd3")
TEXT_DIM = {"sd15": 64, "sdxl": 64}  # others: 32
LATENT_CHANNELS = {"auraflow": 4, "sd15": 4, "sdxl": 4, "flux1": 16, "flux2": 128, "qwen_image": 16, "sd3": 16}
NODE_IDS = ("GeometryAwareAttentionGuidance", "GeometryAwareAttentionGuidanceAdvanced", "PLADISGuidance")

_UNET = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
             in_channels=4, model_channels=64, num_res_blocks=[1, 1], transformer_depth=[1, 1], channel_mult=[1, 2],
             transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1], context_dim=64,
             use_temporal_attention=False, use_temporal_resblock=False)
CONFIGS = {
    "sd15": ("SD15", dict(_UNET, adm_in_channels=None, use_linear_in_transformer=False)),
    "sdxl": ("SDXL", dict(_UNET, num_classes="sequential", adm_in_channels=2816, use_linear_in_transformer=True,
                          num_head_channels=16)),
    "flux1": ("Flux", dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32,
                           hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=2,
                           axes_dim=[8, 12, 12], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True,
                           txt_ids_dims=[])),
    "flux2": ("Flux2", dict(image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, context_in_dim=32,
                            hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=2,
                            axes_dim=[8, 8, 8, 8], theta=2000, patch_size=1, qkv_bias=False, guidance_embed=True,
                            txt_ids_dims=[3], global_modulation=True, mlp_silu_act=True, ops_bias=False,
                            default_ref_method="index", ref_index_scale=10.0)),
    "qwen_image": ("QwenImage", dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16,
                                     num_layers=2, attention_head_dim=32, num_attention_heads=2,
                                     joint_attention_dim=32, axes_dims_rope=(8, 12, 12))),
    # depth 2 -> hidden 128, 2 heads; block 0 has the SD3.5-medium image-only attention (x_block_self_attn)
    "sd3": ("SD3", dict(in_channels=16, patch_size=2, out_channels=16, depth=2, num_blocks=2, input_size=None,
                        adm_in_channels=32, num_patches=256, pos_embed_max_size=16, pos_embed_scaling_factor=None,
                        qk_norm="rms", x_block_self_attn_layers=[0],
                        context_embedder_config={"target": "torch.nn.Linear",
                                                 "params": {"in_features": 32, "out_features": 128}})),
    # video families (tests/test_comfyui_video.py): 2 blocks each, 2 heads of 32
    "wan21_t2v": ("WAN21_T2V", dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=512,
                                    in_dim=16, dim=64, ffn_dim=128, freq_dim=32, text_dim=32, out_dim=16,
                                    num_heads=2, num_layers=2, qk_norm=True, cross_attn_norm=True, eps=1e-6)),
    "wan21_i2v": ("WAN21_I2V", dict(image_model="wan2.1", model_type="i2v", patch_size=(1, 2, 2), text_len=512,
                                    in_dim=36, dim=64, ffn_dim=128, freq_dim=32, text_dim=32, out_dim=16,
                                    num_heads=2, num_layers=2, qk_norm=True, cross_attn_norm=True, eps=1e-6)),
    "wan22_ti2v": ("WAN22_T2V", dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=512,
                                     in_dim=48, dim=64, ffn_dim=128, freq_dim=32, text_dim=32, out_dim=48,
                                     num_heads=2, num_layers=2, qk_norm=True, cross_attn_norm=True, eps=1e-6)),
    "ltxv": ("LTXV", dict(image_model="ltxv", in_channels=128, cross_attention_dim=64, attention_head_dim=32,
                          num_attention_heads=2, caption_channels=32, num_layers=2)),
    # LTX-2: video + audio streams, each with its own text cross-attention; the text arrives processed (64 =
    # video 32 + audio 32 channels, as the host's connectors hand it on)
    "ltxav": ("LTXAV", dict(image_model="ltxav", in_channels=128, audio_in_channels=128, cross_attention_dim=64,
                            audio_cross_attention_dim=32, attention_head_dim=32, audio_attention_head_dim=16,
                            num_attention_heads=2, audio_num_attention_heads=2, caption_channels=32, num_layers=2,
                            connector_attention_head_dim=16, connector_num_attention_heads=2,
                            connector_num_layers=1)),
    # a family the nodes do not support (AuraFlow): it must pass through unchanged
    "auraflow": ("AuraFlow", dict(in_channels=4, out_channels=4, patch_size=2, dim=64, n_layers=2, n_double_layers=1,
                                  n_heads=2, global_conddim=64, cond_seq_dim=32, max_seq=64)),
}
# Blocks each family's preset guides in the tiny models above, per model pass (in call order).
EXPECTED_BLOCKS = {
    "sd15": [("input", 1), ("input", 3), ("output", 0), ("output", 1), ("output", 2), ("output", 3)],
    "flux1": [("double", 0), ("double", 1), ("single", 0), ("single", 1)],
    "qwen_image": [("double", 0), ("double", 1)],
    "sd3": [("double", 0), ("double", 1)],
}
EXPECTED_BLOCKS["sdxl"] = EXPECTED_BLOCKS["sd15"]
EXPECTED_BLOCKS["flux2"] = EXPECTED_BLOCKS["flux1"]
# All attention calls per pass: UNet 7 transformer blocks x (attn1 + attn2); SD3 adds one image-only call.
CALLS_PER_PASS = {"sd15": 14, "sdxl": 14, "flux1": 4, "flux2": 4, "qwen_image": 2, "sd3": 3}


class Comfy:
    """Handles to the ComfyUI modules and to the pack as ComfyUI loaded it."""

    def __init__(self):
        path = os.environ.get("COMFYUI_PATH")
        if not path:
            pytest.skip("COMFYUI_PATH is not set")
        path = str(Path(path).resolve())
        if path not in sys.path:
            sys.path.insert(0, path)
        from comfy.cli_args import args

        if not torch.cuda.is_available():
            args.cpu = True  # ComfyUI otherwise asks CUDA for a device at import
        import comfy.model_patcher
        import comfy.supported_models
        import execution
        import nodes

        self.nodes, self.execution = nodes, execution
        self.supported_models, self.model_patcher = comfy.supported_models, comfy.model_patcher
        if not all(n in nodes.NODE_CLASS_MAPPINGS for n in NODE_IDS):
            ok = asyncio.run(nodes.load_custom_node(str(REPO_ROOT)))
            assert ok, "ComfyUI refused to load the pack"
        self.node_classes = {n: nodes.NODE_CLASS_MAPPINGS[n] for n in NODE_IDS}
        package = self.node_classes[NODE_IDS[0]].__module__.rsplit(".", 2)[0]
        self.pack = sys.modules[package]
        self.patch = sys.modules[package + ".nodes.patch"]
        self.gag_core_attention = sys.modules[package + ".gag_core.attention"]
        self.patch.STRICT = True  # an error inside guided attention fails the test instead of falling back

    def build(self, family: str, seed: int = 0, dtype=torch.float32):
        """A seeded tiny model of `family` in a CPU ModelPatcher."""
        cls_name, config = CONFIGS[family]
        model_config = getattr(self.supported_models, cls_name)(config)
        return seeded_patcher(model_config, seed, dtype, buffers=True)

    @staticmethod
    def conditioning(family: str, length: int = 7, batch: int = 1, seed: int = 1, reference=None):
        """ComfyUI conditioning [[context, extras]] with random text embeddings of `length` tokens."""
        gen = torch.Generator().manual_seed(seed)
        context = torch.randn(batch, length, TEXT_DIM.get(family, 32), generator=gen)
        extra = {}
        if family == "sdxl":
            extra = {"pooled_output": torch.randn(batch, 1280, generator=gen), "width": 64, "height": 64}
        elif family == "flux1":
            extra = {"pooled_output": torch.randn(batch, 32, generator=gen), "guidance": 3.5}
        elif family == "flux2":
            extra = {"pooled_output": None, "guidance": 3.5}
        elif family == "sd3":
            extra = {"pooled_output": torch.randn(batch, 32, generator=gen)}
        if reference is not None:
            extra["reference_latents"] = [reference]
        return [[context, extra]]

    def sample(self, model, family: str, *, steps: int = 2, cfg: float = 2.0, size: int = 8, batch: int = 1,
               seed: int = 0, positive=None, negative=None):
        """Latents from ComfyUI's KSampler path (nodes.common_ksampler), euler / normal."""
        positive = positive or self.conditioning(family, 7, seed=1)
        negative = negative or self.conditioning(family, 9, seed=2)
        latent = {"samples": torch.zeros(batch, LATENT_CHANNELS[family], size, size)}
        out = self.nodes.common_ksampler(model, seed, steps, cfg, "euler", "normal", positive, negative, latent,
                                         denoise=1.0, disable_noise=False)
        return out[0]["samples"]

    def run_node(self, node_id: str, unique_id: str = "11", **inputs):
        """Execute a node the way ComfyUI's executor does (input binding, V3 class clone, hidden unique_id)."""
        cls = self.nodes.NODE_CLASS_MAPPINGS[node_id]
        data, missing, v3_data = self.execution.get_input_data(inputs, cls, unique_id)
        assert not missing, missing
        result = asyncio.run(self.execution.get_output_data("test-prompt", unique_id, cls, data, v3_data=v3_data))
        return result[0][0][0]


@pytest.fixture(scope="session")
def comfy() -> Comfy:
    return Comfy()


@pytest.mark.comfyui
def test_pack_loads_with_comfyui_loader(comfy):
    mappings = comfy.nodes.NODE_CLASS_MAPPINGS
    names = comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS
    assert names["GeometryAwareAttentionGuidance"] == "Geometry-Aware Attention Guidance (GAG)"
    assert names["PLADISGuidance"] == "PLADIS (sparse attention extrapolation)"
    assert "GeometryAwareAttentionGuidanceAdvanced" in names
    assert comfy.pack.WEB_DIRECTORY == "./web"
    for node_id in NODE_IDS:
        info = mappings[node_id].GET_NODE_INFO_V1()
        assert info["category"] == "model_patches/attention_guidance"
        assert info["output"] == ["MODEL"]
        required = info["input"]["required"]
        for name, spec in required.items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    adv = mappings["GeometryAwareAttentionGuidanceAdvanced"].GET_NODE_INFO_V1()["input"]["required"]
    assert {"method", "alpha", "tau", "start_percent", "end_percent", "blocks"} <= set(adv)
    assert adv["method"][1]["options"] == ["gag", "pladis"]
    assert adv["alpha"][1]["min"] == 1.0 and adv["alpha"][1]["max"] == 2.0 and adv["alpha"][1]["default"] == 1.5
    simple = mappings["GeometryAwareAttentionGuidance"].GET_NODE_INFO_V1()["input"]["required"]
    assert list(simple) == ["model", "scale", "beta"]
    assert simple["beta"][1]["min"] == 0.0 and simple["beta"][1]["max"] == 1.0 and simple["beta"][1]["default"] == 0.0
    assert simple["scale"][1]["display"] == "slider" and simple["beta"][1]["display"] == "slider"
    assert mappings["PLADISGuidance"].GET_NODE_INFO_V1()["input"]["required"]["scale"][1]["default"] == 2.0
    # the ids must not collide with sd-perturbed-attention's PLADIS node
    assert "PLADIS" not in comfy.pack.NODE_CLASS_MAPPINGS


@pytest.mark.comfyui
@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_models_sample_deterministically(comfy, family):
    model = comfy.build(family)
    a = comfy.sample(model, family)
    b = comfy.sample(model, family)
    assert torch.isfinite(a).all() and torch.equal(a, b)
