"""A tiny FLUX-like MMDiT: double-stream blocks, one joint attention over [text, image], 2-D RoPE on image tokens."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import sinusoidal
from .world import MAX_TOKENS, VOCAB


@dataclass(frozen=True)
class MMDiTConfig:
    """Architecture hyper-parameters (saved next to the weights)."""

    width: int = 128
    depth: int = 6  # double-stream blocks, each with one joint attention over [text, image]
    heads: int = 4
    mlp_ratio: int = 4
    patch: int = 4  # image tokens are patch×patch pixel patches: 32×32 → 8×8 tokens
    image_size: int = 32
    rope_theta: float = 100.0

    def as_dict(self) -> dict:
        return asdict(self)


def rope_2d(h: int, w: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of FLUX-style axial RoPE, (h·w, head_dim/2): the first half of the pairs encode y, the rest x."""
    quarter = head_dim // 4
    freqs = theta ** (-torch.arange(quarter, dtype=torch.float32) / quarter)  # (D/4,)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    ang = torch.cat([ys.flatten()[:, None] * freqs, xs.flatten()[:, None] * freqs], dim=-1)  # (N, D/2)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of x (B, H, N, D) by the angles whose cos/sin are (N, D/2)."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, H, N, D/2) each
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).to(x.dtype)


class RMSNorm(nn.Module):
    """x·w/√(mean(x²) + ε) over the last dim (FLUX's QK-norm; nn.RMSNorm needs torch ≥ 2.4, the demo ≥ 2.1)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Modulation(nn.Module):
    """adaLN-Zero: vec → n (shift, scale, gate) triples; zero-initialised so every block starts as the identity."""

    def __init__(self, width: int, n: int):
        super().__init__()
        self.lin = nn.Linear(width, 3 * n * width)
        nn.init.zeros_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)

    def forward(self, vec: torch.Tensor) -> list[torch.Tensor]:
        return list(self.lin(F.silu(vec))[:, None, :].chunk(self.lin.out_features // vec.shape[-1], dim=-1))


class Stream(nn.Module):
    """One stream's half of a double-stream block: its own modulation, QKV, QK-norm, output projection and MLP."""

    def __init__(self, cfg: MMDiTConfig):
        super().__init__()
        c = cfg.width
        self.heads = cfg.heads
        self.mod = Modulation(c, 2)
        self.norm1 = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(c, 3 * c)
        self.q_norm = RMSNorm(c // cfg.heads)
        self.k_norm = RMSNorm(c // cfg.heads)
        self.proj = nn.Linear(c, c)
        self.norm2 = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(c, cfg.mlp_ratio * c), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.mlp_ratio * c, c))

    def qkv_heads(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor):
        """Modulated pre-norm, then q, k (RMS-normalised per head) and v, each (B, H, N, D)."""
        b, n, c = x.shape
        h = self.norm1(x) * (1 + scale) + shift
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.q_norm(q), self.k_norm(k), v

    def finish(self, x: torch.Tensor, attn: torch.Tensor, mods: list[torch.Tensor]) -> torch.Tensor:
        """Gated residual of the attention output (B, N, C), then the gated modulated MLP."""
        _, _, gate1, shift2, scale2, gate2 = mods
        x = x + gate1 * self.proj(attn)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class DoubleStreamBlock(nn.Module):
    """FLUX's double-stream block: text and image keep their own weights and meet in one joint attention."""

    def __init__(self, cfg: MMDiTConfig, index: int):
        super().__init__()
        self.index = index  # position among the model's joint-attention layers (for layer subsets)
        self.txt = Stream(cfg)
        self.img = Stream(cfg)

    def forward(self, txt, img, vec, rope, mask, attend):
        """txt (B, M, C), img (B, N, C); joint attention over [text, image] with RoPE on the image rows only."""
        m_txt, m_img = self.txt.mod(vec), self.img.mod(vec)
        tq, tk, tv = self.txt.qkv_heads(txt, m_txt[0], m_txt[1])  # (B, H, M, D)
        iq, ik, iv = self.img.qkv_heads(img, m_img[0], m_img[1])  # (B, H, N, D)
        cos, sin = rope
        iq, ik = apply_rope(iq, cos, sin), apply_rope(ik, cos, sin)  # text positions are 0: no rotation (FLUX)
        q, k, v = torch.cat([tq, iq], 2), torch.cat([tk, ik], 2), torch.cat([tv, iv], 2)  # (B, H, M + N, D)
        n_txt = txt.shape[1]
        o = attend(self.index, q, k, v, mask, text_range=(0, n_txt))  # (B, H, M + N, D)
        o = o.transpose(1, 2).flatten(2)  # (B, M + N, C)
        return self.txt.finish(txt, o[:, :n_txt], m_txt), self.img.finish(img, o[:, n_txt:], m_img)


