"""Retrain under the original mask, fine-tuning, gradient ascent."""

from __future__ import annotations

from .. import losses
from ..train import TrainConfig
from .base import per_run, register, train_on


@register(
    "retrain",
    TrainConfig(epochs=3, lr=0.05),
    "train from θ_0 on D_r under the original mask (exact unlearning of the weights, not the mask)",
    batched=True,
)
def retrain(state, task, cfg):
    start = per_run(lambda m: task.init.with_mask(m, task.tx), state.mask, state)
    return train_on(start, task, cfg, task.retain, losses.cross_entropy, "retrain")


@register("FT", TrainConfig(epochs=2, lr=0.01), "fine-tune on D_r (catastrophic forgetting of D_f)",
          batched=True)
def finetune(state, task, cfg):
    return train_on(state, task, cfg, task.retain, losses.cross_entropy, "FT")


@register(
    "GA",
    TrainConfig(epochs=1, lr=1e-4, batch_size=128, max_loss=50.0),
    "gradient ascent on D_f's cross-entropy; stops with DivergenceError past max_loss",
    batched=True,
)
def gradient_ascent(state, task, cfg):
    return train_on(state, task, cfg, task.forget, losses.negative_cross_entropy, "GA")

