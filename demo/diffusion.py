"""Cosine-schedule v-prediction diffusion: training loss, deterministic DDIM sampling and DDIM inversion."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

T_MAX = 0.999  # the first sampling time; at t = 1 the image is pure noise


def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine schedule: z_t = α·x + σ·ε with α = cos(πt/2), σ = sin(πt/2)."""
    return torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)


def v_loss(model, x: torch.Tensor, ids: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean ‖v̂ − v‖² with v = α·ε − σ·x at uniformly drawn t (x in [−1, 1], (B, 3, S, S))."""
    b = x.shape[0]
    t = torch.rand(b, generator=generator)
    eps = torch.randn(x.shape, generator=generator)
    a, s = (u[:, None, None, None] for u in alpha_sigma(t))
    z = a * x + s * eps
    ctx, mask = model.encode_text(ids)
    return F.mse_loss(model(z, t, ctx, mask), a * eps - s * x)


def timesteps(steps: int) -> torch.Tensor:
    """steps + 1 times from T_MAX down to 0."""
    return torch.linspace(T_MAX, 0.0, steps + 1)


def ddim_step(z: torch.Tensor, v: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One deterministic DDIM step from t to t_next given v̂ (x̂ = α z − σ v̂, ε̂ = σ z + α v̂)."""
    a, s = alpha_sigma(torch.tensor(t))
    a2, s2 = alpha_sigma(torch.tensor(t_next))
    x0 = a * z - s * v
    eps = s * z + a * v
    return a2 * x0 + s2 * eps


@torch.no_grad()
def sample(model, ids: torch.Tensor, noise: torch.Tensor, *, steps: int = 20, cfg_scale: float = 3.0,
           guidance=None, progress=None) -> torch.Tensor:
    """DDIM with classifier-free guidance; ids (B, M), noise (B, 3, S, S) → images in [−1, 1].

    guidance: a demo.guidance.Guidance (None: dense attention throughout). With CFG the model sees the
    doubled batch [unconditional; conditional].
    """
    b = ids.shape[0]
    use_cfg = cfg_scale != 1.0
    if use_cfg:
        ids = torch.cat([torch.zeros_like(ids).index_fill_(1, torch.tensor([0]), 1), ids])  # '' then captions
    ctx, mask = model.encode_text(ids)
    z = noise.clone()
    ts = timesteps(steps)
    for i in range(steps):
        t, t_next = float(ts[i]), float(ts[i + 1])
        attend = None
        if guidance is not None and guidance.active(i, steps):
            attend = guidance.attention(slice(b, 2 * b) if use_cfg else None)
        zz = torch.cat([z, z]) if use_cfg else z
        tt = torch.full((zz.shape[0],), t)
        v = model(zz, tt, ctx, mask) if attend is None else model(zz, tt, ctx, mask, attend)
        if use_cfg:
            v_u, v_c = v[:b], v[b:]
            v = v_u + cfg_scale * (v_c - v_u)
        z = ddim_step(z, v, t, t_next)
        if progress is not None:
            progress()
    return z.clamp(-1, 1)


@torch.no_grad()
def invert(model, x: torch.Tensor, ids: torch.Tensor, *, steps: int = 20, guidance=None) -> torch.Tensor:
    """DDIM inversion without CFG: run the deterministic ODE from the image x at t = 0 up to T_MAX."""
    ctx, mask = model.encode_text(ids)
    z = x.clone()
    ts = timesteps(steps).flip(0)
    for i in range(steps):
        t, t_next = float(ts[i]), float(ts[i + 1])
        tt = torch.full((z.shape[0],), t)
        if guidance is not None and guidance.active(steps - 1 - i, steps):
            v = model(z, tt, ctx, mask, guidance.attention(None))
        else:
            v = model(z, tt, ctx, mask)
        z = ddim_step(z, v, t, t_next)
    return z
