"""Checks shared by the data modules: integers, index arrays, labels, and how errors list values."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

_MAX_NAMED = 10  # how many offending values an error message lists


def fmt(values: Iterable[Any], limit: int = _MAX_NAMED) -> str:
    """Formats the first ``limit`` values as a list, noting how many more."""
    values = [v.item() if isinstance(v, np.generic) else v for v in values]
    head = ", ".join(repr(v) for v in values[:limit])
    more = f", ... ({len(values) - limit} more)" if len(values) > limit else ""
    return f"[{head}{more}]"


def check_int(value: Any, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int, refusing bools, non-integers and values outside ``[lo, hi]``.

    Raises:
        ValueError: naming ``what`` and the value.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be an int, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{what}={value} must be {'in ' if hi is not None else ''}{bounds}")
    return int(value)


def as_index_array(values: Any, what: str) -> np.ndarray:
    """Converts to a 1-D int64 array, rejecting non-integer values."""
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{what} must hold integer indices, got dtype {arr.dtype} "
            f"(first values {fmt(arr[:3])})"
        )
    return arr.astype(np.int64)


def check_range(arr: np.ndarray, n_pool: int, what: str) -> None:
    """Refuses indices outside ``[0, n_pool)``."""
    bad = arr[(arr < 0) | (arr >= n_pool)]
    if bad.size:
        raise ValueError(f"{what} has {bad.size} indices outside [0, {n_pool}): {fmt(bad)}")


def check_unique(arr: np.ndarray, what: str) -> None:
    """Refuses repeated indices."""
    s = np.sort(arr)
    dup = np.unique(s[1:][s[1:] == s[:-1]])
    if dup.size:
        raise ValueError(f"{what} has duplicate indices: {fmt(dup)}")


def check_labels(labels: np.ndarray, num_classes: int | None, where: str) -> None:
    """Refuses labels outside ``[0, num_classes)`` (only negative ones when ``num_classes`` is
    None), naming the first offending label and its index, so a corrupt label file cannot quietly
    widen the model.

    Raises:
        ValueError: ``where`` (a file, a split), the first bad label and its index.
    """
    labels = np.asarray(labels)
    hi = np.inf if num_classes is None else num_classes
    bad = np.flatnonzero((labels < 0) | (labels >= hi))
    if bad.size:
        expected = "non-negative" if num_classes is None else f"in [0, {num_classes})"
        raise ValueError(
            f"{where}: label {labels[bad[0]].item()} at index {bad[0]} is not {expected}"
            + (f" ({bad.size} such labels: {fmt(np.unique(labels[bad]))})" if bad.size > 1
               else "")
        )
