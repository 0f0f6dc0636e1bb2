"""AlexNet for small images (CIFAR-10 32×32×3, FashionMNIST 28×28×1).

The small-image variant used in the pruning literature: AlexNet's five convolutions and widths
(64, 192, 384, 256, 256) with stride-1 'SAME' convolutions instead of the 11×11 stride-4 ImageNet
stem, 2×2 max-pools after conv0, conv1 and conv4, then two hidden dense layers and the classifier
``head``. Both input sizes end at a 4×4×256 feature map (32→16→8→4, 28→14→7→4), so the parameter
count does not depend on which of the two is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .cnn import max_pool_2x2


class AlexNet(nn.Module):
    """Small-image AlexNet: 5 convs (pools after the 1st, 2nd and 5th), 2 hidden dense, ``head``.

    Attributes:
        num_classes: Outputs of ``head``.
        widths: Output channels of conv0..conv4.
        kernels: Square kernel sizes of conv0..conv4 (5×5 for the first two, as in the
            CIFAR AlexNets, where the ImageNet net has 11×11 and 5×5).
        hidden: Widths of the hidden dense layers ``fc0``, ``fc1``.
        pool_after: Indices of the convs followed by a 2×2 max-pool.
        dtype: Compute dtype (e.g. ``jnp.bfloat16`` or ``"bfloat16"``); None computes in the
            parameters' dtype (float32; float64 under SynFlow's double-precision scoring).
            Parameters are always created in float32 and logits come back at least float32.

    Input: ``(N, H, W, C)`` images; output: ``(N, num_classes)`` logits.
    """

    num_classes: int = 10
    widths: Sequence[int] = (64, 192, 384, 256, 256)
    kernels: Sequence[int] = (5, 5, 3, 3, 3)
    hidden: Sequence[int] = (1024, 1024)
    pool_after: Sequence[int] = (0, 1, 4)
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        if len(self.kernels) != len(self.widths):
            raise ValueError(f"AlexNet: {len(self.widths)} widths but {len(self.kernels)} kernels "
                             f"({self.kernels!r})")
        dtype = None if self.dtype is None else jnp.dtype(self.dtype)
        if dtype is not None:
            x = x.astype(dtype)
        for i, (w, k) in enumerate(zip(self.widths, self.kernels)):
            x = nn.relu(nn.Conv(w, (k, k), dtype=dtype, name=f"conv{i}")(x))
            if i in self.pool_after:
                x = max_pool_2x2(x, ceil=True)  # 7 → 4 on 28×28 inputs
        x = x.reshape(x.shape[0], -1)
        for i, h in enumerate(self.hidden):
            x = nn.relu(nn.Dense(h, dtype=dtype, name=f"fc{i}")(x))
        logits = nn.Dense(self.num_classes, dtype=dtype, name="head")(x)
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
