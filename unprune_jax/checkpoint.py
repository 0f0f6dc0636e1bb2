"""The run directory: resumable stages on Orbax, checksummed run files, a lock and a marker.

Layout::

    RUN_DIR/
        .unprune_jax_run    marker: unprune-jax made this directory (``--fresh`` deletes only
                            such a one); the SHA-256 of every file written by save_run_json
        .unprune_jax.lock   flock-ed for the whole run; names the holder (pid, host, start, command)
        stages/<name>/      one Orbax checkpoint per stage (``name`` may contain ``/``)

A stage is an ``ocp.Checkpointer`` + ``CompositeCheckpointHandler`` checkpoint of three items:
``state`` (the pytree, ``StandardSave``; absent for a tree without arrays), ``meta`` (the
caller's JSON) and ``record`` (ours). Orbax writes under a temporary name and renames the
directory into place once every item is written, so a stage under its final name is complete;
an interrupted save leaves only ``<name>.orbax-checkpoint-tmp``, which the next save replaces.
The record holds what Orbax lacks: the stage's name and ``fingerprint`` (what produced it), so a
stage made by another config or copied from elsewhere is refused; per leaf the key path, shape,
dtype and CRC-32 (Orbax casts a restore to the target's dtype and misses flipped bits in its data
files); and the SHA-256 of ``meta``. A damaged stage raises :class:`CheckpointError` naming the
stage and its directory, what is wrong, and that deleting the directory recomputes it.

Example:
    >>> with lock_run_dir(run_dir):
    ...     fp = fingerprint(config_dict, "train")
    ...     if stage_done(run_dir, "train", fingerprint=fp):
    ...         state, meta = load_stage(run_dir, "train", like=abstract_state, fingerprint=fp)
    ...     else:
    ...         save_stage(run_dir, "train", state, {"metrics": metrics}, fingerprint=fp)
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import fcntl
import functools
import hashlib
import inspect
import json
import os
import pathlib
import shutil
import socket
import sys
import threading
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = [
    "CheckpointError", "fingerprint", "load_json", "load_meta", "load_run_json", "load_stage",
    "lock_run_dir", "make_run_dir", "save_json", "save_run_json", "save_stage", "stage_dir",
    "stage_done", "with_run_dir_lock",
]

STAGES_DIRNAME = "stages"
MARKER_FILENAME = ".unprune_jax_run"
LOCK_FILENAME = ".unprune_jax.lock"
_STAGE_VERSION = 3  # 1 and 2 were this module's own flat format, before Orbax's composite items
_TMP_SUFFIX = ocp.path.step.TMP_DIR_SUFFIX
_REDO = "use --fresh or another --run-dir"

# Orbax 0.12.8's Checkpointer is not thread-safe (six threads saving at once fail with "Timeout
# waiting for key 'awaitable_signals_contract_...'"); the sweep runs pipelines in threads.
_ORBAX_LOCK = threading.Lock()

PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A stage or run file is damaged or was made by something else, or the run dir is taken.

    The message names the stage or file, what is wrong, and what to do.
    """


# --- JSON and fingerprints -------------------------------------------------------------------


def _plain(x: Any) -> Any:
    """``json.dumps``'s ``default``: numpy/jax scalars and arrays, dataclasses, enums, paths."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (np.ndarray, jax.Array)) and not _is_key(x):
        return np.asarray(x).tolist()
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}
    if isinstance(x, enum.Enum):
        return x.value
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    raise TypeError(f"object of type {type(x).__name__} is not JSON serializable")


def _json(obj: Any, **kw) -> str:
    return json.dumps(obj, **{"default": _plain, **kw})


def _sha256(data) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(*parts: Any) -> str:
    """A stable SHA-256 (hex) of JSON-able values and numpy/jax arrays.

    JSON values are hashed as canonical JSON (sorted keys, tuples as lists); arrays, also inside
    dicts and lists, by dtype, shape and bytes. Equal parts give equal fingerprints in every
    process.

    Raises:
        TypeError: If a part holds something neither JSON nor an array.
    """

    def array(a):
        if isinstance(a, (np.ndarray, jax.Array)):
            a = np.ascontiguousarray(_key_data(a))
            return {"__array__": [a.dtype.str, a.shape, _sha256(a.view(np.uint8).reshape(-1))]}
        return _plain(a)

    h = hashlib.sha256()
    for part in parts:
        text = _json(part, sort_keys=True, separators=(",", ":"), default=array)
        h.update(f"{len(text)}:{text}".encode())
    return h.hexdigest()


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    """Writes through a temporary file and ``os.replace`` (readers never see a part). Created by
    ``os.open`` with 0o666, not ``mkstemp`` (0o600), so the file's mode follows the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_bytes(obj: Any) -> bytes:
    return (_json(obj, indent=2) + "\n").encode()


