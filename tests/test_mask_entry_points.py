"""Malformed masks are refused at every public entry point that takes a state (issue 12, item 8).

A ``(64,)`` mask leaf for a ``(3, 3, 32, 64)`` kernel would broadcast, and a float mask with 0.5
would count as kept: both must raise a ``ValueError`` naming the leaf, before any computation.
(``masks.apply_mask`` and ``masks.density``: tests/test_masks.py.)
"""

import jax.numpy as jnp
import numpy as np
import pytest

from unprune_jax import optim, unlearn
from unprune_jax.data import synthetic_dataset
from unprune_jax.losses import cross_entropy
from unprune_jax.train import TrainState, make_train_step

SHORT = r"c/kernel.*\(64,\).*\(3, 3, 32, 64\)"
FLOAT = r"c/kernel.*float32.*bool"


def conv_apply(params, model_state, x, train):
    flat = x.reshape(x.shape[0], -1)[:, :288]
    return flat @ params["c"]["kernel"].reshape(288, 64) + params["c"]["bias"], model_state


@pytest.fixture(scope="module")
def env():
    params = {"c": {"kernel": jnp.full((3, 3, 32, 64), 0.01), "bias": jnp.zeros(64)}}
    tx = optim.sgd(0.1, 0.0, 0.0)
    state = TrainState.create(params, {}, tx)
    full = state.mask
    bad = {
        "short": {"c": {"kernel": jnp.ones(64, bool), "bias": full["c"]["bias"]}},
        "float": {"c": {"kernel": jnp.full((3, 3, 32, 64), 0.5), "bias": full["c"]["bias"]}},
    }
    return state, tx, bad


@pytest.mark.parametrize("kind, message", [("short", SHORT), ("float", FLOAT)])
def test_train_step_refuses_a_malformed_mask(env, kind, message):
    state, tx, bad = env
    step = make_train_step(conv_apply, tx, cross_entropy)
    x, y, w = jnp.ones((2, 288)), jnp.zeros(2, jnp.int32), jnp.ones(2)
    with pytest.raises(ValueError, match=message):
        step(state.replace(mask=bad[kind]), x, y, w)
    with pytest.raises(ValueError, match=message):  # the update mask too
        step(state, x, y, w, {"update_mask": bad[kind]})
    new, _ = step(state, x, y, w)  # a good mask still trains
    assert not np.array_equal(new.params["c"]["bias"], state.params["c"]["bias"])


@pytest.mark.parametrize("kind, message", [("short", SHORT), ("float", FLOAT)])
def test_unlearn_run_refuses_a_malformed_mask(env, kind, message):
    state, tx, bad = env
    ds = synthetic_dataset(n=16, image_shape=(12, 12, 2), n_test=4, seed=0)
    task = unlearn.UnlearnTask(conv_apply, tx, ds, np.arange(12), np.arange(12, 16), state,
                               progress=False)
    with pytest.raises(ValueError, match=message):
        unlearn.run("FT", state.replace(mask=bad[kind]), task)
