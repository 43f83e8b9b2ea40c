"""Video families with text cross-attention (Wan 2.1 / 2.2, LTX-Video, LTX-2) on tiny seeded models of the host's
own classes, through ComfyUI's sampler, on every host version that has the class.

Per family: exactly the text cross-attention calls are guided (counted per pass), self-attention and the I2V
image-conditioning cross-attention (257 CLIP tokens) are untouched, the output changes at scale > 0, the
caller's model is untouched, a window between the steps equals the baseline, float16 / bfloat16 stay finite,
PLADIS equals gag_core on the same tensors, and a long video keeps the guided call under the chunk memory cap.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import pack_module
from test_comfyui_nodes import ADV, GAG, PLADIS, Recorder, options_snapshot, percent_at
from test_comfyui_tiny import CONFIGS, comfy  # noqa: F401  (fixture)

pytestmark = pytest.mark.comfyui

# family -> latent channels, latent (T, H, W), text length (keys), real tokens before the padding
VIDEO = {
    "wan21_t2v": dict(channels=16, latent=(2, 8, 8), text=512, real=11, tokens=2 * 4 * 4),
    "wan21_i2v": dict(channels=16, latent=(2, 8, 8), text=512, real=11, tokens=2 * 4 * 4),
    "wan22_ti2v": dict(channels=48, latent=(2, 8, 8), text=512, real=11, tokens=2 * 4 * 4),
    "ltxv": dict(channels=128, latent=(2, 4, 4), text=128, real=9, tokens=2 * 4 * 4),
    # audio latent (B, 8, T, 16) -> T tokens; more audio than video tokens, so only the length set tells them apart
    "ltxav": dict(channels=128, latent=(2, 4, 4), text=20, real=9, tokens=2 * 4 * 4, audio=40, dim=64),
}
BLOCKS = [("double", 0), ("double", 1)]
# attention calls per pass: per block self-attention + text cross-attention (+ I2V image cross-attention;
# LTX-2: video and audio each self + text, and audio-to-video, video-to-audio)
CALLS = {"wan21_t2v": 4, "wan21_i2v": 6, "wan22_ti2v": 4, "ltxv": 4, "ltxav": 12}
CLIP_TOKENS = 257


def available(comfy, family: str) -> bool:
    return hasattr(comfy.supported_models, CONFIGS[family][0])


@pytest.fixture
def video(comfy, request):
    family = request.param
    if not available(comfy, family):
        pytest.skip(f"this ComfyUI has no {CONFIGS[family][0]}")
    return family


def conditioning(family: str, seed: int, batch: int = 1):
    """Text embeddings as the host's encoders give them: umT5 pads to 512 with zeroed embeddings (Wan attends to
    all of them, unmasked); LTX's T5 pads to 128 and hands an attention mask."""
    spec = VIDEO[family]
    gen = torch.Generator().manual_seed(seed)
    dim = spec.get("dim", 32)
    context = torch.zeros(batch, spec["text"], dim)
    context[:, : spec["real"] + seed] = torch.randn(batch, spec["real"] + seed, dim, generator=gen)
    extra = {}
    if family == "wan21_i2v":
        extra["clip_vision_output"] = SimpleNamespace(
            penultimate_hidden_states=torch.randn(batch, CLIP_TOKENS, 1280, generator=gen))
    if family in ("ltxv", "ltxav"):
        mask = torch.zeros(batch, spec["text"], dtype=torch.long)
        mask[:, : spec["real"] + seed] = 1
        extra["attention_mask"] = mask
    return [[context, extra]]


def sample(comfy, model, family: str, *, steps: int = 2, cfg: float = 2.0, latent=None, seed: int = 0):
    spec = VIDEO[family]
    samples = torch.zeros((1, spec["channels"]) + tuple(latent or spec["latent"]))
    if "audio" in spec:  # LTX-2 latents are a NestedTensor (video, audio (B, 8, T, 16))
        from comfy.nested_tensor import NestedTensor

        samples = NestedTensor((samples, torch.zeros(1, 8, spec["audio"], 16)))
    out = comfy.nodes.common_ksampler(model, seed, steps, cfg, "euler", "normal", conditioning(family, 1),
                                      conditioning(family, 2), {"samples": samples}, denoise=1.0)
    return flat(out[0]["samples"])


