"""The sweep: K pipeline variants in threads, their training loops batched by FitBatcher."""

import threading

import jax
import numpy as np
import pytest

from unprune_jax import optim, pipeline, sweep
from unprune_jax import train as train_lib
from unprune_jax.config import load_config
from unprune_jax.data import synthetic_dataset
from unprune_jax.losses import cross_entropy
from unprune_jax.models import get_model, init_model, make_apply_fn

TINY = [
    "data.name=synthetic", "data.train_size=240", "data.test_size=60",
    "model.name=mlp", "model.kwargs={hidden = [16]}",
    "train.epochs=1", "train.batch_size=32",
    "unlearn.methods=[\"retrain\", \"FT\", \"GA\"]",
    "unlearn.settings={retrain = {epochs = 1}, FT = {epochs = 1}, GA = {epochs = 1}}",
    "evaluate.seeds=2",
]


def quiet(_msg):
    pass


def tiny_mlp(n, seed):
    """A 3-class synthetic pool, the masked step of a tiny MLP, and its initial state."""
    data = synthetic_dataset(n=n, image_shape=(4, 4, 1), num_classes=3, seed=seed)
    model = get_model("mlp", 3, hidden=(8,))
    apply_fn = make_apply_fn(model)
    params, ms = init_model(model, jax.random.PRNGKey(seed), data.x[:1])
    tx = optim.sgd()
    step = train_lib.make_train_step(apply_fn, tx, cross_entropy)
    return data, step, train_lib.TrainState.create(params, ms, tx)


def no_time(rows):
    drop = ("seconds", "RTE", "compile_seconds", "mask_metrics")
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_sweep_equals_separate_runs(tmp_path, strategy):
    cfg = load_config(None, TINY)
    out = pipeline.sweep(cfg, tmp_path / "sweep", forget_fractions=[0.1, 0.25],
                         strategy=strategy, progress=False, say=quiet)
    assert out["variants"] == ["forget0.1", "forget0.25"] and not out["failed"]
    stats = out["batcher"]
    # the original model, its seed runs and the gold runs are batched; the original does not
    # depend on the forget set, so it is computed once for both variants
    assert stats["batched_calls"] >= 1 and stats["computed"] < stats["requests"]
    for frac in (0.1, 0.25):
        vcfg = load_config(None, TINY + [f"data.forget_fraction={frac}"])
        alone = pipeline.run(vcfg, tmp_path / f"alone{frac}", progress=False, say=quiet)
        mine = [r for r in out["rows"] if r["variant"] == f"forget{frac:g}"]
        a, b = no_time(alone["rows"]), no_time([{k: v for k, v in r.items() if k != "variant"}
                                                for r in mine])
        assert [r["model"] for r in a] == [r["model"] for r in b]
        for ra, rb in zip(a, b):
            for key, va in ra.items():
                if isinstance(va, float):
                    tol = 0 if strategy == "loop" else 2e-2
                    assert rb[key] == pytest.approx(va, abs=tol), (frac, ra["model"], key)
                else:
                    assert rb[key] == va, (frac, ra["model"], key)
    md = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "| variant | model |" in md and "forget0.25" in md


def test_batcher_threads_equal_fit_alone():
    data, step, init = tiny_mlp(n=200, seed=0)
    subsets = [np.arange(0, 120), np.arange(50, 200), np.arange(0, 120)]  # the 3rd repeats the 1st
    cfgs = [train_lib.TrainConfig(epochs=2, batch_size=32, lr=lr, seed=s)
            for lr, s in ((0.1, 0), (0.05, 1), (0.1, 0))]
    batcher = sweep.FitBatcher(3, strategy="loop", progress=False)
    got = [None] * 3

    def worker(i):
        train_lib.FIT_HOOK.set(batcher)
        try:
            got[i] = train_lib.fit(init, step, data, subsets[i], cfgs[i], progress=False,
                                   snapshot_epochs=(0,))
        finally:
            batcher.leave()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert batcher.stats == {"requests": 3, "computed": 2, "batched_calls": 1, "alone": 0}
    for i in range(3):
        ref, hist, snaps = train_lib.fit(init, step, data, subsets[i], cfgs[i], progress=False,
                                         snapshot_epochs=(0,))
        state, h, s = got[i]
        for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(state)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert [r["loss"] for r in h] == pytest.approx([r["loss"] for r in hist])
        for a, b in zip(jax.tree.leaves(snaps[0]), jax.tree.leaves(s[0])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_variants_validate():
    cfg = load_config(None, TINY)
    with pytest.raises(ValueError, match="neither"):
        sweep.variants(cfg)
    with pytest.raises(ValueError, match=r"forget fraction must be in \(0, 1\), got 1.5"):
        sweep.variants(cfg, forget_fractions=[0.1, 1.5])
    with pytest.raises(ValueError, match="repeat"):
        sweep.variants(cfg, seeds=[1, 1])
    labels = [l for l, _ in sweep.variants(cfg, seeds=[3, 4])]
    assert labels == ["seed3", "seed4"]
    both = sweep.variants(cfg, forget_fractions=[0.1, 0.2], seeds=[3, 4])
    assert [l for l, _ in both] == ["forget0.1_seed3", "forget0.1_seed4", "forget0.2_seed3",
                                    "forget0.2_seed4"]
    assert [(c.data.forget_fraction, c.data.seed) for _, c in both] == [
        (0.1, 3), (0.1, 4), (0.2, 3), (0.2, 4)]


def test_batcher_batches_loops_that_start_at_a_later_schedule_epoch():
    """SFP and learning-rate rewinding call fit with start_epoch > 0; those batch too."""
    data, step, init = tiny_mlp(n=160, seed=1)
    subsets = [np.arange(0, 90), np.arange(30, 160)]
    cfg = train_lib.TrainConfig(epochs=1, batch_size=32, lr=0.1, milestones=(2,), gamma=0.1)
    batcher = sweep.FitBatcher(2, strategy="vmap", progress=False)
    got = [None] * 2

    def worker(i):
        train_lib.FIT_HOOK.set(batcher)
        try:
            got[i] = train_lib.fit(init, step, data, subsets[i], cfg, start_epoch=2,
                                   progress=False)
        finally:
            batcher.leave()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert batcher.stats["batched_calls"] == 1 and batcher.stats["alone"] == 0
    for i in range(2):
        ref, hist, _ = train_lib.fit(init, step, data, subsets[i], cfg, start_epoch=2,
                                     progress=False)
        state, h, _ = got[i]
        assert [r["epoch"] for r in h] == [3] and h[0]["lr"] == pytest.approx(0.01)
        assert h[0]["loss"] == pytest.approx(hist[0]["loss"], rel=1e-5)
        for a, b in zip(jax.tree.leaves(ref.params), jax.tree.leaves(state.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
