"""Pruning and regrow scores: ``f(params, ...) -> score pytree`` shaped like the params."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def magnitude(params):
    """|θ|: the lowest-weight-magnitude (LWM) score."""
    return jax.tree.map(jnp.abs, params)


SCORES = {"magnitude": magnitude}
