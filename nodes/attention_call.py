"""Binding one call of ComfyUI's attention kernels, and moving tensors between its layouts and (B, H, L, D).

Every ComfyUI kernel (pytorch, sage, flash, xformers, sub-quadratic, split, basic) has the signature
`(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **kwargs)`,
but the first names differ (sub-quadratic says query/key/value), so the call is bound by position first.
Layouts: skip_reshape=True gives q, k, v as (B, H, L, D); otherwise (B, L, H·D) (SD3's v is (B, L, H, D)).
The output is (B, L, H·D), or (B, H, L, D) when skip_output_reshape=True.

Newer hosts (0.3x `wrap_attn`) may add keywords: `scale` (a custom softmax scale, None = 1/√D), `enable_gqa`
(k/v with H_kv < H heads, H % H_kv == 0: grouped-query attention), `low_precision_attention` and others; they
are bound here (scale, GQA head count) and every keyword still reaches the dense call untouched. q/k/v may be
`AttentionTensorContainer`s on such hosts; `wrap_attn` unwraps them for an override without a
`container_function` (GuidedAttention has none), and a call that still holds one is not bound (runs unguided).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

POSITIONAL = ("q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape")
ALIASES = {"query": "q", "key": "k", "value": "v", "num_heads": "heads"}


@dataclass
class AttentionCall:
    """The arguments of one attention call, by canonical name, plus the untouched originals."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    heads: int
    mask: object
    skip_reshape: bool
    skip_output_reshape: bool
    transformer_options: dict
    args: tuple
    kwargs: dict
    softmax_scale: float | None = None  # the host's `scale` keyword; None = 1/√D
    kv_heads: int = 0  # heads of k and v (< heads with grouped-query attention); 0 = heads

    @property
    def head_dim(self) -> int:
        return self.q.shape[-1] if self.skip_reshape else self.q.shape[-1] // self.heads

    def q_bhld(self) -> torch.Tensor:
        """q as (B, H, N, D)."""  # (B, H, N, D)
        return to_bhld(self.q, self.heads, self.skip_reshape)

    def k_bhld(self) -> torch.Tensor:
        """k as (B, H_kv, M, D)."""  # (B, H_kv, M, D)
        return to_bhld(self.k, self.kv_heads or self.heads, self.skip_reshape)

    def v_bhld(self) -> torch.Tensor:
        """v as (B, H_kv, M, Dv)."""  # (B, H_kv, M, Dv)
        return to_bhld(self.v, self.kv_heads or self.heads, self.skip_reshape)

    def gag_options(self) -> dict:
        """Keywords for gag_core beyond the rule: the host's softmax scale when it gave one."""
        return {} if self.softmax_scale is None else {"softmax_scale": self.softmax_scale}

    def with_qkv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """(args, kwargs) of this call with q, k, v (B, H, L, W) in its own layout, any width W; a `scale` the
        host was given becomes W^-1/2, the default of a call that gave none."""
        width = q.shape[-1]
        if not self.skip_reshape:
            q, k = (t.transpose(1, 2).flatten(2) for t in (q, k))  # (B, L, H·W)
            v = v.transpose(1, 2) if self.v.ndim == 4 else v.transpose(1, 2).flatten(2)
        args, kwargs = list(self.args), dict(self.kwargs)
        for i, (name, t) in enumerate(zip(POSITIONAL[:3], (q, k, v))):
            if i < len(args):
                args[i] = t
            else:
                alias = next((a for a, c in ALIASES.items() if c == name and a in kwargs), name)
                kwargs[alias] = t
        if kwargs.get("scale") is not None:
            kwargs["scale"] = width ** -0.5
        return tuple(args), kwargs

    @property
    def batch(self) -> int:
        return self.q.shape[0]

    @property
    def q_len(self) -> int:
        return self.q.shape[2] if self.skip_reshape else self.q.shape[1]

    @property
    def k_len(self) -> int:
        return self.k.shape[2] if self.skip_reshape else self.k.shape[1]


