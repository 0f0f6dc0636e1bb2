"""Preparing a TFDS dataset once, as array_record files (what :func:`~unprune_jax.data.load_tfds`
reads), from the internet or from a local copy of the official archive.

TFDS's own builder does the work (``download_and_prepare``); this module only hands it the
archive. CIFAR's binary archive goes to TFDS as it is (TFDS checks its SHA-256); CIFAR's python
archive is checked against the MD5 the CIFAR page publishes and repacked into the binary layout
first. A dataset TFDS cannot download (ImageNet) takes its manual files from a directory.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import hashlib
import io
import os
import pickle
import socket
import tarfile
import tempfile
import urllib.parse
from pathlib import Path

import numpy as np

from .tfds import (
    TFDS_EXTRA_HINT,
    DatasetNotPreparedError,
    MissingExtraError,
    import_tfds,
    prepare_command,
    tfds_builder,
)

FILE_FORMAT = "array_record"


@dataclasses.dataclass(frozen=True)
class _Cifar:
    """The two official archives of a CIFAR dataset, and how the python one maps to the binary."""

    binary_dir: str           # top folder of the binary archive (what TFDS's builder reads)
    python_dir: str           # top folder of the python archive
    python_md5: str           # published on the CIFAR page
    batches: tuple[tuple[str, str], ...]  # (python member, binary member)
    label_keys: tuple[bytes, ...]         # per record, in the binary order
    meta: str                             # python member holding the label names
    names: tuple[tuple[bytes, str], ...]  # (meta key, binary label-names file)


_CIFAR = {
    "cifar10": _Cifar(
        "cifar-10-batches-bin", "cifar-10-batches-py", "c58f30108f718f92721af3b95e74349a",
        tuple((f"data_batch_{i}", f"data_batch_{i}.bin") for i in range(1, 6))
        + (("test_batch", "test_batch.bin"),),
        (b"labels",), "batches.meta", ((b"label_names", "batches.meta.txt"),)),
    "cifar100": _Cifar(
        "cifar-100-binary", "cifar-100-python", "eb9058c3a382ffc7106e4002c42a8d85",
        (("train", "train.bin"), ("test", "test.bin")),
        (b"coarse_labels", b"fine_labels"), "meta",
        ((b"coarse_label_names", "coarse_label_names.txt"),
         (b"fine_label_names", "fine_label_names.txt"))),
}

#: Files a manual-download dataset needs in the directory ``--from`` names.
MANUAL_FILES = {"imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")}


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What :func:`prepare_tfds` left on disk."""

    name: str
    data_dir: str               # the version directory holding the files
    data_root: str              # the TFDS data dir to read it from (``data.data_dir``)
    examples: dict[str, int]    # examples per split
    num_bytes: int              # on disk
    already: bool = False       # it was prepared before

    def summary(self) -> str:
        width = max(map(len, self.examples), default=0)
        lines = [f"{self.name}: {'already ' if self.already else ''}prepared as {FILE_FORMAT} "
                 f"in {self.data_dir}"]
        lines += [f"  {s:<{width}}  {n:>10,} examples" for s, n in self.examples.items()]
        lines += [f"  {self.num_bytes / 2**20:,.1f} MiB on disk",
                  f'use it with data.name = "tfds:{self.name}" and data.data_dir = '
                  f'"{self.data_root}"']
        return "\n".join(lines)


