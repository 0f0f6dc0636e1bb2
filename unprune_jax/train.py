"""Training state, the masked train and eval steps, and the epoch loop.

The step multiplies gradients and the updated parameters by the mask inside the compiled function,
so neither momentum nor weight decay can ever revive a pruned weight, and no caller can forget to
mask. Per-example loss weights let one compiled step serve any forget/retain subset: examples
outside the subset and padding slots have weight 0, and a batch of total weight 0 leaves the state
untouched.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from . import masks as masks_lib
from . import optim
from .checks import check_numbers
from .data import Dataset, batch_indices, epoch_order

PyTree = Any
ApplyFn = Callable[[PyTree, PyTree, jax.Array, bool], tuple[jax.Array, PyTree]]
LossFn = Callable[..., jax.Array]  # (logits, y, w, extra, params) -> scalar


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; every leaf is an array.

    Attributes:
        params: parameter pytree (pruned entries exactly zero).
        model_state: non-trained model variables, e.g. ``{'batch_stats': ...}``; ``{}`` if none.
        opt_state: optimizer state (hyperparameters included, see ``optim.sgd``).
        mask: bool pytree shaped like ``params``.
        step: int32 scalar, number of optimizer steps taken.
        rng: uint32[2] raw PRNG key for stochastic layers and methods.
    """

    params: PyTree
    model_state: PyTree
    opt_state: PyTree
    mask: PyTree
    step: jax.Array
    rng: jax.Array

    @classmethod
    def create(cls, params, model_state, tx, mask=None, seed: int = 0) -> "TrainState":
        """A fresh state: ``mask`` defaults to dense; params are masked; optimizer initialised."""
        mask = masks_lib.full_mask(params) if mask is None else mask
        masks_lib.check_mask(params, mask)
        params = masks_lib.apply_mask(params, mask)
        return cls(
            params=params,
            model_state=model_state,
            opt_state=tx.init(params),
            mask=mask,
            step=jnp.zeros((), jnp.int32),
            rng=jax.random.PRNGKey(seed),
        )

    def with_mask(self, mask, tx, params=None) -> "TrainState":
        """New mask (and optionally params), params re-masked, optimizer state reset."""
        params = self.params if params is None else params
        masks_lib.check_mask(params, mask)
        params = masks_lib.apply_mask(params, mask)
        return self.replace(params=params, mask=mask, opt_state=tx.init(params))


