"""Datasets, train/val/test/forget splits and index batching (pure numpy).

Every dataset is held as ONE pool of examples: the official train split followed by the official
test split, whose pool indices are :attr:`Dataset.test_pool`. Splits and batches refer to
examples by their index into that pool, so a split is plain JSON, re-applied to the same dataset.

Typical use::

    ds = load_dataset("fashion_mnist")
    split = make_split(ds, seed=0, val_size=5000, forget_classes=[3])
    idx, w = batch_indices(split.retain, 128, seed)
    for b_idx, b_w in zip(idx, w):
        xb, yb = ds.x[b_idx], ds.y[b_idx]   # b_w masks the padding

Modules: :mod:`.dataset` (the container, the name registry), :mod:`.idx` (IDX files),
:mod:`.tfds` (TensorFlow Datasets), :mod:`.prepare` (preparing a TFDS dataset once),
:mod:`.synthetic`, :mod:`.split`, :mod:`.batching`. No jax here: outputs are numpy arrays.
"""

from .batching import batch_indices, epoch_order
from .dataset import DATASETS, Dataset, load_dataset
from .idx import (
                  DATA_DIR_ENV_VAR,
                  DEFAULT_FASHION_MNIST_DIR,
                  default_data_dir,
                  load_idx_dir,
                  read_idx,
)
from .split import DEFAULT_FORGET_FRACTION, Split, make_split, validate_split
from .synthetic import synthetic_dataset
from .tfds import (
                  TFDS_TEST_SPLITS,
                  DatasetNotPreparedError,
                  LazyImages,
                  MissingExtraError,
                  load_tfds,
)

#: Names accepted by :func:`load_dataset` (``"tfds:<name>"`` stands for any TFDS name).
DATASET_NAMES = DATASETS.names()

__all__ = [
    "DATA_DIR_ENV_VAR", "DATASETS", "DATASET_NAMES", "DEFAULT_FASHION_MNIST_DIR",
    "DEFAULT_FORGET_FRACTION", "Dataset", "DatasetNotPreparedError", "LazyImages",
    "MissingExtraError", "Split", "TFDS_TEST_SPLITS", "batch_indices", "default_data_dir",
    "epoch_order", "load_dataset", "load_idx_dir", "load_tfds", "make_split", "read_idx",
    "synthetic_dataset", "validate_split",
]
