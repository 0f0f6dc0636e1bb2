"""Tests for unprune_jax.checkpoint (Orbax-backed resumable stage checkpoints)."""

from __future__ import annotations

import json
import pathlib
import zlib
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unprune_jax import checkpoint as ckpt
from unprune_jax.checkpoint import CheckpointError

try:  # Orbax logs through absl; keep test output readable.
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
except ImportError:  # pragma: no cover
    pass


@flax.struct.dataclass
class TrainState:
    params: dict
    opt_state: Any
    step: jax.Array


def _tx():
    return optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))


def _make_tree(seed: int = 0) -> dict:
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = {
        "dense": {
            # > 1 KiB so OCDBT stores it in its own data file (not inlined).
            "kernel": jax.random.normal(k1, (32, 16), jnp.float32),
            "bias": jnp.array([0.0, -0.0, jnp.nan, jnp.inf, -jnp.inf, 1e-45, 3.0, -2.5] * 2, jnp.float32),
        },
        "out": {"kernel": jax.random.normal(k2, (16, 3), jnp.float32)},
    }
    tx = _tx()
    opt_state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.nan_to_num(p) * 0.5 + 1.0, params)
    _, opt_state = tx.update(grads, opt_state, params)  # non-zero momentum trace
    mask = jax.tree.map(lambda p: jnp.abs(jnp.nan_to_num(p)) > 0.5, params)
    state = TrainState(params=params, opt_state=opt_state, step=jnp.asarray(7, jnp.int32))
    return {"state": state, "mask": mask, "rng": jax.random.PRNGKey(seed + 1), "k3": k3}


def _bits(x) -> np.ndarray:
    a = np.asarray(x)
    return a.view(np.uint32) if a.dtype == np.float32 else a


def _assert_same(restored, expected) -> None:
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(expected)
    for (path, r), e in zip(jax.tree_util.tree_leaves_with_path(restored), jax.tree_util.tree_leaves(expected)):
        assert r.dtype == e.dtype, jax.tree_util.keystr(path)
        assert r.shape == e.shape, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(_bits(r), _bits(e), err_msg=jax.tree_util.keystr(path))


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _data_file(stage: pathlib.Path) -> pathlib.Path:
    files = [p for p in (stage / "arrays").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.fixture
def saved(tmp_path):
    tree = _make_tree()
    meta = {"metrics": {"acc": np.float32(0.5), "n": np.int64(3)}, "seconds": 1.25, "hist": np.arange(3)}
    d = ckpt.save_stage(tmp_path, "train", tree, meta)
    return tmp_path, d, tree


def test_round_trip_bit_exact(tmp_path):
    tree = _make_tree()
    assert not ckpt.stage_done(tmp_path, "train")
    meta = {"metrics": {"acc": np.float32(0.5), "n": np.int64(3)}, "seconds": 1.25, "hist": np.arange(3), "t": (1, 2)}
    d = ckpt.save_stage(tmp_path, "train", tree, meta)
    assert d == tmp_path / "stages" / "train"
    assert ckpt.stage_done(tmp_path, "train")

    for like in (tree, _abstract(tree)):
        restored, meta_out = ckpt.load_stage(tmp_path, "train", like)
        _assert_same(restored, tree)
        state = restored["state"]
        assert isinstance(state, TrainState)
        decay_state, sgd_state = state.opt_state
        exp_decay, exp_sgd = tree["state"].opt_state
        assert type(decay_state) is type(exp_decay)  # optax EmptyState-like NamedTuple
        assert type(sgd_state) is type(exp_sgd) and isinstance(sgd_state, tuple)
        assert type(sgd_state[0]) is optax.TraceState
        assert isinstance(state.params, dict) and isinstance(restored["mask"], dict)
        assert restored["mask"]["dense"]["kernel"].dtype == jnp.bool_
        assert state.step.dtype == jnp.int32 and state.step.shape == ()
        assert restored["rng"].dtype == jnp.uint32 and restored["rng"].shape == (2,)
        assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(restored))
        assert all(x.devices() == {jax.devices()[0]} for x in jax.tree.leaves(restored))
        assert meta_out == {"metrics": {"acc": 0.5, "n": 3}, "seconds": 1.25, "hist": [0, 1, 2], "t": [1, 2]}
    assert ckpt.load_meta(tmp_path, "train") == meta_out


