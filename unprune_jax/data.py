"""Datasets, train/val/test/forget splits and index batching (pure numpy).

Every dataset is held as ONE pool of examples: for sources with an official
train/test split (FashionMNIST, most TFDS image datasets) the pool is the
official train split followed by the official test split, and
:attr:`Dataset.test_pool` holds the pool indices of the official test
examples. All other objects in this module (:class:`Split`,
:func:`batch_indices`) refer to examples by their integer index into that
pool, so a split can be stored as plain JSON and re-applied to the same
dataset later.

Typical use::

    ds = load_dataset("fashion_mnist")
    split = make_split(ds, seed=0, val_size=5000, forget_classes=[3])
    idx, w = batch_indices(split.retain, 128, seed)
    for b_idx, b_w in zip(idx, w):
        xb, yb = ds.x[b_idx], ds.y[b_idx]   # b_w masks the padding

This module deliberately does not import jax: it runs on any host and its
outputs are plain numpy arrays that ``jnp.asarray`` accepts directly.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import numbers
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .registry import unknown_name_error

__all__ = [
    "DATA_DIR_ENV_VAR",
    "DEFAULT_FASHION_MNIST_DIR",
    "DATASET_NAMES",
    "Dataset",
    "LazyImages",
    "Split",
    "TFDS_TEST_SPLITS",
    "batch_indices",
    "default_data_dir",
    "load_dataset",
    "load_idx_dir",
    "load_tfds",
    "make_split",
    "read_idx",
    "synthetic_dataset",
    "validate_split",
]

#: Environment variable that overrides the default FashionMNIST directory.
DATA_DIR_ENV_VAR = "UNPRUNE_JAX_DATA_DIR"

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_INSTALL_HINT = (
    "The FashionMNIST IDX files are installed (into "
    f"{DEFAULT_FASHION_MNIST_DIR}) by `apt-get install dataset-fashion-mnist`; "
    f"set {DATA_DIR_ENV_VAR} or pass data_dir to read them from elsewhere."
)

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_MAX_NAMED = 10  # how many offending values an error message lists


def _fmt(values: Iterable[Any], limit: int = _MAX_NAMED) -> str:
    """Formats the first ``limit`` values as a list, noting how many more."""
    values = [v.item() if isinstance(v, np.generic) else v for v in values]
    head = ", ".join(repr(v) for v in values[:limit])
    more = f", ... ({len(values) - limit} more)" if len(values) > limit else ""
    return f"[{head}{more}]"


# --------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------


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
    ``x`` may instead be a :class:`LazyImages` (decoded on indexing, for pools
    too large for memory); the library only indexes ``x`` and reads its shape.
    """

    x: np.ndarray | LazyImages
    y: np.ndarray
    num_classes: int
    name: str
    test_pool: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0,), np.int64)
    )

    def __post_init__(self) -> None:
        x = self.x if isinstance(self.x, LazyImages) else np.asarray(self.x, dtype=np.float32)
        y = np.asarray(self.y)
        test_pool = np.asarray(self.test_pool)
        if x.ndim != 4:
            raise ValueError(
                f"Dataset {self.name!r}: x must have shape (N, H, W, C), got "
                f"shape {x.shape}"
            )
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(
                f"Dataset {self.name!r}: y must have shape ({len(x)},), got "
                f"shape {y.shape}"
            )
        if y.size and not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"Dataset {self.name!r}: labels must be integers, got dtype "
                f"{y.dtype}"
            )
        if isinstance(self.num_classes, bool) or not isinstance(
            self.num_classes, numbers.Integral
        ) or self.num_classes < 1:
            raise ValueError(
                f"Dataset {self.name!r}: num_classes must be a positive int, "
                f"got {self.num_classes!r}"
            )
        bad = np.unique(y[(y < 0) | (y >= self.num_classes)])
        if bad.size:
            raise ValueError(
                f"Dataset {self.name!r}: labels {_fmt(bad)} are outside "
                f"[0, {self.num_classes})"
            )
        y = y.astype(np.int32, copy=False)
        test_pool = _as_index_array(test_pool, f"Dataset {self.name!r} test_pool")
        test_pool = np.sort(test_pool)
        _check_range(test_pool, len(x), f"Dataset {self.name!r} test_pool")
        _check_unique(test_pool, f"Dataset {self.name!r} test_pool")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "num_classes", int(self.num_classes))
        object.__setattr__(self, "test_pool", test_pool)

    def __len__(self) -> int:
        return len(self.x)

    @functools.cached_property
    def train_pool(self) -> np.ndarray:
        """Sorted int64 pool indices that are not in :attr:`test_pool`."""
        return np.setdiff1d(
            np.arange(len(self), dtype=np.int64), self.test_pool
        ).astype(np.int64)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The ``(H, W, C)`` shape of one image."""
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n={len(self)}, "
            f"image_shape={self.image_shape}, num_classes={self.num_classes}, "
            f"n_train_pool={len(self.train_pool)}, "
            f"n_test_pool={len(self.test_pool)})"
        )


def _images_to_float(images: np.ndarray) -> np.ndarray:
    """Converts images to float32 NHWC in ``[0, 1]``.

    Integer images are divided by the maximum of their dtype (255 for uint8);
    float images are assumed to be in ``[0, 1]`` already. A missing channel
    axis (``(N, H, W)``) is added.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if np.issubdtype(images.dtype, np.integer):
        scale = np.float32(np.iinfo(images.dtype).max)
        return images.astype(np.float32) / scale
    return images.astype(np.float32, copy=False)


