"""Integration tests: the nodes on tiny seeded models of every supported family, through ComfyUI's sampler.

For each family: guidance runs in exactly the intended layers, changes the output, leaves the input model
unchanged, PLADIS equals gag_core's PLADIS on the same tensors, nothing changes outside the start/end window,
float16 stays finite. Plus CFG batches, batch > 1, reference latents, override chaining, ComfyUI's kernels and
an unsupported model. Skipped without COMFYUI_PATH.
"""
from __future__ import annotations

import copy
import logging
import math

import pytest
import torch

from conftest import pack_module
from test_comfyui_tiny import EXPECTED_BLOCKS, CALLS_PER_PASS, FAMILIES, comfy  # noqa: F401  (fixture)

pytestmark = pytest.mark.comfyui

GAG = "GeometryAwareAttentionGuidance"
ADV = "GeometryAwareAttentionGuidanceAdvanced"
PLADIS = "PLADISGuidance"


class Recorder:
    """Counts, per model pass, every attention call the override sees and the guided ones (optionally their tensors)."""

    def __init__(self, comfy, monkeypatch, keep_tensors=False):
        self.infos, self.calls, self.guided, self.passes = [], [], [], 0
        ga, gp = comfy.patch.GuidedAttention, comfy.patch.GuidancePatch
        call_orig, guided_orig, wrapper_orig = ga.__call__, ga.guided, gp.__call__
        rec = self

        def index(info):
            for i, known in enumerate(rec.infos):
                if known is info:
                    return i
            rec.infos.append(info)
            return len(rec.infos) - 1

        def call(self, func, *args, **kwargs):
            rec.calls.append(index(self.info))
            return call_orig(self, func, *args, **kwargs)

        def guided(self, func, call, route):
            out = guided_orig(self, func, call, route)
            rec.guided.append(dict(pass_index=index(self.info), block=route.block, kind=route.kind,
                                   text_range=route.text_range, guided_stop=route.guided_stop,
                                   text_len=self.info.text_len, q_len=call.q_len,
                                   k_len=call.k_len, batch=call.batch, dtype=call.q.dtype, func=func.__name__,
                                   tensors=(call, out) if keep_tensors else None))
            return out

        def wrapper(self, executor, *args, **kwargs):
            rec.passes += 1
            return wrapper_orig(self, executor, *args, **kwargs)

        monkeypatch.setattr(ga, "__call__", call)
        monkeypatch.setattr(ga, "guided", guided)
        monkeypatch.setattr(gp, "__call__", wrapper)

    def per_pass(self):
        out = {}
        for g in self.guided:
            out.setdefault(g["pass_index"], []).append(g)
        return out


def options_snapshot(model):
    return copy.deepcopy({k: v for k, v in model.model_options.items()}), copy.deepcopy(model.wrappers)


# ----------------------------------------------------------------------------------------------- per family

@pytest.mark.parametrize("family", FAMILIES)
def test_guides_exactly_the_intended_layers(comfy, monkeypatch, family):
    model = comfy.build(family)
    patched = comfy.run_node(GAG, model=model, scale=5.0, beta=0.0)
    rec = Recorder(comfy, monkeypatch)
    comfy.sample(patched, family)
    passes = rec.per_pass()
    assert rec.passes >= 2 and len(passes) == rec.passes == len(rec.infos)  # every pass guided (window 0-1)
    for index, guided in passes.items():
        assert [g["block"] for g in guided] == EXPECTED_BLOCKS[family]
        assert rec.calls.count(index) == CALLS_PER_PASS[family]
        for g in guided:
            if family in ("sd15", "sdxl"):  # cross-attention only: keys are the text tokens
                assert g["kind"] == "cross" and g["k_len"] == g["text_len"] and g["q_len"] in (64, 16)
            else:  # joint attention [text | image]: the span is the conditioning
                tokens = 64 if family == "flux2" else 16
                assert g["kind"] == "joint" and g["q_len"] == g["k_len"] == g["text_len"] + tokens
                assert g["text_range"] == (0, g["text_len"])
                assert g["text_len"] in ({512} if family == "flux2" else {7, 9})


