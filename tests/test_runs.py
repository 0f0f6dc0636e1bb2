"""K runs in one call: every strategy equals a plain per-run loop; sharding, memory, no retrace."""

import json
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unprune_jax import checkpoint as ckpt
from unprune_jax import losses, masks, optim, runs
from unprune_jax.data import batch_indices, synthetic_dataset
from unprune_jax.models import get_model, init_model, make_apply_fn
from unprune_jax.train import (
    DivergenceError,
    TrainConfig,
    Trainer,
    TrainState,
    epoch_order,
    fit,
    fit_many,
    make_train_step,
)

K = 3
SIZES = (40, 57, 90)  # different subset sizes → different batch counts per run (batch 16)


def setup(model_name="small_cnn", loss=losses.cross_entropy):
    """A tiny model on synthetic 8×8 data, K states with different inits and masks."""
    ds = synthetic_dataset(n=160, image_shape=(8, 8, 1), n_test=32, seed=0)
    kw = {"widths": (2, 4), "hidden": 8} if model_name == "small_cnn" else {"hidden": (12,)}
    model = get_model(model_name, **kw)
    apply_fn = make_apply_fn(model)
    tx = optim.sgd()
    states = []
    for k in range(K):
        params, ms = init_model(model, jax.random.PRNGKey(k), ds.x[:1])
        scores = jax.tree.map(lambda p, k=k: jax.random.uniform(jax.random.PRNGKey(10 + k),
                                                                  p.shape), params)
        mask = masks.topk_mask(scores, 0.5, masks.prunable_leaves(params))
        states.append(TrainState.create(params, ms, tx, mask, seed=k))
    step = make_train_step(apply_fn, tx, loss)
    rng = np.random.default_rng(0)
    subsets = [np.sort(rng.choice(ds.train_pool, n, replace=False)) for n in SIZES]
    cfgs = [TrainConfig(epochs=2, batch_size=16, lr=lr, momentum=mu, weight_decay=wd, seed=k,
                        milestones=ms_)
            for k, (lr, mu, wd, ms_) in enumerate([(0.05, 0.9, 5e-4, (1,)), (0.1, 0.5, 0.0, ()),
                                                    (0.02, 0.0, 1e-3, (1,))])]
    return ds, step, states, subsets, cfgs


def assert_trees_close(a, b, rtol=2e-5, atol=2e-6):
    chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


def test_stack_unstack_round_trip_and_shape_errors():
    trees = [{"a": jnp.full((2, 3), k, jnp.float32), "b": jnp.int32(k)} for k in range(3)]
    st = runs.stack(trees)
    assert st["a"].shape == (3, 2, 3) and st["b"].shape == (3,)
    np.testing.assert_array_equal(st["b"], [0, 1, 2])
    back = runs.unstack(st)
    assert len(back) == 3 and runs.num_runs(st) == 3
    for t, u in zip(trees, back):
        np.testing.assert_array_equal(t["a"], u["a"])
        assert int(u["b"]) == int(t["b"])
    with pytest.raises(ValueError, match=r"leaf 0 of tree 1 has shape \(2, 4\)"):
        runs.stack([trees[0], {"a": jnp.zeros((2, 4)), "b": jnp.int32(0)}])
    with pytest.raises(ValueError, match="leading sizes"):
        runs.num_runs({"a": jnp.zeros((3, 2)), "b": jnp.zeros((2,))})


def plain_fit(state, step, ds, subset, cfg):
    """A plain reference loop written apart from the library's: the definition every strategy
    (and train.fit) must match."""
    state = state.replace(opt_state=optim.set_hyperparams(
        state.opt_state, momentum=cfg.momentum, weight_decay=cfg.weight_decay))
    history = []
    for epoch in range(cfg.epochs):
        lr = cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
        state = state.replace(opt_state=optim.set_hyperparams(state.opt_state, learning_rate=lr))
        idx, w = batch_indices(epoch_order(subset, cfg.seed, epoch), cfg.batch_size,
                               shuffle=False)
        loss = correct = total = 0.0
        for i, wi in zip(idx, w):
            state, m = step(state, ds.x[i], ds.y[i], wi, {})
            loss += float(m["loss"]) * float(m["weight"])
            correct += float(m["correct"])
            total += float(m["weight"])
        history.append({"epoch": epoch + 1, "lr": lr, "loss": loss / total, "acc": correct / total})
    return state, history