def dense_joint_attention(index: int, q, k, v, mask, text_range=None):
    """softmax(q·kᵀ/√d)·v over all of [text, image]: the unguided joint attention (mask: bool, True = attend)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class MMDiT(nn.Module):
    """v-prediction MMDiT on 4×4 pixel patches; the caption reaches the image only through the joint attention.

    As in FLUX, the modulation vector carries the time only (no pooled text vector here, so that every bit of
    the caption passes through the attention that guidance acts on).
    """

    arch = "mmdit"

    def __init__(self, cfg: MMDiTConfig = MMDiTConfig()):
        super().__init__()
        self.cfg = cfg
        c, p = cfg.width, cfg.patch
        self.side = cfg.image_size // p
        self.tok = nn.Embedding(len(VOCAB), c)
        self.txt_pos = nn.Parameter(torch.randn(MAX_TOKENS, c) * 0.02)
        self.txt_in = nn.Linear(c, c)
        self.img_in = nn.Linear(3 * p * p, c)
        self.time = nn.Sequential(nn.Linear(64, c), nn.SiLU(), nn.Linear(c, c))
        self.blocks = nn.ModuleList(DoubleStreamBlock(cfg, i) for i in range(cfg.depth))
        self.n_attn = cfg.depth
        self.final_mod = nn.Linear(c, 2 * c)
        nn.init.zeros_(self.final_mod.weight)
        nn.init.zeros_(self.final_mod.bias)
        self.final_norm = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.out = nn.Linear(c, 3 * p * p)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        cos, sin = rope_2d(self.side, self.side, c // cfg.heads, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def encode_text(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, M) token ids → text tokens (B, M, C) and the joint attention mask (B, 1, 1, M + N), True = attend."""
        ctx = self.tok(ids) + self.txt_pos[: ids.shape[1]]
        img_keys = torch.ones(ids.shape[0], self.side * self.side, dtype=torch.bool, device=ids.device)
        return ctx, torch.cat([ids != 0, img_keys], 1)[:, None, None, :]

    def forward(self, z: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor,
                attend=dense_joint_attention) -> torch.Tensor:
        """Predict v for noisy images z (B, 3, S, S) at times t (B,) ∈ [0, 1] given the embedded caption."""
        p = self.cfg.patch
        vec = self.time(sinusoidal(t * 1000.0, 64))  # (B, C)
        img = self.img_in(F.pixel_unshuffle(z, p).flatten(2).transpose(1, 2))  # (B, N, 3·p²) → (B, N, C)
        txt = self.txt_in(ctx)  # (B, M, C)
        rope = (self.rope_cos, self.rope_sin)
        for blk in self.blocks:
            txt, img = blk(txt, img, vec, rope, mask, attend)
        shift, scale = self.final_mod(F.silu(vec))[:, None, :].chunk(2, dim=-1)
        x = self.out(self.final_norm(img) * (1 + scale) + shift)  # (B, N, 3·p²)
        b, s = z.shape[0], self.side
        return F.pixel_shuffle(x.transpose(1, 2).reshape(b, 3 * p * p, s, s), p)