@pytest.mark.parametrize("family", FAMILIES)
def test_changes_output_and_leaves_the_input_model_alone(comfy, family):
    model = comfy.build(family)
    before = options_snapshot(model)
    baseline = comfy.sample(model, family)
    patched = comfy.run_node(GAG, model=model, scale=5.0, beta=0.0)
    assert patched is not model
    guided = comfy.sample(patched, family)
    assert torch.isfinite(guided).all()
    assert (guided - baseline).abs().max() > 1e-6 * max(1.0, float(baseline.abs().max()))
    # the caller's model (what a bypassed node passes on) still gives the baseline exactly
    assert torch.equal(comfy.sample(model, family), baseline)
    assert options_snapshot(model) == before


@pytest.mark.parametrize("family", FAMILIES)
def test_pladis_equals_gag_core_pladis(comfy, monkeypatch, family):
    s, alpha = 2.0, 1.5
    model = comfy.build(family)
    patched = comfy.run_node(ADV, model=model, method="pladis", scale=s, beta=0.0, tau=0.0, alpha=alpha,
                             start_percent=0.0, end_percent=1.0, blocks="auto")
    rec = Recorder(comfy, monkeypatch, keep_tensors=True)
    comfy.sample(patched, family, steps=1)
    assert rec.guided
    att = comfy.gag_core_attention
    ac = pack_module(comfy.patch, "attention_call")
    for g in rec.guided[: len(EXPECTED_BLOCKS[family])]:
        call, out = g["tensors"]
        q, k, v = (ac.to_bhld(t, call.heads, call.skip_reshape) for t in (call.q, call.k, call.v))
        mask = ac.mask_to_4d(call.mask)
        if g["kind"] == "cross":
            want = att.gag_attention(q, k, v, method="pladis", scale=s, alpha=alpha, mask=mask)
        else:
            want = att.joint_gag_attention(q, k, v, text_range=g["text_range"], method="pladis", scale=s,
                                           alpha=alpha, mask=mask)
        got = ac.output_to_bhld(out, call.heads, call.skip_output_reshape)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def percent_at(model_sampling, sigma: float) -> float:
    """The schedule percent whose sigma is `sigma` (percent_to_sigma falls monotonically), by bisection."""
    lo, hi = 1e-6, 1.0 - 1e-6
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if model_sampling.percent_to_sigma(mid) > sigma:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("family", FAMILIES)
def test_outside_the_window_equals_baseline(comfy, monkeypatch, family):
    from comfy.samplers import calculate_sigmas

    model = comfy.build(family)
    baseline = comfy.sample(model, family)
    sampling = model.get_model_object("model_sampling")
    s0, s1 = (float(x) for x in calculate_sigmas(sampling, "normal", 2)[:2])  # the two steps
    assert s0 > s1 > 0
    p_a, p_b = percent_at(sampling, s0 - 0.25 * (s0 - s1)), percent_at(sampling, s1 + 0.25 * (s0 - s1))
    seen = []
    pass_info = comfy.patch.GuidancePatch.pass_info

    def recording(self, x, t, *args):
        info = pass_info(self, x, t, *args)
        seen.append((round(float(t.max()), 4), info is not None))
        return info

    monkeypatch.setattr(comfy.patch.GuidancePatch, "pass_info", recording)

    def run(start, end):
        seen.clear()
        out = comfy.sample(comfy.run_node(ADV, model=model, method="gag", scale=8.0, beta=0.0, tau=15.0, alpha=1.5,
                                          start_percent=start, end_percent=end, blocks="auto"), family)
        return out, {sigma for sigma, guided in seen if guided}, {sigma for sigma, _ in seen}

    out, guided, sigmas = run(p_a, p_b)  # a window between the two steps: nothing guided
    assert torch.equal(out, baseline) and not guided and len(sigmas) == 2
    out, guided, _ = run(0.0, p_a)  # only the first step
    assert guided == {round(s0, 4)} and not torch.equal(out, baseline)
    out_late, guided, _ = run(p_b, 1.0)  # only the second step
    assert guided == {round(s1, 4)} and not torch.equal(out_late, baseline) and not torch.equal(out_late, out)


@pytest.mark.parametrize("family", FAMILIES)
def test_float16_gives_finite_latents(comfy, monkeypatch, family):
    model = comfy.build(family, dtype=torch.float16)
    rec = Recorder(comfy, monkeypatch)
    for node, inputs in ((GAG, dict(scale=10.0, beta=0.3)), (PLADIS, dict(scale=2.0))):
        out = comfy.sample(comfy.run_node(node, model=model, **inputs), family)
        assert torch.isfinite(out).all(), node
    assert rec.guided and {g["dtype"] for g in rec.guided} == {torch.float16}


