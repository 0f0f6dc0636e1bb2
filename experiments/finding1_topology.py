"""Finding 1: does deleted data change the pruned topology? Every pruner, real FashionMNIST.

For each pruner and sparsity, three pruning runs from the same θ_0:
  full    on the training set D (data-order seed 0),
  retain  on D_r = D minus a random 10% (same order with D_f removed: the gold standard),
  seed1   on D with another data seed: data order and SNIP's batch (the noise floor).
The table gives the test accuracy of ``full`` and IoU(full, retain) beside IoU(full, seed1):
deletion changes the topology beyond training noise only where IoU(D, D_r) is clearly below
IoU(seed 0, seed 1), i.e. where the D_r mask is *less* like the D mask than a reshuffled run's.

    python experiments/finding1_topology.py            # about 8 minutes on a 2-core CPU
    python experiments/finding1_topology.py --tiny     # seconds, for the tests
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

import common
from unprune_jax import masks, prune
from unprune_jax.train import TrainConfig, accuracy

PRUNERS = ("omp", "imp", "synflow", "snip", "random", "sfp", "sfp-late")
# sfp-late: SFP without the pruning before the first epoch (zeroed ReLU filters never regrow)


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.95])
    p.add_argument("--pruners", nargs="+", default=list(PRUNERS))
    p.add_argument("--imp-rounds", type=int, default=3)
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--tiny", action="store_true", help="a seconds-long run for the tests")
    args = p.parse_args(argv)
    if args.tiny:
        args.train_size, args.epochs, args.sparsities = 400, 1, [0.9]
        args.pruners, args.imp_rounds = ["omp", "sfp"], 2
    plt = common.pyplot()

    s = common.fashion_setup(args.train_size, data_dir=args.data_dir)
    data, split, apply_fn, tx, init = s.dataset, s.split, s.apply_fn, s.tx, s.init
    base_flags = s.prunable
    params0 = init.params
    train_cfg = TrainConfig(epochs=args.epochs, lr=0.05, seed=0)

    rows = []
    for name in args.pruners:
        for sparsity in args.sparsities:
            cfg = prune.PruneConfig(method=name.split("-")[0], density=round(1 - sparsity, 6),
                                    rounds=args.imp_rounds, sfp_prune_at_init=name != "sfp-late",
                                    synflow_iterations=20 if args.tiny else 100)
            flags = prune.prunable_for(cfg, base_flags, params0)
            t0 = time.perf_counter()

            def run(indices, seed, order_pool=None, cfg=cfg):
                # the seed sets all data randomness: the order and SNIP's batch
                return prune.run(init, apply_fn, tx, data, indices,
                                 dataclasses.replace(train_cfg, seed=seed),
                                 dataclasses.replace(cfg, seed=seed), base_flags,
                                 order_pool=order_pool, progress=args.progress)

            full = run(split.train, 0)
            retain = run(split.retain, 0, order_pool=split.train)
            seed1 = run(split.train, 1)
            row = {
                "pruner": name,
                "sparsity": sparsity,
                "pruned": "conv filters" if name.startswith("sfp") else "conv+dense weights",
                "TA": accuracy(full.sparse, apply_fn, data, split.test),
                "IoU_full_retain": masks.jaccard(full.sparse.mask, retain.sparse.mask, flags),
                "IoU_seed_floor": masks.jaccard(full.sparse.mask, seed1.sparse.mask, flags),
                "density": masks.density(full.sparse.mask, flags),
                "seconds": time.perf_counter() - t0,
            }
            rows.append(row)
            common.log_row(row)

    out = Path(args.out)
    name = "finding1_topology"
    prov = common.provenance(
        {"train_size": args.train_size, "forget_fraction": 0.1, "epochs": args.epochs,
         "imp_rounds": args.imp_rounds, "model": "small_cnn", "lr": 0.05},
        {"split": 0, "model (θ_0)": 0, "data order": [0, 1]})
    md = common.write_table(
        rows,
        [("pruner", "pruner", ""), ("sparsity", "sparsity", ".0%"), ("pruned", "pruned units", ""),
         ("TA", "TA", ".4f"), ("IoU_full_retain", "IoU(D, D_r)", ".3f"),
         ("IoU_seed_floor", "IoU(seed 0, seed 1)", ".3f"), ("seconds", "time s", ".0f")],
        out, name, title="Finding 1: does deleting 10% of the data change the pruned topology?",
        prov=prov,
        notes="IoU(D, D_r): the mask pruned on all data against the mask pruned on the retained "
              "data (same θ_0, same data order with D_f removed). IoU(seed 0, seed 1): two masks "
              "pruned on all data with different data orders, the noise floor. IoU 1 means the "
              "pruner ignores the data (SynFlow, random).")

    labels = [f"{r['pruner']}\n{r['sparsity']:.0%}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(rows)), 3.8))
    ax.bar(x - 0.2, [r["IoU_full_retain"] for r in rows], 0.4,
           label="IoU(mask on D, mask on D_r): deletion")
    ax.bar(x + 0.2, [r["IoU_seed_floor"] for r in rows], 0.4,
           label="IoU(mask on D, seed 0 vs seed 1): data-order noise")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_xlabel("pruner and sparsity")
    ax.set_ylabel("IoU of kept weights (1 = same mask)")
    ax.set_ylim(0, 1.15)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"Finding 1: mask change under deletion vs reshuffling (small CNN, "
                 f"FashionMNIST, {args.train_size} images, 10% deleted)", fontsize=9)
    common.save_figure(fig, out, name)
    print(md.read_text())
    return md


if __name__ == "__main__":
    main()
