"""The joint- and single-stream-attention families on tiny seeded models of the host's own classes.

What the host does at each joint attention call, read from its code (ComfyUI 0.8.0 and 0.33.0) and
checked below by recording the calls:

| family (model_base / net) | joint calls (transformer_options) | sequence, text span | padding, references |
|---|---|---|---|
| Lumina 2 / Z-Image (`Lumina2` / `NextDiT`) | `layers`: block_type "double", block_index i | [caption C | image I]; C = c_crossattn length rounded up to `pad_tokens_multiple` (Z-Image 32, Lumina 2 none), I = ⌈h/2⌉·⌈w/2⌉ rounded up the same way | the caption pad is the learned `cap_pad_token`, refined with the caption and attended unmasked (mask=None in every joint layer), so it is text; the image pad rows (`x_pad_token`) stay dense. The context refiner (caption only) and noise refiner (image only) run before block ids are set. Z-Image Omni (ref_latents) packs [captions | siglip | refs | image]: not routed |
| Chroma, Chroma Radiance (`Chroma`, `ChromaRadiance` / same-named nets) | FLUX blocks: "double" i, "single" i (0.33 adds img_slice) | [text T | image]; T = c_crossattn length | attention_mask (T5 padding) reaches the call as mask=; no reference latents |
| HunyuanVideo, 1.5 (`HunyuanVideo`, `HunyuanVideo15` / `HunyuanVideo`) | "double" i, "single" i (0.33 adds img_slice) | 0.8.0: [image | text], 0.33.0: [text | image]; text = byT5 tokens (1.5) + LLM tokens (c_crossattn) (+ CLIP-vision tokens, 1.5 I2V) | text padding: additive (1, 1, L) key mask; the token refiner (text only) runs first; ref_latent (I2V v2) prepends image tokens: not routed |
| Krea 2 (`Krea2` / `SingleStreamDiT`, 0.33 only) | "single" i, img_slice = [T, L], reference_image_num_tokens | [text T | image | reference]; T = c_crossattn length = img_slice[0] | no mask; the text-fusion blocks (text only) run first |
| HiDream (`HiDream` / `HiDreamImageTransformer2DModel`) | no block ids: 1 call per double then per single block | [image I | T5 | LLM | LLM of the block]; text = everything after I | no mask; E1 (image_cond, concatenated along width) interleaves reference columns: not routed |
| MiniMax H3 (`MiniMaxH3` / `MiniMaxH3Model`, 0.33) | no block ids (calls counted); q/k/v as AttentionTensorContainer (unwrapped by wrap_attn) | text-to-video: [text T | target audio 2·A | target video]; T = c_crossattn length, A and the video tokens from latent_shapes | keyframes / references (fl2va, ref2va) pack more rows before the audio (the host's segment table says where): tests/test_comfyui_minimax.py; audio rows dense |
| Qwen-Image 2.1 (`QwenImage21`) | not in 0.8.0 nor 0.33.0 (commit 783545f) | block-causal: target queries against a cached [text | condition image] prefix, q length < k length | well defined (below: text keys = prefix columns, no text query rows); passes through until a host has the class |

Test battery per family (on each host that has its class): the guided calls are exactly the intended
ones (counted per pass); only image-query × text-key weights change (text query rows and image-only
attention untouched, reference / pad rows dense); the caller's model is untouched; the step window
holds; float16 / bfloat16 stay finite; PLADIS equals gag_core on the same tensors.
Skipped without COMFYUI_PATH; a family the host lacks is skipped.
"""
from __future__ import annotations

import math

import pytest
import torch

from conftest import pack_module, seeded_patcher
from test_comfyui_tiny import Comfy

pytestmark = pytest.mark.comfyui

GAG = "GeometryAwareAttentionGuidance"
ADV = "GeometryAwareAttentionGuidanceAdvanced"
PLADIS = "PLADISGuidance"

