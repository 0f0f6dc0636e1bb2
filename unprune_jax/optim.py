"""The optimizer: SGD with momentum and coupled weight decay, hyperparameters held in its state.

``optax.inject_hyperparams`` keeps learning rate, momentum and weight decay as arrays inside the
optimizer state. One compiled train step therefore serves every stage and every unlearning method
whatever their learning rates, a schedule is a write into the state between epochs, and K runs with
different hyperparameters stack along a leading axis.

The update is PyTorch's ``SGD(momentum, weight_decay)``: g ← g + wd·θ; b ← μ·b + g; θ ← θ − lr·b.
Masking is not done here but in the train step (``train.py``), on gradients and on new parameters.
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
import optax


def _sgd(learning_rate, momentum, weight_decay):
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(learning_rate, momentum=momentum),
    )


@functools.cache
def sgd(learning_rate: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4):
    """SGD with momentum and weight decay, hyperparameters injectable (see :func:`set_hyperparams`).

    Cached, so every caller gets the same transformation object and so the same compiled step.
    """
    return optax.inject_hyperparams(_sgd)(
        learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay
    )


def set_hyperparams(opt_state: Any, **values: float) -> Any:
    """Returns ``opt_state`` with new hyperparameter values (no recompilation of the step)."""
    hyper = dict(opt_state.hyperparams)
    for name, value in values.items():
        if name not in hyper:
            raise KeyError(f"unknown hyperparameter {name!r}; the optimizer has {sorted(hyper)}")
        hyper[name] = jnp.asarray(value, dtype=jnp.asarray(hyper[name]).dtype)
    return opt_state._replace(hyperparams=hyper)


def multistep_lr(base_lr: float, epoch: int, milestones=(), gamma: float = 0.1) -> float:
    """Learning rate at ``epoch`` (0-based) of a step schedule: × gamma at each milestone passed."""
    return base_lr * gamma ** sum(epoch >= m for m in milestones)
