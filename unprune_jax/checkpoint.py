"""Resumable stage checkpoints for the unlearning pipeline.

The pipeline (train -> prune -> unlearn/<method> -> unprune/<method> -> gold ->
evaluate) saves the result of every stage so that a rerun resumes at the first
unfinished stage. This module is the only place that talks to Orbax; switching
to the Orbax V1 API later should only touch :func:`_orbax_save` and
:func:`_orbax_restore`.

On-disk layout of one stage (``name`` may contain ``/``, giving nested dirs)::

    <run_dir>/stages/<name>/
        arrays/          Orbax (V0, ``StandardCheckpointer``) checkpoint holding
                         the flattened leaves as {"000000": array, ...}
        structure.json   key path, shape, dtype and CRC-32 of every leaf
        meta.json        caller's metadata; written LAST and atomically

Boolean leaves (pruning masks) are stored as packed bits: ``np.packbits`` of
the flattened array, a ``uint8`` vector of ``ceil(size / 8)`` bytes, with
``"packing": "bits"`` and the original shape in ``structure.json``; they are
unpacked on load. A mask then takes 1/8 of the bytes of its ``bool`` form.
The CRC-32 is taken over the unpacked ``bool`` bytes, so it checks the leaf
as the caller sees it, packing and unpacking included. Checkpoints written
before packing (format version 1, bool leaves stored as ``bool``) still load.

A stage counts as finished if and only if ``meta.json`` exists. The pytree is
flattened with :func:`jax.tree_util.tree_flatten_with_path` before it reaches
Orbax and rebuilt from the caller's ``like`` tree on load, so Orbax only ever
sees a flat dict of arrays: container types (``flax.struct`` dataclasses, optax
NamedTuples, empty states) never depend on how Orbax serialises pytrees, and
structure mismatches are reported by key path. Typed PRNG keys
(``jax.random.key``) are stored as their raw ``key_data`` and re-wrapped.

Only single-process use is supported: every leaf is copied to host memory on
save and restored onto the default device (or as numpy, see
:func:`load_stage`).

Example:
    >>> if stage_done(run_dir, "train"):
    ...     state, meta = load_stage(run_dir, "train", like=abstract_state)
    ... else:
    ...     state, metrics = train(...)
    ...     save_stage(run_dir, "train", state, {"metrics": metrics})
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import gc
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

__all__ = [
    "CheckpointError",
    "META_FILENAME",
    "STAGES_DIRNAME",
    "load_json",
    "load_meta",
    "load_stage",
    "save_json",
    "save_stage",
    "stage_dir",
    "stage_done",
]

logger = logging.getLogger(__name__)

STAGES_DIRNAME = "stages"
META_FILENAME = "meta.json"
_STRUCTURE_FILENAME = "structure.json"
_ARRAYS_DIRNAME = "arrays"
_FORMAT = "unprune_jax.stage"
_FORMAT_VERSION = 2  # 2: bool leaves stored as packed bits (see the module docstring).
_READABLE_VERSIONS = (1, 2)
_PACKED_BITS = "bits"
_RESERVED_NAMES = frozenset({_ARRAYS_DIRNAME, META_FILENAME, _STRUCTURE_FILENAME})
_MAX_LISTED = 5  # How many mismatching leaves an error message lists.
_MAX_CAUSE_CHARS = 400  # TensorStore errors embed huge JSON specs; cut them.
_ORPHAN_SETTLE_S = 0.1  # See _drop_orphaned_reads.

PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A stage checkpoint exists but is corrupt or does not match ``like``.

    The message names the stage directory, says what is wrong and suggests
    deleting that directory so the stage is recomputed on the next run.
    """


# --------------------------------------------------------------------------
# JSON helpers
# --------------------------------------------------------------------------


