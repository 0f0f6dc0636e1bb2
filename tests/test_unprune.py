"""Un-pruning (Algorithm 1) against a numpy reference, the variants beyond it against exact
facts (replaying every epoch is the gold standard; re-scoring unchanged dense weights keeps the
mask), and the gold standard's determinism."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unprune_jax import masks, optim, prune, runs, unlearn
from unprune_jax.data import synthetic_dataset
from unprune_jax.models import get_model, init_model, make_apply_fn
from unprune_jax.train import TrainConfig, Trainer, TrainState
from unprune_jax.unprune import REGROW_SCORES, Origin, UnpruneConfig, regrow_scores, unprune

PCFG = prune.PruneConfig(density=0.2)


def tiny_mlp(seed: int):
    """A synthetic dataset and a small MLP at θ_0: ``(ds, apply_fn, tx, init, flags)``."""
    ds = synthetic_dataset(n=200, n_test=40, seed=seed)
    model = get_model("mlp", hidden=(12, 8))
    params0, ms = init_model(model, jax.random.PRNGKey(0), ds.x[:1])
    tx = optim.sgd()
    return ds, make_apply_fn(model), tx, TrainState.create(params0, ms, tx), \
        masks.prunable_leaves(params0)


@pytest.fixture(scope="module")
def setup():
    ds, apply_fn, tx, init, flags = tiny_mlp(1)
    params0 = init.params
    rng = np.random.default_rng(0)
    trained = jax.tree.map(lambda p: p + 0.3 * rng.normal(size=p.shape).astype(np.float32),
                           params0)
    mask = masks.topk_mask(jax.tree.map(jnp.abs, trained), 0.2, flags)  # LWM
    state = init.with_mask(mask, tx, params=trained)
    dense = jax.tree.map(lambda p: p + 0.1 * rng.normal(size=p.shape).astype(np.float32), trained)
    task = unlearn.UnlearnTask(apply_fn, tx, ds, np.arange(0, 140), np.arange(140, 160), init,
                               progress=False)
    return dict(ds=ds, task=task, state=state, dense=dense, flags=flags, init=init)


@pytest.fixture(autouse=True, scope="module")
def identity_method():
    """A no-op unlearner, registered only while these tests run."""
    unlearn.register("_identity_for_tests", TrainConfig(epochs=0), "returns the state")(
        lambda state, task, cfg: (state, {"history": []})
    )
    yield
    unlearn.REGISTRY.unregister("_identity_for_tests")


def flat(tree, flags):
    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf, f in
                           zip(jax.tree.leaves(tree), jax.tree.leaves(flags)) if f])


def numpy_unprune_round(theta, mask, dense, theta0, fraction, density):
    """Reference for one round with an identity unlearner: regrow by |dense|, θ_0, re-prune."""
    pruned = ~mask
    r = int(round(fraction * pruned.sum()))
    cand = np.where(pruned, np.abs(dense), -np.inf)
    revived = np.zeros_like(mask)
    revived[np.argsort(-cand, kind="stable")[:r]] = True
    theta = np.where(revived, theta0, theta * mask)
    k = int(round(density * mask.size))
    keep = np.zeros_like(mask)
    keep[np.argsort(-np.abs(theta), kind="stable")[:k]] = True
    return theta * keep, keep, revived


@pytest.mark.parametrize("fraction", [0.05, 0.3, 1.0])
def test_one_round_with_identity_unlearner_matches_numpy(setup, fraction):
    s = setup
    cfg = UnpruneConfig(fraction=fraction, rounds=1)
    out, info = unprune(s["state"], s["task"], "_identity_for_tests", None, cfg,
                        dense_params=s["dense"], prune_cfg=PCFG, prunable=s["flags"])
    theta_ref, keep_ref, revived = numpy_unprune_round(
        flat(s["state"].params, s["flags"]), flat(s["state"].mask, s["flags"]),
        flat(s["dense"], s["flags"]), flat(s["init"].params, s["flags"]), fraction, 0.2)
    np.testing.assert_array_equal(flat(out.mask, s["flags"]), keep_ref)
    np.testing.assert_array_equal(flat(out.params, s["flags"]), theta_ref)
    r = info["rounds"][0]
    n = keep_ref.size
    assert r["density"] == int(round(0.2 * n)) / n
    assert r["grown_density"] == pytest.approx((flat(s["state"].mask, s["flags"]).sum()
                                                + revived.sum()) / n)
    # unprunable leaves (biases, head) pass through untouched
    np.testing.assert_array_equal(out.params["head"]["kernel"], s["state"].params["head"]["kernel"])


def test_random_reinit_uses_the_given_draw_scaled(setup):
    s = setup
    fresh = jax.tree.map(lambda p: jnp.full_like(p, 1e-6), s["init"].params)  # tiny: re-pruned
    cfg = UnpruneConfig(fraction=0.5, reinit="random", random_scale=2.0)
    out, _ = unprune(s["state"], s["task"], "_identity_for_tests", None, cfg,
                     dense_params=s["dense"], prune_cfg=PCFG, prunable=s["flags"],
                     random_params=fresh)
    # revived entries got 2e-6, below every trained weight, so re-pruning restores the mask
    np.testing.assert_array_equal(flat(out.mask, s["flags"]), flat(s["state"].mask, s["flags"]))
    with pytest.raises(ValueError, match="random_params"):
        unprune(s["state"], s["task"], "_identity_for_tests", None, cfg,
                dense_params=s["dense"], prune_cfg=PCFG, prunable=s["flags"])


def test_rounds_keep_exact_density_and_masked_weights_zero_with_ft(setup):
    s = setup
    cfg = UnpruneConfig(fraction=0.2, rounds=3)
    out, info = unprune(s["state"], s["task"], "FT", TrainConfig(epochs=1, lr=0.05,
                                                                 batch_size=32), cfg,
                        dense_params=s["dense"], prune_cfg=PCFG, prunable=s["flags"])
    assert len(info["rounds"]) == 3
    kept, total = masks.count(out.mask, s["flags"])
    assert kept == int(round(0.2 * total))
    for p, m in zip(jax.tree.leaves(out.params), jax.tree.leaves(out.mask)):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0)


@pytest.mark.parametrize("bad", [dict(fraction=0.0), dict(fraction=1.5), dict(rounds=0),
                                 dict(reinit="zeros"), dict(regrow_score="snip")])
def test_bad_unprune_options_are_named(bad):
    key, value = next(iter(bad.items()))
    with pytest.raises(ValueError, match=str(value)):
        UnpruneConfig(**bad)


def test_unknown_unprune_options_list_the_registered_ones_and_suggest_the_closest():
    with pytest.raises(ValueError, match=r"unknown unprune.regrow_score 'gradiant'; known: "
                       r"\['dense', 'fisher', 'gradient', 'random', 'theta0'\]\. "
                       r"Did you mean 'gradient'"):
        UnpruneConfig(regrow_score="gradiant")
    with pytest.raises(ValueError, match=r"unknown unprune.reinit 'theta_0'.*'theta0'"):
        UnpruneConfig(reinit="theta_0")
    with pytest.raises(ValueError, match=r"unknown unprune.reprune_score 'magnitud'.*'magnitude'"):
        UnpruneConfig(reprune_score="magnitud")


def test_a_new_regrow_score_is_one_registration(setup):
    s = setup
    REGROW_SCORES.register("_ones_for_tests", "every entry scores 1",
                           lambda cfg, task, state, dense: jax.tree.map(jnp.ones_like, dense))
    try:
        cfg = UnpruneConfig(regrow_score="_ones_for_tests")  # validates
        got = regrow_scores(cfg, s["task"], s["state"], s["dense"])
        chex.assert_trees_all_equal(got, jax.tree.map(jnp.ones_like, s["dense"]))
    finally:
        REGROW_SCORES.unregister("_ones_for_tests")
    with pytest.raises(ValueError, match="unknown unprune.regrow_score '_ones_for_tests'"):
        UnpruneConfig(regrow_score="_ones_for_tests")


def test_unknown_method_suggests_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'FT'"):
        unlearn.get("ft")


def test_gold_order_on_the_full_set_reproduces_the_original_pipeline(setup):
    """Gold's ordering machinery adds nothing when nothing is deleted: same mask, same weights."""
    s = setup
    t = s["task"]
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05)
    train = np.arange(160)
    run = lambda pcfg, **kw: prune.run(s["init"], t.apply_fn, t.tx, s["ds"], train, cfg, pcfg,
                                       s["flags"], progress=False, **kw)
    a, b = run(PCFG), run(PCFG, order_pool=train)
    chex.assert_trees_all_equal(a.sparse, b.sparse)
    assert masks.density(a.sparse.mask, s["flags"]) == pytest.approx(0.2, abs=1e-3)
    rewound = run(dataclasses.replace(PCFG, rewind_epoch=1))
    assert rewound.history["sparse"][0]["epoch"] == 2  # learning-rate schedule rewound to epoch 1


