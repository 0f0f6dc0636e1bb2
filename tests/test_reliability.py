"""Fault injection on real runs (see docs/reliability.md): a second process, kill -9 and resume,
unwritable paths, damaged, copied and foreign stages, edited run files, --fresh, file modes.

One tiny synthetic run (module fixture, made under umask 002) is copied for each case; only the
lock and kill tests start processes of their own.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from unprune_jax import checkpoint as ckpt
from unprune_jax import cli, pipeline
from unprune_jax.config import load_config

TINY = ["-o", "data.name=synthetic", "-o", "data.train_size=240", "-o", "data.test_size=60",
        "-o", "model.name=mlp", "-o", "model.kwargs={hidden = [16]}", "-o", "train.epochs=1",
        "-o", "train.batch_size=32", "-o", "unlearn.methods=['FT']",
        "-o", "unlearn.settings={FT = {epochs = 1}}", "-o", "evaluate.seeds=1", "--no-progress"]
TIMES = ("seconds", "RTE", "compile_seconds", "total_seconds")


def rows(run_dir):
    res = json.loads((run_dir / "results.json").read_text())
    return [{k: v for k, v in r.items() if k not in TIMES} for r in res["rows"]]


def run_cli(run_dir, capsys, *extra):
    code = cli.main(["run", "-r", str(run_dir), *TINY, *extra])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *parts):
    """The CLI failed with exit code 2 and one line on stderr that holds every part."""
    lines = [ln for ln in err.splitlines() if ln.startswith("unprune-jax: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for part in parts:
        assert str(part) in lines[0], (part, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished tiny run, made under umask 002."""
    run_dir = tmp_path_factory.mktemp("base") / "run"
    old = os.umask(0o002)
    try:
        assert cli.main(["run", "-r", str(run_dir), *TINY]) == 0
    finally:
        os.umask(old)
    return run_dir


@pytest.fixture
def copy(base, tmp_path):
    """A copy of the finished run to damage (the lock file of the base stays behind)."""
    dst = tmp_path / "run"
    shutil.copytree(base, dst, ignore=shutil.ignore_patterns(ckpt.LOCK_FILENAME))
    return dst


# --- locking ---------------------------------------------------------------------------------


def test_second_process_is_refused_then_kill_9_and_resume_gives_the_same_result(
        base, tmp_path, capsys):
    """A real run in another process holds the lock: this process is refused (with and without
    --fresh, nothing deleted); kill -9 then frees the lock and the resumed run equals an
    uninterrupted one."""
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "unprune_jax.cli", "run", "-r", str(run_dir),
                             *TINY], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        # the stage's directory is renamed into place once complete
        while not ckpt.stage_dir(run_dir, "sides/original").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "run ended early"
            time.sleep(0.02)
        for extra in ((), ("--fresh",)):
            code, _, err = run_cli(run_dir, capsys, *extra)
            one_line_error(code, err, run_dir, "in use by another unprune-jax process",
                           f"pid {proc.pid}", f"run: run -r {run_dir}")
        assert ckpt.stage_done(run_dir, "sides/original")  # the refused --fresh deleted nothing
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "results.json").exists()  # killed mid-run
    said = []
    cfg = load_config(None, [v for o, v in zip(TINY, TINY[1:], strict=False) if o == "-o"])
    pipeline.run(cfg, run_dir, progress=False, say=said.append)
    assert "[sides/original] finished earlier, loaded" in said
    assert rows(run_dir) == rows(base)


# --- paths that cannot be used ----------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories; "
                    "test_permission_error_is_one_line checks the message path instead")
def test_read_only_run_dir(copy, capsys):
    copy.chmod(0o555)
    try:
        code, _, err = run_cli(copy, capsys)
    finally:
        copy.chmod(0o755)
    one_line_error(code, err, copy, "permission denied")


def test_permission_error_is_one_line(copy, capsys, monkeypatch):
    """A read-only log.txt, as a non-root user meets it (root ignores file permissions)."""
    def read_only(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cli.logging, "FileHandler", read_only)
    code, _, err = run_cli(copy, capsys)
    one_line_error(code, err, copy / "log.txt", "permission denied")


def test_a_file_where_a_directory_is_expected_and_back(tmp_path, copy, capsys):
    (tmp_path / "file").write_text("")
    one_line_error(*run_cli(tmp_path / "file", capsys)[::2], tmp_path / "file", "is a file")
    one_line_error(*run_cli(tmp_path / "file" / "sub", capsys)[::2], tmp_path / "file",
                   "a part of this path is a file")
    (copy / "log.txt").unlink()
    (copy / "log.txt").mkdir()
    one_line_error(*run_cli(copy, capsys)[::2], copy / "log.txt", "is a directory")
    (copy / "log.txt").rmdir()
    shutil.rmtree(copy / "stages")
    (copy / "stages").write_text("")
    one_line_error(*run_cli(copy, capsys)[::2], "stage 'sides/original'", copy / "stages",
                   "is a file, not a directory")


