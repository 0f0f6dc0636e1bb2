"""Tests for unprune_jax.data (pure numpy; no network)."""

import gzip
import json
import os
import re
import struct

import numpy as np
import pytest

from unprune_jax import data as D
from unprune_jax.data import idx as idx_module
from unprune_jax.data import tfds as tfds_module

FMNIST_DIR = D.DEFAULT_FASHION_MNIST_DIR


def _write_idx(path, arr, *, code=0x08, compress=False):
    arr = np.asarray(arr)
    dtype = idx_module._IDX_DTYPES[code]
    payload = (
        bytes([0, 0, code, arr.ndim])
        + struct.pack(f">{arr.ndim}I", *arr.shape)
        + arr.astype(dtype).tobytes()
    )
    if compress:
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def _write_idx_dir(d, *, compress, n_train=5, n_test=3, hw=(4, 3)):
    rng = np.random.default_rng(0)
    ext = ".gz" if compress else ""
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, size=(n, *hw), dtype=np.uint8)
        lbls = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        _write_idx(d / f"{split}-images-idx3-ubyte{ext}", imgs, compress=compress)
        _write_idx(d / f"{split}-labels-idx1-ubyte{ext}", lbls, compress=compress)
        arrays[split] = (imgs, lbls)
    return arrays


@pytest.fixture(scope="module")
def syn():
    return D.synthetic_dataset(n=400, n_test=100, num_classes=10, seed=0)


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_parses_header(tmp_path, compress):
    arr = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    path = _write_idx(tmp_path / "x-idx3-ubyte", arr, compress=compress)
    out = D.read_idx(path)
    assert out.shape == (2, 3, 5) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


def test_read_idx_other_dtype_and_ndims(tmp_path):
    arr = np.arange(7, dtype=np.int32) - 3
    out = D.read_idx(_write_idx(tmp_path / "a", arr, code=0x0C))
    np.testing.assert_array_equal(out, arr)
    arr4 = np.ones((1, 2, 3, 4), np.uint8)
    assert D.read_idx(_write_idx(tmp_path / "b", arr4)).shape == (1, 2, 3, 4)


def test_read_idx_rejects_bad_files(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="magic number 0x01020801"):
        D.read_idx(p)
    p.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="type code 0x07"):
        D.read_idx(p)
    p.write_bytes(b"\x00\x00\x08\x02" + struct.pack(">II", 2, 3) + b"\x00" * 5)
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*5 bytes"):
        D.read_idx(p)
    p.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 2))
    with pytest.raises(ValueError, match="truncated IDX header"):
        D.read_idx(p)


@pytest.mark.parametrize("compress", [False, True])
def test_load_idx_dir_tiny(tmp_path, compress):
    arrays = _write_idx_dir(tmp_path, compress=compress)
    ds = D.load_idx_dir(tmp_path, name="tiny", num_classes=10)
    assert ds.name == "tiny" and len(ds) == 8 and ds.num_classes == 10
    assert ds.x.shape == (8, 4, 3, 1) and ds.x.dtype == np.float32
    assert ds.y.dtype == np.int32 and ds.test_pool.dtype == np.int64
    np.testing.assert_array_equal(ds.test_pool, [5, 6, 7])
    np.testing.assert_array_equal(ds.train_pool, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(ds.x[5:, ..., 0], arrays["t10k"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y[:5], arrays["train"][1])
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0


def test_load_idx_dir_env_var(tmp_path, monkeypatch):
    _write_idx_dir(tmp_path, compress=True)
    monkeypatch.setenv(D.DATA_DIR_ENV_VAR, str(tmp_path))
    assert D.default_data_dir() == str(tmp_path)
    assert len(D.load_idx_dir()) == 8
    assert len(D.load_dataset("fashion_mnist")) == 8


def test_load_idx_dir_missing_dir(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as e:
        D.load_idx_dir(missing)
    assert "apt-get install dataset-fashion-mnist" in str(e.value)


def test_load_idx_dir_missing_file(tmp_path):
    _write_idx_dir(tmp_path, compress=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte") as e:
        D.load_idx_dir(tmp_path)
    assert str(tmp_path) in str(e.value)
    assert "apt-get install dataset-fashion-mnist" in str(e.value)


def test_load_idx_dir_count_mismatch(tmp_path):
    _write_idx_dir(tmp_path, compress=False)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="5 images but .* 4 labels"):
        D.load_idx_dir(tmp_path)


def test_label_outside_the_declared_classes_is_refused(tmp_path):
    """One label of 200 in FashionMNIST's label file must not build a 201-class model."""
    _write_idx_dir(tmp_path, compress=False)
    labels = np.array([1, 2, 200, 3, 4], np.uint8)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    path = re.escape(str(tmp_path / "train-labels-idx1-ubyte"))
    with pytest.raises(ValueError, match=path + r": label 200 at index 2 is not in \[0, 10\)"):
        D.load_dataset("fashion_mnist", tmp_path)
    # A directory of unknown classes infers them, but never from a negative label.
    assert D.load_idx_dir(tmp_path).num_classes == 201
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, -3, 1], np.int8), code=0x09)
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: label -3 at index 1 is not "
                       "non-negative"):
        D.load_idx_dir(tmp_path)


