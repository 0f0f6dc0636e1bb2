"""The experiment pipeline: split → sides → candidates → evaluate.

- **Sides** (``sides/<side>``): the pruning pipeline over S data-order seeds (``evaluate.seeds``)
  on D (``original``), on D_r (``gold``: retrain + re-prune, the gold standard) and, as a control,
  on D minus another subset of D_f's size (``quantity``: "saw less data" without forgetting D_f).
  Each side is K = S runs of :func:`prune.run_many`, its loops batched by the trainer.
- **Candidates** (``unlearn/<method>``, ``unprune/<method>``): every unlearning method, plain and
  wrapped in un-pruning, from each of the S original-side models (S stacked states; batched where
  the method batches).
- **Evaluate**: one row per model of seed 0 (accuracies, MIA, mask and output distances to gold,
  cost), and the topology measures over the S-seed sets.

Every stage is saved with Orbax under ``RUN_DIR/stages/``; a rerun loads finished stages and
resumes at the first unfinished one. The data split (indices), the resolved config and the
results (``results.json``, ``results.md``) sit in ``RUN_DIR``. :func:`run_all` runs several
configs (a sweep) with the sides of all of them batched together, identical side runs computed
once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from . import checkpoint as ckpt
from . import masks as masks_lib
from . import metrics as metrics_lib
from . import optim, runs
from . import prune as prune_lib
from . import report as report_lib
from . import unlearn as unlearn_lib
from .config import Config
from .data import Dataset, Split, load_dataset, make_split, validate_split
from .metrics import mia
from .metrics.topology import topology_report
from .models import get_model, init_model, make_apply_fn
from .timing import Stopwatch
from .train import DivergenceError, Trainer, TrainState, predict
from .unprune import Origin as UnpruneOrigin
from .unprune import (
    check_variant,
    gold_standard,  # noqa: F401  (the K=1 gold side)
    unprune,
)

SIDES = ("original", "gold", "quantity")

#: Shadow examples per side of the corrected SVC-MIA column (cheap enough for every row).
MIA_SHADOW = 2000


@dataclasses.dataclass
class Context:
    """What every stage needs: built once per run from the config (:func:`build_context`)."""

    cfg: Config
    run_dir: Path | None
    dataset: Dataset
    split: Split
    model: Any
    apply_fn: Callable
    tx: Any
    init: TrainState
    prunable: Any
    trainer: Trainer
    say: Callable[[str], None]

    @property
    def seeds(self) -> int:
        return self.cfg.evaluate.seeds

    def task(self) -> unlearn_lib.UnlearnTask:
        return unlearn_lib.UnlearnTask(self.apply_fn, self.tx, self.dataset, self.split.retain,
                                       self.split.forget, self.init, trainer=self.trainer)

    def fingerprint(self, name: str) -> str:
        """What stage ``name`` is a function of: the resolved config and methods, the split's
        index arrays and the stage's name. A stage saved with another fingerprint is refused
        (``ckpt.CheckpointError``), so a copied or stale stage can never pass for this one."""
        split = self.split
        return ckpt.fingerprint(*_resolved(self.cfg),
                                [split.train, split.val, split.test, split.forget], name)

    def done(self, name: str) -> bool:
        return self.run_dir is not None and ckpt.stage_done(
            self.run_dir, name, fingerprint=self.fingerprint(name))

    def load(self, name: str, like):
        tree, meta = ckpt.load_stage(self.run_dir, name, like,
                                     fingerprint=self.fingerprint(name))
        self.say(f"[{name}] finished earlier, loaded")
        return tree, meta

    def save(self, name: str, tree, meta: dict) -> None:
        if self.run_dir is not None:
            ckpt.save_stage(self.run_dir, name, tree, meta, fingerprint=self.fingerprint(name))
        self.say(f"[{name}] done in {meta['seconds']:.1f} s")

    def stage(self, name: str, like, compute: Callable[[], tuple[Any, dict]]):
        """Loads stage ``name`` if finished, else computes, times and saves it. ``seconds`` and
        ``compile_seconds`` (the part of it JAX spent compiling) go into its meta."""
        if self.done(name):
            return self.load(name, like)
        with Stopwatch() as sw:
            tree, meta = compute()
        meta = {**meta, "seconds": sw.seconds, "compile_seconds": sw.compile_seconds}
        self.save(name, tree, meta)
        return tree, meta

    def stacked_init(self):
        """The S seeds' initial states (every seed shares θ_0; seeds vary the data order)."""
        return runs.stack([self.init] * self.seeds)


