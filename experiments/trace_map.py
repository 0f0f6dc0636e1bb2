"""Trace map: where does deleting D_f leave a D_f-specific trace in the pruned topology?

For each model, OMP density and forget set, three sides of S pruning runs each (the pipeline's
``sides/original``, ``sides/gold`` and ``sides/quantity``, seeds 0..S−1, pair s sharing θ_0 and
the data order): on D, on D_r = D minus D_f, and on D minus *another* subset of D_f's size (same
class make-up for a forgotten class: a whole other class). Per setting the table gives

* the two-sample test original vs gold (``metrics.topology``: energy statistic with the Hamming
  distance, exact permutation p-value over the 2^(S−1) splits of the side labels within pairs,
  and the null's 95% interval, which is the seed noise of the statistic);
* the data-quantity control: E(original, gold) − E(original, quantity side), p-value from swapping
  gold and quantity masks within seeds; a D_f-*specific* trace needs this difference > 0, not only
  original ≠ gold;
* where the quantity side sits between original (0) and gold (1), the LOPO LLR AUC with its null
  interval, and the IoU view (same-seed IoU(original, gold) beside IoU between gold seeds).

The original side depends only on the model, the density and the training set, so it is computed
once per model and density and shared by the forget sets (``pipeline.stage_sides`` batches the
contexts and computes identical runs once). Nothing here re-implements a statistic: the sides come
from ``pipeline.stage_sides``, the measures from ``pipeline.topology_measures``.

    python experiments/trace_map.py --models mlp small_cnn --densities 0.1 0.3 \
        --train-size 20000 6000 --epochs 5 3 --seeds 8    # 16 min on the shared 2-core CPU
    python experiments/trace_map.py --tiny                                    # seconds, tests
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
from unprune_jax.prune import PruneConfig
from unprune_jax.train import TrainConfig, accuracy

#: forget sets: (label, forget_fraction, forget_classes)
FORGET_SETS = {"random 1%": (0.01, None), "random 10%": (0.1, None),
               "random 30%": (0.3, None), "class 0": (None, (0,))}
ALPHA = 0.05


def setting_configs(model: str, density: float, forgets, args) -> list[Config]:
    """One pipeline config per forget set; all share the model, θ_0, the training set, the
    training and pruning settings, so their original sides are the same runs."""
    out = []
    for label in forgets:
        fraction, classes = FORGET_SETS[label]
        out.append(Config(
            data=DataConfig(name="fashion_mnist", data_dir=args.data_dir, seed=0,
                            train_size=args.train_size[model], val_size=0,
                            test_size=args.test_size,
                            forget_fraction=fraction, forget_classes=classes),
            model=ModelConfig(name=model, seed=0),
            train=TrainConfig(epochs=args.epochs[model], lr=args.lr, seed=0),
            prune=PruneConfig(method="omp", density=density, seed=0),
            evaluate=EvaluateConfig(seeds=args.seeds, quantity_side=True)))
    return out


def run_sides(model: str, density: float, args, data) -> tuple[list, list]:
    """The contexts of one model and density (one per forget set) and their sides, batched by
    ``pipeline.stage_sides``: the original side's S runs are computed once for all."""
    ctxs = [pipeline.build_context(cfg, None, progress=False, say=lambda _: None, dataset=data)
            for cfg in setting_configs(model, density, args.forgets, args)]
    ctxs[0] = dataclasses.replace(ctxs[0], say=print)
    return ctxs, pipeline.stage_sides(ctxs)


