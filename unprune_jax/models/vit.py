"""Vision Transformer (Dosovitskiy et al., 2021): a small ViT for 32×32 inputs and ViT-B/16.

One Linen module, two registry entries (``vit_small``: patch 4, dim 192, depth 6, 3 heads;
``vit_b16``: 224×224, patch 16, dim 768, depth 12, 12 heads). Choices:

- Patch embedding is a ``patch×patch`` convolution with stride ``patch`` (``embed``); the image
  height and width must be multiples of ``patch`` (28×28 with patch 4 gives 7×7 = 49 tokens).
- A learned class token (``cls``) is prepended and classified, as in the original ViT-B/16;
  ``pool='gap'`` averages the patch tokens instead (no class token is created then).
- Learned positional embeddings (``pos_embed``), one per token, initialised N(0, 0.02²); their
  number is fixed by the image size the model is initialised on.
- Pre-LN blocks: x + Attn(LN(x)), then x + MLP(LN(x)) with GELU; a final LN before ``head``.
- Attention logits and the softmax are computed in float32 even under a bf16 compute dtype: a
  softmax's sum over 65–197 tokens is the reduction bf16's 8-bit mantissa is worst at, and it
  costs little (the logits are (tokens × tokens) per head).
- Dropout defaults to 0. The library's ``apply_fn`` passes no RNG, so a model with dropout > 0
  runs only through a direct ``model.apply(..., rngs={'dropout': key})``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate ``query``/``key``/``value``/``out`` projections.

    The projection kernels are ``(dim, heads, head_dim)`` and ``(heads, head_dim, dim)``, so a
    pruning mask on them addresses individual weights of individual heads.
    """

    heads: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        n, t, dim = x.shape
        if dim % self.heads:
            raise ValueError(f"ViT: dim={dim} is not divisible by heads={self.heads}")
        head_dim = dim // self.heads
        proj = lambda name: nn.DenseGeneral((self.heads, head_dim), dtype=self.dtype, name=name)
        q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)  # (n, t, heads, head_dim)
        logits = jnp.einsum("nqhd,nkhd->nhqk", q, k,
                            preferred_element_type=jnp.promote_types(q.dtype, jnp.float32))
        weights = jax.nn.softmax(logits / jnp.sqrt(jnp.asarray(head_dim, logits.dtype)), axis=-1)
        y = jnp.einsum("nhqk,nkhd->nqhd", weights.astype(v.dtype), v)
        return nn.DenseGeneral(dim, axis=(-2, -1), dtype=self.dtype, name="out")(y)


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    heads: int
    mlp_dim: int
    dropout: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool):
        drop = nn.Dropout(self.dropout, deterministic=not train or self.dropout == 0)
        y = nn.LayerNorm(dtype=self.dtype, name="ln1")(x)
        x = x + drop(SelfAttention(self.heads, self.dtype, name="attn")(y))
        y = nn.LayerNorm(dtype=self.dtype, name="ln2")(x)
        y = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(y))
        y = nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(drop(y))
        return x + drop(y)


class ViT(nn.Module):
    """Vision Transformer classifier.

    Attributes:
        num_classes: Outputs of ``head``.
        patch: Patch side in pixels; H and W must be multiples of it.
        dim: Token width.
        depth: Number of blocks ``block0..block{depth-1}``.
        heads: Attention heads per block (must divide ``dim``).
        mlp_dim: Hidden width of each block's MLP (4·dim in both registered sizes).
        pool: ``'cls'`` (classify a learned class token) or ``'gap'`` (mean of patch tokens).
        dropout: Dropout rate after attention and in the MLP (0 = off).
        dtype: Compute dtype (e.g. ``jnp.bfloat16``); None computes in the parameters' dtype.
            Parameters stay float32, logits come back at least float32.

    Input: ``(N, H, W, C)`` images; output: ``(N, num_classes)`` logits.
    """

    num_classes: int = 10
    patch: int = 4
    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_dim: int = 768
    pool: str = "cls"
    dropout: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.pool not in ("cls", "gap"):
            raise ValueError(f"ViT: pool must be 'cls' or 'gap', got {self.pool!r}")
        n, h, w, _ = x.shape
        if h % self.patch or w % self.patch:
            raise ValueError(f"ViT: image size {h}×{w} is not a multiple of patch={self.patch}")
        dtype = None if self.dtype is None else jnp.dtype(self.dtype)
        if dtype is not None:
            x = x.astype(dtype)
        x = nn.Conv(self.dim, (self.patch, self.patch), strides=self.patch, padding="VALID",
                    dtype=dtype, name="embed")(x)
        x = x.reshape(n, -1, self.dim)
        if self.pool == "cls":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, self.dim))
            x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, self.dim)).astype(x.dtype), x], 1)
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, x.shape[1], self.dim))
        x = x + pos.astype(x.dtype)
        for i in range(self.depth):
            x = Block(self.heads, self.mlp_dim, self.dropout, dtype, name=f"block{i}")(x, train)
        x = nn.LayerNorm(dtype=dtype, name="ln")(x)
        x = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
        logits = nn.Dense(self.num_classes, dtype=dtype, name="head")(x)
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def vit_small(num_classes: int = 10, **kwargs) -> ViT:
    """ViT for 32×32 inputs: patch 4 (64 tokens + class token), dim 192, depth 6, 3 heads."""
    return ViT(num_classes=num_classes, **{"patch": 4, "dim": 192, "depth": 6, "heads": 3,
                                           "mlp_dim": 768, **kwargs})


def vit_b16(num_classes: int = 1000, **kwargs) -> ViT:
    """ViT-B/16 for 224×224 inputs: patch 16 (196 tokens + class token), dim 768, depth 12,
    12 heads, MLP 3072."""
    return ViT(num_classes=num_classes, **{"patch": 16, "dim": 768, "depth": 12, "heads": 12,
                                           "mlp_dim": 3072, **kwargs})