@pytest.mark.parametrize("family", ["flux1", "qwen_image", "sdxl"])
def test_bfloat16_gives_finite_latents(comfy, monkeypatch, family):
    model = comfy.build(family, dtype=torch.bfloat16)
    rec = Recorder(comfy, monkeypatch)
    out = comfy.sample(comfy.run_node(GAG, model=model, scale=10.0, beta=0.0), family)
    assert torch.isfinite(out).all()
    assert rec.guided and {g["dtype"] for g in rec.guided} == {torch.bfloat16}


# ----------------------------------------------------------------------------------------------- batches, references

@pytest.mark.parametrize("family", ["sdxl", "flux1", "flux2", "qwen_image"])
def test_cfg_batch_and_batch_of_two(comfy, monkeypatch, family):
    model = comfy.build(family)
    # prompts of equal length: ComfyUI runs cond and uncond of both latents as one batch of 4
    negative = comfy.conditioning(family, 7, seed=2)
    baseline = comfy.sample(model, family, batch=2, negative=negative)
    rec = Recorder(comfy, monkeypatch)
    out = comfy.sample(comfy.run_node(GAG, model=model, scale=5.0, beta=0.0), family, batch=2, negative=negative)
    assert out.shape == baseline.shape and torch.isfinite(out).all() and not torch.equal(out, baseline)
    assert {g["batch"] for g in rec.guided} == {4}
    assert len(rec.per_pass()) == rec.passes == 2


@pytest.mark.parametrize("family", ["flux1", "qwen_image", "flux2"])
def test_reference_latents_are_not_taken_for_text(comfy, monkeypatch, family):
    model = comfy.build(family)
    ref = torch.randn(1, 16 if family != "flux2" else 128, 8, 8, generator=torch.Generator().manual_seed(3))
    if family == "qwen_image":
        ref = ref.unsqueeze(2)
    positive = comfy.conditioning(family, 7, seed=1, reference=ref)
    negative = comfy.conditioning(family, 9, seed=2, reference=ref)
    baseline = comfy.sample(model, family, positive=positive, negative=negative)
    rec = Recorder(comfy, monkeypatch)
    out = comfy.sample(comfy.run_node(GAG, model=model, scale=5.0, beta=0.0), family,
                       positive=positive, negative=negative)
    assert torch.isfinite(out).all() and not torch.equal(out, baseline)
    tokens = 64 if family == "flux2" else 16
    assert rec.guided
    for g in rec.guided:  # [text | image | reference]: reference rows keep the dense output
        assert g["q_len"] == g["text_len"] + 2 * tokens and g["text_range"] == (0, g["text_len"])
        assert g["guided_stop"] == g["text_len"] + tokens


# ----------------------------------------------------------------------------------------------- host integration

@pytest.mark.parametrize("family", ["sdxl", "flux1"])
def test_existing_override_is_chained(comfy, family):
    model = comfy.build(family)
    plain = comfy.sample(comfy.run_node(GAG, model=model, scale=5.0, beta=0.0), family)
    seen = []

    def other_override(func, *args, **kwargs):  # e.g. a SageAttention or NAG patch
        seen.append(func.__name__)
        return func(*args, **kwargs)

    other = model.clone()
    other.model_options["transformer_options"]["optimized_attention_override"] = other_override
    chained = comfy.sample(comfy.run_node(GAG, model=other, scale=5.0, beta=0.0), family)
    # a pass-through override changes nothing but rounding (its O_d is the host kernel's, gag_core's own otherwise) ...
    torch.testing.assert_close(chained, plain, atol=1e-4, rtol=1e-4)
    assert len(seen) >= 2 * CALLS_PER_PASS[family]  # ... but it ran for every attention call


def test_later_node_replaces_earlier_one(comfy):
    model = comfy.build("sdxl")
    once = comfy.run_node(PLADIS, model=model, scale=2.0)
    twice = comfy.run_node(PLADIS, model=comfy.run_node(GAG, model=model, scale=9.0, beta=0.5), scale=2.0)
    assert len(twice.wrappers["apply_model"]["comfyui_gag"]) == 1
    assert torch.equal(comfy.sample(once, "sdxl"), comfy.sample(twice, "sdxl"))


def test_pladis_node_equals_advanced_pladis(comfy):
    model = comfy.build("flux1")
    simple = comfy.sample(comfy.run_node(PLADIS, model=model, scale=2.5), "flux1")
    adv = comfy.sample(comfy.run_node(ADV, model=model, method="pladis", scale=2.5, beta=0.0, tau=0.0, alpha=1.5,
                                      start_percent=0.0, end_percent=1.0, blocks="auto"), "flux1")
    assert torch.equal(simple, adv)


