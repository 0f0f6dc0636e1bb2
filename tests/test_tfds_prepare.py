"""Preparing TFDS datasets offline with TFDS's own builders, then running the pipeline on them.

The archives are tiny fakes in the official layouts (a few records per file). The only thing
patched is where the official checksums come from (TFDS's record of the binary archive's SHA-256,
the CIFAR page's MD5 of the python one), and the network is cut, so nothing can be downloaded.
"""

import dataclasses
import io
import json
import pickle
import socket
import tarfile

import numpy as np
import pytest

from unprune_jax import cli
from unprune_jax import data as D
from unprune_jax.data import prepare as P

tfds = pytest.importorskip("tensorflow_datasets")  # the tfds extra; it must also bring TF

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def fake_cifar10_binary(path, per_file=4, seed=0):
    """cifar-10-binary.tar.gz's layout: per record a label byte and 3072 image bytes (R, G, B
    planes, row-major). Returns the (label, HWC image) pairs of train and of test."""
    rng = np.random.default_rng(seed)
    out = {"train": [], "test": []}
    with tarfile.open(path, "w:gz") as tar:
        for file in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
            labels = rng.integers(0, 10, per_file, dtype=np.uint8)
            planes = rng.integers(0, 256, (per_file, 3, 32, 32), dtype=np.uint8)
            records = np.concatenate([labels[:, None], planes.reshape(per_file, -1)], 1)
            _add(tar, f"cifar-10-batches-bin/{file}", records.tobytes())
            split = "test" if file.startswith("test") else "train"
            out[split] += list(zip(labels.tolist(), planes.transpose(0, 2, 3, 1)))
        _add(tar, "cifar-10-batches-bin/batches.meta.txt",
             "".join(f"class{i}\n" for i in range(10)).encode())
    return out


def fake_cifar100_python(path, n=3, seed=1):
    """cifar-100-python.tar.gz's layout: pickled dicts of a (N, 3072) uint8 array and label
    lists. Returns the (fine label, HWC image) pairs of train."""
    rng = np.random.default_rng(seed)
    train = None
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     b"fine_labels": rng.integers(0, 100, n).tolist(),
                     b"coarse_labels": rng.integers(0, 20, n).tolist()}
            _add(tar, f"cifar-100-python/{split}", pickle.dumps(batch, protocol=2))
            if split == "train":
                images = batch[b"data"].reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
                train = list(zip(batch[b"fine_labels"], images))
        _add(tar, "cifar-100-python/meta", pickle.dumps(
            {b"fine_label_names": [b"f%d" % i for i in range(100)],
             b"coarse_label_names": [b"c%d" % i for i in range(20)]}, protocol=2))
    return train


def as_set(pairs):
    return sorted((int(label), np.asarray(image, np.uint8).tobytes()) for label, image in pairs)


def pool_pairs(ds, indices):
    return [(ds.y[i], np.round(ds.x[i] * 255)) for i in indices]