def setting_row(ctx: pipeline.Context, sides: dict, label: str, density: float) -> dict:
    """The trace measures of one setting (one context's sides), flattened into a table row."""
    topo = pipeline.topology_measures(ctx, sides, {})
    rep = topo["report"]
    test, auc, q = rep["sides"]["test"], rep["sides"]["auc"], rep["sides"]["quantity"]
    unstack = {side: runs.unstack(tree["sparse"].mask) for side, (tree, _) in sides.items()}
    pair_iou = [masks_lib.jaccard(o, g, ctx.prunable)
                for o, g in zip(unstack["original"], unstack["gold"])]
    original0 = runs.unstack(sides["original"][0]["sparse"])[0]
    trace = test["p_value"] <= ALPHA
    specific = trace and q["difference"] > 0 and q["p_value"] <= ALPHA
    return {
        "model": ctx.cfg.model.name, "density": density, "forget": label,
        "forget_size": int(ctx.split.forget.size), "train_size": int(ctx.split.train.size),
        "seeds": ctx.seeds,
        "TA_original_seed0": accuracy(original0, ctx.apply_fn, ctx.dataset, ctx.split.test),
        "E_original_gold": test["value"], "p_original_gold": test["p_value"],
        "null_lo": test["null_interval"][0], "null_hi": test["null_interval"][1],
        "splits": test["splits"],
        "E_original_quantity": q["original_vs_quantity"], "quantity_difference": q["difference"],
        "p_quantity": q["p_value"], "quantity_null_lo": q["null_interval"][0],
        "quantity_null_hi": q["null_interval"][1],
        "quantity_position": q["quantity_position"]["mean"],
        # the 0-to-1 scale exists only where the sides differ: the table shows it there only
        "quantity_position_shown": q["quantity_position"]["mean"] if trace else None,
        "quantity_position_lo": q["quantity_position"]["ci"][0],
        "quantity_position_hi": q["quantity_position"]["ci"][1],
        "auc": auc["auc"], "auc_p": auc["p_value"], "auc_null_lo": auc["null_interval"][0],
        "auc_null_hi": auc["null_interval"][1],
        "IoU_original_gold_same_seed": float(np.mean(pair_iou)),
        "IoU_gold_seeds": topo["noise_floor"]["jaccard"]["mean"],
        "trace": "yes" if trace else "no",
        "D_f_specific": "yes" if specific else "no",
    }



