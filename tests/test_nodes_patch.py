"""Unit tests of the patching glue without ComfyUI: the attention override, the APPLY_MODEL wrapper, apply_guidance.

The "kernel" here is a plain function with ComfyUI's attention signature; the ModelPatcher is a small fake with
the methods apply_guidance uses (clone, wrappers, get_model_object).
"""
from __future__ import annotations

import copy
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from test_nodes_glue import fake_model, glue

patch = glue("patch")
blocks = glue("blocks")
routing = glue("routing")
telemetry = glue("telemetry")
attention = __import__("gag_glue.gag_core.attention", fromlist=["x"])
stats_mod = __import__("gag_glue.gag_core.stats", fromlist=["x"])


@pytest.fixture(autouse=True)
def strict(monkeypatch):
    monkeypatch.setattr(patch, "STRICT", True)


def kernel(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
    """Dense attention with ComfyUI's kernel signature and layouts (stands in for attention_pytorch)."""
    assert kwargs.get("_inside_attn_wrapper") is True
    if not skip_reshape:
        q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    if mask is not None:
        mask = mask[None, None] if mask.ndim == 2 else (mask[:, None] if mask.ndim == 3 else mask)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if skip_output_reshape:
        return o
    return o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1)


def settings(kind="unet", method="gag", scale=4.0, beta=0.2, tau=15.0, alpha=1.5, blocks_text="all",
             sigma_start=math.inf, sigma_end=0.0, family_key=None):
    fam = glue("families").FAMILIES[family_key or ("sdxl" if kind == "unet" else "flux1")]
    sel = blocks.parse_blocks(blocks_text, fam.kind, "all")
    return patch.GuidanceSettings(fam, method, scale, beta, tau, alpha, sel, sigma_start, sigma_end, "node-7")


def bhld(t, heads):
    return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


def kw(options, **extra):
    return {"transformer_options": options, "_inside_attn_wrapper": True, **extra}


# ----------------------------------------------------------------------------------------------- override

def test_unguided_calls_pass_through_exactly():
    info = routing.PassInfo("unet", text_len=6)
    ga = patch.GuidedAttention(settings(), info)
    q = torch.randn(2, 16, 32)
    opts = {"block": ("input", 1)}
    out = ga(kernel, q, q, q, 4, **kw(opts))  # self-attention (not inside attn2)
    assert torch.equal(out, kernel(q, q, q, 4, **kw(opts)))


@pytest.mark.parametrize("method", ["gag", "pladis"])
def test_cross_attention_equals_gag_core(method):
    heads = 4
    info = routing.PassInfo("unet", text_len=6, in_cross=True)
    s = settings(method=method)
    ga = patch.GuidedAttention(s, info)
    q, k, v = torch.randn(2, 16, 32), torch.randn(2, 6, 32), torch.randn(2, 6, 32)
    out = ga(kernel, q, k, v, heads, **kw({"block": ("output", 2)}))
    assert out.shape == q.shape
    want = attention.gag_attention(bhld(q, heads), bhld(k, heads), bhld(v, heads), method=method, scale=s.scale,
                                   beta=s.beta, tau=s.tau, alpha=s.alpha)
    torch.testing.assert_close(out, want.transpose(1, 2).reshape(2, 16, 32), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out, kernel(q, k, v, heads, **kw({})), atol=1e-4)


def test_joint_attention_with_mask_equals_gag_core():
    heads, text, img = 2, 5, 12
    L = text + img
    info = routing.PassInfo("mmdit", text_len=text, image_tokens=img)
    s = settings(kind="mmdit")
    ga = patch.GuidedAttention(s, info)
    q, k, v = (torch.randn(2, heads, L, 8) for _ in range(3))
    mask = torch.zeros(2, L, L)
    mask[1, :, 3:text] = -math.inf  # second prompt is shorter: its padding keys are masked
    opts = {"block_type": "double", "block_index": 0}
    out = ga(kernel, q, k, v, heads, skip_reshape=True, mask=mask, **kw(opts))
    assert out.shape == (2, L, heads * 8)
    want = attention.joint_gag_attention(q, k, v, text_range=(0, text), scale=s.scale, beta=s.beta, tau=s.tau,
                                         alpha=s.alpha, mask=mask[:, None])
    torch.testing.assert_close(out, want.transpose(1, 2).reshape(2, L, -1), rtol=1e-4, atol=1e-5)
    # text rows are untouched: they equal the dense output
    dense = kernel(q, k, v, heads, skip_reshape=True, mask=mask, **kw(opts))
    torch.testing.assert_close(out[:, :text], dense[:, :text], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[:, text:], dense[:, text:], atol=1e-4)