@pytest.fixture
def offline(monkeypatch):
    """No network: any connection attempt fails at once."""
    def refuse(*args, **kwargs):
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_prepare_fake_cifar10_offline_then_run_the_pipeline(tmp_path, monkeypatch, offline,
                                                            capsys):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    examples = fake_cifar10_binary(archive)
    data_dir = tmp_path / "tfds"
    code = cli.main(["prepare", "cifar10", "--from", str(archive), "--data-dir", str(data_dir),
                     "--no-progress"])
    assert code == 2  # not the official archive: TFDS's SHA-256 on record differs
    err = capsys.readouterr().err
    assert f"{archive} is not the official cifar-10-binary.tar.gz: its SHA-256 is" in err

    # Record the fake's checksum where TFDS keeps the official one: the download step.
    from tensorflow_datasets.core.download import checksums

    monkeypatch.setattr(tfds.builder_cls("cifar10"), "url_infos",
                        {CIFAR10_URL: checksums.compute_url_info(archive)}, raising=False)
    code = cli.main(["prepare", "tfds:cifar10", "--from", str(archive), "--data-dir",
                     str(data_dir), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "cifar10: prepared as array_record" in out and str(data_dir) in out
    assert "train          20 examples" in out and "test            4 examples" in out
    assert sorted(p.name for p in data_dir.glob("cifar10/*/*.array_record*")) == [
        "cifar10-test.array_record-00000-of-00001", "cifar10-train.array_record-00000-of-00001"]

    ds = D.load_dataset("tfds:cifar10", data_dir)
    assert ds.num_classes == 10 and ds.x.shape == (24, 32, 32, 3)
    assert as_set(pool_pairs(ds, ds.train_pool)) == as_set(examples["train"])
    assert as_set(pool_pairs(ds, ds.test_pool)) == as_set(examples["test"])

    run_dir = tmp_path / "run"
    code = cli.main([
        "run", "-r", str(run_dir), "--no-progress",
        "-o", "data.name=tfds:cifar10", "-o", f"data.data_dir='{data_dir}'",
        "-o", "data.forget_fraction=0.25",
        "-o", "model.kwargs={widths = [4, 8], hidden = 16}",
        "-o", "train.epochs=1", "-o", "train.batch_size=8",
        "-o", "unlearn.methods=['FT']", "-o", "unlearn.settings={FT = {epochs = 1}}",
        "-o", "evaluate.seeds=1",
    ])
    assert code == 0, capsys.readouterr().err
    results = json.loads((run_dir / "results.json").read_text())
    rows = {(r["kind"], r["method"]): r for r in results["rows"]}
    assert 0.0 <= rows[("baseline", "FT")]["TA"] <= 1.0
    assert json.loads((run_dir / "split.json").read_text())["forget"].__len__() == 5


def test_prepare_cifar100_from_its_python_archive(tmp_path, monkeypatch, offline, capsys):
    archive = tmp_path / "cifar-100-python.tar.gz"
    train = fake_cifar100_python(archive)
    with pytest.raises(ValueError, match=r"not the official cifar-100-python archive: its MD5"):
        P.prepare_tfds("cifar100", tmp_path / "tfds", source=archive, progress=False)
    md5 = P._digest(archive, "md5")
    monkeypatch.setitem(P._CIFAR, "cifar100",
                        dataclasses.replace(P._CIFAR["cifar100"], python_md5=md5))
    done = P.prepare_tfds("cifar100", tmp_path / "tfds", source=archive, progress=False)
    assert done.examples == {"train": 3, "test": 3} and not done.already
    ds = D.load_dataset("tfds:cifar100", tmp_path / "tfds")
    assert ds.num_classes == 100
    assert as_set(pool_pairs(ds, ds.train_pool)) == as_set(train)
    again = P.prepare_tfds("cifar100", tmp_path / "tfds")  # nothing to do, no network needed
    assert again.already and again.examples == done.examples


def test_unprepared_dataset_names_the_data_dir_and_the_prepare_command(tmp_path, offline,
                                                                        capsys):
    data_dir = tmp_path / "empty"
    code = cli.main(["run", "-r", str(tmp_path / "run"), "--no-progress", "-o",
                     "data.name=tfds:cifar10", "-o", f"data.data_dir='{data_dir}'"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert (f"TFDS dataset 'cifar10' is not prepared in the data dir {data_dir}" in err
            and f"`unprune-jax prepare cifar10 --data-dir {data_dir}`" in err), err
    with pytest.raises(D.DatasetNotPreparedError):
        D.load_dataset("tfds:cifar10", data_dir)


def test_prepare_without_network_or_archive_fails_fast_with_instructions(tmp_path, offline,
                                                                         capsys):
    code = cli.main(["prepare", "cifar10", "--data-dir", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "cannot download cifar10: www.cs.toronto.edu is unreachable" in err
    assert f"unprune-jax prepare cifar10 --data-dir {tmp_path} --from ARCHIVE" in err
    code = cli.main(["prepare", "imagenet2012", "--data-dir", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "ILSVRC2012_img_train.tar" in err and "--from DIR" in err
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "ILSVRC2012_img_train.tar").write_bytes(b"")
    code = cli.main(["prepare", "imagenet2012", "--from", str(tmp_path / "manual"),
                     "--data-dir", str(tmp_path), "--no-progress"])
    assert code == 2 and "lacks ILSVRC2012_img_val.tar" in capsys.readouterr().err


def test_prepare_refuses_what_is_not_an_official_archive(tmp_path, offline):
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        _add(tar, "photos/cat.png", b"not cifar")
    with pytest.raises(ValueError, match=r"its top folder is 'photos', expected "
                       r"'cifar-10-batches-bin' \(binary version\) or 'cifar-10-batches-py'"):
        P.prepare_tfds("cifar10", tmp_path / "tfds", source=other)
    (tmp_path / "junk").write_bytes(b"junk")
    with pytest.raises(ValueError, match="is not a readable tar archive"):
        P.prepare_tfds("cifar10", tmp_path / "tfds", source=tmp_path / "junk")
    with pytest.raises(ValueError, match=r"unknown TFDS dataset 'cifar11'. Did you mean"):
        P.prepare_tfds("cifar11", tmp_path / "tfds", source=other)


def test_a_missing_optional_dependency_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "tensorflow", None)
    with pytest.raises(D.MissingExtraError,
                       match=r"needs tensorflow .*pip install -e '\.\[tfds\]'"):
        P.prepare_tfds("cifar10", tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "tensorflow_datasets", None)
    code = cli.main(["run", "-r", str(tmp_path / "run"), "-o", "data.name=tfds:cifar10"])
    err = capsys.readouterr().err
    assert code == 2 and "TFDS datasets need tensorflow_datasets" in err and "[tfds]" in err
