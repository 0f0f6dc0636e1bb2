"""ℓ1-sparse unlearning and NegGrad+."""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import losses, optim
from ..data import batch_indices, epoch_order
from ..train import DivergenceError, TrainConfig, make_train_step
from .base import register, train_on


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
          "fine-tune on D_r with a linearly decaying ℓ1 penalty α·(1 − e/T)·‖θ ⊙ M‖₁")
def l1_sparse(state, task, cfg):
    def constants(epoch):
        return {"l1": jnp.float32(l1_weight(cfg.alpha, epoch, cfg.epochs))}

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
          "joint steps on β·CE(D_r) − (1 − β)·CE(D_f)")
def neggrad_plus(state, task, cfg):
    step = make_train_step(task.apply_fn, task.tx, neggrad_loss)
    state = state.replace(opt_state=optim.set_hyperparams(
        task.tx.init(state.params), momentum=cfg.momentum, weight_decay=cfg.weight_decay))
    x, y = task.dataset.x, task.dataset.y
    is_forget = np.concatenate([np.zeros(cfg.batch_size), np.ones(cfg.forget_batch)])
    is_forget = is_forget.astype(np.float32)
    history = []
    for epoch in range(cfg.epochs):
        lr = optim.multistep_lr(cfg.lr, epoch, cfg.milestones, cfg.gamma)
        state = state.replace(opt_state=optim.set_hyperparams(state.opt_state, learning_rate=lr))
        good, t0, out = state, time.perf_counter(), []
        r_idx, r_w = batch_indices(epoch_order(task.retain, cfg.seed, epoch), cfg.batch_size,
                                   shuffle=False)
        # D_f's examples for this epoch's steps: successive permutations of D_f, as many as needed
        need = len(r_idx) * cfg.forget_batch
        reps = -(-need // task.forget.size)
        f_idx = np.concatenate([epoch_order(task.forget, cfg.seed + 1, epoch * reps + k)
                                for k in range(reps)])[:need].reshape(len(r_idx), -1)
        f_w = np.ones(cfg.forget_batch, np.float32)
        for b in range(len(r_idx)):
            idx = np.concatenate([r_idx[b], f_idx[b]])
            w = np.concatenate([r_w[b], f_w])
            state, m = step(state, x[idx], y[idx], w,
                            {"is_forget": is_forget, "beta": jnp.float32(cfg.beta)})
            out.append(m)
        loss = np.array([float(m["loss"]) for m in jax.device_get(out)])
        history.append({"epoch": epoch + 1, "lr": lr, "loss": float(loss.mean()),
                        "seconds": time.perf_counter() - t0})
        bad = ~np.isfinite(loss) | (np.abs(loss) > (cfg.max_loss or np.inf))
        if bad.any():
            raise DivergenceError(f"NegGrad+: loss {loss[bad][0]!r} at epoch {epoch + 1} "
                                  f"(max_loss={cfg.max_loss}); kept the state from the start of "
                                  "that epoch", good, history)
    return state, {"history": history}
