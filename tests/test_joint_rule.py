"""The joint-attention rule: GAG on the image-query × text-key sub-operator, mixed back with the dense text mass.

For every guided image row: O_s^t = α-entmax(z_t)·v_t, O_d^t = softmax(z_t)·v_t over the text keys alone,
g = rule(O_s^t, O_d^t) and out = O_d + m·(g − O_d^t), m = the row's dense joint mass on the text keys.
Checked against a float64 reference written from that formula, on random shapes and dtypes.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import gag_core
from gag_core import dense_attention_with_lse, entmax_reference, gag_combine_reference, joint_gag_attention


def _qkv(b, h, n, d, seed, dtype=torch.float32, spread=1.5, m=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g) * spread
    k = torch.randn(b, h, n if m is None else m, d, generator=g) * spread
    v = torch.randn(b, h, n if m is None else m, d, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def joint_reference(q, k, v, text, *, method="gag", scale, beta=0.0, tau=15.0, alpha=1.5, mask=None,
                    guided=None):
    """The joint rule in float64, literally: out = O_d + m·(g − O_d^t) on the guided rows, O_d elsewhere."""
    q, k, v = q.double(), k.double(), v.double()
    z = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        z = z.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else z + mask.double()
    p = torch.nan_to_num(torch.softmax(z, -1))
    o_d = p @ v
    s, e = text
    z_t, v_t = z[..., s:e], v[:, :, s:e]
    o_s_t = entmax_reference(z_t, alpha) @ v_t
    o_d_t = torch.nan_to_num(torch.softmax(z_t, -1)) @ v_t
    if method == "gag":
        g = gag_combine_reference(o_s_t, o_d_t, scale=scale, beta=beta, tau=tau)
    else:
        g = o_d_t + scale * (o_s_t - o_d_t)
    mass = p[..., s:e].sum(-1, keepdim=True)
    out = o_d + mass * (g - o_d_t)
    rows = torch.zeros(q.shape[2], dtype=torch.bool)
    if guided is None:
        rows[:] = True
        if q.shape[2] == k.shape[2]:
            rows[s:e] = False
    else:
        rows[guided[0]:guided[1]] = True
    out[:, :, ~rows] = o_d[:, :, ~rows]
    return out, o_d


def _old_rule(q, k, v, text, scale):
    """The rule before issue 10: GAG projected on the whole joint row O_s = O_d + m·(entmax − softmax)(z_t)·v_t."""
    q, k, v = q.double(), k.double(), v.double()
    z = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    p = torch.softmax(z, -1)
    s, e = text
    mass = p[..., s:e].sum(-1, keepdim=True)
    z_t = z[..., s:e]
    o_d = p @ v
    o_s = o_d + mass * ((entmax_reference(z_t, 1.5) - torch.softmax(z_t, -1)) @ v[:, :, s:e])
    return gag_combine_reference(o_s, o_d, scale=scale, beta=0.0, tau=None)


@pytest.mark.parametrize("layout", ["text_first", "text_last", "text_middle"])
@pytest.mark.parametrize("beta,tau,alpha", [(0.0, 15.0, 1.5), (0.3, 0.5, 2.0), (1.0, None, 1.25)])
def test_matches_float64_reference(layout, beta, tau, alpha):
    for seed in range(2):
        n, t = 30 + 3 * seed, 9 + seed
        text = {"text_first": (0, t), "text_last": (n - t, n), "text_middle": (5, 5 + t)}[layout]
        q, k, v = _qkv(2, 3, n, 16, seed)
        ref, o_d = joint_reference(q, k, v, text, scale=4.0, beta=beta, tau=tau, alpha=alpha)
        out = joint_gag_attention(q, k, v, text_range=text, scale=4.0, beta=beta, tau=tau, alpha=alpha)
        torch.testing.assert_close(out.double(), ref, atol=3e-5, rtol=3e-5)
        s, e = text
        torch.testing.assert_close(out[:, :, s:e].double(), o_d[:, :, s:e], atol=1e-5, rtol=1e-5)  # text rows: dense


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_finite_and_near_reference(dtype):
    q, k, v = _qkv(1, 4, 48, 32, 3, spread=2.0)
    ref, _ = joint_reference(q, k, v, (0, 16), scale=5.0)
    out = joint_gag_attention(q.to(dtype), k.to(dtype), v.to(dtype), text_range=(0, 16), scale=5.0)
    assert out.dtype == dtype and torch.isfinite(out).all()
    err = (out.double() - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-3)
    # inputs rounded to the half format move the logits by ~eps·|z|: a few dozen eps after guidance
    assert err.max() < 64 * torch.finfo(dtype).eps


def test_front_padded_text_keys_masked():
    """FLUX.2 pads its text at the front: padded keys masked (bool) get zero weight, as if absent."""
    n_pad, t, img = 6, 8, 20
    q, k, v = _qkv(2, 2, n_pad + t + img, 16, 4)
    mask = torch.ones(2, 1, 1, n_pad + t + img, dtype=torch.bool)
    mask[..., :n_pad] = False
    out = joint_gag_attention(q, k, v, text_range=(0, n_pad + t), scale=3.0, beta=0.2, mask=mask)
    ref, _ = joint_reference(q, k, v, (0, n_pad + t), scale=3.0, beta=0.2, mask=mask)
    torch.testing.assert_close(out.double(), ref, atol=3e-5, rtol=3e-5)
    # the same as the sequence without its padding
    sub = slice(n_pad, None)
    cut = joint_gag_attention(q[:, :, sub], k[:, :, sub], v[:, :, sub], text_range=(0, t), scale=3.0, beta=0.2)
    torch.testing.assert_close(out[:, :, n_pad + t:], cut[:, :, t:], atol=2e-5, rtol=2e-5)


def test_qwen_additive_padding_mask():
    """Qwen-Image's (B, 1, L) additive mask: −inf on the padded text keys of the shorter prompt."""
    t, img = 10, 24
    q, k, v = _qkv(2, 2, t + img, 16, 5)
    mask = torch.zeros(2, 1, t + img)
    mask[1, 0, 6:t] = -math.inf  # second prompt has 6 real text tokens
    out = joint_gag_attention(q, k, v, text_range=(0, t), scale=3.0, mask=mask[:, None])
    ref, _ = joint_reference(q, k, v, (0, t), scale=3.0, mask=mask[:, None])
    torch.testing.assert_close(out.double(), ref, atol=3e-5, rtol=3e-5)
    v2 = v.clone()
    v2[1, :, 6:t] = 1e3  # values behind masked keys change nothing
    torch.testing.assert_close(joint_gag_attention(q, k, v2, text_range=(0, t), scale=3.0, mask=mask[:, None]),
                               out)