def test_structured_unpruning_regrows_and_reprunes_whole_filters():
    ds = synthetic_dataset(n=160, n_test=32, seed=2)
    model = get_model("small_cnn", widths=(4, 8), hidden=16)
    apply_fn = make_apply_fn(model)
    params0, ms = init_model(model, jax.random.PRNGKey(0), ds.x[:1])
    tx = optim.sgd()
    init = TrainState.create(params0, ms, tx)
    flags = masks.prunable_leaves(params0)
    pcfg = prune.PruneConfig(method="sfp", density=0.5, sfp_prune_at_init=False)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05)
    res = prune.run(init, apply_fn, tx, ds, np.arange(128), cfg, pcfg, flags, progress=False)
    task = unlearn.UnlearnTask(apply_fn, tx, ds, np.arange(0, 110), np.arange(110, 128), init,
                               progress=False)
    out, info = unprune(res.sparse, task, "FT", cfg, UnpruneConfig(fraction=1.0), dense_params=
                        res.dense.params, prune_cfg=pcfg, prunable=flags)
    assert info["rounds"][0]["grown_density"] == 1.0  # all pruned filters revived
    for name, width in (("conv0", 4), ("conv1", 8)):
        k = np.asarray(out.mask[name]["kernel"]).reshape(-1, width)
        assert np.all(k.all(0) | ~k.any(0)) and k.all(0).sum() == width // 2
    assert np.asarray(out.mask["fc"]["kernel"]).all()  # dense kernels are not filter-pruned


