"""Bad input at the node boundary (issue 15), without ComfyUI: bounded `blocks` parsing checked against the
model's blocks, numeric inputs checked whatever sent them, and one warning when a sampling run guided nothing."""
from __future__ import annotations

import logging
import math
import time
import tracemalloc

import pytest
import torch

from test_nodes_glue import fake_model, glue

blocks = glue("blocks")
families = glue("families")
inputs = glue("inputs")
patch = glue("patch")
routing = glue("routing")
run_check = glue("run_check")

# The blocks of an SD1.5 UNet with attention at input 1-2, 4-5, 7-8, the middle, output 3-11 (as ComfyUI numbers
# them), of FLUX.1-dev (19 double, 38 single) and of SD3 (24 joint blocks, no single group).
SD15 = {"input": blocks.spans_of([1, 2, 4, 5, 7, 8]), "middle": ((0, 0),), "output": ((3, 11),)}
FLUX = {"double": ((0, 18),), "single": ((0, 37),)}
SD3 = {"double": ((0, 23),)}


def bounded(fn, seconds=0.5, mib=2.0):
    """Run fn, asserting it takes at most `seconds` and allocates at most `mib` MiB at its peak; its result."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        out = fn()
    finally:
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    assert elapsed < seconds and peak < mib, (elapsed, peak)
    return out


# ----------------------------------------------------------------------------------------------- D1: bounded parsing

@pytest.mark.parametrize("text, fragment", [
    ("input:0-10000000", "too large (8 digits"), ("input:0-999999999", "too large (9 digits"),
    ("double:0-99999999999999999999", "too large (20 digits"), ("input:" + "9" * 900, "too large (900 digits"),
    ("input:" + "9" * 5000, "5,006 characters long"), ("input:1-" + "9" * 5000, "5,008 characters long"),
])
def test_huge_block_numbers_fail_fast_with_a_blocks_error(text, fragment):
    def parse():
        with pytest.raises(ValueError) as e:
            blocks.parse_blocks(text, "mmdit" if text.startswith("double") else "unet", "input")
        return str(e.value)

    message = bounded(parse)
    assert message.startswith("blocks") and fragment in message and len(message) < 250


def test_a_wide_range_is_never_expanded():
    sel = bounded(lambda: blocks.parse_blocks("input:0-999999, output:5-999998", "unet", "input"))
    assert sel.contains("input", 999_999) and sel.contains("output", 500_000) and not sel.contains("output", 4)
    assert sel.groups == (("input", ((0, 999_999),)), ("output", ((5, 999_998),)))


@pytest.mark.parametrize("text", ["input:1," * 125_000, "x" * 1_000_001, "input:1-2" + " " * 2000])
def test_long_text_is_refused_quickly_with_a_short_message(text):
    def parse():
        with pytest.raises(ValueError) as e:
            blocks.parse_blocks(text, "unet", "input", SD15)
        return str(e.value)

    message = bounded(parse)
    assert f"{len(text):,} characters long (at most 1,000)" in message and len(message) < 250


def test_the_longest_accepted_text_parses_in_bounded_time():
    text = ",".join(f"input:{i}-{i}" for i in range(110))[:1000].rstrip(",-0123456789") + "1"
    sel = bounded(lambda: blocks.parse_blocks(text, "unet", "input"))
    assert sel.contains("input", 1)


def test_intervals_merge_and_round_trip():
    sel = blocks.parse_blocks("output:3-5, output:6, output:1, output:2-4, input:0-2, input:1", "unet", "input")
    assert dict(sel.groups) == {"input": ((0, 2),), "output": ((1, 6),)}
    assert blocks.parse_blocks(sel.describe(), "unet", "input") == sel


# ----------------------------------------------------------------------------------------------- against the model

@pytest.mark.parametrize("text, available, kind, bad", [
    ("input:99", SD15, "unet", "'input:99'"),
    ("input:0", SD15, "unet", "'input:0'"),
    ("input:1, middle:1", SD15, "unet", "'middle:1'"),
    ("output:12-400", SD15, "unet", "'output:12-400'"),
    ("double:99", FLUX, "mmdit", "'double:99'"),
    ("single:38", FLUX, "mmdit", "'single:38'"),
    ("single", SD3, "mmdit", "'single'"),
])
def test_an_item_matching_no_block_of_the_model_is_an_error_listing_them(text, available, kind, bad):
    with pytest.raises(ValueError) as e:
        blocks.parse_blocks(text, kind, "all", available)
    message = str(e.value)
    assert bad in message and "matches no block of this model" in message
    assert blocks.describe_blocks(available) in message


def test_items_that_touch_a_block_are_accepted():
    sel = blocks.parse_blocks("input:0-1, output:11-400, middle", "unet", "input", SD15)
    assert sel.contains("input", 1) and sel.contains("output", 11) and sel.contains("middle", 0)
    assert blocks.parse_blocks("double:18-99, single:0", "mmdit", "double", FLUX).contains("double", 18)
    assert blocks.describe_blocks(SD15) == "input:1-2, input:4-5, input:7-8, middle:0, output:3-11"


def test_auto_and_all_are_not_checked_item_by_item():
    """The preset's 'double,single' on SD3 (no single blocks) still guides the double blocks."""
    sel = blocks.parse_blocks("auto", "mmdit", "double,single", SD3)
    assert blocks.matches_any(sel, SD3) and sel.contains("double", 0)
    assert blocks.matches_any(blocks.parse_blocks("all", "mmdit", "double", SD3), SD3)
    assert not blocks.matches_any(blocks.parse_blocks("single", "mmdit", "double"), SD3)


