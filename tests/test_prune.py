"""Pruners: exact densities, rewinding bit-exact, whole filters, errors."""

import dataclasses

import chex
import flax.linen as nn
import jax
import numpy as np
import pytest

from unprune_jax import masks, optim, prune
from unprune_jax.data import synthetic_dataset
from unprune_jax.losses import cross_entropy
from unprune_jax.models import get_model, init_model, make_apply_fn
from unprune_jax.train import TrainConfig, TrainState, fit, make_train_step

CFG = TrainConfig(epochs=2, batch_size=32, lr=0.05)


class ConvBN(nn.Module):
    """A tiny conv net with a batch norm after each conv (named like our ResNet). Leaky ReLU:
    a zeroed channel outputs 0 and must still pass gradient for SFP's filters to regrow."""

    @nn.compact
    def __call__(self, x, train=False):
        for i, w in enumerate((4, 6)):
            x = nn.Conv(w, (3, 3), strides=2, use_bias=False, name=f"conv{i}")(x)
            x = nn.leaky_relu(nn.BatchNorm(use_running_average=not train, name=f"bn{i}")(x))
        return nn.Dense(10, name="head")(x.reshape(x.shape[0], -1))


def setup(model):
    ds = synthetic_dataset(n=160, n_test=32, seed=3)
    apply_fn = make_apply_fn(model)
    params, ms = init_model(model, jax.random.PRNGKey(0), ds.x[:1])
    tx = optim.sgd()
    return ds, apply_fn, tx, TrainState.create(params, ms, tx), masks.prunable_leaves(params)


@pytest.fixture(scope="module")
def cnn():
    return setup(get_model("small_cnn", widths=(4, 8), hidden=16))


def run(env, **kw):
    ds, apply_fn, tx, init, flags = env
    cfg = prune.PruneConfig(**kw)
    return prune.run(init, apply_fn, tx, ds, np.arange(128), CFG, cfg, flags, progress=False)


@pytest.mark.parametrize("method", ["omp", "imp", "synflow", "snip", "random"])
@pytest.mark.parametrize("scope", ["global", "per_layer"])
def test_every_unstructured_pruner_reaches_the_exact_density(cnn, method, scope):
    res = run(cnn, method=method, density=0.05, scope=scope, synflow_iterations=10,
              rounds=2, retrain_epochs=1)
    kept, total = masks.count(res.sparse.mask, cnn[4])
    assert kept == round(0.05 * total)
    for p, m in zip(jax.tree.leaves(res.sparse.params), jax.tree.leaves(res.sparse.mask)):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0)


def test_imp_prunes_a_fixed_fraction_of_the_survivors_each_round(cnn):
    res = run(cnn, method="imp", density=0.2 ** 3, rounds=3, retrain_epochs=0)
    kept, total = masks.count(res.sparse.mask, cnn[4])
    assert kept == round(0.008 * total)
    assert set(res.history) == {"round1", "round2", "round3", "sparse"}


@pytest.mark.parametrize("rewind_epoch", [0, 1])
def test_rewinding_restores_the_recorded_weights_bit_exactly(cnn, rewind_epoch):
    ds, apply_fn, tx, init, flags = cnn
    res = run(cnn, method="omp", density=0.3, rewind_epoch=rewind_epoch, retrain_epochs=0)
    if rewind_epoch == 0:
        expected = init.params
    else:  # the dense run after one epoch, recomputed independently
        step = make_train_step(apply_fn, tx, cross_entropy)
        expected = fit(init, step, ds, np.arange(128), dataclasses.replace(CFG, epochs=1),
                       progress=False)[0].params
    chex.assert_trees_all_equal(res.sparse.params,
                                jax.tree.map(lambda e, m: np.where(m, e, 0), expected,
                                             res.sparse.mask))


def test_rewind_after_training_is_rejected(cnn):
    with pytest.raises(ValueError, match="rewind_epoch 5"):
        run(cnn, method="omp", rewind_epoch=5)


def test_sfp_masks_are_whole_filters_per_layer_and_leave_dense_kernels():
    env = setup(ConvBN())
    res = run(env, method="sfp", density=0.5, sfp_zero_bn=True)
    m = res.sparse.mask
    for name, width in (("conv0", 4), ("conv1", 6)):
        k = np.asarray(m[name]["kernel"])
        per_filter = k.reshape(-1, width)
        assert np.all(per_filter.all(0) | ~per_filter.any(0))  # whole filters
        assert per_filter.all(0).sum() == width // 2  # per layer: half the filters
        pruned = ~per_filter.all(0)
        bn = res.sparse.params[f"bn{name[-1]}"]
        assert np.all(np.asarray(bn["scale"])[pruned] == 0)  # zero_bn
        assert np.all(np.asarray(bn["bias"])[pruned] == 0)
    assert np.asarray(m["head"]["kernel"]).all()
    assert res.history["zero_bn"] is True