# family -> (comfy.supported_models class, unet_config, latent (channels, frames or None), text dim)
CONFIGS = {
    "lumina2": ("Lumina2", dict(image_model="lumina2", patch_size=2, in_channels=16, dim=64, cap_feat_dim=32,
                                n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=1, multiple_of=16,
                                ffn_dim_multiplier=2.0, qk_norm=True, axes_dims=[8, 12, 12],
                                axes_lens=[300, 512, 512], rope_theta=10000.0), (16, None), 32),
    # Z-Image's modulation needs dim >= 256 (its timestep embedding is 256 wide); head_dim 64 > its 32 text keys
    "zimage": ("ZImage", dict(image_model="lumina2", patch_size=2, in_channels=16, dim=256, cap_feat_dim=32,
                              n_layers=2, n_refiner_layers=1, n_heads=4, n_kv_heads=4, multiple_of=16,
                              ffn_dim_multiplier=8.0 / 3.0, qk_norm=True, axes_dims=[16, 24, 24],
                              axes_lens=[1536, 512, 512], rope_theta=256.0, z_image_modulation=True,
                              time_scale=1000.0, pad_tokens_multiple=32), (16, None), 32),
    "chroma": ("Chroma", dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=32, hidden_size=64,
                              mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[8, 12, 12],
                              theta=10000, patch_size=2, qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=64,
                              n_layers=1, txt_ids_dims=[], vec_in_dim=None), (16, None), 32),
    "chroma_radiance": ("ChromaRadiance", dict(
        image_model="chroma_radiance", in_channels=3, out_channels=3, context_in_dim=32, hidden_size=64,
        mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12], theta=10000,
        patch_size=4, qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=64, n_layers=1, txt_ids_dims=[],
        vec_in_dim=None, nerf_hidden_size=16, nerf_mlp_ratio=2, nerf_depth=1, nerf_max_freqs=4,
        nerf_tile_size=0, nerf_final_head_type="conv", nerf_embedder_dtype=None, use_x0=False,
        use_sequential_txt_ids=False), (3, None), 32),
    "hunyuan_video": ("HunyuanVideo", dict(image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=32,
                                           context_in_dim=32, hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=2,
                                           depth_single_blocks=2, axes_dim=[8, 12, 12], theta=256,
                                           patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True, byt5=False,
                                           meanflow=False, use_cond_type_embedding=False, vision_in_dim=None,
                                           meanflow_sum=False), (16, 2), 32),
    "hunyuan_video15": ("HunyuanVideo15", dict(image_model="hunyuan_video", in_channels=65, out_channels=32,
                                               vec_in_dim=None, context_in_dim=32, hidden_size=64, mlp_ratio=2.0,
                                               num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12],
                                               theta=256, patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=False,
                                               byt5=True, meanflow=False, use_cond_type_embedding=True,
                                               vision_in_dim=32, meanflow_sum=False), (32, 2), 32),
    "krea2": ("Krea2", dict(image_model="krea2", features=64, tdim=32, txtdim=16, heads=2, kvheads=1, multiplier=2,
                            layers=2, patch=2, channels=16, theta=1000, txtlayers=2, txtheads=2, txtkvheads=2),
              (16, 1), 32),
    "hidream": ("HiDream", dict(image_model="hidream", patch_size=2, in_channels=16, out_channels=16, num_layers=1,
                                num_single_layers=2, attention_head_dim=32, num_attention_heads=2,
                                caption_channels=[32, 24], text_emb_dim=32, num_routed_experts=2,
                                num_activated_experts=1, axes_dims_rope=[16, 8, 8], max_resolution=[32, 32],
                                llama_layers=[0, 1, 1]), (16, None), 32),
}
# family -> the comfy.model_base class its supported_models class builds (Z-Image builds a Lumina2)
MODEL_BASE = {f: ("Lumina2" if f == "zimage" else c[0]) for f, c in CONFIGS.items()}
LLAMA_LAYERS, LLAMA_DIM = 2, 24  # HiDream's per-block LLM states: (B, layers, L, 24)
BYT5_DIM = 1472


