"""When gag_core compiles (issue 15): GAG_COMPILE=1 / 0 force it, 'auto' follows the host's default (the ComfyUI
nodes keep UNet-size calls eager), and a compile is announced once with its duration and how to turn it off."""
from __future__ import annotations

import importlib
import logging

import pytest
import torch

from test_nodes_glue import glue

glue("blocks")  # sets up the gag_glue package view
E = importlib.import_module("gag_glue.gag_core.entmax")
BIG = torch.empty(2, 8, 4096, 77)  # SD1.5 at 512², level 0: 5M logits (≥ 2²⁰)


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(E, "_COMPILED", {})
    monkeypatch.setitem(E._AUTO, "compile", True)
    monkeypatch.setitem(E._AUTO, "min_call_logits", 0)
    monkeypatch.delenv("GAG_COMPILE", raising=False)
    return monkeypatch


def test_auto_follows_the_host_default_and_the_switch_wins(fresh):
    assert E._use_compile(BIG) and not E._use_compile(torch.empty(2, 77))
    E.set_compile_default(False)
    assert not E._use_compile(BIG)
    fresh.setenv("GAG_COMPILE", "auto")
    assert not E._use_compile(BIG)
    fresh.setenv("GAG_COMPILE", "1")
    assert E._use_compile(BIG) and E._use_compile(torch.empty(2, 77))
    E.set_compile_default(True)
    fresh.setenv("GAG_COMPILE", "0")
    assert not E._use_compile(BIG)


def test_the_comfyui_policy_compiles_only_joint_and_video_size_calls(fresh):
    """min_call_logits: an SDXL-size call (its chunks included) stays eager, the chunks of a FLUX-size call compile."""
    E.set_compile_default(True, min_call_logits=2**24)
    try:
        assert not E._use_compile(BIG)
        with E.call_logits(2 * 10 * 4096 * 77):  # SDXL at 1024², level 0
            assert not E._use_compile(BIG)
        with E.call_logits(24 * 4096 * 512):  # FLUX.1 at 1024²: text logits of the image rows
            assert E._use_compile(BIG) and not E._use_compile(torch.empty(2, 77))  # tiny chunks never
        assert not E._use_compile(BIG)  # back outside the call
    finally:
        E.set_compile_default(True)


def test_a_compile_is_announced_once_with_its_time_and_the_off_switch(fresh, caplog):
    compiled = []

    def fake_compile(fn, dynamic=None):
        compiled.append(fn)
        return fn

    fresh.setattr(torch, "compile", fake_compile)
    fresh.setenv("GAG_COMPILE", "1")
    z = torch.randn(3, 7)
    with caplog.at_level(logging.INFO, logger="gag_core"):
        for _ in range(3):
            p, exact = E.compiled_or_eager(E._entmax15_probs, z, E.NEWTON_ITERS, size_hint=z)
            E.compiled_or_eager(E._sparsemax_probs, z, E.MICHELOT_ITERS, size_hint=z)
    messages = [r.getMessage() for r in caplog.records]
    assert compiled == [E._entmax15_probs, E._sparsemax_probs]
    assert sum("compiling the CPU fast paths" in m and "GAG_COMPILE=0" in m for m in messages) == 1
    took = [m for m in messages if "took" in m]
    assert len(took) == 2 and all("GAG_COMPILE=0" in m and " s " in m for m in took)
    assert exact.all() and torch.allclose(p.sum(-1), torch.ones(3))


def test_a_failing_compile_falls_back_to_eager_for_good(fresh):
    def broken(fn, dynamic=None):
        def call(*a):
            raise RuntimeError("no C++ compiler")
        return call

    fresh.setattr(torch, "compile", broken)
    fresh.setenv("GAG_COMPILE", "1")
    z = torch.randn(4, 9)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        p, _ = E.compiled_or_eager(E._sparsemax_probs, z, E.MICHELOT_ITERS, size_hint=z)
    assert torch.allclose(p.sum(-1), torch.ones(4)) and not E._use_compile(z)
