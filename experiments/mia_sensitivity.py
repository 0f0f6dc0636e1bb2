"""Finding 3: SVC-MIA-efficacy is unreliable. Sweep the shadow ratio and the forget-set size.

On real FashionMNIST: one small CNN is trained and pruned (OMP, 10% density) on a training subset.
For every forget-set size and seed, a random forget set D_f is drawn and the model unlearns it
with ``retrain`` (from θ_0 on D_r under the original mask: the exact-unlearning reference) and
``FT``. On each unlearned model, SVC-MIA-efficacy (the fraction of D_f the attack calls
non-member) is computed

- as the peers compute it (:func:`unprune_jax.metrics.mia.svc_mia_peer`): members = the first
  ``ratio × |test|`` retain examples in dataset order, non-members = the test set, raw
  confidence, unbalanced;
- corrected (:func:`unprune_jax.metrics.mia.svc_mia`): the same member pool, but members and
  non-members drawn at random and balanced, features standardised, and the attack's held-out
  accuracy reported,

for shadow train/test ratios ``--ratios``. Writes ``mia_sensitivity.csv``, ``.md`` and ``.png`` to
``--out``.

    python experiments/mia_sensitivity.py                 # the full sweep (≈ 7 min wall, shared
                                                          # 2-core CPU)
    python experiments/mia_sensitivity.py --smoke --out /tmp/mia   # ≈ 12 s CPU, for the tests
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.metadata as md
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

from unprune_jax import masks, optim, prune, unlearn
from unprune_jax.data import load_dataset, make_split
from unprune_jax.metrics import mia
from unprune_jax.models import get_model, init_model, make_apply_fn
from unprune_jax.train import TrainConfig, TrainState, accuracy, predict

FULL = dict(train_size=8000, test_size=1000, epochs=6, forget_sizes=(50, 200, 800, 1600),
            ratios=(0.25, 0.5, 1.0, 2.0, 4.0), seeds=(0, 1, 2), methods=("retrain", "FT"))
SMOKE = dict(train_size=400, test_size=80, epochs=1, forget_sizes=(20, 40),
             ratios=(0.5, 1.0, 2.0), seeds=(0, 1), methods=("retrain", "FT"))


def versions() -> str:
    pk = ["jax", "flax", "optax", "numpy", "scikit-learn", "matplotlib"]
    out = []
    for p in pk:
        try:
            out.append(f"{p} {md.version(p)}")
        except md.PackageNotFoundError:
            out.append(f"{p} (absent)")
    return ", ".join([f"python {platform.python_version()}"] + out)


def machine() -> str:
    return (f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPU cores, "
            f"JAX backend {jax.default_backend()}").replace("  ", " ")


def probs_of(state, apply_fn, data, idx):
    return mia.softmax(predict(state, apply_fn, data, idx))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--feature", default="confidence", choices=mia.FEATURES)
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    cfg = SMOKE if args.smoke else FULL
    t_start = time.perf_counter()

    data = load_dataset("fashion_mnist", args.data_dir)
    split = make_split(data, seed=0, train_size=cfg["train_size"], test_size=cfg["test_size"],
                       forget_fraction=0.1)  # only train/test are used; D_f is drawn below
    model = get_model("small_cnn")
    apply_fn = make_apply_fn(model)
    params0, ms0 = init_model(model, jax.random.PRNGKey(0), data.x[:1])
    tx = optim.sgd()
    init = TrainState.create(params0, ms0, tx)
    flags = masks.prunable_leaves(params0)
    train_cfg = TrainConfig(epochs=cfg["epochs"], lr=0.05)
    prune_cfg = prune.PruneConfig(method="omp", density=0.1)
    method_cfgs = {
        "retrain": dataclasses.replace(unlearn.get("retrain").defaults, epochs=cfg["epochs"]),
        "FT": unlearn.get("FT").defaults,
    }
    original = prune.run(init, apply_fn, tx, data, split.train, train_cfg, prune_cfg, flags,
                         progress=False).sparse
    t_train = time.perf_counter() - t_start
    test = split.test
    tp = probs_of(original, apply_fn, data, test)
    ty = data.y[test]
    print(f"original: train acc {accuracy(original, apply_fn, data, split.train):.4f}, "
          f"test acc {accuracy(original, apply_fn, data, test):.4f} ({t_train:.0f} s)",
          flush=True)

    rows = []
    for n_f in cfg["forget_sizes"]:
        for seed in cfg["seeds"]:
            rng = np.random.default_rng([seed, n_f])
            forget = np.sort(rng.choice(split.train, n_f, replace=False))
            retain = np.setdiff1d(split.train, forget)  # dataset order, as the peers' Subset
            task = unlearn.UnlearnTask(apply_fn, tx, data, retain, forget, init, progress=False)
            for method in cfg["methods"]:
                t0 = time.perf_counter()
                state, _ = unlearn.run(method, original, task,
                                       dataclasses.replace(method_cfgs[method], seed=seed))
                t_unlearn = time.perf_counter() - t0
                rp, fp = probs_of(state, apply_fn, data, retain), probs_of(state, apply_fn,
                                                                            data, forget)
                tp = probs_of(state, apply_fn, data, test)
                ry, fy = data.y[retain], data.y[forget]
                acc = {"UA": 1 - np.mean(fp.argmax(1) == fy), "RA": np.mean(rp.argmax(1) == ry),
                       "TA": np.mean(tp.argmax(1) == ty)}
                for ratio in cfg["ratios"]:
                    n_mem = int(round(ratio * test.size))
                    t1 = time.perf_counter()
                    peer = mia.svc_mia_peer(rp, ry, tp, ty, fp, fy, feature=args.feature,
                                            n_members=n_mem)
                    t_peer = time.perf_counter() - t1
                    corr = mia.svc_mia(rp[:n_mem], ry[:n_mem], tp, ty, fp, fy,
                                       feature=args.feature, seed=seed)
                    for variant, r in (("peer", peer), ("corrected", corr)):
                        rows.append({
                            "method": method, "forget_size": n_f, "seed": seed, "ratio": ratio,
                            "variant": variant, "efficacy": r["efficacy"],
                            "attack_train_acc": r["train_acc"],
                            "attack_test_acc": r.get("test_acc", float("nan")),
                            "n_members": n_mem, "n_nonmembers": int(test.size),
                            **{k: float(v) for k, v in acc.items()},
                            "unlearn_seconds": t_unlearn, "svc_seconds": t_peer,
                        })
                last = [r for r in rows[-2 * len(cfg["ratios"]):] if r["variant"] == "peer"]
                print(f"|D_f|={n_f} seed={seed} {method:7s} UA={acc['UA']:.3f} "
                      f"TA={acc['TA']:.3f} peer efficacy by ratio: "
                      + " ".join(f"{r['ratio']:g}:{r['efficacy']:.3f}" for r in last), flush=True)

    wall = time.perf_counter() - t_start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "mia_sensitivity.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = summarise(rows, cfg)
    write_md(out / "mia_sensitivity.md", summary, cfg, args, argv, wall, t_train)
    if not args.no_plot:
        plot(out / "mia_sensitivity.png", summary, cfg)
    print(f"wrote {out}/mia_sensitivity.{{csv,md{'' if args.no_plot else ',png'}}} "
          f"in {wall:.0f} s")
    return {"rows": rows, "summary": summary, "seconds": wall}


def summarise(rows, cfg) -> dict:
    """(method, variant, forget_size, ratio) → mean and sd over seeds of efficacy and accuracies."""
    out = {}
    keys = {(r["method"], r["variant"], r["forget_size"], r["ratio"]) for r in rows}
    for key in sorted(keys):
        sel = [r for r in rows if (r["method"], r["variant"], r["forget_size"], r["ratio"]) == key]
        agg = {}
        for m in ("efficacy", "attack_train_acc", "attack_test_acc", "UA", "TA"):
            v = np.array([r[m] for r in sel], float)
            agg[m] = (float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan"))
        agg["n"] = len(sel)
        out[key] = agg
    return out


def _mid(values):
    return values[len(values) // 2]


def write_md(path, s, cfg, args, argv, wall, t_train):
    ratios, sizes, methods = cfg["ratios"], cfg["forget_sizes"], cfg["methods"]
    n_f = _mid(sizes)
    fmt = lambda ms: f"{ms[0]:.3f} ± {ms[1]:.3f}"  # noqa: E731
    cmd = "python experiments/mia_sensitivity.py " + " ".join(argv if argv is not None
                                                               else sys.argv[1:])
    lines = [
        "# SVC-MIA-efficacy sensitivity (finding 3)", "",
        f"Command: `{cmd.strip()}`. Wall time {wall:.0f} s (original model {t_train:.0f} s), "
        f"on {machine()}.", f"Software: {versions()}.", "",
        f"Setup: real FashionMNIST, small CNN, {cfg['train_size']} training and "
        f"{cfg['test_size']} test images (split seed 0), OMP at 10% density, {cfg['epochs']} dense "
        f"+ {cfg['epochs']} sparse epochs (SGD lr 0.05, momentum 0.9). Unlearning: `retrain` "
        f"({cfg['epochs']} epochs from θ_0 on D_r, original mask) and `FT` (registry defaults). "
        f"Forget sets: {list(sizes)} random training images, seeds {list(cfg['seeds'])} (the "
        f"seed draws D_f, the unlearning data order and the corrected attack's shadow sample). "
        f"Feature: {args.feature}. Shadow ratio = members / non-members = "
        f"n_members / {cfg['test_size']}. Values: mean ± sd over seeds.", "",
        f"## Efficacy vs shadow ratio (n_f = |D_f| = {n_f})", "",
        "| method | variant | " + " | ".join(f"ratio {r:g}" for r in ratios) + " |",
        "|---|---|" + "---|" * len(ratios),
    ]
    for m in methods:
        for v in ("peer", "corrected"):
            lines.append(f"| {m} | {v} | " + " | ".join(fmt(s[(m, v, n_f, r)]["efficacy"])
                                                         for r in ratios) + " |")
    lines += ["", f"Attack accuracy (balanced; peer: on its own shadow set, corrected: held out), "
              f"n_f = {n_f}:", "",
              "| method | variant | " + " | ".join(f"ratio {r:g}" for r in ratios) + " |",
              "|---|---|" + "---|" * len(ratios)]
    for m in methods:
        for v, key in (("peer", "attack_train_acc"), ("corrected", "attack_test_acc")):
            lines.append(f"| {m} | {v} | " + " | ".join(fmt(s[(m, v, n_f, r)][key])
                                                         for r in ratios) + " |")
    r1 = 1.0 if 1.0 in ratios else _mid(ratios)
    lines += ["", f"## Efficacy vs forget-set size (ratio {r1:g})", "",
              "| method | variant | " + " | ".join(f"n_f = {n}" for n in sizes) + " |",
              "|---|---|" + "---|" * len(sizes)]
    for m in methods:
        for v in ("peer", "corrected"):
            lines.append(f"| {m} | {v} | " + " | ".join(fmt(s[(m, v, n, r1)]["efficacy"])
                                                         for n in sizes) + " |")
    lines += ["", "UA / TA per method and forget size (ratio-independent):", "",
              "| method | " + " | ".join(f"n_f = {n}" for n in sizes) + " |",
              "|---|" + "---|" * len(sizes)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(
            f"UA {s[(m, 'peer', n, r1)]['UA'][0]:.3f} / TA {s[(m, 'peer', n, r1)]['TA'][0]:.3f}"
            for n in sizes) + " |")
    Path(path).write_text("\n".join(lines) + "\n")


def plot(path, s, cfg):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios, sizes, methods = cfg["ratios"], cfg["forget_sizes"], cfg["methods"]
    n_f = _mid(sizes)
    r1 = 1.0 if 1.0 in ratios else _mid(ratios)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    styles = {"peer": "-", "corrected": "--"}
    colors = {m: c for m, c in zip(methods, ["C0", "C1", "C2", "C3"])}
    for m in methods:
        for v in ("peer", "corrected"):
            e = [s[(m, v, n_f, r)]["efficacy"] for r in ratios]
            axes[0].errorbar(ratios, [100 * a for a, _ in e], [100 * b for _, b in e],
                             ls=styles[v], color=colors[m], marker="o", capsize=3,
                             label=f"{m}, {v}")
            key = "attack_train_acc" if v == "peer" else "attack_test_acc"
            a = [s[(m, v, n_f, r)][key] for r in ratios]
            axes[1].errorbar(ratios, [100 * x for x, _ in a], [100 * y for _, y in a],
                             ls=styles[v], color=colors[m], marker="o", capsize=3,
                             label=f"{m}, {v} ({'own shadow set' if v == 'peer' else 'held out'})")
            e = [s[(m, v, n, r1)]["efficacy"] for n in sizes]
            axes[2].errorbar(sizes, [100 * a for a, _ in e], [100 * b for _, b in e],
                             ls=styles[v], color=colors[m], marker="o", capsize=3,
                             label=f"{m}, {v}")
    for ax in axes[:2]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ratios, [f"{r:g}" for r in ratios])
        ax.set_xlabel("shadow train/test ratio (members per non-member)")
    axes[0].set_ylabel("MIA-efficacy (% of D_f called non-member)")
    axes[0].set_title(f"efficacy vs shadow ratio, |D_f| = {n_f}")
    axes[1].axhline(50, color="k", lw=0.8, ls=":")
    axes[1].set_ylabel("attack balanced accuracy (%)")
    axes[1].set_title("does the attack work at all?")
    axes[2].set_xscale("log")
    axes[2].set_xticks(sizes, [str(n) for n in sizes])
    axes[2].set_xlabel("forget-set size |D_f| (images)")
    axes[2].set_ylabel("MIA-efficacy (%)")
    axes[2].set_title(f"efficacy vs forget-set size, ratio {r1:g}")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"SVC-MIA on FashionMNIST (small CNN, OMP 10%): mean ± sd over "
                 f"{len(cfg['seeds'])} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
