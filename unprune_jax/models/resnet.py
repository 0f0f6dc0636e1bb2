"""ResNet-18 for 32×32 inputs (CIFAR variant: 3×3 stem, stride 1, no max-pool)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn


class BasicBlock(nn.Module):
    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
        y = nn.Conv(self.features, (3, 3), self.strides, use_bias=False, name="conv1")(x)
        y = nn.relu(norm("bn1")(y))
        y = nn.Conv(self.features, (3, 3), use_bias=False, name="conv2")(y)
        y = norm("bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), self.strides, use_bias=False, name="shortcut")(x)
            x = norm("shortcut_bn")(x)
        return nn.relu(x + y)


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 4 stages of 2 basic blocks, widths 64·(1, 2, 4, 8), classifier ``head``."""

    num_classes: int = 10
    width: int = 64
    blocks: Sequence[int] = (2, 2, 2, 2)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.width, (3, 3), use_bias=False, name="stem")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="stem_bn")(x))
        for stage, n in enumerate(self.blocks):
            for b in range(n):
                strides = 2 if stage > 0 and b == 0 else 1
                x = BasicBlock(self.width * 2**stage, strides, name=f"s{stage}b{b}")(x, train)
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)
