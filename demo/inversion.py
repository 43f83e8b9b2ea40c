"""DDIM inversion–reconstruction (GAG paper, appendix I): invert known images, rebuild them with each operator."""
from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F

from . import world
from .diffusion import invert, sample
from .guidance import Guidance
from .scorer import score


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004, Gaussian window) of images in [0, 1], (B, C, H, W) → (B,)."""
    g = torch.exp(-((torch.arange(window) - window // 2) ** 2) / (2 * sigma**2))
    g = (g / g.sum()).float()
    k = (g[:, None] * g[None, :]).expand(x.shape[1], 1, window, window).contiguous()
    blur = lambda t: F.conv2d(t, k, groups=x.shape[1])  # noqa: E731  (valid window positions only)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def mean_ci(a: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95 % interval."""
    return float(a.mean()), float(1.96 * a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")


def inversion_check(model, guidances: list[Guidance], *, n: int = 48, steps: int = 20, seed: int = 0,
                    matched: bool = False, progress=None) -> str:
    """Invert n generator images without CFG, reconstruct with each operator, report the error vs the original.

    shared (matched=False): one latent from dense inversion, rebuilt by every operator (the paper's protocol).
    matched: each operator inverts and rebuilds with itself (a round trip of one ODE).
    """
    rng = random.Random(f"inversion-{seed}")
    specs, imgs = [], []
    for _ in range(n):
        spec, _, img = world.sample(rng, world.TASKS)
        specs.append(spec)
        imgs.append(img)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (n, 3, S, S)
    ids = torch.tensor([world.tokenize(world.caption_of(s)) for s in specs])
    z_shared = invert(model, x, ids, steps=steps)
    if progress is not None:
        progress(1)
    x01 = (x + 1) / 2
    rows, per = [], {}
    for g in guidances:
        op = None if g.method == "baseline" else g
        z = invert(model, x, ids, steps=steps, guidance=op) if matched and op is not None else z_shared
        rec = sample(model, ids, z, steps=steps, cfg_scale=1.0, guidance=op)
        r01 = (rec + 1) / 2
        mse = ((r01 - x01) ** 2).mean(dim=(1, 2, 3))
        psnr = (-10 * torch.log10(mse.clamp_min(1e-10))).numpy()
        ss = ssim(r01, x01).numpy()
        u8 = ((r01 * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)).numpy()
        ok = np.array([score(s, im) for s, im in zip(specs, u8)])
        label = "dense" if op is None else g.label
        per[label] = (psnr, ss)
        rows.append((label, mean_ci(psnr), mean_ci(ss), int(ok.sum())))
        if progress is not None:
            progress(1)
    width = max(len(r[0]) for r in rows) + 2
    base = rows[0][0]
    how = ("each operator inverts and rebuilds with itself" if matched else
           "inverted once with dense attention, rebuilt from that latent with each operator")
    out = [f"DDIM inversion–reconstruction: {n} generator images, {steps} steps, no CFG, {how} "
           f"(mean ± 95% CI; Δ paired vs {base})",
           "operator".ljust(width) + "PSNR dB".ljust(16) + "SSIM".ljust(18) + "ΔPSNR".ljust(16) + "ΔSSIM".ljust(20)
           + "scorer ok"]
    for label, (p, pc), (s, sc), ok in rows:
        dp = mean_ci(per[label][0] - per[base][0])
        ds = mean_ci(per[label][1] - per[base][1])
        out.append(label.ljust(width) + f"{p:6.2f} ± {pc:4.2f}".ljust(16) + f"{s:.4f} ± {sc:.4f}".ljust(18)
                   + (f"{dp[0]:+5.2f} ± {dp[1]:4.2f}".ljust(16) + f"{ds[0]:+.4f} ± {ds[1]:.4f}".ljust(20)
                      if label != base else "".ljust(36)) + f"{ok}/{n}")
    return "\n".join(out)
