"""Speed and validation of the topology test (``unprune_jax.metrics.topology``), synthetic masks.

Timing (default): S = 8 seed pairs of LeNet-300-100-sized masks (784·300 + 300·100 + 100·10 =
266,200 prunable weights, density 0.1, drawn by ``topology.synthetic_sides``), three candidate
sets (mixtures taking 20 / 50 / 80% of their entries from the gold side), their matched random
controls and a data-quantity side (drawn like the original side). It times the whole
``topology_report`` and, side by side in the same run, the two permutation nulls (ours: the
median of three calls, flattening and the distance table included) against a naive
recomputation per split of the side labels: the energy test with its distances recomputed from
the masks for every split, and the leave-one-pair-out LLR AUC with a per-mask LLR loop
(:func:`naive_llr`) refitted for every split. The naive nulls are checked to equal ours.

Validation (``--validate``): on repeated seeded draws of synthetic sides with known truth, the
rejection rate at p < 0.05 of each statistic (power when the gold side is shifted, false
positives when it is not), the distance travelled of fresh masks, randomly swapped masks and
mixtures (with the coverage of its interval), and the LLR AUC's behaviour (symmetry, null
spread at S = 8 and S = 3, equal-density sides of unequal dispersion).

    python benchmarks/bench_topology.py                 # timing, ~15 s on a 2-core CPU
    python benchmarks/bench_topology.py --validate      # validation tables, several minutes
    python benchmarks/bench_topology.py --tiny          # both, tiny (the test)
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_train_step import machine_lines  # noqa: E402

from unprune_jax.metrics import topology  # noqa: E402

LENET_LAYERS = (784 * 300, 300 * 100, 100 * 10)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=8, help="S, masks a side")
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--validate", action="store_true", help="run the validation instead")
    p.add_argument("--reps", type=int, default=200, help="validation repetitions per setting")
    p.add_argument("--units", type=int, default=4000, help="units per mask in the validation")
    p.add_argument("--coupling", type=float, default=0.5,
                   help="validation: fraction of entries a seed pair's masks draw alike")
    p.add_argument("--tiny", action="store_true",
                   help="tiny sizes: 2,000-unit masks, 4 seeds, 4 repetitions (seconds)")
    return p.parse_args(argv)


# --- timing -----------------------------------------------------------------------------------


def mixture(original, p_gold, alpha, rng):
    """Each entry from a fresh gold-side draw with probability ``alpha``, else from the original."""
    fresh = rng.random(original.shape) < p_gold
    return np.where(rng.random(original.shape) < alpha, fresh, original)


def naive_energy_null(o, g, swaps):
    """The paired Hamming energy statistic, its distances recomputed from the bits per split."""
    s, n = o.shape
    out = []
    for sw in swaps:
        a = np.where(sw[:, None], g, o)
        b = np.where(sw[:, None], o, g)
        ham = lambda u, v: np.count_nonzero(u != v) / n
        cross = np.mean([ham(a[i], b[j]) for i in range(s) for j in range(s) if i != j])
        aa = np.mean([ham(a[i], a[j]) for i in range(s) for j in range(s) if i != j])
        bb = np.mean([ham(b[i], b[j]) for i in range(s) for j in range(s) if i != j])
        out.append(2 * cross - aa - bb)
    return np.array(out)


def naive_llr(mask, y, x, leave_out):
    """One mask's Bernoulli LLR, side y over side x, keep probabilities Laplace-smoothed from
    each side without pair ``leave_out``."""
    p_y, p_x = ((np.delete(m, leave_out, axis=0).sum(0) + 1) / (len(m) + 1) for m in (y, x))
    return float(np.sum(np.where(mask, np.log(p_y / p_x), np.log((1 - p_y) / (1 - p_x)))))


def naive_llr_null(o, g, swaps):
    """The LOPO LLR AUC per split, one mask at a time."""
    out = []
    for sw in swaps:
        a = np.where(sw[:, None], g, o)
        b = np.where(sw[:, None], o, g)
        sa = np.array([naive_llr(a[i], b, a, i) for i in range(len(a))])
        sb = np.array([naive_llr(b[i], b, a, i) for i in range(len(a))])
        out.append(np.mean((sb[:, None] > sa) + 0.5 * (sb[:, None] == sa)))
    return np.array(out)


def _timed(f, repeats: int = 3):
    """Median wall seconds of ``repeats`` calls of ``f``, and its result."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def timing(args) -> dict:
    layers = (1000, 600, 400) if args.tiny else LENET_LAYERS
    n, s = sum(layers), args.seeds
    sides = topology.synthetic_sides(n, s, args.density, shift=0.3, exact_density=True, seed=0)
    o, g = sides["original"], sides["gold"]
    rng = np.random.default_rng(1)
    candidates = {f"mixture {a:.0%} gold": mixture(o, sides["p_gold"], a, rng)
                  for a in (0.2, 0.5, 0.8)}
    # a side that saw as much data as gold but kept the original's D_f: drawn like the original
    quantity = rng.random(o.shape) < sides["p_original"]
    print(f"# topology test: S = {s} seed pairs, {n:,} units in layers {list(layers)}, "
          f"density {args.density}\n")
    for line in machine_lines():
        print(f"- {line}")
    print(f"- load average before: {os.getloadavg()[0]:.2f}\n")

    t_report, report = _timed(lambda: topology.topology_report(
        o, g, None, candidates, None, quantity, layers=layers))
    t_energy, ours_e = _timed(lambda: topology.two_sample_test(o, g, layers=layers))
    t_auc, ours_a = _timed(lambda: topology.lopo_auc(o, g, layers=layers))

    swaps, exact = topology._swaps(s, 10_000, None, symmetric=True)
    assert exact
    t0 = time.perf_counter()
    naive_e = naive_energy_null(o, g, swaps)
    t_naive_e = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive_a = naive_llr_null(o, g, swaps)
    t_naive_a = time.perf_counter() - t0
    same_e = bool(np.isclose(naive_e[0], ours_e["value"]) and np.isclose(
        np.mean(naive_e >= naive_e[0] - 1e-12), ours_e["p_value"]))
    same_a = bool(np.isclose(naive_a[0], ours_a["auc"]) and np.isclose(
        np.quantile(naive_a, 0.975), ours_a["null_interval"][1]))

    print(f"| what ({len(swaps)} splits of the side labels) | ours (s) | naive (s) | "
          "naive / ours | same numbers |")
    print("|---|---:|---:|---:|---|")
    print(f"| energy test, original vs gold | {t_energy:.3g} | {t_naive_e:.3g} | "
          f"{t_naive_e / t_energy:.0f}× | {same_e} |")
    print(f"| LOPO LLR AUC with its null | {t_auc:.3g} | {t_naive_a:.3g} | "
          f"{t_naive_a / t_auc:.0f}× | {same_a} |")
    print(f"| whole topology_report: sides, {len(candidates)} candidates, their controls, "
          f"quantity side | {t_report:.3g} | — | — | — |\n")
    print(topology.format_topology_table(report))
    print()
    return {"report_seconds": t_report, "energy_seconds": t_energy, "auc_seconds": t_auc,
            "naive_energy_seconds": t_naive_e, "naive_auc_seconds": t_naive_a,
            "same_energy": same_e, "same_auc": same_a, "report": report}