def test_sfp_filters_keep_training_until_the_last_epoch():
    """Soft: a zeroed filter keeps training and may come back; only the last mask is hard.

    Gradient must reach a zeroed filter: after conv → (BN →) ReLU with a zero bias it outputs
    ReLU(0) with ReLU'(0) = 0 and stays dead (see ``prune`` docs); leaky ReLU passes it."""
    env = setup(ConvBN())
    res = run(env, method="sfp", density=0.5)
    soft = res.dense.params["conv0"]["kernel"]  # the last epoch's weights before the last prune
    assert np.all(np.abs(np.asarray(soft)).sum((0, 1, 2)) > 0)  # every filter trained again
    assert np.asarray(res.dense.mask["conv0"]["kernel"]).all()  # dense mask while training


@pytest.mark.parametrize("bad, message", [
    (dict(method="ompp"), "unknown pruner 'ompp'.*Did you mean 'omp'"),
    (dict(density=0.0), "density must be in"),
    (dict(density=1.01), "1.01"),
    (dict(granularity="channel"), "granularity.*'channel'"),
    (dict(allocation="er"), "allocation.*'er'"),
    (dict(rounds=0), "rounds must be ≥ 1, got 0"),
    (dict(layer_density={"conv": 2.0}), "2.0"),
])
def test_bad_pruner_config_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        prune.PruneConfig(**bad)


def test_filter_pruning_of_an_mlp_needs_dense_filters():
    env = setup(get_model("mlp", hidden=(8,)))
    with pytest.raises(ValueError, match="allow_dense_filters"):
        run(env, method="omp", granularity="filter")
    res = run(env, method="omp", granularity="filter", allow_dense_filters=True, density=0.5,
              scope="per_layer", retrain_epochs=0)
    k = np.asarray(res.sparse.mask["fc0"]["kernel"])
    assert np.all(k.all(0) | ~k.any(0)) and k.all(0).sum() == 4


@pytest.mark.parametrize("method", ["omp", "imp", "snip", "random", "sfp"])
def test_run_many_equals_k_single_runs(cnn, method):
    """The seed sides run as one K-run call; run k must be the pruner's single run (the loop
    strategy: bit for bit), with per-run subsets and seeds."""
    from unprune_jax import runs
    from unprune_jax.train import Trainer

    ds, apply_fn, tx, init, flags = cnn
    subsets = [np.arange(128), np.arange(32, 160)]
    train_cfgs = [CFG, dataclasses.replace(CFG, seed=1)]
    cfgs = [prune.PruneConfig(method=method, density=0.2, rounds=2, seed=s) for s in (0, 5)]
    res = prune.run_many(runs.stack([init, init]), apply_fn, tx, ds, subsets, train_cfgs, cfgs,
                         flags, order_pool=np.arange(160),
                         trainer=Trainer(strategy="loop", progress=False))
    assert len(res.history) == 2
    for k in range(2):
        ref = prune.run(init, apply_fn, tx, ds, subsets[k], train_cfgs[k], cfgs[k], flags,
                        order_pool=np.arange(160), progress=False)
        for got, want in ((res.sparse, ref.sparse), (res.dense, ref.dense)):
            for a, b in zip(jax.tree.leaves(runs.unstack(got)[k]), jax.tree.leaves(want),
                            strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="must share the pruner"):
        prune.run_many(runs.stack([init, init]), apply_fn, tx, ds, subsets, train_cfgs,
                       [cfgs[0], dataclasses.replace(cfgs[1], method="omp" if method != "omp"
                                                     else "imp")], flags)


def test_global_filter_repruning_ranks_filters_by_their_l2_norm():
    # issue 12: conv0 (fan-in 2) has filter norms 1.0, conv1 (fan-in 36) 0.5. Re-pruning to
    # half the filters keeps conv0's two and the first of conv1's four equal ones; summing the
    # broadcast norm over the fan-in (36 · 0.5 > 2 · 1.0) kept three of conv1's and none of conv0's.
    k0 = np.broadcast_to(np.float32([0.6, 0.8])[:, None], (1, 1, 2, 2))
    params = {"conv0": {"kernel": k0}, "conv1": {"kernel": np.full((3, 3, 4, 4), 0.5 / 6)}}
    cfg = prune.PruneConfig(density=0.5, granularity="filter")
    flags = masks.prunable_leaves(params)
    mask = prune.select(prune.reprune_scores(params, cfg), cfg.density, cfg, flags)
    kept = {k: np.asarray(v["kernel"]).any(axis=(0, 1, 2)).tolist() for k, v in mask.items()}
    assert kept == {"conv0": [True, True], "conv1": [True, False, False, False]}
