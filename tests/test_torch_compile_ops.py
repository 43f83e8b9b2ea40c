"""Under torch.compile the guided call is one custom op (gag_core.kernels.ops): no graph break, eager's result.
(Named to run after tests/test_kernels.py: importing torch._dynamo imports Triton outside its interpreter.)

On CPU the op's body takes the PyTorch path (GAG_DISABLE_TRITON=1); on CUDA the same op launches the fused
kernel. `aot_eager` runs the op's fake implementation during tracing (shapes) and its real body at run time.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gag_core
from gag_core.kernels import ops



@pytest.fixture(autouse=True)
def dynamo(monkeypatch):
    """torch._dynamo, imported here rather than at collection (it imports Triton); the kernel switched off."""
    dynamo = pytest.importorskip("torch._dynamo")
    monkeypatch.setenv("GAG_DISABLE_TRITON", "1")
    dynamo.reset()
    yield dynamo
    dynamo.reset()


def _dense(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v)


def _cross(q, k, v, stats=None):
    return gag_core.gag_attention(q, k, v, method="gag", scale=5.0, beta=0.2, tau=15.0, dense=_dense, stats=stats)


def _joint(q, k, v, stats=None):
    return gag_core.joint_gag_attention(q, k, v, text_range=(0, 6), method="pladis", scale=2.0, dense=_dense,
                                        stats=stats)


def _inputs(n, m, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 2, n, 16, generator=g), torch.randn(1, 2, m, 16, generator=g), \
        torch.randn(1, 2, m, 16, generator=g)


@pytest.mark.parametrize("fn, shapes", [(_cross, (20, 7)), (_joint, (22, 22))], ids=["cross", "joint"])
def test_compiled_call_traces_without_graph_break_and_matches_eager(dynamo, fn, shapes):
    q, k, v = _inputs(*shapes)
    explained = dynamo.explain(fn)(q, k, v)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    graph_ops = [str(n.target) for g in explained.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert any(ops.NAMESPACE in t for t in graph_ops), graph_ops  # the guided part is the custom op
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(q, k, v), fn(q, k, v))


def test_compiled_call_fills_the_chart_statistics_like_eager():
    q, k, v = _inputs(20, 7)
    eager, traced = gag_core.GuidanceStats(), gag_core.GuidanceStats()
    compiled = torch.compile(_cross, backend="aot_eager", fullgraph=True)
    for _ in range(2):
        want = _cross(q, k, v, eager)
        got = compiled(q, k, v, traced)
    assert torch.equal(got, want)
    assert traced.calls == eager.calls == 2 and traced.tokens == eager.tokens
    for key, value in eager.summary().items():
        assert traced.summary()[key] == pytest.approx(value, rel=1e-6), key


def test_fake_implementation_gives_the_output_shapes():
    q, k, v = _inputs(20, 7)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fq, fk, fv = (mode.from_tensor(t) for t in (q, k, v))
        out, sums = ops.guided_cross(fq, fk, fv, None, None, "gag", 5.0, 0.0, 15.0, 1.5, 0.25, True)
        assert out.shape == (1, 2, 20, 16) and sums.shape == (4,)


def test_op_outputs_are_contiguous_as_the_fake_says():
    """ComfyUI hands q as a (B, N, H, D) view: the op still returns the contiguous layout its fake promises."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 20, 2, 16, generator=g).transpose(1, 2)  # (B, H, N, D) view of (B, N, H, D)
    k, v = (torch.randn(1, 7, 2, 16, generator=g).transpose(1, 2) for _ in range(2))
    out, sums = ops.guided_cross(q, k, v, None, None, "gag", 5.0, 0.0, 15.0, 1.5, 0.25, False)
    assert out.is_contiguous() and out.shape == (1, 2, 20, 16) and sums.shape == (4,)