def _one_pool(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray | None,
    y_test: np.ndarray | None,
    *,
    name: str,
    num_classes: int | None,
) -> Dataset:
    """Builds a one-pool Dataset: train examples, then test examples."""
    if x_test is None or y_test is None:
        x, y = x_train, y_train
        test_pool = np.zeros((0,), np.int64)
    else:
        x = np.concatenate([x_train, x_test], axis=0)
        y = np.concatenate([y_train, y_test], axis=0)
        test_pool = np.arange(len(x_train), len(x), dtype=np.int64)
    y = np.asarray(y).astype(np.int32)
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 1
    return Dataset(x=x, y=y, num_classes=num_classes, name=name, test_pool=test_pool)


# --------------------------------------------------------------------------
# IDX (MNIST / FashionMNIST) files
# --------------------------------------------------------------------------


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (optionally gzip-compressed) into a numpy array.

    The header is parsed rather than skipped: two zero bytes, a one-byte
    type code (0x08 = unsigned byte, also 0x09/0x0B/0x0C/0x0D/0x0E), a
    one-byte number of dimensions, then one big-endian uint32 per dimension.
    A file is treated as gzip-compressed when it starts with the gzip magic
    bytes, whatever its name.

    Args:
        path: The IDX file.

    Returns:
        The array, shape given by the header, in native byte order.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the header is malformed or the payload size does not
            match the header.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip stream: {e}") from e
    if len(raw) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{raw[:4].hex()} "
            "(the first two bytes must be zero)"
        )
    code, ndims = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: unknown IDX data type code 0x{code:02x} "
            f"(known: {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})"
        )
    if ndims == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndims
    if len(raw) < header_len:
        raise ValueError(
            f"{path}: truncated IDX header: {ndims} dimensions need "
            f"{header_len} bytes, file has {len(raw)}"
        )
    dims = struct.unpack(f">{ndims}I", raw[4:header_len])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_len
    if actual != expected:
        raise ValueError(
            f"{path}: IDX header declares shape {dims} of {dtype.name} "
            f"({expected} bytes of data) but the file has {actual} bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=True)


def default_data_dir() -> str:
    """Returns ``$UNPRUNE_JAX_DATA_DIR`` if set, else the Debian default."""
    return os.environ.get(DATA_DIR_ENV_VAR) or DEFAULT_FASHION_MNIST_DIR


def _find_idx_file(data_dir: str, split: str, kind: str, ndim: int) -> str:
    """Finds ``{split}-{kind}-idx{ndim}-ubyte`` in any accepted spelling."""
    stems = [f"{split}-{kind}-idx{ndim}-ubyte", f"{split}-{kind}.idx{ndim}-ubyte"]
    candidates = [os.path.join(data_dir, s + ext) for s in stems for ext in (".gz", "")]
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise FileNotFoundError(
        f"IDX file {candidates[0]} not found (also tried "
        f"{', '.join(os.path.basename(c) for c in candidates[1:])}). "
        + _INSTALL_HINT
    )


def load_idx_dir(
    data_dir: str | os.PathLike | None = None,
    *,
    name: str = "fashion_mnist",
    num_classes: int | None = None,
) -> Dataset:
    """Loads an MNIST-format directory of four IDX files as one pool.

    Reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each either
    ``.gz`` or uncompressed). The pool is the train examples followed by
    the t10k examples, so for FashionMNIST ``len(ds) == 70000`` and
    ``ds.test_pool == arange(60000, 70000)``.

    Args:
        data_dir: Directory holding the files. Defaults to
            ``$UNPRUNE_JAX_DATA_DIR`` if set, else
            ``/usr/share/datasets/fashion-mnist``.
        name: Name given to the dataset.
        num_classes: Number of classes; default ``max(label) + 1``.

    Returns:
        The dataset, images float32 ``(N, 28, 28, 1)`` in ``[0, 1]``.

    Raises:
        FileNotFoundError: If the directory or one of the files is missing;
            the message names the path and how to install the files.
        ValueError: If a file is malformed or images and labels disagree.
    """
    data_dir = os.fspath(data_dir) if data_dir is not None else default_data_dir()
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"IDX data directory {data_dir} does not exist. " + _INSTALL_HINT
        )
    arrays = {}
    for split in ("train", "t10k"):
        img_path = _find_idx_file(data_dir, split, "images", 3)
        lbl_path = _find_idx_file(data_dir, split, "labels", 1)
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim != 3:
            raise ValueError(
                f"{img_path}: expected 3-D images (N, H, W), got shape {images.shape}"
            )
        if labels.ndim != 1:
            raise ValueError(
                f"{lbl_path}: expected 1-D labels, got shape {labels.shape}"
            )
        if len(images) != len(labels):
            raise ValueError(
                f"{img_path} has {len(images)} images but {lbl_path} has "
                f"{len(labels)} labels"
            )
        arrays[split] = (_images_to_float(images), labels)
    (x_tr, y_tr), (x_te, y_te) = arrays["train"], arrays["t10k"]
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise ValueError(
            f"train images have shape {x_tr.shape[1:]} but t10k images have "
            f"shape {x_te.shape[1:]}"
        )
    return _one_pool(x_tr, y_tr, x_te, y_te, name=name, num_classes=num_classes)


