"""Training state, the masked train and eval steps, and the one epoch loop.

The step multiplies gradients and the updated parameters by the mask inside the compiled function,
so neither momentum nor weight decay can ever revive a pruned weight, and no caller can forget to
mask. Per-example loss weights let one compiled step serve any forget/retain subset: examples
outside the subset and padding slots have weight 0, and a batch of total weight 0 leaves the state
untouched.

Every training loop of the library (pruning, unlearning, un-pruning, the gold standard, the seed
sides, sweeps) runs through :meth:`Trainer.run_epochs`: K stacked runs (K = 1 for one), one epoch
record, one divergence check. :meth:`Trainer.fit` and :meth:`Trainer.fit_many` are its two usual
front ends; a :class:`Trainer` is passed to whatever trains (``prune.run``, ``UnlearnTask``) and
says how K runs execute (``runs`` strategies) and whether progress bars show.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import checkpoint as ckpt
from . import masks as masks_lib
from . import optim, runs
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
    def create(cls, params, model_state, tx, mask=None, seed: int = 0) -> TrainState:
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

    def with_mask(self, mask, tx, params=None) -> TrainState:
        """New mask (and optionally params), params re-masked, optimizer state reset."""
        params = self.params if params is None else params
        masks_lib.check_mask(params, mask)
        params = masks_lib.apply_mask(params, mask)
        return self.replace(params=params, mask=mask, opt_state=tx.init(params))


@functools.cache
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


@functools.cache
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


DEFAULT_MAX_LOSS = 1e6
PLANS_FILE = "plans.json"  # a run directory's K-run plans (Trainer.keep_plans_in)
"""The divergence limit on |loss| when a config sets no ``max_loss``: no training reaches a
cross-entropy of a million without having diverged (it needs logit gaps of 10^6)."""


@dataclasses.dataclass(frozen=True)
class Batches:
    """One epoch's batches for K runs.

    Attributes:
        idx: int ``(num_batches, K, B)`` pool indices.
        w: float32 ``(num_batches, K, B)`` per-example loss weights (0 = padding).
        extra: ``{name: (num_batches, K, ...)}`` per-batch arrays added to the step's ``extra``.
        gather: ``{name: (num_batches, K, B')}`` pool indices of a second batch per step (e.g.
            SFR-on's forget batch): the step's ``extra`` gets its images and labels as
            ``name/x`` and ``name/y``.
    """

    idx: np.ndarray
    w: np.ndarray
    extra: dict = dataclasses.field(default_factory=dict)
    gather: dict = dataclasses.field(default_factory=dict)


def _check_cfgs(cfgs, k: int) -> list[TrainConfig]:
    cfgs = [cfgs] * k if isinstance(cfgs, TrainConfig) else list(cfgs)
    if len(cfgs) != k:
        raise ValueError(f"fit_many: {len(cfgs)} configs for K={k} runs")
    for field in ("epochs", "batch_size"):
        values = [getattr(c, field) for c in cfgs]
        if len(set(values)) > 1:
            raise ValueError(f"fit_many: every run needs the same {field}, got {values}")
    return cfgs


def subset_batches(subsets, cfgs, order_pool=None) -> Callable[[int], Batches]:
    """``epoch -> Batches``: run k visits ``epoch_order(subsets[k], cfgs[k].seed, epoch,
    order_pool)`` in batches of ``batch_size``; runs with fewer batches get zero-weight ones
    (no-ops in the step)."""

    def batches(epoch: int) -> Batches:
        per_run = [batch_indices(epoch_order(s, c.seed, epoch, order_pool), c.batch_size, 0,
                                 shuffle=False) for s, c in zip(subsets, cfgs)]
        nb = max(i.shape[0] for i, _ in per_run)
        idx = np.zeros((nb, len(per_run), cfgs[0].batch_size), np.int32)
        w = np.zeros(idx.shape, np.float32)
        for k, (i, wk) in enumerate(per_run):
            idx[: len(i), k], w[: len(i), k] = i, wk
            idx[len(i):, k] = i[0, 0]
        return Batches(idx, w)

    return batches


def _record(epoch: int, lr: float, metrics: dict, r: int, seconds: float) -> dict:
    """Run r's epoch record from per-batch metrics ``(num_batches, K)``: the weighted mean
    ``loss`` and ``acc``, and for a sub-objective ``P`` reported as ``P/loss``, ``P/correct``,
    ``P/weight`` (e.g. SFR-on's forget steps): ``P_loss``, ``P_acc``, ``P_steps``."""
    record = {"epoch": epoch + 1, "lr": lr}
    for prefix in [""] + sorted({n.split("/")[0] + "/" for n in metrics if "/" in n}):
        weight = metrics[prefix + "weight"][:, r].astype(np.float64)
        real = weight > 0
        total = weight.sum()
        loss = np.where(real, metrics[prefix + "loss"][:, r] * weight, 0.0).sum()
        name = prefix.replace("/", "_")
        record[name + "loss"] = float(loss / total) if total > 0 else float("nan")
        record[name + "acc"] = (float(metrics[prefix + "correct"][:, r].sum() / total)
                                if total > 0 else float("nan"))
        if prefix:
            record[name + "steps"] = int(real.sum())
    record["seconds"] = seconds
    return record


def _divergence(metrics: dict, r: int, limit: float) -> str:
    """What went wrong in run r's batches (metrics ``(num_batches, K)``), or ''."""
    for name in sorted(n for n in metrics if n == "loss" or n.endswith("/loss")):
        loss = metrics[name][:, r]
        real = metrics[name.replace("loss", "weight")][:, r] > 0
        bad = real & ~np.isfinite(loss)
        if name == "loss":
            bad |= real & (np.abs(loss) > limit)
        if bad.any():
            b = int(np.argmax(bad))
            return f"{name} {loss[b]!r} at batch {b + 1}"
    return ""


@dataclasses.dataclass
class Trainer:
    """How training loops run: the K-run strategy, devices, memory and progress bars.

    One trainer is passed to everything that trains; it caches what ``strategy='auto'`` measured
    (``calibrations``, under ``runs.plan_key``) for the shapes it has seen. With
    :meth:`keep_plans_in` it also keeps them in a run directory (``plans.json``), so a resumed
    run recomputes a stage with the plan the first process picked: plans differ in float rounding
    (vmap and the loop agree to ~1e-12, not bitwise), and a pick re-timed under other load could
    change a recomputed stage in its last bits.

    Attributes:
        strategy: ``'auto'``, ``'vmap'``, ``'map'``, ``'loop'``, ``'spread'`` or ``'shard'``
            (``runs``).
        mesh: device mesh for ``'shard'`` (default: ``runs.make_mesh()`` over every device) and
            the devices of ``'spread'`` (default: every device).
        map_batch_size: runs vmapped at a time under ``'map'`` (None: one at a time).
        memory_limit_bytes: device memory limit for the memory check and ``auto``'s fallback;
            ``'device'``: the device's ``bytes_limit`` where reported, else no check.
        scan_epoch: each epoch as one compiled ``lax.scan`` (pays off for launch-bound steps).
        progress: tqdm bars per epoch.
    """

    strategy: str = "auto"
    mesh: Any = None
    map_batch_size: int | None = None
    memory_limit_bytes: int | None | str = "device"
    scan_epoch: bool = False
    progress: bool = True
    calibrations: dict = dataclasses.field(default_factory=dict, repr=False)
    plans_dir: Any = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        runs.STRATEGIES.check(self.strategy)

    def keep_plans_in(self, run_dir) -> None:
        """Loads ``run_dir/plans.json`` (the picks of earlier processes win over this one's) and
        saves every new pick there. Does nothing if this trainer keeps them elsewhere already (a
        sweep's trainer keeps them in the sweep's directory)."""
        if self.plans_dir is not None:
            return
        run_dir = ckpt.make_run_dir(run_dir)
        saved = ckpt.load_run_json(run_dir, PLANS_FILE)
        if saved is not None:
            if not isinstance(saved, dict) or not all(
                    isinstance(v, dict) and isinstance(v.get("plan"), dict)
                    and set(v["plan"]) <= {"strategy", "map_batch_size"}
                    and v["plan"].get("strategy") in runs.STRATEGIES for v in saved.values()):
                raise ckpt.CheckpointError(
                    f"{run_dir / PLANS_FILE} is not a record of K-run plans; delete "
                    "it (the plans are timed again)")
            self.calibrations.update(saved)
        self.plans_dir = run_dir

    # -- front ends ------------------------------------------------------------------------------

    def fit(self, state: TrainState, step_fn, dataset: Dataset, indices, cfg: TrainConfig, *,
            order_pool=None, start_epoch: int = 0, snapshot_epochs: Sequence[int] = (),
            desc: str = "train", labels=None, extras: dict | None = None, constants=None,
            ) -> tuple[TrainState, list[dict], dict[int, TrainState]]:
        """Runs ``cfg.epochs`` epochs of ``step_fn`` over ``dataset[indices]`` (one run).

        Args:
            state: the starting state; its optimizer hyperparameters are set from ``cfg``.
            step_fn: from :func:`make_train_step`.
            order_pool: see :func:`epoch_order`.
            start_epoch: schedule epoch to start at (learning-rate rewinding).
            snapshot_epochs: after these (1-based) epoch counts the state is kept in the result.
            labels: labels to train on instead of ``dataset.y``, one per pool example, or a
                function ``epoch -> labels`` (fresh random labels every epoch).
            extras: per-pool-example arrays, gathered for each batch into the step's ``extra``.
            constants: a dict of arrays added to every batch's ``extra``, or ``epoch -> dict``.

        Returns:
            ``(state, history, snapshots)``: one history dict per epoch (epoch, lr, loss, acc,
            seconds); snapshots maps epoch count → state.

        Raises:
            DivergenceError: a loss became non-finite or exceeded ``cfg.max_loss`` (default
                :data:`DEFAULT_MAX_LOSS`), also after the last update; carries the state at the
                start of the failing epoch.
        """
        lift = functools.partial(jax.tree.map, lambda a: np.asarray(a)[None])
        if callable(constants):
            const = lambda e: lift(constants(e))  # noqa: E731
        else:
            const = None if constants is None else lift(constants)
        try:
            states, hists, snaps = self.fit_many(
                runs.stack([state]), step_fn, dataset, [indices], [cfg], order_pool=order_pool,
                start_epoch=start_epoch, snapshot_epochs=snapshot_epochs, desc=desc,
                labels=labels, extras=None if extras is None else lift(extras), constants=const)
        except DivergenceError as e:
            raise single_run(e) from None
        return (runs.unstack(states)[0], hists[0],
                {e: runs.unstack(s)[0] for e, s in snaps.items()})

    def fit_many(self, states: TrainState, step_fn, dataset: Dataset, subsets, cfgs, *,
                 order_pool=None, **kwargs):
        """Trains K stacked runs at once; run k equals :meth:`fit` of that run alone.

        Per run, epoch e visits ``epoch_order(subsets[k], cfgs[k].seed, e, order_pool)`` in
        batches, exactly as :meth:`fit`. Momentum, weight decay and the learning-rate schedule
        are set per run in the stacked optimizer state.

        Args:
            states: stacked ``TrainState`` (every leaf with leading axis K, ``runs.stack``).
            subsets: K arrays of pool indices (sizes may differ, none empty).
            cfgs: one config for all, or K; ``epochs`` and ``batch_size`` must agree.
            order_pool: shared by all runs (see :func:`epoch_order`).
            **kwargs: of :meth:`run_epochs` (``start_epoch``, ``snapshot_epochs``, ``labels``,
                ``extras`` and ``constants`` with a leading K axis on every leaf, ``desc``).

        Returns:
            ``(states, histories, snapshots)``: stacked final states, per run one dict per epoch
            (``seconds`` is the wall time of the epoch for all K), stacked snapshots.
        """
        k = runs.num_runs(states)
        subsets = [np.asarray(s) for s in subsets]
        if len(subsets) != k:
            raise ValueError(f"fit_many: {len(subsets)} subsets for K={k} stacked runs")
        for i, s in enumerate(subsets):
            if s.size == 0:
                raise ValueError(f"{kwargs.get('desc', 'train')}: run {i} has no examples to "
                                 "train on")
        cfgs = _check_cfgs(cfgs, k)
        return self.run_epochs(states, step_fn, dataset, subset_batches(subsets, cfgs,
                                                                        order_pool), cfgs, **kwargs)

    # -- the one loop -----------------------------------------------------------------------------

    def run_epochs(self, states: TrainState, step_fn, dataset: Dataset,
                   batches: Callable[[int], Batches], cfgs, *, start_epoch: int = 0,
                   snapshot_epochs: Sequence[int] = (), labels=None, extras: dict | None = None,
                   constants=None, desc: str = "train"):
        """The epoch loop every training loop runs on.

        Args:
            states: K stacked states.
            step_fn: single-run step ``(state, x, y, w, extra) -> (state, metrics)``; metrics
                hold ``loss``, ``correct``, ``weight`` and optionally ``P/loss``, ``P/correct``,
                ``P/weight`` of a sub-objective ``P`` (recorded as ``P_loss``, ``P_acc``,
                ``P_steps``).
            batches: ``epoch -> Batches`` (see :func:`subset_batches`).
            cfgs: K ``TrainConfig``\\ s: epochs (shared), lr schedule, momentum, weight decay,
                max_loss per run.
            start_epoch: schedule epoch to start at.
            snapshot_epochs: after these (1-based) epoch counts the stacked states are kept.
            labels: shared labels ``(N,)`` instead of ``dataset.y``, or ``epoch -> labels``.
            extras: ``{name: (K, N, ...)}`` per-run, per-pool-example arrays gathered per batch.
            constants: ``{name: (K, ...)}`` per-run arrays in every batch's ``extra``, or
                ``epoch -> dict``.
            desc: label of the progress bar and of error messages.

        Raises:
            DivergenceError: a loss of run r became non-finite or |loss| exceeded its limit
                (``max_loss``, default :data:`DEFAULT_MAX_LOSS`), in a batch or after the last
                update (a probe step on the last epoch's first batch, whose result is dropped);
                the message names the run, ``.state`` holds the K stacked states at the start of
                that epoch and ``.history`` the K histories so far.
        """
        k = runs.num_runs(states)
        cfgs = _check_cfgs(cfgs, k)
        epochs = cfgs[0].epochs
        per_batch = bool(extras or constants)  # (Batches' own extras are checked per epoch)
        if self.scan_epoch and per_batch:
            raise ValueError("scan_epoch runs plain steps only: no extras or constants")
        states = states.replace(opt_state=optim.set_hyperparams(
            states.opt_state,
            momentum=np.array([c.momentum for c in cfgs], np.float32),
            weight_decay=np.array([c.weight_decay for c in cfgs], np.float32)))
        histories: list[list[dict]] = [[] for _ in range(k)]
        snapshots = {0: states} if 0 in snapshot_epochs else {}
        if epochs == 0:
            return states, histories, snapshots
        mesh = self.mesh
        if self.strategy == "shard" and mesh is None:
            mesh = runs.make_mesh()
        # 'shard' pads K up to a multiple of the runs axis with no-op copies of run 0
        k_pad = k if self.strategy != "shard" else -(-k // runs.axis_size(mesh, "runs")) * \
            runs.axis_size(mesh, "runs")
        carrier = runs.pad_runs(states, k_pad)
        y_static = dataset.y if labels is None or callable(labels) else np.asarray(labels)
        pool_extras = {n: np.asarray(runs.pad_runs(a, k_pad)) for n, a in (extras or {}).items()}
        plan = None
        last = start_epoch + epochs
        for epoch in range(start_epoch, last):
            lrs = [optim.multistep_lr(c.lr, epoch, c.milestones, c.gamma) for c in cfgs]
            lr_arr = np.array(lrs + [lrs[0]] * (k_pad - k), np.float32)
            y_all = labels(epoch) if callable(labels) else y_static
            const = constants(epoch) if callable(constants) else (constants or {})
            const = runs.pad_runs(const, k_pad) if const else {}
            b = batches(epoch)
            if self.scan_epoch and (b.extra or b.gather):
                raise ValueError("scan_epoch runs plain steps only: no per-batch extras")
            idx, w = _pad_batches(b.idx, k_pad), _pad_batches(b.w, k_pad)
            extra_at = functools.partial(
                _batch_extra, const=const, pool_extras=pool_extras, idx=idx,
                batch_extras={n: _pad_batches(a, k_pad) for n, a in b.extra.items()},
                gather={n: _pad_batches(a, k_pad) for n, a in b.gather.items()},
                x=dataset.x, y=y_all)

            if plan is None:
                plan = self._plan(step_fn, carrier, dataset.x[idx[0]], y_all[idx[0]], w[0],
                                  extra_at(0), mesh)
                carrier = runs.to_carrier(plan, carrier, mesh)
            carrier = runs.set_lr(carrier, lr_arr, plan)
            good = carrier
            t0 = time.perf_counter()
            if self.scan_epoch:
                carrier, metrics = runs.run_scanned_epoch(
                    plan, step_fn, mesh, carrier, dataset.x, y_all, idx, w, self.progress,
                    f"{desc} {epoch + 1}/{last}")
            else:
                carrier, metrics = runs.run_epoch(
                    plan, step_fn, mesh, carrier, dataset.x, y_all, idx, w, extra_at,
                    self.progress, f"{desc} {epoch + 1}/{last}")
            seconds = time.perf_counter() - t0
            if epoch + 1 == last:  # the loss after the last update: one probe step, dropped
                _, probe = runs.k_call(plan, step_fn, mesh, carrier, dataset.x[idx[0]],
                                       y_all[idx[0]], w[0], extra_at(0))
                metrics = {**metrics, **{f"after/{n}": np.asarray(v)[None] for n, v in
                                         jax.device_get(probe).items() if "/" not in n}}
            failure = None
            for r in range(k):
                main = {n: v for n, v in metrics.items() if not n.startswith("after/")}
                histories[r].append(_record(epoch, lrs[r], main, r, seconds))
                limit = DEFAULT_MAX_LOSS if cfgs[r].max_loss is None else cfgs[r].max_loss
                what = _divergence(main, r, limit)
                if not what and "after/loss" in metrics:
                    after = {n[6:]: v for n, v in metrics.items() if n.startswith("after/")}
                    what = _divergence(after, r, limit)
                    what = what and f"{what.split(' at ')[0]} after the last update"
                if what and failure is None:
                    bound = (f"max_loss={cfgs[r].max_loss}" if cfgs[r].max_loss is not None
                             else f"no max_loss set: the default limit |loss| ≤ {limit:g}")
                    failure = (f"{desc}: run {r}: {what} of epoch {epoch + 1} ({bound}); kept "
                               "the state from the start of that epoch")
            if failure is not None:
                raise DivergenceError(failure, runs.finish(good, plan, k), histories)
            if epoch + 1 - start_epoch in snapshot_epochs:
                snapshots[epoch + 1 - start_epoch] = runs.finish(carrier, plan, k)
        return runs.finish(carrier, plan, k), histories, snapshots

    def _plan(self, step_fn, states, x, y, w, extra, mesh) -> runs.Plan:
        known = len(self.calibrations)
        plan = runs.resolve_strategy(
            step_fn, states, x, y, w, extra, strategy=self.strategy,
            map_batch_size=self.map_batch_size, mesh=mesh,
            memory_limit_bytes=(runs.default_memory_limit() if self.memory_limit_bytes == "device"
                                else self.memory_limit_bytes),
            cache=self.calibrations)
        if self.plans_dir is not None and len(self.calibrations) != known:
            ckpt.save_run_json(self.plans_dir, PLANS_FILE, self.calibrations)
        return plan


def _batch_extra(i: int, *, const, pool_extras, idx, batch_extras, gather, x, y) -> dict:
    """The K-run ``extra`` of batch i: the constants, the per-pool-example arrays gathered at the
    batch's indices, the per-batch arrays, and the second batch's images and labels."""
    out = dict(const)
    k = idx.shape[1]
    for n, a in pool_extras.items():
        out[n] = a[np.arange(k)[:, None], idx[i]]
    for n, a in batch_extras.items():
        out[n] = a[i]
    for n, a in gather.items():
        out[f"{n}/x"], out[f"{n}/y"] = x[a[i]], y[a[i]]
    return out


def single_run(error: DivergenceError) -> DivergenceError:
    """A K = 1 loop's divergence as one run's: the state unstacked, the history of run 0."""
    return DivergenceError(str(error).replace(": run 0: ", ": ", 1), runs.unstack(error.state)[0],
                           error.history[0])


def _pad_batches(a: np.ndarray, k_pad: int, axis: int = 1) -> np.ndarray:
    """Pads the run axis of per-batch arrays with zeros (zero weight: no-op runs)."""
    k = a.shape[axis]
    if k_pad == k:
        return a
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, k_pad - k)
    return np.pad(a, pad)


def fit(state: TrainState, step_fn, dataset: Dataset, indices, cfg: TrainConfig, *,
        progress: bool = True, **kwargs):
    """:meth:`Trainer.fit` with a default trainer (one run: the plain jitted step per batch)."""
    return Trainer(progress=progress).fit(state, step_fn, dataset, indices, cfg, **kwargs)


def fit_many(states: TrainState, step_fn, dataset: Dataset, subsets, cfgs, *,
             strategy: str = "auto", mesh=None, map_batch_size: int | None = None,
             memory_limit_bytes: int | None | str = "device", scan_epoch: bool = False,
             progress: bool = True, **kwargs):
    """:meth:`Trainer.fit_many` with a trainer of these settings; returns ``(states,
    histories)`` (snapshots, if asked for, via ``Trainer.fit_many``)."""
    trainer = Trainer(strategy, mesh, map_batch_size, memory_limit_bytes, scan_epoch, progress)
    states, histories, _ = trainer.fit_many(states, step_fn, dataset, subsets, cfgs, **kwargs)
    return states, histories
