"""The theory's quantities: HVPs, λ(M) by power iteration and Lanczos, e(M), verification error,
and the unrolled-SGD check (reference theory-and-methods.md §1.4 test ladder)."""

import csv
import importlib.util
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from unprune_jax import linalg, masks
from unprune_jax.metrics import theory

ROOT = Path(__file__).resolve().parents[1]


def tiny_mlp(seed=0, hidden=12):
    """A 6-12-3 tanh MLP (123 params) on 20 random examples, float64, and its CE loss."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(20, 6)))
    y = jnp.asarray(rng.integers(0, 3, 20), jnp.int32)
    params = {"l1": {"kernel": jnp.asarray(rng.normal(size=(6, hidden))),
                     "bias": jnp.asarray(0.1 * rng.normal(size=(hidden,)))},
              "head": {"kernel": jnp.asarray(rng.normal(size=(hidden, 3))),
                       "bias": jnp.zeros(3)}}

    def apply_fn(p, model_state, xb, train):
        h = jnp.tanh(xb @ p["l1"]["kernel"] + p["l1"]["bias"])
        return h @ p["head"]["kernel"] + p["head"]["bias"], model_state

    return params, theory.loss_on_batch(apply_fn, {}, x, y), apply_fn, x, y


def dense_hessian(loss, params):
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.hessian(lambda f: loss(unravel(f)))(flat)), flat, unravel


def random_mask(params, density, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < density), params)


def top_abs(eigs):
    return eigs[np.argmax(np.abs(eigs))]


def quadratic(a):
    """½ xᵀAx on a pytree {'u': x[:2], 'w': x[2:]}, and its split/join."""
    a = jnp.asarray(a)
    split = lambda v: {"u": v[:2], "w": v[2:]}
    join = lambda t: jnp.concatenate([t["u"], t["w"]])
    return (lambda p: 0.5 * join(p) @ a @ join(p)), split, join


def sym(eigs, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigs),) * 2))
    return (q * np.asarray(eigs, float)) @ q.T


# --- HVPs -----------------------------------------------------------------------------------------


def test_hvp_equals_the_dense_hessian_times_v_on_a_tiny_mlp():
    with jax.enable_x64(True):
        params, loss, *_ = tiny_mlp()
        h, flat, unravel = dense_hessian(loss, params)
        assert flat.size == 123
        v = np.random.default_rng(1).normal(size=flat.shape)
        got = ravel_pytree(jax.jit(lambda p, u: linalg.hvp(loss, p, u))(params, unravel(v)))[0]
        np.testing.assert_allclose(got, h @ v, rtol=1e-10, atol=1e-12)


def test_masked_hvp_is_the_principal_submatrix_and_ignores_pruned_entries():
    with jax.enable_x64(True):
        params, loss, *_ = tiny_mlp(seed=1)
        mask = random_mask(params, 0.5, 0)
        keep = np.asarray(ravel_pytree(mask)[0])
        h, flat, unravel = dense_hessian(loss, masks.apply_mask(params, mask))
        v = np.random.default_rng(2).normal(size=flat.shape)
        # junk in the pruned entries of params must not matter: the loss sees M ⊙ θ
        junk = jax.tree.map(lambda p, m: jnp.where(m, p, 7.0), params, mask)
        got = np.asarray(ravel_pytree(linalg.masked_hvp(loss, junk, mask, unravel(v)))[0])
        assert np.all(got[~keep] == 0.0)
        np.testing.assert_allclose(got[keep], h[np.ix_(keep, keep)] @ v[keep], rtol=1e-10,
                                   atol=1e-12)


# --- power iteration ------------------------------------------------------------------------------


def test_power_iteration_finds_the_top_eigenvalue_of_a_known_quadratic():
    with jax.enable_x64(True):
        a = sym([3.0, -1.5, 1.0, 0.5, 0.2], 0)
        loss, split, join = quadratic(a)
        params = split(jnp.ones(5))
        full = masks.full_mask(params)
        lam, v, info = jax.jit(
            lambda p, m, k: theory.top_eigenvalue(loss, p, m, k, iters=500, tol=1e-14)
        )(params, full, jax.random.PRNGKey(0))
        assert abs(float(lam) - 3.0) < 1e-10
        np.testing.assert_allclose(np.asarray(a @ join(v)), 3.0 * np.asarray(join(v)),
                                   atol=1e-6)
        assert float(info["residual"]) < 1e-6
        assert int(info["iterations"]) < 500  # stopped by tol


def test_power_iteration_is_largest_magnitude_and_a_shift_gives_the_algebraic_top():
    with jax.enable_x64(True):
        a = sym([-5.0, 3.0, 1.0, 0.5], 1)
        loss, split, _ = quadratic(a)
        params = split(jnp.ones(4))
        full = masks.full_mask(params)
        key = jax.random.PRNGKey(3)
        lam, _, _ = theory.top_eigenvalue(loss, params, full, key, iters=2000, tol=1e-14)
        assert abs(float(lam) + 5.0) < 1e-8  # the largest |λ| keeps its sign
        lam, _, _ = theory.top_eigenvalue(loss, params, full, key, iters=2000, tol=1e-14,
                                          shift=6.0)
        assert abs(float(lam) - 3.0) < 1e-8
        # the generic solver with a fixed number of steps (tol = 0)
        lam, _ = linalg.power_iteration(lambda u: jnp.asarray(a) @ u, jnp.ones(4), iters=3)
        assert not abs(float(lam) + 5.0) < 1e-8  # three steps are not enough: it really iterates


def test_masked_lambda_matches_eigvalsh_of_the_kept_block_on_a_tiny_mlp():
    with jax.enable_x64(True):
        params, loss, *_ = tiny_mlp(seed=2)
        mask = random_mask(params, 0.4, 1)
        keep = np.asarray(ravel_pytree(mask)[0])
        h, *_ = dense_hessian(loss, masks.apply_mask(params, mask))
        want = top_abs(np.linalg.eigvalsh(h[np.ix_(keep, keep)]))
        lam, v, _ = theory.top_eigenvalue(loss, params, mask, jax.random.PRNGKey(0),
                                          iters=5000, tol=1e-13)
        assert abs(float(lam) - want) <= 1e-4 * abs(want)
        assert np.all(np.asarray(ravel_pytree(v)[0])[~keep] == 0.0)


def test_masked_lambda_ignores_the_hessian_outside_the_mask():
    with jax.enable_x64(True):
        a = sym([4.0, 2.5, -1.0, 0.7, 0.3, 0.1], 2)
        keep = np.array([True, False, True, True, False, True])
        b = a.copy()
        noise = sym([50.0, -40.0, 30.0, 9.0, 3.0, 1.0], 3)
        b[~keep, :] = noise[~keep, :]  # every entry touching a pruned coordinate changes
        b[:, ~keep] = noise[:, ~keep]
        split = lambda v: {"u": v[:2], "w": v[2:]}
        mask = split(jnp.asarray(keep))
        want = top_abs(np.linalg.eigvalsh(a[np.ix_(keep, keep)]))
        got = []
        for m in (a, b):
            loss, _, _ = quadratic(m)
            lam, _, _ = theory.top_eigenvalue(loss, split(jnp.ones(6)), mask,
                                              jax.random.PRNGKey(1), iters=3000, tol=1e-14)
            got.append(float(lam))
        assert abs(got[0] - want) < 1e-8 and got[1] == pytest.approx(got[0], abs=1e-8)
        assert abs(top_abs(np.linalg.eigvalsh(b)) - want) > 10  # the dense λ did change


def test_interlacing_lambda_of_nested_masks_is_monotone():
    """Cauchy interlacing: λ_max, and also the largest |λ|, of a principal sub-matrix never exceed
    the whole matrix's; masks from successive magnitude pruning are nested. The Hessian must be
    taken at one point for all masks: the weights are those of the sparsest model (zero outside
    every mask), so M ⊙ θ = θ throughout."""
    with jax.enable_x64(True):
        params, loss, *_ = tiny_mlp(seed=3)
        flags = masks.prunable_leaves(params)
        scores = jax.tree.map(jnp.abs, params)
        nested = [masks.full_mask(params)] + [
            masks.topk_mask(scores, d, flags, scope="global") for d in (0.6, 0.3, 0.1)]
        params = masks.apply_mask(params, nested[-1])
        for big, small in zip(nested, nested[1:]):
            assert all(np.all(np.asarray(s) <= np.asarray(b))
                       for s, b in zip(jax.tree.leaves(small), jax.tree.leaves(big)))
        top = jax.jit(lambda m, k: theory.top_eigenvalue(loss, params, m, k, iters=4000,
                                                         tol=1e-13)[0])
        shift = 50.0  # > −λ_min of this Hessian: the shifted iteration gives the algebraic top
        top_alg = jax.jit(lambda m, k: theory.top_eigenvalue(loss, params, m, k, iters=4000,
                                                             tol=1e-13, shift=shift)[0])
        lam = [abs(float(top(m, jax.random.PRNGKey(0)))) for m in nested]
        alg = [float(top_alg(m, jax.random.PRNGKey(0))) for m in nested]
        assert all(x >= y - 1e-8 for x, y in zip(lam, lam[1:])), lam
        assert all(x >= y - 1e-8 for x, y in zip(alg, alg[1:])), alg
        assert lam[0] > lam[-1] and alg[0] > alg[-1]  # and strictly somewhere
        for m, want_abs, want_alg in zip(nested, lam, alg):
            keep = np.asarray(ravel_pytree(m)[0])
            h, *_ = dense_hessian(loss, masks.apply_mask(params, m))
            eigs = np.linalg.eigvalsh(h[np.ix_(keep, keep)])
            assert want_abs == pytest.approx(np.abs(eigs).max(), rel=1e-6)
            assert want_alg == pytest.approx(eigs.max(), rel=1e-6)


# --- Lanczos --------------------------------------------------------------------------------------


def test_lanczos_with_full_steps_gives_every_eigenvalue():
    with jax.enable_x64(True):
        eigs = np.array([5.0, 3.0, 2.0, -1.0, 0.5, 0.25, -4.0, 1.5])
        a = jnp.asarray(sym(eigs, 4))
        ritz, info = linalg.lanczos(lambda v: a @ v, jnp.ones(8), 8)
        np.testing.assert_allclose(np.asarray(ritz), np.sort(eigs)[::-1], atol=1e-10)
        assert info["alpha"].shape == (8,) and info["beta"].shape == (7,)


def test_lanczos_restarts_after_finding_an_invariant_subspace():
    with jax.enable_x64(True):
        eigs = np.array([6.0, 2.0, 1.0, -3.0])
        q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(4, 4)))
        a = jnp.asarray((q * eigs) @ q.T)
        v0 = jnp.asarray(q[:, 0] + q[:, 1])  # spans only the eigenvectors of 6 and 2
        restarts = jax.random.normal(jax.random.PRNGKey(0), (4, 4), jnp.float64)
        ritz, info = linalg.lanczos(lambda v: a @ v, v0, 4, restarts)
        assert float(info["beta"][1]) == 0.0  # breakdown after two steps
        np.testing.assert_allclose(np.asarray(ritz), [6.0, 2.0, 1.0, -3.0], atol=1e-10)


def test_lanczos_topk_of_the_masked_hessian_matches_eigvalsh():
    with jax.enable_x64(True):
        params, loss, *_ = tiny_mlp(seed=4)
        mask = random_mask(params, 0.5, 2)
        keep = np.asarray(ravel_pytree(mask)[0])
        h, *_ = dense_hessian(loss, masks.apply_mask(params, mask))
        eigs = np.linalg.eigvalsh(h[np.ix_(keep, keep)])
        n_kept = int(keep.sum())
        # all Krylov steps: exact
        got, info = theory.lanczos_topk(loss, params, mask, jax.random.PRNGKey(0), k=3,
                                        steps=n_kept)
        np.testing.assert_allclose(np.asarray(got), np.sort(eigs)[::-1][:3], rtol=1e-8)
        got, _ = theory.lanczos_topk(loss, params, mask, jax.random.PRNGKey(0), k=2,
                                     steps=n_kept, by="magnitude")
        np.testing.assert_allclose(np.asarray(got), eigs[np.argsort(-np.abs(eigs))][:2],
                                   rtol=1e-8)
        # a few steps: the top Ritz value is close and never above λ_max (Ritz values interlace)
        got, _ = theory.lanczos_topk(loss, params, mask, jax.random.PRNGKey(0), k=1, steps=20)
        assert float(got[0]) <= eigs.max() + 1e-10
        assert float(got[0]) == pytest.approx(eigs.max(), rel=1e-3)
        with pytest.raises(ValueError, match=f"steps={n_kept + 1} exceeds the {n_kept} kept"):
            theory.lanczos_topk(loss, params, mask, jax.random.PRNGKey(0), k=1,
                                steps=n_kept + 1)
        with pytest.raises(ValueError, match="k=4, steps=3"):
            theory.lanczos_topk(loss, params, mask, jax.random.PRNGKey(0), k=4, steps=3)


# --- loss closure, proxy, verification error ------------------------------------------------------


def test_loss_on_batch_is_the_mean_cross_entropy_and_validates_shapes():
    with jax.enable_x64(True):
        params, loss, apply_fn, x, y = tiny_mlp()
        logits = np.asarray(apply_fn(params, {}, x, False)[0])
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        want = -np.mean(logp[np.arange(len(y)), np.asarray(y)])
        assert float(loss(params)) == pytest.approx(want, rel=1e-12)
        w = np.zeros(20)
        w[:5] = 1.0
        weighted = theory.loss_on_batch(apply_fn, {}, x, y, w)
        assert float(weighted(params)) == pytest.approx(
            -np.mean(logp[np.arange(5), np.asarray(y)[:5]]), rel=1e-12)
    with pytest.raises(ValueError, match="x has 20 examples but y has shape"):
        theory.loss_on_batch(apply_fn, {}, x, y[:3])


def test_unlearning_error_proxy_by_hand():
    params_t = {"a": jnp.array([3.0, 4.0, 100.0]), "b": jnp.array([[1.0]])}
    params_0 = {"a": jnp.zeros(3), "b": jnp.array([[1.0]])}
    mask = {"a": jnp.array([True, True, False]), "b": jnp.array([[True]])}
    # ‖M ⊙ (θ_t − θ_0)‖ = ‖(3, 4, ·, 0)‖ = 5 (the pruned 100 is ignored)
    e = theory.unlearning_error_proxy(0.1, 10, params_t, params_0, mask, -4.0)
    assert float(e) == pytest.approx(0.5 * 0.01 * 10 * 5 * 4)  # = 1.0, |λ| for a negative λ
    e = theory.unlearning_error_proxy(0.1, 10, params_t, params_0, mask, -4.0, sigma="sqrt")
    assert float(e) == pytest.approx(0.5 * 0.01 * 10 * 5 * 2)
    jitted = jax.jit(lambda eta, lam: theory.unlearning_error_proxy(eta, 10, params_t, params_0,
                                                                    mask, lam))
    assert float(jitted(0.2, 1.0)) == pytest.approx(0.5 * 0.04 * 10 * 5 * 1)
    with pytest.raises(ValueError, match="sigma must be one of"):
        theory.unlearning_error_proxy(0.1, 10, params_t, params_0, mask, 1.0, sigma="svd")
    with pytest.raises(ValueError, match="eta must be > 0, got -0.1"):
        theory.unlearning_error_proxy(-0.1, 10, params_t, params_0, mask, 1.0)
    with pytest.raises(ValueError, match="t must be ≥ 0, got -1"):
        theory.unlearning_error_proxy(0.1, -1, params_t, params_0, mask, 1.0)
    with pytest.raises(ValueError, match="mask leaf"):
        theory.unlearning_error_proxy(0.1, 1, params_t, params_0, {"a": mask["a"][:2],
                                                                   "b": mask["b"]}, 1.0)


def test_verification_error_is_the_distance_of_the_effective_weights():
    p = {"k": jnp.array([1.0, 2.0, 3.0, 9.0]), "bias": jnp.array([0.5])}
    g = {"k": jnp.array([1.0, 0.0, 7.0, -9.0]), "bias": jnp.array([1.5])}
    m = {"k": jnp.array([True, True, False, False]), "bias": jnp.array([True])}
    mg = {"k": jnp.array([True, False, True, False]), "bias": jnp.array([True])}
    # effective: (1, 2, 0, 0 | .5) vs (1, 0, 7, 0 | 1.5): ‖(0, 2, −7, 0, −1)‖ = √54
    assert theory.verification_error(p, g, m, mg) == pytest.approx(np.sqrt(54.0))
    # dense: every parameter, as Thudi et al. define it
    assert theory.verification_error(p, g) == pytest.approx(np.sqrt(4 + 16 + 324 + 1))
    with pytest.raises(ValueError, match="mask leaf"):
        theory.verification_error(p, g, {"k": m["k"][:3], "bias": m["bias"]}, mg)


# --- the unrolled-SGD check on a quadratic (§1.4 (e)) ---------------------------------------------


def test_unrolled_sgd_is_exact_on_linear_regression():
    """MSE linear regression: every batch Hessian H_k = X_kᵀX_k/B is constant, so Thudi's
    expansion of w_t around w_0 is exact, and SGU's error has a closed form:
    with B* the first batch, w_u − w'_t = η[Pg* − Π_{k=t−1..1}(I − ηPH_kP) Pg*], g* = ∇L_{B*}(w_0),
    hence VE ≤ η‖Pg*‖((1 + ηΛ)^{t−1} − 1), Λ = max_k ‖PH_kP‖."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        t, batch, d = 12, 5, 6
        xs = rng.normal(size=(t, batch, d))
        ys = rng.normal(size=(t, batch))
        keep = np.array([1, 1, 0, 1, 0, 1], bool)
        p = np.diag(keep.astype(float))
        w0 = rng.normal(size=d)
        eta = 0.01

        def batch_loss(params, x, y):
            return 0.5 * jnp.mean((x @ params["w"] - y) ** 2)

        out = jax.jit(lambda w, xs, ys: theory.unrolled_sgd_check(
            batch_loss, {"w": w}, {"w": jnp.asarray(keep)}, xs, ys, eta))(w0, xs, ys)

        hs = [x.T @ x / batch for x in xs]
        grad0 = [h @ (w0 * keep) - x.T @ y / batch for h, x, y in zip(hs, xs, ys)]

        def thudi(idx):
            """w_t − w_0 by the expansion: −ηΣ Pg_i(w_0) + Σ f(i),
            f(i) = −ηPH_i[acc + Σ_{j<i}f(j)]."""
            acc, fsum = np.zeros(d), np.zeros(d)
            for i in idx:
                f = -eta * p @ hs[i] @ (acc + fsum)
                acc, fsum = acc - eta * p @ grad0[i], fsum + f
            return acc + fsum, fsum

        drift, fs = thudi(range(t))
        drift_r, fs_r = thudi(range(1, t))
        w_start = w0 * keep
        np.testing.assert_allclose(out["params_t"]["w"], w_start + drift, atol=1e-12)
        np.testing.assert_allclose(out["params_retrain"]["w"], w_start + drift_r, atol=1e-12)
        np.testing.assert_allclose(out["params_unlearned"]["w"] - out["params_retrain"]["w"],
                                   fs - fs_r, atol=1e-12)  # SGU's error = the Hessian terms
        pg = p @ grad0[0]
        prod = np.eye(d)
        for k in range(1, t):
            prod = (np.eye(d) - eta * p @ hs[k] @ p) @ prod
        closed = eta * (pg - prod @ pg)
        ve = float(out["verification_error"])
        assert ve == pytest.approx(np.linalg.norm(closed), rel=1e-10)
        assert float(out["drift"]) == pytest.approx(np.linalg.norm(drift), rel=1e-10)
        assert float(out["no_unlearning_error"]) == pytest.approx(
            np.linalg.norm(closed - eta * pg), rel=1e-10)
        lam_k = max(np.abs(np.linalg.eigvalsh((p @ h @ p)[np.ix_(keep, keep)])).max() for h in hs)
        assert ve <= eta * np.linalg.norm(pg) * ((1 + eta * lam_k) ** (t - 1) - 1)
        # SGU's error is second order in η, doing nothing is first order: at a small η SGU wins
        assert ve < 0.5 * float(out["no_unlearning_error"])
        assert ve == pytest.approx(theory.verification_error(out["params_unlearned"],
                                                             out["params_retrain"]), rel=1e-12)