def save_json(path: PathLike, obj: Any) -> pathlib.Path:
    """Atomically writes ``obj`` as indented JSON, mode as the umask says; returns ``path``.

    numpy/jax values become numbers and lists, tuples lists, dataclasses dicts, enums values,
    paths strings; non-finite floats ``NaN``/``Infinity`` (read back by :func:`load_json`).

    Raises:
        TypeError: If ``obj`` holds a value JSON cannot represent (nothing is written).
    """
    path = pathlib.Path(path)
    _atomic_write(path, _json_bytes(obj))
    return path


def _parse_json(path: pathlib.Path, data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path} is not JSON: not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def load_json(path: PathLike) -> Any:
    """Reads a JSON file. Raises FileNotFoundError, or CheckpointError (a ValueError) naming the
    file and the position of the error if it is not JSON."""
    path = pathlib.Path(path)
    return _parse_json(path, path.read_bytes())


# --- the run directory: marker, checksummed files, lock ---------------------------------------


def _listing(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _read_marker(run_dir: pathlib.Path) -> dict:
    marker = load_json(run_dir / MARKER_FILENAME)
    if not (isinstance(marker, dict) and isinstance(marker.get("files"), dict)):
        raise CheckpointError(f"{run_dir / MARKER_FILENAME} is not an unprune-jax run marker; "
                              f"delete {run_dir} yourself, or use another --run-dir")
    return marker


def _is_run_dir(run_dir: pathlib.Path) -> bool:
    """True if ``run_dir`` has the marker, False if it is missing or empty (its lock file
    aside); else a CheckpointError that lists what it holds."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} is a file; use another --run-dir")
    entries = sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else []
    if MARKER_FILENAME in entries:
        return True
    if [e for e in entries if e != LOCK_FILENAME]:
        raise CheckpointError(
            f"{run_dir} was not made by unprune-jax (it has no {MARKER_FILENAME}) and is not "
            f"empty: it holds {_listing(entries)}. Use a new or empty --run-dir (a run "
            "directory of an older unprune-jax cannot be resumed: delete it yourself)")
    return False


def make_run_dir(path: PathLike) -> pathlib.Path:
    """Creates run directory ``path`` with its marker, or accepts one that has it.

    Raises:
        CheckpointError: If ``path`` is a file or a non-empty directory without the marker.
    """
    run_dir = pathlib.Path(path)
    if not _is_run_dir(run_dir):
        save_json(run_dir / MARKER_FILENAME, {"format": "unprune_jax.run", "files": {}})
    return run_dir


def save_run_json(run_dir: PathLike, name: str, obj: Any) -> pathlib.Path:
    """Writes ``run_dir/name`` as JSON and records its SHA-256 in the marker, so that
    :func:`load_run_json` refuses it once edited, replaced or deleted."""
    run_dir = make_run_dir(run_dir)
    marker, data = _read_marker(run_dir), _json_bytes(obj)
    _atomic_write(run_dir / name, data)
    marker["files"][name] = _sha256(data)
    save_json(run_dir / MARKER_FILENAME, marker)
    return run_dir / name


def load_run_json(run_dir: PathLike, name: str) -> Any:
    """Reads ``run_dir/name`` as written by :func:`save_run_json`; None if it is absent and
    was never written.

    Raises:
        CheckpointError: If the file changed or went missing since the run wrote it, or is
            there without a record (put there by hand).
    """
    path = pathlib.Path(run_dir, name)
    recorded = _read_marker(path.parent)["files"].get(name)
    if not path.exists():
        if recorded is None:
            return None
        raise CheckpointError(f"{path} was written by this run and is missing now; {_REDO}")
    if recorded is None:
        raise CheckpointError(f"{path} was not written by this run (no checksum for it in "
                              f"{MARKER_FILENAME}); delete it, or {_REDO}")
    data = path.read_bytes()
    if _sha256(data) != recorded:
        raise CheckpointError(f"{path} was changed after this run wrote it (SHA-256 "
                              f"{_sha256(data)[:12]}, recorded {recorded[:12]}) and the stages "
                              f"depend on it: undo the edit, or {_REDO}")
    return _parse_json(path, data)


_HELD: dict[str, list] = {}  # realpath -> [open lock file, depth]: the locks this process holds
_HELD_GUARD = threading.Lock()


def _acquire(run_dir: pathlib.Path, command: str | None):
    f = open(run_dir / LOCK_FILENAME, "a+", encoding="utf-8")  # noqa: SIM115 - held open
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        try:
            h = json.loads(f.read())
            holder = f"pid {h['pid']} on {h['host']}, started {h['started']}: {h['command']}"
        except (ValueError, TypeError, KeyError):
            holder = "it has not written its name yet"
        f.close()
        raise CheckpointError(f"{run_dir} is in use by another unprune-jax process ({holder}); "
                              "wait for it to end, or use another --run-dir") from None
    f.truncate(0)
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started,
                        "command": command or " ".join(sys.argv)}) + "\n")
    f.flush()
    return f


@contextlib.contextmanager
def lock_run_dir(run_dir: PathLike, command: str | None = None, *,
                 fresh: bool = False) -> Iterator[pathlib.Path]:
    """Holds an exclusive lock on a run directory, made with its marker if needed.

    The lock is ``fcntl.flock`` on ``run_dir/.unprune_jax.lock``, which names the holder (pid,
    host, start time, ``command``: default ``sys.argv``). The OS releases it when the process
    ends, however (``kill -9`` too), so a rerun never meets a stale lock. Nested calls for one
    directory in one process share the lock.

    Args:
        run_dir: The run directory.
        command: What the holder runs, for another process's error message.
        fresh: Empty the directory once the lock is held; only a directory with the marker,
            or an empty one, is emptied.

    Yields:
        ``run_dir`` as a Path.

    Raises:
        CheckpointError: If another process holds the lock (it is named), or ``run_dir`` is a
            file or a non-empty directory without the marker (nothing is written then).
    """
    run_dir = pathlib.Path(run_dir)
    _is_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(run_dir)
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held and fresh:
            raise CheckpointError(f"{run_dir} is in use by this process: it cannot be emptied")
        held = _HELD[key] = held or [_acquire(run_dir, command), 0]
        held[1] += 1
    try:
        if fresh:
            for p in run_dir.iterdir():
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.name != LOCK_FILENAME:
                    p.unlink()
        yield make_run_dir(run_dir)
    finally:
        with _HELD_GUARD:
            held[1] -= 1
            if not held[1]:
                del _HELD[key]
                held[0].truncate(0)
                held[0].close()  # releases the flock


def with_run_dir_lock(fn):
    """Decorator: ``fn(..., run_dir, ...)`` runs inside ``lock_run_dir(run_dir)``."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def locked(*args, **kwargs):
        with lock_run_dir(signature.bind(*args, **kwargs).arguments["run_dir"]):
            return fn(*args, **kwargs)

    return locked


# --- stages ----------------------------------------------------------------------------------


def stage_dir(run_dir: PathLike, name: str) -> pathlib.Path:
    """``run_dir/stages/<name>``; ``/`` in ``name`` nests directories (``unlearn/FT``).

    Raises:
        ValueError: If a component of ``name`` is empty, ``.``, ``..``, has a backslash or
            Orbax's temporary-directory suffix.
    """
    parts = str(name).split("/")
    if any(p in ("", ".", "..") or "\\" in p or _TMP_SUFFIX in p for p in parts):
        raise ValueError(f"invalid stage name {name!r}: use '/'-separated components, none "
                         f"empty, '.', '..', with a backslash or {_TMP_SUFFIX!r}")
    return pathlib.Path(run_dir, STAGES_DIRNAME, *parts)


def _damaged(name: str, d: pathlib.Path, what: str) -> CheckpointError:
    return CheckpointError(f"stage {name!r} at {d} is damaged: {what}. Delete {d} "
                           f"(rm -r '{d}') to recompute it on the next run")


def _short(e: BaseException) -> str:
    text = (str(e).splitlines() or [""])[0].split(" See full TensorStore details")[0]
    return f"{type(e).__name__}: {text[:200]}"  # TensorStore errors carry pages of specs


def _is_key(x) -> bool:
    return jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)


