"""The experiment pipeline: split → prune (incl. training) → unlearn → un-prune → gold → evaluate.

Each stage is saved with Orbax under ``RUN_DIR/stages/`` (state, mask, metrics and timing); a
rerun loads finished stages and resumes at the first unfinished one. The data split (indices),
the resolved config and the final results (``results.json``, ``results.md``) sit in ``RUN_DIR``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from . import checkpoint as ckpt
from . import optim
from . import masks as masks_lib
from . import metrics as metrics_lib
from . import prune as prune_lib
from . import unlearn as unlearn_lib
from .config import Config
from .data import Dataset, Split, load_dataset, make_split, validate_split
from .models import get_model, init_model, make_apply_fn
from .metrics.membership import topology_membership
from .train import TrainState, predict
from .unprune import gold_standard, unprune

log = logging.getLogger("unprune_jax")

# Seconds JAX spent tracing, lowering and compiling, so stage times can report compilation apart.
_COMPILE_SECONDS = [0.0]


def _on_duration(event: str, duration: float, **_):
    if event.startswith("/jax/core/compile/"):
        _COMPILE_SECONDS[0] += duration


jax.monitoring.register_event_duration_secs_listener(_on_duration)


@dataclasses.dataclass
class Context:
    """What every stage needs: built once per run from the config."""

    cfg: Config
    run_dir: Path
    dataset: Dataset
    split: Split
    apply_fn: Callable
    tx: Any
    init: TrainState
    prunable: Any
    progress: bool
    say: Callable[[str], None]

    def task(self) -> unlearn_lib.UnlearnTask:
        return unlearn_lib.UnlearnTask(
            self.apply_fn, self.tx, self.dataset, self.split.retain, self.split.forget,
            self.init, self.progress,
        )

    def stage(self, name: str, like, compute: Callable[[], tuple[Any, dict]]):
        """Loads stage ``name`` if finished, else computes, times and saves it.

        The stage is tied to what produced it: a fingerprint of the resolved config and
        methods, the split's index arrays and the stage's name (every stage is a function of
        these); a stage with another fingerprint is refused (``ckpt.CheckpointError``).
        """
        fp = ckpt.fingerprint(*_resolved(self.cfg), [self.split.train, self.split.val,
                                                     self.split.test, self.split.forget], name)
        if ckpt.stage_done(self.run_dir, name, fingerprint=fp):
            tree, meta = ckpt.load_stage(self.run_dir, name, like, fingerprint=fp)
            self.say(f"[{name}] finished earlier, loaded")
            return tree, meta
        t0, c0 = time.perf_counter(), _COMPILE_SECONDS[0]
        tree, meta = compute()
        meta = {**meta, "seconds": time.perf_counter() - t0,
                "compile_seconds": _COMPILE_SECONDS[0] - c0}
        ckpt.save_stage(self.run_dir, name, tree, meta, fingerprint=fp)
        self.say(f"[{name}] done in {meta['seconds']:.1f} s")
        return tree, meta


def build_context(cfg: Config, run_dir: str | Path, *, progress=True, say=print,
                  dataset: Dataset | None = None) -> Context:
    """Loads the data (unless ``dataset`` is given: it must be what ``cfg.data`` names), makes
    (or reloads) the split, builds the model, θ_0 and the optimizer."""
    run_dir = ckpt.make_run_dir(run_dir)
    _check_same_config(cfg, run_dir)
    d = cfg.data
    dataset = load_dataset(d.name, d.data_dir) if dataset is None else dataset
    split_path = run_dir / "split.json"
    saved_split = ckpt.load_run_json(run_dir, "split.json")
    if saved_split is not None:
        try:
            split = Split.from_dict(saved_split)
            validate_split(split, len(dataset))
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{split_path} is not a valid split: {e}") from None
    else:
        kwargs = (
            {"forget_classes": d.forget_classes}
            if d.forget_classes
            else {"forget_fraction": d.forget_fraction}
        )
        split = make_split(
            dataset, seed=d.seed, train_size=d.train_size, val_size=d.val_size,
            test_size=d.test_size, **kwargs,
        )
        ckpt.save_run_json(run_dir, "split.json", split.to_dict())
    model = get_model(cfg.model.name, dataset.num_classes, **cfg.model.kwargs)
    params, model_state = init_model(model, jax.random.PRNGKey(cfg.model.seed), dataset.x[:1])
    tx = optim.sgd()
    init = TrainState.create(params, model_state, tx, seed=cfg.model.seed)
    prunable = prune_lib.prunable_for(cfg.prune, masks_lib.prunable_leaves(
        params, cfg.model.prunable_include, cfg.model.prunable_exclude
    ), params)
    say(
        f"data {dataset.name}: train {split.train.size} (retain {split.retain.size}, forget "
        f"{split.forget.size}), test {split.test.size}; model {cfg.model.name}, prunable "
        f"{[p for p, f in zip(masks_lib.leaf_paths(params), jax.tree.leaves(prunable)) if f]}"
    )
    return Context(cfg, run_dir, dataset, split, make_apply_fn(model), tx, init, prunable,
                   progress, say)


def _resolved(cfg: Config) -> tuple[dict, dict]:
    """The config and every method's resolved settings, as JSON gives them back."""
    methods = {m: dataclasses.asdict(cfg.method_config(m)) for m in cfg.unlearn.methods}
    return json.loads(json.dumps(cfg.to_dict())), json.loads(json.dumps(methods))


