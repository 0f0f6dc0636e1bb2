"""TensorFlow Datasets image classification datasets, read with ``tfds.data_source`` (random
access to array_record files; a dataset is prepared once, by ``unprune-jax prepare``).

Large pools (ImageNet) stay on disk: :class:`LazyImages` decodes, resizes and crops the images a
batch indexes, on host threads.
"""

from __future__ import annotations

import concurrent.futures
import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..registry import closest_name
from ._checks import as_index_array, check_int, check_labels, check_range
from .dataset import DATASETS, Dataset, images_to_float, one_pool

#: The official split used as the test pool where it is not ``'test'``: ImageNet's ``'test'``
#: split has no labels (all −1), so its 50,000 labelled validation images are the test set,
#: as in every ImageNet paper (and the peers' ImageNet protocol).
TFDS_TEST_SPLITS: dict[str, str] = {"imagenet2012": "validation"}

#: Default side of the square crop for datasets whose images vary in size.
DEFAULT_IMAGE_SIZE = 224

#: Default fraction of the resized shorter side kept by the center crop (224 / 256).
DEFAULT_CROP_FRACTION = 0.875

#: How to install what TFDS needs, for error messages.
TFDS_EXTRA_HINT = ("install the tfds extra: `pip install -e '.[tfds]'` in the unprune_jax "
                   "checkout (scripts/setup.sh does)")


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is missing; the message names the extra that installs it.

    A ``ValueError`` too, so the command line reports it in one line.
    """


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS dataset is not prepared (in a format with random access) in the data dir searched;
    the message names the dataset, the directory and the ``unprune-jax prepare`` command."""


def import_tfds():
    """``tensorflow_datasets``, or a :class:`MissingExtraError` naming the ``tfds`` extra."""
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise MissingExtraError(f"TFDS datasets need tensorflow_datasets: {TFDS_EXTRA_HINT}",
                                name="tensorflow_datasets") from e
    return tfds


def tfds_builder(tfds: Any, name: str, data_dir: str | None):
    """TFDS's builder for ``name``; an unknown name gets the closest TFDS name in the error."""
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        close = closest_name(name, tfds.list_builders())
        hint = f" Did you mean {close!r}?" if close else ""
        raise ValueError(f"unknown TFDS dataset {name!r}.{hint} "
                         "(`tfds.list_builders()` lists them all)") from None


def prepare_command(name: str, data_root: str) -> str:
    """The ``unprune-jax prepare`` command that prepares ``name`` into ``data_root``."""
    return f"unprune-jax prepare {name} --data-dir {data_root}"


def _not_prepared(builder: Any, name: str) -> DatasetNotPreparedError:
    root = os.fspath(builder.data_dir_root)
    command = prepare_command(name, root)
    if not builder.is_prepared():
        return DatasetNotPreparedError(
            f"TFDS dataset {name!r} is not prepared in the data dir {root} (looked for "
            f"{builder.data_dir}). Prepare it once with `{command}`: it downloads the data "
            "where the internet is reachable, or add `--from ARCHIVE` for a local copy of the "
            "official archive. Or set data.data_dir (or $TFDS_DATA_DIR) to the data dir "
            "where it is prepared."
        )
    return DatasetNotPreparedError(
        f"TFDS dataset {name!r} in {builder.data_dir} is prepared as "
        f"{builder.info.file_format.value}, which has no random access; the library reads "
        f"array_record. Prepare it again with `{command}` after deleting {builder.data_dir}, "
        "or into another --data-dir."
    )


