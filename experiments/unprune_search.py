"""Un-pruning search: which variant's masks cannot be told from the gold standard's?

For each setting (model, forget set) where the trace map finds a D_f-specific trace, the
pipeline's sides over S seeds (``pipeline.stage_sides``: original on D, gold = retrain + re-prune
on D_r, the data-quantity control), then every un-pruning variant from each of the S original
models (S stacked states, composed with FT), judged by the topology test over the seed sets
(``metrics.topology.topology_report``, the same test the pipeline reports):

* the distance its masks travelled from the original side (0) toward the gold side (1), its
  matched random control (the same number of mask changes, at random) and the difference, with
  95% intervals over the S pairs;
* its set against the gold set: energy statistic and exact permutation p-value (S = 8: smallest
  p 1/128); the original side's own p against gold says whether there is a trace at all;
* UA / RA / TA (means over the S seeds) beside gold's, and RTE: the variant's time per run
  (compilation excluded) over the gold standard's.

The goal (issue 15): p vs gold not significant where original vs gold is, at RTE ≤ 0.3 and TA
within 1 point of gold's. The table says for each variant whether it got there.

    python experiments/unprune_search.py                # LeNet random 10% + class 0, CNN class 0
    python experiments/unprune_search.py --tiny         # seconds, for the tests
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

import common
from unprune_jax import masks as masks_lib
from unprune_jax import pipeline, runs
from unprune_jax.config import Config, DataConfig, EvaluateConfig, ModelConfig
from unprune_jax.data import load_dataset
from unprune_jax.metrics.topology import topology_report
from unprune_jax.prune import PruneConfig
from unprune_jax.timing import Stopwatch
from unprune_jax.train import TrainConfig, accuracy
from unprune_jax.unprune import Origin, UnpruneConfig, unprune

#: forget sets: label → (forget_fraction, forget_classes)
FORGET_SETS = {"random 10%": (0.1, None), "class 0": (None, (0,))}
ALPHA = 0.05
#: the unlearning method every variant is composed with, and its settings
METHOD, METHOD_CFG = "FT", TrainConfig(epochs=1, lr=0.01)
#: the dense-side unlearners' settings (FT: one epoch; NegGrad+ and IU: registry defaults; GA:
#: one full-batch ascent step, sized per setting by :func:`ga_step`)
DENSE_CFGS = {"FT": TrainConfig(epochs=1, lr=0.01), "NegGrad+": None, "IU": None}


def ga_step(ctx: pipeline.Context) -> TrainConfig:
    """One gradient-ascent step on D_f's mean loss from θ_dense, no momentum or decay, with the
    step size of D_f's first-order share of the training trajectory: each of its examples took
    part in E steps of lr/B each, so removing it moves θ by about lr·E·|D_f|/B times the mean
    D_f gradient (the single-gradient unlearning of Thudi et al., 2022, on the dense side)."""
    t, n = ctx.cfg.train, int(ctx.split.forget.size)
    return TrainConfig(epochs=1, batch_size=n, lr=t.lr * t.epochs * n / t.batch_size,
                       momentum=0.0, weight_decay=0.0)


def replay_name(r: int, epochs: int) -> str:
    return (f"replay all {epochs} dense epochs on D_r (= gold's dense run) + recovery"
            if r == epochs else f"replay last {r} of {epochs} dense epochs on D_r + recovery")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One searched variant: its un-pruning settings, and whether it runs :data:`METHOD` (False:
    the variant's own work and nothing after it)."""

    cfg: UnpruneConfig
    compose: bool = True


def bare_name(r: int, epochs: int) -> str:
    return f"replay last {r} of {epochs} dense epochs on D_r only (no FT, no recovery)"