def test_fully_masked_text_block_is_dense():
    q, k, v = _qkv(1, 2, 30, 16, 6)
    mask = torch.ones(1, 1, 1, 30, dtype=torch.bool)
    mask[..., :8] = False
    out = joint_gag_attention(q, k, v, text_range=(0, 8), scale=6.0, beta=0.5, mask=mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-5, rtol=1e-5)


def test_beta_one_without_cap_is_pladis_and_lambda_zero_is_the_sparse_swap():
    q, k, v = _qkv(2, 2, 36, 16, 7)
    text = (0, 12)
    a = joint_gag_attention(q, k, v, text_range=text, scale=3.0, beta=1.0, tau=None)
    b = joint_gag_attention(q, k, v, text_range=text, method="pladis", scale=4.0)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    ref, _ = joint_reference(q, k, v, text, method="pladis", scale=4.0)
    torch.testing.assert_close(b.double(), ref, atol=3e-5, rtol=3e-5)
    # λ = 0: the text block's weights become m·entmax(z_t), i.e. out = O_d + m·(O_s^t − O_d^t)
    z = q.double() @ k.double().transpose(-1, -2) / 4.0
    p = torch.softmax(z, -1)
    p_swap = p.clone()
    p_swap[:, :, 12:, :12] = p[:, :, 12:, :12].sum(-1, keepdim=True) * entmax_reference(z[:, :, 12:, :12], 1.5)
    out0 = joint_gag_attention(q, k, v, text_range=text, scale=0.0)
    torch.testing.assert_close(out0.double(), p_swap @ v.double(), atol=2e-5, rtol=2e-5)


