"""The run check without ComfyUI: the cause it names for a run that guided nothing (or part), the browser notice,
no verdict and no chart statistics after an interrupted run, compile detection, and the attn2 replacement wrapper
(its output is O_d: α = 1 gives it exactly; a PLADIS-like replacement is left alone)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from test_nodes_glue import glue

run_check = glue("run_check")
telemetry = glue("telemetry")
patch = glue("patch")
blocks = glue("blocks")
families = glue("families")
routing = glue("routing")


def settings(**kw):
    family = families.FAMILIES["sd15"]
    selection = blocks.parse_blocks("input, output", family.kind, "input, output", None)
    base = dict(family=family, method="gag", scale=5.0, beta=0.0, tau=15.0, alpha=1.5, selection=selection,
                sigma_start=math.inf, sigma_end=0.0, node_key="7")
    base.update(kw)
    return patch.GuidanceSettings(**base)


def watch(**kw):
    return run_check.RunWatch(SimpleNamespace(settings=settings(**kw), tally=None, compiled=None), 0.0, 1.0)


def tally(**kw):
    t = run_check.RunTally(passes=4, in_window=4, installed=4, text_len=77)
    for k, v in kw.items():
        setattr(t, k, v)
    return t


@pytest.fixture
def sent(monkeypatch):
    out: list = []
    monkeypatch.setattr(telemetry, "TELEMETRY", telemetry.Telemetry(sender=lambda e, d, c: out.append((e, d, c))))
    return out


@pytest.mark.parametrize("facts, fragment", [
    (dict(in_window=0), "no step fell inside the step window"),
    (dict(installed=0), "no model pass inside the window had text conditioning"),
    (dict(replaced={("input", 1): ("pladis_utils._pladis_attention", False, True)}),
     "replaced by another node (pladis_utils._pladis_attention), itself a sparse-attention guidance"),
    (dict(replaced={("output", 2): ("ipa.CrossAttentionPatch", False, False)}), "output 2 is replaced by another"),
])
def test_the_cause_of_a_run_that_guided_nothing(facts, fragment):
    assert fragment in watch().reason(tally(**facts))


def test_a_compiled_model_that_guided_nothing_says_so():
    assert "the model is compiled (TorchCompileModel (inductor))" in watch().reason(tally(), "TorchCompileModel "
                                                                                           "(inductor)")
    assert "not recognised" in watch().reason(tally())  # uncompiled, nothing replaced: the layout


def test_a_guided_run_or_one_without_passes_has_no_cause():
    assert watch().reason(tally(routed=3)) is None and watch().reason(tally(passes=0)) is None


def test_blocks_left_to_a_pladis_replacement_are_named_when_the_rest_was_guided(sent):
    t = tally(routed=10, replaced={("input", 1): ("pladis_utils._pladis_attention", False, True),
                                   ("output", 0): ("ipa.CrossAttentionPatch", True, False)})
    message = watch().report(t, None, "7")
    assert "blocks input 1 is replaced by pladis_utils._pladis_attention" in message and "output 0" not in message
    assert [(e, d["message"], d["node"]) for e, d, _ in sent] == [(run_check.NOTICE_EVENT, message, "7")]


def test_notice_goes_to_the_page_that_queued_the_prompt(sent, monkeypatch):
    server = SimpleNamespace(client_id="abc")
    monkeypatch.setattr(run_check, "_server", lambda: server)
    assert run_check.notify("hello", "3")
    assert sent == [(run_check.NOTICE_EVENT, {"node": "3", "prompt_id": None, "level": "warning",
                                              "message": "hello"}, "abc")]
    monkeypatch.setattr(telemetry, "TELEMETRY", telemetry.Telemetry())  # no server: nothing, no error
    assert not run_check.notify("hello")


class Executor:
    def __init__(self, fn, options=None):
        self.fn = fn
        self.class_obj = SimpleNamespace(model_options=options or {}, model_patcher=None)

    def __call__(self, *args, **kwargs):
        return self.fn()


def test_an_interrupted_run_reports_nothing_and_drops_its_unsent_statistics(sent, caplog):
    w = watch()
    telemetry.TELEMETRY.subscribe("page", ["7"])

    def cut():  # one pass saw guided calls, then the interrupt
        w.patch.tally.saw_pass(1.0, True, routing.PassInfo("unet", 77))
        assert telemetry.TELEMETRY.stats_for("7", {"sigmas": torch.tensor([1.0])}) is not None
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        w(Executor(cut))
    assert "7" not in telemetry.TELEMETRY._steps and sent == [] and caplog.records == []
    assert w.patch.tally is None and w.patch.compiled is None

    def nothing():  # a finished run that guided nothing is reported
        w.patch.tally.saw_pass(1.0, True, routing.PassInfo("unet", 77))

    w(Executor(nothing))
    assert len(sent) == 1 and "not guided at all" in sent[0][1]["message"]


@pytest.mark.parametrize("options, note", [
    ({}, None),
    ({"torch_compile_kwargs": {"backend": "inductor"}}, "TorchCompileModel (inductor)"),
    ({"wrappers": {"apply_model": {"my.compile": []}}}, "a torch.compile wrapper"),
])
def test_compile_is_read_from_the_run_model_options(options, note):
    assert run_check.compile_note(options) == note
    seen = []
    w = watch()
    w(Executor(lambda: seen.append(w.patch.compiled), options))
    assert seen == [note]


# ----------------------------------------------------------------------------------------------- replacement wrapper

def dense(q, k, v, heads):
    b, n, c = q.shape
    qh, kh, vh = (t.reshape(b, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, n, c)


def image_prompt(q, k, v, extra_options):  # text attention plus attention over 3 extra tokens
    extra = torch.linspace(-1, 1, 3 * q.shape[-1]).reshape(1, 3, -1).expand(q.shape[0], -1, -1)
    return dense(q, k, v, extra_options["n_heads"]) + 0.5 * dense(q, extra, extra, extra_options["n_heads"])


def pladis_attention_wrapper():
    def _pladis_attention(q, k, v, extra_options):
        return 2.0 * dense(q, k, v, extra_options["n_heads"])
    return _pladis_attention


def call_replacement(fn, **kw):
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 16, 32, generator=gen), torch.randn(2, 77, 32, generator=gen), \
        torch.randn(2, 77, 32, generator=gen)
    info = routing.PassInfo("unet", 77, in_cross=True)
    seen: dict = {}
    wrapped = patch.GuidedReplacement(fn, settings(**kw), info, seen)
    extra = {"block": ("input", 1), "n_heads": 2, "sigmas": torch.tensor([1.0])}
    return wrapped(q, k, v, extra), fn(q, k, v, extra), seen, info


def test_a_replacement_is_the_dense_output_of_the_rule():
    out, alone, seen, info = call_replacement(image_prompt, alpha=1.0)
    assert torch.equal(out, alone) and seen == {("input", 1): ("test_run_check.image_prompt", True, False)}
    out, alone, seen, info = call_replacement(image_prompt)
    assert not torch.allclose(out, alone) and info.routed == 1 and info.in_cross  # restored after the call


def test_a_pladis_replacement_is_left_to_itself():
    out, alone, seen, info = call_replacement(pladis_attention_wrapper())
    assert torch.equal(out, alone) and info.routed == 0
    assert seen == {("input", 1): ("test_run_check.pladis_attention_wrapper.<locals>._pladis_attention", False,
                                   True)}