def flat(samples) -> torch.Tensor:
    """One tensor of every stream's latent (LTX-2's NestedTensor holds video and audio)."""
    tensors = getattr(samples, "tensors", None)
    return samples if tensors is None else torch.cat([t.flatten() for t in tensors])


class CallLog:
    """Every attention call the override sees: (q length, k length), via GuidedAttention.__call__."""

    def __init__(self, comfy, monkeypatch):
        self.calls = []
        ga = comfy.patch.GuidedAttention
        orig = ga.__call__
        ac = pack_module(comfy.patch, "attention_call")
        log = self

        def call(self, func, *args, **kwargs):
            bound = ac.bind_attention_call(args, kwargs)
            log.calls.append((bound.q_len, bound.k_len, kwargs.get("low_precision_attention")))
            return orig(self, func, *args, **kwargs)

        monkeypatch.setattr(ga, "__call__", call)


FAMILY_PARAMS = [pytest.param(f, id=f) for f in VIDEO]


@pytest.mark.parametrize("video", FAMILY_PARAMS, indirect=True)
def test_detected_as_its_family(comfy, video):
    families = pack_module(comfy.patch, "families")
    fam = families.detect_family(comfy.build(video).model)
    assert fam is not None and fam.key == ("ltxv" if video.startswith("ltx") else "wan") and fam.rule == "cross"


@pytest.mark.parametrize("video", FAMILY_PARAMS, indirect=True)
def test_guides_exactly_the_text_cross_attention(comfy, monkeypatch, video):
    spec = VIDEO[video]
    patched = comfy.run_node(GAG, model=comfy.build(video), scale=5.0, beta=0.0)
    rec = Recorder(comfy, monkeypatch)
    log = CallLog(comfy, monkeypatch)
    sample(comfy, patched, video)
    passes = rec.per_pass()
    assert rec.passes == 2 and len(passes) == 2  # 2 steps, cond and uncond batched (equal text lengths)
    assert len(log.calls) == 2 * CALLS[video]
    for guided in passes.values():
        assert [g["block"] for g in guided] == BLOCKS
        for g in guided:  # video queries x all text keys, the padding included as the model reads it
            assert g["kind"] == "cross" and g["q_len"] == spec["tokens"] and g["k_len"] == spec["text"]
            assert g["batch"] == 2
    self_attn = [c for c in log.calls if c[0] == c[1] == spec["tokens"]]
    image_cross = [c for c in log.calls if c[1] == CLIP_TOKENS]
    text_cross = [c for c in log.calls if c[1] == spec["text"] and c[0] == spec["tokens"]]
    audio_text = [c for c in log.calls if c[1] == spec["text"] and c[0] == spec.get("audio")]
    assert len(self_attn) == 2 * 2 and len(text_cross) == len(rec.guided) == 2 * 2
    assert len(image_cross) == (2 * 2 if video == "wan21_i2v" else 0)
    assert len(audio_text) == (2 * 2 if video == "ltxav" else 0)  # LTX-2 audio queries: dense


@pytest.mark.parametrize("video", FAMILY_PARAMS, indirect=True)
def test_changes_output_and_leaves_the_input_model_alone(comfy, video):
    model = comfy.build(video)
    before = options_snapshot(model)
    baseline = sample(comfy, model, video)
    guided = sample(comfy, comfy.run_node(GAG, model=model, scale=5.0, beta=0.0), video)
    assert torch.isfinite(guided).all()
    assert (guided - baseline).abs().max() > 1e-6 * max(1.0, float(baseline.abs().max()))
    assert torch.equal(sample(comfy, model, video), baseline)
    assert options_snapshot(model) == before


@pytest.mark.parametrize("video", FAMILY_PARAMS, indirect=True)
def test_outside_the_window_equals_baseline(comfy, video):
    from comfy.samplers import calculate_sigmas

    model = comfy.build(video)
    baseline = sample(comfy, model, video)
    sampling = model.get_model_object("model_sampling")
    s0, s1 = (float(x) for x in calculate_sigmas(sampling, "normal", 2)[:2])
    p_a, p_b = percent_at(sampling, s0 - 0.25 * (s0 - s1)), percent_at(sampling, s1 + 0.25 * (s0 - s1))

    def run(start, end):
        return sample(comfy, comfy.run_node(ADV, model=model, method="gag", scale=8.0, beta=0.0, tau=15.0,
                                            alpha=1.5, start_percent=start, end_percent=end, blocks="auto"), video)

    assert torch.equal(run(p_a, p_b), baseline)  # a window between the two steps: nothing guided
    assert not torch.equal(run(0.0, p_a), baseline)