# --- validation ---------------------------------------------------------------------------------


def _sides(args, rep, seeds=None, **kw):
    return topology.synthetic_sides(args.units, seeds or args.seeds, args.density,
                                    pair_coupling=args.coupling, seed=10_000 + rep, **kw)


def _swap(masks, fraction, rng):
    """Each mask with ``fraction`` of its kept entries swapped for pruned ones, at random."""
    target = masks.copy()
    for t in target:
        kept, pruned = np.flatnonzero(t), np.flatnonzero(~t)
        k = int(round(fraction * len(kept)))
        t[rng.choice(kept, k, replace=False)] = False
        t[rng.choice(pruned, k, replace=False)] = True
    return target


def validate(args) -> dict:
    reps, s = args.reps, args.seeds
    print(f"# topology test validation: S = {s}, {args.units:,} units, density {args.density}, "
          f"{reps} seeded repetitions per setting, pair coupling {args.coupling}\n")
    results = {}

    # (b) power and false positives
    stats_ = {"energy, hamming": lambda o, g: topology.two_sample_test(o, g)["p_value"],
              "energy, jaccard": lambda o, g: topology.two_sample_test(
                  o, g, distance="jaccard")["p_value"],
              "energy, euclidean": lambda o, g: topology.two_sample_test(
                  o, g, distance="euclidean")["p_value"],
              "energy, hamming, unpaired": lambda o, g: topology.two_sample_test(
                  o, g, paired=False, permutations=2000)["p_value"],
              "LOPO LLR AUC": lambda o, g: topology.lopo_auc(o, g)["p_value"]}
    shifts = (0.0, 0.1, 0.2, 0.3)
    power = {name: {} for name in stats_}
    for shift in shifts:
        pv = {name: [] for name in stats_}
        for rep in range(reps):
            sd = _sides(args, rep, shift=shift)
            for name, f in stats_.items():
                pv[name].append(f(sd["original"], sd["gold"]))
        for name in stats_:
            power[name][shift] = float(np.mean(np.array(pv[name]) < 0.05))
    print("(b) rejection rate at p < 0.05 (shift 0: false positives; else power)\n")
    print("| statistic | " + " | ".join(f"shift {x}" for x in shifts) + " |")
    print("|---|" + "---:|" * len(shifts))
    for name, row in power.items():
        print(f"| {name} | " + " | ".join(f"{row[x]:.3f}" for x in shifts) + " |")
    results["power"] = power

    # (a) equal density, unequal dispersion; (d) swaps; (c) mixtures
    rng = np.random.default_rng(0)
    rows = {}

    def record(key, value, truth=None, ci=None):
        r = rows.setdefault(key, {"values": [], "covered": []})
        r["values"].append(value)
        if truth is not None and ci is not None:
            r["covered"].append(ci[0] <= truth <= ci[1])

    settings = [("shift 0.3", dict(shift=0.3)),
                ("equal density, gold flatter", dict(sharpness=(3.0, 1.0))),
                ("equal density, original flatter", dict(sharpness=(1.0, 3.0)))]
    for label, kw in settings:
        for rep in range(reps):
            sd = _sides(args, rep, **kw)
            o, g = sd["original"], sd["gold"]
            cands = {"fresh original-side masks": (rng.random(o.shape) < sd["p_original"], 0.0),
                     "fresh gold-side masks": (rng.random(o.shape) < sd["p_gold"], 1.0),
                     "original, 30% of kept swapped at random": (_swap(o, 0.3, rng), 0.0),
                     "original, 60% of kept swapped at random": (_swap(o, 0.6, rng), 0.0)}
            for a in (0.25, 0.5, 0.75):
                cands[f"mixture α = {a}"] = (mixture(o, sd["p_gold"], a, rng), a)
            for name, (c, truth) in cands.items():
                t = topology.distance_travelled(o, g, c)
                record((label, name), t["mean"], truth, t["ci"])
            # the old yardstick on the 30%-swapped originals: one mask's LLR, normalised so that
            # the sides' mean leave-one-pair-out scores sit at 0 and 1, averaged over pairs
            sw = cands["original, 30% of kept swapped at random"][0]
            sides = topology.lopo_auc(o, g, permutations=1)
            lo, hi = np.mean(sides["x_scores"]), np.mean(sides["y_scores"])
            old = [(naive_llr(sw[i], g, o, i) - lo) / (hi - lo) for i in range(s)]
            record((label, "old normalised LLR of the 30%-swapped originals"), float(np.mean(old)))
            if label != "shift 0.3":
                record((label, "energy test rejects (p < 0.05)"),
                       float(topology.two_sample_test(o, g)["p_value"] < 0.05))
                record((label, "LOPO LLR AUC"), topology.lopo_auc(o, g)["auc"])
    print("\n(a, c, d) distance travelled (0 = original side, 1 = gold side) over the "
          "repetitions: median, the central 50%, the mean, and how often its 95% interval covers "
          "the truth\n")
    print("| sides | candidate set | median | 25–75% | mean | interval covers truth |")
    print("|---|---|---:|---|---:|---:|")
    results["travelled"] = {}
    for (label, name), r in rows.items():
        v = np.array(r["values"], float)
        q1, med, q3 = np.nanquantile(v, [0.25, 0.5, 0.75])
        cov = float(np.mean(r["covered"])) if r["covered"] else None
        print(f"| {label} | {name} | {med:+.3f} | {q1:+.3f} … {q3:+.3f} | {np.nanmean(v):+.3f} | "
              f"{'—' if cov is None else f'{cov:.2f}'} |")
        results["travelled"][f"{label} / {name}"] = {
            "median": float(med), "quartiles": [float(q1), float(q3)],
            "mean": float(np.nanmean(v)), "coverage": cov}

    # the LLR AUC: symmetry and its spread under the null
    print("\nLOPO LLR AUC with no difference between the sides (shift 0)\n")
    print("| S | mean AUC | SD over repetitions | P(AUC ≤ 0.16) | P(AUC ≤ 0.33) | mean "
          "permutation null interval | symmetric in the sides |")
    print("|---:|---:|---:|---:|---:|---|---|")
    auc_null = {}
    for seeds in sorted({s, 3}, reverse=True):
        aucs, los, his, sym = [], [], [], []
        for rep in range(reps):
            sd = _sides(args, rep, seeds=seeds)
            r = topology.lopo_auc(sd["original"], sd["gold"])
            aucs.append(r["auc"])
            los.append(r["null_interval"][0])
            his.append(r["null_interval"][1])
            if rep < 20:
                sym.append(topology.lopo_auc(sd["gold"], sd["original"])["auc"] == r["auc"])
        aucs = np.array(aucs)
        auc_null[seeds] = {"mean": float(aucs.mean()), "sd": float(aucs.std()),
                           "p_le_016": float(np.mean(aucs <= 0.16)),
                           "p_le_033": float(np.mean(aucs <= 0.33)),
                           "null_interval": [float(np.mean(los)), float(np.mean(his))],
                           "symmetric": bool(all(sym))}
        a = auc_null[seeds]
        print(f"| {seeds} | {a['mean']:.3f} | {a['sd']:.3f} | {a['p_le_016']:.3f} | "
              f"{a['p_le_033']:.3f} | [{a['null_interval'][0]:.2f}, {a['null_interval'][1]:.2f}]"
              f" | {a['symmetric']} |")
    results["auc_null"] = auc_null
    print()
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.tiny:
        args.seeds, args.reps, args.units = min(args.seeds, 4), min(args.reps, 4), 2000
    out = {}
    if args.tiny or not args.validate:
        out["timing"] = timing(args)
    if args.tiny or args.validate:
        out["validation"] = validate(args)
    return out


if __name__ == "__main__":
    main()