class JointComfy(Comfy):
    """Comfy (test_comfyui_tiny) plus the joint families' tiny models, conditioning and sampling."""

    def has(self, family: str) -> bool:
        import comfy.model_base

        return hasattr(self.supported_models, CONFIGS[family][0]) and hasattr(comfy.model_base, MODEL_BASE[family])

    def build(self, family: str, seed: int = 0, dtype=torch.float32):
        """A seeded tiny model of `family` in a CPU ModelPatcher (skips when the host lacks the class)."""
        if not self.has(family):
            pytest.skip(f"{CONFIGS[family][0]} is not in this ComfyUI")
        cls_name, config, _, _ = CONFIGS[family]
        if family == "chroma_radiance":  # 0.8.0's params lack the later fields
            import dataclasses

            import comfy.ldm.chroma_radiance.model as radiance

            known = {f.name for f in dataclasses.fields(radiance.ChromaRadianceParams)} | {"image_model"}
            config = {k: v for k, v in config.items() if k in known}
        model_config = getattr(self.supported_models, cls_name)(dict(config))
        return seeded_patcher(model_config, seed, dtype, buffers=True)

    @staticmethod
    def conditioning(family: str, length: int = 7, batch: int = 1, seed: int = 1, reference=None, extra=None):
        """ComfyUI conditioning [[context, extras]] with random embeddings of `length` text tokens."""
        gen = torch.Generator().manual_seed(seed)
        dim = CONFIGS[family][3]
        context = torch.randn(batch, length, dim, generator=gen)
        extras = {}
        if family in ("chroma", "chroma_radiance"):
            extras = {"pooled_output": None, "guidance": 0.0}
        elif family == "hunyuan_video":
            extras = {"pooled_output": torch.randn(batch, 32, generator=gen), "guidance": 6.0}
        elif family == "hunyuan_video15":
            extras = {"pooled_output": None, "conditioning_byt5small": torch.randn(batch, 3, BYT5_DIM, generator=gen)}
        elif family == "hidream":
            extras = {"pooled_output": torch.randn(batch, 32, generator=gen),
                      "conditioning_llama3": torch.randn(batch, LLAMA_LAYERS, 5, LLAMA_DIM, generator=gen)}
        if reference is not None:
            extras["reference_latents"] = [reference]
        extras.update(extra or {})
        return [[context, extras]]

    def sample(self, model, family: str, *, steps: int = 2, cfg: float = 2.0, size: int = 8, batch: int = 1,
               seed: int = 0, positive=None, negative=None):
        """Latents from ComfyUI's KSampler path (nodes.common_ksampler), euler / normal."""
        positive = positive or self.conditioning(family, 7, seed=1)
        negative = negative or self.conditioning(family, 9, seed=2)
        channels, frames = CONFIGS[family][2]
        if family == "chroma_radiance":
            size = 16
        shape = (batch, channels, size, size) if frames is None else (batch, channels, frames, size, size)
        latent = {"samples": torch.zeros(shape)}
        out = self.nodes.common_ksampler(model, seed, steps, cfg, "euler", "normal", positive, negative, latent,
                                         denoise=1.0, disable_noise=False)
        return out[0]["samples"]


@pytest.fixture(scope="session")
def jc() -> JointComfy:
    return JointComfy()


# ----------------------------------------------------------------------------------------------- expectations
# Per family and host, for prompts of `t` tokens (7 positive, 9 negative) on an 8 × 8 latent (16 image tokens,
# HunyuanVideo 2 frames × 16): the guided blocks of one pass in call order, all attention calls of one pass, the
# text span over the keys and the end of the guided rows (rows past it are pad / reference rows, kept dense).
HUNYUAN_IMAGE = 32


def expected(family: str, t: int, version: str) -> dict:
    """What one model pass of `family` with a `t`-token prompt must guide on host `version` ("0.8" / "0.33")."""
    img = 16
    if family == "lumina2":
        return dict(blocks=[("double", 0), ("double", 1)], calls=4, q=t + img, text=(0, t), stop=t + img)
    if family == "zimage":  # caption padded to 32, image 16 tokens padded to 32
        return dict(blocks=[("double", 0), ("double", 1)], calls=4, q=64, text=(0, 32), stop=32 + img)
    if family == "chroma":
        return dict(blocks=[("double", 0), ("double", 1), ("single", 0), ("single", 1)], calls=4, q=t + img,
                    text=(0, t), stop=t + img)
    if family == "chroma_radiance":  # 16 × 16 pixels, patch 4
        return dict(blocks=[("double", 0), ("single", 0)], calls=2, q=t + img, text=(0, t), stop=t + img)
    if family in ("hunyuan_video", "hunyuan_video15"):
        n = t if family == "hunyuan_video" else t + 3  # 1.5: 3 byT5 tokens before the LLM tokens
        blocks = [("double", 0), ("double", 1), ("single", 0), ("single", 1)] if family == "hunyuan_video" \
            else [("double", 0), ("single", 0)]
        q = n + HUNYUAN_IMAGE
        if version == "0.8":  # [image | text]
            return dict(blocks=blocks, calls=len(blocks) + 2, q=q, text=(HUNYUAN_IMAGE, q), stop=HUNYUAN_IMAGE)
        return dict(blocks=blocks, calls=len(blocks) + 2, q=q, text=(0, n), stop=q)
    if family == "krea2":  # 2 layer-wise + 2 refiner text-fusion calls, then the single-stream blocks
        return dict(blocks=[("single", 0), ("single", 1)], calls=6, q=t + img, text=(0, t), stop=t + img)
    if family == "hidream":  # [image | T5 | LLM | LLM of the block], 5 LLM tokens
        q = img + t + 10
        return dict(blocks=[("double", 0), ("single", 0), ("single", 1)], calls=3, q=q, text=(img, q), stop=img)
    raise KeyError(family)


