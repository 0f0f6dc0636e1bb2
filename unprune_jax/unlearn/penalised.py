"""ℓ1-sparse unlearning and NegGrad+."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import losses, runs
from ..data import batch_indices, epoch_order
from ..train import Batches, DivergenceError, TrainConfig, make_train_step, single_run
from .base import is_stacked, lift_for, register, train_on


@dataclasses.dataclass(frozen=True)
class L1Config(TrainConfig):
    """ℓ1-sparse: ``alpha`` is the initial ℓ1 weight (the peers leave it unspecified; 5e-4 is
    what third-party reimplementations use), decayed linearly per epoch: γ_e = α·(1 − e/T)."""

    alpha: float = 5e-4


def l1_norm(params):
    """‖θ‖₁ with the subgradient sign(θ): 0 at θ = 0, where ``jax.grad`` of ``abs`` gives +1
    (which would push every kept weight that is exactly 0, e.g. a dead unit's bias, by −lr·γ)."""
    return sum(jnp.sum(jax.lax.stop_gradient(jnp.sign(p)) * p) for p in jax.tree.leaves(params))


def l1_penalised_ce(logits, labels, weights, extra, params):
    """CE + γ·‖θ ⊙ M‖₁ over all parameters (pruned entries are exactly 0 already); the penalty's
    gradient is γ·sign(θ), 0 at θ = 0 (see :func:`l1_norm`)."""
    return losses.cross_entropy(logits, labels, weights) + extra["l1"] * l1_norm(params)


def l1_weight(alpha: float, epoch: int, epochs: int) -> float:
    """γ_e = α·(1 − e/T) for 0-based epoch e of T."""
    return alpha * (1.0 - epoch / epochs)


@register("l1-sparse", L1Config(epochs=2, lr=0.01),
          "fine-tune on D_r with a linearly decaying ℓ1 penalty α·(1 − e/T)·‖θ ⊙ M‖₁",
          batched=True)
def l1_sparse(state, task, cfg):
    def constants(epoch):
        return lift_for(state, {"l1": np.float32(l1_weight(cfg.alpha, epoch, cfg.epochs))})

    return train_on(state, task, cfg, task.retain, l1_penalised_ce, "l1-sparse",
                    constants=constants)


@dataclasses.dataclass(frozen=True)
class NegGradConfig(TrainConfig):
    """NegGrad+: each step minimises β·CE(D_r batch) − (1 − β)·CE(D_f batch). ``forget_batch``
    examples of D_f join every batch of D_r (cycling through D_f)."""

    beta: float = 0.95
    forget_batch: int = 32

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"NegGrad+ beta must be in [0, 1], got {self.beta}")


def neggrad_loss(logits, labels, weights, extra, params):
    """β·CE over the retain part − (1 − β)·CE over the forget part of a joint batch."""
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
    f = extra["is_forget"]
    retain = losses.weighted_mean(ce, weights * (1 - f))
    forget = losses.weighted_mean(ce, weights * f)
    return extra["beta"] * retain - (1 - extra["beta"]) * forget


@register("NegGrad+", NegGradConfig(epochs=2, lr=0.01, max_loss=50.0),
          "joint steps on β·CE(D_r) − (1 − β)·CE(D_f)", batched=True)
def neggrad_plus(state, task, cfg):
    """Each epoch visits D_r in ``batch_size`` batches; batch b also holds the next
    ``forget_batch`` examples of D_f, drawn from successive permutations of D_f."""
    k = runs.num_runs(state) if is_stacked(state) else 1
    is_forget = np.concatenate([np.zeros(cfg.batch_size), np.ones(cfg.forget_batch)])

    def batches(epoch: int) -> Batches:
        r_idx, r_w = batch_indices(epoch_order(task.retain, cfg.seed, epoch), cfg.batch_size,
                                   shuffle=False)
        need = len(r_idx) * cfg.forget_batch
        reps = -(-need // task.forget.size)
        f_idx = np.concatenate([epoch_order(task.forget, cfg.seed + 1, epoch * reps + j)
                                for j in range(reps)])[:need].reshape(len(r_idx), -1)
        idx = np.concatenate([r_idx, f_idx], axis=1)
        w = np.concatenate([r_w, np.ones_like(f_idx, np.float32)], axis=1)
        return Batches(np.repeat(idx[:, None], k, 1), np.repeat(w[:, None], k, 1))

    step = make_train_step(task.apply_fn, task.tx, neggrad_loss)
    one = state if is_stacked(state) else runs.stack([state])
    one = one.replace(opt_state=jax.vmap(task.tx.init)(one.params))
    constants = {"is_forget": np.broadcast_to(is_forget.astype(np.float32),
                                              (k, is_forget.size)),
                 "beta": np.full((k,), cfg.beta, np.float32)}
    try:
        out, history, _ = task.trainer.run_epochs(one, step, task.dataset, batches, [cfg] * k,
                                                  constants=constants, desc="NegGrad+")
    except DivergenceError as e:
        raise (e if is_stacked(state) else single_run(e)) from None
    if is_stacked(state):
        return out, {"history": history, "per_run": ("history",)}
    return runs.unstack(out)[0], {"history": history[0]}
