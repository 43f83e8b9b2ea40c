"""The GAG and PLADIS rules: properties of the decomposition, the cap, edge cases and dtypes."""
import pytest
import torch

from gag_core import GuidanceStats, gag_combine, gag_combine_reference, pladis_combine


def _pair(shape=(2, 3, 10, 16), seed=0, gap=0.3):
    g = torch.Generator().manual_seed(seed)
    o_s = torch.randn(shape, generator=g)
    o_d = o_s + gap * torch.randn(shape, generator=g)
    return o_s, o_d


def _decompose(o_s, o_d):
    delta = o_s - o_d
    par = (delta * o_s).sum(-1, keepdim=True) / (o_s * o_s).sum(-1, keepdim=True) * o_s
    return delta, par, delta - par


@pytest.mark.parametrize("beta,tau", [(0.0, 15.0), (0.3, 0.5), (1.0, None), (0.7, 2.0), (-0.2, 1.0)])
def test_matches_literal_reference(beta, tau):
    for seed in range(3):
        o_s, o_d = _pair(seed=seed)
        out = gag_combine(o_s, o_d, scale=4.0, beta=beta, tau=tau)
        torch.testing.assert_close(out, gag_combine_reference(o_s, o_d, scale=4.0, beta=beta, tau=tau),
                                   atol=1e-5, rtol=1e-5)


def test_beta_one_without_cap_is_pladis_with_scale_one_plus_lambda():
    o_s, o_d = _pair(seed=1)
    for lam in (0.5, 2.0, 7.0):
        torch.testing.assert_close(gag_combine(o_s, o_d, scale=lam, beta=1.0, tau=None),
                                   pladis_combine(o_s, o_d, scale=1.0 + lam), atol=1e-5, rtol=1e-5)


def test_lambda_zero_is_sparse_attention():
    o_s, o_d = _pair(seed=2)
    torch.testing.assert_close(gag_combine(o_s, o_d, scale=0.0, beta=0.4), o_s)


def test_equal_outputs_give_no_guidance():
    o_s, _ = _pair(seed=3)
    torch.testing.assert_close(gag_combine(o_s, o_s.clone(), scale=9.0, beta=0.5), o_s)


def test_projection_is_orthogonal_and_beta_zero_moves_along_o_sparse():
    o_s, o_d = _pair(seed=4)
    delta, par, perp = _decompose(o_s.double(), o_d.double())
    torch.testing.assert_close((par * perp).sum(-1), torch.zeros(o_s.shape[:-1], dtype=torch.float64),
                               atol=1e-12, rtol=0)
    update = gag_combine(o_s, o_d, scale=3.0, beta=0.0, tau=None).double() - o_s.double()
    cos = (update * o_s).sum(-1).abs() / (update.norm(dim=-1) * o_s.norm(dim=-1))
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)


def test_cap_bounds_guidance_norm_by_tau():
    o_s, o_d = _pair(seed=5, gap=2.0)
    lam = 3.0
    for beta in (0.0, 0.5, 1.0):
        _, par, perp = _decompose(o_s, o_d)
        g_raw = par + beta * perp
        tau = float(g_raw.norm(dim=-1).median())  # half the tokens get capped
        g = (gag_combine(o_s, o_d, scale=lam, beta=beta, tau=tau) - o_s) / lam
        assert (g.norm(dim=-1) <= tau * (1 + 1e-5)).all()
        capped = g_raw.norm(dim=-1) > tau
        assert capped.any() and (~capped).any()
        torch.testing.assert_close(g[~capped], g_raw[~capped], atol=1e-5, rtol=1e-5)  # uncapped: untouched
        # capped tokens keep their direction
        cos = (g[capped] * g_raw[capped]).sum(-1) / (g[capped].norm(dim=-1) * g_raw[capped].norm(dim=-1))
        torch.testing.assert_close(cos, torch.ones_like(cos), atol=1e-5, rtol=0)


