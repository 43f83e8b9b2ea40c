"""α-entmax: agreement with the `entmax` package and the sort-based reference, masks, dtypes, gradients."""
import importlib

import pytest
import torch

from gag_core import entmax, entmax_reference

E = importlib.import_module("gag_core.entmax")
try:  # the independent oracle (requirements-test.txt); only the tests that compare with it need it
    import entmax as pkg
except ImportError:
    pkg = None
needs_package = pytest.mark.skipif(pkg is None, reason="the entmax package (requirements-test.txt) is not installed")

SHAPES = [(3, 77), (2, 5, 17), (64, 1), (4, 3, 200)]


def _logits(shape, seed, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * spread


def _package(z, alpha, dim=-1):
    if alpha == 1.5:
        return pkg.entmax15(z, dim=dim)
    if alpha == 2.0:
        return pkg.sparsemax(z, dim=dim)
    if alpha == 1.0:
        return torch.softmax(z, dim=dim)
    return pkg.entmax_bisect(z, alpha, dim=dim, n_iter=100)


@needs_package
@pytest.mark.parametrize("alpha", [1.0, 1.25, 1.5, 1.75, 2.0])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_entmax_package(alpha, shape):
    for seed, spread in ((0, 1.0), (1, 3.0), (2, 10.0)):
        z = _logits(shape, seed, spread)
        p = entmax(z, alpha)
        torch.testing.assert_close(p, _package(z, alpha), atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(p, entmax_reference(z, alpha), atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(p.sum(-1), torch.ones(shape[:-1]), atol=3e-6, rtol=0)
        assert (p >= 0).all()


@needs_package
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.3])
def test_other_dim(alpha):
    z = _logits((4, 9, 6), 3)
    torch.testing.assert_close(entmax(z, alpha, dim=1), _package(z, alpha, dim=1), atol=2e-6, rtol=1e-5)


def test_ties_and_large_logits():
    z = torch.tensor([[1.0, 1.0, 1.0, 1.0], [50.0, 50.0, -50.0, 0.0], [1e4, 0.0, -1e4, 1e4 - 0.5]])
    for alpha in (1.5, 2.0):
        torch.testing.assert_close(entmax(z, alpha), entmax_reference(z, alpha), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 1.6])
def test_masked_keys_get_exactly_zero_and_equal_truncated_row(alpha):
    z = _logits((5, 30), 4)
    keep = torch.rand(5, 30, generator=torch.Generator().manual_seed(5)) > 0.4
    keep[:, 0] = True
    p = entmax(z.masked_fill(~keep, float("-inf")), alpha)
    assert (p[~keep] == 0).all()
    for i in range(5):  # a masked row equals the truncated row
        torch.testing.assert_close(p[i, keep[i]], entmax(z[i, keep[i]], alpha), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 1.2])
def test_fully_masked_row_is_zero_not_nan(alpha):
    z = _logits((3, 8), 6)
    z[1] = float("-inf")
    p = entmax(z, alpha)
    assert torch.isfinite(p).all()
    assert (p[1] == 0).all()
    torch.testing.assert_close(p[0], entmax(z[0], alpha))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.7])
def test_half_inputs_compute_in_float32(dtype, alpha):
    z = _logits((6, 77), 7)
    p = entmax(z.to(dtype), alpha)
    assert p.dtype == dtype and torch.isfinite(p).all()
    torch.testing.assert_close(p.float(), entmax(z.to(dtype).float(), alpha).to(dtype).float())


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 1.4])
def test_gradcheck_float64(alpha):
    z = _logits((3, 7), 8).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: entmax(t, alpha), (z,), eps=1e-6, atol=1e-5)


@needs_package
def test_gradient_matches_package():
    z = _logits((4, 11), 9).requires_grad_()
    w = torch.randn(4, 11)
    (g_ours,) = torch.autograd.grad((entmax(z, 1.5) * w).sum(), z)
    z2 = z.detach().clone().requires_grad_()
    (g_pkg,) = torch.autograd.grad((pkg.entmax15(z2, dim=-1) * w).sum(), z2)
    torch.testing.assert_close(g_ours, g_pkg, atol=1e-5, rtol=1e-4)


def test_ties_at_the_threshold():
    z = torch.tensor([[2.0, 0.0, -1.0, -1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]]) * (1 - 2**-24)
    for alpha in (1.5, 2.0):
        torch.testing.assert_close(entmax(z, alpha), entmax_reference(z, alpha), atol=1e-6, rtol=1e-6)
    g = torch.Generator().manual_seed(12)
    z = torch.randint(-3, 4, (500, 12), generator=g).float() * 0.5  # many exact ties
    for alpha in (1.5, 2.0):
        torch.testing.assert_close(entmax(z, alpha), entmax_reference(z, alpha), atol=1e-6, rtol=1e-6)


def test_rows_needing_many_newton_steps_are_refined_exactly():
    # One huge logit and many just below: the fixed-step fast path cannot finish; refinement must.
    z = torch.cat([torch.full((8, 1), 4.0), 3.9 + 0.01 * _logits((8, 500), 10)], dim=-1)
    tau, exact = E._entmax15_newton(z * 0.5, 1)
    assert not exact.all()
    torch.testing.assert_close(entmax(z, 1.5), entmax_reference(z, 1.5), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(entmax(z, 2.0), entmax_reference(z, 2.0), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("bad", [0.5, 2.5, float("nan"), "x", None])
def test_alpha_validation_quotes_value(bad):
    with pytest.raises(ValueError, match="alpha"):
        entmax(torch.randn(2, 3), bad)


def test_integer_input_rejected():
    with pytest.raises(ValueError, match="int64"):
        entmax(torch.arange(6).reshape(2, 3), 1.5)


@pytest.mark.slow
def test_compiled_fast_path_matches_eager(monkeypatch):
    pytest.importorskip("torch._inductor")
    z = _logits((2, 3, 300, 77), 11)
    monkeypatch.setenv("GAG_COMPILE", "0")
    eager = {a: entmax(z, a) for a in (1.5, 2.0)}
    monkeypatch.setenv("GAG_COMPILE", "1")
    for a, p in eager.items():
        torch.testing.assert_close(entmax(z, a), p, atol=2e-6, rtol=1e-5)
    assert not E._COMPILED.get("broken"), "torch.compile failed on this machine"


@pytest.mark.parametrize("shape,spread", [((2, 3, 50, 77), 3.0), ((7, 33), 30.0), ((5, 1), 1.0), ((4, 300), 0.2)])
def test_eager_inplace_form_equals_pure_form(shape, spread):
    """The uncompiled entmax-1.5 (reused buffers) equals the pure, compilable form, masked keys and rows included."""
    z = _logits(shape, 23, spread)
    z[..., :1][torch.rand(z[..., :1].shape, generator=torch.Generator().manual_seed(1)) < 0.3] = float("-inf")
    z.reshape(-1, z.shape[-1])[0] = float("-inf")  # one fully masked row
    z_before = z.clone()
    p_pure, exact_pure = E._entmax15_probs(z, E.NEWTON_ITERS)
    p_eager, exact_eager = E._entmax15_probs_eager(z, E.NEWTON_ITERS)
    torch.testing.assert_close(z, z_before, rtol=0, atol=0)  # the input is left alone
    assert torch.equal(exact_pure, exact_eager)
    torch.testing.assert_close(p_eager, p_pure, atol=1e-6, rtol=1e-5)
    assert bool((p_eager[z == float("-inf")] == 0).all())
    assert bool((p_eager.reshape(-1, z.shape[-1])[0] == 0).all())