def prepare_tfds(name: str, data_dir: str | os.PathLike | None = None, *,
                 source: str | os.PathLike | None = None, progress: bool = True) -> Prepared:
    """Prepares TFDS dataset ``name`` as array_record in ``data_dir``, if not prepared already.

    Args:
        name: TFDS name (``cifar10``; a ``tfds:`` prefix is accepted).
        data_dir: TFDS data dir (TFDS's default when None: ``$TFDS_DATA_DIR`` or
            ``~/tensorflow_datasets``).
        source: None downloads from the internet. Otherwise a local copy of the official data:
            CIFAR-10's or CIFAR-100's binary or python ``.tar.gz``; for a manual-download
            dataset (ImageNet) the directory holding its manual files (:data:`MANUAL_FILES`).
        progress: Show TFDS's progress bars.

    Returns:
        Where the files are, examples per split and bytes.

    Raises:
        MissingExtraError: TFDS, TensorFlow (TFDS's builders extract and parse archives with it)
            or importlib_resources is missing; the message names the extra.
        DatasetNotPreparedError: The data cannot be downloaded (no ``source``, and the download
            host is unreachable or the dataset needs manual files).
        ValueError: An unknown name, a source that is not the official archive (wrong checksum,
            wrong layout, missing manual files), or an existing copy in another format.
    """
    tfds = _import_prepare_deps()
    name = name.removeprefix("tfds:")
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    builder = tfds_builder(tfds, name, data_dir)
    if builder.is_prepared():
        if builder.info.file_format.value != FILE_FORMAT:
            raise ValueError(
                f"{name} is prepared as {builder.info.file_format.value} in {builder.data_dir}, "
                f"which the library cannot read; delete that directory or choose another "
                f"--data-dir, then prepare again")
        return _prepared(builder, name, already=True)
    tfds.display_progress_bar(progress)
    root = Path(builder.data_dir_root)  # scratch space next to the data, not in /tmp
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".prepare_{name}_", dir=root) as tmp, \
            _manual_dir(tfds, builder, name, source, Path(tmp)) as manual_dir:
        config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
        try:
            builder.download_and_prepare(file_format=FILE_FORMAT, download_config=config,
                                         download_dir=Path(tmp) / "downloads")  # gone afterwards
        except OSError as e:  # a broken download (requests' errors are OSErrors), a full disk
            if source is not None or isinstance(e, FileNotFoundError):
                raise
            raise DatasetNotPreparedError(
                f"preparing {name} failed: {e}. If the download is what failed, copy the "
                f"official archive here and run `{prepare_command(name, root)} --from ARCHIVE`."
            ) from e
    return _prepared(builder, name)


def _import_prepare_deps():
    tfds = import_tfds()
    for module, why in (("tensorflow", "TFDS's builders extract and parse archives with it"),
                        ("importlib_resources", "TFDS's builders locate their files with it")):
        try:
            __import__(module)
        except ImportError as e:
            raise MissingExtraError(f"preparing a TFDS dataset needs {module} ({why}): "
                                    f"{TFDS_EXTRA_HINT}", name=module) from e
    return tfds


def _prepared(builder, name: str, already: bool = False) -> Prepared:
    files = [p for p in Path(builder.data_dir).rglob("*") if p.is_file()]
    return Prepared(name, os.fspath(builder.data_dir), os.fspath(builder.data_dir_root),
                    {s: int(i.num_examples) for s, i in builder.info.splits.items()},
                    sum(p.stat().st_size for p in files), already)


@contextlib.contextmanager
def _manual_dir(tfds, builder, name: str, source, tmp: Path):
    """Yields the ``manual_dir`` TFDS reads ``source`` from (None: download it)."""
    urls = list(builder.url_infos or {})
    if source is None:
        if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
            raise DatasetNotPreparedError(
                f"{name} cannot be downloaded automatically. "
                f"{' '.join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())} Then run "
                f"`{prepare_command(name, builder.data_dir_root)} --from DIR`.")
        _check_reachable(name, urls, builder.data_dir_root)
        yield None
        return
    source = Path(source).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"--from {source} does not exist")
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        missing = [f for f in MANUAL_FILES.get(name, ()) if not (source / f).is_file()]
        if not source.is_dir() or missing:
            raise ValueError(
                f"--from for {name} must be a directory holding its manual files; {source} "
                f"{'lacks ' + ', '.join(missing) if source.is_dir() else 'is a file'}. "
                f"TFDS says: {' '.join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())}")
        yield source
        return
    if name not in _CIFAR:
        raise ValueError(f"--from supports the archives of {', '.join(_CIFAR)} and the manual "
                         f"files of {', '.join(MANUAL_FILES)}; prepare {name} where the internet "
                         "is reachable (without --from)")
    cifar, official = _CIFAR[name], urllib.parse.urlparse(urls[0]).path.rsplit("/", 1)[-1]
    top = _top_folder(source)
    manual = tmp / "manual"
    manual.mkdir()
    if top == cifar.binary_dir:
        sha256, expected = _digest(source, "sha256"), builder.url_infos[urls[0]].checksum
        if sha256 != expected:  # TFDS checks it too, with a message about a download
            raise ValueError(f"{source} is not the official {official}: its SHA-256 is "
                             f"{sha256}, TFDS has {expected} on record")
        (manual / official).symlink_to(source.resolve())
        yield manual
    elif top == cifar.python_dir:
        md5 = _digest(source, "md5")
        if md5 != cifar.python_md5:
            raise ValueError(f"{source} is not the official {cifar.python_dir} archive: its MD5 "
                             f"is {md5}, the CIFAR page publishes {cifar.python_md5}")
        _python_to_binary(source, cifar, manual / official)
        with _checksum_recorded(type(builder), urls[0], manual / official):
            yield manual
    else:
        raise ValueError(f"{source} is not an official {name} archive: its top folder is "
                         f"{top!r}, expected {cifar.binary_dir!r} (binary version) or "
                         f"{cifar.python_dir!r} (python version)")