# --------------------------------------------------------------------------
# TensorFlow Datasets (optional)
# --------------------------------------------------------------------------

#: The official split used as the test pool where it is not ``'test'``: ImageNet's ``'test'``
#: split has no labels (all −1), so its 50,000 labelled validation images are the test set,
#: as in every ImageNet paper (and the peers' ImageNet protocol).
TFDS_TEST_SPLITS: dict[str, str] = {"imagenet2012": "validation"}

#: Default side of the square crop for datasets whose images vary in size.
DEFAULT_IMAGE_SIZE = 224

#: Default fraction of the resized shorter side kept by the center crop (224 / 256).
DEFAULT_CROP_FRACTION = 0.875


def _tfds():
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ImportError(
            "load_tfds needs tensorflow_datasets: `pip install unprune_jax[tfds]`"
        ) from e
    return tfds


def _resize_center_crop(image: np.ndarray, size: int, crop_fraction: float) -> np.ndarray:
    """Resizes the shorter side to ``round(size / crop_fraction)``, then center-crops ``size``².

    This is the standard ImageNet evaluation transform (shorter side 256, center crop 224 at the
    default ``crop_fraction`` 0.875). Bilinear with antialiasing (Pillow), uint8 in and out.

    Args:
        image: uint8 ``(H, W, C)``.
        size: Side of the square output in pixels.
        crop_fraction: Fraction of the resized shorter side kept, in (0, 1].

    Returns:
        uint8 ``(size, size, C)``.
    """
    from PIL import Image  # pylint: disable=import-outside-toplevel

    h, w, c = image.shape
    short = max(size, int(round(size / crop_fraction)))
    if min(h, w) != short:
        scale = short / min(h, w)
        new_h, new_w = max(short, int(round(h * scale))), max(short, int(round(w * scale)))
        pil = Image.fromarray(image[..., 0] if c == 1 else image)
        image = np.asarray(pil.resize((new_w, new_h), Image.BILINEAR)).reshape(new_h, new_w, c)
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top:top + size, left:left + size]


