"""The :class:`Dataset` container and the registry of dataset names :func:`load_dataset` accepts.

Each loader module registers its names in :data:`DATASETS` next to its loader, with the one-line
description ``unprune-jax list datasets`` prints.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ..registry import Registry
from ._checks import as_index_array, check_int, check_labels, check_range, check_unique


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """An in-memory image classification dataset held as one pool.

    Attributes:
        x: float32 images, shape ``(N, H, W, C)``, values in ``[0, 1]``.
        y: int32 labels in ``[0, num_classes)``, shape ``(N,)``.
        num_classes: Number of classes.
        name: Short name of the source, e.g. ``"fashion_mnist"``.
        test_pool: Sorted int64 pool indices of the examples that come from
            the source's official test split; empty for sources without one.

    Arrays are converted to the documented dtypes on construction. Equality
    is identity (comparing image arrays element-wise is never what is meant).
    ``x`` may instead be a :class:`~unprune_jax.data.tfds.LazyImages` (decoded on indexing, for
    pools too large for memory); the library only indexes ``x`` and reads its shape.
    """

    x: Any
    y: np.ndarray
    num_classes: int
    name: str
    test_pool: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0,), np.int64)
    )

    def __post_init__(self) -> None:
        what = f"Dataset {self.name!r}"
        lazy = getattr(self.x, "decoded_on_access", False)  # LazyImages
        x = self.x if lazy else np.asarray(self.x, dtype=np.float32)
        y = np.asarray(self.y)
        if x.ndim != 4:
            raise ValueError(f"{what}: x must have shape (N, H, W, C), got shape {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"{what}: y must have shape ({len(x)},), got shape {y.shape}")
        if y.size and not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{what}: labels must be integers, got dtype {y.dtype}")
        num_classes = check_int(self.num_classes, f"{what}: num_classes", 1)
        check_labels(y, num_classes, f"{what}: y")
        test_pool = np.sort(as_index_array(self.test_pool, f"{what} test_pool"))
        check_range(test_pool, len(x), f"{what} test_pool")
        check_unique(test_pool, f"{what} test_pool")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y.astype(np.int32, copy=False))
        object.__setattr__(self, "num_classes", num_classes)
        object.__setattr__(self, "test_pool", test_pool)

    def __len__(self) -> int:
        return len(self.x)

    @functools.cached_property
    def train_pool(self) -> np.ndarray:
        """Sorted int64 pool indices that are not in :attr:`test_pool`."""
        return np.setdiff1d(np.arange(len(self), dtype=np.int64), self.test_pool)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The ``(H, W, C)`` shape of one image."""
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n={len(self)}, "
            f"image_shape={self.image_shape}, num_classes={self.num_classes}, "
            f"n_train_pool={len(self.train_pool)}, n_test_pool={len(self.test_pool)})"
        )


def images_to_float(images: np.ndarray) -> np.ndarray:
    """Converts images to float32 NHWC in ``[0, 1]``.

    Integer images are divided by the maximum of their dtype (255 for uint8);
    float images are assumed to be in ``[0, 1]`` already. A missing channel
    axis (``(N, H, W)``) is added.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if np.issubdtype(images.dtype, np.integer):
        return images.astype(np.float32) / np.float32(np.iinfo(images.dtype).max)
    return images.astype(np.float32, copy=False)


def one_pool(x_train, y_train, x_test, y_test, *, name: str, num_classes: int) -> Dataset:
    """Builds a one-pool Dataset: train examples, then test examples (if any)."""
    if x_test is None or y_test is None:
        x, y, test_pool = x_train, y_train, np.zeros((0,), np.int64)
    else:
        x = np.concatenate([x_train, x_test], axis=0)
        y = np.concatenate([y_train, y_test], axis=0)
        test_pool = np.arange(len(x_train), len(x), dtype=np.int64)
    return Dataset(x=x, y=np.asarray(y), num_classes=num_classes, name=name, test_pool=test_pool)


#: Dataset name → loader ``(data_dir, **kw) -> Dataset``; ``tfds:<name>`` stands for every
#: TFDS name (its loader takes the TFDS name as ``name``).
DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset", cutoff=0.5)

_TFDS_PREFIX = "tfds:"


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, **kw: Any) -> Dataset:
    """Loads a dataset by name (``unprune-jax list datasets`` lists them).

    Args:
        name: ``"fashion_mnist"`` (:func:`~unprune_jax.data.idx.load_idx_dir`), ``"synthetic"``
            (:func:`~unprune_jax.data.synthetic.synthetic_dataset`) or ``"tfds:<name>"``
            (:func:`~unprune_jax.data.tfds.load_tfds`).
        data_dir: Data directory (None for ``synthetic``).
        **kw: Extra keyword arguments for the loader.

    Raises:
        ValueError: For an unknown name, listing the valid names and the closest match.
    """
    if isinstance(name, str) and name.startswith(_TFDS_PREFIX):
        if not name[len(_TFDS_PREFIX):]:
            raise ValueError("'tfds:' needs a TFDS dataset name, e.g. 'tfds:cifar10'")
        return DATASETS.get("tfds:<name>")(data_dir, name=name[len(_TFDS_PREFIX):], **kw)
    return DATASETS.get(name)(data_dir, **kw)
