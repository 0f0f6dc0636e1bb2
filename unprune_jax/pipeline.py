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

from . import checkpoint as ckpt
from . import losses, optim
from . import masks as masks_lib
from . import metrics as metrics_lib
from . import prune as prune_lib
from . import unlearn as unlearn_lib
from .config import Config
from .data import Dataset, Split, load_dataset, make_split, validate_split
from .models import get_model, init_model, make_apply_fn
from .train import TrainState
from .unprune import gold_standard, unprune

log = logging.getLogger("unprune_jax")


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
        """Loads stage ``name`` if finished, else computes, times and saves it."""
        if ckpt.stage_done(self.run_dir, name):
            tree, meta = ckpt.load_stage(self.run_dir, name, like)
            self.say(f"[{name}] finished earlier, loaded")
            return tree, meta
        t0 = time.perf_counter()
        tree, meta = compute()
        meta = {**meta, "seconds": time.perf_counter() - t0}
        ckpt.save_stage(self.run_dir, name, tree, meta)
        self.say(f"[{name}] done in {meta['seconds']:.1f} s")
        return tree, meta


def build_context(cfg: Config, run_dir: str | Path, *, progress=True, say=print) -> Context:
    """Loads the data, makes (or reloads) the split, builds the model, θ_0 and the optimizer."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_same_config(cfg, run_dir)
    d = cfg.data
    dataset = load_dataset(d.name, d.data_dir)
    split_path = run_dir / "split.json"
    if split_path.exists():
        split = Split.from_dict(ckpt.load_json(split_path))
        validate_split(split, len(dataset))
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
        ckpt.save_json(split_path, split.to_dict())
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


def _check_same_config(cfg: Config, run_dir: Path) -> None:
    """Saves the resolved config, or refuses a run directory that holds another one.

    ``methods.json`` holds every method's resolved settings (registry defaults, per-dataset
    hyperparameters, overrides), so a change of defaults cannot slip into a resumed run either.
    """
    methods = {m: dataclasses.asdict(cfg.method_config(m)) for m in cfg.unlearn.methods}
    for name, new in (("config.json", cfg.to_dict()), ("methods.json", methods)):
        path = run_dir / name
        new = json.loads(json.dumps(new))  # tuples → lists, as saved
        if path.exists():
            old = json.loads(path.read_text())
            if old != new:
                diff = sorted(_diff_keys(old, new))
                raise ValueError(
                    f"{run_dir} holds a run with another config ({name} differs at {diff[:6]}); "
                    f"use another --run-dir, or --fresh to discard it"
                )
        else:
            ckpt.save_json(path, new)


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


# --- evaluation -----------------------------------------------------------------------------------


def evaluate(ctx: Context, states: dict[str, tuple[TrainState, dict]], original, gold) -> list:
    """One row per model: UA/RA/TA, density, IoU and Hamming to gold, ΔJ, seconds.

    Mask metrics are None for a dense model (density 1), whose mask says nothing.
    """
    j_orig = masks_lib.jaccard(original.mask, gold.mask, ctx.prunable)
    rows = []
    for name, (state, meta) in states.items():
        density = masks_lib.density(state.mask, ctx.prunable)
        sim = masks_lib.similarity(state.mask, gold.mask, ctx.prunable) if density < 1 else None
        acc = metrics_lib.unlearning_accuracies(state, ctx.apply_fn, ctx.dataset, ctx.split)
        rows.append(
            {
                "model": name,
                **acc,
                "density": density,
                "IoU_gold": sim and sim["jaccard"],
                "hamming_gold": sim and sim["hamming"],
                "delta_J": sim and sim["jaccard"] - j_orig,
                "seconds": meta.get("method_seconds", meta.get("seconds")),
                "diverged": meta.get("diverged"),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of the evaluation rows (percentages for accuracies)."""

    def num(x, fmt):
        return "—" if x is None else format(x, fmt)

    head = "| model | UA % | RA % | TA % | density | IoU gold | Hamming gold | ΔJ | time s |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        flag = " (diverged)" if r.get("diverged") else ""
        lines.append(
            f"| {r['model']}{flag} | {100 * r['UA']:.2f} | {100 * r['RA']:.2f} | "
            f"{100 * r['TA']:.2f} | {r['density']:.4f} | {num(r['IoU_gold'], '.4f')} | "
            f"{num(r['hamming_gold'], '.4f')} | {num(r['delta_J'], '+.4f')} | "
            f"{r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def run(cfg: Config, run_dir: str | Path, *, progress: bool = True, say=print) -> dict:
    """Runs (or resumes) the whole pipeline; returns the results dict also saved as JSON."""
    t_start = time.perf_counter()
    ctx = build_context(cfg, run_dir, progress=progress, say=say)
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
    rows = evaluate(ctx, states, original, gold["sparse"])
    results = {
        "rows": rows,
        "IoU_original_gold": masks_lib.jaccard(original.mask, gold["sparse"].mask, ctx.prunable),
        "split": ctx.split.summary(),
        "config": cfg.to_dict(),
        "machine": {"platform": platform.platform(), "backend": jax.default_backend(),
                    "devices": [str(d) for d in jax.devices()], "jax": jax.__version__},
        "total_seconds": time.perf_counter() - t_start,
    }
    table = format_table(rows)
    ckpt.save_json(ctx.run_dir / "results.json", results)
    (ctx.run_dir / "results.md").write_text(
        f"# Results\n\n{table}\n\nIoU(original, gold) = {results['IoU_original_gold']:.4f}\n"
    )
    say("\n" + table)
    say(f"\nIoU(original mask, gold mask) = {results['IoU_original_gold']:.4f}; "
        f"results in {ctx.run_dir / 'results.md'}")
    return results


__all__ = ["run", "build_context", "evaluate", "format_table", "Context"]