def build_context(cfg: Config, run_dir: str | Path | None, *, progress: bool = True, say=print,
                  dataset: Dataset | None = None, trainer: Trainer | None = None) -> Context:
    """Loads the data (unless ``dataset`` is given: it must be what ``cfg.data`` names), makes
    (or reloads) the split, builds the model, θ_0, the optimizer and the trainer.

    ``run_dir`` None builds an in-memory context (experiment scripts): nothing is saved.
    """
    if run_dir is not None:
        run_dir = ckpt.make_run_dir(run_dir)
        _check_same_config(cfg, run_dir)
    d = cfg.data
    dataset = load_dataset(d.name, d.data_dir) if dataset is None else dataset
    saved_split = None if run_dir is None else ckpt.load_run_json(run_dir, "split.json")
    if saved_split is not None:
        try:
            split = Split.from_dict(saved_split)
            validate_split(split, len(dataset))
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{run_dir / 'split.json'} is not a valid split: {e}") from None
    else:
        split = make_split(
            dataset, seed=d.seed, train_size=d.train_size, val_size=d.val_size,
            test_size=d.test_size, forget_fraction=d.forget_fraction,
            forget_classes=d.forget_classes,
        )
        if run_dir is not None:
            ckpt.save_run_json(run_dir, "split.json", split.to_dict())
    model = get_model(cfg.model.name, dataset.num_classes, **cfg.model.kwargs)
    params, model_state = init_model(model, jax.random.PRNGKey(cfg.model.seed), dataset.x[:1])
    tx = optim.sgd()
    init = TrainState.create(params, model_state, tx, seed=cfg.model.seed)
    # refused before any stage is computed: a dense-side variant on a pruner it cannot re-run,
    # and more replay epochs than the dense training has
    check_variant(cfg.unprune, cfg.prune)
    cfg.unprune.snapshot_epoch(cfg.train.epochs)
    prunable = prune_lib.prunable_for(cfg.prune, masks_lib.prunable_leaves(
        params, cfg.model.prunable_include, cfg.model.prunable_exclude
    ), params)
    say(
        f"data {dataset.name}: train {split.train.size} (retain {split.retain.size}, forget "
        f"{split.forget.size}), test {split.test.size}; model {cfg.model.name}, prunable "
        f"{[p for p, f in zip(masks_lib.leaf_paths(params), jax.tree.leaves(prunable)) if f]}"
    )
    trainer = Trainer(progress=progress) if trainer is None else trainer
    if run_dir is not None:
        trainer.keep_plans_in(run_dir)
    return Context(cfg, run_dir, dataset, split, model, make_apply_fn(model), tx, init, prunable,
                   trainer, say)


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


# --- the sides --------------------------------------------------------------------------------


def sides_of(cfg: Config) -> tuple[str, ...]:
    """The sides a config runs: original and gold always, quantity if ``evaluate.quantity_side``
    (and S ≥ 2: with one seed a side there is no distribution to compare)."""
    extra = ("quantity",) if cfg.evaluate.quantity_side and cfg.evaluate.seeds >= 2 else ()
    return ("original", "gold") + extra


def quantity_removed(split: Split, labels: np.ndarray, seed: int, s: int) -> np.ndarray:
    """The examples the quantity side's seed ``s`` leaves out: as many as D_f holds, none of
    them in D_f. Random forgetting: a random subset of D_r. Class-wise forgetting: for each
    forgotten class, the same number of examples of another class (a random non-forgotten class
    per forgotten class), so the side also loses whole-class-sized chunks but keeps D_f."""
    rng = np.random.default_rng([seed, 7919, s])
    forget_y = labels[split.forget]
    retain = split.retain
    classes = np.unique(forget_y)
    retain_y = labels[retain]
    forgets_whole_classes = not np.isin(retain_y, classes).any()
    if not forgets_whole_classes:
        return np.sort(rng.choice(retain, split.forget.size, replace=False))
    others = rng.permutation(np.setdiff1d(np.unique(retain_y), classes))
    if others.size < classes.size:
        raise ValueError(f"the quantity side needs {classes.size} class(es) besides the forgotten "
                         f"{classes.tolist()}; the retained data has {others.size}")
    out = []
    for c, other in zip(classes, others):
        pool = retain[retain_y == other]
        n = int(np.sum(forget_y == c))
        out.append(rng.choice(pool, min(n, pool.size), replace=False))
    return np.sort(np.concatenate(out))


