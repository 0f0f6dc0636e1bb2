"""Small models for 28×28 inputs (FashionMNIST)."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


class SmallCNN(nn.Module):
    """Two 3×3 conv layers, a hidden dense layer, and the classifier ``head``.

    Downsampling is a stride-2 convolution by default. ``pool='max'`` uses 2×2 max-pooling after
    stride-1 convolutions instead, as in the classic small CNN; on a 2-core CPU XLA runs that
    variant's step about 12× slower (1.6k vs 20k img/s at widths 32/64, batch 128), so the default
    keeps the demo within minutes.
    """

    num_classes: int = 10
    widths: Sequence[int] = (32, 64)
    hidden: int = 128
    pool: str = "stride"
    dtype: Any = None  # compute dtype (e.g. bfloat16); None = the params' float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        dtype = None if self.dtype is None else jnp.dtype(self.dtype)
        x = x if dtype is None else x.astype(dtype)
        for i, w in enumerate(self.widths):
            if self.pool == "stride":
                x = nn.relu(nn.Conv(w, (3, 3), strides=2, dtype=dtype, name=f"conv{i}")(x))
            elif self.pool == "max":
                x = nn.relu(nn.Conv(w, (3, 3), dtype=dtype, name=f"conv{i}")(x))
                x = nn.max_pool(x, (2, 2), (2, 2))
            else:
                raise ValueError(f"pool must be 'stride' or 'max', got {self.pool!r}")
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden, dtype=dtype, name="fc")(x))
        logits = nn.Dense(self.num_classes, dtype=dtype, name="head")(x)
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


class MLP(nn.Module):
    """LeNet-300-100 style multilayer perceptron with classifier ``head``."""

    num_classes: int = 10
    hidden: Sequence[int] = (300, 100)
    dtype: Any = None  # compute dtype (e.g. bfloat16); None = the params' float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        dtype = None if self.dtype is None else jnp.dtype(self.dtype)
        x = x.reshape(x.shape[0], -1)
        x = x if dtype is None else x.astype(dtype)
        for i, h in enumerate(self.hidden):
            x = nn.relu(nn.Dense(h, dtype=dtype, name=f"fc{i}")(x))
        logits = nn.Dense(self.num_classes, dtype=dtype, name="head")(x)
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
