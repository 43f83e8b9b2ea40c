"""The bundled model: loads, samples deterministically, and every guided cross-attention goes through gag_core."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import gag_core
from demo import diffusion, world
from demo.guidance import Guidance, relative_cap_gag
from demo.model import dense_attention
from demo.weights import DEFAULT_WEIGHTS, load, metadata


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load()


def _ids(captions):
    return torch.tensor([world.tokenize(c) for c in captions])


def test_bundled_weights_are_small_and_described():
    assert DEFAULT_WEIGHTS.stat().st_size <= 20 * 2**20
    meta = metadata()
    assert int(meta["steps"]) > 0 and "config" in meta


def test_sampling_is_deterministic_and_caption_dependent(model):
    ids = _ids(["a red circle", "two blue squares", "a square left of a triangle"])
    noise = torch.randn(3, 3, world.SIZE, world.SIZE, generator=torch.Generator().manual_seed(random.randrange(1 << 30)))
    a = diffusion.sample(model, ids, noise, steps=4)
    b = diffusion.sample(model, ids, noise, steps=4)
    assert a.shape == (3, 3, world.SIZE, world.SIZE)
    assert torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    other = diffusion.sample(model, _ids(["a green triangle"] * 3), noise, steps=4)
    assert (other - a).abs().mean() > 1e-3


def test_guided_calls_go_through_gag_attention(model, monkeypatch):
    """GAG in a window of steps and a layer subset calls gag_core.gag_attention exactly there, with the flags."""
    calls = []
    real = gag_core.gag_attention

    def spy(q, k, v, **kw):
        calls.append((q.shape[0], kw["method"], kw["scale"], kw.get("tau")))
        return real(q, k, v, **kw)

    monkeypatch.setattr(gag_core, "gag_attention", spy)
    ids = _ids(["a red circle", "a square and a circle"])
    noise = torch.randn(2, 3, world.SIZE, world.SIZE)
    g = Guidance("gag", 4.0, 0.0, 15.0, window=(0.5, 1.0), layers=frozenset({0, 4}), layers_name="0+4")
    diffusion.sample(model, ids, noise, steps=4, cfg_scale=3.0, guidance=g)
    assert len(calls) == 2 * 2  # steps 2 and 3 of 4, layers 0 and 4
    assert all(c == (4, "gag", 4.0, 15.0) for c in calls)  # both CFG passes: batch 2 × 2
    calls.clear()
    g = Guidance("pladis", 2.0, passes="cond")
    diffusion.sample(model, ids, noise, steps=2, cfg_scale=3.0, guidance=g)
    assert len(calls) == 2 * model.n_attn and all(c[:3] == (2, "pladis", 2.0) for c in calls)


def test_cond_only_leaves_the_unconditional_rows_dense(model):
    b, m = 3, world.MAX_TOKENS
    gen = torch.Generator().manual_seed(random.randrange(1 << 30))
    q, k, v = (torch.randn(2 * b, 4, 16, 8, generator=gen) for _ in range(3))
    k, v = k[:, :, :m], v[:, :, :m]
    mask = torch.ones(2 * b, 1, 1, m, dtype=torch.bool)
    mask[:, :, :, 5:] = False
    g = Guidance("gag", 5.0, passes="cond")
    out = g.attention(slice(b, 2 * b))(0, q, k, v, mask)
    dense = dense_attention(0, q, k, v, mask)
    torch.testing.assert_close(out[:b], dense[:b])
    guided = gag_core.gag_attention(q[b:], k[b:], v[b:], scale=5.0, tau=15.0, mask=mask[b:])
    torch.testing.assert_close(out[b:], guided)


def test_relative_cap_matches_its_definition():
    """c = min(1, τ·‖O_s‖/‖G‖) per token and head, written out in float64."""
    gen = torch.Generator().manual_seed(random.randrange(1 << 30))
    q, k, v = (torch.randn(2, 3, 10, 8, generator=gen) * 2 for _ in range(3))
    lam, beta, tau = 6.0, 0.3, 0.2
    out = relative_cap_gag(q, k, v, scale=lam, beta=beta, tau=tau, alpha=1.5)
    o_s, o_d = (t.double() for t in gag_core.sparse_dense_attention(q, k, v, alpha=1.5))
    d = o_s - o_d
    par = (d * o_s).sum(-1, keepdim=True) / (o_s * o_s).sum(-1, keepdim=True) * o_s
    g = par + beta * (d - par)
    c = torch.clamp(tau * o_s.norm(dim=-1, keepdim=True) / g.norm(dim=-1, keepdim=True), max=1.0)
    torch.testing.assert_close(out.double(), o_s + lam * c * g, rtol=1e-4, atol=1e-5)
    assert (c < 1).any() and (c == 1).any()  # the example exercises both branches
    uncapped = relative_cap_gag(q, k, v, scale=lam, beta=beta, tau=1e9, alpha=1.5)
    torch.testing.assert_close(uncapped, gag_core.gag_attention(q, k, v, scale=lam, beta=beta, tau=None),
                               rtol=1e-4, atol=1e-5)


def test_sparse_method_is_pladis_with_scale_one():
    gen = torch.Generator().manual_seed(random.randrange(1 << 30))
    q, k, v = (torch.randn(1, 2, 6, 8, generator=gen) for _ in range(3))
    o_s, _ = gag_core.sparse_dense_attention(q, k, v, alpha=1.5)
    torch.testing.assert_close(Guidance("sparse", 1.0).attention()(0, q, k, v, None), o_s)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="'cfg'"):
        Guidance("gag", 1.0, passes="cfg")
    with pytest.raises(ValueError, match="window"):
        Guidance("gag", 1.0, window=(0.5, 0.5))
    with pytest.raises(ValueError, match="'nag'"):
        Guidance("nag", 1.0)


def test_ddim_inversion_then_reconstruction_returns_near_the_image(model):
    """The deterministic ODE run up and back down with the same operator lands close to where it started.

    At 25 steps the round trip is accurate (measured: error 0.01–0.2 × a fresh sample's on seeds 0, 13, 15, 23);
    at 10 it is not (0.8–1.2 ×), so the step count is part of the property, and the seed is fixed.
    """
    rng = random.Random(0)
    specs, imgs = zip(*[(s, img) for s, _, img in (world.sample(rng, world.TASKS) for _ in range(4))])
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1
    ids = _ids([world.caption_of(s) for s in specs])
    z = diffusion.invert(model, x, ids, steps=25)
    rec = diffusion.sample(model, ids, z, steps=25, cfg_scale=1.0)
    fresh = diffusion.sample(model, ids, torch.randn(x.shape, generator=torch.Generator().manual_seed(0)),
                             steps=25, cfg_scale=1.0)
    assert ((rec - x) ** 2).mean() < 0.3 * ((fresh - x) ** 2).mean()