def _check_reachable(name: str, urls: list[str], data_root) -> None:
    """Fails fast where the download host cannot be reached (TFDS would retry for minutes)."""
    for url in urls[:1]:
        parsed = urllib.parse.urlparse(url)
        host = parsed.hostname
        try:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            socket.create_connection((host, port), timeout=10).close()
        except OSError as e:
            raise DatasetNotPreparedError(
                f"cannot download {name}: {host} is unreachable ({e}). Copy the official "
                f"archive ({url}) here and run `{prepare_command(name, data_root)} "
                f"--from ARCHIVE`.") from None


def _top_folder(archive: Path) -> str | None:
    try:
        with tarfile.open(archive) as tar:
            first = tar.next()
    except (tarfile.TarError, OSError) as e:
        raise ValueError(f"{archive} is not a readable tar archive: {e}") from None
    return first.name.strip("./").split("/")[0] if first else None


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR's python batches, refusing anything but numpy arrays and builtins."""

    def find_class(self, module, name):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            if name == "_reconstruct":
                return np.zeros(0).__reduce__()[0]  # how numpy rebuilds an array
            if name == "scalar":
                return np.int64(0).__reduce__()[0]  # ... and a scalar
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # bytes as written by protocol 2 in Python 3
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _python_to_binary(source: Path, cifar: _Cifar, out: Path) -> None:
    """Writes CIFAR's binary archive layout from its python archive: per record, the label
    bytes, then the 3072 image bytes (red, green, blue planes, row-major), as the python
    batches already hold them."""
    with tarfile.open(source) as src, tarfile.open(out, "w:gz", compresslevel=1) as dst:
        def read(member):
            try:
                return _ArraysOnly(src.extractfile(f"{cifar.python_dir}/{member}"),
                                   encoding="bytes").load()
            except (KeyError, AttributeError, pickle.UnpicklingError, EOFError) as e:
                raise ValueError(f"{source}: cannot read {cifar.python_dir}/{member}: {e}") \
                    from None

        def add(member, data: bytes):
            info = tarfile.TarInfo(f"{cifar.binary_dir}/{member}")
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))

        for py_name, bin_name in cifar.batches:
            batch = read(py_name)
            images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3072)
            labels = np.stack([np.asarray(batch[k], np.uint8) for k in cifar.label_keys], 1)
            add(bin_name, np.concatenate([labels, images], 1).tobytes())
        meta = read(cifar.meta)
        for key, file in cifar.names:
            add(file, b"\n".join(meta[key]) + b"\n")


@contextlib.contextmanager
def _checksum_recorded(builder_cls, url: str, path: Path):
    """Records ``path``'s size and SHA-256 as ``url``'s for TFDS while preparing (the repacked
    archive is checked by its MD5 before)."""
    from tensorflow_datasets.core.download import checksums  # pylint: disable=C0415

    own = "url_infos" in vars(builder_cls)
    saved = vars(builder_cls).get("url_infos")
    builder_cls.url_infos = {**(builder_cls.url_infos or {}), url: checksums.compute_url_info(path)}
    try:
        yield
    finally:
        if own:
            builder_cls.url_infos = saved
        else:
            del builder_cls.url_infos