def test_leaf_kinds_preserved(tmp_path):
    tree = {
        "typed_key": jax.random.key(3),
        "np": np.arange(6, dtype=np.int64).reshape(2, 3),
        "np_scalar": np.float64(2.5),
        "py_int": 4,
        "py_bool": True,
        "bf16": jnp.arange(4, dtype=jnp.bfloat16),
        "none": None,
        "empty": (),
    }
    ckpt.save_stage(tmp_path, "misc", tree, {})
    restored, meta = ckpt.load_stage(tmp_path, "misc", tree)
    assert meta == {}
    assert jax.dtypes.issubdtype(restored["typed_key"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(restored["typed_key"]), jax.random.key_data(tree["typed_key"]))
    assert type(restored["np"]) is np.ndarray and restored["np"].dtype == np.int64
    np.testing.assert_array_equal(restored["np"], tree["np"])
    assert type(restored["np_scalar"]) is np.float64 and restored["np_scalar"] == 2.5
    assert type(restored["py_int"]) is int and restored["py_int"] == 4
    assert restored["py_bool"] is True
    assert restored["bf16"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(restored["bf16"], tree["bf16"])
    assert restored["none"] is None and restored["empty"] == ()


def test_empty_tree(tmp_path):
    ckpt.save_stage(tmp_path, "evaluate", {}, {"acc": 1.0})
    assert ckpt.load_stage(tmp_path, "evaluate", {}) == ({}, {"acc": 1.0})


def test_unfinished_stage_is_not_done_and_overwritten(tmp_path):
    d = ckpt.stage_dir(tmp_path, "prune")
    ckpt.save_stage(tmp_path, "prune", {"x": jnp.zeros(3)}, {"old": True})
    (d / "meta.json").unlink()  # simulate a crash before meta.json was written
    (d / "stray.tmp").write_text("junk")
    assert d.is_dir() and not ckpt.stage_done(tmp_path, "prune")
    with pytest.raises(FileNotFoundError, match="unfinished"):
        ckpt.load_stage(tmp_path, "prune", {"x": jnp.zeros(3)})

    tree = {"x": jnp.arange(5, dtype=jnp.float32), "m": jnp.array([True, False])}
    ckpt.save_stage(tmp_path, "prune", tree, {"new": 1})
    assert ckpt.stage_done(tmp_path, "prune")
    assert not (d / "stray.tmp").exists()
    restored, meta = ckpt.load_stage(tmp_path, "prune", tree)
    _assert_same(restored, tree)
    assert meta == {"new": 1}


def test_resave_finished_stage_overwrites(saved):
    run_dir, _, _ = saved
    ckpt.save_stage(run_dir, "train", {"y": jnp.ones(2)}, {"v": 2})
    restored, meta = ckpt.load_stage(run_dir, "train", {"y": jnp.ones(2)})
    _assert_same(restored, {"y": jnp.ones(2)})
    assert meta == {"v": 2}


def test_missing_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        ckpt.load_stage(tmp_path, "gold", {})
    with pytest.raises(FileNotFoundError):
        ckpt.load_meta(tmp_path, "gold")


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_corrupt_array_file(saved, damage):
    run_dir, d, tree = saved
    f = _data_file(d)
    if damage == "delete":
        f.unlink()
    else:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError) as info:
        ckpt.load_stage(run_dir, "train", tree)
    msg = str(info.value)
    assert str(d) in msg and "Delete that directory" in msg
    assert len(msg) < 2000  # TensorStore's huge spec dumps are cut
    assert isinstance(info.value, ValueError)
    assert d.is_dir() and ckpt.stage_done(run_dir, "train")  # nothing deleted


def test_deleted_arrays_dir(saved):
    run_dir, d, tree = saved
    import shutil

    shutil.rmtree(d / "arrays")
    with pytest.raises(CheckpointError, match="arrays"):
        ckpt.load_stage(run_dir, "train", tree)


def test_checksum_mismatch(saved):
    run_dir, d, tree = saved
    structure = json.loads((d / "structure.json").read_text())
    structure["leaves"][0]["crc32"] ^= 1
    (d / "structure.json").write_text(json.dumps(structure))
    with pytest.raises(CheckpointError, match="CRC-32") as info:
        ckpt.load_stage(run_dir, "train", tree)
    assert str(d) in str(info.value)


def test_mismatched_shape(saved):
    run_dir, d, tree = saved
    like = _abstract(tree)
    k = like["state"].params["out"]["kernel"]
    like["state"].params["out"]["kernel"] = jax.ShapeDtypeStruct((16, 4), k.dtype)
    with pytest.raises(CheckpointError) as info:
        ckpt.load_stage(run_dir, "train", like)
    msg = str(info.value)
    assert str(d) in msg and "['out']['kernel']" in msg and "(16, 4)" in msg


def test_mismatched_structure_and_dtype(saved):
    run_dir, d, tree = saved
    like = dict(tree, extra=jnp.zeros(1))
    with pytest.raises(CheckpointError, match="only in like: \\['extra'\\]"):
        ckpt.load_stage(run_dir, "train", like)
    like = dict(tree, rng=jnp.zeros(2, jnp.int32))
    with pytest.raises(CheckpointError, match="int32"):
        ckpt.load_stage(run_dir, "train", like)


def test_unparsable_meta(saved):
    run_dir, d, tree = saved
    (d / "meta.json").write_text('{"metrics": ')
    with pytest.raises(CheckpointError, match="meta.json") as info:
        ckpt.load_stage(run_dir, "train", tree)
    assert str(d) in str(info.value)
    with pytest.raises(CheckpointError):
        ckpt.load_meta(run_dir, "train")


def test_nested_names(tmp_path):
    a, b = {"w": jnp.ones(3)}, {"w": jnp.full(3, 2.0)}
    d_ft = ckpt.save_stage(tmp_path, "unlearn/FT", a, {"method": "FT"})
    ckpt.save_stage(tmp_path, "unlearn/GA", b, {"method": "GA"})
    assert d_ft == tmp_path / "stages" / "unlearn" / "FT"
    assert ckpt.stage_done(tmp_path, "unlearn/FT") and ckpt.stage_done(tmp_path, "unlearn/GA")
    assert not ckpt.stage_done(tmp_path, "unlearn")
    assert not ckpt.stage_done(tmp_path, "unprune/FT")
    _assert_same(ckpt.load_stage(tmp_path, "unlearn/GA", b)[0], b)
    assert ckpt.load_meta(tmp_path, "unlearn/FT") == {"method": "FT"}
    for bad in ("", "/abs", "a/../b", "a//b", "train/arrays", "meta.json"):
        with pytest.raises(ValueError):
            ckpt.stage_dir(tmp_path, bad)


def test_bad_meta_rejected_before_writing(tmp_path):
    with pytest.raises(TypeError):
        ckpt.save_stage(tmp_path, "train", {"x": jnp.zeros(1)}, {"f": object()})
    assert not ckpt.stage_dir(tmp_path, "train").exists()


def test_json_helpers(tmp_path):
    path = tmp_path / "sub" / "x.json"
    ckpt.save_json(path, {"a": np.float32(1.5), "b": np.arange(3), "c": (np.bool_(True), None), "d": jnp.int32(2)})
    assert ckpt.load_json(path) == {"a": 1.5, "b": [0, 1, 2], "c": [True, None], "d": 2}
    assert json.loads(path.read_text()) == ckpt.load_json(path)
    ckpt.save_json(path, [1])
    assert ckpt.load_json(path) == [1]
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]  # no temp files left
    with pytest.raises(TypeError):
        ckpt.save_json(path, {"x": {1, 2}})
    assert ckpt.load_json(path) == [1]  # failed write left the old file intact