# --- damaged, copied and foreign stages; edited run files -------------------------------------


def _data_file(stage):
    files = [p for p in (stage / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["truncated data", "flipped bit", "meta without seconds",
                                    "stage is a file"])
def test_damaged_stage_is_named_and_deleting_it_recomputes_it(base, copy, capsys, damage):
    stage = ckpt.stage_dir(copy, "unprune/FT")
    if damage == "truncated data":
        f = _data_file(stage)
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "flipped bit":
        f = _data_file(stage)
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 1
        f.write_bytes(bytes(data))
    elif damage == "meta without seconds":
        meta = json.loads((stage / "meta" / "metadata").read_text())
        del meta["seconds"]
        (stage / "meta" / "metadata").write_text(json.dumps(meta))
    else:
        shutil.rmtree(stage)
        stage.write_text("")
    code, _, err = run_cli(copy, capsys)
    gc.collect()
    one_line_error(code, err, "stage 'unprune/FT'", stage, "damaged", f"Delete {stage}")
    if damage in ("truncated data", "meta without seconds"):  # the advice works
        shutil.rmtree(stage) if stage.is_dir() else stage.unlink()
        assert run_cli(copy, capsys)[0] == 0
        assert rows(copy) == rows(base)


def test_stages_copied_into_a_run_with_another_config_are_refused(copy, tmp_path, capsys):
    other = ckpt.make_run_dir(tmp_path / "other")
    shutil.copytree(copy / "stages", other / "stages")
    code, _, err = run_cli(other, capsys, "-o", "prune.density=0.2")
    one_line_error(code, err, "stage 'sides/original'", "made by another config/split/input",
                   "--fresh")


def test_one_stage_copied_over_another_is_refused(copy, capsys):
    shutil.rmtree(ckpt.stage_dir(copy, "sides/gold"))
    shutil.copytree(ckpt.stage_dir(copy, "sides/original"), ckpt.stage_dir(copy, "sides/gold"))
    code, _, err = run_cli(copy, capsys)
    one_line_error(code, err, "stage 'sides/gold'", "holds stage 'sides/original'")


@pytest.mark.parametrize("edit", ["split.json edited", "split.json garbage",
                                  "config.json deleted", "config.json edited"])
def test_edited_run_files_are_refused(copy, capsys, edit):
    name = edit.split()[0]
    path = copy / name
    if edit == "split.json edited":
        split = json.loads(path.read_text())
        split["forget"] = split["forget"][1:]
        path.write_text(json.dumps(split))
    elif edit == "split.json garbage":
        path.write_text("{not json")
    elif edit == "config.json deleted":
        path.unlink()
    else:
        path.write_text(path.read_text().replace("0.1", "0.2"))
    code, _, err = run_cli(copy, capsys, *(["-o", "prune.density=0.2"] if "config" in edit
                                            else []))
    what = "is missing" if "deleted" in edit else "was changed after this run wrote it"
    one_line_error(code, err, path, what, "--fresh")


# --- --fresh and foreign directories ----------------------------------------------------------


def test_fresh_deletes_only_a_directory_the_tool_made(copy, tmp_path, capsys, monkeypatch):
    seen = []
    monkeypatch.setattr(pipeline, "run", lambda cfg, run_dir, **k: seen.append(
        sorted(p.name for p in run_dir.iterdir())))
    assert run_cli(copy, capsys, "--fresh")[0] == 0
    assert seen == [[".unprune_jax.lock", ".unprune_jax_run", "log.txt"]]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for extra in (("--fresh",), ()):
        code, _, err = run_cli(mine, capsys, *extra)
        one_line_error(code, err, mine, "not made by unprune-jax", "notes.txt")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]  # untouched, nothing added
    (mine / "notes.txt").unlink()
    assert run_cli(mine, capsys, "--fresh")[0] == 0  # an empty directory is fine


# --- file modes -------------------------------------------------------------------------------


def test_a_run_creates_its_files_as_the_umask_says(base):
    """The base run was made under umask 002: group-writable files and directories."""
    paths = [base, *base.rglob("*")]
    names = {p.name for p in paths}
    assert {"results.json", "results.md", "config.json", "split.json", "log.txt",
            ".unprune_jax_run", "metadata"} <= names
    for p in paths:
        want = 0o775 if p.is_dir() else 0o664
        assert stat.S_IMODE(p.stat().st_mode) == want, p