def bind_attention_call(args: tuple, kwargs: dict) -> AttentionCall | None:
    """Bind (args, kwargs) of an attention call by position then name; None when q, k, v or heads are missing."""
    bound = {}
    for name, value in zip(POSITIONAL, args):
        bound[name] = value
    for name, value in kwargs.items():
        bound.setdefault(ALIASES.get(name, name), value)
    q, k, v, heads = (bound.get(n) for n in ("q", "k", "v", "heads"))
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return None
    try:
        heads = int(heads)
    except (TypeError, ValueError):
        return None
    if heads <= 0:
        return None
    scale = bound.get("scale")
    if scale is not None:
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            return None
    skip_reshape = bool(bound.get("skip_reshape", False))
    kv_heads = _kv_heads(q, k, v, heads, skip_reshape)
    if kv_heads is None:
        return None
    return AttentionCall(
        q=q, k=k, v=v, heads=heads, mask=bound.get("mask"),
        skip_reshape=skip_reshape,
        skip_output_reshape=bool(bound.get("skip_output_reshape", False)),
        transformer_options=kwargs.get("transformer_options") or {},
        args=tuple(args), kwargs=dict(kwargs), softmax_scale=scale, kv_heads=kv_heads,
    )


def _kv_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, skip_reshape: bool) -> int | None:
    """Heads of k/v: `heads`, or fewer (grouped-query attention) dividing it; None when the shapes do not fit."""
    if q.ndim < 3 or k.ndim < 3 or v.ndim < 3:
        return None
    if skip_reshape:
        if q.ndim != 4 or k.ndim != 4 or v.ndim != 4 or q.shape[1] != heads:
            return None
        kv = k.shape[1]
        return kv if kv > 0 and heads % kv == 0 and v.shape[1] == kv else None
    if q.shape[-1] % heads:
        return None
    d = q.shape[-1] // heads
    if k.ndim != 3 or k.shape[-1] % d:
        return None
    kv = k.shape[-1] // d
    if kv <= 0 or heads % kv:
        return None
    if v.ndim == 4:  # SD3: v as (B, L, H, D)
        return kv if v.shape[2] == kv else None
    return kv if v.shape[-1] % kv == 0 else None


def to_bhld(t: torch.Tensor, heads: int, skip_reshape: bool) -> torch.Tensor:
    """An input tensor in (B, H, L, D): as given when skip_reshape, else from (B, L, H·D) or (B, L, H, D);
    `heads` is the tensor's own head count (H_kv for k and v under grouped-query attention)."""
    if skip_reshape:
        return t
    return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


def output_to_bhld(o: torch.Tensor, heads: int, skip_output_reshape: bool) -> torch.Tensor:
    """A kernel output in (B, H, L, D): as given when skip_output_reshape, else from (B, L, H·D)."""
    if skip_output_reshape:
        return o
    return o.reshape(o.shape[0], o.shape[1], heads, -1).transpose(1, 2)


def output_from_bhld(o: torch.Tensor, skip_output_reshape: bool) -> torch.Tensor:
    """(B, H, L, D) back to the layout the caller asked for: itself, or (B, L, H·D)."""
    if skip_output_reshape:
        return o
    b, h, n, d = o.shape
    return o.transpose(1, 2).reshape(b, n, h * d)


def mask_to_4d(mask) -> torch.Tensor | None:
    """A mask as ComfyUI's pytorch kernel reads it: (N, M) -> (1, 1, N, M), (B, N, M) -> (B, 1, N, M)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"attention mask must be a tensor or None, got {type(mask).__name__}")
    if mask.ndim == 2:
        return mask[None, None]
    if mask.ndim == 3:
        return mask[:, None]
    if mask.ndim == 4:
        return mask
    raise ValueError(f"attention mask must have 2 to 4 dims, got shape {tuple(mask.shape)}")