def _data_source(tfds: Any, builder: Any, name: str, split: str, **kw: Any):
    """``builder``'s random-access source for ``split``, never downloading; a dataset that is
    not prepared gets :class:`DatasetNotPreparedError`."""
    try:
        return builder.as_data_source(split=split, **kw)
    except (AssertionError, NotImplementedError, FileNotFoundError, ValueError) as e:
        if builder.is_prepared() and builder.info.file_format in (
                tfds.core.FileFormat.ARRAY_RECORD, tfds.core.FileFormat.PARQUET):
            raise
        raise _not_prepared(builder, name) from e


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
    try:
        from PIL import Image  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise MissingExtraError(f"resizing images needs Pillow: {TFDS_EXTRA_HINT}") from e
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

    Args:
        sources: TFDS random-access data sources (``len`` and ``[int] -> record``).
        image_key: The record key of the image.
        image_shape: ``(H, W, C)`` of every returned image.
        resize: ``(size, crop_fraction)``: resize the shorter side to ``size / crop_fraction`` and
            center-crop ``size × size``; None takes the decoded images as they are (they must
            then all have ``image_shape``).
        num_workers: Threads per batch; default ``min(32, os.cpu_count())``.

    Attributes:
        shape: ``(N, H, W, C)``; ``dtype``: float32; ``ndim``: 4.
    """

    decoded_on_access = True  # tells Dataset to keep it as it is

    def __init__(self, sources: Sequence[Any], image_key: str, image_shape: Sequence[int], *,
                 resize: tuple[int, float] | None = None, num_workers: int | None = None):
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
        return images_to_float(image[None])[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, numbers.Integral) and not isinstance(index, bool):
            i = int(index) + (len(self) if index < 0 else 0)
            check_range(np.array([i]), len(self), "LazyImages index")
            return self._image(i)
        if isinstance(index, slice):
            idx = np.arange(len(self), dtype=np.int64)[index]
        else:
            idx = as_index_array(index, "LazyImages index")
            idx = np.where(idx < 0, idx + len(self), idx)
        check_range(idx, len(self), "LazyImages index")
        out = np.empty((len(idx), *self.shape[1:]), np.float32)
        if len(idx) <= 1 or self._workers == 1:
            for j, i in enumerate(idx):
                out[j] = self._image(int(i))
            return out
        with concurrent.futures.ThreadPoolExecutor(self._workers) as pool:
            for j, image in enumerate(pool.map(self._image, idx.tolist())):
                out[j] = image
        return out


def _read_data_source(source: Any, image_key: str | None, label_key: str):
    """Every record of a TFDS random-access data source, read in chunks of 4096.

    Returns ``(images, labels)``; ``images`` is None when ``image_key`` is None (labels only),
    both None for an empty source.
    """
    images, labels = [], []
    for start in range(0, len(source), 4096):
        keys = range(start, min(start + 4096, len(source)))
        try:
            records = source.__getitems__(list(keys))
        except (AttributeError, TypeError):  # some backends (e.g. tfds mocks) lack it
            records = [source[k] for k in keys]
        for r in records:
            if image_key is not None:
                images.append(np.asarray(r[image_key]))
            labels.append(np.asarray(r[label_key]))
    if not labels:
        return None, None
    return (np.stack(images) if image_key is not None else None), np.asarray(labels).reshape(-1)


def _read_labels(tfds: Any, builder: Any, name: str, split: str, image_key: str,
                 label_key: str, source: Any) -> np.ndarray:
    """All labels of a split, without decoding images where TFDS can skip it (its
    ``SkipDecoding`` needs TensorFlow, which mocked data cannot serve); otherwise every record is
    decoded once, as ``source`` gives it."""
    try:
        source = _data_source(tfds, builder, name, split,
                              decoders={image_key: tfds.decode.SkipDecoding()})
    except (ImportError, TypeError):
        pass
    return _read_data_source(source, None, label_key)[1]


def _feature(info: Any, key: str, attr: str):
    """``info.features[key].<attr>`` (``num_classes``, ``shape``), None where it has none."""
    try:
        value = getattr(info.features[key], attr)
    except (AttributeError, KeyError, TypeError):
        return None
    return None if value is None else (int(value) if attr == "num_classes" else tuple(value))


def _check_labelled(labels: np.ndarray | None, name: str, split: str) -> None:
    if labels is not None and labels.size and labels.min() < 0:
        raise ValueError(
            f"tfds dataset {name!r}: split {split!r} has no labels (label "
            f"{int(labels.min())}); choose a labelled test_split such as 'validation'"
        )


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
    """Loads a prepared TFDS image classification dataset as one pool.

    Uses ``tfds.data_source`` (random access to array_record files). It never downloads: a
    dataset not yet prepared gets :class:`DatasetNotPreparedError` with the
    ``unprune-jax prepare`` command (:func:`unprune_jax.data.prepare.prepare_tfds`). The pool is
    the ``'train'`` split followed by the test split: ``'test'``, or the dataset's entry in
    :data:`TFDS_TEST_SPLITS` (``'validation'`` for ``imagenet2012``), when the dataset has it.
    Images are float32 NHWC in ``[0, 1]``, labels int32.

    In lazy mode ``Dataset.x`` is a :class:`LazyImages` that decodes on indexing; only the labels
    are read up front. Datasets whose images vary in size (ImageNet) are lazy by default and are
    resized and center-cropped to ``image_size`` (default 224) on access.

    Args:
        name: TFDS dataset name, e.g. ``"cifar10"`` or ``"imagenet2012"``.
        data_dir: TFDS data directory (TFDS's default when None: ``$TFDS_DATA_DIR`` or
            ``~/tensorflow_datasets``).
        lazy: Decode on access instead of loading every image now; None = lazy exactly when the
            dataset's images vary in size.
        image_size: Side of the square images returned, after resizing the shorter side to
            ``image_size / crop_fraction`` and center-cropping; None keeps the native size
            (required to be fixed) or, for images of varying size, uses 224.
        crop_fraction: Fraction of the resized shorter side the center crop keeps, in (0, 1].
        test_split: Overrides the split used as the test pool.
        num_workers: Decoding threads of a lazy dataset (default: CPUs, at most 32).

    Raises:
        MissingExtraError: If ``tensorflow_datasets`` is not installed (names the extra).
        DatasetNotPreparedError: If the dataset is not prepared in ``data_dir`` as array_record.
        ValueError: On an unknown name, an empty train split, a bad ``image_size`` or
            ``crop_fraction``, a label outside the dataset's classes (naming the split, label and
            index), or a test split whose labels are missing (negative).
    """
    tfds = import_tfds()
    if image_size is not None:
        image_size = check_int(image_size, "image_size", 1)
    if not 0.0 < float(crop_fraction) <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}")
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    builder = tfds_builder(tfds, name, data_dir)
    train = _data_source(tfds, builder, name, "train")
    info = train.dataset_info
    image_key, label_key = "image", "label"
    if info.supervised_keys and len(info.supervised_keys) == 2:
        image_key, label_key = info.supervised_keys
    num_classes = _feature(info, label_key, "num_classes")
    native = _feature(info, image_key, "shape")
    varying = native is None or len(native) != 3 or None in native
    lazy = varying if lazy is None else lazy
    image_size = DEFAULT_IMAGE_SIZE if varying and image_size is None else image_size
    splits = list(getattr(info, "splits", {}).keys())
    test_name = test_split or TFDS_TEST_SPLITS.get(name, "test")
    sources, split_names = [train], ["train"]
    if test_split is not None or not splits or test_name in splits:  # mocks list no splits
        sources.append(_data_source(tfds, builder, name, test_name))
        split_names.append(test_name)

    if lazy:
        labels = [_read_labels(tfds, builder, name, split, image_key, label_key, s)
                  for split, s in zip(split_names, sources)]
        images = None
    else:
        parts = [_read_data_source(s, image_key, label_key) for s in sources]
        images, labels = [p[0] for p in parts], [p[1] for p in parts]
    if labels[0] is None:
        raise ValueError(f"tfds dataset {name!r} has an empty 'train' split")
    if len(labels) > 1:
        _check_labelled(labels[1], name, test_name)
    if num_classes is None:
        num_classes = int(max(lab.max() for lab in labels if lab is not None)) + 1
    for split, lab in zip(split_names, labels):
        if lab is not None:
            check_labels(lab, num_classes, f"tfds dataset {name!r} split {split!r}")

    if not lazy:
        xs = []
        for ims in images:
            if ims is not None and image_size is not None:
                ims = np.stack([_resize_center_crop(im if im.ndim == 3 else im[..., None],
                                                    image_size, crop_fraction) for im in ims])
            xs.append(None if ims is None else images_to_float(ims))
        x_te, y_te = (xs[1], labels[1]) if len(xs) > 1 else (None, None)
        return one_pool(xs[0], labels[0], x_te, y_te, name=name, num_classes=num_classes)

    channels = native[-1] if native and native[-1] is not None else 3
    if image_size is not None:
        shape, resize = (image_size, image_size, channels), (image_size, float(crop_fraction))
    else:
        shape, resize = native, None
    x = LazyImages(sources, image_key, shape, resize=resize, num_workers=num_workers)
    y = np.concatenate([lab for lab in labels if lab is not None]).astype(np.int32)
    return Dataset(x=x, y=y, num_classes=num_classes, name=name,
                   test_pool=np.arange(len(labels[0]), len(y), dtype=np.int64))


@DATASETS.register(
    "tfds:<name>",
    "any TensorFlow Datasets dataset prepared as array_record, e.g. tfds:cifar10 (needs the "
    "tfds extra; `unprune-jax prepare cifar10` prepares it once)",
)
def _load_tfds_entry(data_dir=None, *, name: str, **kw) -> Dataset:
    return load_tfds(name, data_dir, **kw)
