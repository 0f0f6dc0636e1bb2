"""Un-pruning (Algorithm 1) against a numpy reference, and the gold standard's determinism."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unprune_jax import losses, masks, optim, prune, unlearn
from unprune_jax.data import synthetic_dataset
from unprune_jax.models import get_model, init_model, make_apply_fn
from unprune_jax.train import TrainConfig, TrainState, make_train_step
from unprune_jax.unprune import UnpruneConfig, unprune

PCFG = prune.PruneConfig(density=0.2)


@pytest.fixture(scope="module")
def setup():
    ds = synthetic_dataset(n=200, n_test=40, seed=1)
    model = get_model("mlp", hidden=(12, 8))
    apply_fn = make_apply_fn(model)
    params0, ms = init_model(model, jax.random.PRNGKey(0), ds.x[:1])
    tx = optim.sgd()
    init = TrainState.create(params0, ms, tx)
    flags = masks.prunable_leaves(params0)
    rng = np.random.default_rng(0)
    trained = jax.tree.map(lambda p: p + 0.3 * rng.normal(size=p.shape).astype(np.float32),
                           params0)
    mask = prune.lwm_mask(trained, 0.2, flags)
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
    del unlearn.REGISTRY["_identity_for_tests"]


def flat(tree, flags):
    return np.concatenate([np.ravel(np.asarray(l)) for l, f in
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
    for x, y in zip(jax.tree.leaves(a.sparse), jax.tree.leaves(b.sparse)):
        np.testing.assert_array_equal(x, y)
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
