"""Ablation of un-pruning's options on real FashionMNIST: one figure per option.

One original sparse model (small CNN, OMP, 10% density) and its gold standard are trained once;
then un-pruning wrapped around FT runs once per setting, varying one option at a time from the
defaults (p_θ 0.1, K 1, re-init θ_0, regrow by dense magnitude, re-prune by magnitude). For each
setting: IoU to the gold mask (against the original's, the dashed line), the corrected fraction of
the original's differences from gold, and UA / TA.

    python experiments/unprune_ablation.py [--train-size 20000] [--epochs 3] \\
        [--out experiments/results]

Needs matplotlib (``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

import common
from unprune_jax import masks, metrics, prune, unlearn
from unprune_jax.train import TrainConfig
from unprune_jax.unprune import UnpruneConfig, gold_standard, unprune

OPTIONS = {
    "fraction": [0.02, 0.05, 0.1, 0.2, 0.5],
    "rounds": [1, 2, 3],
    "reinit": ["theta0", "random"],
    "regrow_score": ["dense", "theta0", "gradient", "random"],
    "reprune_score": ["magnitude", "gradient"],
}


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--method", default="FT")
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    plt = common.pyplot()
    s = common.fashion_setup(args.train_size, data_dir=args.data_dir)
    data, split, apply_fn, tx, init = s.dataset, s.split, s.apply_fn, s.tx, s.init
    flags = s.prunable
    random_params = common.random_params(s)
    train_cfg = TrainConfig(epochs=args.epochs, lr=0.05)
    prune_cfg = prune.PruneConfig(density=0.1)
    method_cfg = dataclasses.replace(unlearn.get(args.method).defaults, epochs=1)

    t0 = time.perf_counter()
    original = prune.run(init, apply_fn, tx, data, split.train, train_cfg, prune_cfg, flags,
                         progress=False)
    task = unlearn.UnlearnTask(apply_fn, tx, data, split.retain, split.forget, init,
                               progress=False)
    gold = gold_standard(task, train_cfg, prune_cfg, flags, order_pool=split.train).sparse
    j_orig = masks.jaccard(original.sparse.mask, gold.mask, flags)
    print(f"original and gold trained in {time.perf_counter() - t0:.0f} s; "
          f"IoU(original, gold) = {j_orig:.4f}", flush=True)

    rows = []
    for option, values in OPTIONS.items():
        for value in values:
            cfg = dataclasses.replace(UnpruneConfig(), **{option: value})
            t = time.perf_counter()
            state, _ = unprune(original.sparse, task, args.method, method_cfg, cfg,
                               dense_params=original.dense.params, prune_cfg=prune_cfg,
                               prunable=flags, random_params=random_params)
            mm = metrics.mask_metrics(state.mask, gold.mask, flags,
                                      original=original.sparse.mask, per_layer=False)
            acc = metrics.unlearning_accuracies(state, apply_fn, data, split)
            row = {"option": option, "value": str(value), "IoU_gold": mm["jaccard"],
                   "delta_J": mm["delta_jaccard"], "corrected": mm["corrected_fraction"],
                   "introduced": mm["introduced_fraction"], **acc,
                   "seconds": time.perf_counter() - t}
            rows.append(row)
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in row.items()), flush=True)

    out = Path(args.out)
    prov = common.provenance(
        {"train_size": args.train_size, "epochs": args.epochs, "method": args.method,
         "pruner": "omp", "density": 0.1, "defaults": "p_θ 0.1, 1 round, θ_0, dense, magnitude"},
        {"split": 0, "model (θ_0)": 0, "random re-init params": 1, "data order": 0})
    md = common.write_table(
        rows,
        [("option", "option", ""), ("value", "value", ""), ("IoU_gold", "IoU gold", ".4f"),
         ("delta_J", "ΔJ", "+.4f"), ("corrected", "corrected", ".3f"),
         ("introduced", "introduced", ".3f"), ("UA", "UA", ".4f"), ("TA", "TA", ".4f")],
        out, "unprune_ablation", prov=prov,
        title=f"Un-pruning ablation around {args.method} (small CNN, FashionMNIST, OMP 10%)",
        notes=f"IoU(original, gold) = {j_orig:.4f}.")
    for option in OPTIONS:
        sel = [r for r in rows if r["option"] == option]
        x = np.arange(len(sel))
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
        ax1.bar(x - 0.2, [r["IoU_gold"] for r in sel], 0.4, label="IoU(un-pruned, gold)")
        ax1.bar(x + 0.2, [r["corrected"] for r in sel], 0.4, label="corrected fraction")
        ax1.axhline(j_orig, color="k", ls="--", lw=1, label="IoU(original, gold)")
        ax1.set_xticks(x, [r["value"] for r in sel])
        ax1.set_xlabel(option)
        ax1.set_ylabel("fraction")
        ax1.set_ylim(0, 1.2)
        ax1.legend(fontsize=7, loc="upper center", ncol=3)
        ax1.set_title("mask vs gold")
        ax2.plot(x, [100 * r["UA"] for r in sel], "o-", label="UA (forget error)")
        ax2.plot(x, [100 * (1 - r["TA"]) for r in sel], "s-", label="test error (1 − TA)")
        ax2.set_xticks(x, [r["value"] for r in sel])
        ax2.set_xlabel(option)
        ax2.set_ylabel("%")
        ax2.legend(fontsize=7)
        ax2.set_title(f"accuracy ({args.method} + un-prune)")
        fig.suptitle(f"un-pruning ablation: {option} (small CNN, FashionMNIST, 10% density)",
                     fontsize=9)
        common.save_figure(fig, out, f"unprune_ablation_{option}")
    print(md.read_text())
    return md


if __name__ == "__main__":
    main()