def test_unknown_numbering_accepts_any_number():
    assert blocks.parse_blocks("double:99", "mmdit", "double", None).contains("double", 99)


class Net(torch.nn.Module):
    def __init__(self, double=3, single=2):
        super().__init__()
        self.double_blocks = torch.nn.ModuleList(torch.nn.Identity() for _ in range(double))
        self.single_blocks = torch.nn.ModuleList(torch.nn.Identity() for _ in range(single))


class Cross(torch.nn.Module):
    def __init__(self, attn2=True):
        super().__init__()
        self.attn2 = torch.nn.Identity() if attn2 else None


class UNet(torch.nn.Module):
    """Stands in for UNetModel: blocks with a transformer (attn2) where SD1.5 has them, a refiner-like None."""

    def __init__(self):
        super().__init__()
        seq = torch.nn.Sequential
        self.input_blocks = torch.nn.ModuleList([seq(torch.nn.Identity()), seq(torch.nn.Identity(), seq(Cross())),
                                                 seq(Cross(attn2=False)), seq(Cross())])
        self.middle_block = seq(Cross())
        self.output_blocks = torch.nn.ModuleList([seq(Cross()), seq(torch.nn.Identity()), seq(Cross())])


def test_model_blocks_from_row_specs():
    flux = families.FAMILIES["flux1"].block_counts
    assert blocks.model_blocks(flux, Net(3, 2)) == {"double": ((0, 2),), "single": ((0, 1),)}
    assert blocks.model_blocks(flux, Net(3, 0)) == {"double": ((0, 2),), "single": ()}
    assert blocks.model_blocks(flux, object()) is None  # an attribute the net lacks: unknown
    assert blocks.model_blocks((), Net()) is None and blocks.model_blocks(flux, None) is None
    unet = families.FAMILIES["sd15"].block_counts
    assert blocks.model_blocks(unet, UNet()) == {"input": ((1, 1), (3, 3)), "middle": ((0, 0),),
                                                 "output": ((0, 0), (2, 2))}


def test_every_family_row_reads_its_blocks_or_says_unknown():
    for fam in families.FAMILY_ROWS:
        spec = fam.block_counts
        assert callable(spec) or isinstance(spec, tuple), fam.key
        if isinstance(spec, tuple):
            assert all(g in blocks.GROUPS[fam.kind] and isinstance(a, str) for g, a in spec), fam.key


# ----------------------------------------------------------------------------------------------- numeric inputs

GOOD = dict(method="gag", scale=5.0, beta=0.0, tau=15.0, alpha=1.5, start_percent=0.0, end_percent=1.0)