def _key_data(x):
    return jax.random.key_data(x) if _is_key(x) else x


def _crc32(x) -> int:
    return zlib.crc32(np.ascontiguousarray(_key_data(x)).view(np.uint8).reshape(-1))


def _spec(path, leaf) -> list:
    """``[shape, dtype]`` of a leaf that restores as a ``jax.Array`` of the same dtype."""
    where = f"leaf {jax.tree_util.keystr(path)}"
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
        raise TypeError(f"{where} is a {type(leaf).__name__}, not an array (use jnp.asarray)")
    if not _is_key(leaf) and jax.dtypes.canonicalize_dtype(leaf.dtype) != leaf.dtype:
        raise TypeError(f"{where} is {leaf.dtype}, which jax holds as "
                        f"{jax.dtypes.canonicalize_dtype(leaf.dtype)} (jax_enable_x64 is off)")
    return [list(leaf.shape), str(leaf.dtype)]


def _orbax(op: str, d: pathlib.Path, **items):
    """``Checkpointer.save``/``restore`` of composite ``items`` at ``d``, one at a time."""
    handlers = ocp.handlers.create_default_handler_registry(
        state=ocp.StandardCheckpointHandler(), meta=ocp.JsonCheckpointHandler(),
        record=ocp.JsonCheckpointHandler())
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler(handler_registry=handlers))
    with _ORBAX_LOCK:
        if op == "save":
            return checkpointer.save(d.absolute(), args=ocp.args.Composite(**items), force=True)
        return checkpointer.restore(d.absolute(), args=ocp.args.Composite(**items))