# --- the experiment script ------------------------------------------------------------------------


def test_theory_proxy_experiment_smoke(tmp_path):
    """The experiment end to end on tiny settings (real FashionMNIST when installed)."""
    if not Path("/usr/share/datasets/fashion-mnist").is_dir() and not os.environ.get(
            "UNPRUNE_JAX_DATA_DIR"):
        pytest.skip("FashionMNIST IDX files not installed (apt-get install dataset-fashion-mnist)")
    spec = importlib.util.spec_from_file_location("theory_proxy",
                                                  ROOT / "experiments" / "theory_proxy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--smoke", "--out", str(tmp_path)])
    for name in ("theory_sgd.csv", "theory_unprune.csv", "theory_proxy.md", "theory_proxy.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    with open(tmp_path / "theory_sgd.csv") as f:
        rows = list(csv.DictReader(f))
    cfg = module.SMOKE
    assert len(rows) == len(cfg["densities"]) * len(cfg["steps"]) * len(cfg["etas"])
    for r in rows:  # e is the proxy's formula applied to the recorded parts
        want = 0.5 * float(r["eta"]) ** 2 * int(r["t"]) * float(r["drift"]) * abs(
            float(r["lambda"]))
        assert float(r["e"]) == pytest.approx(want, rel=1e-5)
        assert float(r["ve"]) > 0