def variants(recovery: int, replays=(1,), epochs: int = 5) -> dict[str, Variant]:
    """The variants searched: the paper's Algorithm 1 with and without recovery, retained-data
    recomputation (|θ ⊙ ∇L_Dr| or Fisher/OBD scores, two rounds), dense-side re-scoring after FT,
    NegGrad+, one GA step on D_f or IU's inverse-Hessian step on θ_dense, and replay of the last
    R dense epochs on D_r for each R of ``replays`` (R = E, the whole dense run, is a positive
    control: its masks are the gold masks). Every variant but the
    paper's ends with ``recovery`` epochs of training under the final mask, except the longest
    partial replay's bare twin: the replay alone, no unlearner, no recovery (the cheapest use of
    replayed epochs)."""
    rec = {"recovery_epochs": recovery}
    replay = {replay_name(r, epochs): UnpruneConfig(variant="replay", replay_epochs=r,
                                                    reinit="dense", **rec)
              for r in sorted({min(r, epochs) for r in replays})}
    # the cheapest way to spend the replay: the longest partial replay with nothing after it
    # (no unlearner, no recovery): is its accuracy still near gold's?
    partial = [r for r in replays if r < epochs]
    bare = {bare_name(max(partial), epochs): Variant(UnpruneConfig(
        variant="replay", replay_epochs=max(partial), reinit="dense"), compose=False)
        } if partial else {}
    plain = {
        "Algorithm 1 (paper)": UnpruneConfig(),
        "Algorithm 1 + recovery": UnpruneConfig(**rec),
        "D_r gradient |θ ⊙ ∇L_Dr|, 2 rounds + recovery": UnpruneConfig(
            regrow_score="gradient", reprune_score="gradient", rounds=2, **rec),
        "D_r Fisher (OBD), 2 rounds + recovery": UnpruneConfig(
            regrow_score="fisher", reprune_score="fisher", rounds=2, **rec),
        "rescore after FT on θ_dense + recovery": UnpruneConfig(
            variant="rescore", dense_method="FT", reinit="dense", **rec),
        "rescore after NegGrad+ on θ_dense + recovery": UnpruneConfig(
            variant="rescore", dense_method="NegGrad+", reinit="dense", **rec),
        "rescore after one GA step on D_f (θ_dense) + recovery": UnpruneConfig(
            variant="rescore", dense_method="GA", reinit="dense", **rec),
        "rescore after IU's inverse-Hessian step on θ_dense + recovery": UnpruneConfig(
            variant="rescore", dense_method="IU", reinit="dense", **rec),
        **replay,
    }
    return {**{n: Variant(c) for n, c in plain.items()},
        **bare,
    }


def setting_context(model: str, forget: str, args, data, replay: int) -> pipeline.Context:
    fraction, classes = FORGET_SETS[forget]
    cfg = Config(
        data=DataConfig(name="fashion_mnist", data_dir=args.data_dir, seed=0,
                        train_size=args.train_size[model], val_size=0, test_size=args.test_size,
                        forget_fraction=fraction, forget_classes=classes),
        model=ModelConfig(name=model, seed=0),
        train=TrainConfig(epochs=args.epochs[model], lr=args.lr, seed=0),
        prune=PruneConfig(method="omp", density=args.density, seed=0),
        # the replay variant needs the original side's dense state after epoch E − replay
        unprune=UnpruneConfig(variant="replay", replay_epochs=replay),
        evaluate=EvaluateConfig(seeds=args.seeds, quantity_side=True))
    return pipeline.build_context(cfg, None, progress=False, say=print, dataset=data)


def accuracies(ctx: pipeline.Context, stacked) -> dict:
    """UA, RA, TA: means over the S seeds."""
    split, out = ctx.split, {"UA": [], "RA": [], "TA": []}
    for s in runs.unstack(stacked):
        out["UA"].append(1 - accuracy(s, ctx.apply_fn, ctx.dataset, split.forget))
        out["RA"].append(accuracy(s, ctx.apply_fn, ctx.dataset, split.retain))
        out["TA"].append(accuracy(s, ctx.apply_fn, ctx.dataset, split.test))
    return {k: float(np.mean(v)) for k, v in out.items()}


