"""Unlearning methods behind one signature and a registry by name.

A method is ``method(state, task, cfg) -> (state, metrics)``: ``state`` is the trained sparse model
(its mask is kept: every step is masked), ``task`` says what to forget and holds the model's
``apply_fn``, the optimizer and θ_0, ``cfg`` is a :class:`~unprune_jax.train.TrainConfig` (or a
method's subclass of it) with the method's epochs, learning rate and so on. Un-pruning takes any
registered method by name. Each method lives in its own module and registers itself on import.
"""

# Each method module registers itself on import; hparams is ``unlearn.hparams.defaults``.
from . import basic, boundary, hparams, iu, penalised, relabel, scrub, sfron  # noqa: F401
from .base import REGISTRY, Unlearner, UnlearnTask, get, is_stacked, register, run, train_on

__all__ = ["UnlearnTask", "Unlearner", "REGISTRY", "register", "get", "is_stacked", "run",
           "train_on"]
