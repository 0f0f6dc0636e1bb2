"""Finding 2: does un-pruning bring the mask toward the gold standard, for any unlearner and pruner?

The paper's central claim. For each pruner, the whole pipeline (``unprune_jax.pipeline.run``:
split → prune → unlearn → un-prune → gold → seeds → evaluate) runs on real FashionMNIST with the
small CNN, with every unlearning method once under the original mask and once wrapped in
un-pruning. The table gives, per (pruner, method), ΔJ = IoU(un-pruned, gold) − IoU(original, gold)
(> 0: un-pruning moved the mask toward gold), the corrected fraction of the original mask's
differences from gold, UA/RA/TA beside the baseline's, and, per pruner, IoU(original, gold) against
the seed noise floor (the gold masks' IoU across data orders).

    python experiments/finding2_unprune_gold.py           # ~12 min on a 2-core CPU
    python experiments/finding2_unprune_gold.py --tiny    # seconds, for the tests

The pipeline's run directories (with every stage checkpointed, so a rerun resumes) go to
``--run-root``; each holds its own ``results.md`` and ``config.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import common
from unprune_jax import pipeline
from unprune_jax.config import load_config

PRUNERS = {  # name -> config overrides
    "omp": ["prune.method=omp"],
    "imp": ["prune.method=imp", "prune.rounds=2"],
    "snip": ["prune.method=snip"],
    # SNIP chose its mask by |θ ⊙ ∇L|, not magnitude: re-prune by the retained-data gradient score
    "snip-regrad": ["prune.method=snip", "unprune.reprune_score=gradient"],
    "synflow": ["prune.method=synflow", "prune.synflow_iterations=20"],
    # filters, per layer (the pruner's own selection); no prune before epoch 1, which would
    # kill the zeroed ReLU filters for good (experiments/README.md, finding 1)
    "sfp": ["prune.method=sfp", "prune.density=0.5", "prune.sfp_prune_at_init=false"],
}
METHODS = ["retrain", "FT", "GA", "RL", "SalUn"]


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, default=3, help="evaluate.seeds (noise floor)")
    p.add_argument("--pruners", nargs="+", default=list(PRUNERS), choices=list(PRUNERS))
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--run-root", default="runs/finding2")
    p.add_argument("--tiny", action="store_true", help="a seconds-long run for the tests")
    p.add_argument("-o", "--override", action="append", default=[],
                   help="extra config override for every run, e.g. -o data.data_dir=/path")
    args = p.parse_args(argv)
    if args.tiny:
        args.train_size, args.epochs, args.seeds = 400, 1, 2
        args.pruners, args.methods = args.pruners[:2], args.methods[:2]
    plt = common.pyplot()

    base = [f"data.train_size={args.train_size}", "data.val_size=0", f"train.epochs={args.epochs}",
            f"evaluate.seeds={args.seeds}", f"unlearn.methods={args.methods!r}".replace("'", '"'),
            f"unlearn.settings.retrain.epochs={args.epochs}"]
    rows, per_pruner = [], []
    for pruner in args.pruners:
        cfg = load_config("experiments/demo.toml", base + PRUNERS[pruner] + args.override)
        assert cfg.prune.method == pruner.split("-")[0]
        t0 = time.perf_counter()
        res = pipeline.run(cfg, Path(args.run_root) / pruner, progress=False,
                           say=lambda m: None)
        floor = res["noise_floor"]["jaccard"] if res.get("noise_floor") else {}
        per_pruner.append({"pruner": pruner, "IoU_original_gold": res["IoU_original_gold"],
                           "floor": floor.get("mean"), "floor_std": floor.get("std"),
                           "seconds": time.perf_counter() - t0})
        by_kind = {(r["kind"], r["method"]): r for r in res["rows"]}
        for m in args.methods:
            base_row, un = by_kind[("baseline", m)], by_kind[("unprune", m)]
            rows.append({
                "pruner": pruner, "method": m, "delta_J": un["delta_J"],
                "corrected": un["corrected_fraction"], "IoU_gold": un["IoU_gold"],
                "IoU_original_gold": res["IoU_original_gold"],
                "UA": base_row["UA"], "UA_unpruned": un["UA"], "RA": base_row["RA"],
                "RA_unpruned": un["RA"], "TA": base_row["TA"], "TA_unpruned": un["TA"],
            })
            common.log_row(rows[-1])

    out = Path(args.out)
    name = "finding2_unprune_gold"
    prov = common.provenance(
        {"config": "experiments/demo.toml", "overrides": base + args.override,
         "pruner_overrides": {k: PRUNERS[k] for k in args.pruners}, "methods": args.methods},
        {"split": 0, "model (θ_0)": 0, "data order": 0, "noise-floor seeds": args.seeds})
    toward = sum(r["delta_J"] > 0 for r in rows)
    notes = (
        "Per pruner, IoU(original, gold) against the seed noise floor (gold masks' IoU across "
        "data orders, mean ± std):\n\n" + "\n".join(
            f"- {q['pruner']}: IoU(original, gold) {q['IoU_original_gold']:.4f}; noise floor "
            + (f"{q['floor']:.4f} ± {q['floor_std']:.4f}" if q["floor"] is not None else "—")
            + f"; pipeline {q['seconds']:.0f} s" for q in per_pruner)
        + f"\n\nun-pruning moved the mask toward gold (ΔJ > 0) in {toward} of {len(rows)} "
        "(pruner, method) pairs.")
    md = common.write_table(
        rows,
        [("pruner", "pruner", ""), ("method", "method", ""), ("delta_J", "ΔJ", "+.4f"),
         ("corrected", "corrected", ".3f"), ("IoU_gold", "IoU gold (un-pruned)", ".4f"),
         ("IoU_original_gold", "IoU gold (original)", ".4f"), ("UA", "UA", ".4f"),
         ("UA_unpruned", "UA un-pruned", ".4f"), ("TA", "TA", ".4f"),
         ("TA_unpruned", "TA un-pruned", ".4f")],
        out, name, title="Finding 2: does un-pruning move the mask toward the gold standard?",
        prov=prov, notes=notes)

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(args.pruners)), 3.8))
    width = 0.8 / len(args.methods)
    x = np.arange(len(args.pruners))
    for i, m in enumerate(args.methods):
        vals = [next(r["delta_J"] for r in rows if r["pruner"] == q and r["method"] == m)
                for q in args.pruners]
        ax.bar(x + (i - (len(args.methods) - 1) / 2) * width, vals, width, label=m)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, args.pruners)
    ax.set_xlabel("pruner")
    ax.set_ylabel("ΔJ = IoU(un-pruned, gold) − IoU(original, gold)")
    ax.set_title(f"Un-pruning toward gold (> 0 is closer): small CNN, FashionMNIST "
                 f"({args.train_size} images, 10% forgotten)", fontsize=9)
    ax.legend(title="unlearning method", fontsize=7, ncol=min(5, len(args.methods)))
    common.save_figure(fig, out, name)
    print(md.read_text())
    return md


if __name__ == "__main__":
    main()
