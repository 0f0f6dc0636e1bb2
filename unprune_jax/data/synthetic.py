"""A small learnable synthetic dataset for tests and examples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._checks import check_int
from .dataset import DATASETS, Dataset


def synthetic_dataset(
    n: int = 512,
    image_shape: Sequence[int] = (28, 28, 1),
    num_classes: int = 10,
    n_test: int = 128,
    seed: int = 0,
) -> Dataset:
    """Makes a small learnable dataset for unit tests.

    Each class has a fixed random mean image; an example is its class mean
    plus Gaussian noise (std 0.15), clipped to ``[0, 1]``. Labels are
    balanced within the train part and within the test part.

    Args:
        n: Total number of examples (train and test together).
        image_shape: ``(H, W, C)``.
        num_classes: Number of classes.
        n_test: Number of test examples; they are the last ``n_test`` of the
            pool.
        seed: Seed; equal seeds give equal datasets.

    Returns:
        The dataset, named ``"synthetic"``.

    Raises:
        ValueError: On a non-positive size or ``n_test`` not in ``[0, n)``.
    """
    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (H, W, C) with H, W, C >= 1, got {image_shape}")
    n = check_int(n, "n", 1)
    num_classes = check_int(num_classes, "num_classes", 1)
    n_test = check_int(n_test, "n_test", 0, n - 1)
    rng = np.random.default_rng(seed)
    means = rng.uniform(0.1, 0.9, size=(num_classes, *image_shape)).astype(np.float32)
    n_train = n - n_test
    y = np.concatenate([
        rng.permutation(np.arange(n_train) % num_classes),
        rng.permutation(np.arange(n_test) % num_classes),
    ]).astype(np.int32)
    noise = rng.normal(0.0, 0.15, size=(n, *image_shape)).astype(np.float32)
    x = np.clip(means[y] + noise, 0.0, 1.0)
    return Dataset(x=x, y=y, num_classes=num_classes, name="synthetic",
                   test_pool=np.arange(n_train, n, dtype=np.int64))


@DATASETS.register(
    "synthetic",
    "class-mean images plus Gaussian noise, 28×28×1, 10 classes; for tests and examples "
    "(seconds)",
)
def _load_synthetic(data_dir=None, **kw) -> Dataset:
    if data_dir is not None:
        raise ValueError(f"the synthetic dataset takes no data_dir, got {data_dir!r}")
    return synthetic_dataset(**kw)