@pytest.mark.skipif(
    not os.path.isdir(FMNIST_DIR),
    reason=f"{FMNIST_DIR} absent (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv(D.DATA_DIR_ENV_VAR, raising=False)
    ds = D.load_dataset("fashion_mnist")
    assert ds.name == "fashion_mnist"
    assert len(ds) == 70000 and ds.x.shape == (70000, 28, 28, 1)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int32
    assert ds.num_classes == 10
    np.testing.assert_array_equal(np.unique(ds.y), np.arange(10))
    np.testing.assert_array_equal(ds.test_pool, np.arange(60000, 70000))
    np.testing.assert_array_equal(ds.train_pool, np.arange(60000))
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    # Each class has 6000 train and 1000 test examples.
    np.testing.assert_array_equal(np.bincount(ds.y[:60000]), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y[60000:]), [1000] * 10)


# ---------------------------------------------------------------- datasets


def test_synthetic_dataset(syn):
    assert len(syn) == 400 and syn.x.shape == (400, 28, 28, 1)
    assert syn.x.dtype == np.float32 and syn.y.dtype == np.int32
    assert 0.0 <= syn.x.min() and syn.x.max() <= 1.0
    np.testing.assert_array_equal(syn.test_pool, np.arange(300, 400))
    assert set(np.unique(syn.y[:300])) == set(range(10))
    again = D.synthetic_dataset(n=400, n_test=100, num_classes=10, seed=0)
    np.testing.assert_array_equal(again.x, syn.x)
    # Learnable: nearest class mean (from train) classifies test well.
    xf = syn.x.reshape(len(syn), -1)
    means = np.stack([xf[:300][syn.y[:300] == c].mean(0) for c in range(10)])
    pred = np.argmin(((xf[300:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == syn.y[300:]).mean() > 0.9


def test_dataset_validation():
    with pytest.raises(ValueError,
                       match=r"Dataset 't': y: label 10 at index 1 is not in \[0, 10\)"):
        D.Dataset(np.zeros((2, 1, 1, 1)), np.array([0, 10]), 10, "t")
    with pytest.raises(ValueError, match=r"test_pool has 1 indices outside \[0, 2\): \[5\]"):
        D.Dataset(np.zeros((2, 1, 1, 1)), np.array([0, 1]), 10, "t", np.array([5]))
    with pytest.raises(ValueError, match=r"shape \(N, H, W, C\)"):
        D.Dataset(np.zeros((2, 1, 1)), np.array([0, 1]), 10, "t")


def test_load_dataset_registry(syn):
    ds = D.load_dataset("synthetic", n=50, n_test=10)
    assert len(ds) == 50 and len(ds.test_pool) == 10
    with pytest.raises(ValueError, match=r"'fashion-mnist'; known: \[.*'synthetic'.*\]\. "
                                         r"Did you mean 'fashion_mnist'"):
        D.load_dataset("fashion-mnist")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        D.load_dataset("imagenet")


def test_load_tfds_mock():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = D.load_dataset("tfds:cifar10")
    assert ds.name == "cifar10" and ds.num_classes == 10
    assert ds.x.shape == (12, 32, 32, 3) and ds.x.dtype == np.float32
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0
    assert ds.y.dtype == np.int32 and ds.y.min() >= 0 and ds.y.max() < 10
    np.testing.assert_array_equal(ds.test_pool, np.arange(6, 12))


# ---------------------------------------------------------------- splits


def test_make_split_deterministic(syn):
    kw = dict(train_size=200, val_size=50, test_size=40, forget_fraction=0.1)
    a = D.make_split(syn, seed=3, **kw)
    b = D.make_split(syn, seed=3, **kw)
    c = D.make_split(syn, seed=4, **kw)
    assert a == b
    assert a != c
    assert not np.array_equal(a.train, c.train)
    assert not np.array_equal(a.forget, c.forget)


def test_make_split_sets(syn):
    s = D.make_split(syn, seed=0, train_size=200, val_size=50, test_size=40)
    assert s.summary() == dict(train=200, val=50, test=40, forget=20, retain=180)
    for f in ("train", "val", "test", "forget", "retain"):
        arr = getattr(s, f)
        assert arr.dtype == np.int64 and np.all(np.diff(arr) > 0), f
    assert set(s.train) | set(s.val) <= set(syn.train_pool.tolist())
    assert set(s.test) <= set(syn.test_pool.tolist())
    assert not set(s.train) & set(s.val)
    np.testing.assert_array_equal(np.union1d(s.retain, s.forget), s.train)
    assert np.intersect1d(s.retain, s.forget).size == 0
    with pytest.raises(ValueError):  # read-only
        s.train[0] = 1


def test_make_split_defaults(syn):
    s = D.make_split(syn, seed=0)
    np.testing.assert_array_equal(s.train, syn.train_pool)
    np.testing.assert_array_equal(s.test, syn.test_pool)
    assert s.val.size == 0 and s.forget.size == round(0.1 * 300)


def test_make_split_forget_fraction_none_is_the_default(syn):
    default = D.make_split(syn, seed=0, val_size=20)
    assert D.make_split(syn, seed=0, val_size=20, forget_fraction=None) == default
    assert default == D.make_split(syn, seed=0, val_size=20,
                                   forget_fraction=D.DEFAULT_FORGET_FRACTION)
    assert default.forget.size == round(0.1 * 280)
    classes = D.make_split(syn, seed=0, forget_fraction=None, forget_classes=[2])
    assert set(syn.y[classes.forget]) == {2}


def test_make_split_forget_classes(syn):
    s = D.make_split(syn, seed=0, val_size=30, forget_classes=[2, 7])
    train_labels = syn.y[s.train]
    np.testing.assert_array_equal(s.forget, s.train[np.isin(train_labels, [2, 7])])
    assert set(syn.y[s.forget]) == {2, 7}
    assert not np.isin(syn.y[s.retain], [2, 7]).any()
    assert s.forget.size > 0
    single = D.make_split(syn, seed=0, forget_classes=4)
    assert set(syn.y[single.forget]) == {4}


def test_make_split_forget_indices(syn):
    s = D.make_split(syn, seed=0, forget_indices=[5, 1, 9])
    np.testing.assert_array_equal(s.forget, [1, 5, 9])


def test_split_dict_roundtrip(syn):
    s = D.make_split(syn, seed=1, val_size=10)
    d = json.loads(json.dumps(s.to_dict()))
    assert D.Split.from_dict(d) == s
    with pytest.raises(ValueError, match=r"missing keys \['forget'\]"):
        D.Split.from_dict({k: v for k, v in d.items() if k != "forget"})


# ------------------------------------------------ bad make_split inputs


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(forget_fraction=1.5), r"forget_fraction must be in \(0, 1\), got 1\.5"),
        (dict(forget_fraction=0.0), r"got 0\.0"),
        (dict(forget_fraction=-0.2), r"got -0\.2"),
        (dict(forget_fraction=0.001), r"forget_fraction=0\.001 of 300 .* 0 forget"),
        (dict(forget_classes=[3, 12]), r"unknown class labels \[12\]"),
        (dict(forget_classes=[-1]), r"unknown class labels \[-1\]"),
        (dict(forget_classes=[1], forget_indices=[2]),
         "only one of forget_classes, forget_indices"),
        (dict(forget_fraction=0.2, forget_classes=[1]),
         "only one of forget_fraction, forget_classes"),
        (dict(forget_fraction=0.1, forget_indices=[1]),
         "only one of forget_fraction, forget_indices"),
        (dict(train_size=10_000), r"train_size=10000 must be in \[1, 300\]"),
        (dict(val_size=301), r"val_size=301 must be in \[0, 300\]"),
        (dict(test_size=101), r"test_size=101 must be in \[0, 100\]"),
        (dict(seed=-1), "seed=-1 must be >= 0"),
        (dict(seed=1.0), "seed must be an int, got 1.0"),
        (dict(forget_indices=[350, 360]), r"2 of them are in the test set \(\[350, 360\]\)"),
        (dict(val_size=10, forget_indices=[]), "split.forget is empty"),
        (dict(forget_indices=[1000]), r"split.forget has 1 indices outside \[0, 400\): \[1000\]"),
        (dict(forget_indices=[3, 3, 4]), r"split.forget has duplicate indices: \[3\]"),
        (dict(forget_indices=np.arange(300)), "retain set is empty"),
    ],
)
def test_make_split_bad_inputs(syn, kw, match):
    kw = {"seed": 0, **kw}
    with pytest.raises(ValueError, match=match):
        D.make_split(syn, **kw)


