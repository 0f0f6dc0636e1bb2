"""SmallCNN(pool='max') pools with a reshape-max: same values and gradients as nn.max_pool."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unprune_jax.models import get_model, init_model
from unprune_jax.models.cnn import max_pool_2x2


def _numpy_pool(x):
    """2×2/2 VALID max-pool by explicit windows."""
    n, h, w, c = x.shape
    out = np.empty((n, h // 2, w // 2, c), x.dtype)
    for i in range(h // 2):
        for j in range(w // 2):
            out[:, i, j] = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max(axis=(1, 2))
    return out


@pytest.mark.parametrize("shape", [(2, 4, 6, 3), (1, 28, 28, 2), (2, 5, 7, 1), (1, 1, 3, 2)])
def test_forward_equals_nn_max_pool_exactly(shape):
    x = np.array(jax.random.normal(jax.random.PRNGKey(0), shape))
    x[0, 0, :2, 0] = [-np.inf, np.inf]  # extreme values pool like any other
    got = np.asarray(max_pool_2x2(jnp.asarray(x)))
    np.testing.assert_array_equal(got, np.asarray(nn.max_pool(jnp.asarray(x), (2, 2), (2, 2))))
    np.testing.assert_array_equal(got, _numpy_pool(x))


def test_gradient_goes_to_the_window_maximum():
    x = jnp.array([[1.0, 5.0, 2.0], [3.0, 4.0, 9.0], [0.5, 0.5, 0.5]]).reshape(1, 3, 3, 1)
    g = jax.grad(lambda x: jnp.sum(max_pool_2x2(x) * 7.0))(x)
    expected = np.zeros((3, 3))
    expected[0, 1] = 7.0  # the only window (odd last row and column dropped) has its max at (0, 1)
    np.testing.assert_array_equal(np.asarray(g)[0, :, :, 0], expected)
    g_ref = jax.grad(lambda x: jnp.sum(nn.max_pool(x, (2, 2), (2, 2)) * 7.0))(x)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(g_ref))


def test_small_cnn_max_pool_gradients_equal_nn_max_pool():
    """The whole model's parameter gradients match a twin that uses nn.max_pool (ReLU before the
    pool: the only ties are windows of zeros, whose gradient the ReLU stops in both)."""

    class Reference(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            for i, w in enumerate((4, 8)):
                x = nn.max_pool(nn.relu(nn.Conv(w, (3, 3), name=f"conv{i}")(x)), (2, 2), (2, 2))
            x = nn.relu(nn.Dense(16, name="fc")(x.reshape(x.shape[0], -1)))
            return nn.Dense(10, name="head")(x)

    model = get_model("small_cnn", pool="max", widths=(4, 8), hidden=16)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 28, 28, 1))
    y = jnp.array([0, 3, 9])
    params, _ = init_model(model, jax.random.PRNGKey(2), x)
    reference = Reference().init(jax.random.PRNGKey(0), x)["params"]
    assert jax.tree.structure(params) == jax.tree.structure(reference)

    def loss(apply, p):
        logits = apply({"params": p}, x)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(3), y])

    out, ref = model.apply({"params": params}, x), Reference().apply({"params": params}, x)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    g = jax.grad(lambda p: loss(model.apply, p))(params)
    g_ref = jax.grad(lambda p: loss(Reference().apply, p))(params)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7,
                                   err_msg=jax.tree_util.keystr(path))
        assert np.any(np.asarray(a) != 0), jax.tree_util.keystr(path)
