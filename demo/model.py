"""A tiny text-conditioned UNet: image tokens read the caption only through cross-attention layers."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .world import MAX_TOKENS, VOCAB


@dataclass(frozen=True)
class Config:
    """Architecture hyper-parameters (saved next to the weights)."""

    channels: tuple[int, ...] = (32, 96, 128)  # per resolution level: 16×16, 8×8, 4×4 after 2×2 folding
    blocks: tuple[int, ...] = (1, 1, 2)  # residual blocks per level, each followed by a cross-attention layer
    text_dim: int = 128
    text_layers: int = 2
    heads: int = 4
    time_dim: int = 256
    fold: int = 2  # pixel folding (space-to-depth) factor
    image_size: int = 32

    def as_dict(self) -> dict:
        return asdict(self)


def sinusoidal(x: torch.Tensor, dim: int) -> torch.Tensor:
    """[sin(x·f_i), cos(x·f_i)] with geometric frequencies f_i = 10000^(−i/(dim/2)); x (...) → (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=x.device) / half)
    a = x.float()[..., None] * freqs
    return torch.cat([a.sin(), a.cos()], dim=-1)


def pos_emb_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sinusoidal position embedding, (h·w, dim): half the channels encode y, half encode x."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    scale = 64.0 / max(h, w)  # the same image position gets the same code at every resolution
    return torch.cat([sinusoidal(ys.flatten() * scale, dim // 2), sinusoidal(xs.flatten() * scale, dim // 2)], -1)


class TextEncoder(nn.Module):
    """Token + position embedding and a small pre-norm Transformer encoder; (B, M) ids → (B, M, text_dim)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.tok = nn.Embedding(len(VOCAB), cfg.text_dim)
        self.pos = nn.Parameter(torch.randn(MAX_TOKENS, cfg.text_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.text_dim, 4, 2 * cfg.text_dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.text_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0  # (B, M)
        h = self.tok(ids) + self.pos[: ids.shape[1]]  # (B, M, C)
        return self.norm(self.layers(h, src_key_padding_mask=pad))


class ResBlock(nn.Module):
    """GroupNorm–SiLU–conv twice, time embedding as scale and shift, residual connection."""

    def __init__(self, c_in: int, c_out: int, time_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(time_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(8, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.time(temb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class CrossAttention(nn.Module):
    """Image tokens (queries, with a 2-D position code) attend to caption tokens (keys/values); residual."""

    def __init__(self, channels: int, text_dim: int, heads: int, side: int, index: int):
        super().__init__()
        self.index = index  # position among the model's cross-attention layers (for layer subsets)
        self.heads = heads
        self.norm = nn.GroupNorm(8, channels)
        self.register_buffer("pos", pos_emb_2d(side, side, channels), persistent=False)  # (N, C)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(text_dim, channels)
        self.to_v = nn.Linear(text_dim, channels)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor, attend) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2) + self.pos  # (B, N, C)
        split = lambda t: t.view(b, t.shape[1], self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        q = split(self.to_q(h))  # (B, H, N, D)
        k, v = split(self.to_k(ctx)), split(self.to_v(ctx))  # (B, H, M, D)
        o = attend(self.index, q, k, v, mask)  # (B, H, N, D)
        o = o.transpose(1, 2).reshape(b, hh * ww, c)  # (B, N, C)
        return x + self.to_out(o).transpose(1, 2).reshape(b, c, hh, ww)


def dense_attention(index: int, q, k, v, mask):
    """softmax(q·kᵀ/√d)·v: the unguided cross-attention (mask: bool, True = attend)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class UNet(nn.Module):
    """v-prediction UNet on 2×2-folded pixels, with coordinate channels and cross-attention at every block."""

    arch = "unet"

    def __init__(self, cfg: Config = Config()):
        super().__init__()
        self.cfg = cfg
        side = cfg.image_size // cfg.fold
        c_in = 3 * cfg.fold**2 + 2  # folded pixels + (x, y) coordinate channels
        self.text = TextEncoder(cfg)
        self.time = nn.Sequential(nn.Linear(64, cfg.time_dim), nn.SiLU(), nn.Linear(cfg.time_dim, cfg.time_dim))
        self.stem = nn.Conv2d(c_in, cfg.channels[0], 3, padding=1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)  # (1, 2, side, side)
        n_attn = 0

        def attn(ch: int, s: int) -> CrossAttention:
            nonlocal n_attn
            n_attn += 1
            return CrossAttention(ch, cfg.text_dim, cfg.heads, s, n_attn - 1)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = []
        ch, s = cfg.channels[0], side
        for level, (c, nb) in enumerate(zip(cfg.channels, cfg.blocks)):
            for _ in range(nb):
                self.down.append(nn.ModuleList([ResBlock(ch, c, cfg.time_dim), attn(c, s)]))
                ch = c
                skips.append(ch)
            if level < len(cfg.channels) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                s //= 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, cfg.time_dim), attn(ch, s), ResBlock(ch, ch, cfg.time_dim)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(cfg.channels))):
            c = cfg.channels[level]
            for _ in range(cfg.blocks[level]):
                self.up.append(nn.ModuleList([ResBlock(ch + skips.pop(), c, cfg.time_dim), attn(c, s)]))
                ch = c
            if level > 0:
                s *= 2
        self.n_attn = n_attn
        self.out_norm = nn.GroupNorm(8, ch)
        self.out = nn.Conv2d(ch, 3 * cfg.fold**2, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def encode_text(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, M) token ids → context (B, M, C) and attention mask (B, 1, 1, M), True = attend."""
        return self.text(ids), (ids != 0)[:, None, None, :]

    def forward(self, z: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor,
                attend=dense_attention) -> torch.Tensor:
        """Predict v for noisy images z (B, 3, S, S) at times t (B,) ∈ [0, 1] given the encoded caption."""
        cfg = self.cfg
        temb = self.time(sinusoidal(t * 1000.0, 64))  # (B, T)
        h = F.pixel_unshuffle(z, cfg.fold)  # (B, 12, S/2, S/2)
        h = self.stem(torch.cat([h, self.coords.expand(h.shape[0], -1, -1, -1)], 1))
        skips = []
        i = 0
        for level, nb in enumerate(cfg.blocks):
            for _ in range(nb):
                res, xattn = self.down[i]
                h = xattn(res(h, temb), ctx, mask, attend)
                skips.append(h)
                i += 1
            if level < len(cfg.blocks) - 1:
                h = self.downsample[level](h)
        h = self.mid[0](h, temb)
        h = self.mid[1](h, ctx, mask, attend)
        h = self.mid[2](h, temb)
        i = 0
        for level in reversed(range(len(cfg.blocks))):
            for _ in range(cfg.blocks[level]):
                res, xattn = self.up[i]
                h = xattn(res(torch.cat([h, skips.pop()], 1), temb), ctx, mask, attend)
                i += 1
            if level > 0:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return F.pixel_shuffle(self.out(F.silu(self.out_norm(h))), cfg.fold)
