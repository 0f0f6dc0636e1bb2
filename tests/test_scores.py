"""Scores against numpy references on tiny models."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unprune_jax import scores


def linear_apply(params, model_state, x, train):
    return x @ params["fc"]["kernel"] + params["fc"]["bias"], model_state


def mlp_apply(params, model_state, x, train):
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["l1"]["kernel"] + params["l1"]["bias"])
    return h @ params["l2"]["kernel"] + params["l2"]["bias"], model_state


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture
def linear():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5)).astype(np.float32)
    y = rng.integers(0, 3, 8).astype(np.int32)
    W = rng.normal(size=(5, 3)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    d = softmax(x @ W + b) - np.eye(3)[y]
    gW, gb = x.T @ d / 8, d.sum(0) / 8
    return x, y, {"fc": {"kernel": W, "bias": b}}, gW, gb


def test_snip_has_the_theta_factor(linear):
    x, y, params, gW, gb = linear
    s = scores.snip(params, {}, linear_apply, x, y)
    np.testing.assert_allclose(s["fc"]["kernel"], np.abs(params["fc"]["kernel"] * gW), rtol=1e-5)
    np.testing.assert_allclose(s["fc"]["bias"], np.abs(params["fc"]["bias"] * gb), rtol=1e-5)
    g = scores.snip(params, {}, linear_apply, x, y, grad_only=True)
    np.testing.assert_allclose(g["fc"]["kernel"], np.abs(gW), rtol=1e-5)
    np.testing.assert_allclose(scores.saliency(params, {}, linear_apply, x, y)["fc"]["kernel"],
                               np.abs(gW), rtol=1e-5)


def test_snip_on_a_masked_model_scores_pruned_entries_zero(linear):
    x, y, params, _, _ = linear
    mask = {"fc": {"kernel": np.eye(5, 3, dtype=bool), "bias": np.ones(3, bool)}}
    s = scores.snip(params, {}, linear_apply, x, y, mask=mask)
    assert np.all(np.asarray(s["fc"]["kernel"])[~mask["fc"]["kernel"]] == 0)


def test_synflow_matches_the_path_count_formula():
    rng = np.random.default_rng(1)
    W1, b1 = rng.normal(size=(4, 6)), rng.normal(size=6)
    W2, b2 = rng.normal(size=(6, 2)), rng.normal(size=2)
    params = {"l1": {"kernel": W1, "bias": b1}, "l2": {"kernel": W2, "bias": b2}}
    params = jax.tree.map(lambda a: a.astype(np.float32), params)
    s = scores.synflow(params, {}, mlp_apply, (4,))
    # with |θ| and an all-ones input every unit is active: R = Σ_k [(1ᵀ|W1| + |b1|)|W2| + |b2|]_k
    out_paths = np.abs(W2).sum(1)  # ∂R/∂h_j
    h = np.abs(W1).sum(0) + np.abs(b1)
    np.testing.assert_allclose(s["l1"]["kernel"], np.abs(W1) * out_paths[None, :], rtol=1e-5)
    np.testing.assert_allclose(s["l1"]["bias"], np.abs(b1) * out_paths, rtol=1e-5)
    np.testing.assert_allclose(s["l2"]["kernel"], np.abs(W2) * h[:, None], rtol=1e-5)
    np.testing.assert_allclose(s["l2"]["bias"], np.abs(b2), rtol=1e-5)
    s64 = scores.synflow(params, {}, mlp_apply, (4,), dtype=jnp.float64)
    np.testing.assert_allclose(s64["l1"]["kernel"], s["l1"]["kernel"], rtol=1e-5)
    assert s64["l1"]["kernel"].dtype == jnp.float32


def test_synflow_is_data_free_and_sign_invariant():
    """Only |θ| matters: flipping signs (which changes every data-driven score) changes nothing."""
    rng = np.random.default_rng(2)
    params = {"l1": {"kernel": rng.normal(size=(4, 6)), "bias": rng.normal(size=6)},
              "l2": {"kernel": rng.normal(size=(6, 2)), "bias": rng.normal(size=2)}}
    params = jax.tree.map(lambda a: a.astype(np.float32), params)
    flipped = jax.tree.map(lambda a: -a, params)
    a = scores.synflow(params, {}, mlp_apply, (4,))
    b = scores.synflow(flipped, {}, mlp_apply, (4,))
    chex.assert_trees_all_equal(a, b)


def test_filter_l2_by_hand():
    k = np.zeros((1, 1, 2, 3), np.float32)
    k[0, 0, :, 0] = [3, 4]
    k[0, 0, :, 1] = [1, 0]
    s = scores.filter_l2({"c": {"kernel": k, "bias": np.array([-1.0, 2.0, 0.0])}})
    np.testing.assert_allclose(s["c"]["kernel"][0, 0], [[5, 1, 0], [5, 1, 0]])
    np.testing.assert_allclose(s["c"]["bias"], [1, 2, 0])


def test_random_scores_are_seeded():
    p = {"a": np.zeros((3, 4)), "b": np.zeros(5)}
    a, b = scores.random(p, jax.random.PRNGKey(0)), scores.random(p, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(a["a"], b["a"])
    other = scores.random(p, jax.random.PRNGKey(1))
    assert a["a"].shape == (3, 4) and not np.array_equal(a["a"], other["a"])


def test_scores_by_name():
    assert scores.get("snip") is scores.snip
    with pytest.raises(ValueError, match="unknown score 'synflw'.*Did you mean 'synflow'"):
        scores.get("synflw")


def test_fisher_is_half_the_empirical_fisher_diagonal_times_theta_squared():
    """Optimal Brain Damage with the empirical Fisher: a linear softmax model against numpy
    (per-example gradient of CE w.r.t. W is x ⊗ (softmax − onehot)); chunks do not change it."""
    import numpy as np

    from unprune_jax import scores

    def apply_fn(p, s, x, train):
        return x.reshape(x.shape[0], -1) @ p["w"] + p["b"], s

    rng = np.random.default_rng(0)
    p = {"w": rng.normal(size=(4, 3)).astype(np.float32),
         "b": rng.normal(size=(3,)).astype(np.float32)}
    x, y = rng.normal(size=(10, 2, 2)).astype(np.float32), rng.integers(0, 3, 10)
    gw, gb = [], []
    for xi, yi in zip(x, y):
        z = xi.reshape(-1) @ p["w"] + p["b"]
        q = np.exp(z - z.max())
        q /= q.sum()
        q[yi] -= 1
        gw.append(np.outer(xi.reshape(-1), q) ** 2)
        gb.append(q ** 2)
    for chunk in (3, 64):
        f = scores.fisher(p, {}, apply_fn, x, y, chunk=chunk)
        np.testing.assert_allclose(f["w"], 0.5 * np.mean(gw, 0) * p["w"] ** 2, rtol=1e-5)
        np.testing.assert_allclose(f["b"], 0.5 * np.mean(gb, 0) * p["b"] ** 2, rtol=1e-5)
    m = {"w": np.arange(12).reshape(4, 3) % 2 == 0, "b": np.ones(3, bool)}
    fm = scores.fisher(p, {}, apply_fn, x, y, mask=m)
    assert np.all(np.asarray(fm["w"])[~m["w"]] == 0)