@dataclasses.dataclass(frozen=True)
class SideRun:
    """One pruning run of a side: what it trains on and with which seeds."""

    subset: np.ndarray
    train_cfg: Any
    prune_cfg: Any

    def key(self, ctx: Context) -> str:
        """Equal keys compute exactly the same run (the sweep computes them once): the data
        (subset and the data-order pool), the model, θ_0's seed and both configs."""
        h = hashlib.blake2b(digest_size=16)
        for a in (self.subset, ctx.split.train):
            h.update(np.ascontiguousarray(a, np.int64).tobytes())
        c = ctx.cfg
        h.update(json.dumps([dataclasses.asdict(self.train_cfg), dataclasses.asdict(self.prune_cfg),
                             dataclasses.asdict(c.model), c.data.name, c.data.data_dir],
                            sort_keys=True, default=str).encode())
        return h.hexdigest()


def side_runs(ctx: Context, side: str) -> list[SideRun]:
    """The S runs of ``side``: data-order seeds ``train.seed + s`` and ``prune.seed + s``."""
    cfg, split = ctx.cfg, ctx.split
    out = []
    for s in range(ctx.seeds):
        if side == "original":
            subset = split.train
        elif side == "gold":
            subset = split.retain
        else:
            removed = quantity_removed(split, ctx.dataset.y, cfg.data.seed, s)
            subset = np.setdiff1d(split.train, removed)
        out.append(SideRun(subset, dataclasses.replace(cfg.train, seed=cfg.train.seed + s),
                           dataclasses.replace(cfg.prune, seed=cfg.prune.seed + s)))
    return out


def stage_sides(ctxs: Sequence[Context]) -> list[dict[str, tuple[dict, dict]]]:
    """Every side of every context: ``[{side: ({'dense', 'sparse'}, meta)}]``.

    The missing ones are computed per side kind in one :func:`prune.run_many` call over all
    contexts (a sweep's variants batch), identical runs (same data, seeds and config: the
    original side of a forget-fraction sweep) computed once. A side's ``seconds`` is its share
    of the call's wall time (the call's time × its runs / the call's runs); ``seconds_per_run``
    divides by S.
    """
    out: list[dict] = [{} for _ in ctxs]
    for side in SIDES:
        todo = []
        for i, ctx in enumerate(ctxs):
            if side not in sides_of(ctx.cfg):
                continue
            name = f"sides/{side}"
            like = {"dense": ctx.stacked_init(), "sparse": ctx.stacked_init(),
                    **({"snapshot": ctx.stacked_init()} if _snapshot_epoch(ctx, side) is not None
                       else {})}
            if ctx.done(name):
                out[i][side] = ctx.load(name, like)
            else:
                todo.append(i)
        if not todo:
            continue
        unique: dict[tuple, int] = {}
        requests = []  # (context index, run) per distinct run
        slots = {}
        for i in todo:
            for s, r in enumerate(side_runs(ctxs[i], side)):
                key = r.key(ctxs[i])
                if key not in unique:
                    unique[key] = len(requests)
                    requests.append((i, r))
                slots[(i, s)] = unique[key]
        lead = ctxs[requests[0][0]]
        shared = len(todo) * lead.seeds - len(requests)
        keep = {e for i in todo if (e := _snapshot_epoch(ctxs[i], side)) is not None}
        lead.say(f"[sides/{side}] {len(requests)} pruning runs ({len(todo)} run(s) × "
                 f"{lead.seeds} seeds, {shared} shared)")
        try:
            with Stopwatch() as sw:
                res = prune_lib.run_many(
                    runs.stack([ctxs[i].init for i, _ in requests]), lead.apply_fn, lead.tx,
                    lead.dataset, [r.subset for _, r in requests],
                    [r.train_cfg for _, r in requests], [r.prune_cfg for _, r in requests],
                    lead.prunable,
                    order_pool=lead.split.train, desc=f"{side} ", trainer=lead.trainer,
                    keep_epochs=keep)
        except DivergenceError as e:
            raise ValueError(
                f"the {side} side's training diverged ({e}); lower train.lr, or raise "
                "train.max_loss if the loss limit is too tight") from None
        dense, sparse = runs.unstack(res.dense), runs.unstack(res.sparse)
        for i in todo:
            ctx = ctxs[i]
            picks = [slots[(i, s)] for s in range(ctx.seeds)]
            share = len(picks) / len(requests)
            meta = {"history": [res.history[j] for j in picks],
                    "seconds": sw.seconds * share, "compile_seconds": sw.compile_seconds * share,
                    "shared_runs": shared}
            meta["seconds_per_run"] = (meta["seconds"] - meta["compile_seconds"]) / ctx.seeds
            tree = {"dense": runs.stack([dense[j] for j in picks]),
                    "sparse": runs.stack([sparse[j] for j in picks])}
            if (e := _snapshot_epoch(ctx, side)) is not None:
                snaps = runs.unstack(res.snapshots[e])
                tree["snapshot"] = runs.stack([snaps[j] for j in picks])
                meta["snapshot_epoch"] = e
                meta["snapshot_bytes"] = int(sum(np.asarray(x).nbytes
                                                 for x in jax.tree.leaves(tree["snapshot"])))
                ctx.say(f"[sides/original] keeps the dense states after epoch {e} for "
                        f"un-pruning's replay: {meta['snapshot_bytes'] / 2**20:.1f} MiB "
                        f"(uncompressed) for {ctx.seeds} seeds")
            ctx.save(f"sides/{side}", tree, meta)
            out[i][side] = (tree, meta)
    return out


