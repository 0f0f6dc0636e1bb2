"""Pruners: drivers that return a new state and mask, never mutating their inputs.

OMP (one-shot magnitude pruning), as the field runs it: train dense, keep the top-``density``
fraction of |θ| (globally or per layer), rewind the kept weights to θ_0 or to the weights after an
early epoch (with the learning-rate schedule rewound to that epoch), then retrain under the mask.
"""

from __future__ import annotations

import dataclasses

from . import masks as masks_lib
from . import scores as scores_lib
from .data import Dataset
from .train import TrainConfig, TrainState, fit


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """One-shot magnitude pruning.

    Attributes:
        density: fraction of prunable weights kept, in (0, 1] (0.1 = 90% sparsity).
        scope: ``'global'`` (one threshold over all prunable layers) or ``'per_layer'``.
        rewind_epoch: 0 rewinds to θ_0 (lottery-ticket style); k > 0 to the dense weights after
            epoch k, with the learning-rate schedule resumed at epoch k.
        retrain_epochs: sparse retraining epochs; None = as many as the dense training.
    """

    method: str = "omp"
    density: float = 0.1
    scope: str = "global"
    rewind_epoch: int = 0
    retrain_epochs: int | None = None

    def __post_init__(self):
        masks_lib.validate_density(self.density)
        if self.method != "omp":
            raise ValueError(f"unknown pruner {self.method!r}; available: ['omp']")
        if self.scope not in ("global", "per_layer"):
            raise ValueError(f"scope must be 'global' or 'per_layer', got {self.scope!r}")
        if self.rewind_epoch < 0:
            raise ValueError(f"rewind_epoch must be ≥ 0, got {self.rewind_epoch}")


def lwm_mask(params, density: float, prunable, scope: str = "global"):
    """Keeps the ``density`` fraction of prunable weights with the largest |θ|."""
    return masks_lib.topk_mask(scores_lib.magnitude(params), density, prunable, scope)


def prune_and_rewind(dense: TrainState, rewind: TrainState, cfg: PruneConfig, prunable, tx):
    """The mask from the trained dense weights, applied to the rewind point's weights.

    Returns a state holding ``rewind``'s weights and model state under the new mask, with a fresh
    optimizer state and ``rewind``'s step counter.
    """
    mask = lwm_mask(dense.params, cfg.density, prunable, cfg.scope)
    return rewind.with_mask(mask, tx)


@dataclasses.dataclass(frozen=True)
class OMPResult:
    dense: TrainState
    sparse: TrainState
    history: dict


def omp(
    init: TrainState,
    step_fn,
    tx,
    dataset: Dataset,
    indices,
    train_cfg: TrainConfig,
    cfg: PruneConfig,
    prunable,
    *,
    order_pool=None,
    desc: str = "",
    progress: bool = True,
) -> OMPResult:
    """Train dense from ``init`` on ``dataset[indices]``, prune by magnitude, rewind, retrain.

    ``order_pool`` fixes the data order (see ``train.epoch_order``): the gold standard passes the
    full training set so that its run sees the retained examples in the original order.
    """
    if cfg.rewind_epoch > train_cfg.epochs:
        raise ValueError(
            f"rewind_epoch {cfg.rewind_epoch} is after the last dense epoch {train_cfg.epochs}"
        )
    dense, dense_hist, snaps = fit(
        init, step_fn, dataset, indices, train_cfg, order_pool=order_pool,
        snapshot_epochs=(cfg.rewind_epoch,), desc=f"{desc}dense", progress=progress,
    )
    start = prune_and_rewind(dense, snaps[cfg.rewind_epoch], cfg, prunable, tx)
    retrain = dataclasses.replace(
        train_cfg, epochs=train_cfg.epochs if cfg.retrain_epochs is None else cfg.retrain_epochs
    )
    sparse, sparse_hist, _ = fit(
        start, step_fn, dataset, indices, retrain, order_pool=order_pool,
        start_epoch=cfg.rewind_epoch, desc=f"{desc}sparse", progress=progress,
    )
    return OMPResult(dense, sparse, {"dense": dense_hist, "sparse": sparse_hist})