def _read(d: pathlib.Path, name: str, **items) -> dict:
    try:
        return _orbax("restore", d, **items)
    except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise bare Exception/ValueError
        raise _damaged(name, d, f"Orbax cannot read its {' and '.join(sorted(items))} "
                                f"({_short(e)})") from None


def _record(run_dir: PathLike, name: str, fingerprint: str | None) -> dict | None:
    """Finished stage ``name``'s record (None if there is none), checked (name, fingerprint)."""
    d = stage_dir(run_dir, name)
    if not d.exists():
        files = [p for p in d.parents if p.exists() and not p.is_dir()]
        if files:
            raise _damaged(name, d, f"{files[0]} is a file, not a directory")
        return None
    if not d.is_dir():
        raise _damaged(name, d, "it is a file, not a stage directory")
    if not (d / "record").is_dir():
        raise _damaged(name, d, f"{d / 'record'} is missing (a stage of an older unprune-jax?)")
    record = _read(d, name, record=ocp.args.JsonRestore())["record"]
    if not (isinstance(record, dict) and record.get("version") == _STAGE_VERSION
            and {"stage", "fingerprint", "meta_sha256", "leaves"} <= set(record)):
        raise _damaged(name, d, f"{d / 'record'} is not a stage record of this unprune-jax")
    if record["stage"] != name:
        raise _damaged(name, d, f"it holds stage {record['stage']!r} (copied over this one?)")
    if fingerprint is not None and record["fingerprint"] != fingerprint:
        raise CheckpointError(
            f"stage {name!r} at {d} has fingerprint {str(record['fingerprint'])[:12]}, expected "
            f"{fingerprint[:12]}: this stage was made by another config/split/input; {_REDO} "
            f"(or delete {d} to recompute it)")
    return record


def stage_done(run_dir: PathLike, name: str, fingerprint: str | None = None) -> bool:
    """Tells whether stage ``name`` finished (its checkpoint is in place under its final name).

    Args:
        run_dir: The run directory.
        name: Stage name, e.g. ``"prune"`` or ``"unlearn/FT"``.
        fingerprint: What the stage must have been made from; None skips that check.

    Raises:
        CheckpointError: If the stage is there but damaged, holds another stage, or has
            another fingerprint.
    """
    return _record(run_dir, name, fingerprint) is not None


def save_stage(run_dir: PathLike, name: str, tree: Any, meta: Mapping,
               fingerprint: str | None = None) -> pathlib.Path:
    """Saves a stage (pytree, metadata, record) as one Orbax checkpoint; replaces a finished one.

    Args:
        run_dir: The run directory.
        name: Stage name; ``/`` nests directories.
        tree: Pytree of jax or numpy arrays (typed PRNG keys too) in any registered containers
            (dicts, ``flax.struct`` dataclasses, optax states, None).
        meta: JSON-able dict (numpy values are converted).
        fingerprint: What produced the stage (:func:`fingerprint`), checked on load.

    Returns:
        The stage directory.

    Raises:
        TypeError: If ``meta`` is not a JSON-able dict or a leaf not an array (before writing).
        CheckpointError: If a damaged stage or a file is in the stage's place.
    """
    d = stage_dir(run_dir, name)
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    meta = json.loads(_json(meta))
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    record = {
        "version": _STAGE_VERSION, "stage": name, "fingerprint": fingerprint,
        "meta_sha256": _sha256(_json(meta, sort_keys=True).encode()),
        "leaves": [[jax.tree_util.keystr(p), *_spec(p, x), _crc32(x)] for p, x in leaves],
    }
    items = {"record": ocp.args.JsonSave(record), "meta": ocp.args.JsonSave(meta)}
    if leaves:  # Orbax refuses an item without arrays
        items["state"] = ocp.args.StandardSave(tree)
    _record(run_dir, name, None)  # refuses to overwrite what is not a sound stage
    _orbax("save", d, **items)
    return d