def draw(rows: list[dict], seeds: int, subtitle: str, out: Path, name: str) -> Path:
    """The figure: each setting's E(original, gold) against its permutation null and
    E(original, quantity side) (left), and the two tests' p-values (right)."""
    plt = common.pyplot()
    S = seeds
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    labels = [f"{r['model'].replace('small_', '')} {float(r['density']):.0%} {r['forget']}"
              for r in rows]
    x = np.arange(len(rows))
    ax = axes[0]
    ax.bar(x - 0.2, [r["E_original_gold"] for r in rows], 0.4, label="E(original, gold)")
    ax.bar(x + 0.2, [r["E_original_quantity"] for r in rows], 0.4,
           label="E(original, quantity side)")
    ax.errorbar(x - 0.2, [0.5 * (r["null_lo"] + r["null_hi"]) for r in rows],
                yerr=[0.5 * (r["null_hi"] - r["null_lo"]) for r in rows], fmt="none",
                ecolor="k", capsize=3, label="95% permutation null (seed noise)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(x, labels, fontsize=7, rotation=90)
    ax.set_ylabel("energy statistic (Hamming)")
    ax.legend(fontsize=7)
    ax.set_title("distance between sides vs seed noise", fontsize=9)
    ax = axes[1]
    ax.bar(x - 0.2, [-np.log10(r["p_original_gold"]) for r in rows], 0.4,
           label=f"original vs gold (smallest p 1/{2 ** (S - 1)})")
    ax.bar(x + 0.2, [-np.log10(r["p_quantity"]) for r in rows], 0.4,
           label=f"gold beyond quantity side (smallest p 1/{2 ** S})")
    ax.axhline(-np.log10(ALPHA), color="r", ls="--", lw=0.8, label=f"p = {ALPHA}")
    ax.set_xticks(x, labels, fontsize=7, rotation=90)
    ax.set_ylabel("−log10 p (exact permutation)")
    ax.legend(fontsize=7)
    ax.set_title("is there a trace, and is it D_f-specific?", fontsize=9)
    fig.suptitle(f"Trace map: {subtitle}", fontsize=10)
    return common.save_figure(fig, out, name)


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mlp", "small_cnn"])
    p.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.3])
    p.add_argument("--forgets", nargs="+", default=list(FORGET_SETS), choices=list(FORGET_SETS))
    p.add_argument("--seeds", type=int, default=8, help="S pruning runs per side")
    p.add_argument("--train-size", type=int, nargs="+", default=[20000],
                   help="training images: one value, or one per --models")
    p.add_argument("--test-size", type=int, default=None)
    p.add_argument("--epochs", type=int, nargs="+", default=[5],
                   help="dense epochs = OMP's retrain epochs: one value, or one per --models")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--name", default="trace_map")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--tiny", action="store_true", help="a seconds-long run for the tests")
    args = p.parse_args(argv)
    if args.tiny:
        args.models, args.densities, args.seeds = ["mlp"], [0.1], 3
        args.train_size, args.test_size, args.epochs = [400], 500, [1]
    if args.seeds < 2:
        p.error("--seeds must be at least 2: the test compares sets of masks")
    for key in ("train_size", "epochs"):
        values = getattr(args, key)
        if len(values) not in (1, len(args.models)):
            p.error(f"--{key.replace('_', '-')}: one value or one per model ({args.models})")
        setattr(args, key, dict(zip(args.models, values * len(args.models))))
    common.pyplot()  # fail early without matplotlib
    data = load_dataset("fashion_mnist", args.data_dir)

    rows, shared = [], {}
    t_all = time.perf_counter()
    for model in args.models:
        for density in args.densities:
            t0 = time.perf_counter()
            ctxs, sides = run_sides(model, density, args, data)
            # the original side: one set of S runs shared by every forget set
            shared[f"{model} {density}"] = sides[0]["original"][1]["shared_runs"]
            seconds = time.perf_counter() - t0
            for ctx, s, label in zip(ctxs, sides, args.forgets):
                row = setting_row(ctx, s, label, density)
                row["seconds_model_density"] = seconds
                rows.append(row)
                common.log_row(row)

    out = Path(args.out)
    S = args.seeds
    prov = common.provenance(
        {"models": args.models, "densities": args.densities, "forgets": args.forgets,
         "pruner": "omp (global, weight)", "train_size": args.train_size,
         "test_size": args.test_size, "epochs": args.epochs, "lr": args.lr, "seeds_S": S,
         "alpha": ALPHA, "original_runs_shared": shared,
         "wall_seconds": round(time.perf_counter() - t_all, 1)},
        {"split": 0, "model (θ_0)": 0, "data order / prune seeds": list(range(S)),
         "quantity side subsets": "np.random.default_rng([0, 7919, s])"})
    md = common.write_table(
        rows,
        [("model", "model", ""), ("density", "density", ".0%"), ("forget", "forget set", ""),
         ("forget_size", "|D_f|", ""), ("TA_original_seed0", "TA", ".3f"),
         ("E_original_gold", "E(orig, gold)", ".2e"), ("p_original_gold", "p", ".3f"),
         ("null_hi", "null 97.5%", ".1e"), ("E_original_quantity", "E(orig, quantity)", ".2e"),
         ("quantity_difference", "E(o,g) − E(o,q)", "+.1e"), ("p_quantity", "p", ".3f"),
         ("quantity_position_shown", "quantity side at (0 orig → 1 gold)", "+.2f"),
         ("auc", "LLR AUC", ".2f"), ("auc_null_hi", "AUC null 97.5%", ".2f"),
         ("IoU_original_gold_same_seed", "IoU(orig_s, gold_s)", ".3f"),
         ("IoU_gold_seeds", "IoU(gold_s, gold_s')", ".3f"),
         ("trace", "orig ≠ gold", ""), ("D_f_specific", "beyond quantity", "")],
        out, args.name,
        title="Trace map: does deleting D_f leave a D_f-specific trace in the OMP topology?",
        prov=prov,
        notes=f"S = {S} seed pairs per side; every p-value is exact over the {2 ** (S - 1)} "
              f"(original vs gold) or {2 ** S} (gold vs quantity) within-pair label swaps, so "
              f"the smallest possible p is {1 / 2 ** (S - 1):.3f}. E: energy statistic with the "
              "Hamming distance (twice the mean squared difference of the sides' keep "
              "probabilities, unbiased, 0 when alike); 'null 97.5%' is the upper end of its "
              "permutation null's 95% interval, the seed noise of E. 'orig ≠ gold': p ≤ "
              f"{ALPHA}. 'beyond quantity': also E(orig, gold) − E(orig, quantity side) > 0 "
              f"with p ≤ {ALPHA} (gold and quantity masks swapped within seeds): removing D_f "
              "moved the masks more than removing as much other data. 'quantity side at': "
              "distance travelled of the quantity side between original (0) and gold (1), "
              "shown only where orig ≠ gold (elsewhere a ratio of noise; the CSV keeps it). "
              "LLR AUC: leave-one-pair-out Bernoulli LLR classifier, symmetric in the sides, "
              "with the upper end of its permutation null interval. IoU(gold_s, gold_s'): "
              "mean IoU between gold masks of different seeds (finding 1's noise floor); TA: "
              "test accuracy of the original side's seed-0 model. The original side is shared "
              "by a model/density's forget sets: "
              f"{shared} runs reused.")

    sizes = ", ".join(f"{m} {args.train_size[m]} images × {args.epochs[m]} epochs"
                      for m in args.models)
    draw(rows, S, f"OMP on FashionMNIST ({sizes}; S = {S})", out, args.name)
    print(md.read_text())
    return md


if __name__ == "__main__":
    main()