def _to_jsonable(obj: Any, where: str = "$") -> Any:
    """Recursively converts ``obj`` into plain JSON-serialisable Python values.

    Args:
        obj: Value to convert. Supports None/bool/int/float/str, numpy scalars
            and arrays, jax arrays, mappings, lists/tuples, dataclass
            instances, enums and paths.
        where: JSON-path-like location of ``obj``, used in error messages.

    Returns:
        The converted value (dicts, lists and Python scalars only).

    Raises:
        TypeError: If a value (or dict key) cannot be represented in JSON.
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return _to_jsonable(obj.item(), where)
    if isinstance(obj, (np.ndarray, jax.Array)):
        if jax.dtypes.issubdtype(obj.dtype, jax.dtypes.prng_key):
            raise TypeError(f"{where}: typed PRNG key arrays are not JSON serializable")
        return _to_jsonable(np.asarray(obj).tolist(), where)
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if isinstance(key, np.generic):
                key = key.item()
            if not (key is None or isinstance(key, (str, int, float, bool))):
                raise TypeError(f"{where}: dict key {key!r} of type {type(key).__name__} is not JSON serializable")
            out[key] = _to_jsonable(value, f"{where}[{key!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_jsonable(getattr(obj, f.name), f"{where}.{f.name}") for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return _to_jsonable(obj.value, where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{where}: object of type {type(obj).__name__} is not JSON serializable")


def _atomic_write_text(path: pathlib.Path, text: str) -> None:
    """Writes ``text`` to ``path`` via a fsynced temp file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_json(path: PathLike, obj: Any) -> pathlib.Path:
    """Atomically writes ``obj`` as pretty-printed JSON.

    numpy/jax scalars and arrays are converted to Python scalars/lists,
    tuples to lists, dataclasses to dicts, enums to their values and paths to
    strings. Non-finite floats are written as ``NaN``/``Infinity`` (accepted by
    :func:`load_json`). The file is written to a temp file in the same
    directory, fsynced and moved into place with :func:`os.replace`, so
    readers see either the old or the new content, never a partial file.

    Args:
        path: Destination file; parent directories are created.
        obj: JSON-able value (see above).

    Returns:
        The destination path.

    Raises:
        TypeError: If ``obj`` contains a value that cannot be converted. Nothing
            is written in that case.
    """
    path = pathlib.Path(path)
    text = json.dumps(_to_jsonable(obj), indent=2) + "\n"
    _atomic_write_text(path, text)
    return path


def load_json(path: PathLike) -> Any:
    """Reads a JSON file written by :func:`save_json`.

    Args:
        path: File to read.

    Returns:
        The parsed value.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        json.JSONDecodeError: If the file is not valid JSON.
    """
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------
# Stage paths
# --------------------------------------------------------------------------