class LazyImages:
    """Images of TFDS data sources, decoded (and resized) only when indexed.

    Stands in for :attr:`Dataset.x` where the whole pool does not fit in memory as float32
    (ImageNet: 1.33M images × 224·224·3 × 4 bytes = 800 GB). The library only ever indexes
    ``dataset.x`` with index arrays or slices and reads ``shape``/``len``, which this supports.

    Indexing with an int returns one ``(H, W, C)`` image; with a 1-D integer array, list or slice
    a float32 ``(B, H, W, C)`` batch in ``[0, 1]``. The pool is the concatenation of the sources
    (train, then test). Records are read and processed on ``num_workers`` threads (Pillow
    decoding and resizing release the GIL).

    Attributes:
        shape: ``(N, H, W, C)``.
        dtype: float32.
        ndim: 4.
    """

    def __init__(
        self,
        sources: Sequence[Any],
        image_key: str,
        image_shape: Sequence[int],
        *,
        resize: tuple[int, float] | None = None,
        num_workers: int | None = None,
    ) -> None:
        """
        Args:
            sources: TFDS random-access data sources (``len`` and ``[int] -> record``).
            image_key: The record key of the image.
            image_shape: ``(H, W, C)`` of every returned image.
            resize: ``(size, crop_fraction)``: resize the shorter side to
                ``size / crop_fraction`` and center-crop ``size × size``; None takes the decoded
                images as they are (they must then all have ``image_shape``).
            num_workers: Threads per batch; default ``min(32, os.cpu_count())``.
        """
        self._sources = list(sources)
        self._ends = np.cumsum([len(s) for s in self._sources]).astype(np.int64)
        self._image_key = image_key
        self._resize = resize
        self._workers = num_workers or min(32, os.cpu_count() or 1)
        self.shape = (int(self._ends[-1]) if len(self._ends) else 0, *map(int, image_shape))
        self.dtype = np.dtype(np.float32)
        self.ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyImages(shape={self.shape}, resize={self._resize})"

    def __array__(self, *args, **kwargs):
        raise TypeError(
            f"LazyImages of shape {self.shape} is decoded on access: index it "
            "(dataset.x[indices]) instead of converting the whole pool to an array"
        )

    def _image(self, i: int) -> np.ndarray:
        s = int(np.searchsorted(self._ends, i, side="right"))
        start = 0 if s == 0 else int(self._ends[s - 1])
        image = np.asarray(self._sources[s][i - start][self._image_key])
        if image.ndim == 2:
            image = image[..., None]
        if self._resize is not None:
            image = _resize_center_crop(image, *self._resize)
        if image.shape != self.shape[1:]:
            raise ValueError(
                f"image {i} has shape {image.shape}, expected {self.shape[1:]}; pass "
                "image_size to load_tfds to resize images of varying size"
            )
        return _images_to_float(image[None])[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, numbers.Integral) and not isinstance(index, bool):
            i = int(index) + (len(self) if index < 0 else 0)
            _check_range(np.array([i]), len(self), "LazyImages index")
            return self._image(i)
        if isinstance(index, slice):
            idx = np.arange(len(self), dtype=np.int64)[index]
        else:
            idx = _as_index_array(index, "LazyImages index")
            idx = np.where(idx < 0, idx + len(self), idx)
        _check_range(idx, len(self), "LazyImages index")
        out = np.empty((len(idx), *self.shape[1:]), np.float32)
        if len(idx) <= 1 or self._workers == 1:
            for j, i in enumerate(idx):
                out[j] = self._image(int(i))
            return out
        import concurrent.futures  # pylint: disable=import-outside-toplevel

        with concurrent.futures.ThreadPoolExecutor(self._workers) as pool:
            for j, image in enumerate(pool.map(self._image, idx.tolist())):
                out[j] = image
        return out


def _read_data_source(source: Any, image_key: str | None, label_key: str):
    """Reads every record of a TFDS random-access data source.

    Returns ``(images, labels)``; ``images`` is None when ``image_key`` is None (labels only).
    """
    n = len(source)
    images, labels = [], []
    chunk = 4096
    getitems = getattr(source, "__getitems__", None)
    for start in range(0, n, chunk):
        keys = list(range(start, min(start + chunk, n)))
        records = None
        if getitems is not None:
            try:
                records = getitems(keys)
            except TypeError:  # some backends (e.g. tfds mocks) lack it
                getitems = None
        if records is None:
            records = [source[k] for k in keys]
        for r in records:
            if image_key is not None:
                images.append(np.asarray(r[image_key]))
            labels.append(np.asarray(r[label_key]))
    if not labels:
        return None, None
    return (np.stack(images) if image_key is not None else None), np.asarray(labels).reshape(-1)


def _read_labels(tfds: Any, name: str, split: str, data_dir: str | None, image_key: str,
                 label_key: str, source: Any) -> np.ndarray:
    """All labels of a split, without decoding images where TFDS can skip it.

    Skipping needs TFDS's ``SkipDecoding``, which needs TensorFlow (mocked data cannot serve it
    without); otherwise every record is decoded once, as ``source`` gives it.
    """
    import importlib.util  # pylint: disable=import-outside-toplevel

    if importlib.util.find_spec("tensorflow") is None:
        return _read_data_source(source, None, label_key)[1]
    try:
        light = tfds.data_source(name, split=split, data_dir=data_dir,
                                 decoders={image_key: tfds.decode.SkipDecoding()})
        return _read_data_source(light, None, label_key)[1]
    except ImportError:
        return _read_data_source(source, None, label_key)[1]


