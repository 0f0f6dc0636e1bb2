"""The unlearning methods' shared machinery: the task, the registry, ``run``.

A method is ``method(state, task, cfg) -> (state, metrics)``: ``state`` is the trained sparse model
(its mask is kept: every step is masked), ``task`` says what to forget and holds the model's
``apply_fn``, the optimizer and θ_0, ``cfg`` is a :class:`~unprune_jax.train.TrainConfig` with the
method's epochs, learning rate and so on. Un-pruning takes any registered method by name.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..data import Dataset
from ..registry import Registry
from ..train import DivergenceError, TrainConfig, TrainState, fit, make_train_step


@dataclasses.dataclass(frozen=True)
class UnlearnTask:
    """What an unlearning method needs besides the state and its own settings.

    Attributes:
        apply_fn: the model, ``(params, model_state, x, train) -> (logits, model_state)``.
        tx: the optimizer (``optim.sgd``); its hyperparameters are set from the method's config.
        dataset: the data pool.
        retain: pool indices of D_r.
        forget: pool indices of D_f.
        init: the state at θ_0 (initial weights and model state), for methods that restart.
        progress: show progress bars.
    """

    apply_fn: Callable
    tx: Any
    dataset: Dataset
    retain: np.ndarray
    forget: np.ndarray
    init: TrainState
    progress: bool = True

    def __post_init__(self):
        if np.asarray(self.forget).size == 0:
            raise ValueError("the forget set is empty: nothing to unlearn")
        if np.asarray(self.retain).size == 0:
            raise ValueError("the retain set is empty")


Method = Callable[[TrainState, UnlearnTask, TrainConfig], tuple[TrainState, dict]]


@dataclasses.dataclass(frozen=True)
class Unlearner:
    """A registered unlearning method: its function and its default settings."""

    fn: Method
    defaults: TrainConfig


#: Every unlearning method by name (``unprune-jax list unlearners``). Method names are short
#: (GA, FT, RL): a low cutoff still suggests GA for GAA.
REGISTRY: Registry[Unlearner] = Registry("unlearning method", cutoff=0.3)


def register(name: str, defaults: TrainConfig, description: str):
    """Decorator adding a method to :data:`REGISTRY` under ``name``, with its default settings.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def wrap(fn: Method) -> Method:
        REGISTRY.register(name, description, Unlearner(fn, defaults))
        return fn

    return wrap


def get(name: str) -> Unlearner:
    """The method registered as ``name``; unknown names get the closest valid one in the error."""
    return REGISTRY.get(name)


def run(
    name: str,
    state: TrainState,
    task: UnlearnTask,
    cfg: TrainConfig | None = None,
    *,
    on_divergence: str = "raise",
):
    """Runs method ``name`` (with its defaults when ``cfg`` is None); adds ``seconds`` to metrics.

    A plain ``TrainConfig`` for a method with its own config class sets the shared fields (epochs,
    lr, ...) and leaves the method's own settings at their defaults.

    On divergence (see ``train.DivergenceError``), ``on_divergence='raise'`` re-raises and
    ``'keep_last_good'`` returns the last good state with the error text in ``metrics['diverged']``.
    """
    if on_divergence not in ("raise", "keep_last_good"):
        raise ValueError("on_divergence must be 'raise' or 'keep_last_good', got "
                         f"{on_divergence!r}")
    entry = get(name)
    cfg = entry.defaults if cfg is None else cfg
    if not isinstance(cfg, type(entry.defaults)):
        # a plain TrainConfig: its shared fields, the method's own defaults for the rest
        cfg = type(entry.defaults)(**{**dataclasses.asdict(entry.defaults),
                                      **dataclasses.asdict(cfg)})
    t0 = time.perf_counter()
    try:
        state, metrics = entry.fn(state, task, cfg)
    except DivergenceError as e:
        if on_divergence == "raise":
            raise
        state, metrics = e.state, {"history": e.history, "diverged": str(e)}
    return state, {**metrics, "seconds": time.perf_counter() - t0}


def train_on(state, task, cfg, indices, loss_fn, desc, *, clip_norm=None, **fit_kwargs):
    """Fresh optimizer state, then ``cfg.epochs`` epochs of ``loss_fn`` over ``indices``.

    ``fit_kwargs`` go to ``train.fit`` (``labels``, ``extras``, ``constants``).
    """
    step = make_train_step(task.apply_fn, task.tx, loss_fn, clip_norm)
    state = state.replace(opt_state=task.tx.init(state.params))
    state, history, _ = fit(
        state, step, task.dataset, indices, cfg, desc=desc, progress=task.progress, **fit_kwargs
    )
    return state, {"history": history}