def test_reference_rows_keep_the_dense_output():
    heads, text, img, ref = 2, 5, 12, 12
    L = text + img + ref
    info = routing.PassInfo("mmdit", text_len=text, image_tokens=img)
    s = settings(kind="mmdit")
    ga = patch.GuidedAttention(s, info)
    q, k, v = (torch.randn(1, heads, L, 8) for _ in range(3))
    opts = {"block_type": "single", "block_index": 1}
    out = ga(kernel, q, k, v, heads, skip_reshape=True, skip_output_reshape=True, **kw(opts))
    dense = kernel(q, k, v, heads, skip_reshape=True, skip_output_reshape=True, **kw(opts))
    want = attention.joint_gag_attention(q, k, v, text_range=(0, text), scale=s.scale, beta=s.beta, tau=s.tau,
                                         alpha=s.alpha)
    torch.testing.assert_close(out[:, :, text + img:], dense[:, :, text + img:])  # [text | image | reference]
    torch.testing.assert_close(out[:, :, text:text + img], want[:, :, text:text + img], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out[:, :, text:text + img], dense[:, :, text:text + img], atol=1e-4)


def test_sd3_layout_and_skip_output_reshape():
    heads, text, img, d = 2, 4, 9, 8
    L = text + img
    info = routing.PassInfo("mmdit", text_len=text, image_tokens=img, block_ids=False)
    ga = patch.GuidedAttention(settings(kind="mmdit", family_key="sd3"), info)
    q, k = torch.randn(1, L, heads * d), torch.randn(1, L, heads * d)
    v = torch.randn(1, L, heads, d)  # SD3 keeps v as (B, L, H, D)
    out = ga(kernel, q, k, v, heads=heads, **kw({}))
    assert out.shape == (1, L, heads * d) and info.joint_calls == 1
    out4 = ga(kernel, q, k, v, heads=heads, skip_output_reshape=True, **kw({}))
    assert out4.shape == (1, heads, L, d)
    torch.testing.assert_close(out4.transpose(1, 2).reshape(1, L, -1), out)


def test_previous_override_is_chained_for_every_call():
    calls = []

    def previous(func, *args, **kwargs):
        calls.append(args[0].shape)
        return func(*args, **kwargs) * 1.5  # e.g. another guidance that rescales the attention output

    heads = 2
    info = routing.PassInfo("unet", text_len=6, in_cross=False)
    s = settings()
    ga = patch.GuidedAttention(s, info, previous=previous)
    q, k, v = torch.randn(1, 16, 16), torch.randn(1, 6, 16), torch.randn(1, 6, 16)
    opts = {"block": ("input", 1)}
    ga(kernel, q, q, q, heads, **kw(opts))
    assert len(calls) == 1  # unguided: the previous override ran
    info.in_cross = True
    out = ga(kernel, q, k, v, heads, **kw(opts))
    assert len(calls) == 2  # guided: its output is the dense O_d
    o_d = bhld(kernel(q, k, v, heads, **kw(opts)) * 1.5, heads)
    want = attention.gag_attention(bhld(q, heads), bhld(k, heads), bhld(v, heads), scale=s.scale, beta=s.beta,
                                   tau=s.tau, alpha=s.alpha, dense=lambda *a: o_d)
    torch.testing.assert_close(out, want.transpose(1, 2).reshape(1, 16, -1), rtol=1e-4, atol=1e-5)