def load_tfds(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    lazy: bool | None = None,
    image_size: int | None = None,
    crop_fraction: float = DEFAULT_CROP_FRACTION,
    test_split: str | None = None,
    num_workers: int | None = None,
) -> Dataset:
    """Loads a TFDS image classification dataset as one pool.

    Uses ``tensorflow_datasets.data_source`` (random access, no TensorFlow needed). The pool is
    the ``'train'`` split followed by the test split: ``'test'``, or the dataset's entry in
    :data:`TFDS_TEST_SPLITS` (``'validation'`` for ``imagenet2012``), when the dataset has it.
    Images are float32 NHWC in ``[0, 1]``, labels int32.

    In lazy mode ``Dataset.x`` is a :class:`LazyImages` that decodes on indexing; only the labels
    are read up front. Datasets whose images vary in size (ImageNet) are lazy by default and are
    resized and center-cropped to ``image_size`` (default 224) on access.

    Args:
        name: TFDS dataset name, e.g. ``"cifar10"`` or ``"imagenet2012"``.
        data_dir: TFDS data directory (TFDS's default when None).
        lazy: Decode on access instead of loading every image now; None = lazy exactly when the
            dataset's images vary in size.
        image_size: Side of the square images returned, after resizing the shorter side to
            ``image_size / crop_fraction`` and center-cropping; None keeps the native size
            (required to be fixed) or, for images of varying size, uses 224.
        crop_fraction: Fraction of the resized shorter side the center crop keeps, in (0, 1].
        test_split: Overrides the split used as the test pool.
        num_workers: Decoding threads of a lazy dataset (default: CPUs, at most 32).

    Returns:
        The dataset, named ``name``.

    Raises:
        ImportError: If ``tensorflow_datasets`` is not installed.
        ValueError: On an empty train split, a bad ``image_size``/``crop_fraction``, or a test
            split whose labels are missing (negative).
    """
    tfds = _tfds()
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral)
        or image_size < 1
    ):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    if not 0.0 < float(crop_fraction) <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}")
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    train = tfds.data_source(name, split="train", data_dir=data_dir)
    info = train.dataset_info
    image_key, label_key = "image", "label"
    if info.supervised_keys and len(info.supervised_keys) == 2:
        image_key, label_key = info.supervised_keys
    num_classes = None
    try:
        num_classes = int(info.features[label_key].num_classes)
    except (AttributeError, KeyError, TypeError):
        pass
    native = None
    try:
        native = tuple(info.features[image_key].shape)
    except (AttributeError, KeyError, TypeError):
        pass
    varying = native is None or len(native) != 3 or any(d is None for d in native)
    if lazy is None:
        lazy = varying
    if varying and image_size is None:
        image_size = DEFAULT_IMAGE_SIZE
    splits = list(getattr(info, "splits", {}).keys())
    test_name = test_split or TFDS_TEST_SPLITS.get(name, "test")
    test = None
    if test_split is not None or not splits or test_name in splits:  # mocks list no splits
        test = tfds.data_source(name, split=test_name, data_dir=data_dir)
    sources = [train] + ([test] if test is not None else [])

    if not lazy:
        parts = [_read_data_source(s, image_key, label_key) for s in sources]
        if parts[0][0] is None:
            raise ValueError(f"tfds dataset {name!r} has an empty 'train' split")
        xs = []
        for images, _ in parts:
            if images is not None and image_size is not None:
                images = np.stack([_resize_center_crop(im if im.ndim == 3 else im[..., None],
                                                       image_size, crop_fraction)
                                   for im in images])
            xs.append(None if images is None else _images_to_float(images))
        (x_tr, y_tr), (x_te, y_te) = (xs[0], parts[0][1]), (
            (xs[1], parts[1][1]) if len(parts) > 1 else (None, None))
        _check_labelled(y_te, name, test_name)
        return _one_pool(x_tr, y_tr, x_te, y_te, name=name, num_classes=num_classes)

    labels = [_read_labels(tfds, name, split, data_dir, image_key, label_key, s)
              for split, s in zip(["train", test_name], sources)]
    if labels[0] is None:
        raise ValueError(f"tfds dataset {name!r} has an empty 'train' split")
    if len(labels) > 1:
        _check_labelled(labels[1], name, test_name)
    channels = native[-1] if native and native[-1] is not None else 3
    if image_size is not None:
        shape, resize = (image_size, image_size, channels), (image_size, float(crop_fraction))
    else:
        shape, resize = native, None
    x = LazyImages(sources, image_key, shape, resize=resize, num_workers=num_workers)
    y = np.concatenate([lab for lab in labels if lab is not None]).astype(np.int32)
    n_train = len(labels[0])
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 1
    return Dataset(x=x, y=y, num_classes=num_classes, name=name,
                   test_pool=np.arange(n_train, len(y), dtype=np.int64))


def _check_labelled(labels: np.ndarray | None, name: str, split: str) -> None:
    if labels is not None and labels.size and labels.min() < 0:
        raise ValueError(
            f"tfds dataset {name!r}: split {split!r} has no labels (label "
            f"{int(labels.min())}); choose a labelled test_split such as 'validation'"
        )


