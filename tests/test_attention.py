"""gag_attention and joint_gag_attention: against explicit references, masks, chunking, dtypes, validation."""
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import gag_core
from gag_core import entmax, gag_attention, joint_gag_attention, sparse_dense_attention


def _qkv(b=2, h=3, n=20, m=9, d=16, seed=0, dtype=torch.float32, spread=1.5):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g) * spread
    k = torch.randn(b, h, m, d, generator=g) * spread
    v = torch.randn(b, h, m, d, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _reference_pair(q, k, v, alpha=1.5, mask=None):
    """(O_s, O_d) in float64 from explicit logits."""
    z = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        z = z.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else z + mask.double()
    return entmax(z, alpha) @ v.double(), torch.nan_to_num(torch.softmax(z, -1)) @ v.double()


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25])
@pytest.mark.parametrize("beta,tau", [(0.0, 15.0), (0.5, 0.3), (1.0, None)])
def test_gag_attention_matches_reference(alpha, beta, tau):
    for seed in range(2):
        q, k, v = _qkv(seed=seed, n=13 + seed, m=7 + 5 * seed)
        o_s, o_d = _reference_pair(q, k, v, alpha)
        ref = gag_core.gag_combine_reference(o_s, o_d, scale=4.0, beta=beta, tau=tau).float()
        out = gag_attention(q, k, v, scale=4.0, beta=beta, tau=tau, alpha=alpha)
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


