"""Epoch orders and fixed-size index batches (padding carries weight 0)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ._checks import as_index_array, check_int


def epoch_order(indices, seed: int, epoch: int, order_pool=None) -> np.ndarray:
    """The visiting order of ``indices`` in ``epoch``.

    With ``order_pool`` the permutation is drawn over the whole pool and then restricted to
    ``indices``: a run on the retained set visits its examples in the same relative order as the
    run on the full set, with the deleted examples removed and the batches re-packed. This is how
    the gold standard reproduces the original data order.
    """
    indices = np.asarray(indices)
    rng = np.random.default_rng([seed, epoch])
    if order_pool is None:
        return indices[rng.permutation(indices.size)]
    pool = np.asarray(order_pool)
    order = pool[rng.permutation(pool.size)]
    return order[np.isin(order, indices)]


def _as_generator(rng_key_or_seed: Any) -> np.random.Generator:
    """Makes a numpy Generator from an int seed, a Generator or a JAX key."""
    r = rng_key_or_seed
    if isinstance(r, np.random.Generator):
        return r
    if isinstance(r, numbers.Integral) and not isinstance(r, bool):
        return np.random.default_rng(check_int(r, "seed", 0))
    if "key<" in str(getattr(r, "dtype", "")):  # typed JAX key
        import jax  # pylint: disable=import-outside-toplevel

        r = jax.random.key_data(r)
    arr = np.asarray(r)
    if isinstance(r, bool) or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"rng_key_or_seed must be a seed, Generator or PRNG key, got {rng_key_or_seed!r}"
        )
    return np.random.default_rng(arr.astype(np.uint32).ravel())


def batch_indices(
    indices: Any,
    batch_size: int,
    rng_key_or_seed: Any = None,
    shuffle: bool = True,
    *,
    drop_remainder: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Splits pool indices into fixed-size batches for one epoch.

    Fixed shapes let a jitted step compile once: the last partial batch is
    padded with ``indices[0]`` at weight 0 (unless ``drop_remainder``).

    Args:
        indices: 1-D integer pool indices, e.g. ``split.retain``.
        batch_size: Examples per batch.
        rng_key_or_seed: Int seed, ``np.random.Generator`` or JAX PRNG key
            used for the shuffle; unused (may be None) when ``shuffle`` is
            False.
        shuffle: Whether to permute the indices first.
        drop_remainder: Drop the last partial batch instead of padding it.

    Returns:
        ``(idx, weight)``: int64 indices and float32 weights (1 real, 0 padding), both
        ``(num_batches, batch_size)``; empty ``indices`` give ``num_batches == 0``.

    Raises:
        ValueError: A ``batch_size`` that is not a positive int, ``indices`` not 1-D integer, or
            ``shuffle`` without a seed.
    """
    batch_size = check_int(batch_size, "batch_size", 1)
    idx = as_index_array(indices, "indices")
    if shuffle:
        if rng_key_or_seed is None:
            raise ValueError("shuffle=True needs rng_key_or_seed (got None)")
        idx = _as_generator(rng_key_or_seed).permutation(idx)
    n = idx.size
    if drop_remainder:
        num_batches = n // batch_size
        idx = idx[: num_batches * batch_size]
        weight = np.ones((idx.size,), np.float32)
    else:
        num_batches = -(-n // batch_size)
        pad = num_batches * batch_size - n
        fill = np.asarray(indices).reshape(-1)[0] if n else 0
        idx = np.concatenate([idx, np.full((pad,), fill, np.int64)])
        weight = np.concatenate([np.ones((n,), np.float32), np.zeros((pad,), np.float32)])
    return (idx.reshape(num_batches, batch_size).astype(np.int64),
            weight.reshape(num_batches, batch_size))