# --------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------


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
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 0 <= n_test < n:
        raise ValueError(f"n_test must be in [0, n={n}), got {n_test}")
    rng = np.random.default_rng(seed)
    means = rng.uniform(0.1, 0.9, size=(num_classes, *image_shape)).astype(np.float32)
    n_train = n - n_test
    y = np.concatenate(
        [
            rng.permutation(np.arange(n_train) % num_classes),
            rng.permutation(np.arange(n_test) % num_classes),
        ]
    ).astype(np.int32)
    noise = rng.normal(0.0, 0.15, size=(n, *image_shape)).astype(np.float32)
    x = np.clip(means[y] + noise, 0.0, 1.0)
    return Dataset(
        x=x,
        y=y,
        num_classes=num_classes,
        name="synthetic",
        test_pool=np.arange(n_train, n, dtype=np.int64),
    )


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------

#: Names accepted by :func:`load_dataset` (plus any ``"tfds:<name>"``).
DATASET_NAMES = ("fashion_mnist", "synthetic", "tfds:<name>")


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, **kw: Any
) -> Dataset:
    """Loads a dataset by name.

    Args:
        name: ``"fashion_mnist"`` (IDX files, see :func:`load_idx_dir`),
            ``"synthetic"`` (:func:`synthetic_dataset`) or
            ``"tfds:<name>"`` (:func:`load_tfds`).
        data_dir: Data directory for ``fashion_mnist`` and ``tfds:``
            datasets; must be None for ``synthetic``.
        **kw: Extra keyword arguments for the loader.

    Returns:
        The dataset.

    Raises:
        ValueError: For an unknown name; the message lists the valid names
            and the closest match.
    """
    if name == "fashion_mnist":
        return load_idx_dir(data_dir, name="fashion_mnist", **kw)
    if name == "synthetic":
        if data_dir is not None:
            raise ValueError(f"the synthetic dataset takes no data_dir, got {data_dir!r}")
        return synthetic_dataset(**kw)
    if isinstance(name, str) and name.startswith("tfds:"):
        tfds_name = name[len("tfds:"):]
        if not tfds_name:
            raise ValueError("'tfds:' needs a TFDS dataset name, e.g. 'tfds:cifar10'")
        return load_tfds(tfds_name, data_dir=data_dir, **kw)
    raise unknown_name_error("dataset", name, DATASET_NAMES, cutoff=0.5)


# --------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------


def _as_index_array(values: Any, what: str) -> np.ndarray:
    """Converts to a 1-D int64 array, rejecting non-integer values."""
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{what} must hold integer indices, got dtype {arr.dtype} "
            f"(first values {_fmt(arr[:3])})"
        )
    return arr.astype(np.int64)


def _check_range(arr: np.ndarray, n_pool: int, what: str) -> None:
    bad = arr[(arr < 0) | (arr >= n_pool)]
    if bad.size:
        raise ValueError(
            f"{what} has {bad.size} indices outside [0, {n_pool}): {_fmt(bad)}"
        )


def _check_unique(arr: np.ndarray, what: str) -> None:
    s = np.sort(arr)
    dup = np.unique(s[1:][s[1:] == s[:-1]])
    if dup.size:
        raise ValueError(f"{what} has duplicate indices: {_fmt(dup)}")


_SPLIT_FIELDS = ("train", "val", "test", "forget")


@dataclasses.dataclass(frozen=True)
class Split:
    """Disjoint index sets into a :class:`Dataset` pool.

    Attributes:
        train: Sorted int64 pool indices of the training set (retain + forget).
        val: Sorted int64 pool indices of the validation set.
        test: Sorted int64 pool indices of the test set.
        forget: Sorted int64 pool indices of the forget set (subset of train).

    Inputs are converted to sorted, read-only int64 arrays. Construction does
    not validate; use :func:`validate_split` (as :func:`make_split` does).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    forget: np.ndarray

    def __post_init__(self) -> None:
        for f in _SPLIT_FIELDS:
            arr = np.sort(_as_index_array(getattr(self, f), f"split.{f}"))
            arr.setflags(write=False)
            object.__setattr__(self, f, arr)

    @functools.cached_property
    def retain(self) -> np.ndarray:
        """Sorted int64 ``train`` indices that are not in ``forget``."""
        arr = np.setdiff1d(self.train, self.forget).astype(np.int64)
        arr.setflags(write=False)
        return arr

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Split):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f), getattr(other, f)) for f in _SPLIT_FIELDS
        )

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, f).tobytes() for f in _SPLIT_FIELDS))

    def to_dict(self) -> dict[str, list[int]]:
        """Returns a JSON-serialisable dict of index lists."""
        return {f: getattr(self, f).tolist() for f in _SPLIT_FIELDS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[int]]) -> Split:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: If a key is missing or unknown.
        """
        missing = [f for f in _SPLIT_FIELDS if f not in d]
        unknown = [k for k in d if k not in _SPLIT_FIELDS]
        if missing or unknown:
            raise ValueError(
                f"Split.from_dict: missing keys {missing}, unknown keys {unknown}; "
                f"expected exactly {list(_SPLIT_FIELDS)}"
            )
        return cls(**{f: d[f] for f in _SPLIT_FIELDS})

    def summary(self) -> dict[str, int]:
        """Returns the size of each set, including ``retain``."""
        out = {f: int(getattr(self, f).size) for f in _SPLIT_FIELDS}
        out["retain"] = int(self.retain.size)
        return out

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.summary().items())
        return f"Split({sizes})"