@pytest.fixture(scope="module")
def reference():
    ds, step, states, subsets, cfgs = setup()
    ref = [plain_fit(s, step, ds, sub, c) for s, sub, c in zip(states, subsets, cfgs)]
    return (ds, step, states, subsets, cfgs), [r[0] for r in ref], [r[1] for r in ref]


def test_fit_is_the_plain_loop_exactly(reference):
    (ds, step, states, subsets, cfgs), ref_states, ref_hist = reference
    got, hist, _ = fit(states[1], step, ds, subsets[1], cfgs[1], progress=False)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref_states[1]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [h["loss"] for h in hist] == pytest.approx([h["loss"] for h in ref_hist[1]], rel=1e-6)


@pytest.mark.parametrize("strategy,batch,scan", [
    ("loop", None, False), ("vmap", None, False), ("map", None, False), ("map", 2, False),
    ("vmap", None, True), ("loop", None, True), ("spread", None, False),
])
def test_each_strategy_equals_fit_run_by_run(reference, strategy, batch, scan):
    (ds, step, states, subsets, cfgs), ref_states, ref_hist = reference
    out, hist = fit_many(runs.stack(states), step, ds, subsets, cfgs, strategy=strategy,
                              map_batch_size=batch, progress=False, scan_epoch=scan)
    assert runs.num_runs(out) == K
    for k, single in enumerate(runs.unstack(out)):
        assert_trees_close(single, ref_states[k])
        assert int(single.step) == int(ref_states[k].step) == 2 * -(-SIZES[k] // 16)
        for h, r in zip(hist[k], ref_hist[k], strict=True):
            assert h["epoch"] == r["epoch"] and h["lr"] == pytest.approx(r["lr"])
            assert h["loss"] == pytest.approx(r["loss"], rel=1e-4)
            assert h["acc"] == pytest.approx(r["acc"], abs=1e-6)
    # per-run learning-rate schedules were written into the stacked optimizer state
    np.testing.assert_allclose(out.opt_state.hyperparams["learning_rate"],
                               [0.005, 0.1, 0.002], rtol=1e-6)


def test_k_step_strategies_agree_on_one_step():
    ds, step, states, _, _ = setup("mlp")
    st = runs.stack(states)
    idx = np.arange(K * 16).reshape(K, 16)
    w = np.ones((K, 16), np.float32)
    w[1, 5:] = 0.0  # a partly padded batch in one run
    x, y = ds.x[idx], ds.y[idx]
    ref, ref_m = runs.make_k_step(step, "loop")(st, x, y, w)
    for strategy, b in (("vmap", None), ("map", None), ("map", 2)):
        got, m = runs.make_k_step(step, strategy, b)(st, x, y, w)
        assert_trees_close(got, ref)
        np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-5)
    np.testing.assert_array_equal(ref_m["weight"], [16, 5, 16])


def test_no_recompilation_across_steps_and_calls_of_the_same_shape():
    traces = []

    def counting_ce(logits, y, w, extra, params):
        traces.append(1)
        return losses.cross_entropy(logits, y, w)

    ds, step, states, subsets, cfgs = setup("mlp", loss=counting_ce)
    st = runs.stack(states)
    out, _ = fit_many(st, step, ds, subsets, cfgs, strategy="vmap", progress=False)
    first = len(traces)
    assert first == 1  # the single step traced once, batched as a jaxpr by vmap
    # other subsets (other batch counts), other seeds and lrs, same shapes: nothing retraces
    cfgs2 = [TrainConfig(epochs=1, batch_size=16, lr=0.3, seed=9)] * K
    fit_many(out, step, ds, [s[:20] for s in subsets], cfgs2, strategy="vmap",
                  progress=False)
    fit_many(out, step, ds, subsets, cfgs2, strategy="vmap", progress=False,
                  scan_epoch=True)
    n_scan = len(traces)
    fit_many(out, step, ds, subsets, cfgs, strategy="vmap", progress=False, scan_epoch=True)
    assert len(traces) == n_scan <= first + 1


