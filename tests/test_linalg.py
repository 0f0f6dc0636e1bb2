"""unprune_jax.linalg: HVPs and the GGN product against dense Hessians, the masked HVP, power
iteration, CG and LiSSA against numpy (moved from test_unlearn_iu_boundary with the code)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from unprune_jax import linalg, masks


def linear_apply(params, model_state, x, train):
    return x.reshape(len(x), -1) @ params["fc"]["kernel"] + params["fc"]["bias"], model_state


def ce(logits, y):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], 1))


def spd(d, seed, lo=0.5, hi=3.0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * rng.uniform(lo, hi, d)) @ q.T


# --- (a) HVP against the dense Hessian ------------------------------------------------------------


def test_hvp_matches_dense_hessian_on_a_tiny_network():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(7, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 2, 7), jnp.int32)
    params = {"w1": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
              "b1": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
              "w2": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)}
    loss = lambda p: ce(jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"], y)
    flat, unravel = ravel_pytree(params)
    h = jax.jit(jax.hessian(lambda f: loss(unravel(f))))(flat)
    v = jnp.asarray(rng.normal(size=flat.shape), jnp.float32)
    got = ravel_pytree(jax.jit(lambda p, u: linalg.hvp(loss, p, u))(params, unravel(v)))[0]
    np.testing.assert_allclose(got, h @ v, rtol=1e-4, atol=1e-5)


def test_ggn_equals_hessian_for_a_linear_model_and_is_psd():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(9, 4)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 9), jnp.int32)
    params = {"fc": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
                     "bias": jnp.zeros(3, jnp.float32)}}
    model = lambda p: linear_apply(p, {}, x, False)[0]
    v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params)
    gv = jax.jit(lambda p, u: linalg.ggn_vp(model, lambda z: ce(z, y), p, u))(params, v)
    hv = jax.jit(lambda p, u: linalg.hvp(lambda q: ce(model(q), y), p, u))(params, v)
    np.testing.assert_allclose(ravel_pytree(gv)[0], ravel_pytree(hv)[0], rtol=1e-4, atol=1e-6)
    assert float(optax.tree.vdot(v, gv)) >= 0


# --- (b) the solvers on a known SPD system --------------------------------------------------------


@pytest.mark.parametrize("solver", ["cg", "lissa"])
def test_solvers_match_numpy_on_a_damped_spd_system(solver):
    d, lam = 8, 0.1
    a = spd(d, 0)
    rng = np.random.default_rng(1)
    g = rng.normal(size=d)
    want = np.linalg.solve(a + lam * np.eye(d), g)
    # a pytree right-hand side: the solvers work leaf-wise
    split = lambda v: {"u": v[:3], "w": v[3:].reshape(5, 1)}
    join = lambda t: np.concatenate([np.ravel(t["u"]), np.ravel(t["w"])])
    a32 = jnp.asarray(a, jnp.float32)

    def matvec(t):
        v = jnp.concatenate([t["u"], t["w"].ravel()])
        return split(a32 @ v + lam * v)

    b = split(jnp.asarray(g, jnp.float32))
    if solver == "cg":
        x, info = jax.jit(lambda b: linalg.cg_solve(matvec, b, iters=50, tol=1e-6))(b)
        assert int(info["iterations"]) <= d + 2 and not bool(info["negative_curvature"])
    else:
        x, info = linalg.lissa_solve(matvec, b, depth=2000, scale=3.5, tol=1e-6)
    np.testing.assert_allclose(join(x), want, rtol=1e-4, atol=1e-5)
    assert float(info["residual"]) < 1e-4


def test_cg_stops_on_negative_curvature_and_lissa_diverges_visibly():
    a = jnp.asarray(np.diag([1.0, -2.0, 3.0]), jnp.float32)
    b = jnp.ones(3, jnp.float32)
    x, info = linalg.cg_solve(lambda v: a @ v, b, iters=10)
    assert bool(info["negative_curvature"])
    assert np.all(np.isfinite(np.asarray(x)))
    _, info = linalg.lissa_solve(lambda v: a @ v, b, depth=50, scale=3.0)
    assert not float(info["residual"]) < 1.0


def test_power_iteration_finds_the_top_eigenvalue():
    a = spd(6, 3, lo=0.1, hi=1.0)  # eigenvalues in [0.1, 1]
    top = np.linalg.eigvalsh(a).max()
    lam, _ = linalg.power_iteration(lambda v: jnp.asarray(a, jnp.float32) @ v, jnp.ones(6), 200)
    assert abs(float(lam) - top) < 1e-3 * top


# --- (c) the masked HVP ---------------------------------------------------------------------------


def test_masked_hvp_is_the_dense_hessian_restricted_to_kept_coordinates():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(10, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 10), jnp.int32)
    params = {"w1": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32),
              "w2": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}
    mask = {"w1": jnp.asarray(rng.random((3, 5)) < 0.5),
            "w2": jnp.asarray(rng.random((5, 3)) < 0.7)}
    params = masks.apply_mask(params, mask)
    loss = lambda p: ce(jnp.tanh(x @ p["w1"]) @ p["w2"], y)
    fp, unravel = ravel_pytree(params)
    keep = np.asarray(ravel_pytree(mask)[0])
    h = np.asarray(jax.jit(jax.hessian(lambda f: loss(unravel(f))))(fp))
    v = rng.normal(size=fp.shape).astype(np.float32)  # non-zero at pruned coordinates too
    mhvp = jax.jit(lambda p, m, u: linalg.masked_hvp(loss, p, m, u))
    got = np.asarray(ravel_pytree(mhvp(params, mask, unravel(jnp.asarray(v))))[0])
    assert np.all(got[~keep] == 0.0)
    np.testing.assert_allclose(got[keep], h[np.ix_(keep, keep)] @ v[keep], rtol=1e-4, atol=1e-5)


# --- (d) what power_iteration_info reports ----------------------------------------------------


def test_power_iteration_info_counts_products_and_reports_the_residual():
    a = jnp.asarray(np.diag([3.0, 1.0, 0.5]), jnp.float32)
    matvec = lambda v: a @ v
    # tol = 0 runs every product; after 3 products from (1, 1, 1) the Rayleigh quotient is
    # vᵀAv of v ∝ A²(1, 1, 1) = (9, 1, 0.25): (243 + 1 + 0.03125) / (81 + 1 + 0.0625).
    lam, v, info = linalg.power_iteration_info(matvec, jnp.ones(3), iters=3)
    assert int(info["iterations"]) == 3
    assert float(lam) == pytest.approx(244.03125 / 82.0625, rel=1e-6)
    assert float(optax.tree.norm(v)) == pytest.approx(1.0, rel=1e-6)
    want_res = np.linalg.norm(np.asarray(a) @ np.asarray(v) - float(lam) * np.asarray(v))
    assert float(info["residual"]) == pytest.approx(want_res, rel=1e-5)
    # a tolerance stops early, at the top eigenvalue, with a small residual
    lam, v, info = linalg.power_iteration_info(matvec, jnp.ones(3), iters=500, tol=1e-6)
    assert 5 < int(info["iterations"]) < 500
    assert float(lam) == pytest.approx(3.0, rel=1e-5) and float(info["residual"]) < 1e-2
    assert linalg.power_iteration(matvec, jnp.ones(3), iters=3)[0] == pytest.approx(
        244.03125 / 82.0625, rel=1e-6)