def test_guidance_lies_in_the_span_of_the_text_values():
    """out − O_d ∈ span(v_t) for every image row (t < head_dim, so the span is a proper subspace); the rule
    before issue 10 left it, since it rescaled the whole joint row, self-attention included."""
    t, img, d = 6, 26, 32
    q, k, v = _qkv(2, 2, t + img, d, 8, dtype=torch.float64)
    out = joint_gag_attention(q, k, v, text_range=(0, t), scale=5.0, beta=0.0, tau=None)
    o_d = F.scaled_dot_product_attention(q, k, v)
    old = _old_rule(q, k, v, (0, t), 5.0)

    def residual(x):  # relative residual of the least-squares fit of each image row of x − O_d on v_t
        diff = (x - o_d)[:, :, t:]  # (B, H, img, D)
        basis = v[:, :, :t].transpose(-1, -2)  # (B, H, D, t)
        coef = torch.linalg.lstsq(basis.unsqueeze(2).expand(-1, -1, img, -1, -1), diff.unsqueeze(-1)).solution
        fit = (basis.unsqueeze(2) @ coef).squeeze(-1)
        return float(((diff - fit).norm(dim=-1) / diff.norm(dim=-1).clamp_min(1e-300)).max())

    assert residual(out) < 1e-10  # float64 noise
    assert residual(old) > 1e-2


def test_dense_callable_with_and_without_lse():
    """The host's dense output (with or without its lse) gives the same result as gag_core's own."""
    q, k, v = _qkv(2, 2, 30, 16, 9)
    mask = torch.ones(2, 1, 30, 30, dtype=torch.bool)
    mask[1, :, :, 3:8] = False
    text = (0, 10)
    calls = []

    def dense(q_, k_, v_, m_):
        calls.append(1)
        return F.scaled_dot_product_attention(q_, k_, v_, attn_mask=m_)

    own = joint_gag_attention(q, k, v, text_range=text, scale=2.0, mask=mask)
    out = joint_gag_attention(q, k, v, text_range=text, scale=2.0, mask=mask, dense=dense)
    assert calls == [1]
    torch.testing.assert_close(out, own, atol=1e-5, rtol=1e-5)
    with_lse = joint_gag_attention(q, k, v, text_range=text, scale=2.0, mask=mask,
                                   dense=lambda *a: dense_attention_with_lse(*a))
    torch.testing.assert_close(with_lse, own, atol=1e-5, rtol=1e-5)
    ref, _ = joint_reference(q, k, v, text, scale=2.0, mask=mask)
    torch.testing.assert_close(own.double(), ref, atol=3e-5, rtol=3e-5)


def test_guided_rows_and_a_cached_text_prefix():
    """guided_rows keeps reference rows dense; q shorter than k (target queries against a cached text prefix)
    guides every given row."""
    t, img, ref_tokens = 8, 16, 6
    q, k, v = _qkv(1, 2, t + img + ref_tokens, 16, 10)
    out = joint_gag_attention(q, k, v, text_range=(0, t), scale=3.0, guided_rows=(t, t + img))
    ref, o_d = joint_reference(q, k, v, (0, t), scale=3.0, guided=(t, t + img))
    torch.testing.assert_close(out.double(), ref, atol=3e-5, rtol=3e-5)
    torch.testing.assert_close(out[:, :, t + img:].double(), o_d[:, :, t + img:], atol=1e-5, rtol=1e-5)
    qt = q[:, :, t:]  # the target queries only
    out_t = joint_gag_attention(qt, k, v, text_range=(0, t), scale=3.0)
    ref_t, _ = joint_reference(qt, k, v, (0, t), scale=3.0)
    torch.testing.assert_close(out_t.double(), ref_t, atol=3e-5, rtol=3e-5)