FAMILIES = tuple(CONFIGS)


def host_version(jc) -> str:
    import comfyui_version

    major, minor = (int(x) for x in comfyui_version.__version__.split(".")[:2])
    return f"{major}.{minor}"


def text_len_of(g) -> int:
    """The prompt length of a recorded guided call (7 positive, 9 negative), from its query length."""
    return g["q_len"]


def check_route(g, family, version):
    """A recorded guided call has the text span, rows and length `expected` gives for one of the two prompts."""
    for t in (7, 9):
        want = expected(family, t, version)
        if g["q_len"] == want["q"] and (family != "zimage" or t == 7):
            assert g["k_len"] == want["q"] and g["kind"] == "joint", g
            assert g["text_range"] == want["text"], (g["text_range"], want)
            assert g["guided_stop"] in (want["stop"], None if want["stop"] == want["q"] else -1), (g, want)
            return want
    raise AssertionError(f"unexpected guided call {g} for {family}")


# ----------------------------------------------------------------------------------------------- the battery

@pytest.fixture
def recorder(jc, monkeypatch):
    from test_comfyui_nodes import Recorder

    def make(keep_tensors=False):
        return Recorder(jc, monkeypatch, keep_tensors=keep_tensors)

    return make


@pytest.mark.parametrize("family", FAMILIES)
def test_guides_exactly_the_intended_calls(jc, recorder, family):
    model = jc.build(family)
    patched = jc.run_node(GAG, model=model, scale=5.0, beta=0.0)
    rec = recorder()
    jc.sample(patched, family)
    version = host_version(jc)
    passes = rec.per_pass()
    assert rec.passes >= 2 and len(passes) == rec.passes  # every pass guided (window 0-1)
    for index, guided in passes.items():
        want = check_route(guided[0], family, version)
        assert [g["block"] for g in guided] == want["blocks"]
        assert rec.calls.count(index) == want["calls"]
        for g in guided:
            check_route(g, family, version)


def _dense(q, k, v, mask):
    """Reference dense attention in float64 on (B, H, N, D) tensors with an additive or bool mask."""
    q, k, v = (t.double() for t in (q, k, v))
    z = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        z = z.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else z + mask.double()
    return torch.softmax(z, dim=-1) @ v


@pytest.mark.parametrize("family", FAMILIES)
def test_only_image_query_times_text_key_weights_change(jc, recorder, family):
    """Text query rows and pad / reference rows are dense; image rows move by a mix of the text values only."""
    model = jc.build(family)
    patched = jc.run_node(GAG, model=model, scale=6.0, beta=0.3)
    rec = recorder(keep_tensors=True)
    jc.sample(patched, family, steps=1)
    ac = pack_module(jc.patch, "attention_call")
    assert rec.guided
    for g in rec.guided:
        call, out = g["tensors"]
        q, k, v = (ac.to_bhld(t, call.heads, call.skip_reshape) for t in (call.q, call.k, call.v))
        got = ac.output_to_bhld(out, call.heads, call.skip_output_reshape).double()
        dense = _dense(q, k, v, ac.mask_to_4d(call.mask))
        s, e = g["text_range"]
        stop = g["guided_stop"] if g["guided_stop"] is not None else q.shape[2]
        image = [r for r in range(q.shape[2]) if not s <= r < e and r < stop]
        dense_rows = [r for r in range(q.shape[2]) if r not in image]
        torch.testing.assert_close(got[:, :, dense_rows], dense[:, :, dense_rows], rtol=1e-4, atol=1e-5)
        delta = got[:, :, image] - dense[:, :, image]  # (B, H, n_img, D)
        assert delta.abs().max() > 1e-4  # guided
        v_t = v[:, :, s:e].double()  # (B, H, T, D): the change lies in the span of the text values
        assert v_t.shape[2] < v_t.shape[3]
        coef = torch.linalg.lstsq(v_t.transpose(-1, -2), delta.transpose(-1, -2)).solution
        residual = delta - (v_t.transpose(-1, -2) @ coef).transpose(-1, -2)
        assert residual.abs().max() < 1e-4 * max(1.0, float(delta.abs().max()))


@pytest.mark.parametrize("family", FAMILIES)
def test_changes_output_and_leaves_the_callers_model_alone(jc, family):
    from test_comfyui_nodes import options_snapshot

    model = jc.build(family)
    before = options_snapshot(model)
    baseline = jc.sample(model, family)
    patched = jc.run_node(GAG, model=model, scale=5.0, beta=0.0)
    assert patched is not model
    guided = jc.sample(patched, family)
    assert torch.isfinite(guided).all()
    assert (guided - baseline).abs().max() > 1e-6 * max(1.0, float(baseline.abs().max()))
    assert torch.equal(jc.sample(model, family), baseline)
    assert options_snapshot(model) == before


