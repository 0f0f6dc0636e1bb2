"""unprune_jax.checkpoint: stages on Orbax, fingerprints, run files, the run-dir lock and marker."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import stat
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unprune_jax import checkpoint as ckpt
from unprune_jax.checkpoint import CheckpointError


@flax.struct.dataclass
class TrainState:
    params: dict
    opt_state: Any
    step: jax.Array


def _make_tree(seed: int = 0) -> dict:
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    params = {
        "dense": {
            "kernel": jax.random.normal(k1, (32, 16), jnp.float32),
            "bias": jnp.array([0.0, -0.0, jnp.nan, jnp.inf, -jnp.inf, 1e-45, 3.0, -2.5] * 2),
        },
        "out": {"kernel": jax.random.normal(k2, (16, 3), jnp.float32)},
    }
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
    grads = jax.tree.map(lambda p: jnp.nan_to_num(p) * 0.5 + 1.0, params)
    _, opt_state = tx.update(grads, tx.init(params), params)  # non-zero momentum trace
    mask = jax.tree.map(lambda p: jnp.abs(jnp.nan_to_num(p)) > 0.5, params)
    state = TrainState(params=params, opt_state=opt_state, step=jnp.asarray(7, jnp.int32))
    return {"state": state, "mask": mask, "rng": jax.random.PRNGKey(seed + 1),
            "key": jax.random.key(seed), "bf16": jnp.arange(4, dtype=jnp.bfloat16),
            "np": np.arange(6, dtype=np.int32).reshape(2, 3), "none": None, "empty": ()}


def _bits(x) -> np.ndarray:
    x = jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    a = np.asarray(x)
    return a.view(np.uint8) if a.dtype.kind == "f" or a.dtype == jnp.bfloat16 else a


def _assert_same(restored, expected) -> None:
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for (path, r), e in zip(jax.tree_util.tree_leaves_with_path(restored),
                            jax.tree.leaves(expected), strict=True):
        assert (r.dtype, r.shape) == (e.dtype, e.shape), jax.tree_util.keystr(path)
        np.testing.assert_array_equal(_bits(r), _bits(e), err_msg=jax.tree_util.keystr(path))


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


META = {"metrics": {"acc": np.float32(0.5), "n": np.int64(3)}, "seconds": 1.25,
        "hist": np.arange(3), "t": (1, 2), "loss": float("nan")}


@pytest.fixture
def saved(tmp_path):
    tree = _make_tree()
    d = ckpt.save_stage(tmp_path, "train", tree, META, fingerprint="fp-train")
    return tmp_path, d, tree


def _data_files(d: pathlib.Path) -> list[pathlib.Path]:
    """The OCDBT data files of a stage's arrays, largest first."""
    files = [p for p in (d / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return sorted(files, key=lambda p: -p.stat().st_size)


# --- round trip -------------------------------------------------------------------------------


def test_round_trip_is_bit_exact_into_a_concrete_or_abstract_target(saved):
    run_dir, d, tree = saved
    assert d == run_dir / "stages" / "train"
    assert sorted(p.name for p in d.iterdir() if p.is_dir()) == ["meta", "record", "state"]
    assert ckpt.stage_done(run_dir, "train") and ckpt.stage_done(run_dir, "train", "fp-train")
    for like in (tree, _abstract(tree)):
        restored, meta = ckpt.load_stage(run_dir, "train", like, fingerprint="fp-train")
        _assert_same(restored, tree)
        state = restored["state"]
        assert isinstance(state, TrainState)
        assert type(state.opt_state[1][0]) is optax.TraceState  # optax NamedTuples rebuilt
        assert restored["none"] is None and restored["empty"] == ()
        assert all(isinstance(x, jax.Array) and x.devices() == {jax.devices()[0]}
                   for x in jax.tree.leaves(restored))
        assert meta["metrics"] == {"acc": 0.5, "n": 3} and meta["t"] == [1, 2]
        assert meta["hist"] == [0, 1, 2] and np.isnan(meta["loss"])
    assert ckpt.load_meta(run_dir, "train")["seconds"] == 1.25


def test_tree_without_arrays(tmp_path):
    for tree in ({}, {"a": None, "b": ()}):
        ckpt.save_stage(tmp_path, "evaluate", tree, {"acc": 1.0})
        assert ckpt.load_stage(tmp_path, "evaluate", tree) == (tree, {"acc": 1.0})


def test_interrupted_save_is_not_done_and_the_next_save_completes(tmp_path):
    """Orbax writes under a temporary name and renames when complete: a save killed midway
    leaves only the temporary directory, which is not a finished stage."""
    tmp = ckpt.stage_dir(tmp_path, "prune").with_name("prune.orbax-checkpoint-tmp")
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "junk").write_text("half written")
    assert not ckpt.stage_done(tmp_path, "prune")
    with pytest.raises(FileNotFoundError, match="not finished"):
        ckpt.load_stage(tmp_path, "prune", {"x": jnp.zeros(3)})
    tree = {"x": jnp.arange(5.0), "m": jnp.array([True, False])}
    ckpt.save_stage(tmp_path, "prune", tree, {"new": 1})
    _assert_same(ckpt.load_stage(tmp_path, "prune", tree)[0], tree)
    assert not tmp.exists()


def test_resave_replaces_a_finished_stage(saved):
    run_dir, _, _ = saved
    ckpt.save_stage(run_dir, "train", {"y": jnp.ones(2)}, {"v": 2})
    assert ckpt.load_stage(run_dir, "train", {"y": jnp.ones(2)})[1] == {"v": 2}


def test_missing_stage(tmp_path):
    assert not ckpt.stage_done(tmp_path, "gold")
    with pytest.raises(FileNotFoundError, match="gold"):
        ckpt.load_stage(tmp_path, "gold", {})
    with pytest.raises(FileNotFoundError):
        ckpt.load_meta(tmp_path, "gold")


def test_nested_names_and_invalid_names(tmp_path):
    ckpt.save_stage(tmp_path, "unlearn/FT", {"w": jnp.ones(3)}, {"method": "FT"})
    ckpt.save_stage(tmp_path, "unlearn/GA", {"w": jnp.full(3, 2.0)}, {"method": "GA"})
    assert ckpt.stage_dir(tmp_path, "unlearn/FT") == tmp_path / "stages" / "unlearn" / "FT"
    assert ckpt.load_meta(tmp_path, "unlearn/GA") == {"method": "GA"}
    assert not ckpt.stage_done(tmp_path, "unprune/FT")
    for bad in ("", "/abs", "a/../b", "a//b", "a\\b", ".", "x.orbax-checkpoint-tmp"):
        with pytest.raises(ValueError, match="invalid stage name"):
            ckpt.stage_dir(tmp_path, bad)


def test_bad_input_is_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match="not JSON serializable"):
        ckpt.save_stage(tmp_path, "a", {"x": jnp.zeros(1)}, {"f": object()})
    with pytest.raises(TypeError, match=r"leaf \['s'\] is a str"):
        ckpt.save_stage(tmp_path, "a", {"s": "text"}, {})
    with pytest.raises(TypeError, match=r"leaf \['i'\] is int64, which jax holds as int32"):
        ckpt.save_stage(tmp_path, "a", {"i": np.arange(3, dtype=np.int64)}, {})
    assert not ckpt.stage_dir(tmp_path, "a").exists()