@pytest.mark.parametrize("change, fragments", [
    (dict(beta=5), ["beta", "in [0, 1]", "5"]),
    (dict(beta=-0.1), ["beta", "-0.1"]),
    (dict(scale=-5), ["scale (λ)", ">= 0", "-5"]),
    (dict(method="pladis", scale=-1.0), ["scale (s)", "-1.0"]),
    (dict(scale="3"), ["scale", "must be a number", "'3'", "str"]),
    (dict(scale=True), ["scale", "must be a number", "bool"]),
    (dict(scale=float("inf")), ["scale", "finite", "inf"]),
    (dict(scale=None), ["scale", "None"]),
    (dict(tau=-1.0), ["tau", "-1.0"]),
    (dict(tau=float("nan")), ["tau", "nan"]),
    (dict(alpha=0.5), ["alpha", "[1, 2]", "0.5"]),
    (dict(alpha=2.5), ["alpha", "2.5"]),
    (dict(start_percent=-0.1), ["start_percent", "-0.1"]),
    (dict(end_percent=1.5), ["end_percent", "1.5"]),
    (dict(start_percent=0.7, end_percent=0.3), ["0.7", "0.3", "must not exceed"]),
    (dict(start_percent=0.4, end_percent=0.4), ["0.4", "window is empty"]),
    (dict(start_percent=1.0, end_percent=1.0), ["1.0", "window is empty"]),
    (dict(method="cfg"), ["method", "'cfg'"]),
    (dict(method=["gag"]), ["method", "['gag']"]),
    (dict(scale="9" * 1_000_000), ["scale", "must be a number", "(1000002 chars)"]),
])
def test_bad_numbers_are_refused_quoting_the_value(change, fragments):
    with pytest.raises(ValueError) as e:
        inputs.check_inputs(**(GOOD | change))
    message = str(e.value)
    assert all(f in message for f in fragments), message
    assert len(message) < 250


def test_good_numbers_pass_and_tau_zero_or_inf_means_no_cap():
    got = inputs.check_inputs(**(GOOD | dict(scale=0, beta=1, alpha=2, start_percent=0.25, end_percent=0.75)))
    assert (got.scale, got.beta, got.alpha, got.start, got.end, got.tau) == (0.0, 1.0, 2.0, 0.25, 0.75, 15.0)
    assert inputs.check_inputs(**(GOOD | dict(tau=0.0))).tau is None
    assert inputs.check_inputs(**(GOOD | dict(tau=math.inf))).tau is None
    assert inputs.check_inputs(**(GOOD | dict(tau=None))).tau is None
    import numpy as np

    assert inputs.check_inputs(**(GOOD | dict(scale=np.float32(2.5)))).scale == 2.5


# ----------------------------------------------------------------------------------------------- apply_guidance

class Sampling:
    def percent_to_sigma(self, p):
        return 999999999.9 if p <= 0 else (0.0 if p >= 1 else 10.0 * (1.0 - p))


class FakePatcher:
    """The ModelPatcher methods apply_guidance uses; wrappers are shared by clones, as in ComfyUI."""

    def __init__(self, model):
        self.model, self.wrappers = model, {}

    def clone(self):
        n = FakePatcher(self.model)
        n.wrappers = {k: {k1: list(w) for k1, w in v.items()} for k, v in self.wrappers.items()}
        return n

    def get_model_object(self, name):
        return Sampling()

    def add_wrapper_with_key(self, wrapper_type, key, wrapper):
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def remove_wrappers_with_key(self, wrapper_type, key):
        self.wrappers.get(wrapper_type, {}).pop(key, None)


def flux_patcher(double=3, single=2):
    base = fake_model("Flux", "Flux")
    net = Net(double, single)
    net.__class__ = type("Flux", (Net,), {})
    base.diffusion_model = net
    return FakePatcher(base)


def test_apply_guidance_checks_blocks_against_the_model_and_inputs_first():
    model = flux_patcher(3, 2)
    with pytest.raises(ValueError, match=r"'double:99'.*double:0-2, single:0-1"):
        patch.apply_guidance(model, method="gag", scale=5.0, blocks="double:99")
    out = patch.apply_guidance(model, method="gag", scale=5.0, blocks="double:2-99")
    assert out.wrappers["apply_model"]["comfyui_gag"][0].settings.selection.contains("double", 2)
    unsupported = FakePatcher(fake_model("AuraFlow", "MMDiT"))
    with pytest.raises(ValueError, match="beta"):  # bad input is refused before the family is looked at
        patch.apply_guidance(unsupported, method="gag", scale=5.0, beta=5)
    with pytest.raises(ValueError, match="window is empty"):
        patch.apply_guidance(model, method="gag", scale=5.0, start_percent=0.5, end_percent=0.5)