def stage_dir(run_dir: PathLike, name: str) -> pathlib.Path:
    """Returns the directory of stage ``name``: ``run_dir/stages/<name>``.

    Args:
        run_dir: Root directory of the run.
        name: Stage name; ``/`` separates nested directories (``"unlearn/FT"``).

    Returns:
        The stage directory (it may not exist).

    Raises:
        ValueError: If ``name`` is empty, absolute, contains ``.``/``..``/empty
            components or backslashes, or uses a reserved file name
            (``arrays``, ``meta.json``, ``structure.json``) as a component.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"stage name must be a non-empty string, got {name!r}")
    parts = name.split("/")
    if "\\" in name or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid stage name {name!r}: use relative '/'-separated components without '.' or '..'")
    if _RESERVED_NAMES.intersection(parts):
        raise ValueError(f"invalid stage name {name!r}: components {sorted(_RESERVED_NAMES)} are reserved")
    return pathlib.Path(run_dir, STAGES_DIRNAME, *parts)


def stage_done(run_dir: PathLike, name: str) -> bool:
    """Tells whether stage ``name`` finished, i.e. its ``meta.json`` exists.

    Args:
        run_dir: Root directory of the run.
        name: Stage name, e.g. ``"train"`` or ``"unlearn/FT"``.

    Returns:
        True iff the stage was saved completely. A directory without
        ``meta.json`` (interrupted save) counts as not done.
    """
    return (stage_dir(run_dir, name) / META_FILENAME).is_file()


def _corrupt(d: pathlib.Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"Checkpoint of stage at {d} is unusable: {what}. "
        f"Delete that directory (rm -r '{d}') to recompute the stage on the next run."
    )


def _short(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, _RestoreFailed) else f"{type(exc).__name__}: {exc}"
    text = text.splitlines()[0] if text else text
    return text if len(text) <= _MAX_CAUSE_CHARS else text[:_MAX_CAUSE_CHARS] + " ..."


def _clear_stage_dir(d: pathlib.Path) -> None:
    """Empties ``d`` but keeps nested stage dirs (e.g. ``unlearn/FT`` in ``unlearn``)."""
    for child in d.iterdir():
        if child.is_dir() and not child.is_symlink():
            if child.name != _ARRAYS_DIRNAME and any(child.rglob(META_FILENAME)):
                continue  # Holds another (nested) stage: not ours to delete.
            shutil.rmtree(child)
        else:
            child.unlink()


# --------------------------------------------------------------------------
# Orbax wrappers (the only Orbax-dependent code)
# --------------------------------------------------------------------------


def _orbax_save(directory: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """Saves a flat dict of host arrays with Orbax and waits for completion."""
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory.absolute(), arrays)
        ckptr.wait_until_finished()


def _orbax_restore(directory: pathlib.Path, target: dict[str, np.ndarray]) -> dict[str, Any]:
    """Restores a flat dict of arrays; ``np.ndarray`` targets (only their shape
    and dtype are used) come back as numpy arrays in host memory.

    Raises:
        _RestoreFailed: If Orbax/TensorStore cannot read the checkpoint.
    """
    try:
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(directory.absolute(), target)
    except Exception as e:  # TensorStore raises bare ValueError/Exception.
        # Keep only text: the traceback would keep Orbax's orphaned coroutines alive.
        error = f"{type(e).__name__}: {e}"
    logger.debug("Orbax restore of %s failed: %s", directory, error)
    _drop_orphaned_reads()
    raise _RestoreFailed(error)


class _RestoreFailed(Exception):
    """Orbax could not read the arrays; carries the error text only."""


def _drop_orphaned_reads() -> None:
    """Collects the read coroutines Orbax abandons when one array read fails.

    Orbax (0.12) runs all reads in a private event loop and closes it on the
    first error; the other coroutines are left pending and, when garbage
    collected at some later point, print "Exception ignored in: <coroutine
    _read_array_index_and_device_put>" or log "Task exception was never
    retrieved", each with a full TensorStore spec. Collect
    them now with the unraisable hook silenced, after a short pause in which
    in-flight TensorStore reads complete (their callbacks into the closed loop
    would otherwise report "Event loop is closed"). Best effort: a read that
    takes longer can still print one of these harmless messages later.
    """
    asyncio_logger = logging.getLogger("asyncio")  # "Task exception was never retrieved"
    previous_hook, previous_disabled = sys.unraisablehook, asyncio_logger.disabled
    sys.unraisablehook, asyncio_logger.disabled = (lambda unraisable: None), True
    try:
        time.sleep(_ORPHAN_SETTLE_S)  # Let in-flight TensorStore reads finish.
        gc.collect()
    finally:
        sys.unraisablehook, asyncio_logger.disabled = previous_hook, previous_disabled


# --------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------


def _is_key_dtype(dtype: Any) -> bool:
    return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _default_device() -> jax.Device:
    """The device jax puts new arrays on (honours ``jax_default_device``)."""
    device = jax.config.jax_default_device
    if isinstance(device, str):  # A platform name such as "cpu".
        return jax.devices(device)[0]
    return device if device is not None else jax.devices()[0]


def _crc32(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


def _pack_bits(a: np.ndarray) -> np.ndarray:
    """A bool array as ``uint8[ceil(a.size / 8)]``: 8 elements per byte, C order, big-endian bits."""
    return np.packbits(np.ascontiguousarray(a).reshape(-1))


def _unpack_bits(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`_pack_bits`: the bool array of ``shape`` (the padding bits are dropped)."""
    size = int(np.prod(shape, dtype=np.int64))
    return np.unpackbits(packed, count=size).astype(np.bool_).reshape(shape)


