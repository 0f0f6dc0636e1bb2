"""ResNet-18 for 32×32 inputs (CIFAR variant: 3×3 stem, stride 1, no max-pool).

``stem='imagenet'`` gives the ImageNet stem (7×7 stride-2 conv, 3×3 stride-2 max-pool) for
224×224 inputs; the blocks and ``head`` are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class BasicBlock(nn.Module):
    features: int
    strides: int = 1
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                         dtype=self.dtype, name=name)
        conv = lambda f, k, s, name: nn.Conv(f, k, s, use_bias=False, dtype=self.dtype, name=name)
        y = conv(self.features, (3, 3), self.strides, "conv1")(x)
        y = nn.relu(norm("bn1")(y))
        y = conv(self.features, (3, 3), 1, "conv2")(y)
        y = norm("bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = conv(self.features, (1, 1), self.strides, "shortcut")(x)
            x = norm("shortcut_bn")(x)
        return nn.relu(x + y)


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 4 stages of 2 basic blocks, widths 64·(1, 2, 4, 8), classifier ``head``.

    ``stem``: ``'cifar'`` (3×3 stride 1, no max-pool) or ``'imagenet'`` (7×7 stride 2, then a
    3×3 stride-2 max-pool). ``dtype``: compute dtype (e.g. ``jnp.bfloat16``); None computes in
    the parameters' dtype. Parameters stay float32, logits come back at least float32.
    """

    num_classes: int = 10
    width: int = 64
    blocks: Sequence[int] = (2, 2, 2, 2)
    stem: str = "cifar"
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.stem not in ("cifar", "imagenet"):
            raise ValueError(f"ResNet18: stem must be 'cifar' or 'imagenet', got {self.stem!r}")
        dtype = None if self.dtype is None else jnp.dtype(self.dtype)
        if dtype is not None:
            x = x.astype(dtype)
        k, s = ((3, 3), 1) if self.stem == "cifar" else ((7, 7), 2)
        x = nn.Conv(self.width, k, s, use_bias=False, dtype=dtype, name="stem")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=dtype,
                                 name="stem_bn")(x))
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for stage, n in enumerate(self.blocks):
            for b in range(n):
                strides = 2 if stage > 0 and b == 0 else 1
                x = BasicBlock(self.width * 2**stage, strides, dtype,
                               name=f"s{stage}b{b}")(x, train)
        x = x.mean(axis=(1, 2))
        logits = nn.Dense(self.num_classes, dtype=dtype, name="head")(x)
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