def test_choose_strategy_never_picks_slower_than_loop():
    loop, vmap, map1, map2 = (runs.Plan("loop"), runs.Plan("vmap"), runs.Plan("map"),
                              runs.Plan("map", 2))
    assert runs.choose_strategy({loop: 1.0, vmap: 0.4, map1: 0.6}) == vmap
    assert runs.choose_strategy({loop: 1.0, vmap: 4.0, map1: 0.8, map2: 0.7}) == map2
    assert runs.choose_strategy({loop: 1.0, vmap: 2.0, map1: 1.5}) == loop
    # within the noise margin the loop stays
    assert runs.choose_strategy({loop: 1.0, vmap: 0.97}) == loop
    assert runs.choose_strategy({loop: 1.0, vmap: 0.97}, margin=0.0) == vmap
    with pytest.raises(ValueError, match="needs a 'loop' timing"):
        runs.choose_strategy({vmap: 1.0})


def test_auto_times_each_candidate_once_and_caches_the_pick(monkeypatch):
    ds, step, states, subsets, cfgs = setup("mlp")
    timed = []

    def fake_measure(plans, *args):
        timed.extend(plans)
        return {p: {"loop": 1.0, "vmap": 3.0, "map": 0.5}[p.strategy] for p in plans}

    monkeypatch.setattr(runs, "_measure_plans", fake_measure)
    st = runs.stack(states)
    idx = np.arange(K * 16).reshape(K, 16)
    args = (st, ds.x[idx], ds.y[idx], np.ones((K, 16), np.float32))
    cache = {}
    assert runs.resolve_strategy(step, *args, cache=cache) == runs.Plan("map")
    assert runs.resolve_strategy(step, *args, cache=cache) == runs.Plan("map")
    assert sorted(p.strategy for p in timed) == ["loop", "map", "vmap"]
    (calibration,) = cache.values()
    assert calibration == {"plan": {"strategy": "map", "map_batch_size": None},
                           "timings": {"loop": 1.0, "vmap": 3.0, "map": 0.5}}
    assert runs.resolve_strategy(step, *args) == runs.Plan("map")  # no cache: measured again
    assert len(timed) == 6


def test_a_run_directory_keeps_auto_picks_so_a_resume_takes_the_same_plan(tmp_path, monkeypatch):
    """Plans differ in float rounding: a recomputed stage must take the first process's plan,
    not one re-timed under other load. A fresh trainer on the same run directory reads it."""
    ds, step, states, subsets, cfgs = setup("mlp")
    measured = {"loop": 1.0, "vmap": 3.0, "map": 0.5}
    timed = []

    def fake_measure(plans, *args):
        timed.extend(plans)
        return {p: measured[p.strategy] for p in plans}

    monkeypatch.setattr(runs, "_measure_plans", fake_measure)
    st = runs.stack(states)
    idx = np.arange(K * 16).reshape(K, 16)
    args = (st, ds.x[idx], ds.y[idx], np.ones((K, 16), np.float32), {})
    first = Trainer(progress=False)
    first.keep_plans_in(tmp_path)
    assert first._plan(step, *args, None) == runs.Plan("map")
    assert (tmp_path / "plans.json").exists() and len(timed) == 3
    measured.update(vmap=0.1)  # another process, other load: vmap would now win a timing
    second = Trainer(progress=False)
    second.keep_plans_in(tmp_path)
    assert second._plan(step, *args, None) == runs.Plan("map") and len(timed) == 3
    # a plans file edited by hand is refused by its checksum, with the file named
    (tmp_path / "plans.json").write_text("{}")
    with pytest.raises(ckpt.CheckpointError, match="plans.json"):
        Trainer(progress=False).keep_plans_in(tmp_path)


def test_memory_report_counts_bytes_and_grows_with_k():
    rep = runs.memory_report(lambda a, b: a * 2.0 + b.sum(), jnp.zeros((100, 10), jnp.float32),
                             jnp.zeros((7,), jnp.int32))
    assert rep["argument"] == 4000 + 28 and rep["output"] == 4000 and rep["alias"] == 0
    assert rep["state"] == 4000 and rep["needed"] == 8028 + rep["temp"]
    ds, step, states, _, _ = setup("mlp")
    need = {}
    for k in (1, 2, 3):
        st = runs.stack(states[:k])
        idx = np.arange(k * 16).reshape(k, 16)
        need[k] = runs.strategy_memory(step, "vmap", st, ds.x[idx], ds.y[idx],
                                       np.ones((k, 16), np.float32))
    state_bytes = runs.tree_bytes(states[0])
    # each extra run adds at least its state (in and out), and far less than a whole new program
    assert need[2] - need[1] >= 2 * state_bytes
    assert need[3] - need[2] == pytest.approx(need[2] - need[1], rel=0.25)


