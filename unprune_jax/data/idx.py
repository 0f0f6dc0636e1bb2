"""MNIST-format IDX files (FashionMNIST): the reader and the directory loader."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from ._checks import check_labels
from .dataset import DATASETS, images_to_float, one_pool

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


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (gzip-compressed when it starts with gzip's magic bytes) into a numpy
    array of the header's shape, in native byte order.

    The header is parsed rather than skipped: two zero bytes, a one-byte type code (0x08 =
    unsigned byte, also 0x09/0x0B/0x0C/0x0D/0x0E), a one-byte number of dimensions, then one
    big-endian uint32 per dimension.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the header is malformed or the payload size does not match it.
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
            f"{path}: bad IDX magic number 0x{raw[:4].hex()} (the first two bytes must be zero)"
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
        f"{', '.join(os.path.basename(c) for c in candidates[1:])}). " + _INSTALL_HINT
    )


def load_idx_dir(
    data_dir: str | os.PathLike | None = None,
    *,
    name: str = "fashion_mnist",
    num_classes: int | None = None,
):
    """Loads an MNIST-format directory of four IDX files as one pool.

    Reads ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (each ``.gz`` or not). The pool is the
    train examples, then the t10k ones: for FashionMNIST ``len(ds) == 70000`` and
    ``ds.test_pool == arange(60000, 70000)``.

    Args:
        data_dir: Directory holding the files. Defaults to
            ``$UNPRUNE_JAX_DATA_DIR`` if set, else
            ``/usr/share/datasets/fashion-mnist``.
        name: Name given to the dataset.
        num_classes: Number of classes the labels must lie below; None = ``max(label) + 1``
            (the ``fashion_mnist`` entry of :func:`~unprune_jax.data.load_dataset` declares 10).

    Returns:
        The :class:`~unprune_jax.data.Dataset`, images float32 ``(N, 28, 28, 1)`` in ``[0, 1]``.

    Raises:
        FileNotFoundError: If the directory or one of the files is missing;
            the message names the path and how to install the files.
        ValueError: If a file is malformed, images and labels disagree, or a label is negative
            or not below ``num_classes`` (the message names the file, the label and its index).
    """
    data_dir = os.fspath(data_dir) if data_dir is not None else default_data_dir()
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"IDX data directory {data_dir} does not exist. " + _INSTALL_HINT)
    arrays = {}
    for split in ("train", "t10k"):
        img_path = _find_idx_file(data_dir, split, "images", 3)
        lbl_path = _find_idx_file(data_dir, split, "labels", 1)
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim != 3:
            raise ValueError(f"{img_path}: expected 3-D images (N, H, W), got shape {images.shape}")
        if labels.ndim != 1:
            raise ValueError(f"{lbl_path}: expected 1-D labels, got shape {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(
                f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels"
            )
        check_labels(labels, num_classes, lbl_path)
        arrays[split] = (images_to_float(images), labels)
    (x_tr, y_tr), (x_te, y_te) = arrays["train"], arrays["t10k"]
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise ValueError(
            f"train images have shape {x_tr.shape[1:]} but t10k images have "
            f"shape {x_te.shape[1:]}"
        )
    if num_classes is None:
        num_classes = int(max(y_tr.max(initial=0), y_te.max(initial=0))) + 1
    return one_pool(x_tr, y_tr, x_te, y_te, name=name, num_classes=num_classes)


@DATASETS.register(
    "fashion_mnist",
    "FashionMNIST from its four IDX files (default directory: the Debian package "
    "dataset-fashion-mnist); 28×28×1 images, 10 classes, official test split",
)
def _load_fashion_mnist(data_dir=None, **kw):
    return load_idx_dir(data_dir, **{"name": "fashion_mnist", "num_classes": 10, **kw})
