"""The bundled MMDiT: shapes, 2-D RoPE, determinism, and every guided joint-attention call goes through gag_core."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch

import gag_core
from demo import diffusion, world
from demo.guidance import Guidance, row_projected_joint_gag
from demo.mmdit import MMDiT, MMDiTConfig, apply_rope, dense_joint_attention, rope_2d
from demo.weights import DEFAULT_MMDIT_WEIGHTS, load, metadata, save


def _gen():
    return torch.Generator().manual_seed(random.randrange(1 << 30))


def _ids(captions):
    return torch.tensor([world.tokenize(c) for c in captions])


def _random_mmdit(**kw) -> MMDiT:
    """A small MMDiT with every parameter random (the zero-initialised gates would hide the blocks)."""
    torch.manual_seed(random.randrange(1 << 30))
    m = MMDiT(MMDiTConfig(**{"width": 32, "depth": 2, "heads": 2, **kw}))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.2)
    return m.eval()


@pytest.fixture(scope="module")
def model():
    return load(DEFAULT_MMDIT_WEIGHTS)


def test_bundled_mmdit_is_small_and_described(model):
    assert DEFAULT_MMDIT_WEIGHTS.stat().st_size <= 10 * 2**20
    meta = metadata(DEFAULT_MMDIT_WEIGHTS)
    assert meta["arch"] == "mmdit" and int(meta["steps"]) > 0
    assert isinstance(model, MMDiT) and model.n_attn == model.cfg.depth
    assert 2e6 < sum(p.numel() for p in model.parameters()) < 6e6


@pytest.mark.parametrize("patch", [2, 4])
def test_shapes_and_joint_mask(patch):
    m = _random_mmdit(patch=patch)
    b = random.randint(1, 3)
    ids = _ids(random.choices(["a red circle", "two squares", "", "a circle left of a blue square"], k=b))
    ctx, mask = m.encode_text(ids)
    n_img = (32 // patch) ** 2
    assert ctx.shape == (b, world.MAX_TOKENS, m.cfg.width)
    assert mask.shape == (b, 1, 1, world.MAX_TOKENS + n_img) and mask.dtype == torch.bool
    assert torch.equal(mask[:, 0, 0, : world.MAX_TOKENS], ids != 0) and mask[:, 0, 0, world.MAX_TOKENS:].all()
    z = torch.randn(b, 3, 32, 32, generator=_gen())
    seen = []

    def spy(index, q, k, v, mask_, text_range=None):
        seen.append((index, q.shape, text_range))
        return dense_joint_attention(index, q, k, v, mask_)

    out = m(z, torch.rand(b, generator=_gen()), ctx, mask, spy)
    assert out.shape == z.shape and torch.isfinite(out).all()
    length = world.MAX_TOKENS + n_img
    assert seen == [(i, (b, 2, length, 16), (0, world.MAX_TOKENS)) for i in range(m.cfg.depth)]


def test_rope_is_a_rotation_that_depends_on_relative_position():
    """⟨R(p)q, R(p')k⟩ depends only on p − p' (per axis), and every rotation keeps the norm."""
    d = 4 * random.randint(2, 6)
    cos, sin = rope_2d(5, 5, d, 100.0)  # (25, d/2)
    q, k = torch.randn(2, d, generator=_gen(), dtype=torch.float64).unbind(0)
    rot = lambda x, i: apply_rope(x.expand(1, 1, 25, d), cos.double(), sin.double())[0, 0, i]  # noqa: E731
    at = lambda y, x: 5 * y + x  # noqa: E731
    torch.testing.assert_close(rot(q, at(3, 4)).norm(), q.norm())
    a = rot(q, at(1, 2)) @ rot(k, at(0, 0))
    b = rot(q, at(4, 3)) @ rot(k, at(3, 1))  # the same offset (1, 2)
    c = rot(q, at(2, 2)) @ rot(k, at(0, 0))
    torch.testing.assert_close(a, b)
    assert not torch.isclose(a, c)


def test_sampling_is_deterministic_and_caption_dependent(model):
    ids = _ids(["a red circle", "two blue squares", "a square left of a triangle"])
    noise = torch.randn(3, 3, world.SIZE, world.SIZE, generator=_gen())
    a = diffusion.sample(model, ids, noise, steps=3)
    b = diffusion.sample(model, ids, noise, steps=3)
    assert a.shape == (3, 3, world.SIZE, world.SIZE) and torch.equal(a, b)
    other = diffusion.sample(model, _ids(["a green triangle"] * 3), noise, steps=3)
    assert (other - a).abs().mean() > 1e-3
    g = Guidance("gag", 5.0, 0.0, 15.0)
    torch.testing.assert_close(diffusion.sample(model, ids, noise, steps=3, guidance=g),
                               diffusion.sample(model, ids, noise, steps=3, guidance=g), rtol=0, atol=0)


def test_guided_joint_calls_go_through_joint_gag_attention(model, monkeypatch):
    """A window of steps and a block subset call gag_core.joint_gag_attention exactly there, with the text span."""
    joint, cross = [], []
    real = gag_core.joint_gag_attention

    def spy(q, k, v, **kw):
        joint.append((q.shape[0], q.shape[2], kw["text_range"], kw["method"], kw["scale"], kw.get("tau")))
        return real(q, k, v, **kw)

    monkeypatch.setattr(gag_core, "joint_gag_attention", spy)
    monkeypatch.setattr(gag_core, "gag_attention", lambda *a, **kw: cross.append(1))
    ids = _ids(["a red circle", "a square and a circle"])
    noise = torch.randn(2, 3, world.SIZE, world.SIZE, generator=_gen())
    length = world.MAX_TOKENS + model.side**2
    g = Guidance("gag", 4.0, 0.0, 15.0, window=(0.5, 1.0), layers=frozenset({0, 3}), layers_name="0+3")
    diffusion.sample(model, ids, noise, steps=4, cfg_scale=3.0, guidance=g)
    assert joint == [(4, length, (0, world.MAX_TOKENS), "gag", 4.0, 15.0)] * 4  # steps 2, 3 × blocks 0, 3
    joint.clear()
    diffusion.sample(model, ids, noise, steps=2, cfg_scale=1.0, guidance=Guidance("pladis", 2.0))
    assert len(joint) == 2 * model.n_attn and all(c[0] == 2 and c[3:5] == ("pladis", 2.0) for c in joint)
    joint.clear()
    diffusion.sample(model, ids, noise, steps=2, cfg_scale=1.0, guidance=Guidance("gag_row", 5.0))
    assert joint == [] and cross == []  # the ablation is the demo's own code


def _row_reference(q, k, v, mask, s, e, lam, beta, tau, alpha):
    """The whole-row rule written out in float64: O_s = O_d + m·(entmax − softmax)(z_t)·v_t, GAG on (O_s, O_d)."""
    q, k, v = q.double(), k.double(), v.double()
    z = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~mask, -math.inf)
    o_d = torch.softmax(z, -1) @ v
    m = torch.softmax(z, -1)[..., s:e].sum(-1, keepdim=True)
    z_t = z[..., s:e]
    o_s = o_d + m * ((gag_core.entmax_reference(z_t, alpha) - torch.softmax(z_t, -1)) @ v[:, :, s:e])
    d = o_s - o_d
    par = (d * o_s).sum(-1, keepdim=True) / (o_s * o_s).sum(-1, keepdim=True) * o_s
    g = par + beta * (d - par)
    c = torch.clamp(tau / g.norm(dim=-1, keepdim=True), max=1.0) if tau else 1.0
    out = o_s + lam * c * g
    out[:, :, s:e] = o_d[:, :, s:e]
    return out


def test_whole_row_ablation_matches_its_definition_and_meets_pladis_at_beta_one():
    b, h, n_txt, n_img, d = random.randint(1, 2), random.randint(1, 3), random.randint(3, 9), 16, 8
    q, k, v = (torch.randn(b, h, n_txt + n_img, d, generator=_gen()) * 1.5 for _ in range(3))
    mask = torch.ones(b, 1, 1, n_txt + n_img, dtype=torch.bool)
    mask[..., random.randint(1, n_txt - 1):n_txt] = False  # padded text keys
    lam, beta, tau = random.uniform(1, 8), random.uniform(0, 0.5), random.choice([None, 0.5])
    out = row_projected_joint_gag(q, k, v, text_range=(0, n_txt), scale=lam, beta=beta, tau=tau, alpha=1.5,
                                  mask=mask)
    ref = _row_reference(q, k, v, mask, 0, n_txt, lam, beta, tau, 1.5)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
    # β = 1 without a cap: both joint readings are PLADIS with s = 1 + λ.
    row = row_projected_joint_gag(q, k, v, text_range=(0, n_txt), scale=lam, beta=1.0, tau=None, alpha=1.5,
                                  mask=mask)
    pladis = gag_core.joint_gag_attention(q, k, v, text_range=(0, n_txt), method="pladis", scale=1 + lam, mask=mask)
    torch.testing.assert_close(row, pladis, rtol=1e-4, atol=1e-5)


def test_whole_row_ablation_is_joint_only():
    q, k, v = (torch.randn(1, 2, 6, 8, generator=_gen()) for _ in range(3))
    with pytest.raises(ValueError, match="joint"):
        Guidance("gag_row", 5.0).attention()(0, q, k, v, None)
    with pytest.raises(ValueError, match="'rel'"):
        Guidance("gag_row", 5.0, tau=0.3, tau_mode="rel")
    with pytest.raises(ValueError, match="cross-attention only"):
        Guidance("gag", 5.0, tau=0.3, tau_mode="rel").attention()(0, q, k, v, None, text_range=(0, 2))


def test_train_then_load_round_trip(tmp_path):
    from demo.train import main as train

    path = tmp_path / "m.safetensors"
    train(["--arch", "mmdit", "--steps", "2", "--batch", "2", "--warmup", "1", "--out", str(path)])
    m = load(path)
    assert isinstance(m, MMDiT) and metadata(path)["steps"] == "2"
    with pytest.raises(SystemExit, match="mmdit"):
        train(["--arch", "unet", "--init", str(path), "--steps", "1", "--out", str(tmp_path / "x.safetensors")])
    save(m, path, {"config": metadata(path)["config"], "arch": "dit9"})
    with pytest.raises(ValueError, match="'dit9'"):
        load(path)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """--resume continues from <out>.state.pt: step, optimiser, EMA and random streams, so the end is the same."""
    import demo.train as train_mod

    argv = ["--arch", "mmdit", "--steps", "4", "--batch", "2", "--warmup", "1", "--save-every", "2",
            "--config", '{"width": 32, "depth": 1, "heads": 2}']
    straight, broken = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    train_mod.main(argv + ["--out", str(straight)])
    real_batch, calls = train_mod.batch, []

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == 3:  # after the checkpoint at step 2
            raise KeyboardInterrupt
        return real_batch(*a, **kw)

    monkeypatch.setattr(train_mod, "batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_mod.main(argv + ["--out", str(broken)])
    assert metadata(broken)["steps"] == "2"
    monkeypatch.setattr(train_mod, "batch", real_batch)
    train_mod.main(["--resume", "--out", str(broken)])
    assert metadata(broken)["steps"] == "4"
    a, b = load(straight).state_dict(), load(broken).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads(metadata(broken)["config"])["width"] == 32
    with pytest.raises(SystemExit, match="no training state"):
        train_mod.main(["--resume", "--out", str(tmp_path / "none.safetensors")])