def test_softmax_scale_and_grouped_heads():
    g = torch.Generator().manual_seed(11)
    q = torch.randn(1, 4, 24, 16, generator=g)
    k, v = torch.randn(1, 2, 24, 16, generator=g), torch.randn(1, 2, 24, 16, generator=g)
    kr, vr = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    out = joint_gag_attention(q, k, v, text_range=(0, 8), scale=3.0, softmax_scale=0.5)
    ref, _ = joint_reference(q * (0.5 * 4.0), kr, vr, (0, 8), scale=3.0)  # z = 0.5·q·kᵀ
    torch.testing.assert_close(out.double(), ref, atol=3e-5, rtol=3e-5)


def test_statistics_describe_the_text_retrieval():
    """The chart's statistics on the joint path are those of (O_s^t, O_d^t), for GAG and PLADIS alike."""
    q, k, v = _qkv(1, 2, 30, 16, 12)
    z = q @ k.transpose(-1, -2) / 4.0
    o_s_t = gag_core.entmax(z[:, :, 10:, :10], 1.5) @ v[:, :, :10]
    o_d_t = torch.softmax(z[:, :, 10:, :10], -1) @ v[:, :, :10]
    for method, scale in (("gag", 4.0), ("pladis", 2.0)):
        got, want = gag_core.GuidanceStats(), gag_core.GuidanceStats()
        joint_gag_attention(q, k, v, text_range=(0, 10), method=method, scale=scale, stats=got)
        if method == "gag":
            gag_core.gag_combine(o_s_t, o_d_t, scale=scale, stats=want)
        else:
            gag_core.gag_combine(o_s_t, o_d_t, scale=scale - 1.0, beta=1.0, tau=None, stats=want)
        for key, val in want.summary().items():
            assert got.summary()[key] == pytest.approx(val, rel=1e-4, abs=1e-7), (method, key)


@pytest.mark.parametrize("text,softmax_scale", [((0, 12), None), ((40, 52), 0.2), ((20, 32), None)])
def test_text_mass_channel_equals_the_lse_path(text, softmax_scale):
    """A dense pass on the text-mass extension returns [O_d | m | 0…] at the call's scale; guidance through it
    equals the log-sum-exp path, and the check accepts a plain kernel but not one that rescales its output."""
    from gag_core.attention import TEXT_MASS_PAD, text_mass_agrees, text_mass_extension

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 52, 16, generator=g) for _ in range(3))
    mask = torch.ones(2, 1, 1, 52, dtype=torch.bool)
    mask[1, ..., text[0]:text[0] + 3] = False  # padded text keys of one batch item

    def sdpa(q_, k_, v_, m_):  # a host kernel at the default scale 1/√width
        return F.scaled_dot_product_attention(q_, k_, v_, attn_mask=m_)

    o_x = sdpa(*text_mass_extension(q, k, v, text, softmax_scale=softmax_scale), mask)
    assert o_x.shape[-1] == 16 + TEXT_MASS_PAD
    p = torch.softmax((q @ k.transpose(-1, -2) * (softmax_scale or 16 ** -0.5)).masked_fill(~mask, -math.inf), -1)
    torch.testing.assert_close(o_x[..., :16], p @ v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(o_x[..., 16], p[..., text[0]:text[1]].sum(-1), atol=1e-6, rtol=1e-5)
    assert bool((o_x[..., 17:] == 0).all())
    o_d = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=softmax_scale)
    assert text_mass_agrees(o_x, o_d, q, k, text, mask=mask, softmax_scale=softmax_scale)
    assert not text_mass_agrees(o_x * 0.5, o_d * 0.5, q, k, text, mask=mask, softmax_scale=softmax_scale)
    kw = dict(text_range=text, scale=5.0, mask=mask, softmax_scale=softmax_scale)
    ref = joint_gag_attention(q, k, v, **kw)
    via_channel = joint_gag_attention(q, k, v, dense=sdpa, dense_text_mass=True, **kw)
    torch.testing.assert_close(via_channel, ref, atol=2e-5, rtol=1e-4)
