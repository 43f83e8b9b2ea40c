"""GAG on top of another pack's attention override: the sparse branch corrects the chain's dense output.

A foreign `optimized_attention_override` that halves every attention output stands in for NAG-like patches.
With α = 1 (entmax = softmax) or PLADIS s = 0 the guided model must give exactly what the foreign override gives
alone, on UNet and MMDiT alike; with real guidance the foreign override still runs for every call.
"""
from __future__ import annotations

import pytest
import torch

from test_comfyui_tiny import comfy  # noqa: F401  (fixture)

pytestmark = pytest.mark.comfyui
FAMILIES = ("sd15", "sdxl", "flux1", "sd3")


def _with_foreign_override(model, calls: list):
    """A clone of `model` whose attention goes through an override that halves the output."""
    def halve(func, *args, **kwargs):
        calls.append(1)
        return func(*args, **kwargs) * 0.5

    patched = model.clone()
    options = dict(patched.model_options.get("transformer_options", {}))
    options["optimized_attention_override"] = halve
    patched.model_options["transformer_options"] = options
    return patched


def _advanced(comfy, model, **kw):
    inputs = dict(method="gag", scale=5.0, beta=0.0, tau=15.0, alpha=1.5, start_percent=0.0, end_percent=1.0,
                  blocks="auto")
    inputs.update(kw)
    return comfy.run_node("GeometryAwareAttentionGuidanceAdvanced", model=model, **inputs)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_op_guidance_on_a_foreign_override_equals_that_override(comfy, family):  # noqa: F811
    base = comfy.build(family)
    calls: list = []
    foreign = _with_foreign_override(base, calls)
    alone = comfy.sample(foreign, family)
    n_alone = len(calls)
    assert n_alone > 0
    halve = foreign.model_options["transformer_options"]["optimized_attention_override"]
    key = (halve.__module__, halve.__qualname__)
    for kw in (dict(alpha=1.0), dict(alpha=1.0, beta=0.7, tau=0.0), dict(method="pladis", scale=0.0),
               dict(method="pladis", scale=3.0, alpha=1.0)):
        calls.clear()
        checked_before = key in comfy.patch._TEXT_MASS_VERDICT
        out = comfy.sample(_advanced(comfy, foreign, **kw), family)
        assert torch.equal(out, alone), (family, kw, float((out - alone).abs().max()))
        # the foreign override ran for every call, guided ones included, plus once more in the text-mass check on
        # its first joint call (then the verdict is remembered)
        checks = int(key in comfy.patch._TEXT_MASS_VERDICT and not checked_before)
        assert len(calls) == n_alone + checks
    guided = comfy.sample(_advanced(comfy, foreign), family)
    assert not torch.equal(guided, alone)
    assert torch.isfinite(guided).all()
    # and the guidance is the correction gag_core computes: the same change as without the foreign override
    plain_gain = comfy.sample(_advanced(comfy, base), family) - comfy.sample(base, family)
    assert float(plain_gain.abs().max()) > 0


@pytest.mark.parametrize("family", ("flux1", "sd3"))
def test_text_mass_channel_only_through_an_override_that_acts_as_plain_attention(comfy, family):  # noqa: F811
    """A pass-through override gives m as an extra value channel (same guidance as without it); one that changes
    outputs (the halving one) fails the check and keeps the log-sum-exp pass (exact, as the test above shows)."""
    patch = comfy.patch

    def plain(func, *args, **kwargs):
        return func(*args, **kwargs)

    base = comfy.build(family)
    through = base.clone()
    options = dict(through.model_options.get("transformer_options", {}))
    options["optimized_attention_override"] = plain
    through.model_options["transformer_options"] = options
    patch._TEXT_MASS_VERDICT.clear()
    guided_plain = comfy.sample(_advanced(comfy, base), family)
    guided_through = comfy.sample(_advanced(comfy, through), family)
    assert patch._TEXT_MASS_VERDICT == {(plain.__module__, plain.__qualname__): True}
    torch.testing.assert_close(guided_through, guided_plain, rtol=1e-4, atol=1e-4)
    comfy.sample(_advanced(comfy, _with_foreign_override(base, [])), family)
    assert [v for (m, q), v in patch._TEXT_MASS_VERDICT.items() if q.endswith("halve")] == [False]