@pytest.mark.parametrize("family", FAMILIES)
def test_pladis_equals_gag_core_pladis(jc, recorder, family):
    s, alpha = 2.0, 1.5
    model = jc.build(family)
    patched = jc.run_node(ADV, model=model, method="pladis", scale=s, beta=0.0, tau=0.0, alpha=alpha,
                          start_percent=0.0, end_percent=1.0, blocks="auto")
    rec = recorder(keep_tensors=True)
    jc.sample(patched, family, steps=1)
    att = jc.gag_core_attention
    ac = pack_module(jc.patch, "attention_call")
    assert rec.guided
    for g in rec.guided:
        call, out = g["tensors"]
        q, k, v = (ac.to_bhld(t, call.heads, call.skip_reshape) for t in (call.q, call.k, call.v))
        mask = ac.mask_to_4d(call.mask)
        stop = g["guided_stop"] if g["guided_stop"] is not None else q.shape[2]
        want = att.joint_gag_attention(q, k, v, text_range=g["text_range"], method="pladis", scale=s, alpha=alpha,
                                       mask=mask, guided_rows=(0, stop))
        got = ac.output_to_bhld(out, call.heads, call.skip_output_reshape)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_outside_the_window_equals_baseline(jc, family):
    from comfy.samplers import calculate_sigmas
    from test_comfyui_nodes import percent_at

    model = jc.build(family)
    baseline = jc.sample(model, family)
    sampling = model.get_model_object("model_sampling")
    s0, s1 = (float(x) for x in calculate_sigmas(sampling, "normal", 2)[:2])
    p_a, p_b = percent_at(sampling, s0 - 0.25 * (s0 - s1)), percent_at(sampling, s1 + 0.25 * (s0 - s1))

    def run(start, end):
        return jc.sample(jc.run_node(ADV, model=model, method="gag", scale=8.0, beta=0.0, tau=15.0, alpha=1.5,
                                     start_percent=start, end_percent=end, blocks="auto"), family)

    assert torch.equal(run(p_a, p_b), baseline)  # a window between the two steps: nothing guided
    first = run(0.0, p_a)
    assert not torch.equal(first, baseline) and not torch.equal(run(p_b, 1.0), first)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_half_precision_gives_finite_latents(jc, recorder, family, dtype):
    model = jc.build(family, dtype=dtype)
    rec = recorder()
    for node, inputs in ((GAG, dict(scale=10.0, beta=0.3)), (PLADIS, dict(scale=2.0))):
        out = jc.sample(jc.run_node(node, model=model, **inputs), family)
        assert torch.isfinite(out).all(), node
    assert rec.guided and {g["dtype"] for g in rec.guided} == {dtype}


# ----------------------------------------------------------------------------------------------- references, padding

def test_krea2_reference_rows_stay_dense(jc, recorder):
    """Krea 2 [text | image | reference]: the host's img_slice and reference_image_num_tokens place the rows."""
    model = jc.build("krea2")
    ref = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    extra = {"reference_latents_method": "index"}
    positive = jc.conditioning("krea2", 7, seed=1, reference=ref, extra=extra)
    negative = jc.conditioning("krea2", 9, seed=2, reference=ref, extra=extra)
    baseline = jc.sample(model, "krea2", positive=positive, negative=negative)
    rec = recorder(keep_tensors=True)
    out = jc.sample(jc.run_node(GAG, model=model, scale=5.0, beta=0.0), "krea2", positive=positive,
                    negative=negative)
    assert torch.isfinite(out).all() and not torch.equal(out, baseline)
    assert rec.guided
    ac = pack_module(jc.patch, "attention_call")
    for g in rec.guided:
        t = g["q_len"] - 32
        assert t in (7, 9) and g["text_range"] == (0, t) and g["guided_stop"] == t + 16
        call, got = g["tensors"]
        q, k, v = (ac.to_bhld(x, call.heads, call.skip_reshape) for x in (call.q, call.k, call.v))
        got = ac.output_to_bhld(got, call.heads, call.skip_output_reshape).double()
        torch.testing.assert_close(got[:, :, t + 16:], _dense(q, k, v, None)[:, :, t + 16:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family, extra", [
    ("zimage", "reference_latents"),  # Z-Image Omni: [captions | refs | image], another length
    ("hunyuan_video", "ref_latent"),  # I2V "v2": reference tokens before the image
    ("hidream", "concat_latent_image"),  # E1: reference columns interleaved with the image's
])
def test_packed_references_pass_through(jc, recorder, family, extra):
    """Layouts whose reference tokens cannot be told from the image rows are not guided at all."""
    model = jc.build(family)
    if family == "zimage" and host_version(jc) == "0.8":
        pytest.skip("ComfyUI 0.8.0's NextDiT has no Omni path: it ignores reference latents")
    channels, frames = CONFIGS[family][2]
    shape = (1, channels, 8, 8) if frames is None else (1, channels, frames, 8, 8)
    ref = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    extras = {"reference_latents": [ref]} if extra == "reference_latents" else {extra: ref}
    positive = jc.conditioning(family, 7, seed=1, extra=extras)
    negative = jc.conditioning(family, 9, seed=2, extra=extras)
    baseline = jc.sample(model, family, positive=positive, negative=negative)
    rec = recorder()
    out = jc.sample(jc.run_node(GAG, model=model, scale=5.0, beta=0.0), family, positive=positive,
                    negative=negative)
    assert rec.passes >= 2 and rec.calls and not rec.guided
    assert torch.equal(out, baseline)


