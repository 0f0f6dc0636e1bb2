"""The pipeline end to end: real FashionMNIST subset, resume, config and CLI errors."""

import json
import os

import jax
import numpy as np
import pytest

from unprune_jax import checkpoint as ckpt
from unprune_jax import cli, pipeline, runs
from unprune_jax import train as train_lib
from unprune_jax.config import load_config
from unprune_jax.data import default_data_dir
from unprune_jax.report import label

TINY = [
    "model.kwargs={widths = [4, 8], hidden = 16}",
    "train.epochs=1",
    "train.batch_size=64",
    "unlearn.settings={retrain = {epochs = 1}, FT = {epochs = 1}, GA = {epochs = 1}}",
    "evaluate.seeds=2",
]
HAVE_FMNIST = os.path.isdir(default_data_dir())
EXPECTED_ROWS = [
    "dense (scored by the pruner)", "original (pruned on D)", "retrain", "retrain + un-prune", "FT",
    "FT + un-prune", "GA", "GA + un-prune", "gold (retrain + re-prune)",
]


def quiet(_msg):
    pass


def without_time(rows):
    drop = ("seconds", "RTE", "compile_seconds")
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


@pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")
def test_end_to_end_on_real_fashion_mnist_subset(tmp_path):
    jax.clear_caches()  # other tests may have compiled the same (cached) steps already
    cfg = load_config(None, TINY + ["data.train_size=2000", "data.test_size=500"])
    res = pipeline.run(cfg, tmp_path, progress=False, say=quiet)
    rows = {label(r): r for r in res["rows"]}
    assert list(rows) == EXPECTED_ROWS
    assert [(r["kind"], r["method"]) for r in res["rows"][2:4]] == [("baseline", "retrain"),
                                                                    ("unprune", "retrain")]
    assert rows["dense (scored by the pruner)"]["IoU_gold"] is None
    for r in res["rows"][1:]:
        for key in ("UA", "RA", "TA", "IoU_gold", "hamming_gold", "delta_J", "density"):
            assert 0.0 <= r[key] <= 1.0 or key == "delta_J", (label(r), key, r[key])
        assert 0.0 <= r["MIA"] <= 1.0 and 0.0 <= r["MIA_attack_acc"] <= 1.0
        assert r["seconds"] >= 0.0
    for name, r in rows.items():
        if name != "dense (scored by the pruner)":
            assert r["density"] == pytest.approx(0.1, abs=1e-4)
    assert rows["gold (retrain + re-prune)"]["IoU_gold"] == 1.0
    assert rows["gold (retrain + re-prune)"]["JS_gold_forget"] == pytest.approx(0.0, abs=1e-9)
    assert rows["gold (retrain + re-prune)"]["weight_distance_gold"] == 0.0
    assert rows["gold (retrain + re-prune)"]["RTE"] == pytest.approx(1.0)
    assert rows["gold (retrain + re-prune)"]["compile_seconds"] >= 0.0
    assert rows["original (pruned on D)"]["compile_seconds"] > 0.0  # the first stage compiles
    for r in res["rows"]:  # compilation is part of the timed block, so RTE is never negative
        assert 0.0 <= r["compile_seconds"] <= r["seconds"] and r["RTE"] >= 0.0
    sides = res["topology"]["sides"]  # the topology test over the S = 2 seed pairs
    assert 0.0 <= sides["auc"]["auc"] <= 1.0 and 0.0 < sides["test"]["p_value"] <= 1.0
    assert res["noise_floor"]["pairs"] == 1
    assert "noise floor" in (tmp_path / "results.md").read_text()
    j = res["IoU_original_gold"]
    assert rows["original (pruned on D)"]["IoU_gold"] == pytest.approx(j)
    assert rows["FT + un-prune"]["delta_J"] == pytest.approx(rows["FT + un-prune"]["IoU_gold"] - j)
    assert rows["FT"]["delta_J"] == 0.0  # the baseline keeps the original mask
    assert rows["original (pruned on D)"]["TA"] > 0.5  # it learned something real
    assert res["split"]["train"] == 2000 and res["split"]["forget"] == 200
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(res["rows"]))
    assert "| FT + un-prune |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "config.json").exists() and (tmp_path / "split.json").exists()


def synthetic_cfg(*extra):
    return load_config(None, TINY + ["data.name=synthetic", *extra])


