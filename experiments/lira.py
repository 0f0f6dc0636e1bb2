"""LiRA / U-LiRA table on real FashionMNIST: does unlearning (with or without un-pruning) leave a
per-example trace that a calibrated attack can find?

Setup (all sizes are flags):

- A pool of ``--pool`` training images. The target model is trained on D (half the pool) and
  pruned as the pipeline does (OMP, 10% density); D_f is ``--forget`` random images of D.
- K = ``--shadows`` shadow models, each trained and pruned the same way on a random half D_k of
  the pool, arranged so that every D_f image is in exactly K/2 of the D_k. Shadows are trained as
  K stacked runs with ``unprune_jax.train.fit_many`` (dense phase, then, after each run's
  magnitude mask, the sparse phase from its θ_0). Each shadow also gets its gold standard (OMP
  again on D_k \\ F_k, same θ_0 and data order), F_k = D_f ∩ D_k.
- Every shadow unlearns F_k with each variant: FT, RL, SalUn under the original mask
  ("baseline"), and each wrapped in un-pruning (``unprune.unprune``, default options).
- Target rows: the same variants applied to the target, its gold standard
  (``unprune.gold_standard``), and two controls: the original model (no unlearning; should be
  found) and a second gold standard with another data-order seed (should not be).

Attack per row (U-LiRA, Hayes et al.): for each x in D_f, Gaussians of φ = log p_y − log Σ_{j≠y}
p_j are fit over the shadows that trained on x and then unlearned it with the row's variant (IN)
and over the shadow golds that never saw x (OUT); the log-likelihood ratio is computed on the
row's target model (positives) and on the target gold (negatives), so the game is "was x
unlearned or never seen?" over the 2|D_f| (model, example) pairs. The controls use plain LiRA
(IN = shadows trained on x, not unlearned). With few shadows the variance is pooled (global), as
Carlini et al. advise; the per-example-variance AUC is in the CSV too.

With ``--neurips-n N`` (default 8; 0 skips it), the NeurIPS 2023 forgetting score F from N
unlearning runs of the target (seeds 0..N−1) against N gold standards (data-order seeds
0..N−1); its bins shrink with N.

    python experiments/lira.py                      # the table (≈ 4.5 min CPU, 11 min wall on
                                                    # a shared 2-core machine)
    python experiments/lira.py --smoke --out /tmp/l  # ≈ 25 s CPU, for the test suite
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from pathlib import Path

import jax
import numpy as np

from unprune_jax import losses, masks, optim, prune, unlearn
from unprune_jax.data import load_dataset
from unprune_jax.metrics import mia
from unprune_jax.models import get_model, init_model, make_apply_fn
from unprune_jax.runs import stack, unstack
from unprune_jax.train import TrainConfig, TrainState, fit_many, make_train_step, predict
from unprune_jax.unprune import UnpruneConfig, gold_standard, unprune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mia_sensitivity import machine, versions  # noqa: E402

METHODS = ("FT", "RL", "SalUn")
FULL = dict(pool=4000, forget=200, shadows=16, epochs=8, test=1000, neurips_n=8)
SMOKE = dict(pool=200, forget=20, shadows=4, epochs=1, test=100, neurips_n=3)


def fit_runs(states, step, data, subsets, cfgs, order_pool, desc):
    """K training runs in one ``train.fit_many`` call; returns the K final states."""
    out, _ = fit_many(states, step, data, subsets, cfgs, order_pool=order_pool, progress=False,
                      desc=desc)
    return unstack(out)


def omp_many(inits, step, tx, data, subsets, cfgs, prune_cfg, flags, pool):
    """OMP (rewind to θ_0) for K runs at once; returns ``(dense_states, sparse_states)``."""
    dense = fit_runs(stack(inits), step, data, subsets, cfgs, pool, "shadow dense")
    starts = []
    for init, d in zip(inits, dense):
        mask = prune.select(prune.reprune_scores(d.params, prune_cfg), prune_cfg.density,
                            prune_cfg, flags)
        starts.append(init.with_mask(mask, tx))
    sparse = fit_runs(stack(starts), step, data, subsets, cfgs, pool, "shadow sparse")
    return dense, sparse


def balanced_halves(rng, pool, forget, k):
    """K random halves of ``pool``; every ``forget`` image is in exactly K/2 of them."""
    rest = np.setdiff1d(pool, forget)
    half = pool.size // 2
    in_f = np.argsort(rng.random((k, forget.size)), axis=0) < k // 2  # (K, |D_f|)
    subsets = []
    for j in range(k):
        chosen_f = forget[in_f[j]]
        others = rng.choice(rest, half - chosen_f.size, replace=False)
        subsets.append(np.sort(np.concatenate([chosen_f, others])))
    return subsets


def bootstrap_auc(is_member, scores, rng, reps=500):
    """95% percentile interval of the AUC, resampling positives and negatives separately."""
    pos, neg = scores[is_member], scores[~is_member]
    aucs = []
    for _ in range(reps):
        p = rng.choice(pos, pos.size)
        n = rng.choice(neg, neg.size)
        aucs.append(mia.roc_auc(np.r_[np.ones(p.size, bool), np.zeros(n.size, bool)],
                                np.r_[p, n]))
    return np.percentile(aucs, [2.5, 97.5])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    ap.add_argument("--pool", type=int)
    ap.add_argument("--forget", type=int)
    ap.add_argument("--shadows", type=int, help="K, even")
    ap.add_argument("--epochs", type=int, help="dense and sparse epochs of every OMP run")
    ap.add_argument("--neurips-n", type=int, help="N for the NeurIPS score (0: skip)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default="experiments/results")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args(argv)
    cfg = dict(SMOKE if args.smoke else FULL)
    for k in ("pool", "forget", "shadows", "epochs", "neurips_n"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    if cfg["shadows"] < 2 or cfg["shadows"] % 2:
        raise SystemExit(f"--shadows must be even and ≥ 2, got {cfg['shadows']}")
    if not 0 < cfg["forget"] < cfg["pool"] // 2:
        raise SystemExit(f"--forget must be in (0, pool/2), got {cfg['forget']}")
    methods = [m for m in args.methods.split(",") if m]
    t_start = time.perf_counter()
    rng = np.random.default_rng(0)

    data = load_dataset("fashion_mnist", args.data_dir)
    pool = np.sort(rng.choice(data.train_pool, cfg["pool"], replace=False))
    test = np.sort(rng.choice(data.test_pool, cfg["test"], replace=False))
    target_d = np.sort(rng.choice(pool, cfg["pool"] // 2, replace=False))
    forget = np.sort(rng.choice(target_d, cfg["forget"], replace=False))
    retain = np.setdiff1d(target_d, forget)

    model = get_model("small_cnn")
    apply_fn = make_apply_fn(model)
    tx = optim.sgd()

    def make_init(seed):
        p, ms = init_model(model, jax.random.PRNGKey(seed), data.x[:1])
        return TrainState.create(p, ms, tx, seed=seed)

    init0 = make_init(0)
    flags = prune.prunable_for(prune.PruneConfig(), masks.prunable_leaves(init0.params),
                               init0.params)
    train_cfg = TrainConfig(epochs=cfg["epochs"], lr=0.05)
    prune_cfg = prune.PruneConfig(method="omp", density=0.1)
    unprune_cfg = UnpruneConfig()
    step = make_train_step(apply_fn, tx, losses.cross_entropy)
    variants = [(m, up) for m in methods for up in (False, True)]

    def vname(m, up):
        return f"{m} + un-prune" if up else f"{m} baseline"

    def run_variant(method, up, original, dense_params, task, seed=0):
        mcfg = dataclasses.replace(unlearn.get(method).defaults, seed=seed)
        if not up:
            return unlearn.run(method, original, task, mcfg, on_divergence="keep_last_good")[0]
        return unprune(original, task, method, mcfg, unprune_cfg, dense_params=dense_params,
                       prune_cfg=prune_cfg, prunable=flags)[0]

    def phi(state, idx=forget):
        return mia.logit_confidence(predict(state, apply_fn, data, idx), data.y[idx])

    def accs(state):
        def a(idx):
            return float(np.mean(predict(state, apply_fn, data, idx).argmax(1) == data.y[idx]))
        return {"UA": 1 - a(forget), "RA": a(retain), "TA": a(test)}

    # --- target --------------------------------------------------------------------------------
    t0 = time.perf_counter()
    orig = prune.run(init0, apply_fn, tx, data, target_d, train_cfg, prune_cfg, flags,
                     order_pool=pool, progress=False)
    task = unlearn.UnlearnTask(apply_fn, tx, data, retain, forget, init0, progress=False)
    gold = gold_standard(task, train_cfg, prune_cfg, flags, order_pool=pool).sparse
    gold_b = gold_standard(task, dataclasses.replace(train_cfg, seed=1), prune_cfg, flags,
                           order_pool=pool).sparse
    targets = {vname(m, up): run_variant(m, up, orig.sparse, orig.dense.params, task)
               for m, up in variants}
    t_target = time.perf_counter() - t0
    print(f"target models in {t_target:.0f} s", flush=True)

    # --- shadows -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    k = cfg["shadows"]
    subsets = balanced_halves(rng, pool, forget, k)
    f_k = [np.intersect1d(s, forget) for s in subsets]
    r_k = [np.setdiff1d(s, f) for s, f in zip(subsets, f_k)]
    inits = [make_init(100 + j) for j in range(k)]
    cfgs = [dataclasses.replace(train_cfg, seed=j) for j in range(k)]
    sh_dense, sh_orig = omp_many(inits, step, tx, data, subsets, cfgs, prune_cfg, flags, pool)
    _, sh_gold = omp_many(inits, step, tx, data, r_k, cfgs, prune_cfg, flags, pool)
    t_shadow_train = time.perf_counter() - t0
    print(f"{k} shadows + {k} shadow golds trained in {t_shadow_train:.0f} s (train.fit_many)",
          flush=True)
    t0 = time.perf_counter()
    in_d = np.stack([np.isin(forget, s) for s in subsets])      # (K, |D_f|): x ∈ D_k
    obs_orig = np.stack([phi(s) for s in sh_orig])
    obs_gold = np.stack([phi(s) for s in sh_gold])
    obs_var = {}
    for m, up in variants:
        rows_k = []
        for j in range(k):
            tk = unlearn.UnlearnTask(apply_fn, tx, data, r_k[j], f_k[j], inits[j],
                                     progress=False)
            rows_k.append(phi(run_variant(m, up, sh_orig[j], sh_dense[j].params, tk, seed=j)))
        obs_var[vname(m, up)] = np.stack(rows_k)
        print(f"  shadows unlearned with {vname(m, up)}", flush=True)
    t_shadow_unlearn = time.perf_counter() - t0

    # --- attacks -------------------------------------------------------------------------------
    n_f = forget.size
    is_pos = np.r_[np.ones(n_f, bool), np.zeros(n_f, bool)]
    phi_gold = phi(gold)
    boot = np.random.default_rng(1)

    def attack(row, target_state, in_obs, attack_name):
        both = np.stack([phi(target_state), phi_gold])
        out = {"row": row, "attack": attack_name}
        for gv, tag in ((True, ""), (False, "_per_example_var")):
            s = mia.ulira(both, in_obs, obs_gold, in_d, ~in_d, global_variance=gv)["score"]
            s = s.ravel()
            rep = mia.attack_report(is_pos, s)
            out[f"auc{tag}"] = rep["auc"]
            if gv:
                out["tpr@1%"], out["tpr@0.1%"] = rep["tpr@0.01"], rep["tpr@0.001"]
                out["auc_ci_lo"], out["auc_ci_hi"] = bootstrap_auc(is_pos, s, boot)
        return {**out, **accs(target_state)}

    rows = [attack("original (no unlearning)", orig.sparse, obs_orig, "LiRA"),
            *[attack(name, targets[name], obs_var[name], "U-LiRA") for name in obs_var],
            {**attack("gold, order seed 1 (control)", gold_b, obs_orig, "LiRA")},
            {"row": "gold (retrain + re-prune)", "attack": "-", **accs(gold)}]

    # --- NeurIPS score -------------------------------------------------------------------------
    t0 = time.perf_counter()
    nn = cfg["neurips_n"]
    if nn:
        golds = [phi(gold_standard(task, dataclasses.replace(train_cfg, seed=s), prune_cfg,
                                   flags, order_pool=pool).sparse) for s in range(nn)]
        for r in rows:
            m = r["row"].split(" ")[0]
            if r["attack"] != "U-LiRA":
                continue
            up = r["row"].endswith("un-prune")
            runs = [phi(run_variant(m, up, orig.sparse, orig.dense.params, task, seed=s))
                    for s in range(nn)]
            r["neurips_F"] = mia.neurips_forgetting_score(np.stack(runs), np.stack(golds))["F"]
    t_neurips = time.perf_counter() - t0

    wall = time.perf_counter() - t_start
    times = {"target": t_target, "shadow_train": t_shadow_train,
             "shadow_unlearn": t_shadow_unlearn, "neurips": t_neurips, "total": wall}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = ["row", "attack", "auc", "auc_ci_lo", "auc_ci_hi", "tpr@1%", "tpr@0.1%",
            "auc_per_example_var", "neurips_F", "UA", "RA", "TA"]
    with open(out / "lira.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, restval="")
        w.writeheader()
        w.writerows(rows)
    write_md(out / "lira.md", rows, cfg, argv, times, methods)
    print((out / "lira.md").read_text())
    return {"rows": rows, "times": times}


def _f(x, p=3):
    return "–" if x is None or x == "" else f"{x:.{p}f}"


def write_md(path, rows, cfg, argv, times, methods):
    n_f, k = cfg["forget"], cfg["shadows"]
    cmd = "python experiments/lira.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# LiRA / U-LiRA on FashionMNIST: baseline vs un-pruned unlearning", "",
        f"Command: `{cmd.strip()}`. Wall time {times['total']:.0f} s (target models "
        f"{times['target']:.0f} s, {2 * k} shadow OMP runs {times['shadow_train']:.0f} s, shadow "
        f"unlearning {times['shadow_unlearn']:.0f} s, NeurIPS runs {times['neurips']:.0f} s) on "
        f"{machine()}. Shadow training: train.fit_many.",
        f"Software: {versions()}.", "",
        f"Setup: pool of {cfg['pool']} FashionMNIST training images (seed 0); target trained on "
        f"{cfg['pool'] // 2} of them, small CNN, OMP 10% density, {cfg['epochs']} dense + "
        f"{cfg['epochs']} sparse epochs (lr 0.05); |D_f| = {n_f}; TA on {cfg['test']} test "
        f"images. K = {k} shadows on balanced random halves (each D_f image in {k // 2}), each "
        f"with its own gold standard; methods {', '.join(methods)} with registry defaults; "
        f"un-pruning with default options (p_θ 0.1, 1 round, θ_0 re-init).", "",
        "| row | attack | AUC [95% CI] | TPR@1% FPR | TPR@0.1% FPR | AUC (per-ex. σ) | "
        "NeurIPS F | UA | RA | TA |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        auc = (f"{r['auc']:.3f} [{r['auc_ci_lo']:.3f}, {r['auc_ci_hi']:.3f}]"
               if "auc" in r else "–")
        lines.append(
            f"| {r['row']} | {r['attack']} | {auc} | {_f(r.get('tpr@1%'))} | "
            f"{_f(r.get('tpr@0.1%'))} | {_f(r.get('auc_per_example_var'))} | "
            f"{_f(r.get('neurips_F'))} | {100 * r['UA']:.1f} | {100 * r['RA']:.1f} | "
            f"{100 * r['TA']:.1f} |")
    nn = cfg["neurips_n"]
    lines += [
        "",
        f"Reading it: positives are the {n_f} D_f images under the row's model, negatives the same "
        f"images under the target gold standard, so FPR steps are 1/{n_f} = {100 / n_f:.2g}%: "
        f"TPR@1% FPR allows {int(0.01 * n_f)} false positive(s) and TPR@0.1% FPR is the TPR at "
        f"zero false positives. The AUC interval is a bootstrap over images (500 resamples) and "
        f"ignores the randomness of the {k} shadows and of the single target run. AUC 0.5 = the "
        f"attack cannot tell the row's model from gold on D_f.",
        (f"NeurIPS F: {nn} unlearning runs (seeds) vs {nn} gold standards (data-order seeds), "
         f"{2 * max(0, int(np.ceil(np.log(nn - 1))))} bins of width 0.5 (the cap shrinks with N); "
         f"comparable only at equal N." if nn else "NeurIPS F: not computed (--neurips-n 0)."),
    ]
    Path(path).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
