"""Bad input on ComfyUI's own tiny models (issue 15): `blocks` checked against each family's real blocks, inputs
refused whatever sent them, one warning for a sampling run that guided nothing, eager gag_core by default."""
from __future__ import annotations

import logging
import sys

import pytest
import torch

from test_comfyui_tiny import EXPECTED_BLOCKS, FAMILIES, comfy  # noqa: F401  (fixture)

pytestmark = pytest.mark.comfyui

GAG = "GeometryAwareAttentionGuidance"
ADV = "GeometryAwareAttentionGuidanceAdvanced"
BAD_ITEM = {"sd15": "input:99", "sdxl": "output:4", "flux1": "double:2", "flux2": "single:99",
            "qwen_image": "double:2-9", "sd3": "single"}


def advanced(comfy, model, **kw):
    args = dict(method="gag", scale=5.0, beta=0.0, tau=15.0, alpha=1.5, start_percent=0.0, end_percent=1.0,
                blocks="auto") | kw
    return comfy.run_node(ADV, model=model, **args)


def pack_module(comfy, name):
    return sys.modules[comfy.patch.__name__.rsplit(".", 2)[0] + "." + name]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_model_blocks_are_the_guided_blocks(comfy, family):
    """model_blocks of the real network lists exactly the blocks the preset guides there (as in EXPECTED_BLOCKS)."""
    blocks, families = pack_module(comfy, "nodes.blocks"), pack_module(comfy, "nodes.families")
    model = comfy.build(family)
    available = blocks.model_blocks(families.FAMILIES[family].block_counts, model.model.diffusion_model)
    assert available is not None
    listed = {(g, i) for g, spans in available.items() for lo, hi in spans for i in range(lo, hi + 1)}
    expected = set(EXPECTED_BLOCKS[family])
    if family in ("sd15", "sdxl"):
        expected.add(("middle", 0))  # not in the preset (input, output), but a block with cross-attention
    assert listed == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_an_item_matching_no_block_is_refused_listing_the_blocks(comfy, family):
    model = comfy.build(family)
    with pytest.raises(ValueError) as e:
        advanced(comfy, model, blocks=BAD_ITEM[family])
    assert repr(BAD_ITEM[family]) in str(e.value) and "its blocks are:" in str(e.value)


@pytest.mark.parametrize("change, fragment", [
    (dict(beta=5.0), "beta"), (dict(scale=-5.0), "scale"), (dict(scale="3"), "'3'"),
    (dict(start_percent=0.5, end_percent=0.5), "window is empty"), (dict(blocks="input:" + "9" * 5000), "blocks"),
    (dict(blocks="input:0-999999999"), "too large"),
])
def test_node_inputs_are_checked_without_the_front_end(comfy, change, fragment):
    model = comfy.build("sd15")
    with pytest.raises(ValueError) as e:
        advanced(comfy, model, **change)
    assert fragment in str(e.value) and len(str(e.value)) < 300


def nothing_guided(caplog):
    return [r.getMessage() for r in caplog.records if "was not guided at all" in r.getMessage()]


@pytest.mark.parametrize("family", ["sd15", "flux1"])
def test_a_run_that_guides_nothing_warns_once_and_a_guided_one_does_not(comfy, caplog, family):
    model = comfy.build(family)
    sampling = model.get_model_object("model_sampling")
    from comfy.samplers import calculate_sigmas

    s0, s1 = (float(x) for x in calculate_sigmas(sampling, "normal", 2)[:2])
    mid = s1 + 0.5 * (s0 - s1)  # a window between the two steps of the run: no step inside
    lo = next(p / 1000 for p in range(1000) if float(sampling.percent_to_sigma(p / 1000)) <= mid)
    patched = advanced(comfy, model, start_percent=lo, end_percent=min(lo + 0.002, 1.0))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="comfyui_gag"):
        out = comfy.sample(patched, family)
    (msg,) = nothing_guided(caplog)
    assert "no step fell inside the step window" in msg
    assert torch.equal(out, comfy.sample(model, family))  # nothing guided indeed
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="comfyui_gag"):
        comfy.sample(comfy.run_node(GAG, model=model, scale=5.0, beta=0.0), family)
    assert nothing_guided(caplog) == []


def test_the_run_check_counts_per_run_on_the_real_sampler(comfy, caplog):
    """Both wrappers of the node run on ComfyUI's sampler and share the tally, which ends with the run."""
    model = comfy.build("flux1")
    patched = comfy.run_node(GAG, model=model, scale=5.0, beta=0.0)
    (watch,) = patched.wrappers["outer_sample"]["comfyui_gag"]
    (guidance,) = patched.wrappers["apply_model"]["comfyui_gag"]
    assert watch.patch is guidance
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="comfyui_gag"):
        comfy.sample(patched, "flux1", steps=2)
    assert nothing_guided(caplog) == [] and guidance.tally is None  # the run's tally is gone after it


def test_gag_core_compiles_only_joint_and_video_size_calls_inside_comfyui(comfy, monkeypatch):
    entmax = pack_module(comfy, "gag_core.entmax")
    big = torch.empty(2, 8, 4096, 77)  # an SD1.5 cross-attention call: eager
    monkeypatch.delenv("GAG_COMPILE", raising=False)
    assert entmax._AUTO["min_call_logits"] == 2**24 and not entmax._use_compile(big)
    with entmax.call_logits(24 * 4096 * 512):  # a chunk of a FLUX.1 joint call at 1024²: compiled
        assert entmax._use_compile(big)
    monkeypatch.setenv("GAG_COMPILE", "1")
    assert entmax._use_compile(big)