def test_make_split_forget_in_val(syn):
    s = D.make_split(syn, seed=0, val_size=10)
    with pytest.raises(ValueError, match=rf"in the val set \(\[{s.val[0]}\]\)"):
        D.make_split(syn, seed=0, val_size=10, forget_indices=[s.val[0]])


# ------------------------------------------------ validate_split


def _split(train=(0, 1, 2, 3), val=(4, 5), test=(6, 7), forget=(1,)):
    return D.Split(train=list(train), val=list(val), test=list(test), forget=list(forget))


def test_validate_split_ok():
    D.validate_split(_split(), 8)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(train=(0, 1, 8)), r"split.train has 1 indices outside \[0, 8\): \[8\]"),
        (dict(test=(6, -3)), r"split.test has 1 indices outside \[0, 8\): \[-3\]"),
        (dict(val=(4, 5, 5)), r"split.val has duplicate indices: \[5\]"),
        (dict(train=(0, 1, 1, 2, 2)), r"split.train has duplicate indices: \[1, 2\]"),
        (dict(val=(3, 4)), r"split.train and split.val overlap in 1 indices: \[3\]"),
        (dict(test=(2, 3, 6)), r"split.train and split.test overlap in 2 indices: \[2, 3\]"),
        (dict(val=(4, 6), test=(6, 7)), r"split.val and split.test overlap in 1 indices: \[6\]"),
        (dict(train=(), forget=()), "split.train is empty"),
        (dict(forget=()), "split.forget is empty"),
        (dict(forget=(1, 6)), r"not in train: \[6\]; 1 of them are in the test set \(\[6\]\)"),
        (dict(forget=(4,)), r"not in train: \[4\]; 1 of them are in the val set \(\[4\]\)"),
        (dict(forget=(0, 1, 2, 3)), "retain set is empty: split.forget covers all 4"),
    ],
)
def test_validate_split_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        D.validate_split(_split(**kw), 8)