def test_auto_blocks_matching_nothing_warn_at_the_node(caplog):
    model = flux_patcher(0, 0)
    with caplog.at_level(logging.WARNING, logger="comfyui_gag"):
        patch.apply_guidance(model, method="gag", scale=5.0)
    assert any("match none of this FLUX.1 model's blocks" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------------------------- D2: run warning

def sample(model, sigmas, context=torch.randn(1, 6, 8), calls=((("double", 0),),), x=None):
    """One sampling run as ComfyUI drives it: OUTER_SAMPLE wrappers around the APPLY_MODEL passes."""
    (watch,) = model.wrappers["outer_sample"]["comfyui_gag"]
    (guidance,) = model.wrappers["apply_model"]["comfyui_gag"]
    x = torch.randn(1, 16, 4, 4) if x is None else x

    def model_pass(x, t, c_concat, c_crossattn, control, transformer_options, **kw):
        override = transformer_options.get("optimized_attention_override")
        info = getattr(override, "info", None)
        for call in calls[0]:
            if info is not None:
                n = info.text_len + max(info.image_tokens, 1)
                routing.route_call(info, n, n, {"block_type": call[0], "block_index": call[1]},
                                   guidance.settings.selection)
        return x

    class Executor:
        class_obj = model.model

        def __call__(self, *a, **k):
            return model_pass(*a, **k)

    def outer(*args, **kwargs):
        for s in sigmas:
            guidance(Executor(), x, torch.full((1,), float(s)), None, context, None, {})
        return "latent"

    return watch(outer, "noise", "latent")


def run_warnings(caplog, model, **kw):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="comfyui_gag"):
        assert sample(model, **kw) == "latent"
    return [r.getMessage() for r in caplog.records if "was not guided at all" in r.getMessage()]


def test_a_guided_run_says_nothing(caplog):
    model = patch.apply_guidance(flux_patcher(), method="gag", scale=5.0)
    assert run_warnings(caplog, model, sigmas=[9.0, 5.0, 1.0]) == []


def test_a_window_without_steps_warns_once_naming_the_window(caplog):
    model = patch.apply_guidance(flux_patcher(), method="gag", scale=5.0, start_percent=0.50, end_percent=0.51)
    (msg,) = run_warnings(caplog, model, sigmas=[9.0, 7.0, 3.0, 1.0])  # the window is σ ∈ [4.9, 5.0]
    assert "no step fell inside the step window" in msg and "0.5" in msg and "9 to 1" in msg


def test_selected_blocks_the_run_never_reaches_warn(caplog):
    model = patch.apply_guidance(flux_patcher(), method="gag", scale=5.0, blocks="single")
    (msg,) = run_warnings(caplog, model, sigmas=[9.0, 1.0], calls=((("double", 0), ("double", 1)),))
    assert "no attention call had the layout" in msg and "'single'" in msg


def test_no_text_conditioning_warns(caplog):
    model = patch.apply_guidance(flux_patcher(), method="gag", scale=5.0)
    (msg,) = run_warnings(caplog, model, sigmas=[9.0, 1.0], context=None)
    assert "text conditioning" in msg


def test_unknown_block_numbering_names_blocks_and_layout(caplog, monkeypatch):
    fam = families.FAMILIES["flux1"]
    monkeypatch.setitem(families.FAMILIES, "flux1", type(fam)(**{**fam.__dict__, "block_counts": ()}))
    model = patch.apply_guidance(flux_patcher(), method="gag", scale=5.0, blocks="double:7")
    (msg,) = run_warnings(caplog, model, sigmas=[9.0, 1.0])
    assert "'double:7' matched none" in msg and "layout" in msg


def test_each_run_is_counted_on_its_own(caplog):
    model = patch.apply_guidance(flux_patcher(), method="gag", scale=5.0, start_percent=0.0, end_percent=0.5)
    assert run_warnings(caplog, model, sigmas=[9.0, 1.0]) == []
    assert len(run_warnings(caplog, model, sigmas=[3.0, 1.0])) == 1  # this run stays after the window
    assert len(run_warnings(caplog, model.clone(), sigmas=[2.0])) == 1  # a clone shares the wrappers
    assert run_warnings(caplog, model, sigmas=[9.0]) == []