def test_memory_limit_falls_back_to_map_and_explicit_request_fails_early(monkeypatch):
    ds, step, states, subsets, cfgs = setup()  # conv activations dominate: map saves memory
    st = runs.stack(states)
    idx = np.arange(K * 16).reshape(K, 16)
    x, y, w = ds.x[idx], ds.y[idx], np.ones((K, 16), np.float32)
    need_vmap = runs.strategy_memory(step, "vmap", st, x, y, w)
    need_map1 = runs.strategy_memory(step, "map", st, x, y, w, map_batch_size=1)
    need_loop = runs.strategy_memory(step, "loop", st, x, y, w)
    assert need_map1 < need_vmap
    limit = max(need_map1, need_loop)
    assert limit < need_vmap

    with pytest.raises(runs.RunsMemoryError, match=rf"needs {need_vmap:,} bytes.*{limit:,} are"):
        fit_many(st, step, ds, subsets, cfgs, strategy="vmap", memory_limit_bytes=limit,
                      progress=False)
    with pytest.raises(MemoryError, match="even the loop needs"):
        fit_many(st, step, ds, subsets, cfgs, strategy="auto", memory_limit_bytes=100,
                      progress=False)

    fake = {"loop": 1.0, "map": 0.1, "vmap": 0.01}
    monkeypatch.setattr(runs, "_measure_plans",
                        lambda plans, *a: {p: fake[p.strategy] for p in plans})
    plan = runs.resolve_strategy(step, st, x, y, w, memory_limit_bytes=limit)
    assert plan.strategy == "map"  # vmap would be fastest, but it does not fit
    assert runs.strategy_memory(step, "map", st, x, y, w,
                                map_batch_size=plan.map_batch_size) <= limit
    b = runs.largest_fitting_map_batch(step, st, x, y, w, limit)
    assert plan.map_batch_size in (b, None)
    out, _ = fit_many(st, step, ds, subsets, cfgs, memory_limit_bytes=limit, progress=False)
    ref, _ = fit_many(st, step, ds, subsets, cfgs, strategy="loop", progress=False)
    assert_trees_close(out, ref)


def test_divergence_names_the_run_and_keeps_the_epoch_start():
    ds, step, states, subsets, cfgs = setup("mlp", loss=losses.negative_cross_entropy)
    cfgs = [TrainConfig(epochs=3, batch_size=16, lr=lr, max_loss=m)
            for lr, m in ((0.01, None), (5.0, 20.0), (0.01, None))]
    with pytest.raises(DivergenceError, match=r"run 1: loss .* \(max_loss=20.0\)") as e:
        fit_many(runs.stack(states), step, ds, subsets, cfgs, strategy="vmap",
                      progress=False)
    assert runs.num_runs(e.value.state) == K
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(e.value.state.params))
    assert len(e.value.history) == K


def test_bad_inputs_are_named():
    ds, step, states, subsets, cfgs = setup("mlp")
    st = runs.stack(states)
    with pytest.raises(ValueError, match=r"same batch_size, got \[16, 32, 16\]"):
        fit_many(st, step, ds, subsets,
                      [cfgs[0], TrainConfig(epochs=2, batch_size=32), cfgs[2]], progress=False)
    with pytest.raises(ValueError, match="2 subsets for K=3"):
        fit_many(st, step, ds, subsets[:2], cfgs, progress=False)
    with pytest.raises(ValueError, match="unknown strategy 'pmap'"):
        fit_many(st, step, ds, subsets, cfgs, strategy="pmap", progress=False)
    with pytest.raises(ValueError, match="run 1 has no examples"):
        fit_many(st, step, ds, [subsets[0], [], subsets[2]], cfgs, progress=False)