def run_setting(model: str, forget: str, args, data) -> list[dict]:
    epochs = args.epochs[model]
    replays = sorted({min(r, epochs) for r in args.replay_epochs})
    # one context per replay length: the sides batch them and compute each distinct run once,
    # the original side's runs keeping the dense states of every epoch asked for
    ctxs = {r: setting_context(model, forget, args, data, r) for r in replays}
    sides_of = dict(zip(replays, pipeline.stage_sides(list(ctxs.values()))))
    ctx, sides = ctxs[replays[0]], sides_of[replays[0]]
    original, gold = sides["original"][0], sides["gold"][0]
    gold_per_run = sides["gold"][1]["seconds_per_run"]
    S = ctx.seeds
    train_cfgs = tuple(r.train_cfg for r in pipeline.side_runs(ctx, "original"))
    results, costs, diverged = {}, {}, {}
    for name, variant in variants(args.recovery, replays, epochs).items():
        ucfg = variant.cfg
        dense_cfg = None
        if ucfg.variant == "rescore":
            dense_cfg = ga_step(ctx) if ucfg.dense_method == "GA" else DENSE_CFGS[
                ucfg.dense_method]
        own = sides_of.get(ucfg.replay_epochs, sides) if ucfg.variant == "replay" else sides
        origin = Origin(dense=original["dense"], train_cfgs=train_cfgs,
                        order_pool=ctx.split.train, snapshot=own["original"][0].get("snapshot"),
                        snapshot_epoch=own["original"][1].get("snapshot_epoch"))
        with Stopwatch() as sw:
            method_cfg = (METHOD_CFG if variant.compose
                          else dataclasses.replace(METHOD_CFG, epochs=0))
            states, info = unprune(original["sparse"], ctx.task(), METHOD, method_cfg, ucfg,
                                   origin=origin, prune_cfg=ctx.cfg.prune,
                                   prunable=ctx.prunable, dense_method_cfg=dense_cfg)
        results[name] = states
        costs[name] = (sw.seconds - sw.compile_seconds) / S / gold_per_run
        # a diverging method keeps its last good state (a dense method diverging in its first
        # epoch leaves θ_dense as it was): the table counts such runs
        diverged[name] = sum(m is not None for m in pipeline.divergences(info))
        print(f"[{model} {forget}] {name}: {sw.seconds:.1f} s for {S} runs", flush=True)

    masks = {side: runs.unstack(tree["sparse"].mask) for side, (tree, _) in sides.items()}
    report = topology_report(masks["original"], masks["gold"], ctx.prunable,
                             {n: runs.unstack(s.mask) for n, s in results.items()},
                             quantity_side=masks.get("quantity"), seed=0)
    test, q = report["sides"]["test"], report["sides"]["quantity"]
    trace = test["p_value"] <= ALPHA
    acc_gold = accuracies(ctx, gold["sparse"])
    base = {"model": model, "forget": forget, "forget_size": int(ctx.split.forget.size),
            "train_size": int(ctx.split.train.size), "seeds": S,
            "p_original_gold": test["p_value"], "E_original_gold": test["value"],
            "quantity_position": q["quantity_position"]["mean"] if q else None,
            "gold_UA": acc_gold["UA"], "gold_RA": acc_gold["RA"], "gold_TA": acc_gold["TA"],
            "snapshot_bytes": sides["original"][1]["snapshot_bytes"]}
    rows = [{**base, "variant": "original (no un-pruning)", "p_vs_gold": test["p_value"],
             "E_vs_gold": test["value"], "changed": 0.0, "RTE": 0.0,
             **accuracies(ctx, original["sparse"])}]
    for name, states in results.items():
        c = report["candidates"][name]
        acc = accuracies(ctx, states)
        row = {**base, "variant": name, "p_vs_gold": c["vs_gold"]["p_value"],
               "E_vs_gold": c["vs_gold"]["value"], "changed": c["changed"],
               "travelled": c["travelled"]["mean"], "travelled_lo": c["travelled"]["ci"][0],
               "travelled_hi": c["travelled"]["ci"][1],
               "control": c["control"]["travelled"]["mean"],
               "beyond_control": c["beyond_control"]["mean"],
               "beyond_lo": c["beyond_control"]["ci"][0],
               "beyond_hi": c["beyond_control"]["ci"][1],
               "IoU_gold_same_seed": float(np.mean([
                   masks_lib.jaccard(a, g, ctx.prunable)
                   for a, g in zip(runs.unstack(states.mask), masks["gold"])])),
               "RTE": costs[name], "diverged_runs": diverged[name], **acc}
        row["goal"] = "yes" if (trace and row["p_vs_gold"] > ALPHA and costs[name] <= 0.3
                                and abs(acc["TA"] - acc_gold["TA"]) <= 0.01) else "no"
        rows.append(row)
    rows[0]["IoU_gold_same_seed"] = float(np.mean([
        masks_lib.jaccard(a, g, ctx.prunable) for a, g in zip(masks["original"], masks["gold"])]))
    for r in rows:
        r["trace"] = "yes" if trace else "no"
        r["travelled_shown"] = r.get("travelled") if trace else None
        for key in ("beyond_control", "beyond_lo", "beyond_hi"):
            r[key.replace("control", "shown") if key == "beyond_control" else f"{key}_shown"] = \
                r.get(key) if trace else None
    return rows


