"""The chart's statistics read the device back once per sampler step, however many attention calls add to them.

A host read (`.item()`, `float()`, `int()`, `bool()`, `.tolist()` of a tensor) waits for the GPU; counted here
on CPU by wrapping those Tensor methods. With the chart on, a step of K guided calls reads the statistics once
(in `summary`, where nodes/telemetry.py sends the message) and σ once (to tell steps apart); the count does not
grow with K.
"""
from __future__ import annotations

import pytest
import torch

import gag_core
from gag_core.stats import GuidanceStats
from test_nodes_glue import glue

tm = glue("telemetry")

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")


@pytest.fixture
def host_reads(monkeypatch):
    """A list that gets one entry per tensor→host read while the test runs."""
    log = []
    for name in READS:
        real = getattr(torch.Tensor, name)

        def wrapped(self, *a, _real=real, _name=name, **kw):
            log.append(_name)
            return _real(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return log


def _qkv(seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, n, 16, generator=g) for n in (24, 7, 7))
    return q, k, v


def _dense(q, k, v, mask):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def _step(stats_for, calls, method="gag"):
    """One sampler step: `calls` guided cross-attention calls through the PyTorch path, with a host dense."""
    for i in range(calls):
        q, k, v = _qkv(i)
        gag_core.gag_attention(q, k, v, method=method, scale=5.0 if method == "gag" else 2.0, dense=_dense,
                               stats=stats_for())


def test_add_reads_nothing_and_summary_reads_once(host_reads):
    stats = GuidanceStats()
    x = torch.rand(2, 3, 5) + 0.1
    for _ in range(10):
        stats.add(o_sparse_norm=x, update_norm=x * 2, capped=x > 0.5, delta_par_sq=x, delta_perp_sq=x * 3)
    assert host_reads == []
    s = stats.summary()
    assert len(host_reads) == 1 and s["calls"] == 10 and s["tokens"] == 300
    assert s["rel_guidance"] == pytest.approx(2.0) and s["parallel_share"] == pytest.approx(0.25)
    assert stats.capped == int((x > 0.5).sum()) * 10 and len(host_reads) == 2  # (the test's own read)
    stats.summary()
    assert len(host_reads) == 2  # nothing added since: no new read


@pytest.mark.parametrize("method", ["gag", "pladis"])
def test_a_step_reads_back_once_whatever_the_number_of_calls(host_reads, monkeypatch, method):
    monkeypatch.setenv("GAG_DISABLE_TRITON", "1")
    sent = []
    tel = tm.Telemetry(sender=lambda event, data, client: sent.append(data))
    tel.subscribe("page", ["5"])
    sample_sigmas = torch.tensor([14.6, 7.0, 3.0, 0.0])

    def reads_of_step(calls, chart: bool, sigma: float):
        options = {"sigmas": torch.tensor([sigma]), "sample_sigmas": sample_sigmas}
        node = "5" if chart else "6"  # "6" has no subscriber: stats_for answers None at once
        before = len(host_reads)
        _step(lambda: tel.stats_for(node, options), calls, method)
        tel.end_step(node)
        return len(host_reads) - before

    extra = {}
    for calls in (2, 8):
        off = reads_of_step(calls, False, 7.0)
        on = reads_of_step(calls, True, 7.0)
        extra[calls] = on - off
    print("host reads per step, chart on minus off:", extra)
    assert extra[2] == extra[8], f"host reads grow with the attention calls: {extra}"
    # σ of the new step (once, to place it on the schedule; its sample_sigmas once) and the statistics once
    assert extra[8] <= 3, extra
    assert len(sent) == 2 and sent[-1]["calls"] == 8 and sent[-1]["step"] == 1