@pytest.fixture
def capture_method():
    """An unlearner that records the state it was given (the model right after re-init)."""
    seen = []
    unlearn.register("_capture_for_tests", TrainConfig(epochs=0), "records its input")(
        lambda state, task, cfg: (seen.append(state) or state, {"history": []})
    )
    yield seen
    unlearn.REGISTRY.unregister("_capture_for_tests")


def revived_entries(setup, cfg, seen):
    s = setup
    unprune(s["state"], s["task"], "_capture_for_tests", None, cfg, dense_params=s["dense"],
            prune_cfg=PCFG, prunable=s["flags"])
    grown = flat(seen[-1].mask, s["flags"])
    return grown & ~flat(s["state"].mask, s["flags"]), flat(seen[-1].params, s["flags"])


def top_pruned(score, mask, r):
    cand = np.where(mask, -np.inf, score)
    out = np.zeros(mask.shape, bool)
    out[np.argsort(-cand, kind="stable")[:r]] = True
    return out


@pytest.mark.parametrize("regrow", ["dense", "theta0", "gradient"])
def test_each_regrow_score_revives_its_top_entries_at_theta0(setup, capture_method, regrow):
    s = setup
    cfg = UnpruneConfig(fraction=0.25, regrow_score=regrow, gradient_examples=64)
    revived, params = revived_entries(setup, cfg, capture_method)
    mask = flat(s["state"].mask, s["flags"])
    if regrow == "dense":
        score = np.abs(flat(s["dense"], s["flags"]))
    elif regrow == "theta0":
        score = np.abs(flat(s["init"].params, s["flags"]))
    else:
        score = flat(regrow_scores(cfg, s["task"], s["state"], s["dense"]), s["flags"])
    np.testing.assert_array_equal(revived, top_pruned(score, mask, round(0.25 * (~mask).sum())))
    # before unlearning, revived entries hold θ_0 bit-exactly and the rest is untouched
    theta0, before = flat(s["init"].params, s["flags"]), flat(s["state"].params, s["flags"])
    np.testing.assert_array_equal(params[revived], theta0[revived])
    np.testing.assert_array_equal(params[~revived], before[~revived])


