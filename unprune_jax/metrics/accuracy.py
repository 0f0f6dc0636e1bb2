"""Unlearning accuracies, in eval mode and without augmentation.

UA = 1 − Acc(D_f) (unlearning accuracy: higher = more forgotten), RA = Acc(D_r), TA = Acc(test).
"""

from __future__ import annotations

from ..train import accuracy


def unlearning_accuracies(state, apply_fn, dataset, split, batch_size: int = 1000) -> dict:
    """``{'UA', 'RA', 'TA'}`` (fractions in [0, 1]) of ``state`` on ``split``."""
    return {
        "UA": 1.0 - accuracy(state, apply_fn, dataset, split.forget, batch_size),
        "RA": accuracy(state, apply_fn, dataset, split.retain, batch_size),
        "TA": accuracy(state, apply_fn, dataset, split.test, batch_size),
    }