def _snapshot_epoch(ctx: Context, side: str) -> int | None:
    """The dense epoch the original side keeps for un-pruning's ``'replay'`` variant, or None."""
    if side != "original":
        return None
    return ctx.cfg.unprune.snapshot_epoch(ctx.cfg.train.epochs)


# --- candidates -------------------------------------------------------------------------------


def divergences(metrics: dict) -> list:
    """Per run: the divergence message of an unlearning, an un-pruning round or un-pruning's
    dense-side method (which then leaves θ_dense at its last good state), or None."""
    out = []
    for m in metrics["runs"]:
        rounds = m.get("rounds")
        msgs = [r["method"].get("diverged") for r in rounds] if rounds else [m.get("diverged")]
        dense = m.get("dense", {}).get("diverged")
        msgs.append(dense and f"dense side: {dense}")
        out.append(next((x for x in msgs if x), None))
    return out


def stage_candidates(ctx: Context, original: dict) -> dict[tuple[str, str], tuple]:
    """``{(kind, method): (S stacked states, meta)}`` for kind ``baseline`` (the method under the
    original masks) and ``unprune`` (wrapped in un-pruning), from each original-side model."""
    cfg, out = ctx.cfg, {}
    sparse = original["sparse"]
    like = ctx.stacked_init()
    origin = UnpruneOrigin(
        dense=original["dense"],
        train_cfgs=tuple(r.train_cfg for r in side_runs(ctx, "original")),
        order_pool=ctx.split.train, snapshot=original.get("snapshot"),
        snapshot_epoch=_snapshot_epoch(ctx, "original"))
    dense_method_cfg = (cfg.method_config(cfg.unprune.dense_method)
                        if cfg.unprune.variant == "rescore" else None)
    for method in cfg.unlearn.methods:
        method_cfg = cfg.method_config(method)

        def baseline(method=method, method_cfg=method_cfg):
            states, m = unlearn_lib.run(method, sparse, ctx.task(), method_cfg,
                                        on_divergence="keep_last_good")
            return states, {"runs": m["runs"], "batched": m["batched"], "diverged": divergences(m)}

        def unpruned(method=method, method_cfg=method_cfg):
            random_params = None
            if cfg.unprune.reinit == "random":
                random_params, _ = init_model(ctx.model, jax.random.PRNGKey(cfg.model.seed + 1),
                                              ctx.dataset.x[:1])
            states, info = unprune(sparse, ctx.task(), method, method_cfg, cfg.unprune,
                                   origin=origin, prune_cfg=cfg.prune, prunable=ctx.prunable,
                                   random_params=random_params,
                                   dense_method_cfg=dense_method_cfg)
            return states, {"runs": info["runs"], "diverged": divergences(info),
                            "method_seconds": info["method_seconds"]}

        out[("baseline", method)] = ctx.stage(f"unlearn/{method}", like, baseline)
        out[("unprune", method)] = ctx.stage(f"unprune/{method}", like, unpruned)
    return out


# --- evaluation -------------------------------------------------------------------------------