# --- damage -----------------------------------------------------------------------------------


def _assert_damaged_message(msg: str, d: pathlib.Path) -> None:
    assert "'train'" in msg and str(d) in msg and f"Delete {d}" in msg and "recompute" in msg
    assert len(msg) < 1000  # TensorStore's spec dumps are cut


def test_flipped_bits_fail_the_crc_and_name_the_leaf(tmp_path):
    """Orbax itself restores a flipped byte silently; the recorded CRC-32 catches it."""
    tree = {"w": jax.random.normal(jax.random.PRNGKey(0), (64, 64)), "b": jnp.arange(3.0)}
    d = ckpt.save_stage(tmp_path, "train", tree, {})
    f = _data_files(d)[0]  # the 16 KiB of w, incompressible
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"leaf \['w'\] fails its CRC-32 check") as info:
        ckpt.load_stage(tmp_path, "train", tree)
    _assert_damaged_message(str(info.value), d)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_truncated_or_missing_data_file(saved, damage):
    run_dir, d, tree = saved
    f = _data_files(d)[0]
    if damage == "delete":
        f.unlink()
    else:
        f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="Orbax cannot read") as info:
        ckpt.load_stage(run_dir, "train", tree)
    _assert_damaged_message(str(info.value), d)
    assert d.is_dir()  # nothing deleted


@pytest.mark.parametrize("what", ["meta", "record"])
def test_edited_or_deleted_metadata(saved, what):
    run_dir, d, tree = saved
    path = d / what / "metadata"
    if what == "meta":
        path.write_text(json.dumps({**json.loads(path.read_text()), "seconds": 99.0}))
        match = "metadata .* changed"
    else:
        shutil.rmtree(d / what)
        match = "record is missing"
    with pytest.raises(CheckpointError, match=match) as info:
        ckpt.load_stage(run_dir, "train", tree)
    _assert_damaged_message(str(info.value), d)
    with pytest.raises(CheckpointError):
        ckpt.load_meta(run_dir, "train")


