"""Cost of un-pruning: its RTE against the gold standard, with what it bought beside it.

RTE (run-time efficiency) is a method's wall time without JAX compilation divided by the gold
standard's (retrain on D_r + re-prune), as ``pipeline.evaluate`` computes it. For each
``<method> + un-prune`` row of a pipeline run this prints:

* ``un-prune RTE``: what un-pruning itself adds, the row's stage time minus the time of the
  unlearning method inside it (summed over rounds), over the gold time. **The goal (issue 7:
  ≤ 0.1) is checked on this number**: it is the cost of un-pruning as such. It includes any
  compilation of its own (none in a full run, where the stages before compiled everything; in
  a tiny `--smoke` run compilation dominates and the ratios mean nothing).
* ``row RTE``: the whole ``<method> + un-prune`` stage (un-pruning plus the method) over gold,
  and ``method RTE``: the method alone (its own row), for comparison.
* ``IoU gold`` (Jaccard of the row's mask with gold's), for the un-pruned row and for the method
  without un-pruning, and the un-pruned masks' distance travelled toward the gold side beyond
  their matched random control (``metrics.topology``; 0 = no further than the same amount of
  change at random, 1 = the whole way; '—' where the run's sides do not differ).

By default it runs ``pipeline.run`` on ``experiments/demo.toml`` into a temporary run directory;
``--set section.key=value`` overrides shrink or change it; ``--run-dir DIR`` keeps the run (and
reads ``DIR/results.json`` instead of running, if it exists).

    python benchmarks/bench_unprune_cost.py                        # the demo (minutes on a CPU)
    python benchmarks/bench_unprune_cost.py --run-dir runs/demo    # an existing run
    python benchmarks/bench_unprune_cost.py --smoke                # tiny synthetic run (seconds)
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile

from unprune_jax import checkpoint, config, pipeline

GOAL = 0.1
ROOT = pathlib.Path(__file__).resolve().parent.parent
SMOKE = [
    "data.name=synthetic", "data.val_size=64", "model.kwargs={widths = [4, 8], hidden = 16}",
    "train.epochs=1",
    "train.batch_size=64", "unlearn.methods=['FT', 'GA']",
    "unlearn.settings={FT = {epochs = 1}, GA = {epochs = 1}}", "evaluate.seeds=2",
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "experiments" / "demo.toml"))
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--run-dir", default=None,
                   help="run directory to keep (its results.json is read if present)")
    p.add_argument("--smoke", action="store_true", help="tiny synthetic pipeline, to check it runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.overrides = SMOKE + args.overrides
    return args


def cost_rows(results: dict) -> list[dict]:
    """One dict per un-pruning row of ``results`` (a pipeline results dict).

    Raises:
        ValueError: if there is no gold row or no un-pruning row, naming the rows found.
    """
    rows = {(r["kind"], r["method"]): r for r in results["rows"]}
    gold = rows.get(("gold", None))
    unpruned = [m for kind, m in rows if kind == "unprune"]
    if gold is None or not unpruned:
        raise ValueError(f"results need a gold row and un-pruning rows; got {list(rows)}")
    gold_s = gold["seconds"] - gold.get("compile_seconds", 0.0)
    out = []
    for method in unpruned:
        r, m = rows[("unprune", method)], rows.get(("baseline", method), {})
        out.append({
            "method": method,
            "unprune_rte": r.get("unprune_seconds", float("nan")) / gold_s,
            "row_rte": r["RTE"],
            "method_rte": m.get("RTE", float("nan")),
            "iou_gold": r["IoU_gold"], "iou_gold_method": m.get("IoU_gold"),
            "beyond_control": r.get("travelled_beyond_control"),
            "beyond_control_ci": r.get("travelled_beyond_control_ci"),
        })
    return out


def add_unprune_seconds(results: dict, run_dir: pathlib.Path) -> None:
    """Adds ``unprune_seconds`` (stage time minus the method's time in it, per seed) to the
    un-prune rows, from the stage metadata saved in ``run_dir``."""
    seeds = results.get("seeds", 1)
    for r in results["rows"]:
        if r["kind"] != "unprune":
            continue
        meta = checkpoint.load_meta(run_dir, f"unprune/{r['method']}")
        # Any compilation inside the method is in method_seconds; the rest is un-pruning's own.
        r["unprune_seconds"] = (meta["seconds"] - meta["method_seconds"]) / seeds


def fmt(x, spec):
    return "—" if x is None or x != x else format(x, spec)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = pathlib.Path(args.run_dir or pathlib.Path(tmp, "run"))
        if (run_dir / "results.json").is_file():
            print(f"reading {run_dir / 'results.json'} (not rerun)")
            results = checkpoint.load_json(run_dir / "results.json")
        else:
            cfg = config.load_config(args.config, args.overrides)
            print(f"running the pipeline: {args.config} {' '.join(args.overrides)} -> {run_dir}; "
                  f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
            results = pipeline.run(cfg, run_dir, progress=False, say=lambda *_: None)
        add_unprune_seconds(results, run_dir)
        rows = cost_rows(results)
    gold = next(r for r in results["rows"] if r["kind"] == "gold")
    print(f"# un-pruning cost: {results['config']['model']['name']}, "
          f"{results['config']['data']['name']}, gold {gold['seconds']:.1f} s "
          f"(compile {gold['compile_seconds']:.1f} s); machine {results.get('machine', {})}\n")
    print("| method | un-prune RTE (goal ≤ 0.1) | row RTE (method + un-prune) | method RTE | "
          "IoU gold: + un-prune / method | → gold beyond control [95% CI] |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        mark = "met" if r["unprune_rte"] <= GOAL else "not met"
        ci = r["beyond_control_ci"]
        beyond = fmt(r["beyond_control"], "+.2f") + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")
        print(f"| {r['method']} | {fmt(r['unprune_rte'], '.4f')} ({mark}) | {r['row_rte']:.3f} | "
              f"{fmt(r['method_rte'], '.3f')} | {fmt(r['iou_gold'], '.3f')} / "
              f"{fmt(r['iou_gold_method'], '.3f')} | {beyond} |")
    return rows


if __name__ == "__main__":
    main()