def _first(stacked: TrainState) -> TrainState:
    return runs.unstack(stacked)[0]


def row_metrics(ctx: Context, state: TrainState, gold: TrainState, original: TrainState,
                gold_forget_logits: np.ndarray) -> dict:
    """One model's row: UA/RA/TA, the corrected SVC-MIA efficacy, mask metrics against gold
    (None for a dense model, whose mask says nothing), output and weight distance to gold."""
    split, ds = ctx.split, ctx.dataset
    logits = {name: predict(state, ctx.apply_fn, ds, idx)
              for name, idx in (("forget", split.forget), ("retain", split.retain),
                                ("test", split.test))}
    acc = {name: float(np.mean(np.argmax(lg, -1) == ds.y[idx])) for (name, lg), idx in
           zip(logits.items(), (split.forget, split.retain, split.test))}
    density = masks_lib.density(state.mask, ctx.prunable)
    mm = (metrics_lib.mask_metrics(state.mask, gold.mask, ctx.prunable, original=original.mask)
          if density < 1 else None)
    attack = mia.svc_mia(
        mia.softmax(logits["retain"]), ds.y[split.retain], mia.softmax(logits["test"]),
        ds.y[split.test], mia.softmax(logits["forget"]), ds.y[split.forget],
        feature="m_entropy", n_shadow=min(MIA_SHADOW, split.retain.size, split.test.size),
        seed=0)
    return {
        "UA": 1.0 - acc["forget"], "RA": acc["retain"], "TA": acc["test"],
        "MIA": attack["efficacy"], "MIA_attack_acc": attack["test_acc"],
        "density": density,
        "IoU_gold": mm and mm["jaccard"],
        "IoU_gold_corrected": mm and mm["jaccard_corrected"],
        "hamming_gold": mm and mm["hamming"],
        "delta_J": mm and mm["delta_jaccard"],
        "corrected_fraction": mm and mm["corrected_fraction"],
        "JS_gold_forget": metrics_lib.mean_js(logits["forget"], gold_forget_logits),
        "weight_distance_gold": metrics_lib.weight_distance(
            state.params, gold.params, state.mask, gold.mask, ctx.prunable),
        "mask_metrics": mm,
    }


def evaluate(ctx: Context, sides: dict, candidates: dict) -> dict:
    """The results: one row per model of seed 0 and the S-seed topology measures."""
    original, gold = _first(sides["original"][0]["sparse"]), _first(sides["gold"][0]["sparse"])
    gold_meta = sides["gold"][1]
    gold_per_run = gold_meta["seconds_per_run"]
    gold_logits = predict(gold, ctx.apply_fn, ctx.dataset, ctx.split.forget)
    S = ctx.seeds

    def cost(meta: dict) -> dict:
        per_run = (meta["seconds"] - meta["compile_seconds"]) / S
        return {"seconds": meta["seconds"] / S, "compile_seconds": meta["compile_seconds"] / S,
                "RTE": per_run / gold_per_run if gold_per_run > 0 else float("nan")}

    entries = [("dense", None, _first(sides["original"][0]["dense"]), sides["original"][1], None),
               ("original", None, original, sides["original"][1], None)]
    for (kind, method), (states, meta) in candidates.items():
        entries.append((kind, method, _first(states), meta, meta["diverged"][0]))
    entries.append(("gold", None, gold, gold_meta, None))

    topology = topology_measures(ctx, sides, candidates)
    per_candidate = (topology.get("report") or {}).get("candidates", {})
    rows = []
    for kind, method, state, meta, diverged in entries:
        row = {"kind": kind, "method": method,
               **row_metrics(ctx, state, gold, original, gold_logits), **cost(meta),
               "diverged": diverged}
        row.update(_topology_columns(topology, kind, per_candidate.get(report_lib.label(row))))
        rows.append(row)
    results = {
        "rows": rows,
        "IoU_original_gold": masks_lib.jaccard(original.mask, gold.mask, ctx.prunable),
        "noise_floor": topology.get("noise_floor"),
        "topology": topology.get("report"),
        "seeds": S,
        "split": ctx.split.summary(),
        "config": ctx.cfg.to_dict(),
    }
    if ctx.cfg.prune.selection()["granularity"] == "filter":
        results["filter_IoU_original_gold"] = metrics_lib.filter_metrics(
            original.mask, gold.mask, ctx.prunable)["jaccard"]
    return results


