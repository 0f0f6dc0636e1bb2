"""Ablation of un-pruning's options on real FashionMNIST: one figure per option.

One original sparse model (small CNN, OMP, 10% density) and its gold standard are trained once;
then un-pruning wrapped around FT runs once per setting, varying one option at a time from the
defaults (p_θ 0.1, K 1, re-init θ_0, regrow by dense magnitude, re-prune by magnitude). For each
setting: IoU to the gold mask (against the original's, the dashed line), the corrected fraction of
the original's differences from gold, and UA / TA.

    python experiments/unprune_ablation.py [--train-size 20000] [--epochs 3] [--out experiments/results]

Needs matplotlib (``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import platform
import time
from pathlib import Path

import jax
import numpy as np

from unprune_jax import masks, metrics, optim, prune, unlearn
from unprune_jax.data import load_dataset, make_split
from unprune_jax.models import get_model, init_model, make_apply_fn
from unprune_jax.train import TrainConfig, TrainState
from unprune_jax.unprune import UnpruneConfig, gold_standard, unprune

OPTIONS = {
    "fraction": [0.02, 0.05, 0.1, 0.2, 0.5],
    "rounds": [1, 2, 3],
    "reinit": ["theta0", "random"],
    "regrow_score": ["dense", "theta0", "gradient", "random"],
    "reprune_score": ["magnitude", "gradient"],
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--method", default="FT")
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("this experiment draws figures: pip install matplotlib") from None

    data = load_dataset("fashion_mnist", args.data_dir)
    split = make_split(data, seed=0, train_size=args.train_size, forget_fraction=0.1)
    model = get_model("small_cnn")
    apply_fn = make_apply_fn(model)
    params0, ms0 = init_model(model, jax.random.PRNGKey(0), data.x[:1])
    random_params, _ = init_model(model, jax.random.PRNGKey(1), data.x[:1])
    tx = optim.sgd()
    init = TrainState.create(params0, ms0, tx)
    flags = masks.prunable_leaves(params0)
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
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "unprune_ablation.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
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
        fig.tight_layout()
        fig.savefig(out / f"unprune_ablation_{option}.png", dpi=110)
        plt.close(fig)
    lines = ["| option | value | IoU gold | ΔJ | corrected | introduced | UA % | TA % |",
             "|---|---|---|---|---|---|---|---|"] + [
        f"| {r['option']} | {r['value']} | {r['IoU_gold']:.4f} | {r['delta_J']:+.4f} | "
        f"{r['corrected']:.3f} | {r['introduced']:.3f} | {100 * r['UA']:.2f} | "
        f"{100 * r['TA']:.2f} |" for r in rows]
    header = (f"Un-pruning ablation around {args.method}: real FashionMNIST, small CNN, "
              f"{args.train_size} training images (10% deleted), {args.epochs} epochs, OMP 10% "
              f"density; IoU(original, gold) = {j_orig:.4f}; {platform.machine()} "
              f"{jax.default_backend()}.\n\n")
    (out / "unprune_ablation.md").write_text(header + "\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