def test_gradient_regrow_score_is_snip_on_retained_data(setup):
    from unprune_jax import scores
    from unprune_jax.unprune import retained_batch
    s = setup
    cfg = UnpruneConfig(regrow_score="gradient", gradient_examples=50, seed=3)
    x, y = retained_batch(s["task"], cfg)
    assert len(x) == 50 and np.isin(y, s["ds"].y).all()
    got = regrow_scores(cfg, s["task"], s["state"], s["dense"])
    ref = scores.snip(s["dense"], s["state"].model_state, s["task"].apply_fn, x, y)
    chex.assert_trees_all_equal(got, ref)


def test_random_regrow_is_seeded_and_exact(setup, capture_method):
    a, _ = revived_entries(setup, UnpruneConfig(fraction=0.3, regrow_score="random", seed=1),
                           capture_method)
    b, _ = revived_entries(setup, UnpruneConfig(fraction=0.3, regrow_score="random", seed=1),
                           capture_method)
    c, _ = revived_entries(setup, UnpruneConfig(fraction=0.3, regrow_score="random", seed=2),
                           capture_method)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    mask = flat(setup["state"].mask, setup["flags"])
    assert a.sum() == round(0.3 * (~mask).sum())


def test_gradient_reprune_keeps_the_top_retained_gradient_scores(setup):
    from unprune_jax import scores
    from unprune_jax.unprune import retained_batch
    s = setup
    cfg = UnpruneConfig(fraction=0.5, reprune_score="gradient", gradient_examples=64)
    out, _ = unprune(s["state"], s["task"], "_identity_for_tests", None, cfg,
                     dense_params=s["dense"], prune_cfg=PCFG, prunable=s["flags"])
    # rebuild the regrown state as the identity unlearner returned it
    grown = masks.regrow_mask(s["state"].mask, scores.magnitude(s["dense"]), 0.5, s["flags"])
    revived = jax.tree.map(lambda g, m: g & ~m, grown, s["state"].mask)
    from unprune_jax.unprune import reinit_revived
    mid = s["state"].with_mask(grown, s["task"].tx,
                               reinit_revived(s["state"].params, revived, s["init"].params))
    x, y = retained_batch(s["task"], cfg)
    sc = scores.snip(mid.params, mid.model_state, s["task"].apply_fn, x, y, mask=mid.mask)
    ref = masks.topk_mask(sc, 0.2, s["flags"])
    chex.assert_trees_all_equal(out.mask, ref)


# --- the variants beyond Algorithm 1 ---------------------------------------------------------


@pytest.fixture(scope="module")
def pruned_run():
    """An OMP run (3 dense epochs, snapshots kept after every epoch) and its gold standard."""
    ds, apply_fn, tx, init, flags = tiny_mlp(3)
    train, retain, forget = np.arange(160), np.arange(0, 140), np.arange(140, 160)
    tcfg = TrainConfig(epochs=3, batch_size=32, lr=0.05)
    res = prune.run_many(runs.stack([init]), apply_fn, tx, ds, [train], [tcfg], [PCFG], flags,
                         order_pool=train, keep_epochs=(0, 2, 3),
                         trainer=Trainer(progress=False))
    gold = prune.run_many(runs.stack([init]), apply_fn, tx, ds, [retain], [tcfg], [PCFG], flags,
                          order_pool=train, trainer=Trainer(progress=False))
    task = unlearn.UnlearnTask(apply_fn, tx, ds, retain, forget, init, progress=False)
    return dict(res=res, gold=gold, task=task, flags=flags, tcfg=tcfg, train=train)


def origin_of(r, snapshot_epoch=None):
    res = r["res"]
    return Origin(dense=res.dense, train_cfgs=(r["tcfg"],), order_pool=r["train"],
                  snapshot=None if snapshot_epoch is None else res.snapshots[snapshot_epoch],
                  snapshot_epoch=snapshot_epoch)