def test_resume_skips_finished_stages_and_gives_the_same_result(tmp_path, monkeypatch):
    cfg = synthetic_cfg()
    first = pipeline.run(cfg, tmp_path, progress=False, say=quiet)
    ctx = pipeline.build_context(cfg, tmp_path, progress=False, say=quiet)
    # the saved original side round-trips bit-exactly, S stacked states
    like = {"dense": ctx.stacked_init(), "sparse": ctx.stacked_init()}
    original, _ = ckpt.load_stage(tmp_path, "sides/original", like)
    again, _ = ckpt.load_stage(tmp_path, "sides/original", like)
    assert runs.num_runs(original["sparse"]) == 2
    for a, b in zip(jax.tree.leaves(original), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)

    # rerun: nothing trains
    calls = []
    real = train_lib.Trainer.run_epochs

    def counting(self, *a, **k):
        calls.append(k.get("desc"))
        return real(self, *a, **k)

    monkeypatch.setattr(train_lib.Trainer, "run_epochs", counting)
    second = pipeline.run(cfg, tmp_path, progress=False, say=quiet)
    assert calls == []
    assert without_time(second["rows"]) == without_time(first["rows"])

    # an unfinished stage (Orbax's temporary directory, never renamed into place) is recomputed,
    # and only that one
    gold = ckpt.stage_dir(tmp_path, "sides/gold")
    os.rename(gold, gold.with_name("gold.orbax-checkpoint-tmp"))
    # ... with the K-run plans the first process picked (plans differ in float rounding), read
    # from the run directory: nothing is timed again, whatever the load now
    assert (tmp_path / "plans.json").exists()

    def no_timing(*a, **k):
        raise AssertionError("a resumed run timed the K-run plans again")

    monkeypatch.setattr(runs, "_measure_plans", no_timing)
    third = pipeline.run(cfg, tmp_path, progress=False, say=quiet)
    assert calls == ["gold dense", "gold sparse"]
    assert without_time(third["rows"]) == without_time(first["rows"])  # deterministic


def test_every_candidate_runs_from_every_seed_and_the_sides_are_what_they_say(tmp_path):
    cfg = synthetic_cfg("evaluate.seeds=3", "unlearn.methods=['FT']")
    ctx = pipeline.build_context(cfg, tmp_path, progress=False, say=quiet)
    sides = pipeline.stage_sides([ctx])[0]
    assert set(sides) == {"original", "gold", "quantity"}
    for tree, meta in sides.values():
        assert runs.num_runs(tree["sparse"]) == 3 and len(meta["history"]) == 3
    split = ctx.split
    for s, r in enumerate(pipeline.side_runs(ctx, "quantity")):
        removed = np.setdiff1d(split.train, r.subset)
        assert removed.size == split.forget.size and not np.isin(removed, split.forget).any()
        assert r.train_cfg.seed == cfg.train.seed + s
    a, b = (np.setdiff1d(split.train, r.subset) for r in pipeline.side_runs(ctx, "quantity")[:2])
    assert not np.array_equal(a, b)  # a different subset per seed
    # seed 0 of the original side is the single pruning run of the main config
    from unprune_jax import prune
    ref = prune.run(ctx.init, ctx.apply_fn, ctx.tx, ctx.dataset, split.train, cfg.train, cfg.prune,
                    ctx.prunable, order_pool=split.train, progress=False)
    np.testing.assert_array_equal(
        np.asarray(jax.tree.leaves(runs.unstack(sides["original"][0]["sparse"])[0].params)[0]),
        np.asarray(jax.tree.leaves(ref.sparse.params)[0]))
    cands = pipeline.stage_candidates(ctx, sides["original"][0])
    assert set(cands) == {("baseline", "FT"), ("unprune", "FT")}
    for states, meta in cands.values():
        assert runs.num_runs(states) == 3 and len(meta["runs"]) == 3


def test_class_wise_quantity_side_removes_another_class():
    from unprune_jax.data import Split

    labels = np.repeat(np.arange(4), 10)
    train = np.arange(40)
    split = Split(train=train, val=np.zeros(0, np.int64), test=np.arange(40, 40),
                  forget=np.arange(10, 20))  # all of class 1
    removed = pipeline.quantity_removed(split, labels, seed=0, s=0)
    assert removed.size == 10 and len(set(labels[removed])) == 1 and labels[removed][0] != 1


def test_run_dir_with_another_config_is_refused(tmp_path):
    pipeline.build_context(synthetic_cfg(), tmp_path, progress=False, say=quiet)
    with pytest.raises(ValueError, match="prune.density"):
        pipeline.build_context(synthetic_cfg("prune.density=0.2"), tmp_path, say=quiet)


@pytest.mark.parametrize(
    "override, message",
    [
        ("prune.density=1.5", "density must be in \\(0, 1\\], got 1.5"),
        ("prune.density=0", "got 0"),
        ("unprune.fraction=0", "fraction"),
        ("unlearn.methods=['FT', 'GAA']", "unknown unlearning method 'GAA'.*Did you mean 'GA'"),
        ("trian.epochs=2", "unknown config key trian.*Did you mean 'train'"),
        ("data.forget_fraction=0.0", "0.0"),
        ("unprune={variant = 'replay', replay_epochs = 9}",
         "replay_epochs 9 is more than the original run's 3 dense epochs"),
        ("prune={method = 'imp', density = 0.1}\nunprune={variant = 'rescore'}", None),
    ],
)
def test_bad_config_gets_a_clear_error(tmp_path, override, message, capsys):
    overrides = [x for o in override.split("\n") for x in ("-o", o)]
    code = cli.main(["run", "-r", str(tmp_path / "r"), "-o", "data.name=synthetic", *overrides,
                     "--no-progress"])
    assert code == 2
    message = message or ("unprune.variant='rescore' re-scores dense weights.*prune.method is "
                          "'imp'")
    assert __import__("re").search(message, capsys.readouterr().err)
    # refused before anything was computed
    assert not (tmp_path / "r" / "stages").exists() or not any((tmp_path / "r" / "stages")
                                                                .iterdir())