def validate_split(split: Split, n_pool: int) -> None:
    """Checks that a split is consistent with a pool of ``n_pool`` examples.

    Args:
        split: The split.
        n_pool: Number of examples in the dataset pool.

    Raises:
        ValueError: If an index is outside ``[0, n_pool)``; a set holds
            duplicates; train, val and test overlap; forget is not a subset
            of train (the message says which offending indices are in the
            test or val set); forget or train is empty; or forget is all of
            train (empty retain set). Messages name the offending values.
    """
    for f in _SPLIT_FIELDS:
        _check_range(getattr(split, f), n_pool, f"split.{f}")
    for f in _SPLIT_FIELDS:
        _check_unique(getattr(split, f), f"split.{f}")
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = np.intersect1d(getattr(split, a), getattr(split, b))
        if both.size:
            raise ValueError(
                f"split.{a} and split.{b} overlap in {both.size} indices: {_fmt(both)}"
            )
    if split.train.size == 0:
        raise ValueError("split.train is empty")
    if split.forget.size == 0:
        raise ValueError("split.forget is empty: there is nothing to unlearn")
    outside = np.setdiff1d(split.forget, split.train)
    if outside.size:
        where = []
        for other in ("test", "val"):
            hit = np.intersect1d(outside, getattr(split, other))
            if hit.size:
                where.append(f"{hit.size} of them are in the {other} set ({_fmt(hit)})")
        detail = ("; " + "; ".join(where)) if where else ""
        raise ValueError(
            f"split.forget is not a subset of split.train: {outside.size} forget "
            f"indices are not in train: {_fmt(outside)}{detail}"
        )
    retain = split.retain
    if retain.size == 0:
        raise ValueError(
            f"the retain set is empty: split.forget covers all {split.train.size} "
            "training examples"
        )
    # Invariants implied by the checks above; kept as explicit guards.
    if not np.array_equal(np.union1d(retain, split.forget), split.train):
        raise AssertionError("retain ∪ forget != train")
    if np.intersect1d(retain, split.forget).size:
        raise AssertionError("retain ∩ forget is not empty")


class _DefaultFraction(float):
    """Marks the default ``forget_fraction`` so an explicit value is detectable."""

    def __repr__(self) -> str:
        return float.__repr__(self)


_DEFAULT_FORGET_FRACTION = _DefaultFraction(0.1)