def test_kept_snapshots_are_the_dense_trajectory(pruned_run):
    res = pruned_run["res"]
    chex.assert_trees_all_equal(res.snapshots[3].params, res.dense.params)
    chex.assert_trees_all_equal(res.snapshots[0].params, runs.stack([pruned_run["task"].init])
                                .params)
    with pytest.raises(ValueError, match="keep_epochs.*'snip' trains no dense model"):
        prune.run_many(runs.stack([pruned_run["task"].init]), pruned_run["task"].apply_fn,
                       pruned_run["task"].tx, pruned_run["task"].dataset, [pruned_run["train"]],
                       [pruned_run["tcfg"]], [dataclasses.replace(PCFG, method="snip")],
                       pruned_run["flags"], keep_epochs=(1,))


def test_replay_of_every_epoch_is_the_gold_standard(pruned_run):
    """Replaying all E dense epochs on D_r from θ_0 in the original order is the gold standard's
    dense run: its mask is the gold mask, exactly."""
    r = pruned_run
    cfg = UnpruneConfig(variant="replay", replay_epochs=3)
    out, info = unprune(r["res"].sparse, r["task"], "_identity_for_tests", None, cfg,
                        origin=origin_of(r, 0), prune_cfg=PCFG, prunable=r["flags"])
    gold_mask = prune.select(prune.reprune_scores(runs.unstack(r["gold"].dense)[0].params, PCFG),
                             0.2, PCFG, r["flags"])
    chex.assert_trees_all_equal(runs.unstack(out)[0].mask, gold_mask)
    chex.assert_trees_all_equal(runs.unstack(out)[0].mask, runs.unstack(r["gold"].sparse)[0].mask)
    assert info["runs"][0]["density"] == pytest.approx(0.2, abs=1e-3)


def test_replay_refuses_a_snapshot_from_another_epoch(pruned_run):
    r = pruned_run
    with pytest.raises(ValueError, match="needs the dense state after epoch 2 of 3; the snapshot "
                                         "is from epoch 0"):
        unprune(r["res"].sparse, r["task"], "_identity_for_tests", None,
                UnpruneConfig(variant="replay", replay_epochs=1), origin=origin_of(r, 0),
                prune_cfg=PCFG, prunable=r["flags"])
    with pytest.raises(ValueError, match="needs the original runs' dense snapshot"):
        unprune(r["res"].sparse, r["task"], "_identity_for_tests", None,
                UnpruneConfig(variant="replay"), origin=origin_of(r), prune_cfg=PCFG,
                prunable=r["flags"])
    with pytest.raises(ValueError, match="replay_epochs 4 is more than the original run's 3"):
        UnpruneConfig(variant="replay", replay_epochs=4).snapshot_epoch(3)


def test_rescore_with_an_identity_dense_method_keeps_the_original_mask(pruned_run):
    """OMP's mask is the top-d of |θ_dense|: re-scoring θ_dense unchanged gives it back."""
    r = pruned_run
    cfg = UnpruneConfig(variant="rescore", dense_method="_identity_for_tests")
    out, info = unprune(r["res"].sparse, r["task"], "_identity_for_tests", None, cfg,
                        origin=origin_of(r), prune_cfg=PCFG, prunable=r["flags"])
    chex.assert_trees_all_equal((out.params, out.mask),
                                (r["res"].sparse.params, r["res"].sparse.mask))
    assert info["runs"][0]["changed_vs_original"] == 0


