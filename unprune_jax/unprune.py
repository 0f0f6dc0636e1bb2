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
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import masks as masks_lib
from . import prune as prune_lib
from . import runs
from . import scores as scores_lib
from . import unlearn as unlearn_lib
from .checks import check_numbers
from .registry import Registry
from .train import TrainConfig, TrainState


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
        gradient_examples: retained examples the gradient scores average over.
        seed: for the gradient scores' examples and the random regrow score.

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

    def __post_init__(self):
        check_numbers(self, "unprune", fraction=("fraction",), nonnegative=("seed",),
                      at_least_one=("rounds", "gradient_examples"))
        REGROW_SCORES.check(self.regrow_score)
        REINITS.check(self.reinit)
        REPRUNE_SCORES.check(self.reprune_score)


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


REGROW_SCORES.register("random", "uniform random, seeded by unprune.seed (control)",
                       lambda cfg, task, state, dense: scores_lib.random(
                           dense, jax.random.PRNGKey(cfg.seed)))

#: Values of revived entries (``unprune.reinit``): ``fn(cfg, task, random_params) -> params`` whose
#: entries the revived ones take.
REINITS: Registry[Callable] = Registry("unprune.reinit")
REINITS.register("theta0", "their initial values θ_0 (default; the paper reports it beats random)",
                 lambda cfg, task, random_params: task.init.params)


@REINITS.register("random", "a fresh draw of the model's initialiser × random_scale")
def _reinit_random(cfg, task, random_params):
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
    dense_params,
    prune_cfg: prune_lib.PruneConfig,
    prunable,
    random_params=None,
    on_divergence: str = "keep_last_good",
):
    """Algorithm 1: K rounds of regrow → re-initialise → unlearn → re-prune.

    Args:
        state: the trained sparse model (mask M), or S stacked ones (``runs.stack``: the S seeds
            of a candidate; ``dense_params`` stacked alike), run side by side (the unlearner's
            loops batched when it is registered ``batched``).
        task: the unlearning task (D_r, D_f, θ_0 in ``task.init``).
        method: a registered unlearning method; ``method_cfg`` its settings (None = defaults).
        dense_params: the dense weights the original pruner scored (regrow score ``'dense'``).
        prune_cfg: the original pruner's config: its density is the target, its scope,
            granularity and allocation are re-used to regrow and re-prune (whole filters for
            structured masks, scored by their L2 norm).
        prunable: flags from ``masks.prunable_leaves`` (narrowed as the pruner narrows them).
        random_params: a fresh initialiser draw (required for ``reinit='random'``).
        on_divergence: passed to ``unlearn.run``; by default a diverging method's last good state
            is re-pruned and the divergence recorded in the round's info.

    Returns:
        ``(state, info)``: info holds per-round densities, mask changes and method metrics (for
        stacked states, ``info['runs']`` holds one such dict per run), ``seconds`` and
        ``method_seconds`` (the part of them spent in the unlearning method).
    """
    stacked = unlearn_lib.is_stacked(state)
    states = state if stacked else runs.stack([state])
    denses = runs.unstack(dense_params) if stacked else [dense_params]
    source = REINITS.get(cfg.reinit)(cfg, task, random_params)
    first = runs.unstack(states)
    scores = [regrow_scores(cfg, task, s, d) for s, d in zip(first, denses)]
    prunable = prune_lib.prunable_for(prune_cfg, prunable, first[0].params)
    sel = prune_cfg.selection()
    infos: list[list[dict]] = [[] for _ in first]
    method_seconds = 0.0
    t0 = time.perf_counter()
    for k in range(cfg.rounds):
        before = [s.mask for s in runs.unstack(states)]
        grown, starts = [], []
        for s, m, score in zip(runs.unstack(states), before, scores):
            g = masks_lib.regrow_mask(
                m, score, cfg.fraction, prunable, sel["scope"], granularity=sel["granularity"],
                allow_dense_filters=sel["allow_dense_filters"],
            )
            revived = jax.tree.map(lambda a, b: a & ~b, g, m)
            grown.append(g)
            starts.append(s.with_mask(g, task.tx, reinit_revived(s.params, revived, source)))
        out, metrics = unlearn_lib.run(method, runs.stack(starts), task, method_cfg,
                                       on_divergence=on_divergence)
        method_seconds += metrics["seconds"]
        finals = []
        for r, s in enumerate(runs.unstack(out)):
            mask = prune_lib.select(reprune_scores(cfg, task, s, prune_cfg), prune_cfg.density,
                                    prune_cfg, prunable)
            finals.append(s.with_mask(mask, task.tx))
            infos[r].append({
                "round": k + 1,
                "grown_density": masks_lib.density(grown[r], prunable),
                "density": masks_lib.density(mask, prunable),
                "changed_vs_round_start": masks_lib.similarity(mask, before[r], prunable)[
                    "only_a"],
                "method": metrics["runs"][r],
            })
        states = runs.stack(finals)
    timing = {"seconds": time.perf_counter() - t0, "method_seconds": method_seconds}
    if stacked:
        return states, {"runs": [{"rounds": i} for i in infos], **timing}
    return runs.unstack(states)[0], {"rounds": infos[0], **timing}


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