def draw(rows: list[dict], out: Path, name: str, subtitle: str) -> Path:
    """Per setting: each variant's distance travelled toward gold beyond its random control
    (with its interval) against its RTE, and its p-value against gold."""
    plt = common.pyplot()
    settings = list(dict.fromkeys((r["model"], r["forget"]) for r in rows))
    fig, axes = plt.subplots(2, len(settings), figsize=(5.2 * len(settings), 8), squeeze=False)
    for j, (model, forget) in enumerate(settings):
        rs = [r for r in rows if (r["model"], r["forget"]) == (model, forget)
              and r.get("travelled") is not None]
        ax = axes[0][j]
        for r in rs:
            ax.errorbar(r["RTE"], r["beyond_control"],
                        yerr=[[r["beyond_control"] - r["beyond_lo"]],
                              [r["beyond_hi"] - r["beyond_control"]]],
                        fmt="o", capsize=3, label=r["variant"])
        q = rs[0]["quantity_position"] if rs else None
        ax.axhline(1.0, color="g", ls="--", lw=0.8, label="gold side (1)")
        ax.axhline(0.0, color="grey", lw=0.5)
        if q is not None:
            ax.axhline(q, color="orange", ls=":", lw=0.8, label="quantity side")
        ax.axvline(0.3, color="r", ls=":", lw=0.8, label="RTE 0.3")
        ax.set_xlabel("RTE (time per run / gold's)")
        ax.set_ylabel("distance toward gold beyond random control")
        ax.set_title(f"{model}, {forget} (trace: {rows[0]['trace'] if rs else '?'})", fontsize=9)
        if j == 0:
            ax.legend(fontsize=6)
        ax = axes[1][j]
        allr = [r for r in rows if (r["model"], r["forget"]) == (model, forget)]
        x = np.arange(len(allr))
        ax.bar(x, [-np.log10(r["p_vs_gold"]) for r in allr])
        ax.axhline(-np.log10(ALPHA), color="r", ls="--", lw=0.8, label=f"p = {ALPHA}")
        ax.set_xticks(x, [r["variant"][:28] for r in allr], fontsize=6, rotation=75)
        ax.set_ylabel("−log10 p (set vs gold set)")
        ax.legend(fontsize=7)
    fig.suptitle(f"Un-pruning search: {subtitle}", fontsize=10)
    return common.save_figure(fig, out, name)


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["mlp:random 10%", "mlp:class 0",
                                                     "small_cnn:class 0"],
                   help="model:forget set, forget set one of " + ", ".join(FORGET_SETS))
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--train-size", nargs="+", default=["mlp=20000", "small_cnn=6000"])
    p.add_argument("--epochs", nargs="+", default=["mlp=5", "small_cnn=3"])
    p.add_argument("--test-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--recovery", type=int, default=1, help="recovery epochs of the variants")
    p.add_argument("--replay-epochs", type=int, nargs="+", default=[1, 2, 3, 99],
                   help="replay lengths R (capped at the dense epochs E: R = E is the positive "
                        "control, the gold standard's dense run)")
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--name", default="unprune_search")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--tiny", action="store_true", help="a seconds-long run for the tests")
    args = p.parse_args(argv)
    if args.tiny:
        args.settings, args.seeds, args.test_size = ["mlp:class 0"], 3, 300
        args.train_size, args.epochs, args.replay_epochs = ["mlp=600"], ["mlp=2"], [1, 2]
    settings = []
    for s in args.settings:
        model, _, forget = s.partition(":")
        if forget not in FORGET_SETS:
            p.error(f"--settings {s!r}: the forget set must be one of {list(FORGET_SETS)}")
        settings.append((model, forget))
    args.train_size = {k: int(v) for k, v in (x.split("=") for x in args.train_size)}
    args.epochs = {k: int(v) for k, v in (x.split("=") for x in args.epochs)}
    for model, _ in settings:
        if model not in args.train_size or model not in args.epochs:
            p.error(f"--train-size and --epochs need a value for {model} (model=value)")
    if args.seeds < 2:
        p.error("--seeds must be at least 2: the test compares sets of masks")
    common.pyplot()  # fail early without matplotlib
    data = load_dataset("fashion_mnist", args.data_dir)

    t_all = time.perf_counter()
    rows = []
    for model, forget in settings:
        for row in run_setting(model, forget, args, data):
            rows.append(row)
            common.log_row(row)
    out, S = Path(args.out), args.seeds
    prov = common.provenance(
        {"settings": args.settings, "pruner": f"omp {args.density:.0%} (global, weight)",
         "train_size": args.train_size, "epochs": args.epochs, "lr": args.lr, "seeds_S": S,
         "method": f"{METHOD} {dataclasses.asdict(METHOD_CFG)}",
         "dense_methods": {**{k: (dataclasses.asdict(v) if v else "registry defaults")
                              for k, v in DENSE_CFGS.items()},
                           "GA": "one full-batch step, lr = train.lr·E·|D_f|/B (ga_step)"},
         "recovery_epochs": args.recovery,
         "variants": {n: dataclasses.asdict(v) for m in set(args.epochs.values())
                      for n, v in variants(args.recovery, args.replay_epochs, m).items()},
         "alpha": ALPHA, "wall_seconds": round(time.perf_counter() - t_all, 1)},
        {"split": 0, "model (θ_0)": 0, "data order / prune seeds": list(range(S)),
         "controls": "topology.matched_controls seeded by (0, crc32(name))"})
    md = common.write_table(
        rows,
        [("model", "model", ""), ("forget", "forget set", ""), ("variant", "variant", ""),
         ("changed", "units changed", ".3f"),
         ("travelled_shown", "→ gold (0 orig, 1 gold)", "+.2f"),
         ("beyond_shown", "beyond random control", "+.2f"),
         ("beyond_lo_shown", "lo", "+.2f"), ("beyond_hi_shown", "hi", "+.2f"),
         ("E_vs_gold", "E vs gold", ".2e"), ("p_vs_gold", "p vs gold", ".3f"),
         ("IoU_gold_same_seed", "IoU(·_s, gold_s)", ".3f"),
         ("UA", "UA", ".3f"), ("RA", "RA", ".3f"), ("TA", "TA", ".3f"),
         ("gold_TA", "gold TA", ".3f"), ("RTE", "RTE", ".2f"),
         ("diverged_runs", "diverged", ""), ("goal", "goal met", "")],
        out, args.name,
        title="Un-pruning search: which variant's masks cannot be told from gold masks?",
        prov=prov,
        notes=f"S = {S} seed pairs; p-values exact over the {2 ** (S - 1)} within-pair label "
              f"swaps (smallest possible {1 / 2 ** (S - 1):.3f}). '→ gold': mean distance "
              "travelled from the original side (0) to the gold side (1) on the energy "
              "statistic's scale; 'beyond random control': minus that of the same number of "
              "random mask changes, with its 95% interval (lo, hi), shown only where the "
              "original side differs from gold (p ≤ 0.05). 'p vs gold': the variant's S masks "
              "against the gold side's S masks. UA/RA/TA: means over the S seeds. RTE: time per "
              "run without compilation over the gold standard's (retrain + re-prune). 'goal "
              "met': a trace exists, p vs gold > 0.05, RTE ≤ 0.3, |TA − gold TA| ≤ 0.01. Every "
              f"variant is composed with {METHOD} ({METHOD_CFG.epochs} epoch, lr "
              f"{METHOD_CFG.lr}); all but the paper's end with {args.recovery} recovery "
              "epoch(s) on D_r under the final mask at the training learning rate. 'diverged': "
              "runs whose dense method or unlearner diverged (they keep their last good state: "
              "a dense method diverging in its first epoch leaves θ_dense as it was).")
    draw(rows, out, args.name, f"OMP {args.density:.0%} on FashionMNIST, S = {S}, composed with "
                               f"{METHOD}")
    print(md.read_text())
    return md


if __name__ == "__main__":
    main()