def test_rescore_installs_the_new_mask_keeping_kept_weights_and_reviving_from_theta0(pruned_run):
    r = pruned_run
    cfg = UnpruneConfig(variant="rescore", dense_method="FT")
    dense_cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05)
    out, info = unprune(r["res"].sparse, r["task"], "_identity_for_tests", None, cfg,
                        origin=origin_of(r), prune_cfg=PCFG, prunable=r["flags"],
                        dense_method_cfg=dense_cfg)
    new_dense, _ = unlearn.run("FT", r["res"].dense, r["task"], dense_cfg)
    want = prune.select(prune.reprune_scores(runs.unstack(new_dense)[0].params, PCFG), 0.2, PCFG,
                        r["flags"])
    got, old = runs.unstack(out)[0], runs.unstack(r["res"].sparse)[0]
    chex.assert_trees_all_equal(got.mask, want)
    f = r["flags"]
    m_new, m_old = flat(got.mask, f), flat(old.mask, f)
    assert 0 < info["runs"][0]["changed_vs_original"] and m_new.sum() == m_old.sum()
    theta, theta_old, theta0 = (flat(t, f) for t in (got.params, old.params,
                                                     r["task"].init.params))
    np.testing.assert_array_equal(theta[m_new & m_old], theta_old[m_new & m_old])
    np.testing.assert_array_equal(theta[m_new & ~m_old], theta0[m_new & ~m_old])
    assert np.all(theta[~m_new] == 0)


def test_recovery_trains_under_the_final_mask_and_keeps_pruned_weights_zero(pruned_run):
    r = pruned_run
    cfg = UnpruneConfig(variant="algorithm1", fraction=0.3, recovery_epochs=2, recovery_lr=0.02)
    out, info = unprune(r["res"].sparse, r["task"], "_identity_for_tests", None, cfg,
                        origin=origin_of(r), prune_cfg=PCFG, prunable=r["flags"])
    plain, _ = unprune(r["res"].sparse, r["task"], "_identity_for_tests", None,
                       dataclasses.replace(cfg, recovery_epochs=0), origin=origin_of(r),
                       prune_cfg=PCFG, prunable=r["flags"])
    chex.assert_trees_all_equal(out.mask, plain.mask)
    assert [h["lr"] for h in info["runs"][0]["recovery"]] == pytest.approx([0.02, 0.02])
    for p, m in zip(jax.tree.leaves(out.params), jax.tree.leaves(out.mask)):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0)
    assert not np.array_equal(flat(out.params, r["flags"]), flat(plain.params, r["flags"]))
    with pytest.raises(ValueError, match="recovery_epochs needs origin"):
        unprune(runs.unstack(r["res"].sparse)[0], r["task"], "_identity_for_tests", None, cfg,
                dense_params=runs.unstack(r["res"].dense)[0].params, prune_cfg=PCFG,
                prunable=r["flags"])


def test_dense_side_variants_refuse_pruners_they_cannot_rerun_and_misstacked_origins(pruned_run):
    """Re-scoring is the pruner's mask only for one-shot selections on stored dense weights: IMP
    (iterative) and pruning at initialisation are refused, not silently approximated."""
    r = pruned_run
    for variant, method in (("rescore", "imp"), ("rescore", "snip"), ("replay", "sfp")):
        with pytest.raises(ValueError, match=f"variant='{variant}'.*prune.method is '{method}'"):
            unprune(r["res"].sparse, r["task"], "_identity_for_tests", None,
                    UnpruneConfig(variant=variant), origin=origin_of(r),
                    prune_cfg=dataclasses.replace(PCFG, method=method), prunable=r["flags"])
    two = runs.stack(runs.unstack(r["res"].sparse) * 2)
    with pytest.raises(ValueError, match=r"2 run\(s\) but origin holds .*'train_cfgs': 1"):
        unprune(two, r["task"], "_identity_for_tests", None, UnpruneConfig(variant="rescore"),
                origin=origin_of(r), prune_cfg=PCFG, prunable=r["flags"])


def test_a_diverging_dense_method_is_reported_not_hidden(pruned_run):
    """A dense-side method that diverges keeps θ_dense's last good state (the mask may not move
    at all): the pipeline's divergence column must say so."""
    from unprune_jax import pipeline

    r = pruned_run
    cfg = UnpruneConfig(variant="rescore", dense_method="GA")
    _, info = unprune(r["res"].sparse, r["task"], "_identity_for_tests", None, cfg,
                      origin=origin_of(r), prune_cfg=PCFG, prunable=r["flags"],
                      dense_method_cfg=TrainConfig(epochs=2, batch_size=32, lr=50.0, max_loss=3.0))
    assert info["runs"][0]["dense"]["diverged"]
    (msg,) = pipeline.divergences(info)
    assert msg.startswith("dense side: ") and "max_loss=3.0" in msg
