"""Models: shapes, batch-norm state, prunable leaves, registry errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unprune_jax import losses, masks, optim
from unprune_jax.models import get_model, init_model, make_apply_fn
from unprune_jax.train import TrainState, make_train_step


def test_resnet18_cifar_variant_trains_with_batch_norm_state():
    model = get_model("resnet18", width=8)  # the real topology, narrow for the test
    x = jnp.ones((2, 32, 32, 3))
    params, state = init_model(model, jax.random.PRNGKey(0), x)
    flags = masks.prunable_leaves(params)
    kernels = [p for p, f in zip(masks.leaf_paths(params), jax.tree.leaves(flags)) if f]
    assert len(kernels) == 1 + 16 + 3  # stem, 8 blocks × 2 convs, 3 shortcuts; head excluded
    assert "head/kernel" not in kernels and "stem/kernel" in kernels
    assert params["stem"]["kernel"].shape == (3, 3, 3, 8)  # 3×3 stem, no max-pool
    apply_fn = make_apply_fn(model)
    logits, new_state = apply_fn(params, state, x, True)
    assert logits.shape == (2, 10)
    mean0 = state["batch_stats"]["stem_bn"]["mean"]
    assert not np.allclose(new_state["batch_stats"]["stem_bn"]["mean"], mean0)
    tx = optim.sgd()
    mask = masks.topk_mask(jax.tree.map(jnp.abs, params), 0.2, flags)
    st = TrainState.create(params, state, tx, mask)
    st, m = make_train_step(apply_fn, tx, losses.cross_entropy)(
        st, np.random.rand(2, 32, 32, 3).astype(np.float32), np.array([1, 2]), np.ones(2))
    assert np.isfinite(float(m["loss"]))
    assert masks.density(st.mask, flags) == pytest.approx(0.2, abs=1e-4)


@pytest.mark.parametrize("pool", ["stride", "max"])
def test_small_cnn_shapes(pool):
    model = get_model("small_cnn", pool=pool)
    params, state = init_model(model, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    assert state == {} and params["fc"]["kernel"].shape == (7 * 7 * 64, 128)
    logits, _ = make_apply_fn(model)(params, state, jnp.zeros((3, 28, 28, 1)), False)
    assert logits.shape == (3, 10)


def test_unknown_model_suggests_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'resnet18'"):
        get_model("resnet-18")