def test_hunyuan_padded_text_keys_are_masked(jc, recorder):
    """HunyuanVideo's text padding reaches the call as an additive key mask; the padded keys get no weight."""
    model = jc.build("hunyuan_video")
    mask = torch.ones(1, 9, dtype=torch.long)  # as the text encoders return it
    mask[:, 6:] = 0  # 6 real tokens, 3 padding
    positive = jc.conditioning("hunyuan_video", 9, seed=1, extra={"attention_mask": mask})
    # the negative prompt has another length: the host builds its (1, 1, L) mask for one prompt per pass
    negative = jc.conditioning("hunyuan_video", 7, seed=2)
    rec = recorder(keep_tensors=True)
    jc.sample(jc.run_node(GAG, model=model, scale=6.0, beta=0.3), "hunyuan_video", positive=positive,
              negative=negative, steps=1)
    ac = pack_module(jc.patch, "attention_call")
    assert rec.guided
    for g in rec.guided:
        call, out = g["tensors"]
        if g["q_len"] != 9 + HUNYUAN_IMAGE:
            continue  # the unpadded negative prompt
        assert call.mask is not None
        q, k, v = (ac.to_bhld(x, call.heads, call.skip_reshape) for x in (call.q, call.k, call.v))
        got = ac.output_to_bhld(out, call.heads, call.skip_output_reshape).double()
        m4 = ac.mask_to_4d(call.mask)
        s, e = g["text_range"]
        assert e - s == 9 and bool((m4[..., s + 6:e] < -1e3).all()) and bool((m4[..., s:s + 6] == 0).all())
        stop = g["guided_stop"] if g["guided_stop"] is not None else q.shape[2]
        image = [r for r in range(q.shape[2]) if not s <= r < e and r < stop]
        delta = got[:, :, image] - _dense(q, k, v, m4)[:, :, image]
        v_real = v[:, :, s:s + 6].double()  # the change is a mix of the 6 real text values only
        coef = torch.linalg.lstsq(v_real.transpose(-1, -2), delta.transpose(-1, -2)).solution
        residual = delta - (v_real.transpose(-1, -2) @ coef).transpose(-1, -2)
        assert delta.abs().max() > 1e-4 and residual.abs().max() < 1e-4 * max(1.0, float(delta.abs().max()))


@pytest.mark.parametrize("cls_name", ["QwenImage21", "ZImagePixelSpace", "HiDreamO1"])
def test_known_unsupported_models_pass_through_with_the_reason(jc, caplog, cls_name):
    import logging
    import types

    base = type(cls_name, (), {"__module__": "comfy.model_base"})()
    model = types.SimpleNamespace(model=base)
    with caplog.at_level(logging.WARNING):
        assert jc.patch.apply_guidance(model, method="gag", scale=5.0) is model
    families = pack_module(jc.patch, "families")
    messages = [r.getMessage() for r in caplog.records if "not a supported model" in r.getMessage()]
    assert len(messages) == 1 and cls_name in messages[0] and families.PASS_THROUGH[cls_name] in messages[0]


