"""Pruners: drivers that return new states and a mask, never mutating their inputs.

Every pruner has one signature (see :func:`run`) and returns a :class:`PruneResult`: the sparse,
trained model, and the ``dense`` model whose weights the pruner scored last (its stored magnitudes
are un-pruning's default regrow score). The gold standard reruns the same pruner on D_r.

- ``omp``: train dense, keep the top-``density`` fraction by |θ|, rewind to θ_0 or to the weights
  after epoch k (with the learning-rate schedule resumed at k), retrain under the mask.
- ``imp``: R rounds of train → prune to density d^{r/R} among the survivors → rewind; then train.
  Each round removes the fraction 1 − d^{1/R} of the remaining weights; after R rounds exactly
  round(d·n) are left.
- ``synflow``: pruning at initialisation by iterative SynFlow (exponential schedule), then train.
- ``snip``: one-shot SNIP at initialisation on a batch of the training data, then train.
- ``random``: a uniformly random mask at initialisation, then train (control).
- ``sfp``: soft filter pruning: before training and after every epoch, zero the lowest-L2 output
  filters of every conv layer; zeroed filters keep training; the last epoch's mask is final.
  A zeroed filter can only regrow if gradient reaches it: through a residual addition (ResNet's
  second conv of a block) or a non-saturating activation it does; behind conv → (BN →) ReLU with
  a zero bias it outputs ReLU(0) = 0 with ReLU'(0) = 0 and stays dead, so on such layers (all of
  our ``small_cnn``) SFP acts as filter pruning at initialisation.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import losses as losses_lib
from . import masks as masks_lib
from . import runs
from . import scores as scores_lib
from .checks import check_numbers
from .data import Dataset
from .registry import Registry, closest_name
from .train import DivergenceError, TrainConfig, Trainer, TrainState, make_train_step, single_run


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """The pruner and how it selects.

    Attributes:
        method: a pruner of :data:`PRUNERS`.
        density: fraction of prunable units kept, in (0, 1] (0.1 = 90% sparsity). For ``sfp`` the
            fraction of filters kept in every conv layer.
        scope: ``'global'`` (one ranking over all prunable layers) or ``'per_layer'``.
        granularity: ``'weight'`` or ``'filter'`` (whole output filters).
        allocation: per-layer densities for ``per_layer``: ``'uniform'`` or ``'erk'``.
        layer_density: explicit per-layer densities ``{path regex: density}`` (``per_layer``).
        allow_dense_filters: with ``granularity='filter'``, prune dense kernels' output neurons
            too; otherwise dense kernels are left out of filter pruning.
        on_empty_layer: ``'warn'``, ``'error'`` or ``'ignore'`` when a layer keeps nothing.
        rewind_epoch: 0 rewinds to θ_0; k > 0 to the dense weights after epoch k (omp, imp).
        retrain_epochs: epochs of the final sparse training; None = ``train.epochs``.
        rounds: IMP rounds R.
        synflow_iterations: SynFlow scoring rounds (exponential density schedule).
        synflow_dtype: ``'float32'`` or ``'float64'``.
        snip_batch: examples SNIP scores on.
        sfp_zero_bn: SFP also zeroes the batch-norm scale and bias of pruned filters (He et al.
            do not; a zeroed filter then still outputs the BN bias).
        sfp_prune_at_init: SFP also prunes before the first epoch (He et al. do). With False the
            first pruning comes after epoch 1, from trained weights.
        seed: for random masks and the SNIP batch.
    """

    method: str = "omp"
    density: float = 0.1
    scope: str = "global"
    granularity: str = "weight"
    allocation: str = "uniform"
    layer_density: dict = dataclasses.field(default_factory=dict)
    allow_dense_filters: bool = False
    on_empty_layer: str = "warn"
    rewind_epoch: int = 0
    retrain_epochs: int | None = None
    rounds: int = 3
    synflow_iterations: int = 100
    synflow_dtype: str = "float32"
    snip_batch: int = 256
    sfp_zero_bn: bool = False
    sfp_prune_at_init: bool = True
    seed: int = 0

    def __post_init__(self):
        check_numbers(self, "prune", fraction=("density",),
                      nonnegative=("rewind_epoch", "retrain_epochs", "seed"),
                      at_least_one=("rounds", "synflow_iterations", "snip_batch"))
        PRUNERS.check(self.method)
        checks = {
            "scope": (self.scope, ("global", "per_layer")),
            "granularity": (self.granularity, masks_lib.GRANULARITIES),
            "allocation": (self.allocation, masks_lib.ALLOCATIONS),
            "on_empty_layer": (self.on_empty_layer, ("warn", "error", "ignore")),
            "synflow_dtype": (self.synflow_dtype, ("float32", "float64")),
        }
        for name, (value, valid) in checks.items():
            if value not in valid:
                close = closest_name(str(value), valid)
                hint = f" Did you mean {close!r}?" if close else ""
                raise ValueError(f"prune.{name} must be one of {list(valid)}, got {value!r}.{hint}")
        for pattern, d in self.layer_density.items():
            try:
                masks_lib.validate_density(d)
            except ValueError as e:
                raise ValueError(f"prune.layer_density {pattern!r}: {e}") from None

    def selection(self) -> dict:
        """Keyword arguments of ``masks.topk_mask`` for this pruner (SFP: per-layer filters)."""
        structured = self.method == "sfp"
        return {
            "scope": "per_layer" if structured else self.scope,
            "granularity": "filter" if structured else self.granularity,
            "allocation": self.allocation,
            "layer_density": self.layer_density or None,
            "allow_dense_filters": self.allow_dense_filters,
            "on_empty_layer": self.on_empty_layer,
        }


def prunable_for(cfg: PruneConfig, prunable, params):
    """The prunable flags this pruner acts on: for filter pruning without
    ``allow_dense_filters``, dense (2-D) kernels are left out."""
    if cfg.selection()["granularity"] != "filter" or cfg.allow_dense_filters:
        return prunable
    out = jax.tree.map(lambda f, p: bool(f and jnp.ndim(p) != 2), prunable, params)
    if not any(jax.tree.leaves(out)):
        raise ValueError("filter pruning found no conv kernel among the prunable leaves; set "
                         "prune.allow_dense_filters = true to prune dense neurons")
    return out


def select(scores, density: float, cfg: PruneConfig, prunable, candidates=None):
    """The mask keeping the top ``density`` of ``scores`` as ``cfg`` selects.

    ``candidates`` (a mask; IMP and SynFlow pass the previous round's) restrict the selection:
    no unit outside them is kept, and fewer than ``round(density · n)`` candidates raise.
    """
    return masks_lib.topk_mask(scores, density, prunable, candidates=candidates,
                               **cfg.selection())


def reprune_scores(params, cfg: PruneConfig):
    """The score for (re-)pruning trained weights: |θ|, or for filter masks each filter's L2 norm
    on all its entries (``scores.filter_l2``), which filter selection ranks by that value: a
    filter's score is the mean of its entries' (``masks.topk_mask``), so fan-in does not weigh."""
    if cfg.selection()["granularity"] == "filter":
        return scores_lib.filter_l2(params)
    return scores_lib.magnitude(params)


@dataclasses.dataclass(frozen=True)
class PruneResult:
    """``sparse``: the pruned, trained model. ``dense``: the weights the pruner scored last
    (trained dense weights for omp and imp's first round, the last epoch's weights before the
    final soft pruning for sfp, θ_0 for pruning at initialisation). From :func:`run_many` both
    are K stacked states and ``history`` is a list of K histories. ``snapshots``: ``{epoch: dense
    state after that many dense epochs}`` for the epochs asked for (``keep_epochs``)."""

    dense: TrainState
    sparse: TrainState
    history: dict | list
    snapshots: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Run:
    """K pruning runs at once: stacked states, one subset, training and pruning config each."""

    inits: TrainState
    apply_fn: Callable
    tx: object
    dataset: Dataset
    subsets: list
    train_cfgs: list
    cfgs: list
    prunable: object
    order_pool: object
    desc: str
    trainer: Trainer
    keep: tuple = ()

    @property
    def cfg(self) -> PruneConfig:  # what the K runs share (method, schedule, selection)
        return self.cfgs[0]

    @property
    def step(self):
        return make_train_step(self.apply_fn, self.tx, losses_lib.cross_entropy)

    def fit(self, states, what, *, epochs=None, start_epoch=0, snapshot_epochs=()):
        cfgs = [c if epochs is None else dataclasses.replace(c, epochs=epochs)
                for c in self.train_cfgs]
        states, history, snaps = self.trainer.fit_many(
            states, self.step, self.dataset, self.subsets, cfgs, order_pool=self.order_pool,
            start_epoch=start_epoch, snapshot_epochs=snapshot_epochs, desc=f"{self.desc}{what}")
        return states, history, snaps

    def each(self, fn, *trees):
        """``fn(r, *slices)`` for every run r, stacked again."""
        return runs.stack([fn(r, *xs) for r, xs in enumerate(zip(*map(runs.unstack, trees)))])

    def select_each(self, score_fn, states, density_of=lambda c: c.density, candidates=None):
        """Per run r: ``select(score_fn(state_r, r), density_of(cfg_r), cfg_r, prunable)``."""
        def one(r, state, *cand):
            c = self.cfgs[r]
            return select(score_fn(state, r), density_of(c), c, self.prunable,
                          candidates=cand[0] if cand else None)
        return self.each(one, states, *(() if candidates is None else (candidates,)))

    def with_masks(self, states, masks):
        return self.each(lambda r, s, m: s.with_mask(m, self.tx), states, masks)

    def retrain(self, start, start_epoch=0):
        return self.fit(start, "sparse", epochs=self.cfg.retrain_epochs, start_epoch=start_epoch)

    def check_rewind(self):
        if self.cfg.rewind_epoch > self.train_cfgs[0].epochs:
            raise ValueError(f"prune.rewind_epoch {self.cfg.rewind_epoch} is after the last "
                             f"dense epoch {self.train_cfgs[0].epochs}")


def _histories(k: int, **phases) -> list[dict]:
    """Per run: ``{phase: that run's history}`` from per-phase lists of K histories."""
    return [{name: h[r] if isinstance(h, list) else h for name, h in phases.items()}
            for r in range(k)]


def _omp(r: _Run) -> PruneResult:
    r.check_rewind()
    k = r.cfg.rewind_epoch
    dense, dense_hist, snaps = r.fit(r.inits, "dense", snapshot_epochs=(k, *r.keep))
    masks = r.select_each(lambda s, _: scores_lib.magnitude(s.params), dense)
    sparse, hist, _ = r.retrain(r.with_masks(snaps[k], masks), start_epoch=k)
    return PruneResult(dense, sparse, _histories(len(hist), dense=dense_hist, sparse=hist),
                       {e: snaps[e] for e in r.keep})


def _imp(r: _Run) -> PruneResult:
    r.check_rewind()
    k, rounds = r.cfg.rewind_epoch, r.cfg.rounds
    state, masks, phases, dense, rewind = r.inits, None, {}, None, None
    for i in range(1, rounds + 1):
        trained, hist, snaps = r.fit(state, f"round {i}/{rounds} ",
                                     start_epoch=0 if i == 1 else k,
                                     snapshot_epochs=(k, *r.keep) if i == 1 else ())
        if i == 1:
            dense, rewind, kept = trained, snaps[k], {e: snaps[e] for e in r.keep}
        phases[f"round{i}"] = hist
        masks = r.select_each(lambda s, _: scores_lib.magnitude(s.params), trained,
                              lambda c, i=i: c.density ** (i / rounds), candidates=masks)
        state = r.with_masks(rewind, masks)
    sparse, hist, _ = r.retrain(state, start_epoch=k)
    phases["sparse"] = hist
    return PruneResult(dense, sparse, _histories(len(hist), **phases), kept)


def _at_init(r: _Run, masks) -> PruneResult:
    sparse, hist, _ = r.retrain(r.with_masks(r.inits, masks))
    return PruneResult(r.inits, sparse, _histories(len(hist), sparse=hist))


def _synflow(r: _Run) -> PruneResult:
    n = r.cfg.synflow_iterations
    shape = tuple(r.dataset.x.shape[1:])
    dtype = jnp.float64 if r.cfg.synflow_dtype == "float64" else jnp.float32

    def one(i, init):
        mask = masks_lib.full_mask(init.params)
        for k in range(1, n + 1):
            s = scores_lib.synflow(init.params, init.model_state, r.apply_fn, shape, mask=mask,
                                   dtype=dtype)
            c = r.cfgs[i]
            mask = select(s, c.density ** (k / n), c, r.prunable, candidates=mask)
        return mask

    return _at_init(r, r.each(one, r.inits))


def _snip(r: _Run) -> PruneResult:
    def score(init, i):
        rng = np.random.default_rng(r.cfgs[i].seed)
        subset = r.subsets[i]
        batch = np.sort(rng.choice(subset, min(r.cfgs[i].snip_batch, subset.size),
                                   replace=False))
        return scores_lib.snip(init.params, init.model_state, r.apply_fn, r.dataset.x[batch],
                               r.dataset.y[batch])

    return _at_init(r, r.select_each(score, r.inits))


def _random(r: _Run) -> PruneResult:
    masks = r.select_each(
        lambda init, i: scores_lib.random(init.params, jax.random.PRNGKey(r.cfgs[i].seed)),
        r.inits)
    return _at_init(r, masks)


def bn_partner(params, kernel_path: str) -> str | None:
    """Path of the batch norm that normalises a conv's output channels, by naming convention:
    ``.../convN`` → ``.../bnN``, ``X`` → ``X_bn`` (our ResNet's stem and shortcuts)."""
    module = kernel_path.rsplit("/", 1)[0]
    head, _, last = module.rpartition("/")
    prefix = f"{head}/" if head else ""
    for name in (re.sub(r"conv", "bn", last), f"{last}_bn"):
        node = params
        for part in f"{prefix}{name}".split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and "scale" in node:
            return f"{prefix}{name}"
    return None


def zero_bn_of_pruned_filters(params, mask, prunable):
    """Zeroes the batch-norm scale and bias of every output channel whose filter is pruned."""
    params = jax.tree.map(lambda p: p, params)  # a copy we may write into
    for path, m, f in zip(masks_lib.leaf_paths(mask), jax.tree.leaves(mask),
                          jax.tree.leaves(prunable)):
        bn = bn_partner(params, path) if f and jnp.ndim(m) == 4 else None
        if bn is None:
            continue
        keep = jnp.any(m, axis=(0, 1, 2))
        node = params
        for part in bn.split("/"):
            node = node[part]
        for key in ("scale", "bias"):
            node[key] = jnp.where(keep, node[key], 0.0)
    return params


def _sfp(r: _Run) -> PruneResult:
    cfg = r.cfg

    def soft_prune(states):
        masks = r.select_each(lambda s, _: scores_lib.filter_l2(s.params), states)

        def zero(i, state, mask):
            params = masks_lib.apply_mask(state.params, mask)
            if cfg.sfp_zero_bn:
                params = zero_bn_of_pruned_filters(params, mask, r.prunable)
            return state.replace(params=params)

        return r.each(zero, states, masks), masks

    states, masks = soft_prune(r.inits) if cfg.sfp_prune_at_init else (r.inits, r.inits.mask)
    history, scored = None, states
    for epoch in range(r.train_cfgs[0].epochs):
        scored, hist, _ = r.fit(states, "soft ", epochs=1, start_epoch=epoch)
        states, masks = soft_prune(scored)
        history = hist if history is None else [a + b for a, b in zip(history, hist)]
    sparse = r.with_masks(states, masks)
    k = runs.num_runs(r.inits)
    return PruneResult(scored, sparse, _histories(k, soft=history or [[]] * k,
                                                  zero_bn=cfg.sfp_zero_bn))


#: Every pruner by name: ``PRUNERS.get(name)(run) -> PruneResult`` (``unprune-jax list pruners``).
PRUNERS: Registry[Callable[[_Run], PruneResult]] = Registry("pruner")
PRUNERS.register("omp", "one-shot magnitude pruning after training, rewind, sparse retraining",
                 _omp)
PRUNERS.register("imp", "iterative magnitude pruning: R rounds of train, prune, rewind", _imp)
PRUNERS.register("synflow", "SynFlow at initialisation (data-free, iterative), then training",
                 _synflow)
PRUNERS.register("snip", "SNIP at initialisation on a training batch, then training", _snip)
PRUNERS.register("random", "random mask at initialisation, then training (control)", _random)
PRUNERS.register("sfp", "soft filter pruning: zero the lowest-L2 filters after every epoch", _sfp)


def run_many(
    inits: TrainState,
    apply_fn,
    tx,
    dataset: Dataset,
    subsets,
    train_cfgs,
    cfgs,
    prunable,
    *,
    order_pool=None,
    desc: str = "",
    trainer: Trainer | None = None,
    keep_epochs=(),
) -> PruneResult:
    """K pruning runs at once: run k is pruner ``cfgs[k].method`` from ``unstack(inits)[k]`` on
    ``dataset[subsets[k]]``, its training loops batched with the others' (``trainer``).

    Args:
        inits: K stacked initial states (``runs.stack``).
        subsets: K index arrays (the data each run trains on).
        train_cfgs: one ``TrainConfig`` for all, or K (seeds and learning rates may differ; epochs
            and batch size must agree).
        cfgs: one ``PruneConfig`` for all, or K (seeds and densities may differ; the method and
            its schedule must agree).
        prunable: narrowed by :func:`prunable_for`.
        order_pool: see ``train.epoch_order`` (shared by all runs).
        trainer: runs the loops (default ``Trainer()``, which picks the fastest K-run strategy).
        keep_epochs: dense epochs after which the dense states are kept (``PruneResult.
            snapshots``; un-pruning's ``'replay'`` variant). Only pruners that train dense
            (omp, imp) have them.

    Returns:
        A :class:`PruneResult` of K stacked states and K histories.
    """
    k = runs.num_runs(inits)
    train_cfgs = [train_cfgs] * k if isinstance(train_cfgs, TrainConfig) else list(train_cfgs)
    cfgs = [cfgs] * k if isinstance(cfgs, PruneConfig) else list(cfgs)
    subsets = [np.asarray(s) for s in subsets]
    if not len(train_cfgs) == len(cfgs) == len(subsets) == k:
        raise ValueError(f"prune.run_many: K={k} initial states but {len(subsets)} subsets, "
                         f"{len(train_cfgs)} training and {len(cfgs)} pruning configs")
    shared = [dataclasses.replace(c, seed=0, density=1.0) for c in cfgs]
    if any(c != shared[0] for c in shared):
        raise ValueError("prune.run_many: the K runs must share the pruner and its settings "
                         "(only seed and density may differ)")
    keep = tuple(sorted({int(e) for e in keep_epochs}))
    if keep and cfgs[0].method not in ("omp", "imp"):
        raise ValueError(f"prune.run_many: keep_epochs {list(keep)} asks for dense snapshots, "
                         f"but pruner {cfgs[0].method!r} trains no dense model (omp and imp do)")
    if keep and (keep[0] < 0 or keep[-1] > train_cfgs[0].epochs):
        raise ValueError(f"prune.run_many: keep_epochs {list(keep)} outside the "
                         f"{train_cfgs[0].epochs} dense epochs")
    params0 = runs.unstack(inits.params)[0]
    r = _Run(inits, apply_fn, tx, dataset, subsets, train_cfgs, cfgs,
             prunable_for(cfgs[0], prunable, params0), order_pool, desc,
             Trainer() if trainer is None else trainer, keep)
    return PRUNERS.get(cfgs[0].method)(r)


def run(
    init: TrainState,
    apply_fn,
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
    trainer: Trainer | None = None,
) -> PruneResult:
    """Runs pruner ``cfg.method`` from ``init`` on ``dataset[indices]`` (one run of
    :func:`run_many`).

    ``prunable`` is narrowed by :func:`prunable_for`. ``order_pool`` fixes the data order (see
    ``train.epoch_order``): the gold standard passes the full training set so that its run sees
    the retained examples in the original order. ``trainer`` defaults to
    ``Trainer(progress=progress)``.
    """
    try:
        res = run_many(runs.stack([init]), apply_fn, tx, dataset, [indices], [train_cfg], [cfg],
                       prunable, order_pool=order_pool, desc=desc,
                       trainer=Trainer(progress=progress) if trainer is None else trainer)
    except DivergenceError as e:
        raise single_run(e) from None
    return PruneResult(runs.unstack(res.dense)[0], runs.unstack(res.sparse)[0], res.history[0])