def test_zero_norm_sparse_output_and_zero_guidance_are_finite():
    o_s, o_d = _pair(seed=6)
    o_s[0, 0, :3] = 0.0  # ‖O_s‖ = 0 on three tokens
    out = gag_combine(o_s, o_d, scale=5.0, beta=0.5, tau=1.0)
    assert torch.isfinite(out).all()
    # there Δ∥ = 0, so G = β·Δ, c = min(1, τ/‖G‖) and out = 0 + λ·c·G
    g = 0.5 * (o_s - o_d)[0, 0, :3]
    c = torch.clamp(1.0 / g.norm(dim=-1, keepdim=True), max=1.0)
    torch.testing.assert_close(out[0, 0, :3], 5.0 * c * g, atol=1e-5, rtol=1e-5)
    same = gag_combine(o_s, o_s, scale=5.0, tau=1.0)
    assert torch.isfinite(same).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_finite_and_close_to_float32(dtype):
    o_s, o_d = _pair(shape=(2, 4, 64, 128), seed=7)
    o_s, o_d = (o_s * 40).to(dtype), (o_d * 40).to(dtype)  # ‖O_s‖² ≈ 2e5: overflows a float16 reduction
    out = gag_combine(o_s, o_d, scale=5.0, beta=0.2, tau=15.0)
    ref = gag_combine(o_s.float(), o_d.float(), scale=5.0, beta=0.2, tau=15.0)
    assert out.dtype == dtype and torch.isfinite(out).all()
    # Computed in float32 internally: the only error left is the final rounding to `dtype`.
    err = (out.float() - ref).norm(dim=-1) / ref.norm(dim=-1)
    assert err.max() <= torch.finfo(dtype).eps


def test_dim_argument():
    o_s, o_d = _pair(shape=(3, 16, 5), seed=8)
    a = gag_combine(o_s, o_d, scale=2.0, beta=0.3, tau=1.0, dim=1)
    b = gag_combine(o_s.transpose(1, 2), o_d.transpose(1, 2), scale=2.0, beta=0.3, tau=1.0).transpose(1, 2)
    torch.testing.assert_close(a, b)


def test_stats_accumulate_known_values():
    o_s = torch.tensor([[3.0, 4.0]])  # ‖O_s‖ = 5
    o_d = torch.tensor([[2.4, 2.2]])  # Δ = (0.6, 1.8), ‖Δ∥‖ = ⟨Δ, O_s⟩/‖O_s‖ = 1.8
    delta = o_s - o_d
    par = (delta @ o_s.T) / 25 * o_s
    stats = GuidanceStats()
    gag_combine(o_s, o_d, scale=2.0, beta=0.0, tau=0.5, stats=stats)
    s = stats.summary()
    assert s["calls"] == 1 and s["tokens"] == 1
    assert s["capped_fraction"] == 1.0  # ‖Δ∥‖ > 0.5
    assert s["rel_guidance"] == pytest.approx(2.0 * 0.5 / 5.0)
    assert s["parallel_energy"] == pytest.approx(float(par.pow(2).sum()), rel=1e-5)
    assert s["orthogonal_energy"] == pytest.approx(float((delta - par).pow(2).sum()), rel=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    ({"tau": -1.0}, "tau"), ({"scale": float("nan")}, "scale"), ({"beta": float("inf")}, "beta"),
    ({"scale": "big"}, "big"),
])
def test_validation_quotes_bad_value(kwargs, match):
    o_s, o_d = _pair()
    params = {"scale": 1.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        gag_combine(o_s, o_d, **params)


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="same shape"):
        pladis_combine(torch.randn(2, 3), torch.randn(3, 2), scale=2.0)


def test_pladis_statistics_path_equals_pladis():
    import gag_core

    q, k, v = (torch.randn(1, 2, 12, 8) for _ in range(3))
    stats = GuidanceStats()
    with_stats = gag_core.gag_attention(q, k, v, method="pladis", scale=2.5, stats=stats)
    torch.testing.assert_close(with_stats, gag_core.gag_attention(q, k, v, method="pladis", scale=2.5),
                               atol=1e-5, rtol=1e-5)
    assert stats.calls == 1 and stats.summary()["capped_fraction"] == 0.0


@pytest.mark.parametrize("beta,tau", [(0.0, 15.0), (0.3, 0.5), (1.0, 0.0)])
def test_eager_form_of_the_rule_equals_pure_form(beta, tau):
    """The uncompiled rule (vecdot, output built in place) equals the compilable form, term by term."""
    from gag_core.combine import _gag_rule, _gag_rule_eager

    g = torch.Generator().manual_seed(5)
    o_s, o_d = torch.randn(2, 3, 40, 64, generator=g), torch.randn(2, 3, 40, 64, generator=g)
    o_s[0, 0, 0] = 0.0  # a zero sparse output (no direction to project on)
    params = [torch.tensor(x) for x in (4.0, beta, tau)]
    for a, b in zip(_gag_rule_eager(o_s, o_d, *params), _gag_rule(o_s, o_d, *params)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
