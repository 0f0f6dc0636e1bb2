"""Small models for 28×28 inputs (FashionMNIST)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def max_pool_2x2(x, ceil: bool = False):
    """2×2 max-pooling with stride 2 over NHWC ``x``, as a reshape and a max.

    Same values as ``nn.max_pool(x, (2, 2), (2, 2))``, but XLA:CPU runs it about 5-10× faster
    forward + backward (2 cores, batch 128, 28×28×32: 18 vs 126 ms): ``nn.max_pool``'s gradient
    is a ``select-and-scatter``, this one's an elementwise compare. They differ only in where the
    gradient of a tied maximum goes (``nn.max_pool``: to the first; here: split evenly); after a
    ReLU the only ties are windows of zeros, whose gradient the ReLU stops either way.

    Args:
        x: ``(N, H, W, C)`` array.
        ceil: an odd last row or column is dropped (False, as VALID padding does) or pooled
            alone (True, PyTorch's ``ceil_mode``: 7 → 4; padded with −inf).

    Returns:
        ``(N, H // 2, W // 2, C)``, or ``(N, ceil(H/2), ceil(W/2), C)`` with ``ceil``.
    """
    n, h, w, c = x.shape
    if ceil and (h % 2 or w % 2):
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
        h, w = h + h % 2, w + w % 2
    x = x[:, : h - h % 2, : w - w % 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class SmallCNN(nn.Module):
    """Two 3×3 conv layers, a hidden dense layer, and the classifier ``head``.

    Downsampling is a stride-2 convolution by default. ``pool='max'`` uses 2×2 max-pooling after
    stride-1 convolutions instead, as in the classic small CNN; on a 2-core CPU XLA runs that
    variant's epoch about 5× slower (1.8k vs 9.3k img/s at widths 32/64, batch 128, on a loaded
    machine; 12× before :func:`max_pool_2x2` replaced ``nn.max_pool``), so the default keeps the
    demo within minutes.
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
                x = max_pool_2x2(x)
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
