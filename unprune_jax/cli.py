"""``unprune-jax``: the command line. It parses and dispatches; the work is in ``pipeline``."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path


def _cmd_run(args) -> int:
    from . import pipeline
    from .config import load_config

    cfg = load_config(args.config, args.override)
    run_dir = Path(args.run_dir)
    if args.fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log = logging.getLogger("unprune_jax")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the terminal gets `say`'s print; the file gets the log

    def say(msg: str) -> None:
        print(msg, flush=True)
        log.info(msg)

    say(f"unprune-jax run: {' '.join(sys.argv[1:])}")
    pipeline.run(cfg, run_dir, progress=not args.no_progress, say=say)
    return 0


def _cmd_list(args) -> int:
    from . import prune, scores, unlearn
    from .data import DATASET_NAMES
    from .models import MODELS

    print("pruners:")
    for name, (_, desc) in prune.PRUNERS.items():
        print(f"  {name:<10} {desc}")
    print("scores:")
    for name, (_, desc) in scores.SCORES.items():
        print(f"  {name:<10} {desc}")
    print("unlearning methods:")
    for name, entry in unlearn.REGISTRY.items():
        print(f"  {name:<10} {entry.description}")
    print("models:")
    for name, (_, desc) in MODELS.items():
        print(f"  {name:<10} {desc}")
    print("datasets:\n  " + "\n  ".join(DATASET_NAMES))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unprune-jax",
        description="Machine unlearning on pruned networks, with un-pruning, in JAX.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "run",
        help="run (or resume) train → prune → unlearn → un-prune → gold → evaluate",
        description="Runs the pipeline; a rerun in the same --run-dir resumes at the first "
        "unfinished stage.",
    )
    r.add_argument("--config", "-c", help="TOML config file (sections data, model, train, "
                   "prune, unlearn, unprune)")
    r.add_argument("--run-dir", "-r", default="runs/demo", help="where stages and results go")
    r.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. -o prune.density=0.05 (repeatable)")
    r.add_argument("--fresh", action="store_true", help="delete --run-dir first")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.set_defaults(func=_cmd_run)
    ls = sub.add_parser("list", help="list pruners, unlearning methods, models and datasets")
    ls.set_defaults(func=_cmd_list)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"unprune-jax: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