def _check_count(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be an int, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{what}={value} must be in [{lo}, {hi}]")
    return int(value)


def make_split(
    dataset: Dataset,
    *,
    seed: int,
    train_size: int | None = None,
    val_size: int = 0,
    test_size: int | None = None,
    forget_fraction: float | None = _DEFAULT_FORGET_FRACTION,
    forget_classes: Iterable[int] | int | None = None,
    forget_indices: Iterable[int] | None = None,
) -> Split:
    """Draws a train/val/test/forget split of a dataset pool.

    The split is a deterministic function of the arguments. ``val`` and then
    ``train`` are drawn without replacement from ``dataset.train_pool``;
    ``test`` from ``dataset.test_pool``. The forget set is chosen by exactly
    one of ``forget_fraction``, ``forget_classes`` and ``forget_indices``
    (``forget_fraction`` is ignored when left at its default and one of the
    other two is given).

    Args:
        dataset: The dataset.
        seed: Non-negative int seed for ``np.random.default_rng``.
        train_size: Number of training examples; None = all of
            ``train_pool`` not drawn for val.
        val_size: Number of validation examples.
        test_size: Number of test examples; None = all of ``test_pool``.
        forget_fraction: Forget ``round(forget_fraction * len(train))``
            random training examples; must be in ``(0, 1)``.
        forget_classes: Forget every training example with one of these
            labels.
        forget_indices: Forget exactly these pool indices; they must be in
            the drawn train set (always true for ``train_pool`` indices when
            ``train_size`` is None and ``val_size`` is 0).

    Returns:
        The validated split.

    Raises:
        ValueError: On a bad size, seed, fraction or class label, on more than
            one forget criterion, or if :func:`validate_split` rejects the
            result. Messages name the offending values.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    train_pool, test_pool = dataset.train_pool, dataset.test_pool
    val_size = _check_count(val_size, "val_size", 0, len(train_pool))
    rest = len(train_pool) - val_size
    train_size = rest if train_size is None else _check_count(train_size, "train_size", 1, rest)
    test_size = (
        len(test_pool) if test_size is None
        else _check_count(test_size, "test_size", 0, len(test_pool))
    )

    chosen = [
        label for label, given in (
            ("forget_fraction", forget_fraction is not None
             and not isinstance(forget_fraction, _DefaultFraction)),
            ("forget_classes", forget_classes is not None),
            ("forget_indices", forget_indices is not None),
        ) if given
    ]
    if len(chosen) > 1:
        raise ValueError(f"give only one of {', '.join(chosen)}")
    if not chosen:
        if forget_fraction is None:
            raise ValueError(
                "give one of forget_fraction, forget_classes, forget_indices"
            )
        chosen = ["forget_fraction"]

    # Independent streams, so e.g. the forget draw does not depend on test_size.
    rng_pool, rng_test, rng_forget = np.random.default_rng(int(seed)).spawn(3)
    perm = rng_pool.permutation(train_pool)
    val = perm[:val_size]
    train = perm[val_size:val_size + train_size]
    if test_size == len(test_pool):
        test = test_pool
    else:
        test = rng_test.choice(test_pool, size=test_size, replace=False)
    train = np.sort(train)

    if chosen == ["forget_fraction"]:
        frac = forget_fraction
        if isinstance(frac, bool) or not isinstance(frac, numbers.Real) or not 0 < frac < 1:
            raise ValueError(f"forget_fraction must be in (0, 1), got {frac!r}")
        k = round(float(frac) * len(train))
        if k == 0 or k == len(train):
            raise ValueError(
                f"forget_fraction={float(frac)!r} of {len(train)} training examples "
                f"gives {k} forget examples; the forget and retain sets must both "
                "be non-empty"
            )
        forget = rng_forget.choice(train, size=k, replace=False)
    elif chosen == ["forget_classes"]:
        classes = np.atleast_1d(np.asarray(forget_classes))
        if classes.size == 0:
            raise ValueError("forget_classes is empty")
        if not np.issubdtype(classes.dtype, np.integer):
            raise ValueError(f"forget_classes must be int labels, got {_fmt(classes)}")
        bad = np.unique(classes[(classes < 0) | (classes >= dataset.num_classes)])
        if bad.size:
            raise ValueError(
                f"unknown class labels {_fmt(bad)} in forget_classes: dataset "
                f"{dataset.name!r} has classes 0..{dataset.num_classes - 1}"
            )
        forget = train[np.isin(dataset.y[train], classes)]
        if forget.size == 0:
            raise ValueError(
                f"forget_classes {_fmt(np.unique(classes))} match no example of "
                f"the {len(train)}-example training set"
            )
    else:
        forget = _as_index_array(forget_indices, "forget_indices")

    split = Split(train=train, val=val, test=test, forget=forget)
    validate_split(split, len(dataset))
    return split


# --------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------


def _as_generator(rng_key_or_seed: Any) -> np.random.Generator:
    """Makes a numpy Generator from an int seed, a Generator or a JAX key."""
    r = rng_key_or_seed
    if isinstance(r, np.random.Generator):
        return r
    if isinstance(r, bool):
        raise ValueError(f"rng_key_or_seed must be a seed, Generator or PRNG key, got {r!r}")
    if isinstance(r, numbers.Integral):
        if r < 0:
            raise ValueError(f"seed must be non-negative, got {r}")
        return np.random.default_rng(int(r))
    dtype = getattr(r, "dtype", None)
    if dtype is not None and "key<" in str(dtype):  # typed JAX key
        import jax  # pylint: disable=import-outside-toplevel

        r = jax.random.key_data(r)
    arr = np.asarray(r)
    if arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
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
        ``(idx, weight)``: int64 ``(num_batches, batch_size)`` indices and
        float32 ``(num_batches, batch_size)`` weights, 1 for real examples
        and 0 for padding. Empty ``indices`` give ``num_batches == 0``.

    Raises:
        ValueError: If ``batch_size`` is not a positive int, ``indices`` is
            not 1-D integer, or ``shuffle`` is True without a seed.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    batch_size = int(batch_size)
    idx = _as_index_array(indices, "indices")
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
    return (
        idx.reshape(num_batches, batch_size).astype(np.int64),
        weight.reshape(num_batches, batch_size),
    )
