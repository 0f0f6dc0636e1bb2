"""SCRUB (Kurmanji et al., NeurIPS 2023, "Towards Unbounded Machine Unlearning").

The student starts at the trained model; the teacher is a frozen copy of it. With the tempered
divergence

    d(x) = τ² · KL(softmax(t(x)/τ) ‖ softmax(s(x)/τ))      (t: teacher logits, s: student logits)

SCRUB alternates, at the level of whole epochs, between

* a **max epoch** over D_f minimising −d (push the student away from the teacher on the forget
  set), run only in the first ``msteps`` epochs, and
* a **min epoch** over D_r minimising γ·CE(y, s) + α·d (stay close to the teacher, and correct, on
  the retained data), run every epoch,

with one optimizer (and one optimizer state) shared by both phases. The teacher's logits are
computed once, in eval mode, before training; the student trains in train mode, as in the
original code.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import losses
from ..train import DivergenceError, TrainConfig, make_train_step, predict
from .base import is_stacked, lift_for, per_run, register


@dataclasses.dataclass(frozen=True)
class SCRUBConfig(TrainConfig):
    """SCRUB's settings: SGD, epochs and the learning-rate schedule as in ``TrainConfig``, plus

    Attributes:
        temperature: τ of the distillation divergence (repo ``kd_T``).
        ce_weight: γ, weight of the cross-entropy in the min step (repo ``gamma``). It is not
            called ``gamma`` because ``TrainConfig.gamma`` is the learning-rate decay factor.
        kl_weight: α, weight of the divergence on D_r in the min step (repo ``alpha``).
        msteps: the number of leading epochs that run a max epoch before their min epoch.
        forget_batch_size: batch size of the max epochs; None uses ``batch_size``.

    The defaults are the SCRUB repository's large-scale configuration (CIFAR-10 / Lacuna-10 with
    ResNet/All-CNN): SGD with momentum 0.9 and weight decay 5e-4, lr 5e-4, 3 epochs, msteps 2,
    τ 4, γ 0.99, α 0.001, no SWA smoothing. Its learning-rate decay (×0.1 at epochs 3, 5, 9) never
    fires within 3 epochs, so ``milestones`` is left empty. ``max_loss`` (None: only a non-finite
    loss stops the run) bounds |loss| of both phases; the max phase's loss is −d, unbounded below
    by design, so set it when a diverging student should stop early.
    """

    epochs: int = 3
    lr: float = 5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    temperature: float = 4.0
    ce_weight: float = 0.99
    kl_weight: float = 0.001
    msteps: int = 2
    forget_batch_size: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"SCRUB temperature must be > 0, got {self.temperature}")
        if self.msteps < 0:
            raise ValueError(f"SCRUB msteps must be ≥ 0, got {self.msteps}")
        if self.forget_batch_size is not None and self.forget_batch_size < 1:
            raise ValueError(f"forget_batch_size must be ≥ 1 or None, got "
                             f"{self.forget_batch_size}")


def kd_divergence(student_logits, teacher_logits, temperature) -> jax.Array:
    """Per-example τ²·KL(softmax(t/τ) ‖ softmax(s/τ)), shape (B,).

    Its gradient with respect to the student logits is τ·(softmax(s/τ) − softmax(t/τ)).
    """
    log_p_t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    log_p_s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
    return temperature**2 * kl


def scrub_max_loss(logits, labels, weights, extra, params=None) -> jax.Array:
    """Max step: −(weighted mean of d) on a D_f batch; ``extra`` holds ``teacher_logits`` and
    ``temperature``."""
    d = kd_divergence(logits, extra["teacher_logits"], extra["temperature"])
    return -losses.weighted_mean(d, weights)


def scrub_min_loss(logits, labels, weights, extra, params=None) -> jax.Array:
    """Min step: γ·CE + α·d (weighted means) on a D_r batch; ``extra`` holds ``teacher_logits``,
    ``temperature``, ``ce_weight`` (γ) and ``kl_weight`` (α)."""
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
    d = kd_divergence(logits, extra["teacher_logits"], extra["temperature"])
    return (extra["ce_weight"] * losses.weighted_mean(ce, weights)
            + extra["kl_weight"] * losses.weighted_mean(d, weights))


def teacher_logits(state, task) -> np.ndarray:
    """Eval-mode logits of ``state`` on D_f and D_r, scattered into a pool-sized (N, C) array."""
    out = np.zeros((len(task.dataset), task.dataset.num_classes), np.float32)
    for idx in (task.forget, task.retain):
        idx = np.asarray(idx)
        out[idx] = predict(state, task.apply_fn, task.dataset, idx)
    return out


@register(
    "SCRUB",
    SCRUBConfig(),
    "teacher-student: max epochs push away from the original model on D_f (first msteps epochs), "
    "min epochs keep CE and closeness to it on D_r",
    batched=True,
)
def scrub(state, task, cfg):
    """Runs SCRUB; ``metrics['history']`` has one record per phase epoch, with ``phase`` 'max' or
    'min' and ``epoch`` the SCRUB epoch (1-based)."""
    extras = {"teacher_logits": per_run(lambda s: teacher_logits(s, task), state, state)}
    constants = lift_for(state, {
        "temperature": np.float32(cfg.temperature),
        "ce_weight": np.float32(cfg.ce_weight),
        "kl_weight": np.float32(cfg.kl_weight),
    })
    max_step = make_train_step(task.apply_fn, task.tx, scrub_max_loss)
    min_step = make_train_step(task.apply_fn, task.tx, scrub_min_loss)
    max_cfg = dataclasses.replace(cfg, epochs=1, batch_size=cfg.forget_batch_size or cfg.batch_size)
    min_cfg = dataclasses.replace(cfg, epochs=1)
    stacked = is_stacked(state)
    k = len(state.step) if stacked else 1
    # One optimizer state for the whole run, shared by the max and min epochs.
    state = state.replace(opt_state=jax.vmap(task.tx.init)(state.params) if stacked
                          else task.tx.init(state.params))
    history: list[list[dict]] = [[] for _ in range(k)]
    for epoch in range(cfg.epochs):
        phases = [("max", max_step, task.forget, max_cfg)] if epoch < cfg.msteps else []
        phases.append(("min", min_step, task.retain, min_cfg))
        for phase, step, indices, phase_cfg in phases:
            # start_epoch=epoch: the learning rate follows cfg's schedule at SCRUB epoch
            # `epoch`, and the data order is drawn from (seed, epoch).
            kw = dict(start_epoch=epoch, extras=extras, constants=constants,
                      desc=f"SCRUB {phase}")
            try:
                if stacked:
                    state, hist, _ = task.trainer.fit_many(state, step, task.dataset,
                                                           [indices] * k, phase_cfg, **kw)
                else:
                    state, h, _ = task.trainer.fit(state, step, task.dataset, indices, phase_cfg,
                                                   **kw)
                    hist = [h]
            except DivergenceError as e:
                hist = e.history if stacked else [e.history]
                history = [a + [{**h, "phase": phase} for h in b] for a, b in zip(history, hist)]
                raise DivergenceError(str(e), e.state, history if stacked else history[0]) from e
            history = [a + [{**h, "phase": phase} for h in b] for a, b in zip(history, hist)]
    if stacked:
        return state, {"history": history, "per_run": ("history",)}
    return state, {"history": history[0]}
