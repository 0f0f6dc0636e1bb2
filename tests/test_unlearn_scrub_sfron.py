"""SCRUB and SFR-on against numpy on a linear model, their schedules, and the mask invariant."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import unprune_jax.unlearn.scrub  # noqa: F401  (registers SCRUB)
import unprune_jax.unlearn.sfron  # noqa: F401  (registers SFR-on)
from unprune_jax import losses, masks, optim
from unprune_jax.data import synthetic_dataset
from unprune_jax.models import get_model, init_model, make_apply_fn
from unprune_jax.train import DivergenceError, TrainConfig, TrainState, make_train_step, predict
from unprune_jax.unlearn.base import REGISTRY, UnlearnTask, run
from unprune_jax.unlearn.scrub import (
    SCRUBConfig,
    kd_divergence,
    scrub,
    scrub_max_loss,
    scrub_min_loss,
)
from unprune_jax.unlearn.sfron import (
    SFRonConfig,
    adaptive_weights,
    cosine_factor,
    saliency_mask,
    sfron,
    sfron_forget_loss,
)


def linear_apply(p, s, x, train):
    return x.reshape(len(x), -1) @ p["fc"]["kernel"] + p["fc"]["bias"], s


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kd(s, t, tau):
    """Per-example τ²·KL(softmax(t/τ) ‖ softmax(s/τ)) and its gradient wrt s."""
    lt, ls = log_softmax(t / tau), log_softmax(s / tau)
    d = tau**2 * np.sum(np.exp(lt) * (lt - ls), -1)
    return d, tau * (softmax(s / tau) - softmax(t / tau))


def np_ce(s, y):
    ls = log_softmax(s)
    return -ls[np.arange(len(y)), y], softmax(s) - np.eye(s.shape[1])[y]


def np_sgd(theta, grad, buf, lr, mu, wd, mask=1.0):
    """optim.sgd: g += wd·θ; b = μb + g; θ −= lr·b (masked as the train step does)."""
    g = grad * mask + wd * theta
    buf = mu * buf + g
    return (theta - lr * buf) * mask, buf


def linear_task(seed=0, density_mask=True, classes=4, n=40, n_test=8, n_forget=8):
    ds = synthetic_dataset(n=n, image_shape=(3, 3, 1), num_classes=classes, n_test=n_test,
                           seed=seed)
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(9, classes)).astype(np.float32)
    b = rng.normal(size=(classes,)).astype(np.float32) * 0.1
    M = rng.random((9, classes)) > 0.3 if density_mask else np.ones((9, classes), bool)
    tx = optim.sgd()
    params = {"fc": {"kernel": jnp.asarray(W), "bias": jnp.asarray(b)}}
    mask = {"fc": {"kernel": jnp.asarray(M), "bias": jnp.ones(classes, bool)}}
    state = TrainState.create(params, {}, tx, mask)
    train = ds.train_pool
    task = UnlearnTask(linear_apply, tx, ds, retain=train[n_forget:], forget=train[:n_forget],
                       init=state, progress=False)
    return ds, task, state, M


def flat_x(ds, idx):
    return ds.x[idx].reshape(len(idx), -1).astype(np.float64)


# --- SCRUB ------------------------------------------------------------------------------------


def test_scrub_losses_and_one_step_match_numpy():
    rng = np.random.default_rng(1)
    ds, task, state, M = linear_task()
    idx = task.retain[:12]
    x, y = ds.x[idx], ds.y[idx]
    w = np.ones(12, np.float32)
    w[[3, 7]] = 0.0  # padding
    teacher = rng.normal(size=(12, 4)).astype(np.float32) * 2
    tau, gam, alpha = 4.0, 0.99, 0.3
    extra = {"teacher_logits": teacher, "temperature": np.float32(tau),
             "ce_weight": np.float32(gam), "kl_weight": np.float32(alpha)}
    W = np.asarray(state.params["fc"]["kernel"], np.float64)
    b = np.asarray(state.params["fc"]["bias"], np.float64)
    X = flat_x(ds, idx)
    s = X @ W + b
    d, dd = np_kd(s, teacher.astype(np.float64), tau)
    ce, dce = np_ce(s, y)
    n = w.sum()
    logits = jnp.asarray(s, jnp.float32)
    np.testing.assert_allclose(jax.jit(kd_divergence)(logits, teacher, tau), d, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(jax.jit(scrub_max_loss)(logits, y, w, extra), -(w * d).sum() / n,
                               rtol=1e-4)
    np.testing.assert_allclose(jax.jit(scrub_min_loss)(logits, y, w, extra),
                               gam * (w * ce).sum() / n + alpha * (w * d).sum() / n, rtol=1e-5)

    lr, mu, wd = 0.5, 0.9, 0.01
    for loss_fn, gs in ((scrub_max_loss, -dd * w[:, None] / n),
                        (scrub_min_loss, (gam * dce + alpha * dd) * w[:, None] / n)):
        st = state.replace(opt_state=optim.set_hyperparams(
            task.tx.init(state.params), learning_rate=lr, momentum=mu, weight_decay=wd))
        step = make_train_step(linear_apply, task.tx, loss_fn)
        # a second step checks that momentum carries over
        Wn, bn, bufW, bufb = W, b, np.zeros_like(W), np.zeros_like(b)
        for k in range(2):
            s_k = X @ Wn + bn
            d_k, dd_k = np_kd(s_k, teacher.astype(np.float64), tau)
            _, dce_k = np_ce(s_k, y)
            g = -dd_k if loss_fn is scrub_max_loss else gam * dce_k + alpha * dd_k
            g = g * w[:, None] / n
            if k == 0:
                np.testing.assert_allclose(g, gs, rtol=1e-6)
            Wn, bufW = np_sgd(Wn, X.T @ g, bufW, lr, mu, wd, M)
            bn, bufb = np_sgd(bn, g.sum(0), bufb, lr, mu, wd)
            st, _ = step(st, x, y, w, extra)
        np.testing.assert_allclose(st.params["fc"]["kernel"], Wn, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(st.params["fc"]["bias"], bn, rtol=1e-4, atol=1e-5)
        assert np.all(np.asarray(st.params["fc"]["kernel"])[~M] == 0.0)


def test_scrub_method_matches_numpy_with_one_shared_optimizer_state():
    """One max epoch then one min epoch, each a single full batch, momentum carried across."""
    ds, task, state, M = linear_task()
    lr, mu, wd, tau, gam, alpha = 0.3, 0.9, 0.01, 4.0, 0.99, 0.2
    cfg = SCRUBConfig(epochs=1, msteps=1, batch_size=64, lr=lr, momentum=mu, weight_decay=wd,
                      temperature=tau, ce_weight=gam, kl_weight=alpha)
    new, metrics = scrub(state, task, cfg)

    W = np.asarray(state.params["fc"]["kernel"], np.float64)
    b = np.asarray(state.params["fc"]["bias"], np.float64)
    teacher = {k: predict(state, linear_apply, ds, getattr(task, k)).astype(np.float64)
               for k in ("forget", "retain")}
    bufW, bufb = np.zeros_like(W), np.zeros_like(b)
    # max epoch on D_f: the student starts at the teacher, so −d has zero gradient here and only
    # weight decay moves the weights (into the momentum buffer as well)
    Xf = flat_x(ds, task.forget)
    _, dd = np_kd(Xf @ W + b, teacher["forget"], tau)
    g = -dd / len(task.forget)
    np.testing.assert_allclose(g, 0.0, atol=1e-6)
    W, bufW = np_sgd(W, Xf.T @ g, bufW, lr, mu, wd, M)
    b, bufb = np_sgd(b, g.sum(0), bufb, lr, mu, wd)
    # min epoch on D_r
    Xr, yr = flat_x(ds, task.retain), ds.y[task.retain]
    s = Xr @ W + b
    d, dd = np_kd(s, teacher["retain"], tau)
    ce, dce = np_ce(s, yr)
    n = len(task.retain)
    g = (gam * dce + alpha * dd) / n
    W, bufW = np_sgd(W, Xr.T @ g, bufW, lr, mu, wd, M)
    b, bufb = np_sgd(b, g.sum(0), bufb, lr, mu, wd)

    np.testing.assert_allclose(new.params["fc"]["kernel"], W, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new.params["fc"]["bias"], b, rtol=1e-4, atol=1e-5)
    hist = metrics["history"]
    assert [h["phase"] for h in hist] == ["max", "min"]
    assert hist[0]["loss"] == pytest.approx(0.0, abs=1e-6)
    assert hist[1]["loss"] == pytest.approx(gam * ce.mean() + alpha * d.mean(), rel=1e-5)


def test_scrub_max_epochs_only_in_the_first_msteps_epochs():
    ds, task, state, _ = linear_task()
    _, metrics = scrub(state, task, SCRUBConfig(epochs=4, msteps=2, batch_size=16, lr=0.01))
    hist = metrics["history"]
    assert [(h["epoch"], h["phase"]) for h in hist] == [
        (1, "max"), (1, "min"), (2, "max"), (2, "min"), (3, "min"), (4, "min")]
    _, metrics = scrub(state, task, SCRUBConfig(epochs=2, msteps=0, batch_size=16, lr=0.01))
    assert [h["phase"] for h in metrics["history"]] == ["min", "min"]
    # the learning-rate schedule follows the SCRUB epoch in both phases
    _, metrics = scrub(state, task, SCRUBConfig(epochs=3, msteps=3, batch_size=16, lr=0.1,
                                                milestones=(1,), gamma=0.5))
    assert [h["lr"] for h in metrics["history"]] == pytest.approx([0.1, 0.1] + [0.05] * 4)


def test_scrub_divergence_guard_carries_the_whole_history():
    ds, task, state, _ = linear_task()
    cfg = SCRUBConfig(epochs=3, msteps=2, batch_size=16, lr=0.01, max_loss=0.5)
    with pytest.raises(DivergenceError) as e:
        run("SCRUB", state, task, cfg)
    # the first max epoch has |loss| ≈ 0 (student ≈ teacher), also after its last update, and
    # passes; the min epoch (CE ≈ 2) fails
    assert [h["phase"] for h in e.value.history] == ["max", "min"]
    _, metrics = run("SCRUB", state, task, cfg, on_divergence="keep_last_good")
    assert "diverged" in metrics


# --- SFR-on -----------------------------------------------------------------------------------


def test_sfron_adaptive_weights_and_forget_loss_match_numpy():
    rng = np.random.default_rng(2)
    ce = rng.uniform(0.01, 3.0, size=10).astype(np.float32)
    w = np.ones(10, np.float32)
    w[[0, 9]] = 0.0
    weights_fn = jax.jit(adaptive_weights)
    for lam in (0.0, 0.5, 1.3):
        ref = w * ce**-lam
        np.testing.assert_allclose(weights_fn(ce, w, lam), ref / ref.sum(), rtol=1e-5)
    # a zero loss stays finite; an all-padding batch has zero weights
    zero = weights_fn(np.zeros(10, np.float32), np.ones(10, np.float32), 0.5)
    np.testing.assert_allclose(zero, 0.1)
    np.testing.assert_array_equal(weights_fn(ce, np.zeros(10, np.float32), 0.5), 0.0)

    logits = rng.normal(size=(10, 4)).astype(np.float32)
    y = rng.integers(0, 4, size=10)
    ce_np, dce = np_ce(logits.astype(np.float64), y)
    wt = w * ce_np**-0.5
    wt /= wt.sum()
    extra = {"alpha": np.float32(7.0), "lam": np.float32(0.5)}
    loss, grad = jax.jit(jax.value_and_grad(sfron_forget_loss))(logits, y, w, extra)
    np.testing.assert_allclose(loss, -7.0 * (wt * ce_np).sum(), rtol=1e-5)
    # the weights are constants: the gradient is −α Σ w̃_i ∂CE_i
    np.testing.assert_allclose(grad, -7.0 * wt[:, None] * dce, rtol=1e-4, atol=1e-6)


def test_sfron_saliency_mask_matches_numpy_fisher_ratio():
    ds, task, state, M = linear_task()
    cfg = SFRonConfig(batch_size=64, fisher_batches=None, threshold=1.0)
    W = np.asarray(state.params["fc"]["kernel"], np.float64)
    b = np.asarray(state.params["fc"]["bias"], np.float64)

    def sq_grad(idx):  # one batch holds the whole set: F = (mean gradient)²
        X = flat_x(ds, idx)
        _, d = np_ce(X @ W + b, ds.y[idx])
        return (X.T @ d / len(idx)) ** 2, (d.sum(0) / len(idx)) ** 2

    (fW, fb), (rW, rb) = sq_grad(task.forget), sq_grad(task.retain)
    # ratios within float32 noise of the threshold would make the comparison flaky
    ratio_W, ratio_b = (fW * M + 1e-15) / (rW * M + 1e-15), (fb + 1e-15) / (rb + 1e-15)
    assert np.min(np.abs(np.log(ratio_W[M]))) > 1e-3 and np.min(np.abs(np.log(ratio_b))) > 1e-3
    sal = saliency_mask(state, task, cfg)
    np.testing.assert_array_equal(sal["fc"]["kernel"], (ratio_W >= 1.0) & M)
    np.testing.assert_array_equal(sal["fc"]["bias"], ratio_b >= 1.0)
    assert 0 < np.sum(sal["fc"]["kernel"]) < M.sum()  # the test exercises both cases


def test_sfron_forget_step_matches_numpy_and_freezes_non_salient_entries():
    ds, task, state, M = linear_task()
    sal = saliency_mask(state, task, SFRonConfig(batch_size=64, fisher_batches=None))
    S = np.asarray(sal["fc"]["kernel"])
    Sb = np.asarray(sal["fc"]["bias"])
    lr, mu, wd, alpha, lam = 0.05, 0.9, 0.01, 3.0, 0.5
    idx = task.forget
    x, y = ds.x[idx], ds.y[idx]
    w = np.ones(len(idx), np.float32)
    extra = {"update_mask": sal, "alpha": np.float32(alpha), "lam": np.float32(lam)}
    W = np.asarray(state.params["fc"]["kernel"], np.float64)
    b = np.asarray(state.params["fc"]["bias"], np.float64)
    X = flat_x(ds, idx)
    ce, dce = np_ce(X @ W + b, y)
    wt = ce**-lam / np.sum(ce**-lam)
    g = -alpha * wt[:, None] * dce
    gW, gb = X.T @ g * S, g.sum(0) * Sb
    for clip in (1e6, 0.05):  # no clipping, then clipping
        st = state.replace(opt_state=optim.set_hyperparams(
            task.tx.init(state.params), learning_rate=lr, momentum=mu, weight_decay=wd))
        step = make_train_step(linear_apply, task.tx, sfron_forget_loss, clip)
        new, _ = step(st, x, y, w, extra)
        scale = min(1.0, clip / np.sqrt(np.sum(gW**2) + np.sum(gb**2)))
        # frozen entries get no weight decay either: the update is g + wd·θ on salient ones only
        Wn = (W - lr * (gW * scale + wd * W) * S) * M
        bn = b - lr * (gb * scale + wd * b) * Sb
        np.testing.assert_allclose(new.params["fc"]["kernel"], Wn, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(new.params["fc"]["bias"], bn, rtol=1e-4, atol=1e-6)

    # after a retain step has filled the momentum buffer, a forget step still leaves every
    # non-salient entry bit-exactly unchanged
    retain_step = make_train_step(linear_apply, task.tx, losses.cross_entropy)
    st, _ = retain_step(st, ds.x[task.retain], ds.y[task.retain],
                        np.ones(len(task.retain), np.float32), {})
    new, _ = step(st, x, y, w, extra)
    before, after = np.asarray(st.params["fc"]["kernel"]), np.asarray(new.params["fc"]["kernel"])
    np.testing.assert_array_equal(after[~S], before[~S])
    assert np.all(after[S] != before[S])
    np.testing.assert_array_equal(np.asarray(new.params["fc"]["bias"])[~Sb],
                                  np.asarray(st.params["fc"]["bias"])[~Sb])


def test_sfron_schedule_alpha_and_lr_follow_the_cosine():
    # a retain set of one batch: one history record per iteration
    ds, task, state, _ = linear_task(n=40, n_test=8, n_forget=24)
    T, freq = 10, 3
    cfg = SFRonConfig(iterations=T, forget_freq=freq, batch_size=8, lr=0.02, forget_alpha=25.0)
    _, metrics = sfron(state, task, cfg)
    hist = metrics["history"]
    assert [h["iteration"] for h in hist] == list(range(1, T + 1))
    for t, h in enumerate(hist):
        last_forget = t - t % freq
        assert h["alpha"] == pytest.approx(25.0 * (1 + np.cos(np.pi * last_forget / T)) / 2)
        assert h["lr"] == pytest.approx(0.02 * (1 + np.cos(np.pi * t / T)) / 2)
        assert h["forget_steps"] == (t % freq == 0)
    assert cosine_factor(0, T) == 1.0 and cosine_factor(T, T) == pytest.approx(0.0)
    assert 0.0 < metrics["saliency_density"] < 1.0


def test_sfron_fast_slow_average():
    ds, task, state, _ = linear_task()
    base = SFRonConfig(iterations=1, batch_size=16, lr=0.1)
    fast, _ = sfron(state, task, base)
    avg, _ = sfron(state, task, dataclasses.replace(base, ema_beta=0.25))
    for a, f, s in zip(jax.tree.leaves(avg.params), jax.tree.leaves(fast.params),
                       jax.tree.leaves(state.params)):
        np.testing.assert_allclose(a, 0.25 * np.asarray(f) + 0.75 * np.asarray(s), rtol=1e-6,
                                   atol=1e-7)
    assert not np.allclose(fast.params["fc"]["kernel"], state.params["fc"]["kernel"])


def test_sfron_raises_on_divergence_with_the_last_good_state():
    ds, task, state, _ = linear_task()
    cfg = SFRonConfig(iterations=20, batch_size=16, lr=1e30, forget_alpha=1e30)
    with pytest.raises(DivergenceError) as e:
        sfron(state, task, cfg)
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(e.value.state.params))
    assert len(e.value.history) >= 1


# --- both, through the registry ---------------------------------------------------------------


def test_registry_entries_and_plain_train_config():
    assert isinstance(REGISTRY.get("SCRUB").defaults, SCRUBConfig)
    assert isinstance(REGISTRY.get("SFR-on").defaults, SFRonConfig)
    assert REGISTRY.get("SCRUB").defaults.lr == 5e-4 and REGISTRY.get("SCRUB").defaults.epochs == 3
    assert REGISTRY.get("SFR-on").defaults.ema_beta == 1.0
    ds, task, state, _ = linear_task()
    _, m = run("SCRUB", state, task, TrainConfig(epochs=1, batch_size=16, lr=0.01))
    assert [h["phase"] for h in m["history"]] == ["max", "min"]  # SCRUB's msteps default
    _, m = run("SFR-on", state, task, TrainConfig(batch_size=16, lr=0.01))
    assert m["history"][-1]["iteration"] == SFRonConfig().iterations
    with pytest.raises(ValueError, match="ema_beta"):
        SFRonConfig(ema_beta=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SCRUBConfig(temperature=0.0)


@pytest.fixture(scope="module")
def cnn_task():
    ds = synthetic_dataset(n=160, n_test=32, seed=0)
    model = get_model("small_cnn", widths=(4, 8), hidden=16)
    apply_fn = make_apply_fn(model)
    # shapes from the model, values from numpy: compiling flax's init would dominate the test
    shapes, ms = jax.eval_shape(lambda k: init_model(model, k, ds.x[:1]), jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    params = jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s.shape).astype(np.float32)
                              / np.sqrt(np.prod(s.shape[:-1]) if len(s.shape) > 1 else 10.0)),
        shapes)
    flags = masks.prunable_leaves(params)
    # a random 20% of the prunable entries (exact count)
    sizes = [np.size(p) for p, f in zip(jax.tree.leaves(params), jax.tree.leaves(flags)) if f]
    keep = np.zeros(sum(sizes), bool)
    keep[rng.choice(keep.size, round(0.2 * keep.size), replace=False)] = True
    parts = iter(np.split(keep, np.cumsum(sizes)[:-1]))
    mask = jax.tree.map(
        lambda p, f: jnp.asarray(next(parts).reshape(p.shape) if f else np.ones(p.shape, bool)),
        params, flags)
    tx = optim.sgd()
    state = TrainState.create(params, ms, tx, mask)
    train = ds.train_pool
    task = UnlearnTask(apply_fn, tx, ds, retain=train[24:], forget=train[:24], init=state,
                       progress=False)
    return task, state, flags


@pytest.mark.parametrize("name", ["SCRUB", "SFR-on"])
def test_pruned_weights_stay_exactly_zero_on_a_small_cnn(name, cnn_task):
    task, state, flags = cnn_task
    cfg = (SCRUBConfig(epochs=2, msteps=1, batch_size=32, lr=0.05) if name == "SCRUB"
           else SFRonConfig(iterations=6, forget_freq=2, batch_size=32, lr=0.05,
                            forget_alpha=5.0, fisher_batches=2))
    new, _ = run(name, state, task, cfg)
    assert masks.density(new.mask, flags) == pytest.approx(0.2, abs=1e-3)
    changed = False
    for p, p0, m in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params),
                        jax.tree.leaves(new.mask)):
        p, p0, m = np.asarray(p), np.asarray(p0), np.asarray(m)
        assert np.all(p[~m] == 0.0)
        changed |= not np.array_equal(p[m], p0[m])
    assert changed
    for buf, m in zip(jax.tree.leaves(optax_trace(new.opt_state)), jax.tree.leaves(new.mask)):
        assert np.all(np.asarray(buf)[~np.asarray(m)] == 0.0)


def optax_trace(opt_state):
    return optax.tree.get(opt_state, "trace")

