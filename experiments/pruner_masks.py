"""Does deleted data change the pruned topology? Every pruner, real FashionMNIST, the small CNN.

For each pruner and sparsity, three pruning runs from the same θ_0:
  full    on the training set D (data-order seed 0),
  retain  on D_r = D minus a random 10% (same order with D_f removed: the gold standard),
  seed1   on D with another data seed: data order and SNIP's batch (the noise floor).
The table gives the test accuracy of ``full`` and IoU(full, retain) beside IoU(full, seed1).

    python experiments/pruner_masks.py [--train-size 20000] [--epochs 3] [--out experiments/results]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import platform
import time
from pathlib import Path

import jax

from unprune_jax import masks, optim, prune
from unprune_jax.data import load_dataset, make_split
from unprune_jax.models import get_model, init_model, make_apply_fn
from unprune_jax.train import TrainConfig, TrainState, accuracy

PRUNERS = ("omp", "imp", "synflow", "snip", "random", "sfp", "sfp-late")
# sfp-late: SFP without the pruning before the first epoch (zeroed ReLU filters never regrow)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.95])
    p.add_argument("--pruners", nargs="+", default=list(PRUNERS))
    p.add_argument("--imp-rounds", type=int, default=3)
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)

    data = load_dataset("fashion_mnist", args.data_dir)
    split = make_split(data, seed=0, train_size=args.train_size, forget_fraction=0.1)
    model = get_model("small_cnn")
    apply_fn = make_apply_fn(model)
    params0, ms0 = init_model(model, jax.random.PRNGKey(0), data.x[:1])
    tx = optim.sgd()
    init = TrainState.create(params0, ms0, tx)
    base_flags = masks.prunable_leaves(params0)
    train_cfg = TrainConfig(epochs=args.epochs, lr=0.05, seed=0)

    rows = []
    for name in args.pruners:
        for sparsity in args.sparsities:
            cfg = prune.PruneConfig(method=name.split("-")[0], density=round(1 - sparsity, 6),
                                    rounds=args.imp_rounds, sfp_prune_at_init=name != "sfp-late")
            flags = prune.prunable_for(cfg, base_flags, params0)
            t0 = time.perf_counter()

            def run(indices, seed, order_pool=None):
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
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in row.items()), flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "pruner_masks.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [
        "| pruner | sparsity | pruned units | TA % | IoU(D, D_r) | IoU(seed 0, seed 1) | time s |",
        "|---|---|---|---|---|---|---|",
    ] + [
        f"| {r['pruner']} | {r['sparsity']:.0%} | {r['pruned']} | {100 * r['TA']:.2f} | "
        f"{r['IoU_full_retain']:.3f} | {r['IoU_seed_floor']:.3f} | {r['seconds']:.0f} |"
        for r in rows
    ]
    header = (
        f"Real FashionMNIST, small CNN, {args.train_size} training images (10% deleted), "
        f"{args.epochs} epochs per training, IMP {args.imp_rounds} rounds; "
        f"{platform.machine()} {jax.default_backend()}, jax {jax.__version__}.\n\n"
    )
    (out / "pruner_masks.md").write_text(header + "\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
