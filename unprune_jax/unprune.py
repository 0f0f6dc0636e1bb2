"""Un-pruning (Algorithm 1, our reading) and its gold standard.

A pruned model's mask was chosen with the deleted data D_f. Un-pruning recomputes it as if the
model had been trained and pruned on D_r only, without paying for that retraining. Each of K
rounds:

1. *Regrow*: revive the fraction ``fraction`` (p_θ) of the pruned entries with the largest regrow
   score. Default score: |θ_dense|, the magnitudes of the dense weights that the original pruner
   saw (stored by the pipeline); or |θ_0|, the retained-data gradient score, random.
2. *Re-initialise* the revived entries: ``'theta0'`` sets them to their initial values (the paper's
   better variant); ``'random'`` to a fresh draw of the model's initialiser times ``random_scale``.
3. *Unlearn* with any registered unlearning method on the denser masked model.
4. *Re-prune* to the target density by lowest weight magnitude (filter L2 norm for structured
   masks) or by the retained-data gradient score, with the original pruner's scope, granularity
   and allocation.

The output is θ ⊙ M. The gold standard (``gold_standard``) reruns the original pipeline (same
θ_0, same data order with D_f removed, same pruner) on D_r.

Beyond Algorithm 1 (``unprune.variant``; each composable with any unlearner, each followed by
``recovery_epochs`` of training on D_r under the final mask):

- ``'rescore'``: the original mask came from scoring θ_dense, trained on D. Unlearn θ_dense with
  any registered method (``dense_method``: FT on D_r, NegGrad+, GA, IU's inverse-Hessian step,
  ...), re-score it with the original pruner's own criterion, install the new mask on the sparse
  model (kept weights keep their values; newly kept ones from ``reinit``), then unlearn.
- ``'replay'`` (trajectory-aware, a partial retrain): the original run keeps its dense state after
  epoch E − ``replay_epochs`` (the pipeline stores it when this variant is configured); un-pruning
  replays the last ``replay_epochs`` epochs on D_r from it, in the original order with D_f
  removed (the gold standard's order for those epochs), re-scores, installs, unlearns. It is
  weight rewinding (Frankle et al., 2020, "Linear mode connectivity and the lottery ticket
  hypothesis") applied to the dense trajectory: replay_epochs = E is the gold standard's dense run.

Retained-data recomputation is Algorithm 1 with a D_r-only regrow and re-prune score
(``'gradient'``: |θ ⊙ ∇L_Dr|; ``'fisher'``: Optimal Brain Damage's ½·F_ii·θ² with the empirical
Fisher diagonal on D_r) over ``rounds`` rounds.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import losses as losses_lib
from . import masks as masks_lib
from . import prune as prune_lib
from . import runs
from . import scores as scores_lib
from . import unlearn as unlearn_lib
from .checks import check_numbers
from .registry import Registry
from .train import TrainConfig, TrainState, make_train_step


@dataclasses.dataclass(frozen=True)
class UnpruneConfig:
    """Options of Algorithm 1, with their defaults and why.

    Attributes:
        fraction: p_θ, the fraction of currently pruned entries (or filters) revived per round.
            Default 0.1: at 10% density this nearly doubles the kept set before re-pruning,
            enough room for the mask to move, small enough to keep the unlearner's cost.
        rounds: K, the number of regrow → unlearn → re-prune rounds. Default 1: each round costs
            one run of the unlearner.
        regrow_score: which pruned entries to revive. ``'dense'`` (default): |θ| of the stored
            dense weights the original pruner scored, the reading closest to the paper.
            ``'theta0'``: |θ_0|. ``'gradient'``: the retained-data score |θ_dense ⊙ ∇L_Dr(θ_dense)|
            on ``gradient_examples`` examples of D_r. ``'random'``: a control.
        reinit: ``'theta0'`` (default; the paper reports it beats random) or ``'random'``.
        random_scale: factor on the fresh initialiser draw for ``reinit='random'``.
        reprune_score: ``'magnitude'`` (default, LWM, as the original pruner) or ``'gradient'``,
            |θ ⊙ ∇L_Dr(θ)| at the unlearned weights. Filter masks rank a filter by the mean of
            its entries' scores (``masks.topk_mask``), for either score.
        gradient_examples: retained examples the gradient and Fisher scores average over.
        seed: for the gradient scores' examples and the random regrow score.
        variant: ``'algorithm1'`` (default, the paper's method), ``'rescore'`` (unlearn the
            dense weights, re-score them with the original pruner's criterion) or ``'replay'``
            (replay the last ``replay_epochs`` dense epochs on D_r, re-score). See the module
            docstring and ``unprune-jax list unprune_options``.
        dense_method: ``'rescore'``: the registered unlearning method applied to θ_dense (its
            settings are ``unlearn.settings.<name>``, as for any method). Default ``'FT'``.
        replay_epochs: ``'replay'``: how many of the original run's last dense epochs to replay
            on D_r (the pipeline keeps the dense state after epoch ``train.epochs`` − this).
        recovery_epochs: epochs of training on D_r under the final mask after any variant
            (re-pruning without recovery costs accuracy). Default 0: none.
        recovery_lr: the recovery's learning rate; None = the original training's.

    There is no separate optimizer-state reset for revived weights: every unlearning method
    starts from a fresh optimizer state (as the peers do), so a revived weight never inherits
    momentum.
    """

    fraction: float = 0.1
    rounds: int = 1
    regrow_score: str = "dense"
    reinit: str = "theta0"
    random_scale: float = 1.0
    reprune_score: str = "magnitude"
    gradient_examples: int = 1024
    seed: int = 0
    variant: str = "algorithm1"
    dense_method: str = "FT"
    replay_epochs: int = 1
    recovery_epochs: int = 0
    recovery_lr: float | None = None

    def __post_init__(self):
        check_numbers(self, "unprune", fraction=("fraction",),
                      nonnegative=("seed", "recovery_epochs"), positive=("recovery_lr",),
                      at_least_one=("rounds", "gradient_examples", "replay_epochs"))
        REGROW_SCORES.check(self.regrow_score)
        REINITS.check(self.reinit)
        REPRUNE_SCORES.check(self.reprune_score)
        VARIANTS.check(self.variant)
        if self.variant == "rescore":
            unlearn_lib.REGISTRY.check(self.dense_method)

    def snapshot_epoch(self, train_epochs: int) -> int | None:
        """The dense epoch whose state the original run must keep (``'replay'``), else None."""
        if self.variant != "replay":
            return None
        if self.replay_epochs > train_epochs:
            raise ValueError(f"unprune.replay_epochs {self.replay_epochs} is more than the "
                             f"original run's {train_epochs} dense epochs")
        return train_epochs - self.replay_epochs


#: The pruners whose mask is one selection by the criterion ``prune.reprune_scores`` on the dense
#: weights they store: only there does re-scoring new dense weights mean "what this pruner would
#: have kept". IMP prunes iteratively over rounds; SNIP, SynFlow and random score θ_0.
DENSE_SIDE_PRUNERS = {"rescore": ("omp", "sfp"), "replay": ("omp",)}


def check_variant(cfg: UnpruneConfig, prune_cfg) -> None:
    """Refuses a dense-side variant on a pruner it cannot re-run (see
    :data:`DENSE_SIDE_PRUNERS`): its result would silently not be that pruner's mask."""
    valid = DENSE_SIDE_PRUNERS.get(cfg.variant)
    if valid is not None and prune_cfg.method not in valid:
        raise ValueError(
            f"unprune.variant={cfg.variant!r} re-scores dense weights with the pruner's one-shot "
            f"criterion, which is the pruner's mask only for {list(valid)}; prune.method is "
            f"{prune_cfg.method!r} (use unprune.variant='algorithm1')")


@dataclasses.dataclass(frozen=True)
class Origin:
    """What the original pruning runs leave for un-pruning besides the sparse models (stacked
    like them: one entry per run).

    Attributes:
        dense: the dense states the pruner scored (``PruneResult.dense``).
        train_cfgs: per run, the original training config (its data-order seed): recovery and
            replay train with it.
        order_pool: the original runs' data-order pool (``train.epoch_order``), so that replay
            and recovery visit D_r in the original order with D_f removed.
        snapshot: ``'replay'``: the dense states after epoch ``snapshot_epoch``.
        snapshot_epoch: the number of dense epochs ``snapshot`` had trained.
    """

    dense: TrainState
    train_cfgs: tuple
    order_pool: np.ndarray | None = None
    snapshot: TrainState | None = None
    snapshot_epoch: int | None = None


def retained_batch(task, cfg: UnpruneConfig):
    """The D_r examples the gradient scores use: a seeded sample of ``gradient_examples``."""
    rng = np.random.default_rng(cfg.seed)
    n = min(cfg.gradient_examples, task.retain.size)
    idx = np.sort(rng.choice(task.retain, n, replace=False))
    return task.dataset.x[idx], task.dataset.y[idx]


#: Regrow scores (``unprune.regrow_score``): ``fn(cfg, task, state, dense_params) -> score
#: pytree``, higher = revive first.
REGROW_SCORES: Registry[Callable] = Registry("unprune.regrow_score")
REGROW_SCORES.register("dense", "|θ| of the stored dense weights the original pruner scored "
                       "(default)", lambda cfg, task, state, dense: scores_lib.magnitude(dense))
REGROW_SCORES.register("theta0", "|θ_0|, the magnitudes of the initial weights",
                       lambda cfg, task, state, dense: scores_lib.magnitude(task.init.params))


@REGROW_SCORES.register("gradient", "|θ_dense ⊙ ∇L_Dr(θ_dense)| on gradient_examples retained "
                        "examples")
def _regrow_gradient(cfg, task, state, dense_params):
    x, y = retained_batch(task, cfg)
    return scores_lib.snip(dense_params, state.model_state, task.apply_fn, x, y)


@REGROW_SCORES.register("fisher", "½·F_ii·θ_dense² with the empirical Fisher diagonal on "
                        "gradient_examples retained examples (Optimal Brain Damage on D_r)")
def _regrow_fisher(cfg, task, state, dense_params):
    x, y = retained_batch(task, cfg)
    return scores_lib.fisher(dense_params, state.model_state, task.apply_fn, x, y)


REGROW_SCORES.register("random", "uniform random, seeded by unprune.seed (control)",
                       lambda cfg, task, state, dense: scores_lib.random(
                           dense, jax.random.PRNGKey(cfg.seed)))

#: Values of revived entries (``unprune.reinit``): ``fn(cfg, task, random_params, dense) ->
#: params`` whose entries the revived ones take; ``dense``: the run's dense weights (the stored
#: ones for Algorithm 1, the unlearned or replayed ones for the dense-side variants).
REINITS: Registry[Callable] = Registry("unprune.reinit")
REINITS.register("theta0", "their initial values θ_0 (default; the paper reports it beats random)",
                 lambda cfg, task, random_params, dense: task.init.params)
REINITS.register("dense", "their dense weights (for rescore and replay: the unlearned or replayed "
                 "ones)", lambda cfg, task, random_params, dense: dense)


@REINITS.register("random", "a fresh draw of the model's initialiser × random_scale")
def _reinit_random(cfg, task, random_params, dense):
    if random_params is None:
        raise ValueError("reinit='random' needs random_params (a fresh draw of the initialiser)")
    return jax.tree.map(lambda p: p * cfg.random_scale, random_params)


#: Re-prune scores (``unprune.reprune_score``): ``fn(cfg, task, state, prune_cfg) -> score
#: pytree`` at the unlearned weights, higher = keep.
REPRUNE_SCORES: Registry[Callable] = Registry("unprune.reprune_score")
REPRUNE_SCORES.register("magnitude", "|θ| (filter L2 norm for structured masks), as the original "
                        "pruner (default)",
                        lambda cfg, task, state, prune_cfg: prune_lib.reprune_scores(state.params,
                                                                                    prune_cfg))


@REPRUNE_SCORES.register("gradient", "|θ ⊙ ∇L_Dr(θ)| at the unlearned weights on "
                         "gradient_examples retained examples")
def _reprune_gradient(cfg, task, state, prune_cfg):
    x, y = retained_batch(task, cfg)
    return scores_lib.snip(state.params, state.model_state, task.apply_fn, x, y, mask=state.mask)


@REPRUNE_SCORES.register("fisher", "½·F_ii·θ² at the unlearned weights, the empirical Fisher "
                         "diagonal on gradient_examples retained examples (Optimal Brain Damage)")
def _reprune_fisher(cfg, task, state, prune_cfg):
    x, y = retained_batch(task, cfg)
    return scores_lib.fisher(state.params, state.model_state, task.apply_fn, x, y,
                             mask=state.mask)


def regrow_scores(cfg: UnpruneConfig, task, state: TrainState, dense_params):
    """The regrow score pytree of ``cfg.regrow_score`` (higher = revive first)."""
    return REGROW_SCORES.get(cfg.regrow_score)(cfg, task, state, dense_params)


def reprune_scores(cfg: UnpruneConfig, task, state: TrainState, prune_cfg):
    """The re-prune score of ``cfg.reprune_score`` at the unlearned weights."""
    return REPRUNE_SCORES.get(cfg.reprune_score)(cfg, task, state, prune_cfg)


def reinit_revived(params, revived, source):
    """``params`` with the entries where ``revived`` is True replaced by ``source``'s."""
    return jax.tree.map(lambda p, r, s: jnp.where(r, s, p), params, revived, source)


def unprune(
    state: TrainState,
    task: unlearn_lib.UnlearnTask,
    method: str,
    method_cfg: TrainConfig | None,
    cfg: UnpruneConfig,
    *,
    prune_cfg: prune_lib.PruneConfig,
    prunable,
    dense_params=None,
    origin: Origin | None = None,
    random_params=None,
    dense_method_cfg: TrainConfig | None = None,
    on_divergence: str = "keep_last_good",
):
    """Un-pruning variant ``cfg.variant`` composed with unlearning method ``method``, then
    ``cfg.recovery_epochs`` of training on D_r under the final mask.

    Algorithm 1 (the default): K rounds of regrow → re-initialise → unlearn → re-prune. The
    dense-side variants (``'rescore'``, ``'replay'``): new dense weights → the original pruner's
    criterion → install the new mask → unlearn (see the module docstring).

    Args:
        state: the trained sparse model (mask M), or S stacked ones (``runs.stack``: the S seeds
            of a candidate; ``dense_params`` and ``origin`` stacked alike), run side by side
            (the unlearner's loops batched when it is registered ``batched``).
        task: the unlearning task (D_r, D_f, θ_0 in ``task.init``).
        method: a registered unlearning method; ``method_cfg`` its settings (None = defaults).
        prune_cfg: the original pruner's config: its density is the target, its scope,
            granularity and allocation are re-used to regrow and re-prune (whole filters for
            structured masks, scored by their L2 norm).
        prunable: flags from ``masks.prunable_leaves`` (narrowed as the pruner narrows them).
        dense_params: the dense weights the original pruner scored (Algorithm 1's regrow score
            ``'dense'``); taken from ``origin.dense`` when not given.
        origin: what the original runs left (:class:`Origin`); needed by ``'rescore'``,
            ``'replay'`` and recovery.
        random_params: a fresh initialiser draw (required for ``reinit='random'``).
        dense_method_cfg: the settings of ``cfg.dense_method`` (``'rescore'``; None = defaults).
        on_divergence: passed to ``unlearn.run``; by default a diverging method's last good state
            is kept and the divergence recorded in the round's info.

    Returns:
        ``(state, info)``: info holds per-round densities, mask changes and method metrics (for
        stacked states, ``info['runs']`` holds one such dict per run), ``seconds`` and
        ``method_seconds`` (the part of them spent in the unlearning method).
    """
    stacked = unlearn_lib.is_stacked(state)
    states = state if stacked else runs.stack([state])
    k = runs.num_runs(states)
    if origin is not None and not stacked:
        origin = dataclasses.replace(
            origin, dense=runs.stack([origin.dense]),
            snapshot=None if origin.snapshot is None else runs.stack([origin.snapshot]))
    if dense_params is None:
        if origin is None:
            raise ValueError("unprune needs dense_params or origin (the dense weights the "
                             "original pruner scored)")
        dense_params = origin.dense.params
    elif not stacked:
        dense_params = runs.stack([dense_params])
    check_variant(cfg, prune_cfg)
    if origin is not None:
        sizes = {"train_cfgs": len(origin.train_cfgs), "dense": runs.num_runs(origin.dense),
                 **({} if origin.snapshot is None
                    else {"snapshot": runs.num_runs(origin.snapshot)})}
        if any(n != k for n in sizes.values()):
            raise ValueError(f"unprune: {k} run(s) but origin holds {sizes}; stack origin's "
                             "entries like the states (one per run)")
    if cfg.recovery_epochs and origin is None:
        raise ValueError("unprune.recovery_epochs needs origin (the original training configs)")
    job = _Job(task, method, method_cfg, cfg, prune_cfg,
               prune_lib.prunable_for(prune_cfg, prunable, runs.unstack(states)[0].params),
               runs.unstack(dense_params), origin, random_params, dense_method_cfg,
               on_divergence)
    t0 = time.perf_counter()
    states, infos, method_seconds = VARIANTS.get(cfg.variant)(job, states)
    if cfg.recovery_epochs:
        states, history = recover(states, task, cfg, origin)
        for info, h in zip(infos, history):
            info["recovery"] = h
    timing = {"seconds": time.perf_counter() - t0, "method_seconds": method_seconds}
    if stacked:
        return states, {"runs": infos, **timing}
    return runs.unstack(states)[0], {**infos[0], **timing}


@dataclasses.dataclass(frozen=True)
class _Job:
    """One :func:`unprune` call's inputs, as the variants take them."""

    task: unlearn_lib.UnlearnTask
    method: str
    method_cfg: TrainConfig | None
    cfg: UnpruneConfig
    prune_cfg: prune_lib.PruneConfig
    prunable: object
    dense: list  # per run: the dense params the original pruner scored
    origin: Origin | None
    random_params: object
    dense_method_cfg: TrainConfig | None
    on_divergence: str

    def source(self, dense):
        """The values revived entries take (``cfg.reinit``)."""
        return REINITS.get(self.cfg.reinit)(self.cfg, self.task, self.random_params, dense)

    def unlearn(self, starts: list[TrainState]):
        out, metrics = unlearn_lib.run(self.method, runs.stack(starts), self.task,
                                       self.method_cfg, on_divergence=self.on_divergence)
        return out, metrics


#: Un-pruning variants (``unprune.variant``): ``fn(job, stacked states) -> (stacked states,
#: per-run info dicts, seconds spent in the unlearning method)``.
VARIANTS: Registry[Callable] = Registry("unprune.variant")


@VARIANTS.register("algorithm1", "the paper's Algorithm 1: regrow p_θ, re-initialise, unlearn, "
                   "re-prune, K rounds (default)")
def _algorithm1(job: _Job, states):
    cfg, task = job.cfg, job.task
    first = runs.unstack(states)
    scores = [regrow_scores(cfg, task, s, d) for s, d in zip(first, job.dense)]
    sel = job.prune_cfg.selection()
    infos: list[list[dict]] = [[] for _ in first]
    method_seconds = 0.0
    for k in range(cfg.rounds):
        before = [s.mask for s in runs.unstack(states)]
        grown, starts = [], []
        for s, m, score, d in zip(runs.unstack(states), before, scores, job.dense):
            g = masks_lib.regrow_mask(
                m, score, cfg.fraction, job.prunable, sel["scope"],
                granularity=sel["granularity"], allow_dense_filters=sel["allow_dense_filters"],
            )
            revived = jax.tree.map(lambda a, b: a & ~b, g, m)
            grown.append(g)
            starts.append(s.with_mask(g, task.tx, reinit_revived(s.params, revived,
                                                                 job.source(d))))
        out, metrics = job.unlearn(starts)
        method_seconds += metrics["seconds"]
        finals = []
        for r, s in enumerate(runs.unstack(out)):
            mask = prune_lib.select(reprune_scores(cfg, task, s, job.prune_cfg),
                                    job.prune_cfg.density, job.prune_cfg, job.prunable)
            finals.append(s.with_mask(mask, task.tx))
            infos[r].append({
                "round": k + 1,
                "grown_density": masks_lib.density(grown[r], job.prunable),
                "density": masks_lib.density(mask, job.prunable),
                "changed_vs_round_start": masks_lib.similarity(mask, before[r], job.prunable)[
                    "only_a"],
                "method": metrics["runs"][r],
            })
        states = runs.stack(finals)
    return states, [{"rounds": i} for i in infos], method_seconds


def _install_dense_side(job: _Job, states, new_dense: TrainState, dense_info: list[dict]):
    """The dense-side variants' common end: the original pruner's criterion on the new dense
    weights → the new mask, installed on the sparse models (kept weights keep their values, newly
    kept ones from ``reinit``), then the unlearning method under it."""
    starts, infos = [], []
    for s, d, di in zip(runs.unstack(states), runs.unstack(new_dense), dense_info):
        mask = prune_lib.select(prune_lib.reprune_scores(d.params, job.prune_cfg),
                                job.prune_cfg.density, job.prune_cfg, job.prunable)
        revived = jax.tree.map(lambda a, b: a & ~b, mask, s.mask)
        starts.append(s.with_mask(mask, job.task.tx,
                                  reinit_revived(s.params, revived, job.source(d.params))))
        infos.append({"dense": di, "density": masks_lib.density(mask, job.prunable),
                      "changed_vs_original": masks_lib.similarity(mask, s.mask, job.prunable)[
                          "only_a"]})
    out, metrics = job.unlearn(starts)
    for info, m in zip(infos, metrics["runs"]):
        info["rounds"] = [{"round": 1, "density": info["density"], "method": m}]
    return out, infos, metrics["seconds"]


@VARIANTS.register("rescore", "unlearn θ_dense with dense_method, re-score it with the original "
                   "pruner's criterion, install the new mask, unlearn")
def _rescore(job: _Job, states):
    if job.origin is None:
        raise ValueError("unprune.variant='rescore' needs origin (the dense states)")
    dense = job.origin.dense
    out, metrics = unlearn_lib.run(job.cfg.dense_method, dense, job.task, job.dense_method_cfg,
                                   on_divergence=job.on_divergence)
    info = [{"method": job.cfg.dense_method, **m} for m in metrics["runs"]]
    return _install_dense_side(job, states, out, info)


@VARIANTS.register("replay", "replay the last replay_epochs dense epochs on D_r from the stored "
                   "snapshot (a partial retrain), re-score, install, unlearn")
def _replay(job: _Job, states):
    origin, task = job.origin, job.task
    if origin is None or origin.snapshot is None:
        raise ValueError("unprune.variant='replay' needs the original runs' dense snapshot "
                         "(origin.snapshot); the pipeline keeps it when the variant is set "
                         "before the sides are computed")
    epochs = origin.train_cfgs[0].epochs
    if origin.snapshot_epoch != epochs - job.cfg.replay_epochs:
        raise ValueError(f"unprune.replay_epochs {job.cfg.replay_epochs} needs the dense state "
                         f"after epoch {epochs - job.cfg.replay_epochs} of {epochs}; the "
                         f"snapshot is from epoch {origin.snapshot_epoch}")
    cfgs = [dataclasses.replace(c, epochs=job.cfg.replay_epochs) for c in origin.train_cfgs]
    k = len(cfgs)
    out, history, _ = task.trainer.fit_many(
        origin.snapshot, make_train_step(task.apply_fn, task.tx, losses_lib.cross_entropy),
        task.dataset, [task.retain] * k, cfgs, order_pool=origin.order_pool,
        start_epoch=origin.snapshot_epoch, desc="replay ")
    return _install_dense_side(job, states, out, [{"replay": h} for h in history])


def recover(states: TrainState, task, cfg: UnpruneConfig, origin: Origin):
    """``cfg.recovery_epochs`` of training on D_r under the current masks (stacked states), with
    each run's original training config (``cfg.recovery_lr`` if set, no milestones). Returns the
    states and the per-run histories."""
    cfgs = [dataclasses.replace(c, epochs=cfg.recovery_epochs, milestones=(),
                                lr=c.lr if cfg.recovery_lr is None else cfg.recovery_lr)
            for c in origin.train_cfgs]
    out, history, _ = task.trainer.fit_many(
        states, make_train_step(task.apply_fn, task.tx, losses_lib.cross_entropy), task.dataset,
        [task.retain] * len(cfgs), cfgs, order_pool=origin.order_pool, desc="recovery ")
    return out, history


def gold_standard(
    task: unlearn_lib.UnlearnTask,
    train_cfg: TrainConfig,
    prune_cfg: prune_lib.PruneConfig,
    prunable,
    *,
    order_pool,
):
    """Retrain + re-prune: the original pruning pipeline from θ_0, on D_r only.

    ``order_pool`` is the full training set: each epoch visits D_r in the order the original run
    visited D, with D_f's examples removed and the batches re-packed.

    Returns:
        :class:`~unprune_jax.prune.PruneResult` of the run on D_r.
    """
    return prune_lib.run(
        task.init, task.apply_fn, task.tx, task.dataset, task.retain, train_cfg, prune_cfg,
        prunable, order_pool=order_pool, desc="gold ", trainer=task.trainer,
    )