def _check_same_config(cfg: Config, run_dir: Path) -> None:
    """Saves the resolved config, or refuses a run directory that holds another one.

    ``methods.json`` holds every method's resolved settings (registry defaults, per-dataset
    hyperparameters, overrides), so a change of defaults cannot slip into a resumed run either.
    Both are checksummed (``ckpt.save_run_json``): an edited or deleted one is refused.
    """
    for name, new in zip(("config.json", "methods.json"), _resolved(cfg)):
        old = ckpt.load_run_json(run_dir, name)
        if old is not None:
            if old != new:
                diff = sorted(_diff_keys(old, new))
                raise ValueError(
                    f"{run_dir} holds a run with another config ({name} differs at {diff[:6]}); "
                    f"use another --run-dir, or --fresh to discard it"
                )
        else:
            ckpt.save_run_json(run_dir, name, new)


def _diff_keys(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in set(a) | set(b):
            yield from _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield prefix.rstrip(".")


# --- stages ---------------------------------------------------------------------------------------


def stage_prune(ctx: Context):
    """The original sparse model: pruner ``prune.method`` on D from θ_0."""

    def compute():
        res = prune_lib.run(
            ctx.init, ctx.apply_fn, ctx.tx, ctx.dataset, ctx.split.train, ctx.cfg.train,
            ctx.cfg.prune, ctx.prunable, progress=ctx.progress,
        )
        return {"dense": res.dense, "sparse": res.sparse}, {"history": res.history}

    return ctx.stage("prune", {"dense": ctx.init, "sparse": ctx.init}, compute)


def _unlearn_meta(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k in ("history", "diverged", "rounds")}


def stage_unlearn(ctx: Context, original: TrainState, method: str):
    """Baseline: unlearning method ``method`` under the original mask."""

    def compute():
        state, m = unlearn_lib.run(
            method, original, ctx.task(), ctx.cfg.method_config(method),
            on_divergence="keep_last_good",
        )
        return state, {**_unlearn_meta(m), "method_seconds": m["seconds"]}

    return ctx.stage(f"unlearn/{method}", ctx.init, compute)


def stage_unprune(ctx: Context, original: TrainState, dense_params, method: str):
    """Un-pruning wrapped around unlearning method ``method``."""
    cfg = ctx.cfg

    def compute():
        random_params = None
        if cfg.unprune.reinit == "random":
            model = get_model(cfg.model.name, ctx.dataset.num_classes, **cfg.model.kwargs)
            random_params, _ = init_model(
                model, jax.random.PRNGKey(cfg.model.seed + 1), ctx.dataset.x[:1]
            )
        state, info = unprune(
            original, ctx.task(), method, cfg.method_config(method), cfg.unprune,
            dense_params=dense_params, prune_cfg=cfg.prune, prunable=ctx.prunable,
            random_params=random_params,
        )
        diverged = [r["method"]["diverged"] for r in info["rounds"] if "diverged" in r["method"]]
        meta = {**info, "method_seconds": info["seconds"]}
        return state, {**meta, "diverged": diverged[0]} if diverged else meta

    return ctx.stage(f"unprune/{method}", ctx.init, compute)


def stage_gold(ctx: Context):
    """Gold standard: the same pruner from θ_0 on D_r, same data order minus D_f."""
    cfg = ctx.cfg

    def compute():
        res = gold_standard(
            ctx.task(), cfg.train, cfg.prune, ctx.prunable, order_pool=ctx.split.train
        )
        return {"dense": res.dense, "sparse": res.sparse}, {"history": res.history}

    return ctx.stage("gold", {"dense": ctx.init, "sparse": ctx.init}, compute)


def stage_seed_masks(ctx: Context) -> tuple[list, list]:
    """Masks of the pruning pipeline on D and on D_r for data-order seeds 1..S−1."""
    cfg = ctx.cfg
    originals, golds = [], []
    for s in range(1, cfg.evaluate.seeds):
        train_cfg = dataclasses.replace(cfg.train, seed=cfg.train.seed + s)
        prune_cfg = dataclasses.replace(cfg.prune, seed=cfg.prune.seed + s)
        for side, indices, out in (("original", ctx.split.train, originals),
                                   ("gold", ctx.split.retain, golds)):

            def compute(indices=indices, side=side):
                res = prune_lib.run(
                    ctx.init, ctx.apply_fn, ctx.tx, ctx.dataset, indices, train_cfg, prune_cfg,
                    ctx.prunable, order_pool=ctx.split.train, desc=f"seed {s} {side} ",
                    progress=ctx.progress,
                )
                return res.sparse.mask, {}

            out.append(ctx.stage(f"seeds/{side}{s}", ctx.init.mask, compute)[0])
    return originals, golds


# --- evaluation -----------------------------------------------------------------------------------


def evaluate(ctx: Context, states: dict[str, tuple[TrainState, dict]], original, gold,
             gold_seconds: float, membership: dict | None) -> list:
    """One row per model: accuracies, the mask metrics against gold, output and weight distance
    to gold, the membership LLR, time, compile time, and RTE: time without compilation relative
    to the gold standard's (``gold_seconds``, also without compilation).

    Mask metrics are None for a dense model (density 1), whose mask says nothing.
    """
    gold_logits = predict(gold, ctx.apply_fn, ctx.dataset, ctx.split.forget)
    rows = []
    for name, (state, meta) in states.items():
        density = masks_lib.density(state.mask, ctx.prunable)
        mm = (metrics_lib.mask_metrics(state.mask, gold.mask, ctx.prunable, original=original.mask)
              if density < 1 else None)
        acc = metrics_lib.unlearning_accuracies(state, ctx.apply_fn, ctx.dataset, ctx.split)
        logits = predict(state, ctx.apply_fn, ctx.dataset, ctx.split.forget)
        seconds = meta.get("method_seconds", meta.get("seconds"))
        compile_s = meta.get("compile_seconds", 0.0)
        llr = (membership or {}).get("candidates", {}).get(name)
        rows.append(
            {
                "model": name,
                **acc,
                "density": density,
                "IoU_gold": mm and mm["jaccard"],
                "IoU_gold_corrected": mm and mm["jaccard_corrected"],
                "hamming_gold": mm and mm["hamming"],
                "delta_J": mm and mm["delta_jaccard"],
                "corrected_fraction": mm and mm["corrected_fraction"],
                "LLR_normalised": llr and llr["normalised"],
                "JS_gold_forget": metrics_lib.mean_js(logits, gold_logits),
                "weight_distance_gold": metrics_lib.weight_distance(
                    state.params, gold.params, state.mask, gold.mask, ctx.prunable),
                "seconds": seconds,
                "compile_seconds": compile_s,
                "RTE": (seconds - compile_s) / gold_seconds,
                "diverged": meta.get("diverged"),
                "mask_metrics": mm,
            }
        )
    return rows


def format_table(rows: list[dict], first: tuple[str, str] | None = None) -> str:
    """Markdown table of the evaluation rows (percentages for accuracies; '—' where a value is
    missing or undefined, e.g. in an older run's results).

    ``first = (key, header)`` adds a leading column (the sweep's variant label).
    """

    def num(key, fmt, scale=1.0):
        x = r.get(key)
        return "—" if x is None or x != x else format(scale * x, fmt)

    columns = (("UA", ".2f", 100), ("RA", ".2f", 100), ("TA", ".2f", 100), ("IoU_gold", ".4f"),
               ("IoU_gold_corrected", ".4f"), ("delta_J", "+.4f"), ("corrected_fraction", ".3f"),
               ("LLR_normalised", "+.2f"), ("JS_gold_forget", ".4f"),
               ("weight_distance_gold", ".2f"), ("seconds", ".1f"), ("compile_seconds", ".1f"),
               ("RTE", ".2f"))
    head = ("| model | UA % | RA % | TA % | IoU gold | J* gold | ΔJ | corrected | LLR norm | "
            "JS D_f | ‖θ−θ_gold‖ | time s | compile s | RTE |")
    lead = f"| {first[1]} " if first else ""
    lines = [lead + head, "|" + "---|" * (len(columns) + 1 + bool(first))]
    for r in rows:
        flag = " (diverged)" if r.get("diverged") else ""
        cells = [f"{r['model']}{flag}"] + [num(*c) for c in columns]
        lines.append((f"| {r[first[0]]} " if first else "") + "| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_lines(results: dict) -> str:
    """The run's headline numbers under the table: IoU(original, gold), the seed noise floor,
    the membership test's AUC."""
    lines = [f"IoU(original mask, gold mask) = {results['IoU_original_gold']:.4f}"]
    if results.get("filter_IoU_original_gold") is not None:
        lines.append(f"filter-level IoU(original, gold) = {results['filter_IoU_original_gold']:.4f}")
    floor = results.get("noise_floor")
    if floor:
        j = floor["jaccard"]
        lines.append(f"noise floor: IoU between gold masks of {floor['pairs']} seed pairs = "
                     f"{j['mean']:.4f} ± {j['std']:.4f} (min {j['min']:.4f}, max {j['max']:.4f})")
    mem = results.get("membership")
    if mem:
        gap = mem["gold_mean"] - mem["original_mean"]
        spread = [float(np.std(mem[k]) / abs(gap)) if gap else float("nan")
                  for k in ("original_llr", "gold_llr")]
        lines.append(f"topology membership test ({mem['seeds']} seeds a side): AUC "
                     f"{mem['auc']:.3f} (0.5 = the per-weight LLR does not tell masks trained with "
                     "and without D_f apart; far below 0.5 = it does, inverted, usually because "
                     "one side's masks are more diverse); LLR norm: 0 = original side's mean, "
                     "1 = gold side's mean; "
                     f"the sides' own spread on that scale: ±{spread[0]:.2f} (original), "
                     f"±{spread[1]:.2f} (gold)")
    return "\n".join(lines)


@ckpt.with_run_dir_lock
def run(cfg: Config, run_dir: str | Path, *, progress: bool = True, say=print,
        dataset: Dataset | None = None) -> dict:
    """Runs (or resumes) the whole pipeline; returns the results dict also saved as JSON.

    ``dataset``: the already loaded data ``cfg.data`` names (the sweep shares one copy).
    The run holds ``run_dir``'s lock (``ckpt.lock_run_dir``): a second process gets an error.
    """
    t_start = time.perf_counter()
    ctx = build_context(cfg, run_dir, progress=progress, say=say, dataset=dataset)
    pruned, prune_meta = stage_prune(ctx)
    original = pruned["sparse"]
    states = {
        "dense (scored by the pruner)": (pruned["dense"], prune_meta),
        "original (pruned on D)": (original, prune_meta),
    }
    for method in cfg.unlearn.methods:
        states[method] = stage_unlearn(ctx, original, method)
        states[f"{method} + un-prune"] = stage_unprune(
            ctx, original, pruned["dense"].params, method
        )
    gold, gold_meta = stage_gold(ctx)
    states["gold (retrain + re-prune)"] = (gold["sparse"], gold_meta)
    seed_originals, seed_golds = stage_seed_masks(ctx)
    gold_masks = [gold["sparse"].mask] + seed_golds
    sparse = {k: v[0].mask for k, v in states.items()
              if masks_lib.density(v[0].mask, ctx.prunable) < 1}
    membership = floor = None
    if cfg.evaluate.seeds >= 2:
        floor = metrics_lib.noise_floor(gold_masks, ctx.prunable)
        membership = topology_membership([original.mask] + seed_originals, gold_masks,
                                         ctx.prunable, sparse)
    rows = evaluate(ctx, states, original, gold["sparse"],
                    gold_meta["seconds"] - gold_meta.get("compile_seconds", 0.0), membership)
    results = {
        "rows": rows,
        "IoU_original_gold": masks_lib.jaccard(original.mask, gold["sparse"].mask, ctx.prunable),
        "noise_floor": floor,
        "membership": membership and {k: v for k, v in membership.items() if k != "candidates"},
        "split": ctx.split.summary(),
        "config": cfg.to_dict(),
        "machine": {"platform": platform.platform(), "backend": jax.default_backend(),
                    "devices": [str(d) for d in jax.devices()], "jax": jax.__version__},
        "total_seconds": time.perf_counter() - t_start,
    }
    if cfg.prune.selection()["granularity"] == "filter":
        results["filter_IoU_original_gold"] = metrics_lib.filter_metrics(
            original.mask, gold["sparse"].mask, ctx.prunable)["jaccard"]
    summary = summary_lines(results)
    table = format_table(rows)
    ckpt.save_json(ctx.run_dir / "results.json", results)
    (ctx.run_dir / "results.md").write_text(f"# Results\n\n{table}\n\n{summary}\n")
    say("\n" + table)
    say(f"\n{summary}\nresults in {ctx.run_dir / 'results.md'}")
    return results


def sweep(cfg: Config, run_dir: str | Path, *, forget_fractions=None, seeds=None,
          strategy: str = "auto", progress: bool = True, say=print) -> dict:
    """K variants of ``cfg`` (forget fractions or split seeds) as one batched run; see
    :func:`unprune_jax.sweep.run_sweep`."""
    from .sweep import run_sweep

    return run_sweep(cfg, run_dir, forget_fractions=forget_fractions, seeds=seeds,
                     strategy=strategy, progress=progress, say=say)


__all__ = ["run", "sweep", "build_context", "evaluate", "format_table", "Context"]