def test_missing_data_directory_is_named(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code = cli.main(["run", "-r", str(tmp_path / "r"), "-o", f"data.data_dir='{missing}'"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "dataset-fashion-mnist" in err


def test_cli_list_names_every_method(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("omp", "retrain", "FT", "GA", "small_cnn", "resnet18", "fashion_mnist"):
        assert name in out


@pytest.mark.parametrize("pruner", ["imp", "synflow", "sfp"])
def test_every_pruner_runs_through_the_pipeline(tmp_path, pruner):
    cfg = synthetic_cfg(f"prune.method={pruner}", "prune.rounds=2", "prune.synflow_iterations=5",
                        "prune.density=0.3", "unlearn.methods=['FT']")
    res = pipeline.run(cfg, tmp_path, progress=False, say=quiet)
    rows = {label(r): r for r in res["rows"]}
    assert rows["gold (retrain + re-prune)"]["IoU_gold"] == 1.0
    # the same number of units as the original (filters for sfp, so the weight density may differ)
    assert rows["FT + un-prune"]["density"] == rows["original (pruned on D)"]["density"]
    if pruner == "synflow":  # data-free at initialisation: deleting data cannot change the mask
        assert res["IoU_original_gold"] == 1.0


@pytest.mark.parametrize("variant", ["replay", "rescore"])
def test_dense_side_unpruning_runs_and_resumes_through_the_pipeline(tmp_path, variant):
    """The replay variant's snapshot is kept by the original side (and round-trips through
    Orbax); both dense-side variants, with recovery, run from every seed and resume."""
    cfg = synthetic_cfg("train.epochs=2", "unlearn.methods=['FT']", f"unprune.variant='{variant}'",
                        "unprune.recovery_epochs=1", "unlearn.settings={FT = {epochs = 1}}")
    first = pipeline.run(cfg, tmp_path, progress=False, say=quiet)
    ctx = pipeline.build_context(cfg, tmp_path, progress=False, say=quiet)
    sides = pipeline.stage_sides([ctx])[0]
    tree, meta = sides["original"]
    if variant == "replay":
        assert meta["snapshot_epoch"] == 1 and meta["snapshot_bytes"] > 0
        assert runs.num_runs(tree["snapshot"]) == 2
    else:
        assert "snapshot" not in tree
    cands = pipeline.stage_candidates(ctx, tree)
    info = cands[("unprune", "FT")][1]["runs"]
    assert len(info) == 2 and all(len(r["recovery"]) == 1 for r in info)
    row = {label(r): r for r in first["rows"]}["FT + un-prune"]
    assert row["density"] == pytest.approx(cfg.prune.density, abs=1e-3)
    second = pipeline.run(cfg, tmp_path, progress=False, say=quiet)
    assert without_time(second["rows"]) == without_time(first["rows"])


TWO_DEVICES_SCRIPT = """
import json, sys
from unprune_jax import runs
assert runs.use_cpu_cores(2) == 2
import jax
from unprune_jax import pipeline
from unprune_jax.config import load_config
from unprune_jax.train import Trainer
assert len(jax.devices()) == 2, jax.devices()
cfg = load_config(None, json.loads(sys.argv[2]))
res = pipeline.run(cfg, sys.argv[1], progress=False, say=lambda m: None,
                   trainer=Trainer("spread", progress=False))
print("RESULT" + json.dumps(res["rows"]))
"""


def test_spread_over_two_cpu_devices_gives_the_loops_pipeline_bit_for_bit(tmp_path):
    """One run per core (strategy spread over 2 CPU devices, in a fresh process) computes every
    stage as the loop does on one device: the same rows, to the last digit."""
    import subprocess
    import sys

    overrides = TINY + ["data.name=synthetic"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    res = subprocess.run([sys.executable, "-c", TWO_DEVICES_SCRIPT, str(tmp_path / "spread"),
                          json.dumps(overrides)], env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    spread = json.loads(res.stdout.split("RESULT")[-1])
    loop = pipeline.run(load_config(None, overrides), tmp_path / "loop", progress=False,
                        say=quiet, trainer=train_lib.Trainer("loop", progress=False))
    assert without_time(spread) == json.loads(json.dumps(without_time(loop["rows"])))
