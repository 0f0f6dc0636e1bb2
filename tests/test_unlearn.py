"""Unlearning methods: losses and updates against numpy, masks kept, labels, saliency."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unprune_jax import masks, optim, unlearn
from unprune_jax.data import synthetic_dataset
from unprune_jax.models import get_model, init_model, make_apply_fn
from unprune_jax.train import TrainState, make_train_step
from unprune_jax.unlearn import penalised, relabel


def linear_apply(params, model_state, x, train):
    return x.reshape(x.shape[0], -1) @ params["fc"]["kernel"] + params["fc"]["bias"], model_state


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ce_grads(x, y, W, b, w):
    """Numpy: weighted-mean CE of a linear model, its gradient."""
    p = softmax(x @ W + b)
    ce = -np.log(p[np.arange(len(y)), y])
    d = (p - np.eye(W.shape[1])[y]) * w[:, None] / w.sum()
    return (ce * w).sum() / w.sum(), x.T @ d, d.sum(0)


@pytest.fixture
def lin():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 4)).astype(np.float32)
    y = rng.integers(0, 3, 10).astype(np.int32)
    W = rng.normal(size=(4, 3)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    M = rng.random((4, 3)) > 0.3
    params = {"fc": {"kernel": W * M, "bias": b}}
    mask = {"fc": {"kernel": M, "bias": np.ones(3, bool)}}
    return x, y, params, mask


def first_sgd_step(theta, g, lr, wd, M=None):
    """optim.sgd semantics, first step (zero momentum buffer): θ − lr·(g + wd·θ), masked."""
    new = theta - lr * (g + wd * theta)
    return new if M is None else new * M


def test_l1_sparse_loss_and_update_match_numpy(lin):
    x, y, params, mask = lin
    w = np.ones(10, np.float32)
    gamma = 0.01
    tx = optim.sgd(0.1, 0.9, 5e-4)
    state = TrainState.create(params, {}, tx, mask)
    step = make_train_step(linear_apply, tx, penalised.l1_penalised_ce)
    new, m = step(state, x, y, w, {"l1": jnp.float32(gamma)})
    W, b, M = params["fc"]["kernel"], params["fc"]["bias"], mask["fc"]["kernel"]
    ce, gW, gb = ce_grads(x, y, W, b, w)
    assert float(m["loss"]) == pytest.approx(ce + gamma * (np.abs(W).sum() + np.abs(b).sum()),
                                             rel=1e-5)
    gW, gb = (gW + gamma * np.sign(W)) * M, gb + gamma * np.sign(b)
    np.testing.assert_allclose(new.params["fc"]["kernel"], first_sgd_step(W, gW, 0.1, 5e-4, M),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new.params["fc"]["bias"], first_sgd_step(b, gb, 0.1, 5e-4),
                               rtol=1e-5, atol=1e-6)
    assert [penalised.l1_weight(1.0, e, 4) for e in range(4)] == [1.0, 0.75, 0.5, 0.25]


def test_ga_ascends_the_cross_entropy(lin):
    x, y, params, mask = lin
    w = np.ones(10, np.float32)
    tx = optim.sgd(0.1, 0.9, 0.0)
    state = TrainState.create(params, {}, tx, mask)
    step = make_train_step(linear_apply, tx, unlearn.basic.losses.negative_cross_entropy)
    new, m = step(state, x, y, w)
    W, b, M = params["fc"]["kernel"], params["fc"]["bias"], mask["fc"]["kernel"]
    ce, gW, gb = ce_grads(x, y, W, b, w)
    assert float(m["loss"]) == pytest.approx(-ce, rel=1e-5)
    np.testing.assert_allclose(new.params["fc"]["kernel"], first_sgd_step(W, -gW * M, 0.1, 0.0, M),
                               rtol=1e-5, atol=1e-6)


def test_neggrad_plus_loss_and_update_match_numpy(lin):
    x, y, params, mask = lin
    w = np.array([1, 1, 1, 1, 1, 1, 0, 1, 1, 1], np.float32)  # one padded slot
    is_forget = np.array([0] * 7 + [1] * 3, np.float32)
    beta = 0.8
    tx = optim.sgd(0.1, 0.9, 0.0)
    state = TrainState.create(params, {}, tx, mask)
    step = make_train_step(linear_apply, tx, penalised.neggrad_loss)
    new, m = step(state, x, y, w, {"is_forget": is_forget, "beta": jnp.float32(beta)})
    W, b, M = params["fc"]["kernel"], params["fc"]["bias"], mask["fc"]["kernel"]
    cr, gWr, gbr = ce_grads(x, y, W, b, w * (1 - is_forget))
    cf, gWf, gbf = ce_grads(x, y, W, b, w * is_forget)
    assert float(m["loss"]) == pytest.approx(beta * cr - (1 - beta) * cf, rel=1e-5)
    gW = (beta * gWr - (1 - beta) * gWf) * M
    np.testing.assert_allclose(new.params["fc"]["kernel"], first_sgd_step(W, gW, 0.1, 0.0, M),
                               rtol=1e-5, atol=1e-6)


def test_random_labels_never_the_true_label():
    y = np.tile(np.arange(10), 100).astype(np.int32)
    forget = np.arange(0, 1000, 3)
    seen = np.zeros((10, 10), int)
    for epoch in range(5):
        out = relabel.random_wrong_labels(y, forget, 10, seed=0, epoch=epoch)
        assert np.all(out[forget] != y[forget])
        keep = np.setdiff1d(np.arange(1000), forget)
        np.testing.assert_array_equal(out[keep], y[keep])
        np.add.at(seen, (y[forget], out[forget]), 1)
    assert np.all(np.diag(seen) == 0) and np.all(seen + np.eye(10, dtype=int) > 0)  # all others


def test_saliency_mask_is_top_fraction_of_kept_weights(lin):
    _, _, params, mask = lin
    rng = np.random.default_rng(1)
    grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    sal = relabel.saliency_mask(grads, mask, 0.5)
    flat_g = np.concatenate([np.abs(g).ravel() for g in jax.tree.leaves(grads)])
    flat_m = np.concatenate([np.ravel(m) for m in jax.tree.leaves(mask)])
    k = round(0.5 * flat_m.sum())
    ref = np.zeros_like(flat_m)
    ref[np.argsort(-np.where(flat_m, flat_g, -np.inf), kind="stable")[:k]] = True
    got = np.concatenate([np.ravel(s) for s in jax.tree.leaves(sal)])
    np.testing.assert_array_equal(got, ref)
    assert np.all(~got | flat_m)  # saliency ∧ pruning


@pytest.fixture(scope="module")
def cnn():
    ds = synthetic_dataset(n=192, n_test=32, seed=5)
    model = get_model("small_cnn", widths=(4, 8), hidden=16)
    apply_fn = make_apply_fn(model)
    params, ms = init_model(model, jax.random.PRNGKey(0), ds.x[:1])
    tx = optim.sgd()
    flags = masks.prunable_leaves(params)
    mask = masks.topk_mask(jax.tree.map(jnp.abs, params), 0.2, flags)
    init = TrainState.create(params, ms, tx)
    state = init.with_mask(mask, tx)
    task = unlearn.UnlearnTask(apply_fn, tx, ds, np.arange(0, 130), np.arange(130, 160), init,
                               progress=False)
    return state, task


@pytest.mark.parametrize("name", sorted(unlearn.REGISTRY))
def test_every_method_keeps_pruned_weights_zero(cnn, name):
    state, task = cnn
    entry = unlearn.get(name)
    cfg = dataclasses.replace(entry.defaults, epochs=min(entry.defaults.epochs, 1),
                              batch_size=32, max_loss=None)
    out, metrics = unlearn.run(name, state, task, cfg)
    assert "history" in metrics
    for p, m in zip(jax.tree.leaves(out.params), jax.tree.leaves(out.mask)):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0)
    chex.assert_trees_all_equal(out.mask, state.mask)


def test_frozen_entries_keep_value_and_momentum_exactly(lin):
    x, y, params, mask = lin
    tx = optim.sgd(0.1, 0.9, 0.05)
    state = TrainState.create(params, {}, tx, mask)
    plain = make_train_step(linear_apply, tx, unlearn.basic.losses.cross_entropy)
    w = np.ones(10, np.float32)
    state, _ = plain(state, x, y, w)  # fill the momentum buffers
    freeze = {"fc": {"kernel": np.eye(4, 3, dtype=bool), "bias": np.array([True, False, True])}}
    new, _ = plain(state, x, y, w, {"update_mask": freeze})
    import optax
    for leaf in ("kernel", "bias"):
        f = freeze["fc"][leaf]
        np.testing.assert_array_equal(np.asarray(new.params["fc"][leaf])[~f],
                                      np.asarray(state.params["fc"][leaf])[~f])
        old_b = optax.tree.get(state.opt_state, "trace")["fc"][leaf]
        new_b = optax.tree.get(new.opt_state, "trace")["fc"][leaf]
        np.testing.assert_array_equal(np.asarray(new_b)[~f], np.asarray(old_b)[~f])
        live = f & np.asarray(mask["fc"][leaf])  # pruned entries' buffers stay 0 anyway
        assert np.all(np.asarray(new_b)[live] != np.asarray(old_b)[live])


def test_salun_freezes_non_salient_weights_exactly(cnn):
    state, task = cnn
    cfg = relabel.SalUnConfig(epochs=1, lr=0.05, batch_size=32, saliency=0.3)
    sal = relabel.saliency_mask(relabel.forget_gradient(state, task), state.mask, 0.3)
    out, metrics = unlearn.run("SalUn", state, task, cfg)
    moved = 0
    for a, b, s in zip(jax.tree.leaves(out.params), jax.tree.leaves(state.params),
                       jax.tree.leaves(sal)):
        a, b, s = np.asarray(a), np.asarray(b), np.asarray(s)
        np.testing.assert_array_equal(a[~s], b[~s])  # frozen, despite momentum and decay
        moved += int(np.sum(a[s] != b[s]))
    assert moved > 0
    kept, _ = masks.count(state.mask)
    assert metrics["salient_fraction"] == pytest.approx(round(0.3 * kept) / masks.count(sal)[1])


@pytest.mark.parametrize("name", sorted(n for n, e in unlearn.REGISTRY.items() if e.batched))
def test_a_batched_method_on_k_stacked_states_equals_k_single_runs(cnn, name):
    """The S seeds of a candidate run as K stacked states in one loop; each must be what the
    method gives that run alone (the loop strategy: bit for bit)."""
    from unprune_jax import runs
    from unprune_jax.train import Trainer

    state, task = cnn
    other = state.replace(params=jax.tree.map(lambda p: p * 0.9, state.params),
                          rng=jax.random.PRNGKey(7))
    entry = unlearn.get(name)
    cfg = dataclasses.replace(entry.defaults, epochs=1, batch_size=32, max_loss=None)
    task = dataclasses.replace(task, trainer=Trainer(strategy="loop", progress=False))
    stacked, metrics = unlearn.run(name, runs.stack([state, other]), task, cfg)
    assert metrics["batched"] and len(metrics["runs"]) == 2
    for k, single in enumerate((state, other)):
        ref, ref_metrics = unlearn.run(name, single, task, cfg)
        for a, b in zip(jax.tree.leaves(runs.unstack(stacked)[k]), jax.tree.leaves(ref),
                        strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert metrics["runs"][k]["history"] == [
            {**h, "seconds": g["seconds"]} for h, g in
            zip(ref_metrics["history"], metrics["runs"][k]["history"], strict=True)]


def test_an_unbatched_method_runs_once_per_stacked_run(cnn):
    from unprune_jax import runs

    state, task = cnn
    cfg = dataclasses.replace(unlearn.get("BS").defaults, epochs=1, batch_size=32)
    stacked, metrics = unlearn.run("BS", runs.stack([state, state]), task, cfg)
    assert not metrics["batched"] and len(metrics["runs"]) == 2
    ref, _ = unlearn.run("BS", state, task, cfg)
    for a, b in zip(jax.tree.leaves(runs.unstack(stacked)[1]), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_l1_leaves_a_kept_weight_at_exactly_zero_in_place():
    # issue 12: d|θ|/dθ at 0 is taken as 0 (the subgradient sign(θ)), not jax.grad's +1. The
    # bias of a dead unit (ReLU input < 0 for every example) gets no CE gradient; at 0 it must
    # stay at 0 instead of moving by −lr·α each step; a non-zero bias moves by −lr·α·sign.
    def apply(params, model_state, x, train):
        h = jax.nn.relu(x @ params["fc"]["kernel"] + params["fc"]["bias"])
        return h @ params["head"]["kernel"], model_state

    params = {"fc": {"kernel": jnp.array([[1.0, -1.0]]), "bias": jnp.array([0.0, 0.0])},
              "head": {"kernel": jnp.zeros((2, 3))}}
    x, y, w = jnp.ones((4, 1)), jnp.zeros(4, jnp.int32), jnp.ones(4)
    tx = optim.sgd(0.1, 0.0, 0.0)
    state = TrainState.create(params, {}, tx)
    step = make_train_step(apply, tx, penalised.l1_penalised_ce)
    for _ in range(3):
        state, _ = step(state, x, y, w, {"l1": jnp.float32(0.5)})
    assert float(state.params["fc"]["bias"][1]) == 0.0  # dead unit: no CE gradient, |0| flat
    g = jax.grad(lambda p: penalised.l1_penalised_ce(jnp.zeros((1, 3)), y[:1], w[:1],
                                                     {"l1": 2.0}, p))(
        {"a": jnp.array([-3.0, 0.0, 4.0])})
    np.testing.assert_array_equal(g["a"], [-2.0, 0.0, 2.0])