def test_a_file_in_place_of_a_stage_or_of_stages(tmp_path):
    d = ckpt.stage_dir(tmp_path, "train")
    d.parent.mkdir(parents=True)
    d.write_text("not a stage")
    with pytest.raises(CheckpointError, match="is a file, not a stage directory"):
        ckpt.stage_done(tmp_path, "train")
    with pytest.raises(CheckpointError, match="is a file"):
        ckpt.save_stage(tmp_path, "train", {"x": jnp.ones(1)}, {})
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / "stages").write_text("")
    with pytest.raises(CheckpointError, match=r"stages is a file, not a directory"):
        ckpt.stage_done(tmp_path / "r2", "unlearn/FT")


def test_a_stage_of_the_old_format_is_damaged_not_a_traceback(tmp_path):
    d = ckpt.stage_dir(tmp_path, "train")
    (d / "arrays").mkdir(parents=True)
    (d / "meta.json").write_text("{}")
    with pytest.raises(CheckpointError, match="older unprune-jax"):
        ckpt.stage_done(tmp_path, "train")


def test_mismatched_like_names_the_leaves(saved):
    run_dir, d, tree = saved
    like = _abstract(tree)
    like["state"].params["out"]["kernel"] = jax.ShapeDtypeStruct((16, 4), jnp.float32)
    with pytest.raises(CheckpointError, match=r"\['out'\]\['kernel'\]: saved float32\(16, 3\), "
                                              r"like float32\(16, 4\)"):
        ckpt.load_stage(run_dir, "train", like)
    # Orbax alone would cast to the requested dtype
    with pytest.raises(CheckpointError, match=r"\['rng'\]: saved uint32\(2,\), like int32"):
        ckpt.load_stage(run_dir, "train", dict(tree, rng=jnp.zeros(2, jnp.int32)))
    with pytest.raises(CheckpointError, match=r"only in like: \['extra'\]") as info:
        ckpt.load_stage(run_dir, "train", dict(tree, extra=jnp.zeros(1)))
    assert str(d) in str(info.value)


# --- fingerprints -----------------------------------------------------------------------------


def test_fingerprint_is_sha256_of_canonical_json_and_array_bytes():
    # a hand-made reference: length-prefixed canonical JSON of each part
    text = '{"a":[1,2],"b":"x"}'
    assert ckpt.fingerprint({"b": "x", "a": (1, 2)}) == hashlib.sha256(
        f"{len(text)}:{text}".encode()).hexdigest()
    a = np.arange(4, dtype=np.int32)
    ref = json.dumps({"__array__": ["<i4", [4], hashlib.sha256(a.tobytes()).hexdigest()]},
                     separators=(",", ":"))
    assert ckpt.fingerprint(a) == hashlib.sha256(f"{len(ref)}:{ref}".encode()).hexdigest()
    # arrays differ by dtype, shape and bytes, also inside containers; jax = numpy
    fps = {ckpt.fingerprint(x) for x in (a, a.astype(np.int64), a.reshape(2, 2), a + 1)}
    assert len(fps) == 4
    assert ckpt.fingerprint({"s": [jnp.asarray(a)]}) == ckpt.fingerprint({"s": [a]})
    assert ckpt.fingerprint("a", "b") != ckpt.fingerprint("ab") != ckpt.fingerprint("b", "a")
    with pytest.raises(TypeError):
        ckpt.fingerprint({1, 2})


def test_stage_with_another_fingerprint_is_refused(saved):
    run_dir, d, tree = saved
    for call in (lambda: ckpt.stage_done(run_dir, "train", fingerprint="other"),
                 lambda: ckpt.load_stage(run_dir, "train", tree, fingerprint="other"),
                 lambda: ckpt.load_meta(run_dir, "train", fingerprint="other")):
        with pytest.raises(CheckpointError) as info:
            call()
        msg = str(info.value)
        assert "'train'" in msg and "fingerprint fp-train" in msg and "expected other" in msg
        assert "made by another config/split/input" in msg and "--fresh" in msg


def test_a_stage_copied_over_another_is_refused(saved):
    run_dir, d, tree = saved
    shutil.copytree(d, ckpt.stage_dir(run_dir, "gold"))
    with pytest.raises(CheckpointError, match="holds stage 'train'"):
        ckpt.stage_done(run_dir, "gold")


# --- JSON helpers and run files ----------------------------------------------------------------


def test_json_helpers(tmp_path):
    path = tmp_path / "sub" / "x.json"
    ckpt.save_json(path, {"a": np.float32(1.5), "b": np.arange(3), "c": (np.bool_(True), None),
                          "d": jnp.int32(2), "p": pathlib.Path("/x")})
    assert ckpt.load_json(path) == {"a": 1.5, "b": [0, 1, 2], "c": [True, None], "d": 2,
                                    "p": "/x"}
    ckpt.save_json(path, [1])
    with pytest.raises(TypeError):
        ckpt.save_json(path, {"x": {1, 2}})
    assert ckpt.load_json(path) == [1]  # the failed write left the old file
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temporary files left
    path.write_text('{"a": 1,\n "b": }')
    with pytest.raises(CheckpointError, match=f"{path} is not valid JSON: Expecting value at "
                                              "line 2 column 7"):
        ckpt.load_json(path)


