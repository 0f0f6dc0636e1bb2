"""unprune_jax: machine unlearning on sparse (pruned) networks, with un-pruning, in pure JAX.

The core is pure functions over pytrees: parameters, boolean masks and :class:`TrainState`.
"""

from . import checkpoint, data, losses, masks, metrics, models, optim, prune, scores, unlearn
from .data import Dataset, Split, load_dataset, make_split
from .masks import apply_mask, density, prunable_leaves, regrow_mask, topk_mask
from .prune import PruneConfig, PruneResult
from .train import DivergenceError, TrainConfig, TrainState, accuracy, fit, make_train_step
from .unlearn import UnlearnTask
from .unprune import UnpruneConfig, gold_standard, unprune

__version__ = "0.1.0"

__all__ = [
    "checkpoint", "data", "losses", "masks", "metrics", "models", "optim", "prune", "scores",
    "unlearn", "Dataset", "Split", "load_dataset", "make_split", "apply_mask", "density",
    "prunable_leaves", "regrow_mask", "topk_mask", "DivergenceError", "TrainConfig", "TrainState",
    "accuracy", "fit", "make_train_step", "PruneConfig", "PruneResult", "UnlearnTask",
    "UnpruneConfig", "gold_standard", "unprune",
]