@functools.lru_cache(maxsize=None)
def make_train_step(
    apply_fn: ApplyFn, tx: optax.GradientTransformation, loss_fn: LossFn,
    clip_norm: float | None = None,
):
    """Compiled masked step ``(state, x, y, w, extra={}) -> (state, metrics)``.

    ``loss_fn(logits, y, w, extra, params)`` gives the scalar loss; ``extra`` is a dict of arrays
    (per-example teacher logits, a penalty weight, ...) passed through from the caller. The key
    ``extra['update_mask']`` (a bool pytree like the params) freezes every entry where it is False:
    the step changes neither its value nor its optimizer state (momentum buffer), whatever the
    gradient, weight decay or momentum say (SalUn, SFR-on). ``clip_norm`` clips the masked
    gradient's global norm.

    A mask (``state.mask``, ``update_mask``) that does not fit the params raises ``ValueError``
    when the step is traced (``masks.check_mask``), before any computation.

    Cached per (apply_fn, tx, loss_fn, clip_norm): every stage that shares them shares one
    compilation. ``metrics`` holds the batch's ``loss``, ``correct`` (weighted count of correct
    predictions) and ``weight`` (Σ|w|).
    """

    def step(state: TrainState, x, y, w, extra=None):
        extra = {} if extra is None else extra
        freeze = extra.get("update_mask")
        # at trace time, on the tracers' shapes and dtypes: free for every call after the first
        masks_lib.check_mask(state.params, state.mask)
        if freeze is not None:
            masks_lib.check_mask(state.params, freeze)

        def objective(params):
            logits, new_model_state = apply_fn(params, state.model_state, x, True)
            return loss_fn(logits, y, w, extra, params), (logits, new_model_state)

        (loss, (logits, new_model_state)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params
        )
        grads = masks_lib.apply_mask(grads, state.mask)
        if freeze is not None:
            grads = masks_lib.apply_mask(grads, freeze)
        if clip_norm is not None:
            norm = optax.tree.norm(grads)
            grads = jax.tree.map(lambda g: g * jnp.minimum(1.0, clip_norm / (norm + 1e-12)), grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        if freeze is not None:
            updates = masks_lib.apply_mask(updates, freeze)
            # frozen entries keep their optimizer state too (params-shaped leaves only)
            keep = optax.tree.map_params(tx, lambda _, m: m, opt_state, freeze,
                                         transform_non_params=lambda _: True)
            opt_state = jax.tree.map(lambda new, old, k: jnp.where(k, new, old), opt_state,
                                     state.opt_state, keep)
        params = masks_lib.apply_mask(optax.apply_updates(state.params, updates), state.mask)
        new = state.replace(
            params=params,
            model_state=new_model_state,
            opt_state=opt_state,
            step=state.step + 1,
            rng=jax.random.split(state.rng)[0],
        )
        # A batch of total weight zero (all padding, or no example of this subset) is a no-op,
        # so subsets of different sizes can run side by side under vmap.
        weight = jnp.sum(jnp.abs(w))
        new = jax.tree.map(lambda a, b: jnp.where(weight > 0, a, b), new, state)
        correct = jnp.sum(jnp.abs(w) * (jnp.argmax(logits, -1) == y))
        return new, {"loss": loss, "correct": correct, "weight": weight}

    return jax.jit(step)


@functools.lru_cache(maxsize=None)
def make_logits_fn(apply_fn: ApplyFn):
    """Compiled ``(params, model_state, mask, x) -> logits`` in eval mode."""

    def logits(params, model_state, mask, x):
        return apply_fn(masks_lib.apply_mask(params, mask), model_state, x, False)[0]

    return jax.jit(logits)


def predict(
    state: TrainState, apply_fn: ApplyFn, dataset: Dataset, indices, batch_size: int = 1000
) -> np.ndarray:
    """Eval-mode logits for ``dataset[indices]``, shape (len(indices), num_classes)."""
    indices = np.asarray(indices)
    if indices.size == 0:
        return np.zeros((0, dataset.num_classes), np.float32)
    fn = make_logits_fn(apply_fn)
    idx, _ = batch_indices(indices, batch_size, 0, shuffle=False)
    out = [
        np.asarray(fn(state.params, state.model_state, state.mask, dataset.x[b])) for b in idx
    ]
    return np.concatenate(out)[: indices.size]


def accuracy(state, apply_fn, dataset: Dataset, indices, batch_size: int = 1000) -> float:
    """Top-1 accuracy on ``dataset[indices]`` (nan for an empty set)."""
    indices = np.asarray(indices)
    if indices.size == 0:
        return float("nan")
    logits = predict(state, apply_fn, dataset, indices, batch_size)
    return float(np.mean(np.argmax(logits, -1) == dataset.y[indices]))


# --- the epoch loop -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run: SGD with momentum and weight decay, a step learning-rate schedule.

    ``seed`` fixes the data order: epoch e visits a permutation drawn from (seed, e). Every number
    must be finite (``checks.check_numbers``; the unlearning methods' subclasses inherit this).
    """

    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    seed: int = 0
    max_loss: float | None = None

    def __post_init__(self):
        check_numbers(self, type(self).__name__, positive=("lr", "gamma", "max_loss"),
                      nonnegative=("epochs", "weight_decay", "seed"), at_least_one=("batch_size",),
                      unit=("momentum",))


class DivergenceError(RuntimeError):
    """The loss became non-finite or exceeded ``max_loss``. ``state`` is the last good state."""

    def __init__(self, message: str, state: TrainState, history: list[dict]):
        super().__init__(message)
        self.state = state
        self.history = history


#: A callable that takes over :func:`fit` in the current context (thread) when set: the sweep
#: (``unprune_jax.sweep``) runs K pipelines in K threads and batches their training loops into
#: one ``runs.fit_many`` call. It receives exactly ``fit``'s arguments.
FIT_HOOK: contextvars.ContextVar = contextvars.ContextVar("unprune_jax_fit_hook", default=None)


def fit(
    state: TrainState,
    step_fn,
    dataset: Dataset,
    indices,
    cfg: TrainConfig,
    *,
    order_pool=None,
    start_epoch: int = 0,
    snapshot_epochs: Sequence[int] = (),
    desc: str = "train",
    progress: bool = True,
    labels=None,
    extras: dict | None = None,
    constants=None,
) -> tuple[TrainState, list[dict], dict[int, TrainState]]:
    """Runs ``cfg.epochs`` epochs of ``step_fn`` over ``dataset[indices]``.

    Args:
        state: the starting state; its optimizer hyperparameters are set from ``cfg``.
        step_fn: from :func:`make_train_step`.
        order_pool: see :func:`epoch_order`.
        start_epoch: schedule epoch to start at (learning-rate rewinding).
        snapshot_epochs: after these (1-based) epoch counts, the state is kept in the result.
        labels: labels to train on instead of ``dataset.y``, one per pool example, or a function
            ``epoch -> labels`` (fresh random labels every epoch).
        extras: per-pool-example arrays, gathered for each batch into the step's ``extra``.
        constants: a dict of arrays added to every batch's ``extra``, or ``epoch -> dict``.

    Returns:
        ``(state, history, snapshots)``: history has one dict per epoch (epoch, lr, loss, acc,
        seconds); snapshots maps epoch count → state.

    Raises:
        DivergenceError: the loss became non-finite or exceeded ``cfg.max_loss``; carries the
            state at the start of the failing epoch.
    """
    hook = FIT_HOOK.get()
    if hook is not None:
        return hook(state, step_fn, dataset, indices, cfg, order_pool=order_pool,
                    start_epoch=start_epoch, snapshot_epochs=snapshot_epochs, desc=desc,
                    progress=progress, labels=labels, extras=extras, constants=constants)
    indices = np.asarray(indices)
    if indices.size == 0:
        raise ValueError(f"{desc}: no examples to train on")
    state = state.replace(
        opt_state=optim.set_hyperparams(
            state.opt_state, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    )
    history, snapshots = [], {}
    if 0 in snapshot_epochs:
        snapshots[0] = state
    for epoch in range(start_epoch, start_epoch + cfg.epochs):
        lr = optim.multistep_lr(cfg.lr, epoch, cfg.milestones, cfg.gamma)
        state = state.replace(opt_state=optim.set_hyperparams(state.opt_state, learning_rate=lr))
        good = state
        y_all = labels(epoch) if callable(labels) else (dataset.y if labels is None else labels)
        const = constants(epoch) if callable(constants) else (constants or {})
        order = epoch_order(indices, cfg.seed, epoch, order_pool)
        idx, w = batch_indices(order, cfg.batch_size, 0, shuffle=False)
        t0 = time.perf_counter()
        out = []
        bar = tqdm(
            range(len(idx)), desc=f"{desc} {epoch + 1}/{start_epoch + cfg.epochs}",
            disable=not progress, leave=False, unit="batch",
        )
        for b in bar:
            extra = {**const, **{k: v[idx[b]] for k, v in (extras or {}).items()}}
            state, m = step_fn(state, dataset.x[idx[b]], y_all[idx[b]], w[b], extra)
            out.append(m)
        out = jax.device_get(out)
        loss = np.array([m["loss"] for m in out])
        weight = np.array([m["weight"] for m in out])
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "loss": float(np.sum(loss * weight) / np.sum(weight)),
            "acc": float(sum(m["correct"] for m in out) / np.sum(weight)),
            "seconds": time.perf_counter() - t0,
        }
        history.append(record)
        bad = ~np.isfinite(loss)
        if cfg.max_loss is not None:
            bad |= np.abs(loss) > cfg.max_loss
        if bad.any():
            first = int(np.argmax(bad))
            raise DivergenceError(
                f"{desc}: loss {loss[first]!r} at epoch {epoch + 1}, batch {first + 1} "
                f"(limit max_loss={cfg.max_loss}); kept the state from the start of that epoch",
                good,
                history,
            )
        if epoch + 1 - start_epoch in snapshot_epochs:
            snapshots[epoch + 1 - start_epoch] = state
    return state, history, snapshots
