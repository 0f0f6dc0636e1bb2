"""Finding 4: does re-initialising revived weights to θ_0 beat a random re-initialisation?

The paper reports that un-pruning works better when the weights it revives restart from their
original initial values θ_0 than from a fresh random draw. Here: one original sparse model (small
CNN, OMP to 10% density, real FashionMNIST) and, for each of several random forget sets, its gold
standard (retrain + re-prune on D_r). Around each unlearning method, un-pruning runs with
``reinit='theta0'`` and with ``reinit='random'`` (a fresh draw of the layers' initialisers, scaled
by 1 and by 0.1), everything else at the defaults (p_θ 0.1, one round, regrow by dense magnitude,
re-prune by magnitude). Per setting: IoU of the mask to the gold mask, ΔJ (against the original
mask's IoU), UA / RA / TA, mean ± std over the forget sets.

    python experiments/finding4_reinit.py                 # ~10 min on a 2-core CPU
    python experiments/finding4_reinit.py --tiny          # seconds, for the tests
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

import common
from unprune_jax import masks, metrics, prune, unlearn
from unprune_jax.data import make_split
from unprune_jax.train import TrainConfig
from unprune_jax.unprune import UnpruneConfig, gold_standard, unprune

SETTINGS = {"θ_0": ("theta0", 1.0), "random ×1": ("random", 1.0), "random ×0.1": ("random", 0.1)}


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--forget-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["FT", "RL"])
    p.add_argument("--method-epochs", type=int, default=1)
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--tiny", action="store_true", help="a seconds-long run for the tests")
    args = p.parse_args(argv)
    if args.tiny:
        args.train_size, args.epochs, args.forget_seeds = 400, 1, [0, 1]
        args.methods = args.methods[:1]
    plt = common.pyplot()

    s = common.fashion_setup(args.train_size, data_dir=args.data_dir)
    train_cfg = TrainConfig(epochs=args.epochs, lr=0.05)
    prune_cfg = prune.PruneConfig(density=args.density)
    t0 = time.perf_counter()
    original = prune.run(s.init, s.apply_fn, s.tx, s.dataset, s.split.train, train_cfg, prune_cfg,
                         s.prunable, progress=False)
    print(f"original trained and pruned in {time.perf_counter() - t0:.0f} s", flush=True)

    rows = []
    n_forget = round(0.1 * s.split.train.size)
    for fs in args.forget_seeds:
        forget = np.random.default_rng([fs, 4]).choice(s.split.train, n_forget, replace=False)
        split = make_split(s.dataset, seed=0, train_size=args.train_size, forget_indices=forget)
        task = unlearn.UnlearnTask(s.apply_fn, s.tx, s.dataset, split.retain, split.forget, s.init,
                                   progress=False)
        gold = gold_standard(task, train_cfg, prune_cfg, s.prunable, order_pool=split.train)
        j_orig = masks.jaccard(original.sparse.mask, gold.sparse.mask, s.prunable)
        for method in args.methods:
            method_cfg = dataclasses.replace(unlearn.get(method).defaults,
                                             epochs=args.method_epochs)
            for label, (reinit, scale) in SETTINGS.items():
                cfg = UnpruneConfig(reinit=reinit, random_scale=scale)
                t = time.perf_counter()
                state, _ = unprune(original.sparse, task, method, method_cfg, cfg,
                                   dense_params=original.dense.params, prune_cfg=prune_cfg,
                                   prunable=s.prunable, random_params=common.random_params(s))
                mm = metrics.mask_metrics(state.mask, gold.sparse.mask, s.prunable,
                                          original=original.sparse.mask, per_layer=False)
                row = {"forget_seed": fs, "method": method, "reinit": label,
                       "IoU_original_gold": j_orig, "IoU_gold": mm["jaccard"],
                       "delta_J": mm["delta_jaccard"], "corrected": mm["corrected_fraction"],
                       **metrics.unlearning_accuracies(state, s.apply_fn, s.dataset, split),
                       "seconds": time.perf_counter() - t}
                rows.append(row)
                common.log_row(row)

    # mean ± std over the forget sets, per (method, reinit)
    summary = []
    for method in args.methods:
        for label in SETTINGS:
            sel = [r for r in rows if r["method"] == method and r["reinit"] == label]
            agg = {"method": method, "reinit": label, "n": len(sel)}
            for k in ("IoU_gold", "delta_J", "corrected", "UA", "RA", "TA"):
                v = np.array([r[k] for r in sel])
                agg[k], agg[k + "_std"] = float(v.mean()), float(v.std(ddof=1) if v.size > 1 else 0)
            summary.append(agg)
    # paired: θ_0 minus random ×1 on the same forget set and method
    paired = {m: np.array([r0["IoU_gold"] - r1["IoU_gold"] for r0 in rows for r1 in rows
                           if r0["method"] == r1["method"] == m and r0["forget_seed"] ==
                           r1["forget_seed"] and r0["reinit"] == "θ_0" and
                           r1["reinit"] == "random ×1"]) for m in args.methods}

    out = Path(args.out)
    name = "finding4_reinit"
    prov = common.provenance(
        {"train_size": args.train_size, "epochs": args.epochs, "density": args.density,
         "methods": args.methods, "method_epochs": args.method_epochs, "pruner": "omp",
         "unprune": "p_θ 0.1, 1 round, regrow dense, re-prune magnitude"},
        {"split": 0, "model (θ_0)": 0, "random re-init params": 1,
         "forget sets": args.forget_seeds})
    notes = "Paired difference IoU(θ_0) − IoU(random ×1) to gold, per forget set:\n\n" + "\n".join(
        f"- {m}: " + ", ".join(f"{d:+.4f}" for d in v) + f" (mean {v.mean():+.4f})"
        for m, v in paired.items())
    md = common.write_table(
        summary,
        [("method", "method", ""), ("reinit", "re-init", ""), ("n", "forget sets", "d"),
         ("IoU_gold", "IoU gold", ".4f"), ("IoU_gold_std", "± std", ".4f"),
         ("delta_J", "ΔJ", "+.4f"), ("corrected", "corrected", ".3f"), ("UA", "UA", ".4f"),
         ("RA", "RA", ".4f"), ("TA", "TA", ".4f")],
        out, name, title="Finding 4: θ_0 vs random re-initialisation of revived weights",
        prov=prov, notes=notes)
    common.write_table(rows, [("forget_seed", "forget set", "d"), ("method", "method", ""),
                              ("reinit", "re-init", ""), ("IoU_gold", "IoU gold", ".4f"),
                              ("delta_J", "ΔJ", "+.4f")],
                       out, name + "_runs", title="Finding 4: every run", prov=prov)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    width = 0.8 / len(SETTINGS)
    x = np.arange(len(args.methods))
    for i, label in enumerate(SETTINGS):
        sel = [a for a in summary if a["reinit"] == label]
        for ax, key, scale in ((axes[0], "delta_J", 1), (axes[1], "UA", 100)):
            ax.bar(x + (i - (len(SETTINGS) - 1) / 2) * width, [scale * a[key] for a in sel],
                   width, yerr=[scale * a[key + "_std"] for a in sel], capsize=3,
                   label=f"re-init {label}")
    axes[0].axhline(0, color="k", lw=0.8)
    axes[0].set_ylabel("ΔJ = IoU(un-pruned, gold) − IoU(original, gold)")
    axes[0].set_title("mask: closer to gold is > 0")
    axes[1].set_ylabel("UA = forget-set error (%)")
    axes[1].set_title("forgetting")
    for ax in axes:
        ax.set_xticks(x, args.methods)
        ax.set_xlabel("unlearning method wrapped in un-pruning")
        ax.legend(fontsize=7)
    fig.suptitle(f"θ_0 vs random re-init: small CNN, FashionMNIST ({args.train_size} images), "
                 f"OMP {args.density:.0%} density, mean ± std over {len(args.forget_seeds)} "
                 "forget sets", fontsize=9)
    common.save_figure(fig, out, name)
    print(md.read_text())
    return md


if __name__ == "__main__":
    main()