@pytest.mark.parametrize("video", FAMILY_PARAMS, indirect=True)
def test_pladis_equals_gag_core(comfy, monkeypatch, video):
    s, alpha = 2.0, 1.5
    patched = comfy.run_node(ADV, model=comfy.build(video), method="pladis", scale=s, beta=0.0, tau=0.0,
                             alpha=alpha, start_percent=0.0, end_percent=1.0, blocks="auto")
    rec = Recorder(comfy, monkeypatch, keep_tensors=True)
    sample(comfy, patched, video, steps=1)
    att = comfy.gag_core_attention
    ac = pack_module(comfy.patch, "attention_call")
    assert len(rec.guided) == 2
    for g in rec.guided:
        call, out = g["tensors"]
        want = att.gag_attention(call.q_bhld(), call.k_bhld(), call.v_bhld(), method="pladis", scale=s,
                                 alpha=alpha, mask=ac.mask_to_4d(call.mask))
        got = ac.output_to_bhld(out, call.heads, call.skip_output_reshape)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# LTX runs in bfloat16 or float32 only (its supported_inference_dtypes): no float16 case for it
HALF = [pytest.param(f, d, id=f"{f}-{n}") for f in VIDEO for d, n in ((torch.float16, "fp16"),
                                                                     (torch.bfloat16, "bf16"))
        if not (f.startswith("ltx") and d == torch.float16)]


@pytest.mark.parametrize("video, dtype", HALF, indirect=["video"])
def test_half_precision_stays_finite(comfy, monkeypatch, video, dtype):
    model = comfy.build(video, dtype=dtype)
    rec = Recorder(comfy, monkeypatch)
    for node, inputs in ((GAG, dict(scale=10.0, beta=0.3)), (PLADIS, dict(scale=2.0))):
        out = sample(comfy, comfy.run_node(node, model=model, **inputs), video)
        assert torch.isfinite(out).all(), node
    assert rec.guided and {g["dtype"] for g in rec.guided} == {dtype}


@pytest.mark.parametrize("video", [pytest.param("wan21_t2v", id="wan21_t2v"), pytest.param("ltxv", id="ltxv")],
                         indirect=True)
def test_long_video_stays_within_the_chunk_cap(comfy, monkeypatch, video):
    """A 2,048-token video: every logits block of a guided call fits the GAG_MAX_CHUNK_MB cap (queries chunked)."""
    cap_mb = 0.25
    monkeypatch.setenv("GAG_MAX_CHUNK_MB", str(cap_mb))
    att = comfy.gag_core_attention
    blocks = []
    logits = att._logits

    def recording(q, k_t, mask, dtype):
        z = logits(q, k_t, mask, dtype)
        blocks.append((z.shape[2], z.numel() * z.element_size()))
        return z

    monkeypatch.setattr(att, "_logits", recording)
    latent = (8, 32, 32) if video.startswith("wan") else (8, 16, 16)
    rec = Recorder(comfy, monkeypatch)
    out = sample(comfy, comfy.run_node(GAG, model=comfy.build(video), scale=5.0, beta=0.0), video, steps=1,
                 latent=latent)
    assert torch.isfinite(out).all() and rec.guided
    assert {g["q_len"] for g in rec.guided} == {2048}
    assert blocks and max(b for _, b in blocks) <= cap_mb * 2**20 / 14  # logits are 1 of ~14 key-length rows
    assert max(n for n, _ in blocks) < 2048  # the queries really were chunked


def test_a_wan_block_whose_video_has_as_many_tokens_as_the_text_keeps_self_attention_dense(comfy, monkeypatch):
    """q length = k length = text length: the block's first call is its self-attention and stays dense."""
    if not available(comfy, "wan21_t2v"):
        pytest.skip("no Wan")
    spec = VIDEO["wan21_t2v"]
    rec = Recorder(comfy, monkeypatch)
    # 512 video tokens = 512 text keys: latent T=4, 32 x 16 -> 4 * 16 * 8 tokens
    sample(comfy, comfy.run_node(GAG, model=comfy.build("wan21_t2v"), scale=5.0, beta=0.0), "wan21_t2v",
           steps=1, latent=(4, 32, 16))
    assert [g["block"] for g in rec.guided] == BLOCKS
    assert {(g["q_len"], g["k_len"]) for g in rec.guided} == {(512, spec["text"])}