SHARDED_SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, os.getcwd())
    import jax, numpy as np
    from tests.test_runs import setup, K
    from unprune_jax import runs
    from unprune_jax.train import Trainer, fit_many
    assert len(jax.devices()) == 8, jax.devices()
    ds, step, states, subsets, cfgs = setup("mlp")
    st = runs.stack(states)
    ref, _ = fit_many(st, step, ds, subsets, cfgs, strategy="loop", progress=False)
    f64 = lambda a: np.asarray(a, np.float64)
    diff = lambda a, b: max(float(np.max(np.abs(f64(x) - f64(y))))
                            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    out = {}
    for name, mesh, scan in (("runs8_scan", runs.make_mesh(runs=8), True),
                             ("runs4_data2", runs.make_mesh(runs=4, data=2), False)):
        got, _ = fit_many(st, step, ds, subsets, cfgs, strategy="shard", mesh=mesh,
                               progress=False, scan_epoch=scan)
        out[name] = [diff(got, ref), runs.num_runs(got),
                     len(got.params["head"]["kernel"].sharding.device_set)]
    # one run, data-parallel over 8 devices, against the plain step
    dp = runs.make_data_parallel_step(step, runs.make_mesh(runs=1, data=8))
    s1 = s2 = states[0]
    for b in range(3):
        i = np.arange(16 * b, 16 * b + 16)
        s1, m1 = step(s1, ds.x[i], ds.y[i], np.ones(16, np.float32), {})
        s2, m2 = dp(s2, ds.x[i], ds.y[i], np.ones(16, np.float32))
    out["data8"] = [diff(s1, s2), 1, len(s2.params["head"]["kernel"].sharding.device_set)]
    # one run per device: the loop's programs on 3 of the 8 devices, with per-batch extras and
    # snapshots; the result comes back stacked on device 0 and equals the loop bit for bit
    const = {"c": np.zeros((K, 2), np.float32)}
    for name, scan, kw in (("spread", False, {"constants": const}), ("spread_scan", True, {})):
        tr = Trainer("spread", progress=False, scan_epoch=scan)
        got, _, snaps = tr.fit_many(st, step, ds, subsets, cfgs, snapshot_epochs=(1,), **kw)
        out[name] = [diff(got, ref), runs.num_runs(got),
                     len(got.params["head"]["kernel"].sharding.device_set)]
        out[name + "_bitwise"] = all(np.array_equal(a, b) for a, b in
                                     zip(jax.tree.leaves(got), jax.tree.leaves(ref)))
        out[name + "_snap"] = [runs.num_runs(snaps[1]), 1]
    seen = {}
    runs.resolve_strategy(step, st, ds.x[np.zeros((K, 16), int)], np.zeros((K, 16), np.int32),
                          np.ones((K, 16), np.float32), cache=seen)
    out["auto_candidates"] = sorted(next(iter(seen.values()))["timings"])
    out["cores_after_start"] = runs.use_cpu_cores()
    try:
        runs.use_cpu_cores(2)
    except ValueError as e:
        out["two_refused"] = str(e)
    print("RESULT" + json.dumps(out))
""")


def test_sharded_over_8_simulated_devices_equals_unsharded():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.split("RESULT")[-1])
    for name in ("runs8_scan", "runs4_data2", "data8", "spread", "spread_scan"):
        d, k, _ = out[name]
        assert d < 1e-5, (name, d)
        assert k == (1 if name == "data8" else K)
    # the K runs really were laid over several devices, K=3 padded to the runs axis
    assert out["runs8_scan"][2] == 8 and out["runs4_data2"][2] == 8 and out["data8"][2] == 8
    # spread: the same programs on other devices, results back on one device, bit for bit
    assert out["spread"][2] == out["spread_scan"][2] == 1
    assert out["spread_bitwise"] and out["spread_scan_bitwise"]
    assert out["spread_snap"] == out["spread_scan_snap"] == [K, 1]
    assert out["auto_candidates"] == ["loop", "map", "spread", "vmap"]
    assert out["cores_after_start"] == 8  # JAX had started: the count stays
    assert out["two_refused"].startswith("2 CPU devices asked for, but JAX has 8")


def test_use_cpu_cores_checks_n_and_leaves_a_started_jax_alone():
    jax.devices()  # JAX has started: the count is fixed
    n = len(jax.devices("cpu"))
    assert runs.use_cpu_cores() == n and runs.use_cpu_cores(n) == n
    with pytest.raises(ValueError, match=f"{n + 3} CPU devices asked for, but JAX has {n}"):
        runs.use_cpu_cores(n + 3)  # an explicit count is refused, not ignored
    assert len(jax.devices("cpu")) == n
    for bad, msg in ((0, "n=0 must be >= 1"), (-1, "n=-1 must be >= 1"),
                     (1.5, "must be an int, got 1.5"), (True, "must be an int, got True"),
                     ("2", "must be an int, got '2'")):
        with pytest.raises(ValueError, match=msg):
            runs.use_cpu_cores(bad)