def test_error_falls_back_to_dense_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(patch, "STRICT", False)
    monkeypatch.setattr(patch, "_warned", set())

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(patch, "gag_attention", broken)
    info = routing.PassInfo("unet", text_len=6, in_cross=True)
    ga = patch.GuidedAttention(settings(), info)
    q, k, v = torch.randn(1, 16, 16), torch.randn(1, 6, 16), torch.randn(1, 6, 16)
    opts = {"block": ("input", 1)}
    with caplog.at_level(logging.WARNING, logger="comfyui_gag"):
        out1 = ga(kernel, q, k, v, 2, **kw(opts))
        ga(kernel, q, k, v, 2, **kw(opts))
    assert torch.equal(out1, kernel(q, k, v, 2, **kw(opts)))
    assert sum("boom" in r.getMessage() for r in caplog.records) == 1
    monkeypatch.setattr(patch, "STRICT", True)
    with pytest.raises(RuntimeError, match="boom"):
        ga(kernel, q, k, v, 2, **kw(opts))


def test_telemetry_stats_are_passed_and_filled(monkeypatch):
    seen = []
    acc = stats_mod.GuidanceStats()

    def stats_for(node_key, transformer_options):
        seen.append((node_key, transformer_options.get("block")))
        return acc

    monkeypatch.setattr(telemetry, "stats_for", stats_for)
    info = routing.PassInfo("unet", text_len=6, in_cross=True)
    ga = patch.GuidedAttention(settings(), info)
    q, k, v = torch.randn(1, 16, 16), torch.randn(1, 6, 16), torch.randn(1, 6, 16)
    ga(kernel, q, k, v, 2, **kw({"block": ("output", 0)}))
    assert seen == [("node-7", ("output", 0))]
    assert acc.calls >= 1 and acc.tokens == 16 * 2


# ----------------------------------------------------------------------------------------------- wrapper

