"""The chart's back end inside ComfyUI's real sampler (no server, no browser): a tiny seeded UNet and a tiny FLUX.1
model sampled through nodes.common_ksampler with the GAG node as ComfyUI's executor runs it (unique_id given).
One message per step, aggregated over all guided layers of the step; nothing at all when nobody subscribed.
"""
from __future__ import annotations


import pytest
import torch

from conftest import pack_module
from test_comfyui_tiny import EXPECTED_BLOCKS, Comfy

pytestmark = pytest.mark.comfyui
GAG = "GeometryAwareAttentionGuidance"


@pytest.fixture(scope="module")
def comfy():
    return Comfy()


@pytest.fixture
def tel(comfy, monkeypatch):
    """The pack's own telemetry module (as ComfyUI loaded it) with a fresh state and a list as websocket."""
    module = pack_module(comfy.patch, "telemetry")
    sent = []
    fresh = module.Telemetry(sender=lambda event, data, client: sent.append((event, data, client)))
    monkeypatch.setattr(module, "TELEMETRY", fresh)
    return module, fresh, sent


@pytest.mark.parametrize("family", ["sd15", "flux1"])
def test_one_message_per_sampler_step(comfy, tel, family):
    module, fresh, sent = tel
    model = comfy.build(family)
    patched = comfy.run_node(GAG, unique_id="42", model=model, scale=5.0, beta=0.0)
    baseline = comfy.sample(patched, family, steps=3)
    assert sent == []  # nobody subscribed: no message
    fresh.subscribe("page", ["42"])
    guided = comfy.sample(patched, family, steps=3)
    torch.testing.assert_close(guided, baseline)  # the statistics do not change the result
    assert [(e, c, m["node"], m["step"], m["steps"]) for e, m, c in sent] == \
        [(module.EVENT, "page", "42", i, 3) for i in range(3)]
    per_pass = len(EXPECTED_BLOCKS[family])
    calls = {m["calls"] for _, m, _ in sent}
    assert len(calls) == 1 and calls.pop() % per_pass == 0  # every guided layer of every pass, each step
    for _, m, _ in sent:
        assert m["rel_guidance"] > 0 and 0 <= m["capped_fraction"] <= 1 and 0 < m["parallel_share"] <= 1
    # another node id (a second GAG node in the graph) is not charted by this subscription
    sent.clear()
    other = comfy.run_node(GAG, unique_id="43", model=model, scale=5.0, beta=0.0)
    comfy.sample(other, family, steps=2)
    assert sent == []
