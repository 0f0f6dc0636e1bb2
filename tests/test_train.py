"""The masked train step against numpy, its invariants, and the epoch loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unprune_jax import losses, masks, optim
from unprune_jax.data import synthetic_dataset
from unprune_jax.models import get_model, init_model, make_apply_fn
from unprune_jax.train import (
    DivergenceError,
    TrainConfig,
    TrainState,
    epoch_order,
    fit,
    make_train_step,
)


def linear_apply(params, model_state, x, train):
    return x.reshape(x.shape[0], -1) @ params["fc"]["kernel"] + params["fc"]["bias"], model_state


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_two_masked_sgd_steps_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2], np.int32)
    w = np.array([1, 1, 0, 1, 1, 0], np.float32)  # two examples outside the subset
    W = rng.normal(size=(4, 3)).astype(np.float32)
    b = rng.normal(size=(3,)).astype(np.float32)
    M = rng.random((4, 3)) > 0.4
    lr, mu, wd = 0.1, 0.9, 0.01
    tx = optim.sgd(lr, mu, wd)
    params = {"fc": {"kernel": jnp.asarray(W), "bias": jnp.asarray(b)}}
    mask = {"fc": {"kernel": jnp.asarray(M), "bias": jnp.ones(3, bool)}}
    state = TrainState.create(params, {}, tx, mask)
    step = make_train_step(linear_apply, tx, losses.cross_entropy)

    Wn, bn = W * M, b.copy()
    bufW, bufb = np.zeros_like(W), np.zeros_like(b)
    for _ in range(2):
        p = softmax(x @ Wn + bn)
        d = (p - np.eye(3)[y]) * w[:, None] / w.sum()
        gW, gb = (x.T @ d) * M, d.sum(0)
        bufW, bufb = mu * bufW + gW + wd * Wn, mu * bufb + gb + wd * bn
        Wn, bn = (Wn - lr * bufW) * M, bn - lr * bufb
        state, metrics = step(state, x, y, w)
    np.testing.assert_allclose(state.params["fc"]["kernel"], Wn, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.params["fc"]["bias"], bn, rtol=1e-5, atol=1e-6)
    assert int(state.step) == 2


def small_cnn_setup(seed=0, density=0.2):
    ds = synthetic_dataset(n=256, n_test=64, seed=seed)
    model = get_model("small_cnn", widths=(4, 8), hidden=16)
    apply_fn = make_apply_fn(model)
    params, ms = init_model(model, jax.random.PRNGKey(seed), ds.x[:1])
    flags = masks.prunable_leaves(params)
    mask = masks.topk_mask(
        jax.tree.map(lambda p: jax.random.uniform(jax.random.PRNGKey(1), p.shape), params),
        density, flags,
    )
    tx = optim.sgd(0.1, 0.9, 5e-3)
    return ds, apply_fn, tx, TrainState.create(params, ms, tx, mask), flags


def test_pruned_weights_stay_zero_after_20_steps_with_momentum_and_decay():
    ds, apply_fn, tx, state, flags = small_cnn_setup()
    step = make_train_step(apply_fn, tx, losses.cross_entropy)
    before = state.params
    for i in range(20):
        idx = np.arange(i * 12, i * 12 + 12) % len(ds)
        state, _ = step(state, ds.x[idx], ds.y[idx], np.ones(12, np.float32))
    for p, m, p0 in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.mask),
                        jax.tree.leaves(before)):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)
        if np.asarray(m).any():
            assert not np.array_equal(np.asarray(p)[np.asarray(m)], np.asarray(p0)[np.asarray(m)])
    # momentum buffers hold nothing at pruned coordinates either
    mom = optim_momentum(state.opt_state)
    for b, m in zip(jax.tree.leaves(mom), jax.tree.leaves(state.mask)):
        assert np.all(np.asarray(b)[~np.asarray(m)] == 0.0)
    assert masks.density(state.mask, flags) == pytest.approx(0.2, abs=1e-3)


def optim_momentum(opt_state):
    import optax
    return optax.tree.get(opt_state, "trace")


def test_zero_weight_batch_is_a_no_op():
    ds, apply_fn, tx, state, _ = small_cnn_setup()
    step = make_train_step(apply_fn, tx, losses.cross_entropy)
    new, m = step(state, ds.x[:8], ds.y[:8], np.zeros(8, np.float32))
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)
    assert float(m["loss"]) == 0.0


def test_ft_step_vmapped_over_three_forget_sets_equals_three_calls():
    ds, apply_fn, tx, state, _ = small_cnn_setup()
    step = make_train_step(apply_fn, tx, losses.cross_entropy)
    x, y = ds.x[:32], ds.y[:32]
    rng = np.random.default_rng(3)
    # three forget sets of different sizes → three retain-weight vectors over the batch
    weights = np.ones((3, 32), np.float32)
    for k, size in enumerate((2, 5, 11)):
        weights[k, rng.choice(32, size, replace=False)] = 0.0
    stacked = jax.tree.map(lambda a: jnp.stack([a] * 3), state)
    batched, bm = jax.vmap(step, in_axes=(0, None, None, 0))(stacked, x, y, weights)
    for k in range(3):
        single, sm = step(state, x, y, weights[k])
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(batched)):
            np.testing.assert_allclose(np.asarray(b)[k], a, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(bm["loss"][k], sm["loss"], rtol=1e-5)


def test_fit_compiles_the_step_once_across_epochs_and_learning_rates():
    ds, apply_fn, tx, state, _ = small_cnn_setup()
    traces = []

    def counting_ce(logits, y, w, extra, params):
        traces.append(1)
        return losses.cross_entropy(logits, y, w)

    step = make_train_step(apply_fn, tx, counting_ce)
    cfg = TrainConfig(epochs=2, batch_size=50, lr=0.05, milestones=(1,))  # 256 → padded batch
    state, hist, _ = fit(state, step, ds, np.arange(200), cfg, progress=False)
    state, hist2, _ = fit(state, step, ds, np.arange(100), TrainConfig(epochs=1, lr=0.3,
                                                                       batch_size=50),
                          progress=False)
    assert len(traces) == 1
    assert [h["lr"] for h in hist] == [0.05, pytest.approx(0.005)] and hist2[0]["lr"] == 0.3


def test_divergence_guard_keeps_last_good_state():
    ds, apply_fn, tx, state, _ = small_cnn_setup()
    step = make_train_step(apply_fn, tx, losses.negative_cross_entropy)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=5.0, max_loss=20.0)
    with pytest.raises(DivergenceError, match="max_loss=20.0") as e:
        fit(state, step, ds, np.arange(128), cfg, progress=False)
    good = e.value.state
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(good.params))
    assert len(e.value.history) >= 1


def test_divergence_in_the_last_update_is_caught():
    """Issue 12: FT at lr 1e8 with one batch per epoch: every batch's loss is computed before
    its update, so only the loss after the last update shows the blow-up. A probe step after the
    last epoch (its result dropped) checks it against max_loss, or the default limit."""
    ds, apply_fn, tx, state, _ = small_cnn_setup()
    step = make_train_step(apply_fn, tx, losses.cross_entropy)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=1e8)
    with pytest.raises(DivergenceError, match=r"after the last update of epoch 1 \(no max_loss "
                       r"set: the default limit") as e:
        fit(state, step, ds, np.arange(32), cfg, progress=False)
    # the last good state is the one the epoch started from: the input, untouched
    for a, b in zip(jax.tree.leaves(e.value.state.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a sane run passes the same check, and the probe leaves no trace in the state
    ok, hist, _ = fit(state, step, ds, np.arange(32), TrainConfig(epochs=1, batch_size=32,
                                                                  lr=0.01), progress=False)
    assert int(ok.step) == 1 and len(hist) == 1


def test_gold_order_is_the_original_order_without_the_forget_set():
    train = np.arange(100, 150)
    retain = train[np.random.default_rng(0).random(50) > 0.2]
    for epoch in range(3):
        full = epoch_order(train, seed=7, epoch=epoch)
        gold = epoch_order(retain, seed=7, epoch=epoch, order_pool=train)
        np.testing.assert_array_equal(gold, full[np.isin(full, retain)])
    assert not np.array_equal(epoch_order(train, 7, 0), epoch_order(train, 7, 1))
