"""Influence unlearning (the masked Newton step) and Boundary Shrink; its algebra (HVP, CG, LiSSA)
is tested in test_linalg.py."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from unprune_jax import masks, optim
from unprune_jax.data import synthetic_dataset
from unprune_jax.models import get_model, make_apply_fn
from unprune_jax.train import DivergenceError, TrainState
from unprune_jax.unlearn import base, boundary
from unprune_jax.unlearn.boundary import BSConfig
from unprune_jax.unlearn.iu import IUConfig


def linear_apply(params, model_state, x, train):
    return x.reshape(len(x), -1) @ params["fc"]["kernel"] + params["fc"]["bias"], model_state


def ce(logits, y):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], 1))


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# --- logistic regression: the IU step against numpy and against retraining ------------------------


WD = 1e-2


def logreg_setup(seed=0, density=None):
    ds = synthetic_dataset(n=240, image_shape=(4, 1, 1), num_classes=3, n_test=40, seed=seed)
    rng = np.random.default_rng(seed)
    train = ds.train_pool
    forget = np.sort(rng.choice(train, 20, replace=False))
    retain = np.setdiff1d(train, forget)
    params = {"fc": {"kernel": jnp.zeros((4, 3), jnp.float32), "bias": jnp.zeros(3, jnp.float32)}}
    keep = np.ones((4, 3), bool)
    if density is not None:
        keep = rng.random((4, 3)) < density
        keep[0, 0], keep[1, 1] = False, True
    mask = {"fc": {"kernel": jnp.asarray(keep), "bias": jnp.ones(3, bool)}}
    tx = optim.sgd()
    state = TrainState.create(params, {}, tx, mask)
    return ds, train, retain, forget, tx, state


@jax.jit
def _gradient_descent(params, mask, x, y, w):
    """4000 full-batch masked GD steps on the weighted CE + WD/2·‖θ‖² (strongly convex)."""

    def objective(p):
        p = masks.apply_mask(p, mask)
        logp = jax.nn.log_softmax(linear_apply(p, {}, x, False)[0])
        nll = -jnp.take_along_axis(logp, y[:, None], 1)[:, 0]
        reg = sum(jnp.sum(a * a) for a in jax.tree.leaves(p))
        return jnp.sum(w * nll) / jnp.sum(w) + 0.5 * WD * reg

    def body(_, p):
        g = masks.apply_mask(jax.grad(objective)(p), mask)
        return jax.tree.map(lambda a, b: a - 0.5 * b, p, g)

    p = jax.lax.fori_loop(0, 4000, body, params)
    g = masks.apply_mask(jax.grad(objective)(p), mask)
    return p, jnp.max(jnp.abs(ravel_pytree(g)[0]))


def minimise(params, mask, ds, indices):
    w = np.zeros(len(ds), np.float32)
    w[indices] = 1.0
    p, grad_max = _gradient_descent(params, mask, jnp.asarray(ds.x), jnp.asarray(ds.y), w)
    assert float(grad_max) < 1e-5
    return p


def flat(params):
    return np.asarray(ravel_pytree(params)[0], np.float64)


# batch 60: D_r (180) is 3 full batches; every IU run on the regression shares one compilation
LOGREG_IU = IUConfig(weight_decay=WD, damping=0.0, hessian_batches=None, batch_size=60, tol=1e-6,
                     cg_iters=100, lissa_depth=3000)


@pytest.fixture(scope="module")
def logreg():
    ds, train, retain, forget, tx, state = logreg_setup()
    full = minimise(state.params, state.mask, ds, train)
    gold = minimise(full, state.mask, ds, retain)
    task = base.UnlearnTask(linear_apply, tx, ds, retain, forget, state, progress=False)
    return task, state.replace(params=full), gold


@pytest.mark.parametrize("direction,solver", [("influence", "cg"), ("newton", "cg"),
                                              ("influence", "lissa")])
def test_iu_moves_logistic_regression_toward_the_retrained_optimum(logreg, direction, solver):
    task, trained, gold = logreg
    cfg = dataclasses.replace(LOGREG_IU, solver=solver, direction=direction)
    out, metrics = base.run("IU", trained, task, cfg)
    before = np.linalg.norm(flat(trained.params) - flat(gold))
    after = np.linalg.norm(flat(out.params) - flat(gold))
    assert before > 1e-2
    assert after < 0.1 * before, (before, after, metrics)
    assert metrics["residual"] < 1e-3
    assert metrics["forget_loss_after"] > metrics["forget_loss_before"]
    assert metrics["history"][0]["phase"] == "IU"


def test_masked_iu_step_equals_the_numpy_solve_on_kept_coordinates():
    ds, train, retain, forget, tx, state = logreg_setup(seed=1, density=0.6)
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    mask = state.mask
    full = minimise(state.params, mask, ds, train)
    trained = state.replace(params=full)
    lam = 1e-3
    task = base.UnlearnTask(linear_apply, tx, ds, retain, forget, state, progress=False)
    out, metrics = base.run("IU", trained, task, dataclasses.replace(LOGREG_IU, damping=lam))

    p0, unravel = ravel_pytree(full)
    keep = np.asarray(ravel_pytree(mask)[0])
    unmasked_ce = lambda f, idx: ce(linear_apply(unravel(f), {}, x[idx], False)[0], y[idx])
    h = np.asarray(jax.jit(jax.hessian(unmasked_ce))(p0, retain), np.float64)
    g = np.asarray(jax.jit(jax.grad(unmasked_ce))(p0, forget), np.float64) + WD * np.asarray(p0)
    delta = np.zeros_like(g)
    kk = np.ix_(keep, keep)
    delta[keep] = len(forget) / len(retain) * np.linalg.solve(
        h[kk] + (WD + lam) * np.eye(keep.sum()), g[keep])
    got = flat(out.params) - np.asarray(p0, np.float64)
    assert np.all(got[~keep] == 0.0) and np.all(flat(out.params)[~keep] == 0.0)
    np.testing.assert_allclose(got, delta, rtol=2e-3, atol=1e-6)
    assert np.abs(delta[keep]).min() > 0


@pytest.fixture(scope="module")
def small_cnn():
    """A small CNN with a random 20%-density mask on its prunable kernels, and its task."""
    ds = synthetic_dataset(n=160, n_test=32, seed=0)
    model = get_model("small_cnn", widths=(4, 8), hidden=16)
    apply_fn = make_apply_fn(model)
    variables = jax.jit(lambda k: model.init(k, ds.x[:1], train=False))(jax.random.PRNGKey(0))
    params = dict(variables["params"])
    flags = masks.prunable_leaves(params)
    rng = np.random.default_rng(0)
    mask = jax.tree.map(lambda p, f: jnp.asarray(rng.random(p.shape) < 0.2 if f else
                                                 np.ones(p.shape, bool)), params, flags)
    assert abs(masks.density(mask, flags) - 0.2) < 0.05
    tx = optim.sgd()
    state = TrainState.create(params, {}, tx, mask)
    train = ds.train_pool
    forget, retain = train[:16], train[16:]
    task = base.UnlearnTask(apply_fn, tx, ds, retain, forget, state, progress=False)
    return state, task


def assert_pruned_zero_and_kept_moved(before, after):
    moved = False
    for p0, p, m in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params),
                        jax.tree.leaves(before.mask)):
        p0, p, m = np.asarray(p0), np.asarray(p), np.asarray(m)
        assert np.all(p[~m] == 0.0)
        moved |= not np.array_equal(p[m], p0[m])
    assert moved


def test_iu_keeps_pruned_weights_exactly_zero_on_a_small_cnn(small_cnn):
    state, task = small_cnn
    cfg = IUConfig(batch_size=32, hessian_batches=1, cg_iters=3, damping=0.1)
    out, metrics = base.run("IU", state, task, cfg)
    assert_pruned_zero_and_kept_moved(state, out)
    assert np.isfinite(metrics["residual"]) and metrics["iterations"] >= 1


def test_iu_non_finite_solve_raises_with_the_input_state(logreg):
    task, trained, _ = logreg
    cfg = dataclasses.replace(LOGREG_IU, solver="lissa", lissa_scale=1e-6)  # diverges to inf
    with pytest.raises(DivergenceError) as err:
        base.run("IU", trained, task, cfg)
    assert err.value.state is trained and err.value.history[0]["phase"] == "IU"
    kept, metrics = base.run("IU", trained, task, cfg, on_divergence="keep_last_good")
    assert kept is trained and "diverged" in metrics


def test_iu_config_validates():
    with pytest.raises(ValueError, match="solver"):
        IUConfig(solver="woodfisher")
    with pytest.raises(ValueError, match="hessian_batches"):
        IUConfig(hessian_batches=0)
    assert IUConfig().epochs == 0 and base.get("IU").defaults == IUConfig()


# --- (e) Boundary Shrink's FGSM point and labels --------------------------------------------------


fgsm_linear = jax.jit(lambda p, x, y, eps, q: boundary.fgsm(linear_apply, p, {}, x, y, eps, q))


def test_fgsm_point_and_nearest_wrong_label_match_numpy_on_a_linear_model():
    ds = synthetic_dataset(n=60, image_shape=(4, 1, 1), num_classes=3, n_test=10, seed=3)
    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 3)).astype(np.float32) * 3
    b = rng.normal(size=3).astype(np.float32)
    params = {"fc": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}}
    xs, ys = ds.x, ds.y
    flat_x = xs.reshape(len(xs), -1).astype(np.float64)
    for eps in (0.1, 0.01):
        p = softmax(flat_x @ w + b)
        grad_x = (p - np.eye(3)[ys]) @ w.T  # ∇_x CE = W·(softmax − onehot)
        want = np.clip(flat_x + eps * np.sign(grad_x), 0.0, 1.0)
        got = fgsm_linear(params, jnp.asarray(xs), jnp.asarray(ys), eps, False)
        np.testing.assert_allclose(np.asarray(got).reshape(len(xs), -1), want, atol=1e-6)

        logits = want @ w + b
        same = logits.argmax(1) == ys
        logits[np.arange(len(ys)), ys] = -np.inf
        state = TrainState.create(params, {}, optim.sgd())
        labels, hit = boundary.boundary_labels(state, linear_apply, ds, np.arange(len(ys)), eps,
                                               batch_size=16)
        np.testing.assert_array_equal(labels, logits.argmax(1))
        np.testing.assert_array_equal(hit, same)
        assert np.all(labels != ys)
    assert same.any()  # the unconstrained argmax is sometimes the true class; ỹ never is


def test_bs_quantize_rounds_to_255_levels():
    params = {"fc": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)}}
    x = jnp.full((2, 4, 1, 1), 0.5012)
    got = fgsm_linear(params, x, jnp.array([0, 1]), 0.1, True)
    np.testing.assert_allclose(np.asarray(got) * 255, np.round(np.asarray(got) * 255), atol=1e-4)


# --- (f) Boundary Shrink on a pruned CNN ----------------------------------------------------------


def test_bs_keeps_pruned_weights_exactly_zero_and_never_trains_on_the_true_label(small_cnn):
    state, task = small_cnn
    out, metrics = base.run("BS", state, task, BSConfig(epochs=1, batch_size=8, lr=0.01))
    assert_pruned_zero_and_kept_moved(state, out)
    assert 0.0 <= metrics["argmax_true_fraction"] <= 1.0 and len(metrics["history"]) == 1
    labels, hit = boundary.boundary_labels(state, task.apply_fn, task.dataset, task.forget, 0.1)
    assert np.all(labels != task.dataset.y[task.forget])
    assert metrics["argmax_true_fraction"] == pytest.approx(float(np.mean(hit)))
    assert base.get("BS").defaults == BSConfig()
    assert dataclasses.asdict(BSConfig())["epsilon"] == 0.1