# --- bool leaves (masks) are stored as packed bits ------------------------------------------------


def _bool_tree():
    rng = np.random.default_rng(0)
    return {
        "odd": rng.random((3, 5, 7)) < 0.3,  # 105 elements: the last byte is padded
        "eight": np.array([1, 0, 1, 1, 0, 0, 0, 1], bool),
        "one": jnp.array([True]),
        "scalar": np.bool_(False),
        "py_bool": True,
        "mask": jnp.asarray(rng.random((16, 9)) < 0.1),
        "float": jnp.arange(3.0),
    }


def test_bool_leaves_packed_on_disk_and_restored_exactly(tmp_path):
    tree = _bool_tree()
    d = ckpt.save_stage(tmp_path, "masks", tree, {})
    leaves = {e["path"]: e for e in json.loads((d / "structure.json").read_text())["leaves"]}
    assert json.loads((d / "structure.json").read_text())["version"] == 2
    for key, size in [("odd", 105), ("eight", 8), ("one", 1), ("scalar", 1), ("py_bool", 1), ("mask", 144)]:
        e = leaves[f"['{key}']"]
        assert e["packing"] == "bits" and e["data_dtype"] == "uint8", key
        assert e["data_shape"] == [-(-size // 8)], key
        assert e["unpacked_shape"] == list(np.shape(tree[key])), key
        # The checksum covers the bool bytes the caller sees, not the packed ones.
        assert e["crc32"] == zlib.crc32(np.asarray(tree[key], bool).tobytes()), key
    assert "packing" not in leaves["['float']"]

    # What Orbax holds is exactly numpy's packbits of the flattened mask.
    raw = ckpt._orbax_restore(d / "arrays", {
        f"{i:06d}": np.empty(e["data_shape"], np.dtype(e["data_dtype"]))
        for i, e in enumerate(leaves.values())
    })
    i_odd = list(leaves).index("['odd']")
    np.testing.assert_array_equal(raw[f"{i_odd:06d}"], np.packbits(tree["odd"].reshape(-1)))
    assert np.unpackbits(raw[f"{i_odd:06d}"])[105:].sum() == 0  # padding bits are zero

    restored, _ = ckpt.load_stage(tmp_path, "masks", tree)
    for key in ("odd", "eight"):
        assert type(restored[key]) is np.ndarray and restored[key].dtype == np.bool_
        assert restored[key].shape == tree[key].shape
        np.testing.assert_array_equal(restored[key], tree[key])
    for key in ("one", "mask"):
        assert isinstance(restored[key], jax.Array) and restored[key].dtype == jnp.bool_
        np.testing.assert_array_equal(restored[key], tree[key])
    assert type(restored["scalar"]) is np.bool_ and restored["scalar"] == np.False_
    assert restored["py_bool"] is True

    # An abstract target works too (the pipeline restores masks this way).
    like = {k: jax.ShapeDtypeStruct(np.shape(v), jnp.asarray(v).dtype) for k, v in tree.items()}
    restored, _ = ckpt.load_stage(tmp_path, "masks", like)
    for key, value in tree.items():
        np.testing.assert_array_equal(restored[key], value, err_msg=key)
        assert restored[key].dtype == jnp.asarray(value).dtype, key


def test_version1_checkpoint_with_unpacked_bools_still_loads(tmp_path):
    """A stage written before packing (format 1: bools stored as bool) is read as before."""
    tree = {"m": np.array([[True, False, True], [False, False, True]]), "w": np.arange(4, dtype=np.float32)}
    d = ckpt.stage_dir(tmp_path, "prune")
    d.mkdir(parents=True)
    ckpt._orbax_save(d / "arrays", {"000000": tree["m"], "000001": tree["w"]})
    entries = [
        {"path": f"['{k}']", "shape": list(v.shape), "dtype": str(v.dtype), "data_shape": list(v.shape),
         "data_dtype": str(v.dtype), "crc32": zlib.crc32(v.tobytes())}
        for k, v in tree.items()
    ]
    ckpt.save_json(d / "structure.json", {"format": "unprune_jax.stage", "version": 1, "leaves": entries})
    ckpt.save_json(d / "meta.json", {"old": True})
    restored, meta = ckpt.load_stage(tmp_path, "prune", tree)
    assert meta == {"old": True}
    _assert_same(restored, tree)

    structure = json.loads((d / "structure.json").read_text())
    structure["version"] = 99
    (d / "structure.json").write_text(json.dumps(structure))
    with pytest.raises(CheckpointError, match="version 99"):
        ckpt.load_stage(tmp_path, "prune", tree)


def test_packed_bits_integrity_checks(tmp_path):
    tree = {"m": np.arange(20).reshape(4, 5) % 3 == 0}
    d = ckpt.save_stage(tmp_path, "m", tree, {})
    path = d / "structure.json"
    good = json.loads(path.read_text())

    bad = json.loads(json.dumps(good))
    bad["leaves"][0]["unpacked_shape"] = [4, 9]  # 36 bits would need 5 bytes, 3 are stored
    path.write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match=r"packing 'bits' with data uint8\(3,\)"):
        ckpt.load_stage(tmp_path, "m", tree)

    bad = json.loads(json.dumps(good))
    bad["leaves"][0]["crc32"] ^= 1  # the unpacked mask no longer matches its checksum
    path.write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="CRC-32"):
        ckpt.load_stage(tmp_path, "m", tree)

    bad = json.loads(json.dumps(good))
    bad["leaves"][0]["packing"] = "rle"
    path.write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="packing 'rle'"):
        ckpt.load_stage(tmp_path, "m", tree)
