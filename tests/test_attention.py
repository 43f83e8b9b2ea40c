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
from gag_core import (dense_attention_with_lse, entmax, gag_attention, gag_combine, joint_gag_attention,
                      pladis_combine, sparse_dense_attention)


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


def _joint_reference(q, k, v, text, alpha=1.5, mask=None):
    """(O_s, O_d) for joint attention, built from the full weight matrix (dense mass kept per image row)."""
    s, e = text
    z = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        z = z.masked_fill(~mask, -math.inf)
    p = torch.nan_to_num(torch.softmax(z, -1))
    img = torch.ones(z.shape[-2], dtype=torch.bool)
    img[s:e] = False
    p_s = p.clone()
    mass = p[:, :, img, s:e].sum(-1, keepdim=True)
    p_s[:, :, img, s:e] = mass * entmax(z[:, :, img, s:e], alpha)
    return p_s, p, p_s @ v.double(), p @ v.double()


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


def test_joint_leaves_text_rows_and_image_key_weights_and_mass():
    for text in [(0, 7), (25, 32), (10, 17)]:  # text first, text last, text in the middle
        q, k, v = _qkv(b=1, h=2, n=32, m=32, seed=10)
        p_s, p_d, o_s, o_d = _joint_reference(q, k, v, text)
        s, e = text
        img = torch.ones(32, dtype=torch.bool)
        img[s:e] = False
        # the reference's weights: text rows and image-key columns untouched, row mass preserved
        torch.testing.assert_close(p_s[:, :, ~img], p_d[:, :, ~img])
        torch.testing.assert_close(p_s[..., img], p_d[..., img])
        torch.testing.assert_close(p_s.sum(-1), p_d.sum(-1))
        out = joint_gag_attention(q, k, v, text_range=text, scale=3.0, beta=0.2, tau=1.0)
        ref = gag_core.gag_combine_reference(o_s, o_d, scale=3.0, beta=0.2, tau=1.0).float()
        ref[:, :, ~img] = o_d[:, :, ~img].float()
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(out[:, :, ~img], F.scaled_dot_product_attention(q, k, v)[:, :, ~img],
                                   atol=1e-5, rtol=1e-5)


def test_joint_with_host_dense_and_mask():
    q, k, v = _qkv(b=2, h=2, n=30, m=30, seed=11)
    mask = torch.ones(2, 1, 30, 30, dtype=torch.bool)
    mask[1, :, :, 3:8] = False  # padded text keys of the second sample
    text = (0, 10)
    calls = []

    def dense(q_, k_, v_, m_):
        calls.append(1)
        return F.scaled_dot_product_attention(q_, k_, v_, attn_mask=m_)

    out = joint_gag_attention(q, k, v, text_range=text, scale=2.0, mask=mask, dense=dense)
    assert calls == [1]
    _, _, o_s, o_d = _joint_reference(q, k, v, text, mask=mask)
    ref = gag_combine(o_s.float(), o_d.float(), scale=2.0)
    ref[:, :, :10] = o_d[:, :, :10].float()
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    # with (O_d, lse) from the host, the same result
    out2 = joint_gag_attention(q, k, v, text_range=text, scale=2.0, mask=mask,
                               dense=lambda *a: dense_attention_with_lse(*a))
    torch.testing.assert_close(out2, out, atol=1e-5, rtol=1e-5)


def test_joint_pladis_and_half():
    q, k, v = _qkv(b=1, h=4, n=48, m=48, d=32, seed=12)
    _, _, o_s, o_d = _joint_reference(q, k, v, (0, 16))
    out = joint_gag_attention(q, k, v, text_range=(0, 16), method="pladis", scale=2.0)
    ref = pladis_combine(o_s, o_d, scale=2.0).float()
    torch.testing.assert_close(out[:, :, 16:], ref[:, :, 16:], atol=2e-5, rtol=2e-5)
    for dtype in (torch.float16, torch.bfloat16):
        h = joint_gag_attention(q.to(dtype), k.to(dtype), v.to(dtype), text_range=(0, 16), scale=5.0)
        assert h.dtype == dtype and torch.isfinite(h).all()
        assert ((h.float() - joint_gag_attention(q, k, v, text_range=(0, 16), scale=5.0)).abs().max()
                < 50 * torch.finfo(dtype).eps * 10)


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
    with pytest.raises(ValueError, match="same length"):
        joint_gag_attention(q, k, v, text_range=(0, 3), scale=1.0)