def test_validate_split_names_first_few():
    s = _split(train=range(20), val=range(20, 40), test=range(0, 40), forget=(1,))
    with pytest.raises(ValueError, match=r"overlap in 20 indices: \[0, 1, .*\.\.\. \(10 more\)\]"):
        D.validate_split(s, 40)


def test_split_rejects_non_integer():
    with pytest.raises(ValueError, match="split.forget must hold integer indices"):
        D.Split(train=[0, 1], val=[], test=[], forget=[0.5])


# ---------------------------------------------------------------- batching


@pytest.mark.parametrize("n, bs", [(10, 3), (9, 3), (1, 4), (7, 7)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_batch_indices_covers_once(n, bs, shuffle):
    indices = np.arange(100, 100 + n) * 2
    idx, w = D.batch_indices(indices, bs, 0, shuffle=shuffle)
    assert idx.dtype == np.int64 and w.dtype == np.float32
    assert idx.shape == w.shape == (-(-n // bs), bs)
    real = idx[w == 1]
    np.testing.assert_array_equal(np.sort(real), indices)  # each exactly once
    assert set(np.unique(w)) <= {0.0, 1.0}
    assert np.all(idx[w == 0] == indices[0])
    assert (w == 0).sum() == idx.size - n
    assert np.all(w[:-1] == 1)  # padding only in the last batch
    if not shuffle:
        np.testing.assert_array_equal(real, indices)


def test_batch_indices_shuffle_seeded():
    ind = np.arange(50)
    a, _ = D.batch_indices(ind, 8, 1)
    b, _ = D.batch_indices(ind, 8, 1)
    c, _ = D.batch_indices(ind, 8, 2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a.ravel()[:50], ind)


def test_batch_indices_drop_remainder():
    idx, w = D.batch_indices(np.arange(10), 4, 0, drop_remainder=True)
    assert idx.shape == (2, 4) and np.all(w == 1)
    assert len(np.unique(idx)) == 8
    idx, w = D.batch_indices(np.arange(3), 4, 0, drop_remainder=True)
    assert idx.shape == (0, 4)


def test_batch_indices_empty_and_errors():
    idx, w = D.batch_indices(np.zeros((0,), np.int64), 4, 0)
    assert idx.shape == w.shape == (0, 4)
    with pytest.raises(ValueError, match="batch_size=0 must be >= 1"):
        D.batch_indices(np.arange(3), 0, 0)
    with pytest.raises(ValueError, match="needs rng_key_or_seed"):
        D.batch_indices(np.arange(3), 2, None)
    with pytest.raises(ValueError, match="seed=-5 must be >= 0"):
        D.batch_indices(np.arange(3), 2, -5)
    idx, _ = D.batch_indices(np.arange(3), 2, None, shuffle=False)
    np.testing.assert_array_equal(idx, [[0, 1], [2, 0]])


def test_batch_indices_jax_key():
    jax = pytest.importorskip("jax")
    for key in (jax.random.PRNGKey(0), jax.random.key(0)):
        a, _ = D.batch_indices(np.arange(20), 5, key)
        b, _ = D.batch_indices(np.arange(20), 5, key)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(np.sort(a.ravel()), np.arange(20))


# ------------------------------------------------ TFDS at paper size (mock data)


def _mock(n):
    tfds = pytest.importorskip("tensorflow_datasets")
    return tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE)


def test_load_tfds_cifar10_lazy_equals_eager():
    with _mock(4):
        eager = D.load_dataset("tfds:cifar10")
        lazy = D.load_dataset("tfds:cifar10", lazy=True)
    assert isinstance(lazy.x, D.LazyImages) and lazy.x.shape == (8, 32, 32, 3)
    assert len(lazy) == 8 and lazy.image_shape == (32, 32, 3)
    np.testing.assert_array_equal(lazy.y, eager.y)
    np.testing.assert_array_equal(lazy.test_pool, eager.test_pool)
    idx = np.array([6, 1, 1, 3])
    batch = lazy.x[idx]
    assert batch.shape == (4, 32, 32, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, eager.x[idx])
    np.testing.assert_array_equal(lazy.x[2:5], eager.x[2:5])
    np.testing.assert_array_equal(lazy.x[-1], eager.x[-1])
    with pytest.raises(ValueError, match=r"LazyImages index has 1 indices outside \[0, 8\): \[8\]"):
        lazy.x[np.array([0, 8])]
    with pytest.raises(TypeError, match="decoded on access"):
        np.asarray(lazy.x)


def test_load_tfds_imagenet2012_is_lazy_resized_and_tests_on_validation():
    with _mock(3):
        ds = D.load_dataset("tfds:imagenet2012")
        small = D.load_dataset("tfds:imagenet2012", image_size=40, crop_fraction=1.0)
        tfds = pytest.importorskip("tensorflow_datasets")
        val = tfds.data_source("imagenet2012", split="validation")
        val_labels = [int(val[i]["label"]) for i in range(3)]
        val_image = np.asarray(val[1]["image"])
    assert D.TFDS_TEST_SPLITS["imagenet2012"] == "validation"
    assert ds.num_classes == 1000 and isinstance(ds.x, D.LazyImages)
    assert ds.x.shape == (6, 224, 224, 3)
    np.testing.assert_array_equal(ds.test_pool, [3, 4, 5])
    np.testing.assert_array_equal(ds.y[3:], val_labels)
    with _mock(3):
        batch = ds.x[np.array([0, 4])]
        one = small.x[4]
    assert batch.shape == (2, 224, 224, 3) and batch.dtype == np.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0 and batch.std() > 0
    # crop_fraction 1: the shorter side is resized to 40 and the longer one center-cropped.
    h, w, _ = val_image.shape
    from PIL import Image
    s = 40 / min(h, w)
    nh, nw = max(40, round(h * s)), max(40, round(w * s))
    ref = np.asarray(Image.fromarray(val_image).resize((nw, nh), Image.BILINEAR))
    top, left = (nh - 40) // 2, (nw - 40) // 2
    np.testing.assert_allclose(one, ref[top:top + 40, left:left + 40] / 255.0, rtol=1e-6)


def test_resize_center_crop_keeps_the_center():
    img = np.zeros((8, 12, 1), np.uint8)
    img[:, 2:10] = 255  # the 8×8 center is white, the 2-column borders black
    out = tfds_module._resize_center_crop(img, 8, 1.0)  # shorter side already 8: crop only
    assert out.shape == (8, 8, 1) and np.all(out == 255)
    assert tfds_module._resize_center_crop(img, 4, 1.0).shape == (4, 4, 1)


def test_load_tfds_bad_arguments():
    with _mock(2):
        with pytest.raises(ValueError, match="image_size=0 must be >= 1"):
            D.load_dataset("tfds:cifar10", image_size=0)
        with pytest.raises(ValueError, match=r"crop_fraction must be in \(0, 1\], got 1.5"):
            D.load_dataset("tfds:cifar10", crop_fraction=1.5)


def test_unlabelled_test_split_is_refused():
    tfds_module._check_labelled(np.array([0, 5]), "imagenet2012", "validation")
    with pytest.raises(ValueError, match="split 'test' has no labels .*'validation'"):
        tfds_module._check_labelled(np.array([-1, -1]), "imagenet2012", "test")


# ------------------------------------------------ DataConfig: the forget set is one thing


def test_data_config_forget_fraction_default_is_filled_in():
    from unprune_jax.config import load_config

    assert load_config().data.forget_fraction == 0.1
    assert load_config(None, ["data.forget_fraction=0.3"]).data.forget_fraction == 0.3
    by_class = load_config(None, ["data.forget_classes=[3]"]).data
    assert by_class.forget_classes == (3,) and by_class.forget_fraction is None


def test_data_config_refuses_an_empty_forget_class_list():
    """``forget_classes = []`` used to become a random 10% forget set without a word."""
    from unprune_jax.config import load_config

    with pytest.raises(ValueError, match=r"data.forget_classes is empty"):
        load_config(None, ["data.forget_classes=[]"])


def test_data_config_refuses_forget_fraction_with_forget_classes():
    """``forget_fraction`` used to be ignored when ``forget_classes`` was set too."""
    from unprune_jax.config import load_config

    with pytest.raises(ValueError, match=r"data.forget_fraction \(0.2\) and "
                       r"data.forget_classes \(\[3\]\) are both set"):
        load_config(None, ["data.forget_classes=[3]", "data.forget_fraction=0.2"])


def test_pipeline_split_follows_the_data_config(tmp_path):
    """The forget set the pipeline draws is the one the config names (classes, else fraction)."""
    from unprune_jax import pipeline
    from unprune_jax.config import load_config

    tiny = ["data.name=synthetic", "model.name=mlp", "unlearn.methods=['FT']"]
    syn = D.synthetic_dataset()
    ctx = pipeline.build_context(load_config(None, tiny + ["data.forget_classes=[4]"]),
                                 tmp_path / "a", say=lambda *_: None, dataset=syn)
    assert set(syn.y[ctx.split.forget]) == {4}
    ctx = pipeline.build_context(load_config(None, tiny), tmp_path / "b", say=lambda *_: None,
                                 dataset=syn)
    assert ctx.split == D.make_split(syn, seed=0)