class Executor:
    """Stands in for ComfyUI's WrapperExecutor: records what the model would receive."""

    def __init__(self, base_model=None):
        self.class_obj = base_model
        self.seen = None

    def __call__(self, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        self.seen = transformer_options
        return x


def run_wrapper(s, sigma, context, options, x=None, base_model=None):
    ex = Executor(base_model)
    x = torch.randn(2, 16, 8, 8) if x is None else x
    patch.GuidancePatch(s)(ex, x, torch.full((2,), sigma), None, context, None, options)
    return ex.seen


def test_wrapper_outside_window_changes_nothing():
    options = {"patches": {}}
    seen = run_wrapper(settings(sigma_start=5.0, sigma_end=1.0), 7.0, torch.randn(2, 6, 16), options)
    assert seen is options and "optimized_attention_override" not in options
    seen = run_wrapper(settings(sigma_start=5.0, sigma_end=1.0), 0.5, torch.randn(2, 6, 16), options)
    assert seen is options


def test_wrapper_without_text_changes_nothing():
    options = {}
    assert run_wrapper(settings(), 1.0, None, options) is options


def test_wrapper_installs_override_on_a_copy_and_chains():
    def previous(func, *a, **k):
        return func(*a, **k)

    mark_before = lambda n, c, v, e: (n, c, v)  # noqa: E731
    options = {"optimized_attention_override": previous, "patches": {"attn2_patch": [mark_before]}}
    frozen = copy.copy(options["patches"]["attn2_patch"])
    seen = run_wrapper(settings(), 3.0, torch.randn(2, 6, 16), options)
    assert seen is not options and options["optimized_attention_override"] is previous
    assert options["patches"]["attn2_patch"] == frozen and "attn2_output_patch" not in options["patches"]
    ga = seen["optimized_attention_override"]
    assert isinstance(ga, patch.GuidedAttention) and ga.previous is previous
    assert ga.info.kind == "unet" and ga.info.text_len == 6
    # the attn2 patch pair flags the calls inside attn2
    mark, unmark = seen["patches"]["attn2_patch"][-1], seen["patches"]["attn2_output_patch"][-1]
    assert seen["patches"]["attn2_patch"][0] is mark_before
    n = torch.randn(1, 4, 8)
    assert mark(n, n, n, {})[0] is n and ga.info.in_cross
    assert unmark(n, {}) is n and not ga.info.in_cross


def test_wrapper_records_mmdit_text_span_and_image_tokens():
    net = type("Net", (), {"patch_size": 2, "register_length": 3})()
    base = type("Base", (), {"diffusion_model": net})()
    seen = run_wrapper(settings(kind="mmdit"), 0.7, torch.randn(2, 10, 16), {}, x=torch.randn(2, 16, 9, 8),
                       base_model=base)
    info = seen["optimized_attention_override"].info
    assert info.kind == "mmdit" and info.text_len == 13 and info.image_tokens == 5 * 4
    assert "patches" not in seen


# ----------------------------------------------------------------------------------------------- apply_guidance

class Sampling:
    def percent_to_sigma(self, p):
        return 999999999.9 if p <= 0 else (0.0 if p >= 1 else 10.0 * (1.0 - p))


class FakePatcher:
    def __init__(self, model):
        self.model = model
        self.wrappers = {}
        self.model_options = {"transformer_options": {}}

    def clone(self):
        n = FakePatcher(self.model)
        n.wrappers = {k: {k1: list(w) for k1, w in v.items()} for k, v in self.wrappers.items()}
        n.model_options = copy.deepcopy(self.model_options)
        return n

    def get_model_object(self, name):
        assert name == "model_sampling"
        return Sampling()

    def add_wrapper_with_key(self, wrapper_type, key, wrapper):
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def remove_wrappers_with_key(self, wrapper_type, key):
        self.wrappers.get(wrapper_type, {}).pop(key, None)


def test_apply_guidance_clones_and_replaces_its_own_wrapper():
    model = FakePatcher(fake_model("SDXL", "UNetModel"))
    out = patch.apply_guidance(model, method="gag", scale=5.0, beta=0.1, blocks="auto", node_key=3)
    assert out is not model and model.wrappers == {} and model.model_options == {"transformer_options": {}}
    (w,) = out.wrappers["apply_model"]["comfyui_gag"]
    s = w.settings
    assert (s.family.key, s.method, s.scale, s.beta, s.node_key) == ("sdxl", "gag", 5.0, 0.1, "3")
    assert s.sigma_start == math.inf and s.sigma_end == 0.0
    assert s.selection.contains("input", 4) and not s.selection.contains("middle", 0)
    again = patch.apply_guidance(out, method="pladis", scale=2.0, start_percent=0.2, end_percent=0.8)
    (w2,) = again.wrappers["apply_model"]["comfyui_gag"]
    assert w2.settings.method == "pladis" and len(out.wrappers["apply_model"]["comfyui_gag"]) == 1
    assert w2.settings.sigma_start == pytest.approx(8.0) and w2.settings.sigma_end == pytest.approx(2.0)


def test_apply_guidance_unsupported_model_passes_through(caplog):
    model = FakePatcher(fake_model("StableAudio1", "AudioDiffusionTransformer"))
    with caplog.at_level(logging.WARNING, logger="comfyui_gag"):
        out = patch.apply_guidance(model, method="gag", scale=5.0)
    assert out is model and model.wrappers == {}
    assert len([r for r in caplog.records if "not a supported model" in r.getMessage()]) == 1


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(method="cfg"), "'cfg'"),
    (dict(alpha=2.5), "2.5"),
    (dict(tau=-1.0), "-1.0"),
    (dict(scale=float("nan")), "nan"),
    (dict(start_percent=0.7, end_percent=0.3), "0.7"),
    (dict(end_percent=1.5), "1.5"),
    (dict(blocks="double"), "'double'"),
])
def test_apply_guidance_validates(kwargs, fragment):
    model = FakePatcher(fake_model("SDXL", "UNetModel"))
    args = dict(method="gag", scale=5.0) | kwargs
    with pytest.raises(ValueError) as e:
        patch.apply_guidance(model, **args)
    assert fragment in str(e.value)