def _leaf_shape_dtype(leaf: Any) -> tuple[tuple[int, ...], Any]:
    if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct, np.ndarray, np.generic)):
        return tuple(leaf.shape), leaf.dtype
    a = np.asarray(leaf)
    return a.shape, a.dtype


# Orbax keeps process-wide state (its async machinery, temporary directories); the sweep saves
# stages from several threads at once, so saves and loads take turns.
_ORBAX_LOCK = threading.RLock()


def _serialised(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _ORBAX_LOCK:
            return fn(*args, **kwargs)

    return wrapper


@_serialised
def save_stage(run_dir: PathLike, name: str, tree: Any, meta: dict) -> pathlib.Path:
    """Saves the result of a pipeline stage.

    Writes ``tree`` with Orbax under ``run_dir/stages/<name>/``, then
    ``meta.json`` last and atomically, so the stage counts as finished only
    once everything is on disk. An unfinished stage directory left by an
    interrupted run is cleared first. Re-saving a finished stage overwrites it
    (its ``meta.json`` is removed first, so a crash in between leaves it
    unfinished rather than inconsistent).

    Args:
        run_dir: Root directory of the run.
        name: Stage name; ``/`` creates nested directories (``"unlearn/FT"``).
        tree: Pytree whose leaves are arrays: jax or numpy arrays, numpy or
            Python scalars, bool/int/float/uint32 PRNG key data, or typed
            ``jax.random.key`` arrays. Containers may be dicts, lists, tuples,
            NamedTuples (optax states), ``flax.struct`` dataclasses or any
            registered pytree node.
        meta: JSON-able dict (metrics, timings, config); numpy values are
            converted as in :func:`save_json`.

    Returns:
        The stage directory.

    Raises:
        TypeError: If ``meta`` is not a JSON-able dict or a leaf is not an
            array (e.g. a string or object array). Checked before anything is
            written.
        ValueError: If ``name`` is invalid (see :func:`stage_dir`).
    """
    d = stage_dir(run_dir, name)
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    meta_json = _to_jsonable(meta)  # Fail before the (possibly slow) save.

    leaves_with_path, _ = jax.tree_util.tree_flatten_with_path(tree)
    arrays: dict[str, np.ndarray] = {}
    entries: list[dict[str, Any]] = []
    for i, (path, leaf) in enumerate(leaves_with_path):
        keystr = jax.tree_util.keystr(path)
        entry: dict[str, Any] = {"path": keystr}
        shape, dtype = _leaf_shape_dtype(leaf)
        if _is_key_dtype(dtype):
            entry["key_impl"] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        host = np.asarray(leaf)
        if host.dtype.kind in "OUSMm" or host.dtype.fields is not None:
            raise TypeError(
                f"leaf {keystr} of type {type(leaf).__name__} with dtype {host.dtype} is not an array of numbers"
            )
        crc = _crc32(host)  # Of the leaf as the caller sees it, before any packing.
        if host.dtype == np.bool_ and host.size > 0:
            entry["packing"] = _PACKED_BITS
            entry["unpacked_shape"] = list(host.shape)
            host = _pack_bits(host)
        entry.update(shape=list(shape), dtype=str(dtype), data_shape=list(host.shape), data_dtype=str(host.dtype))
        entry["crc32"] = crc
        arrays[f"{i:06d}"] = host
        entries.append(entry)

    meta_path = d / META_FILENAME
    if meta_path.exists():
        logger.info("Overwriting finished stage %s", d)
        meta_path.unlink()
    if d.exists():
        logger.info("Clearing unfinished stage directory %s", d)
        _clear_stage_dir(d)
    d.mkdir(parents=True, exist_ok=True)

    if arrays:  # Orbax is not asked to save an empty tree.
        _orbax_save(d / _ARRAYS_DIRNAME, arrays)
    save_json(d / _STRUCTURE_FILENAME, {"format": _FORMAT, "version": _FORMAT_VERSION, "leaves": entries})
    _atomic_write_text(meta_path, json.dumps(meta_json, indent=2) + "\n")
    return d


def load_meta(run_dir: PathLike, name: str) -> dict:
    """Reads the ``meta.json`` of a finished stage.

    Args:
        run_dir: Root directory of the run.
        name: Stage name.

    Returns:
        The metadata dict passed to :func:`save_stage` (after JSON conversion:
        tuples became lists, numpy values Python values).

    Raises:
        FileNotFoundError: If the stage is missing or unfinished.
        CheckpointError: If ``meta.json`` is unparsable or not a JSON object.
    """
    d = stage_dir(run_dir, name)
    path = d / META_FILENAME
    if not path.is_file():
        state = "is unfinished (no meta.json)" if d.exists() else "does not exist"
        raise FileNotFoundError(f"Stage {name!r} at {d} {state}: {path} not found")
    try:
        meta = load_json(path)
    except (ValueError, UnicodeDecodeError) as e:
        raise _corrupt(d, f"{path.name} is not valid JSON ({_short(e)})") from e
    if not isinstance(meta, dict):
        raise _corrupt(d, f"{path.name} holds a {type(meta).__name__}, expected a JSON object")
    return meta


def _read_structure(d: pathlib.Path) -> list[dict[str, Any]]:
    path = d / _STRUCTURE_FILENAME
    try:
        structure = load_json(path)
    except FileNotFoundError as e:
        raise _corrupt(d, f"{path.name} is missing") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise _corrupt(d, f"{path.name} is not valid JSON ({_short(e)})") from e
    if not isinstance(structure, dict) or structure.get("format") != _FORMAT:
        raise _corrupt(d, f"{path.name} is not a {_FORMAT} structure file")
    if structure.get("version") not in _READABLE_VERSIONS:
        raise _corrupt(
            d, f"{path.name} has format version {structure.get('version')!r}, expected one of {_READABLE_VERSIONS}"
        )
    leaves = structure.get("leaves")
    required = ("path", "shape", "dtype", "data_shape", "data_dtype", "crc32")
    if not isinstance(leaves, list) or not all(isinstance(e, dict) and all(k in e for k in required) for e in leaves):
        raise _corrupt(d, f"{path.name} has a malformed leaf list")
    return leaves


def _listing(items: list[str]) -> str:
    shown = "; ".join(items[:_MAX_LISTED])
    return shown + (f"; ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def _check_like(d: pathlib.Path, saved: list[dict[str, Any]], like_leaves: list[tuple[Any, Any]]) -> None:
    """Raises CheckpointError unless ``like`` has the saved key paths, shapes and dtypes."""
    saved_paths = [e["path"] for e in saved]
    like_paths = [jax.tree_util.keystr(p) for p, _ in like_leaves]
    if saved_paths != like_paths:
        saved_set, like_set = set(saved_paths), set(like_paths)
        missing = [p for p in saved_paths if p not in like_set]
        extra = [p for p in like_paths if p not in saved_set]
        what = f"tree structure differs from `like` ({len(saved_paths)} saved leaves vs {len(like_paths)} in like"
        if missing:
            what += f"; only in checkpoint: {_listing(missing)}"
        if extra:
            what += f"; only in like: {_listing(extra)}"
        if not missing and not extra:
            what += "; same key paths in a different order"
        raise _corrupt(d, what + ")")
    bad = []
    for entry, (path, leaf) in zip(saved, like_leaves):
        shape, dtype = _leaf_shape_dtype(leaf)
        if list(shape) != list(entry["shape"]) or str(dtype) != entry["dtype"]:
            bad.append(
                f"{entry['path']}: saved {entry['dtype']}{tuple(entry['shape'])}, like {dtype}{tuple(shape)}"
            )
    if bad:
        raise _corrupt(d, f"{len(bad)} leaves differ from `like` in shape or dtype: {_listing(bad)}")


@_serialised
def load_stage(run_dir: PathLike, name: str, like: Any) -> tuple[Any, dict]:
    """Restores a finished stage, bit-exact, with the structure of ``like``.

    ``like`` is the abstract target: a pytree with the structure that was
    saved whose leaves are concrete arrays or ``jax.ShapeDtypeStruct`` (e.g.
    from :func:`jax.eval_shape`). The result has exactly ``like``'s treedef
    (dataclasses, NamedTuples, ... are rebuilt from it) and each leaf is
    returned as:

    * a ``jax.Array`` on the default device for ``jax.Array`` and
      ``jax.ShapeDtypeStruct`` leaves (typed PRNG keys are re-wrapped);
    * a ``np.ndarray`` for ``np.ndarray`` leaves, a numpy scalar for numpy
      scalar leaves and a Python scalar for Python scalar leaves.

    Every leaf is checked against the shape, dtype and CRC-32 recorded at save
    time.

    Args:
        run_dir: Root directory of the run.
        name: Stage name.
        like: Pytree with the saved structure, shapes and dtypes.

    Returns:
        ``(tree, meta)``.

    Raises:
        FileNotFoundError: If the stage is missing or unfinished.
        CheckpointError: If the checkpoint is corrupt (missing/truncated array
            files, unparsable ``meta.json`` or ``structure.json``, checksum
            mismatch) or does not match ``like`` (key paths, shapes, dtypes).
    """
    d = stage_dir(run_dir, name)
    meta = load_meta(run_dir, name)
    saved = _read_structure(d)
    like_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    _check_like(d, saved, like_leaves)

    # Everything is read into host memory (numpy targets), checksummed there and
    # only then put on the device: no device->host copy for the CRC check.
    target = {
        f"{i:06d}": np.empty(tuple(entry["data_shape"]), np.dtype(jnp.dtype(entry["data_dtype"])))
        for i, entry in enumerate(saved)
    }

    restored: dict[str, Any] = {}
    if target:
        arrays_dir = d / _ARRAYS_DIRNAME
        if not arrays_dir.is_dir():
            raise _corrupt(d, f"array directory {arrays_dir.name}/ is missing")
        try:
            restored = _orbax_restore(arrays_dir, target)
        except _RestoreFailed as e:
            raise _corrupt(d, f"Orbax could not restore the arrays ({_short(e)})") from None
        if not isinstance(restored, Mapping) or set(restored) != set(target):
            raise _corrupt(d, "Orbax returned a different set of arrays than was saved")

    device = _default_device()
    out = []
    for i, (entry, (_, leaf)) in enumerate(zip(saved, like_leaves)):
        host = np.asarray(restored[f"{i:06d}"])
        if list(host.shape) != list(entry["data_shape"]) or str(host.dtype) != entry["data_dtype"]:
            raise _corrupt(
                d,
                f"leaf {entry['path']} restored as {host.dtype}{host.shape}, "
                f"saved {entry['data_dtype']}{tuple(entry['data_shape'])}",
            )
        packing = entry.get("packing")
        if packing is not None:
            shape = tuple(entry.get("unpacked_shape", ()))
            n_bytes = -(-int(np.prod(shape, dtype=np.int64)) // 8)
            if packing != _PACKED_BITS or host.dtype != np.uint8 or host.shape != (n_bytes,):
                raise _corrupt(
                    d,
                    f"leaf {entry['path']} has packing {packing!r} with data {host.dtype}{host.shape}; "
                    f"expected {_PACKED_BITS!r} with uint8({n_bytes},) for a bool array of shape {shape}",
                )
            host = _unpack_bits(host, shape)
        if _crc32(host) != entry["crc32"]:
            raise _corrupt(d, f"leaf {entry['path']} fails its CRC-32 check (array data corrupted)")
        if "key_impl" in entry:
            value = jax.random.wrap_key_data(jax.device_put(host, device), impl=entry["key_impl"])
        elif isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)):
            value = jax.device_put(host, device)
        elif isinstance(leaf, np.ndarray):
            value = host
        elif isinstance(leaf, np.generic):
            value = host[()]
        else:
            value = host.item()  # Python scalar in `like`.
        out.append(value)
    return jax.tree_util.tree_unflatten(treedef, out), meta