def test_block_selector_limits_the_guided_blocks(comfy, monkeypatch):
    rec = Recorder(comfy, monkeypatch)
    model = comfy.build("sdxl")
    patched = comfy.run_node(ADV, model=model, method="gag", scale=5.0, beta=0.0, tau=15.0, alpha=1.5,
                             start_percent=0.0, end_percent=1.0, blocks="middle, output:1-2")
    comfy.sample(patched, "sdxl", steps=1)
    for guided in rec.per_pass().values():
        assert [g["block"] for g in guided] == [("middle", 0), ("output", 1), ("output", 2)]
    with pytest.raises(ValueError, match="'single'"):
        comfy.run_node(ADV, model=model, method="gag", scale=5.0, beta=0.0, tau=15.0, alpha=1.5,
                       start_percent=0.0, end_percent=1.0, blocks="single")


def test_unsupported_model_passes_through_with_one_warning(comfy, caplog):
    model = comfy.build("auraflow")
    baseline = comfy.sample(model, "auraflow")
    with caplog.at_level(logging.WARNING):
        out_model = comfy.run_node(GAG, model=model, scale=5.0, beta=0.0)
    assert out_model is model
    warnings = [r for r in caplog.records if "not a supported model" in r.getMessage()]
    assert len(warnings) == 1 and "AuraFlow" in warnings[0].getMessage()
    assert torch.equal(comfy.sample(out_model, "auraflow"), baseline)


@pytest.mark.parametrize("kernel", ["attention_basic", "attention_pytorch", "attention_sub_quad", "attention_split"])
@pytest.mark.parametrize("layout", ["unet", "joint_masked", "joint_key_padding"])
def test_comfy_kernels_give_the_same_guidance(comfy, kernel, layout):
    """The override on ComfyUI's own kernels (called through wrap_attn) equals gag_core with its own dense."""
    import comfy.ldm.modules.attention as host

    patch = comfy.patch
    ac = pack_module(patch, "attention_call")
    routing = pack_module(patch, "routing")
    blocks = pack_module(patch, "blocks")
    families = pack_module(patch, "families")
    gen = torch.Generator().manual_seed(5)
    heads, d = 2, 16
    fam = families.FAMILIES["sdxl" if layout == "unet" else "flux1"]
    sel = blocks.parse_blocks("all", fam.kind, "all")
    settings = patch.GuidanceSettings(fam, "gag", 6.0, 0.3, 15.0, 1.5, sel, math.inf, 0.0)
    fn = getattr(host, kernel)
    if layout == "unet":
        info = routing.PassInfo("unet", text_len=7, in_cross=True)
        q, k, v = (torch.randn(2, n, heads * d, generator=gen) for n in (20, 7, 7))
        options = {"block": ("output", 1)}
        options["optimized_attention_override"] = patch.GuidedAttention(settings, info)
        out = fn(q, k, v, heads, transformer_options=options)
        want = comfy.gag_core_attention.gag_attention(
            *(ac.to_bhld(t, heads, False) for t in (q, k, v)), scale=6.0, beta=0.3, tau=15.0, alpha=1.5)
        want = ac.output_from_bhld(want, False)
    else:
        text, img = 5, 12
        info = routing.PassInfo("mmdit", text_len=text, image_tokens=img)
        q, k, v = (torch.randn(2, heads, text + img, d, generator=gen) for _ in range(3))
        if layout == "joint_masked":  # (B, L, L) additive, as FLUX's attention_mask
            mask = torch.zeros(2, text + img, text + img)
            mask[1, :, 3:text] = -10000.0  # shorter second prompt: padded text keys masked
        else:  # (B, 1, L) key padding with -finfo.max, as Qwen-Image in ComfyUI 0.12
            mask = torch.zeros(2, 1, text + img)
            mask[1, 0, 3:text] = -torch.finfo(torch.float32).max
        options = {"block_type": "single", "block_index": 0}
        options["optimized_attention_override"] = patch.GuidedAttention(settings, info)
        out = fn(q, k, v, heads, mask=mask, skip_reshape=True, transformer_options=options)
        want = comfy.gag_core_attention.joint_gag_attention(
            q, k, v, text_range=(0, text), scale=6.0, beta=0.3, tau=15.0, alpha=1.5, mask=mask[:, None])
        want = ac.output_from_bhld(want, False)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