def test_beta_one_no_cap_equals_pladis_with_one_plus_lambda():
    q, k, v = _qkv(seed=1)
    a = gag_attention(q, k, v, scale=3.0, beta=1.0, tau=None)
    b = gag_attention(q, k, v, method="pladis", scale=4.0)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_lambda_zero_is_sparse_attention_and_alpha_one_is_dense():
    q, k, v = _qkv(seed=2)
    o_s, o_d = sparse_dense_attention(q, k, v)
    torch.testing.assert_close(gag_attention(q, k, v, scale=0.0), o_s, atol=1e-6, rtol=1e-5)
    # α = 1: the sparse map is softmax, so Δ = 0 and any scale leaves dense attention
    torch.testing.assert_close(gag_attention(q, k, v, scale=8.0, beta=0.5, alpha=1.0),
                               F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_masked_keys_get_zero_weight(kind):
    q, k, v = _qkv(seed=3, m=11)
    keep = torch.rand(2, 1, 1, 11, generator=torch.Generator().manual_seed(4)) > 0.4
    keep[..., 0] = True
    mask = keep if kind == "bool" else torch.zeros(keep.shape).masked_fill(~keep, -math.inf)
    out = gag_attention(q, k, v, scale=3.0, beta=0.2, mask=mask)
    # same as running on the kept keys only
    for bi in range(2):
        idx = keep[bi, 0, 0]
        ref = gag_attention(q[bi:bi + 1], k[bi:bi + 1, :, idx], v[bi:bi + 1, :, idx], scale=3.0, beta=0.2)
        torch.testing.assert_close(out[bi:bi + 1], ref, atol=1e-5, rtol=1e-5)
    # changing masked values does not change anything
    v2 = v.clone()
    v2[~keep.expand(2, 3, 1, 11).squeeze(2)] = 1e3
    torch.testing.assert_close(gag_attention(q, k, v2, scale=3.0, beta=0.2, mask=mask), out)


def test_fully_masked_rows_give_finite_output():
    q, k, v = _qkv(seed=5, n=6, m=5)
    mask = torch.ones(1, 1, 6, 5, dtype=torch.bool)
    mask[..., 2, :] = False
    out = gag_attention(q, k, v, scale=5.0, mask=mask)
    assert torch.isfinite(out).all()
    assert (out[:, :, 2] == 0).all()


def test_dense_callable_is_used_and_may_return_lse():
    q, k, v = _qkv(seed=6)
    calls = []

    def dense(q_, k_, v_, mask):
        calls.append(q_.shape)
        return F.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask)

    out = gag_attention(q, k, v, scale=2.0, beta=0.3, dense=dense)
    assert calls == [q.shape]
    torch.testing.assert_close(out, gag_attention(q, k, v, scale=2.0, beta=0.3), atol=1e-5, rtol=1e-5)
    # a host backend that returns something of the wrong shape is reported, not silently used
    with pytest.raises(ValueError, match="dense attention returned"):
        gag_attention(q, k, v, scale=2.0, dense=lambda *a: torch.zeros(1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_finite_and_close_to_float32(dtype):
    q, k, v = _qkv(seed=7, n=64, m=77, d=64, spread=2.0)
    qh, kh, vh = q.to(dtype), k.to(dtype), v.to(dtype)
    out = gag_attention(qh, kh, vh, scale=5.0, beta=0.1)
    assert out.dtype == dtype and torch.isfinite(out).all()
    ref = gag_attention(qh.float(), kh.float(), vh.float(), scale=5.0, beta=0.1)
    err = (out.float() - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-3)
    assert err.max() <= 2 * torch.finfo(dtype).eps


def test_chunked_equals_unchunked():
    q, k, v = _qkv(seed=8, n=50)
    full = gag_attention(q, k, v, scale=3.0, beta=0.4, tau=0.5)
    tiny = gag_attention(q, k, v, scale=3.0, beta=0.4, tau=0.5, max_chunk_bytes=1)
    torch.testing.assert_close(tiny, full, atol=1e-5, rtol=1e-5)  # BLAS blocking differs by size
    qj, kj, vj = _qkv(seed=9, n=40, m=40)
    a = joint_gag_attention(qj, kj, vj, text_range=(0, 12), scale=3.0, beta=0.4)
    b = joint_gag_attention(qj, kj, vj, text_range=(0, 12), scale=3.0, beta=0.4, max_chunk_bytes=1)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_chunking_bounds_peak_memory():
    """A sequence whose unchunked working set (~1.2 GiB) far exceeds a 64 MiB cap stays near the cap."""
    script = textwrap.dedent("""
        import sys, torch
        sys.path.append(sys.argv[1])
        import gag_core
        torch.set_num_threads(1)
        b, h, n, m, d = 1, 8, 65536, 77, 16
        q = torch.randn(b, h, n, d); k = torch.randn(b, h, m, d); v = torch.randn(b, h, m, d)
        out = torch.empty_like(q)
        def hwm():  # peak RSS of this process in KiB (ru_maxrss would inherit the parent's across exec)
            return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        base = hwm()
        out = gag_core.gag_attention(q, k, v, scale=5.0, max_chunk_bytes=64 * 2**20)
        peak = hwm()
        unchunked = b * h * n * m * 4 * 7 / 2**20
        print((peak - base) / 1024, unchunked)
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", script, root], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "GAG_COMPILE": "0", "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    extra_mib, unchunked_mib = map(float, res.stdout.split())
    assert unchunked_mib > 1000
    assert extra_mib < 64 + 48, f"peak extra memory {extra_mib:.0f} MiB with a 64 MiB cap"


def test_hopfield_theorem_2_on_separated_patterns():
    """Theorem 2: with well-separated stored patterns, sparse retrieval is no worse than dense, and
    Δ = O_s − O_d is non-negatively aligned with the residual ξ* − O_d."""
    g = torch.Generator().manual_seed(13)
    d, m, n = 64, 16, 200
    patterns = torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=-1) * 4.0  # ‖ξ‖ = 4
    target = torch.randint(0, m, (n,), generator=g)
    queries = patterns[target] + 0.5 * torch.randn(n, d, generator=g)  # noisy versions of stored patterns
    beta_inv_temp = 2.0
    z = beta_inv_temp * queries @ patterns.T
    o_d = torch.softmax(z, -1) @ patterns
    o_s = entmax(z, 1.5) @ patterns
    xi = patterns[target]
    err_d = (xi - o_d).norm(dim=-1)
    err_s = (xi - o_s).norm(dim=-1)
    assert (err_s <= err_d + 1e-5).all()
    assert (((o_s - o_d) * (xi - o_d)).sum(-1) >= -1e-6).all()


@pytest.mark.parametrize("kwargs,match", [
    ({"alpha": 2.5}, "alpha"), ({"alpha": 0.9}, "alpha"), ({"tau": -1.0}, "tau"), ({"method": "cfg"}, "cfg"),
    ({"scale": float("nan")}, "scale"),
])
def test_parameter_validation_quotes_value(kwargs, match):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=match):
        gag_attention(q, k, v, **{"scale": 1.0, **kwargs})


def test_shape_validation():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="head counts"):
        gag_attention(q, k[:, :2], v[:, :2], scale=1.0)
    with pytest.raises(ValueError, match=r"does not broadcast"):
        gag_attention(q, k, v, scale=1.0, mask=torch.ones(3, 1, 1, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="int64"):
        gag_attention(q.long(), k, v, scale=1.0)
    with pytest.raises(ValueError, match="4-D"):
        gag_attention(q[0], k, v, scale=1.0)
    with pytest.raises(ValueError, match="text_range"):
        joint_gag_attention(q, q, q, text_range=(5, 50), scale=1.0)
    with pytest.raises(ValueError, match="guided_rows"):
        joint_gag_attention(q, k, v, text_range=(0, 3), scale=1.0, guided_rows=(0, 99))
    with pytest.raises(ValueError, match="softmax_scale"):
        gag_attention(q, k, v, scale=1.0, softmax_scale=-1.0)
    with pytest.raises(ValueError, match="scale must be a number"):
        gag_attention(q, k, v, scale="3")


def test_chained_dense_is_corrected_not_replaced():
    """With a foreign dense output (another pack's override), O_s = O_d(chain) + (P_s − P_d)·v: α = 1 or
    PLADIS s = 0 return the chain's output exactly, and guidance is the same correction as without it."""
    q, k, v = _qkv(seed=20, n=17, m=11)
    foreign = F.scaled_dot_product_attention(q, k, v) * 0.5 + 0.1  # stands in for NAG-like patches
    dense = lambda *_: foreign  # noqa: E731
    assert torch.equal(gag_attention(q, k, v, scale=7.0, beta=0.3, alpha=1.0, dense=dense), foreign)
    assert torch.equal(gag_attention(q, k, v, method="pladis", scale=0.0, dense=dense), foreign)
    assert torch.equal(gag_attention(q, k, v, method="pladis", scale=3.0, alpha=1.0, dense=dense), foreign)
    o_s, o_d = _reference_pair(q, k, v)
    o_s_chain = foreign.double() + (o_s - o_d)
    ref = gag_core.gag_combine_reference(o_s_chain, foreign.double(), scale=4.0, beta=0.2, tau=2.0).float()
    torch.testing.assert_close(gag_attention(q, k, v, scale=4.0, beta=0.2, tau=2.0, dense=dense), ref,
                               atol=2e-5, rtol=2e-5)


def test_softmax_scale_and_grouped_query_heads():
    """A custom logit scale is honoured, and k/v with fewer heads serve q's heads in groups (as SDPA's
    enable_gqa): the same as repeating each kv head for its group of q heads."""
    g = torch.Generator().manual_seed(21)
    q = torch.randn(2, 6, 9, 8, generator=g)
    k, v = torch.randn(2, 2, 7, 8, generator=g), torch.randn(2, 2, 7, 8, generator=g)
    kr, vr = k.repeat_interleave(3, 1), v.repeat_interleave(3, 1)
    for sm in (None, 0.9):
        a = gag_attention(q, k, v, scale=3.0, beta=0.1, softmax_scale=sm)
        b = gag_attention(q, kr, vr, scale=3.0, beta=0.1, softmax_scale=sm)
        torch.testing.assert_close(a, b)
    o_s, o_d = _reference_pair(q * (0.9 * math.sqrt(8)), kr, vr)  # z = 0.9·q·kᵀ
    ref = gag_core.gag_combine_reference(o_s, o_d, scale=3.0, beta=0.1).float()
    torch.testing.assert_close(gag_attention(q, k, v, scale=3.0, beta=0.1, softmax_scale=0.9), ref,
                               atol=2e-5, rtol=2e-5)
    dense_gqa = F.scaled_dot_product_attention(q, kr, vr, scale=0.9)
    torch.testing.assert_close(gag_attention(q, k, v, scale=0.0, method="pladis", softmax_scale=0.9), dense_gqa,
                               atol=1e-5, rtol=1e-5)
