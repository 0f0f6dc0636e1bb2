"""Random labels (RL, in its summed and sequential forms) and SalUn.

RL trains on D_f with labels drawn uniformly from the *wrong* classes (fresh every epoch) and on
D_r with its true labels. The SalUn paper's Eq. 6 sums the two losses ("RL": one shuffled pass
over D_r ∪ D_f); its code alternates a full pass over D_f and one over D_r each epoch
("RL-seq"). The peers' code also lets a random label equal the true one; ours never does.

SalUn = RL restricted to the salient weights: the fraction ``saliency`` of the kept weights with
the largest |∇_θ CE(D_f)| (summed over D_f's batches, eval mode, all parameters). Every other
weight is frozen exactly: its gradient and its update (momentum, weight decay) are zeroed in the
step. On a pruned model the fraction is of the kept (unpruned) weights: ranked among all
weights, pruned weights (gradient 0) would fill the top half and the saliency mask would select
nothing at 10% density.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .. import losses
from .. import masks as masks_lib
from ..data import batch_indices
from ..train import TrainConfig, make_train_step
from .base import is_stacked, per_run, register, train_on


def random_wrong_labels(labels: np.ndarray, forget, num_classes: int, seed: int, epoch: int):
    """``labels`` with D_f's entries replaced by a uniform draw over the other classes."""
    rng = np.random.default_rng([seed, epoch, 1])
    out = np.array(labels, copy=True)
    shift = rng.integers(1, num_classes, size=len(forget))  # 1..C−1: never the true class
    out[forget] = (out[forget] + shift) % num_classes
    return out


def _labels_fn(task, cfg):
    def labels(epoch):
        return random_wrong_labels(task.dataset.y, task.forget, task.dataset.num_classes,
                                   cfg.seed, epoch)

    return labels


def _relabel_train(state, task, cfg, sequential: bool, desc: str, constants=None):
    """RL's training: one shuffled pass over D_r ∪ D_f, or (sequential) a pass over D_f then one
    over D_r each epoch, one optimizer state throughout. ``constants`` as ``train_on`` takes
    them (a leading K axis for K stacked runs)."""
    labels = _labels_fn(task, cfg)
    if not sequential:
        both = np.union1d(task.retain, task.forget)
        return train_on(state, task, cfg, both, losses.cross_entropy, desc, labels=labels,
                        constants=constants)
    history = None
    one = dataclasses.replace(cfg, epochs=1)
    step = make_train_step(task.apply_fn, task.tx, losses.cross_entropy)
    state = state.replace(opt_state=jax.vmap(task.tx.init)(state.params) if is_stacked(state)
                          else task.tx.init(state.params))
    k = len(state.step) if is_stacked(state) else 1
    for epoch in range(cfg.epochs):
        for part, idx in (("forget", task.forget), ("retain", task.retain)):
            kw = dict(start_epoch=epoch, labels=labels, constants=constants,
                      desc=f"{desc} {part}")
            if is_stacked(state):
                state, hist, _ = task.trainer.fit_many(state, step, task.dataset, [idx] * k, one,
                                                       **kw)
            else:
                state, h, _ = task.trainer.fit(state, step, task.dataset, idx, one, **kw)
                hist = [h]
            hist = [[{**h, "phase": part} for h in run] for run in hist]
            history = hist if history is None else [a + b for a, b in zip(history, hist)]
    if is_stacked(state):
        return state, {"history": history, "per_run": ("history",)}
    return state, {"history": history[0]}


@register("RL", TrainConfig(epochs=2, lr=0.01),
          "random wrong labels on D_f plus D_r, one shuffled pass (SalUn Eq. 6)", batched=True)
def random_labels(state, task, cfg):
    return _relabel_train(state, task, cfg, sequential=False, desc="RL")


@register("RL-seq", TrainConfig(epochs=2, lr=0.01),
          "random wrong labels: a pass over D_f, then over D_r, each epoch (SalUn's code)",
          batched=True)
def random_labels_sequential(state, task, cfg):
    return _relabel_train(state, task, cfg, sequential=True, desc="RL-seq")


@dataclasses.dataclass(frozen=True)
class SalUnConfig(TrainConfig):
    """SalUn: ``saliency`` is the fraction of kept weights that may move (the paper's 0.5)."""

    saliency: float = 0.5
    sequential: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.saliency <= 1.0:
            raise ValueError(f"SalUn saliency fraction must be in (0, 1], got {self.saliency}")


def forget_gradient(state, task, batch_size: int = 256):
    """Σ over D_f's batches of ∇_θ of the batch-mean CE, in eval mode, masked."""
    def batch_grad(params, x, y, w):
        def loss(p):
            logits = task.apply_fn(masks_lib.apply_mask(p, state.mask), state.model_state, x,
                                   False)[0]
            return losses.cross_entropy(logits, y, w)

        return jax.grad(loss)(params)

    grad_fn = jax.jit(batch_grad)
    idx, w = batch_indices(task.forget, batch_size, shuffle=False)
    total = jax.tree.map(jnp.zeros_like, state.params)
    for b in range(len(idx)):
        g = grad_fn(state.params, task.dataset.x[idx[b]], task.dataset.y[idx[b]], w[b])
        total = jax.tree.map(jnp.add, total, g)
    return masks_lib.apply_mask(total, state.mask)


def saliency_mask(grads, mask, fraction: float):
    """The ``fraction`` of kept entries (``mask``) with the largest |grad|, over all parameters.

    Exactly round(fraction · kept) entries; ties to the lower index. The result is a subset of
    ``mask`` (saliency ∧ pruning).
    """
    kept, total = masks_lib.count(mask)
    k = int(round(fraction * kept))
    every = jax.tree.map(lambda _: True, grads)
    return masks_lib.topk_mask(jax.tree.map(jnp.abs, grads), k / total, every,
                               candidates=mask, on_empty_layer="ignore")


@register("SalUn", SalUnConfig(epochs=2, lr=0.01),
          "RL on the salient weights only (top |∇ CE(D_f)|), all others frozen exactly",
          batched=True)
def salun(state, task, cfg):
    sal = per_run(lambda s: saliency_mask(forget_gradient(s, task), s.mask, cfg.saliency),
                  state, state)
    state, metrics = _relabel_train(state, task, cfg, cfg.sequential, "SalUn",
                                    constants={"update_mask": sal})
    fraction = per_run(lambda m: np.float64(masks_lib.density(m)), sal, state)
    if is_stacked(state):
        return state, {**metrics, "salient_fraction": [float(f) for f in fraction],
                       "per_run": ("history", "salient_fraction")}
    return state, {**metrics, "salient_fraction": float(fraction)}
