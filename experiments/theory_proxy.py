"""Does the unlearning-error proxy e(M) track the verification error? Real FashionMNIST, an MLP.

e(M) = (η²/2)·t·‖M ⊙ (θ_t − θ_0)‖·λ(M), λ(M) the top |eigenvalue| of the Hessian restricted to
the mask (power iteration on masked HVPs, ``unprune_jax.metrics.theory``).

(a) The unrolled-SGD check (reference theory-and-methods.md §1.4 (d)). A LeNet-300-100 MLP is
    trained densely, magnitude-pruned (global OMP) to density d ∈ {1, .5, .2, .05} and fine-tuned
    one epoch under its mask: that is w_0. From w_0, t plain masked SGD steps (batch 64) give w_t;
    the same replay without the first batch B* gives w'_t; single-gradient unlearning gives
    w_u = w_t + η M ⊙ ∇L_{B*}(w_0). VE = ‖w_u − w'_t‖. λ(M) is taken at w_0 (the expansion
    point) on a fixed batch of training examples. Sweep t and η; Spearman ρ(VE, e) over all runs,
    and whether e and VE fall with density at each (t, η).
(b) Un-pruning settings. For each density, the original sparse model (OMP) and the gold standard
    (retrain + re-prune on D_r from the same θ_0 and data order) are trained once; then FT
    without un-pruning, and un-pruning around FT with p_θ ∈ {0.05, 0.2, 0.5} × re-init
    {θ_0, random}. For each output (θ_u, M_u): VE = ‖θ_u ⊙ M_u − θ_gold ⊙ M_gold‖ (all
    parameters), λ(M_u) at θ_u on a fixed batch of D_r, and two readings of e(M_u):
    ``e_total`` with θ_0 the initialisation (the gold run's start), t the optimizer steps of the
    whole history and η the training learning rate; ``e_unlearn`` with θ_0 the original sparse
    model, t the unlearning steps and η the unlearning learning rate. Spearman ρ(VE, e).

    python experiments/theory_proxy.py [--smoke] [--out experiments/results]

Writes theory_sgd.csv, theory_unprune.csv, theory_proxy.md and theory_proxy.png to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import os
import platform
import sys
import time
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.stats import spearmanr

from unprune_jax import masks, metrics, optim, prune, scores, unlearn
from unprune_jax.data import load_dataset, make_split
from unprune_jax.losses import cross_entropy
from unprune_jax.metrics import theory
from unprune_jax.models import get_model, init_model, make_apply_fn
from unprune_jax.train import TrainConfig, TrainState, fit, make_train_step
from unprune_jax.unprune import UnpruneConfig, gold_standard, unprune

FULL = {
    "train_size": 4000, "pre_epochs": 3, "densities": (1.0, 0.5, 0.2, 0.05),
    "steps": (10, 30, 100, 300), "etas": (0.01, 0.03, 0.1), "batch": 64,
    "hess_examples": 1024, "power_iters": 300, "tol": 1e-5,
    "unprune_densities": (0.05, 0.2), "epochs": 3, "fractions": (0.05, 0.2, 0.5),
    "reinits": ("theta0", "random"),
}
SMOKE = {
    "train_size": 600, "pre_epochs": 1, "densities": (1.0, 0.2), "steps": (4,),
    "etas": (0.01, 0.1), "batch": 16, "hess_examples": 64, "power_iters": 5, "tol": 1e-3,
    "unprune_densities": (0.2,), "epochs": 1, "fractions": (0.2,), "reinits": ("theta0",),
}
SEED = 0


def omp_mask(params, density, flags):
    """Global magnitude pruning of the prunable kernels to ``density`` (1 = dense)."""
    if density >= 1.0:
        return masks.full_mask(params)
    return prune.select(scores.magnitude(params), density, prune.PruneConfig(density=density),
                        flags)


@functools.cache
def make_lambda(apply_fn, iters, tol):
    """Compiled λ(M) at (params, model_state, mask) on one batch: power iteration on masked HVPs."""

    @jax.jit
    def lam(params, model_state, mask, x, y, key):
        loss = theory.loss_on_batch(apply_fn, model_state, x, y)
        value, _, info = theory.top_eigenvalue(loss, params, mask, key, iters=iters, tol=tol)
        return value, info

    return lam


def make_check(apply_fn, model_state):
    """Compiled unrolled-SGD check for one (t, batch) shape; η is traced."""

    def batch_loss(params, x, y):
        logits = apply_fn(params, model_state, x, False)[0]
        return cross_entropy(logits, y, jnp.ones(y.shape, jnp.float32))

    @jax.jit
    def check(params0, mask, xs, ys, eta):
        out = theory.unrolled_sgd_check(batch_loss, params0, mask, xs, ys, eta)
        out["e_eig"] = theory.unlearning_error_proxy(eta, xs.shape[0], out["params_t"], params0,
                                                     mask, 1.0)
        return {k: out[k] for k in ("verification_error", "no_unlearning_error", "drift",
                                    "e_eig")}

    return check


def rho(a, b) -> float:
    return float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")


def part_a(cfg, data, split, model, apply_fn, log):
    params0, ms = init_model(model, jax.random.PRNGKey(SEED), data.x[:1])
    tx = optim.sgd()
    flags = masks.prunable_leaves(params0)
    step_fn = make_train_step(apply_fn, tx, cross_entropy)
    train_cfg = TrainConfig(epochs=cfg["pre_epochs"], lr=0.05, batch_size=128, seed=SEED)
    dense, _, _ = fit(TrainState.create(params0, ms, tx), step_fn, data, split.train, train_cfg,
                      progress=False)
    rng = np.random.default_rng([SEED, 1])
    hess_idx = np.sort(rng.choice(split.train, cfg["hess_examples"], replace=False))
    lam_fn = make_lambda(apply_fn, cfg["power_iters"], cfg["tol"])
    checks = {}
    rows = []
    for d in cfg["densities"]:
        mask = omp_mask(dense.params, d, flags)
        sparse = dense.with_mask(mask, tx)
        sparse, hist, _ = fit(sparse, step_fn, data, split.train,
                              dataclasses.replace(train_cfg, epochs=1, seed=SEED + 1),
                              progress=False)
        w0 = sparse.params
        t0 = time.perf_counter()
        lam, info = lam_fn(w0, ms, mask, data.x[hess_idx], data.y[hess_idx],
                           jax.random.PRNGKey(SEED))
        lam = float(lam)
        log(f"(a) density {d}: acc after masked epoch {hist[-1]['acc']:.3f}, λ(M) = {lam:.4g} "
            f"({int(info['iterations'])} HVPs, residual {float(info['residual']):.2g}, "
            f"{time.perf_counter() - t0:.1f} s)")
        for t in cfg["steps"]:
            brng = np.random.default_rng([SEED, 2, t])
            idx = brng.choice(split.train, (t, cfg["batch"]), replace=True)
            xs, ys = jnp.asarray(data.x[idx]), jnp.asarray(data.y[idx])
            check = checks.setdefault(t, make_check(apply_fn, ms))
            for eta in cfg["etas"]:
                out = jax.device_get(check(w0, mask, xs, ys, jnp.float32(eta)))
                ve = float(out["verification_error"])
                e = float(out["e_eig"]) * abs(lam)
                rows.append({
                    "density": d, "t": t, "eta": eta, "lambda": lam,
                    "drift": float(out["drift"]), "e": e,
                    "e_sqrt": e / abs(lam) * np.sqrt(abs(lam)),
                    "ve": ve, "ve_no_unlearning": float(out["no_unlearning_error"]),
                    "ve_over_e": ve / e if e > 0 else float("nan"),
                })
    return rows


def part_b(cfg, data, split, model, apply_fn, log):
    params0, ms = init_model(model, jax.random.PRNGKey(SEED), data.x[:1])
    random_params, _ = init_model(model, jax.random.PRNGKey(SEED + 1), data.x[:1])
    tx = optim.sgd()
    init = TrainState.create(params0, ms, tx)
    flags = masks.prunable_leaves(params0)
    train_cfg = TrainConfig(epochs=cfg["epochs"], lr=0.05, batch_size=128, seed=SEED)
    method_cfg = unlearn.get("FT").defaults
    task = unlearn.UnlearnTask(apply_fn, tx, data, split.retain, split.forget, init,
                               progress=False)
    rng = np.random.default_rng([SEED, 3])
    hess_idx = np.sort(rng.choice(split.retain, min(cfg["hess_examples"], split.retain.size),
                                  replace=False))
    lam_fn = make_lambda(apply_fn, cfg["power_iters"], cfg["tol"])
    rows = []
    for d in cfg["unprune_densities"]:
        prune_cfg = prune.PruneConfig(density=d)
        t0 = time.perf_counter()
        original = prune.run(init, apply_fn, tx, data, split.train, train_cfg, prune_cfg, flags,
                             progress=False)
        gold = gold_standard(task, train_cfg, prune_cfg, flags, order_pool=split.train).sparse
        log(f"(b) density {d}: original and gold trained in {time.perf_counter() - t0:.0f} s")
        settings = [("original", None, None), ("FT", None, None)] + [
            ("FT + un-prune", p, r) for r in cfg["reinits"] for p in cfg["fractions"]]
        for name, p, reinit in settings:
            if name == "original":
                state = original.sparse
            elif p is None:
                state, _ = unlearn.run("FT", original.sparse, task, method_cfg)
            else:
                ucfg = UnpruneConfig(fraction=p, reinit=reinit, seed=SEED)
                state, _ = unprune(original.sparse, task, "FT", method_cfg, ucfg,
                                   dense_params=original.dense.params, prune_cfg=prune_cfg,
                                   prunable=flags, random_params=random_params)
            lam, _ = lam_fn(state.params, state.model_state, state.mask, data.x[hess_idx],
                            data.y[hess_idx], jax.random.PRNGKey(SEED))
            lam = float(lam)
            t_total = int(state.step)
            t_unlearn = t_total - int(original.sparse.step)
            e_total = float(theory.unlearning_error_proxy(
                train_cfg.lr, t_total, state.params, params0, state.mask, lam))
            e_unlearn = float(theory.unlearning_error_proxy(
                method_cfg.lr, t_unlearn, state.params, original.sparse.params, state.mask, lam))
            mm = metrics.mask_metrics(state.mask, gold.mask, flags, per_layer=False)
            acc = metrics.unlearning_accuracies(state, apply_fn, data, split)
            row = {
                "density": d, "setting": name, "p_theta": "" if p is None else p,
                "reinit": reinit or "", "lambda": lam,
                "drift_init": float(optax.tree.norm(masks.apply_mask(
                    jax.tree.map(jnp.subtract, state.params, params0), state.mask))),
                "t_total": t_total, "t_unlearn": t_unlearn,
                "e_total": e_total, "e_unlearn": e_unlearn,
                "ve": theory.verification_error(state.params, gold.params, state.mask,
                                                gold.mask),
                "iou_gold": mm["jaccard"], "UA": acc["UA"], "TA": acc["TA"],
            }
            rows.append(row)
            log("    " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in row.items()))
    return rows


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def summarise_a(rows, cfg):
    """Spearman ρ(VE, e) overall and per density; e and VE monotone in density per (t, η)."""
    ve = [r["ve"] for r in rows]
    out = {"rho_e": rho(ve, [r["e"] for r in rows]),
           "rho_e_sqrt": rho(ve, [r["e_sqrt"] for r in rows]),
           "rho_no_unlearning": rho(ve, [r["ve_no_unlearning"] for r in rows]),
           "per_density": {}, "e_falls": 0, "ve_falls": 0, "cells": 0, "sgu_beats_nothing": 0}
    for d in cfg["densities"]:
        sel = [r for r in rows if r["density"] == d]
        out["per_density"][d] = rho([r["ve"] for r in sel], [r["e"] for r in sel])
    dens = sorted(cfg["densities"], reverse=True)
    within = []
    for t in cfg["steps"]:
        for eta in cfg["etas"]:
            cell = {r["density"]: r for r in rows if r["t"] == t and r["eta"] == eta}
            within.append(rho([cell[d]["ve"] for d in dens], [cell[d]["e"] for d in dens]))
            out["cells"] += 1
            out["e_falls"] += all(cell[a]["e"] > cell[b]["e"] for a, b in zip(dens, dens[1:]))
            out["ve_falls"] += all(cell[a]["ve"] > cell[b]["ve"] for a, b in zip(dens, dens[1:]))
    out["rho_within_cells"] = float(np.mean(within))
    out["sgu_beats_nothing"] = sum(r["ve"] < r["ve_no_unlearning"] for r in rows)
    return out


def summarise_b(rows, cfg):
    sel = [r for r in rows if r["setting"] != "original"]
    out = {"rho_total": rho([r["ve"] for r in sel], [r["e_total"] for r in sel]),
           "rho_unlearn": rho([r["ve"] for r in sel], [r["e_unlearn"] for r in sel]),
           "rho_lambda": rho([r["ve"] for r in sel], [r["lambda"] for r in sel]),
           "rho_drift": rho([r["ve"] for r in sel], [r["drift_init"] for r in sel]),
           "per_density": {}}
    for d in cfg["unprune_densities"]:
        s = [r for r in sel if r["density"] == d]
        out["per_density"][d] = (rho([r["ve"] for r in s], [r["e_total"] for r in s]),
                                 rho([r["ve"] for r in s], [r["e_unlearn"] for r in s]))
    return out


def figure(path, rows_a, rows_b, cfg, plt):
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    colors = dict(zip(sorted(set(cfg["densities"]) | set(cfg["unprune_densities"]),
                         reverse=True), plt.cm.tab10.colors))
    marks = dict(zip(cfg["etas"], "os^v"))
    ax = axes[0]
    for d in cfg["densities"]:
        for eta in cfg["etas"]:
            sel = [r for r in rows_a if r["density"] == d and r["eta"] == eta]
            ax.scatter([r["e"] for r in sel], [r["ve"] for r in sel], color=colors[d],
                       marker=marks[eta], s=28,
                       label=f"d={d:g}" if eta == cfg["etas"][0] else None)
    for eta in cfg["etas"]:
        ax.scatter([], [], color="gray", marker=marks[eta], label=f"η={eta:g}")
    lo = min(min(r["e"] for r in rows_a), min(r["ve"] for r in rows_a))
    hi = max(max(r["e"] for r in rows_a), max(r["ve"] for r in rows_a))
    ax.plot([lo, hi], [lo, hi], "k:", lw=1, label="VE = e")
    ax.set(xscale="log", yscale="log", xlabel="proxy e(M) (weight units)",
           ylabel="verification error ‖w_u − w'_t‖ (weight units)",
           title="(a) single-gradient unlearning, t SGD steps")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1]
    t_mid = cfg["steps"][len(cfg["steps"]) // 2]
    for eta, c in zip(cfg["etas"], plt.cm.Dark2.colors):
        sel = sorted([r for r in rows_a if r["t"] == t_mid and r["eta"] == eta],
                     key=lambda r: r["density"])
        x = [r["density"] for r in sel]
        ax.plot(x, [r["e"] for r in sel], "-", color=c, marker=marks[eta],
                label=f"e(M), η={eta:g}")
        ax.plot(x, [r["ve"] for r in sel], "--", color=c, marker=marks[eta], mfc="none",
                label=f"VE, η={eta:g}")
    ax.set(xscale="log", yscale="log", xlabel="density d (fraction of prunable weights kept)",
           ylabel="weight units", title=f"(a) e(M) and VE against density, t = {t_mid}")
    ax.set_xticks(list(cfg["densities"]), [f"{d:g}" for d in cfg["densities"]])
    ax.legend(fontsize=7, ncol=2)
    ax = axes[2]
    smarks = {"original": "X", "FT": "D", "theta0": "o", "random": "s"}
    for d in cfg["unprune_densities"]:
        for key, m in smarks.items():
            sel = [r for r in rows_b if r["density"] == d and (
                r["setting"] == key if key in ("original", "FT") else r["reinit"] == key)]
            if key == "original":
                continue  # no unlearning ran: e_total alone is not comparable
            ax.scatter([r["e_total"] for r in sel], [r["ve"] for r in sel], color=colors[d],
                       marker=m, s=34, label=f"d={d:g}, {key}")
    ax.set(xscale="log", yscale="log", xlabel="proxy e(M_u), whole history (weight units)",
           ylabel="VE ‖θ_u⊙M_u − θ_gold⊙M_gold‖ (weight units)",
           title="(b) FT and un-pruning vs gold (retrain + re-prune)")
    ax.legend(fontsize=7)
    for ax in axes:  # a narrow log range otherwise labels every minor tick
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    fig.suptitle("Does the proxy e(M) = η²/2·t·‖M⊙(θ_t−θ_0)‖·λ(M) track the verification "
                 "error? LeNet-300-100, real FashionMNIST", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(rows, cols):
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a seconds-long run on tiny settings")
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cfg = SMOKE if args.smoke else FULL
    start = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - start:6.0f} s] {s}", flush=True)
    data = load_dataset("fashion_mnist", args.data_dir)
    split = make_split(data, seed=SEED, train_size=cfg["train_size"], forget_fraction=0.1)
    model = get_model("mlp")
    apply_fn = make_apply_fn(model)
    rows_a = part_a(cfg, data, split, model, apply_fn, log)
    t_a = time.perf_counter() - start
    rows_b = part_b(cfg, data, split, model, apply_fn, log)
    wall = time.perf_counter() - start

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "theory_sgd.csv", rows_a)
    write_csv(out / "theory_unprune.csv", rows_b)
    figure(out / "theory_proxy.png", rows_a, rows_b, cfg, plt)
    sa, sb = summarise_a(rows_a, cfg), summarise_b(rows_b, cfg)
    versions = (f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, "
                f"numpy {np.__version__}, python {platform.python_version()}")
    machine = (f"{platform.machine()} {jax.default_backend()}, {os.cpu_count()} CPU cores "
               f"({platform.node() and 'shared machine'})")
    md = [
        f"# e(M) vs verification error{' (smoke run)' if args.smoke else ''}",
        "",
        f"Command: `python {' '.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])}`; "
        f"seed {SEED}; {versions}; {machine}; wall time {wall:.0f} s (part (a) {t_a:.0f} s).",
        f"Real FashionMNIST, {cfg['train_size']} training images (split seed {SEED}, 10% "
        "forget set for (b)), LeNet-300-100 MLP; λ(M): power iteration on masked HVPs, "
        f"≤ {cfg['power_iters']} iterations, tol {cfg['tol']}, on {cfg['hess_examples']} "
        "examples, eval mode.",
        "",
        "## (a) Unrolled SGD, single-gradient unlearning of the first batch",
        "",
        f"Spearman ρ(VE, e) over all {len(rows_a)} runs: **{sa['rho_e']:.3f}** "
        f"(σ = √λ variant: {sa['rho_e_sqrt']:.3f}; ρ(VE, error of doing nothing): "
        f"{sa['rho_no_unlearning']:.3f}). Per density: "
        + ", ".join(f"d={d:g}: {v:.3f}" for d, v in sa["per_density"].items()) + ".",
        f"e falls monotonically with density in {sa['e_falls']}/{sa['cells']} (t, η) cells; "
        f"VE does in {sa['ve_falls']}/{sa['cells']}. Mean over (t, η) cells of ρ(VE, e) "
        f"across the densities (does e rank the densities as VE does?): "
        f"{sa['rho_within_cells']:.3f}. SGU beats doing nothing "
        f"(VE < ‖w_t − w'_t‖) in {sa['sgu_beats_nothing']}/{len(rows_a)} runs.",
        "",
        table(rows_a, ["density", "t", "eta", "lambda", "drift", "e", "ve",
                       "ve_no_unlearning", "ve_over_e"]),
        "",
        "## (b) Un-pruning settings against the gold standard",
        "",
        "Excluding the row without unlearning: Spearman ρ(VE, e_total) = "
        f"**{sb['rho_total']:.3f}**, ρ(VE, e_unlearn) = **{sb['rho_unlearn']:.3f}**, "
        f"ρ(VE, λ) = {sb['rho_lambda']:.3f}, ρ(VE, ‖M⊙(θ−θ_init)‖) = {sb['rho_drift']:.3f}. "
        "Per density (e_total, e_unlearn): "
        + ", ".join(f"d={d:g}: ({a:.3f}, {b:.3f})" for d, (a, b) in sb["per_density"].items())
        + ".",
        "",
        table(rows_b, ["density", "setting", "p_theta", "reinit", "lambda", "drift_init",
                       "t_total", "t_unlearn", "e_total", "e_unlearn", "ve", "iou_gold", "UA",
                       "TA"]),
        "",
    ]
    (out / "theory_proxy.md").write_text("\n".join(md))
    log(f"wrote {out}/theory_*.csv, theory_proxy.md, theory_proxy.png")
    print("\n".join(md[:16]))


if __name__ == "__main__":
    main()