@pytest.mark.parametrize("family, blocks, want", [
    ("hidream", "single:1", [("single", 1)]),  # counted calls numbered double first, then single
    ("hidream", "double", [("double", 0)]),
    ("zimage", "double:1", [("double", 1)]),
    ("hunyuan_video", "single", [("single", 0), ("single", 1)]),
])
def test_block_selection(jc, recorder, family, blocks, want):
    model = jc.build(family)
    rec = recorder()
    jc.sample(jc.run_node(ADV, model=model, method="gag", scale=5.0, beta=0.0, tau=15.0, alpha=1.5,
                          start_percent=0.0, end_percent=1.0, blocks=blocks), family, steps=1)
    passes = rec.per_pass()
    assert passes and all([g["block"] for g in guided] == want for guided in passes.values())


@pytest.mark.parametrize("family", ["zimage", "chroma", "hunyuan_video15", "hidream", "krea2"])
def test_cfg_batch_and_batch_of_two(jc, recorder, family):
    """Equal prompt lengths: cond and uncond of two latents run as one batch of 4."""
    model = jc.build(family)
    negative = jc.conditioning(family, 7, seed=2)
    baseline = jc.sample(model, family, batch=2, negative=negative)
    rec = recorder()
    out = jc.sample(jc.run_node(GAG, model=model, scale=5.0, beta=0.0), family, batch=2, negative=negative)
    assert out.shape == baseline.shape and torch.isfinite(out).all() and not torch.equal(out, baseline)
    assert {g["batch"] for g in rec.guided} == {4} and len(rec.per_pass()) == rec.passes == 2


def test_cached_text_prefix_is_a_well_defined_text_retrieval(jc):
    """Qwen-Image 2.1's block-causal case on gag_core alone: target queries (q shorter than k) against keys
    [text prefix | condition image | target]; the change is a mix of the prefix's text values only."""
    gen = torch.Generator().manual_seed(7)
    b, h, d, text, cond, target = 1, 2, 32, 6, 10, 12
    q = torch.randn(b, h, target, d, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(b, h, text + cond + target, d, generator=gen, dtype=torch.float64) for _ in range(2))
    out = jc.gag_core_attention.joint_gag_attention(q, k, v, text_range=(0, text), scale=5.0, beta=0.3)
    delta = out - _dense(q, k, v, None)  # every target row is an image row: all are guided
    v_t = v[:, :, :text]
    coef = torch.linalg.lstsq(v_t.transpose(-1, -2), delta.transpose(-1, -2)).solution
    residual = delta - (v_t.transpose(-1, -2) @ coef).transpose(-1, -2)
    assert delta.abs().amax(dim=(-1, 0, 1)).min() > 1e-6 and residual.abs().max() < 1e-9


def test_hunyuan15_clip_vision_tokens_count_as_text(jc, recorder):
    """HunyuanVideo 1.5 I2V prepends CLIP-vision tokens to [byT5 | LLM]: the text span grows by their count."""
    import types

    model = jc.build("hunyuan_video15")
    gen = torch.Generator().manual_seed(4)
    vision = types.SimpleNamespace(last_hidden_state=torch.randn(1, 5, 32, generator=gen))
    positive = jc.conditioning("hunyuan_video15", 7, seed=1, extra={"clip_vision_output": vision})
    negative = jc.conditioning("hunyuan_video15", 9, seed=2, extra={"clip_vision_output": vision})
    rec = recorder()
    jc.sample(jc.run_node(GAG, model=model, scale=5.0, beta=0.0), "hunyuan_video15", positive=positive,
              negative=negative, steps=1)
    version = host_version(jc)
    assert len(rec.guided) == 4  # two prompts x (double 0, single 0)
    for g in rec.guided:
        n = g["q_len"] - HUNYUAN_IMAGE
        assert n in (5 + 3 + 7, 5 + 3 + 9)
        assert g["text_range"] == ((HUNYUAN_IMAGE, g["q_len"]) if version == "0.8" else (0, n))


# ----------------------------------------------------------------------------------------------- MiniMax H3 (0.33)
# One packed batch-1 sequence per pass, no block ids: text-to-video+audio is [text T | target audio 2·A | target
# video]; a 64 × 64, 9-frame AV latent is video (1, 24, 7, 4, 4) -> 7·2·2 = 28 rows and audio (1, 32, 2, 37) -> 74.
MINIMAX = dict(image_model="minimax_h3", hidden_size=64, num_layers=2, token_refiner_num_layers=1,
               num_attention_heads=2, attention_head_dim=32, ffn_hidden_size=64, latents_dim=24, audio_latents_dim=32,
               text_dim=32, timestep_input_dim=32, time_embed_hidden_size=64, time_embed_dim=32, rope_inv_freq_len=4)
MINIMAX_AUDIO, MINIMAX_VIDEO = 74, 28


