"""The unlearning methods' shared machinery: the task, the registry, ``run``.

A method is ``method(state, task, cfg) -> (state, metrics)``: ``state`` is the trained sparse model
(its mask is kept: every step is masked), ``task`` says what to forget and holds the model's
``apply_fn``, the optimizer, θ_0 and the trainer that runs its loops, ``cfg`` is a
:class:`~unprune_jax.train.TrainConfig` with the method's epochs, learning rate and so on.
Un-pruning takes any registered method by name.

K runs of one method on one task (the S seeds of a candidate) are K stacked states
(``runs.stack``; a stacked state has ``step`` of shape ``(K,)``). A method registered with
``batched=True`` takes them as they are and trains them through ``trainer.fit_many`` in one loop;
:func:`run` runs any other method once per run, one after the other, and says so in its metrics.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from .. import masks as masks_lib
from .. import runs
from ..data import Dataset
from ..registry import Registry
from ..train import DivergenceError, TrainConfig, Trainer, TrainState, make_train_step


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
        progress: show progress bars (the default trainer's setting).
        trainer: runs every training loop of the method (default ``Trainer(progress=progress)``).
    """

    apply_fn: Callable
    tx: Any
    dataset: Dataset
    retain: np.ndarray
    forget: np.ndarray
    init: TrainState
    progress: bool = True
    trainer: Trainer | None = None

    def __post_init__(self):
        if self.trainer is None:
            object.__setattr__(self, "trainer", Trainer(progress=self.progress))
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
    batched: bool = False


#: Every unlearning method by name (``unprune-jax list unlearners``). Method names are short
#: (GA, FT, RL): a low cutoff still suggests GA for GAA.
REGISTRY: Registry[Unlearner] = Registry("unlearning method", cutoff=0.3)


def register(name: str, defaults: TrainConfig, description: str, *, batched: bool = False):
    """Decorator adding a method to :data:`REGISTRY` under ``name``, with its default settings;
    ``batched``: it takes K stacked states (see the module docstring).

    Raises:
        ValueError: ``name`` is already registered.
    """

    def wrap(fn: Method) -> Method:
        REGISTRY.register(name, description, Unlearner(fn, defaults, batched))
        return fn

    return wrap


def get(name: str) -> Unlearner:
    """The method registered as ``name``; unknown names get the closest valid one in the error."""
    return REGISTRY.get(name)


def is_stacked(state: TrainState) -> bool:
    """Whether ``state`` holds K stacked runs (``step`` of shape ``(K,)``) rather than one."""
    return np.ndim(state.step) == 1


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

    ``state`` may be K stacked runs (see the module docstring); metrics are then
    ``{'runs': [metrics of run k], 'batched': bool, 'seconds': ...}``. A batched loop stops all K
    runs when one diverges; the K runs are then redone one by one, so only the diverging run
    reports it.

    ``state.mask`` must fit ``state.params`` (structure, shapes, bool; ``masks.check_mask``),
    or ``ValueError`` is raised before the method starts.

    On divergence (see ``train.DivergenceError``), ``on_divergence='raise'`` re-raises and
    ``'keep_last_good'`` returns the last good state with the error text in ``metrics['diverged']``.
    """
    if on_divergence not in ("raise", "keep_last_good"):
        raise ValueError("on_divergence must be 'raise' or 'keep_last_good', got "
                         f"{on_divergence!r}")
    entry = get(name)
    masks_lib.check_mask(state.params, state.mask)
    cfg = entry.defaults if cfg is None else cfg
    if not isinstance(cfg, type(entry.defaults)):
        # a plain TrainConfig: its shared fields, the method's own defaults for the rest
        cfg = type(entry.defaults)(**{**dataclasses.asdict(entry.defaults),
                                      **dataclasses.asdict(cfg)})
    t0 = time.perf_counter()
    if is_stacked(state):
        k = runs.num_runs(state)
        if entry.batched:
            try:
                state, metrics = entry.fn(state, task, cfg)
                per_run = [{key: (v[r] if key in metrics.get("per_run", ()) else v)
                            for key, v in metrics.items() if key != "per_run"} for r in range(k)]
                return state, {"runs": per_run, "batched": True,
                               "seconds": time.perf_counter() - t0}
            except DivergenceError:
                pass  # redo run by run below: only the diverging run keeps its last good state
        outs = [run(name, s, task, cfg, on_divergence=on_divergence) for s in runs.unstack(state)]
        return runs.stack([o[0] for o in outs]), {
            "runs": [o[1] for o in outs], "batched": False, "seconds": time.perf_counter() - t0}
    try:
        state, metrics = entry.fn(state, task, cfg)
    except DivergenceError as e:
        if on_divergence == "raise":
            raise
        state, metrics = e.state, {"history": e.history, "diverged": str(e)}
    metrics.pop("per_run", None)
    return state, {**metrics, "seconds": time.perf_counter() - t0}


def train_on(state, task, cfg, indices, loss_fn, desc, *, clip_norm=None, **fit_kwargs):
    """Fresh optimizer state, then ``cfg.epochs`` epochs of ``loss_fn`` over ``indices``, through
    ``task.trainer``: one run, or K stacked runs in one loop.

    ``fit_kwargs`` go to ``Trainer.fit`` / ``Trainer.fit_many`` (``labels``, ``extras``,
    ``constants``; for K runs with a leading K axis on every leaf of ``extras`` and
    ``constants``). Metrics: ``history`` (for K runs a list of K histories, named in
    ``per_run``).
    """
    step = make_train_step(task.apply_fn, task.tx, loss_fn, clip_norm)
    state = state.replace(opt_state=jax.vmap(task.tx.init)(state.params) if is_stacked(state)
                          else task.tx.init(state.params))
    if is_stacked(state):
        k = runs.num_runs(state)
        state, history, _ = task.trainer.fit_many(state, step, task.dataset, [indices] * k, cfg,
                                                  desc=desc, **fit_kwargs)
        return state, {"history": history, "per_run": ("history",)}
    state, history, _ = task.trainer.fit(state, step, task.dataset, indices, cfg, desc=desc,
                                         **fit_kwargs)
    return state, {"history": history}


def lift(tree, k: int):
    """A tree shared by K runs, with a leading K axis on every leaf (for ``fit_many``'s per-run
    ``constants`` and ``extras``)."""
    return jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (k, *np.shape(a))), tree)


def per_run(fn: Callable, tree, state: TrainState):
    """``fn(tree)`` for one run; for K stacked runs (``state`` stacked) ``fn`` of each run's
    slice of ``tree``, stacked again."""
    if not is_stacked(state):
        return fn(tree)
    return runs.stack([fn(t) for t in runs.unstack(tree)])


def lift_for(state: TrainState, tree):
    """``tree`` as it is for one run; with a leading K axis (:func:`lift`) for K stacked runs."""
    return lift(tree, runs.num_runs(state)) if is_stacked(state) else tree