def _checked_meta(d: pathlib.Path, name: str, record: dict, meta: Any) -> dict:
    if _sha256(_json(meta, sort_keys=True).encode()) != record["meta_sha256"]:
        raise _damaged(name, d, f"its metadata ({d / 'meta'}) changed after it was saved")
    return meta


def _finished(run_dir: PathLike, name: str, fingerprint: str | None) -> dict:
    record = _record(run_dir, name, fingerprint)
    if record is None:
        raise FileNotFoundError(f"stage {name!r} is not finished: "
                                f"{stage_dir(run_dir, name)} does not exist")
    return record


def load_meta(run_dir: PathLike, name: str, fingerprint: str | None = None) -> dict:
    """The metadata of finished stage ``name`` (as JSON gives it back: lists, not tuples).

    Raises:
        FileNotFoundError: If the stage is not finished.
        CheckpointError: If it is damaged or has another fingerprint.
    """
    record, d = _finished(run_dir, name, fingerprint), stage_dir(run_dir, name)
    return _checked_meta(d, name, record, _read(d, name, meta=ocp.args.JsonRestore())["meta"])


def load_stage(run_dir: PathLike, name: str, like: Any,
               fingerprint: str | None = None) -> tuple[Any, dict]:
    """Restores finished stage ``name`` bit-exactly into the structure of ``like``.

    Args:
        run_dir: The run directory.
        name: Stage name.
        like: The abstract target: the saved structure with arrays or ``jax.ShapeDtypeStruct``
            leaves (only shapes and dtypes are used).
        fingerprint: What the stage must have been made from; None skips that check.

    Returns:
        ``(tree, meta)``: ``tree`` has ``like``'s treedef and ``jax.Array`` leaves on the
        default device (typed PRNG keys stay typed).

    Raises:
        FileNotFoundError: If the stage is not finished.
        CheckpointError: If the stage is damaged (unreadable or truncated data, a CRC-32
            mismatch, edited metadata), differs from ``like`` (the leaves' key paths, shapes
            and dtypes are named), or has another fingerprint.
    """
    record, d = _finished(run_dir, name, fingerprint), stage_dir(run_dir, name)
    like_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    saved = {path: (shape, dtype, crc) for path, shape, dtype, crc in record["leaves"]}
    wanted = {jax.tree_util.keystr(p): _spec(p, x) for p, x in like_leaves}
    problems = [f"only in the stage: {p}" for p in saved if p not in wanted]
    problems += [f"only in like: {p}" for p in wanted if p not in saved]
    problems += [f"{p}: saved {saved[p][1]}{tuple(saved[p][0])}, like {dtype}{tuple(shape)}"
                 for p, (shape, dtype) in wanted.items()
                 if p in saved and [shape, dtype] != list(saved[p][:2])]
    if problems:
        raise CheckpointError(f"stage {name!r} at {d} does not match the requested structure "
                              f"({len(problems)} differences: {_listing(problems)})")
    items = {"meta": ocp.args.JsonRestore()}
    if like_leaves:
        device = jax.sharding.SingleDeviceSharding(_default_device())
        items["state"] = ocp.args.StandardRestore(
            jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), like))
    restored = _read(d, name, **items)
    leaves = jax.tree.leaves(restored["state"]) if like_leaves else []
    for (path, _), x in zip(like_leaves, leaves, strict=True):
        if _crc32(x) != saved[jax.tree_util.keystr(path)][2]:
            raise _damaged(name, d, f"leaf {jax.tree_util.keystr(path)} fails its CRC-32 check "
                                    f"(the data in {d / 'state'} changed)")
    meta = _checked_meta(d, name, record, restored["meta"])
    return jax.tree_util.tree_unflatten(treedef, leaves), meta


def _default_device() -> jax.Device:
    """The device jax puts new arrays on (honours ``jax_default_device``)."""
    device = jax.config.jax_default_device
    if isinstance(device, str):
        return jax.devices(device)[0]
    return device if device is not None else jax.devices()[0]
