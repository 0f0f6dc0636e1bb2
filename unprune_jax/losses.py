"""Per-example-weighted losses: ``loss(logits, labels, weights, extra=None, params=None)``.

The train step calls every loss with the batch's ``extra`` dict and the parameters, so a loss can
use per-example teacher logits or a weight penalty; the plain ones ignore both. Losses are weighted
means over the batch, so one compiled step serves any subset of the data: a padded slot or an
example outside the subset has weight 0. A batch whose weights sum to zero has loss 0 (and the
train step skips it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """Σ w·v / Σ w, and 0 where Σ w = 0."""
    total = jnp.sum(weights)
    return jnp.sum(weights * values) / jnp.where(total > 0, total, 1.0)


def cross_entropy(logits, labels, weights, extra=None, params=None) -> jax.Array:
    """Weighted mean softmax cross-entropy with integer labels. Shapes (B, C), (B,), (B,)."""
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
    return weighted_mean(ce, weights)


def negative_cross_entropy(logits, labels, weights, extra=None, params=None) -> jax.Array:
    """−CE: minimising it is gradient ascent on the cross-entropy (GA unlearning)."""
    return -cross_entropy(logits, labels, weights)