@pytest.fixture
def minimax(jc):
    """(model, sample(model, positive=None, negative=None, steps=1) -> latent) for a tiny seeded MiniMax H3."""
    if not hasattr(jc.supported_models, "MiniMaxH3"):
        pytest.skip("MiniMaxH3 is not in this ComfyUI")
    from comfy_extras import nodes_minimax_h3

    model_config = jc.supported_models.MiniMaxH3(dict(MINIMAX))
    model_config.set_inference_dtype(torch.float32, None)
    base = model_config.get_model({})
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in base.diffusion_model.named_parameters():
            scale = 1 / p.shape[1] ** 0.5 if p.ndim >= 2 else 0.02
            p.copy_(torch.randn(p.shape, generator=gen) * scale + (1.0 if p.ndim < 2 and "norm" in name else 0.0))
        for _, buf in base.diffusion_model.named_buffers():
            if buf.is_floating_point():
                buf.copy_(torch.rand(buf.shape, generator=gen))
    cpu = torch.device("cpu")
    model = jc.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu)

    def sample(m, positive=None, negative=None, steps=1):
        g = torch.Generator().manual_seed(1)
        positive = positive or [[torch.randn(1, 7, 32, generator=g), {}]]
        negative = negative or [[torch.randn(1, 9, 32, generator=g), {}]]
        latent, _ = nodes_minimax_h3._empty_av_latent(64, 64, 9)
        out = jc.nodes.common_ksampler(m, 0, steps, 2.0, "euler", "normal", positive, negative, latent, denoise=1.0)
        return torch.cat([t.flatten() for t in out[0]["samples"].unbind()])

    return model, sample


def test_minimax_guides_video_rows_on_the_text_only(jc, recorder, minimax):
    model, sample = minimax
    rec = recorder(keep_tensors=True)
    sample(jc.run_node(GAG, model=model, scale=6.0, beta=0.3))
    ac = pack_module(jc.patch, "attention_call")
    passes = rec.per_pass()
    assert len(passes) == rec.passes == 2
    for index, guided in passes.items():
        assert [g["block"] for g in guided] == [("double", 0), ("double", 1)] and rec.calls.count(index) == 2
    for g in rec.guided:
        t = g["q_len"] - MINIMAX_AUDIO - MINIMAX_VIDEO
        assert t in (7, 9) and g["text_range"] == (0, t) and g["guided_stop"] == g["q_len"]
        call, out = g["tensors"]
        q, k, v = (ac.to_bhld(x, call.heads, call.skip_reshape) for x in (call.q, call.k, call.v))
        got = ac.output_to_bhld(out, call.heads, call.skip_output_reshape).double()
        dense = _dense(q, k, v, None)
        video = t + MINIMAX_AUDIO
        torch.testing.assert_close(got[:, :, :video], dense[:, :, :video], rtol=1e-4, atol=1e-5)  # text, audio
        delta = got[:, :, video:] - dense[:, :, video:]
        v_t = v[:, :, :t].double()
        coef = torch.linalg.lstsq(v_t.transpose(-1, -2), delta.transpose(-1, -2)).solution
        residual = delta - (v_t.transpose(-1, -2) @ coef).transpose(-1, -2)
        assert delta.abs().max() > 1e-4 and residual.abs().max() < 1e-4 * max(1.0, float(delta.abs().max()))


def test_minimax_pladis_equals_gag_core_and_caller_untouched(jc, recorder, minimax):
    from test_comfyui_nodes import options_snapshot

    model, sample = minimax
    before = options_snapshot(model)
    baseline = sample(model)
    rec = recorder(keep_tensors=True)
    out = sample(jc.run_node(PLADIS, model=model, scale=2.0))
    assert torch.isfinite(out).all() and not torch.equal(out, baseline)
    assert torch.equal(sample(model), baseline) and options_snapshot(model) == before
    ac = pack_module(jc.patch, "attention_call")
    for g in rec.guided:
        call, got = g["tensors"]
        q, k, v = (ac.to_bhld(x, call.heads, call.skip_reshape) for x in (call.q, call.k, call.v))
        t = g["q_len"] - MINIMAX_AUDIO - MINIMAX_VIDEO
        want = jc.gag_core_attention.joint_gag_attention(q, k, v, text_range=(0, t), method="pladis", scale=2.0,
                                                         alpha=1.5, guided_rows=(t + MINIMAX_AUDIO, q.shape[2]))
        torch.testing.assert_close(ac.output_to_bhld(got, call.heads, call.skip_output_reshape), want,
                                   rtol=1e-4, atol=1e-4)