def topology_measures(ctx: Context, sides: dict, candidates: dict) -> dict:
    """Over the S seeds of each side (S ≥ 2): the topology test (``metrics.topology``: the sides,
    every candidate that changes the mask beside its matched random control, the quantity side)
    and the gold side's noise floor."""
    if ctx.seeds < 2:
        return {}
    sel = ctx.cfg.prune.selection()
    masks = {side: runs.unstack(tree["sparse"].mask) for side, (tree, _) in sides.items()}
    changing = {report_lib.label({"kind": k, "method": m}): runs.unstack(states.mask)
                for (k, m), (states, _) in candidates.items()
                if k != "baseline"}  # a baseline keeps the original masks
    report = topology_report(
        masks["original"], masks["gold"], ctx.prunable, changing,
        quantity_side=masks.get("quantity"), granularity=sel["granularity"],
        allow_dense_filters=sel["allow_dense_filters"], seed=ctx.cfg.data.seed)
    return {"report": report,
            "noise_floor": metrics_lib.noise_floor(masks["gold"], ctx.prunable)}


def _topology_columns(topology: dict, kind: str, candidate: dict | None) -> dict:
    """A row's topology columns: for a candidate that changes the mask, its distance travelled
    toward the gold side beyond its matched random control (mean and interval over the S pairs;
    only where the sides differ at the report's level, else the scale is noise) and the p-value
    of its set against the gold set; for the original row, the p-value of the original side
    against the gold side (is there a trace to remove at all?)."""
    report = topology.get("report")
    out = {"travelled_beyond_control": None, "travelled_beyond_control_ci": None,
           "p_vs_gold": None}
    if report is None:
        return out
    sides_p = report["sides"]["test"]["p_value"]
    if kind == "original":
        out["p_vs_gold"] = sides_p
    elif candidate is not None:
        out["p_vs_gold"] = candidate["vs_gold"]["p_value"]
        # the scale from the original side (0) to the gold side (1) exists only where the two
        # sides differ: otherwise the distance is a ratio of noise (the topology table says so)
        if sides_p <= 1 - report["confidence"]:
            out.update(travelled_beyond_control=candidate["beyond_control"]["mean"],
                       travelled_beyond_control_ci=candidate["beyond_control"]["ci"])
    return out


# --- running ----------------------------------------------------------------------------------


def _machine() -> dict:
    return {"platform": platform.platform(), "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "jax": jax.__version__}


def finish(ctx: Context, results: dict, t_start: float) -> dict:
    """Adds the machine and the total time, writes ``results.json`` and ``results.md``."""
    results = {**results, "machine": _machine(), "total_seconds": time.perf_counter() - t_start}
    table, summary = report_lib.format_table(results["rows"]), report_lib.summary_lines(results)
    if ctx.run_dir is not None:
        ckpt.save_json(ctx.run_dir / "results.json", results)
        (ctx.run_dir / "results.md").write_text(f"# Results\n\n{table}\n\n{summary}\n")
    ctx.say("\n" + table)
    ctx.say(f"\n{summary}" + (f"\nresults in {ctx.run_dir / 'results.md'}" if ctx.run_dir else ""))
    return results


def run_contexts(ctxs: Sequence[Context]) -> list[dict]:
    """The pipeline for several contexts: their sides batched together, then each one's
    candidates and evaluation. Returns each context's results."""
    t_start = time.perf_counter()
    sides = stage_sides(ctxs)
    out = []
    for ctx, s in zip(ctxs, sides):
        candidates = stage_candidates(ctx, s["original"][0])
        out.append(finish(ctx, evaluate(ctx, s, candidates), t_start))
    return out


@ckpt.with_run_dir_lock
def run(cfg: Config, run_dir: str | Path, *, progress: bool = True, say=print,
        dataset: Dataset | None = None, trainer: Trainer | None = None) -> dict:
    """Runs (or resumes) the whole pipeline; returns the results dict also saved as JSON.

    The run holds ``run_dir``'s lock (``ckpt.lock_run_dir``): a second process gets an error
    naming the holder."""
    ctx = build_context(cfg, run_dir, progress=progress, say=say, dataset=dataset,
                        trainer=trainer)
    return run_contexts([ctx])[0]


__all__ = ["run", "run_contexts", "build_context", "evaluate", "stage_sides", "stage_candidates",
           "side_runs", "quantity_removed", "divergences", "Context", "SIDES"]
