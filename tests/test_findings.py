"""Each finding's experiment script runs end to end at a tiny size on real FashionMNIST.

The real runs (minutes) are in experiments/README.md; these keep the scripts from rotting and check
that each writes its table (markdown + CSV), provenance and figure.
"""

import importlib
import json
import sys
from pathlib import Path

import pytest

from unprune_jax.data import DEFAULT_FASHION_MNIST_DIR

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
pytestmark = pytest.mark.skipif(not Path(DEFAULT_FASHION_MNIST_DIR).is_dir(),
                                reason="needs the dataset-fashion-mnist package")


def _script(name):
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXPERIMENTS))


def _check_outputs(out: Path, name: str, must_mention: str):
    md = (out / f"{name}.md").read_text()
    assert must_mention in md and "Command:" in md and "jax " in md
    assert (out / f"{name}.csv").read_text().count("\n") >= 2
    prov = json.loads((out / f"{name}.provenance.json").read_text())
    assert prov["seeds"] and prov["versions"]["jax"]
    assert (out / f"{name}.png").stat().st_size > 10_000


def test_finding1_topology(tmp_path):
    _script("finding1_topology").main(["--tiny", "--out", str(tmp_path)])
    _check_outputs(tmp_path, "finding1_topology", "IoU(D, D_r)")


def test_finding2_unprune_gold(tmp_path, monkeypatch):
    monkeypatch.chdir(EXPERIMENTS.parent)  # the script reads experiments/demo.toml
    _script("finding2_unprune_gold").main(
        ["--tiny", "--out", str(tmp_path), "--run-root", str(tmp_path / "runs")])
    _check_outputs(tmp_path, "finding2_unprune_gold", "ΔJ")
    assert (tmp_path / "runs" / "omp" / "results.json").exists()


def test_finding2_every_pruner_config_is_valid(monkeypatch):
    from unprune_jax.config import load_config

    monkeypatch.chdir(EXPERIMENTS.parent)
    for name, overrides in _script("finding2_unprune_gold").PRUNERS.items():
        assert load_config("experiments/demo.toml", overrides).prune.method == name.split("-")[0]


def test_finding4_reinit(tmp_path):
    _script("finding4_reinit").main(["--tiny", "--out", str(tmp_path)])
    _check_outputs(tmp_path, "finding4_reinit", "random ×1")


def test_unprune_ablation_tiny(tmp_path):
    _script("unprune_ablation").main(["--train-size", "400", "--epochs", "1", "--out",
                                      str(tmp_path)])
    md = (tmp_path / "unprune_ablation.md").read_text()
    assert "| reinit | random |" in md and "Command:" in md
    for option in _script("unprune_ablation").OPTIONS:
        assert (tmp_path / f"unprune_ablation_{option}.png").stat().st_size > 10_000