def test_run_dir_marker(tmp_path):
    new = ckpt.make_run_dir(tmp_path / "new")
    assert (new / ".unprune_jax_run").is_file()
    assert ckpt.make_run_dir(new) == new  # accepted again
    (tmp_path / "empty").mkdir()
    assert (ckpt.make_run_dir(tmp_path / "empty") / ".unprune_jax_run").is_file()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(CheckpointError, match=r"mine was not made by unprune-jax .* it holds "
                                              r"thesis.tex"):
        ckpt.make_run_dir(tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["thesis.tex"]
    (tmp_path / "file").write_text("")
    with pytest.raises(CheckpointError, match="is a file"):
        ckpt.make_run_dir(tmp_path / "file")


def test_run_files_are_checksummed(tmp_path):
    run = ckpt.make_run_dir(tmp_path / "r")
    assert ckpt.load_run_json(run, "split.json") is None
    ckpt.save_run_json(run, "split.json", {"train": [1, 2]})
    assert ckpt.load_run_json(run, "split.json") == {"train": [1, 2]}
    (run / "split.json").write_text(json.dumps({"train": [1, 3]}))
    with pytest.raises(CheckpointError, match="split.json was changed after this run wrote it"):
        ckpt.load_run_json(run, "split.json")
    (run / "split.json").unlink()
    with pytest.raises(CheckpointError, match="split.json was written by this run and is "
                                              "missing"):
        ckpt.load_run_json(run, "split.json")
    (run / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="config.json was not written by this run"):
        ckpt.load_run_json(run, "config.json")


# --- the lock (in one process; across processes see test_reliability.py) ---------------------


def test_lock_is_reentrant_in_a_process_and_released_after(tmp_path):
    run = tmp_path / "r"
    with ckpt.lock_run_dir(run, "outer") as d:
        holder = json.loads((d / ".unprune_jax.lock").read_text())
        assert holder["pid"] == os.getpid() and holder["command"] == "outer"
        with ckpt.lock_run_dir(run, "inner"):  # the pipeline inside the CLI
            pass
        assert ckpt._HELD  # still held by the outer call
        with pytest.raises(CheckpointError, match="in use by this process"):
            with ckpt.lock_run_dir(run, fresh=True):
                pass
    assert not ckpt._HELD and (run / ".unprune_jax.lock").read_text() == ""


def test_a_lock_file_left_by_a_dead_process_does_not_block(tmp_path):
    """flock belongs to the open file; the holder's record in the file means nothing alone."""
    run = ckpt.make_run_dir(tmp_path / "r")
    (run / ".unprune_jax.lock").write_text(json.dumps({"pid": 999999, "host": "h",
                                                       "started": "then", "command": "x"}))
    with ckpt.lock_run_dir(run, "me"):
        assert json.loads((run / ".unprune_jax.lock").read_text())["command"] == "me"


def test_fresh_empties_only_a_run_dir(tmp_path):
    run = ckpt.make_run_dir(tmp_path / "r")
    ckpt.save_stage(run, "prune", {"x": jnp.ones(2)}, {})
    (run / "results.json").write_text("{}")
    with ckpt.lock_run_dir(run, fresh=True):
        assert sorted(p.name for p in run.iterdir()) == [".unprune_jax.lock",
                                                         ".unprune_jax_run"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.csv").write_text("1,2")
    with pytest.raises(CheckpointError, match="holds data.csv"):
        with ckpt.lock_run_dir(tmp_path / "mine", fresh=True):
            pass
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["data.csv"]  # untouched


# --- file modes follow the umask --------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_are_created_as_the_umask_says(tmp_path, umask):
    old = os.umask(umask)
    try:
        run = tmp_path / "r"
        with ckpt.lock_run_dir(run):
            ckpt.save_run_json(run, "config.json", {"a": 1})
            ckpt.save_json(run / "results.json", {"b": 2})
            d = ckpt.save_stage(run, "prune", {"x": jnp.ones(3)}, {"m": 1})
            files = [run / n for n in (".unprune_jax_run", ".unprune_jax.lock", "config.json",
                                       "results.json")]
            files += [p for p in d.rglob("*") if p.is_file()]
            dirs = [d] + [p for p in d.rglob("*") if p.is_dir()]
    finally:
        os.umask(old)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    for path in dirs:
        assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask, path
