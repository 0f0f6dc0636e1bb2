"""``unprune-jax``: the command line. It parses and dispatches; the work is in ``pipeline`` and
``report``.

Subcommands: ``run`` (one pipeline run, resumable), ``sweep`` (K forget-set sizes or seeds as
one batched run), ``report`` (markdown report over finished runs), ``list`` (what can be named
in a config), ``prepare`` (a TFDS dataset, once, from the internet or a local archive). Every
name a user types (subcommand, list category, strategy, config key, pruner, method, model,
dataset) is checked, and an unknown one gets the closest valid name in the error.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
from pathlib import Path

from .models import MODELS
from .prune import PRUNERS
from .registry import Registry, closest_name, unknown_name_error
from .runs import STRATEGIES
from .scores import SCORES
from .unlearn import REGISTRY as UNLEARNERS
from .unprune import REGROW_SCORES, REINITS, REPRUNE_SCORES, VARIANTS

#: What ``unprune-jax list`` prints: category → its registries (one per setting for the
#: un-pruning options).
LISTED: dict[str, tuple[Registry, ...]] = {
    "pruners": (PRUNERS,),
    "scores": (SCORES,),
    "unlearners": (UNLEARNERS,),
    "models": (MODELS,),
    "unprune_options": (VARIANTS, REGROW_SCORES, REINITS, REPRUNE_SCORES),
    "strategies": (STRATEGIES,),
}
LIST_CATEGORIES = (*LISTED, "datasets")


class _Parser(argparse.ArgumentParser):
    """argparse with a closest-name hint on an invalid choice (subcommand, list category)."""

    def error(self, message):
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            valid = re.findall(r"'([^']*)'", m.group(2))
            close = closest_name(m.group(1), valid)
            if close:
                message += f". Did you mean {close!r}?"
        super().error(message)


_HELP_FORMAT = argparse.RawDescriptionHelpFormatter


# --- logging to the run directory -------------------------------------------------------------


@contextlib.contextmanager
def _run_log(run_dir: Path, command: str):
    """Yields ``say``: it prints and appends to ``run_dir/log.txt``.

    The file also gets the library's own log records (checkpoint notes), every warning, and the
    error that ends a failed run. The handlers are removed on exit, so calls in one process (the
    tests) never write into each other's files.
    """
    handler = logging.FileHandler(run_dir / "log.txt", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log = logging.getLogger("unprune_jax")
    old_level, old_propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the terminal gets `say`'s print; the file gets the log
    # warnings reach the terminal as usual and the file as log records
    wlog = logging.getLogger("py.warnings")
    terminal = logging.StreamHandler(sys.stderr)
    wlog.addHandler(handler)
    wlog.addHandler(terminal)
    logging.captureWarnings(True)

    def say(msg: str) -> None:
        print(msg, flush=True)
        log.info(msg)

    try:
        say(f"unprune-jax {command}")
        yield say
    except BaseException as e:
        log.info(f"error: {type(e).__name__}: {e}")
        raise
    finally:
        logging.captureWarnings(False)
        for lg, hs in ((log, (handler,)), (wlog, (handler, terminal))):
            for h in hs:
                lg.removeHandler(h)
        log.setLevel(old_level)
        log.propagate = old_propagate
        handler.close()


def _prepare_run_dir(path: str, fresh: bool, command: str):
    """A context holding the run directory's lock (made, with its marker, if new); ``fresh``
    empties it first, but only a directory unprune-jax made (see ``checkpoint.lock_run_dir``)."""
    from .checkpoint import lock_run_dir

    return lock_run_dir(Path(path), command, fresh=fresh)


# --- subcommands ------------------------------------------------------------------------------


def _in_run_dir(args, name: str, body) -> int:
    """Loads the config and calls ``body(cfg, run_dir, say)`` inside the locked, logged run
    directory (``run`` and ``sweep``)."""
    from .config import load_config
    from .runs import use_cpu_cores

    use_cpu_cores(args.cpu_devices)  # refuses a count XLA_FLAGS or an earlier start contradicts
    cfg = load_config(args.config, args.override)
    command = f"{name}: {' '.join(args.argv)}"
    with (_prepare_run_dir(args.run_dir, args.fresh, command) as run_dir,
          _run_log(run_dir, command) as say):
        body(cfg, run_dir, say)
    return 0


def _cmd_run(args) -> int:
    from . import pipeline
    from .train import Trainer

    return _in_run_dir(args, "run", lambda cfg, run_dir, say: pipeline.run(
        cfg, run_dir, progress=not args.no_progress, say=say,
        trainer=Trainer(strategy=args.strategy, progress=not args.no_progress)))


def _cmd_sweep(args) -> int:
    from .sweep import run_sweep

    return _in_run_dir(args, "sweep", lambda cfg, run_dir, say: run_sweep(
        cfg, run_dir, forget_fractions=args.forget_fractions, seeds=args.seeds,
        strategy=args.strategy, progress=not args.no_progress, say=say))


def _cmd_report(args) -> int:
    from .report import write_report

    out = write_report(args.run_dirs, args.out)
    print(f"report written to {out}")
    return 0


def _cmd_prepare(args) -> int:
    from .data.prepare import prepare_tfds

    print(prepare_tfds(args.name, args.data_dir, source=args.source,
                       progress=not args.no_progress).summary())
    return 0


def list_entries(category: str) -> dict[str, str]:
    """``{name: one-line description}`` of everything in ``category`` (see ``LIST_CATEGORIES``).

    A category of several registries (``unprune_options``) names each entry as its config
    setting, ``regrow_score=dense``.
    """
    if category == "datasets":
        from .data import DATASETS

        return DATASETS.describe()
    if category not in LISTED:
        raise unknown_name_error("list category", category, LIST_CATEGORIES)
    registries = LISTED[category]
    if len(registries) == 1:
        return registries[0].describe()
    return {f"{reg.kind.rpartition('.')[2]}={name}": description
            for reg in registries for name, description in reg.describe().items()}


def _cmd_list(args) -> int:
    for category in args.categories or LIST_CATEGORIES:
        entries = list_entries(category)
        width = max(len(n) for n in entries)
        print(f"{category}:")
        for name, desc in entries.items():
            print(f"  {name:<{width}}  {desc}")
    return 0


# --- argument types ---------------------------------------------------------------------------


def _number_list(kind, check):
    """An argparse type for a comma-separated list of distinct ``kind`` values passing ``check``
    (which returns None or what is wrong with a value)."""

    def parse(text: str):
        out = []
        for item in text.split(","):
            try:
                value = kind(item.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{item.strip()!r} in {text!r} is not a {kind.__name__}") from None
            problem = check(value)
            if problem:
                raise argparse.ArgumentTypeError(f"{item.strip()} {problem}")
            out.append(value)
        if len(set(out)) != len(out):
            raise argparse.ArgumentTypeError(f"{text!r} repeats a value")
        return tuple(out)

    return parse


def _strategy(text: str) -> str:
    try:
        return STRATEGIES.check(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _category(text: str) -> str:
    if text not in LIST_CATEGORIES:
        raise argparse.ArgumentTypeError(str(unknown_name_error("category", text,
                                                                LIST_CATEGORIES)))
    return text


def _add_config_args(p: argparse.ArgumentParser, default_dir: str) -> None:
    p.add_argument("--config", "-c", help="TOML config file (sections data, model, train, "
                   "prune, unlearn, unprune, evaluate); defaults without one")
    p.add_argument("--run-dir", "-r", default=default_dir,
                   help=f"where stages, results and log.txt go (default {default_dir})")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, TOML syntax, e.g. -o prune.density=0.05 "
                   "(repeatable)")
    p.add_argument("--fresh", action="store_true", help="delete --run-dir first")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--cpu-devices", type=_positive_int, default=None, metavar="N",
                   help="CPU devices JAX makes, so strategy spread can step one run per core "
                   "(default: one per core, or the count XLA_FLAGS sets; an N that XLA_FLAGS "
                   "contradicts is refused; the CPU only: GPUs and TPUs are their own devices)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(
        prog="unprune-jax",
        description="Machine unlearning on pruned networks, with un-pruning, in JAX.",
        epilog="examples:\n"
               "  unprune-jax run -c experiments/demo.toml -r runs/demo\n"
               "  unprune-jax report runs/demo runs/sfp -o report.md\n"
               "  unprune-jax list unlearners\n"
               "Each subcommand has its own --help.",
        formatter_class=_HELP_FORMAT,
    )
    p.add_argument("--version", action="version", version=f"unprune-jax {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{run,sweep,report,list,prepare}",
                           parser_class=_Parser)

    r = sub.add_parser(
        "run",
        help="run (or resume) train → prune → unlearn → un-prune → gold → evaluate",
        description="Runs the pipeline; a rerun in the same --run-dir resumes at the first "
        "unfinished stage. Everything printed also goes to RUN_DIR/log.txt; the results to "
        "RUN_DIR/results.md and results.json.",
        epilog="example:\n"
               "  unprune-jax run -c experiments/demo.toml -r runs/demo -o prune.density=0.05\n"
               "  unprune-jax run -r runs/tiny -o data.name=synthetic -o train.epochs=1 --fresh",
        formatter_class=_HELP_FORMAT,
    )
    _add_config_args(r, "runs/demo")
    r.add_argument("--strategy", default="auto", type=_strategy, metavar="STRATEGY",
                   help="how the S seeds' runs are batched (see `sweep --help`; default auto, "
                   "timed once per run directory and kept in RUN_DIR/plans.json; a named one "
                   "makes two fresh runs agree to the last bit, not only to float rounding)")
    r.set_defaults(func=_cmd_run)

    s = sub.add_parser(
        "sweep",
        help="K forget-set sizes and/or seeds as one batched run",
        description="Runs the pipeline for every forget fraction × seed, batched as --strategy "
        "says (sweep.run_sweep). Strategies:\n" + "\n".join(
            f"  {k:<6} {v}" for k, v in STRATEGIES.describe().items()),
        epilog="example:\n"
               "  unprune-jax sweep -c experiments/demo.toml -r runs/sweep \\\n"
               "      --forget-fractions 0.01,0.05,0.1 --seeds 0,1,2 --strategy auto",
        formatter_class=_HELP_FORMAT,
    )
    _add_config_args(s, "runs/sweep")
    s.add_argument("--forget-fractions", metavar="F1,F2,...",
                   type=_number_list(float, lambda f: None if 0 < f < 1 else "is not in (0, 1)"),
                   help="forget-set sizes as fractions of the training set, e.g. 0.01,0.05,0.1")
    s.add_argument("--seeds", metavar="S1,S2,...",
                   type=_number_list(int, lambda v: None if v >= 0 else "is < 0"),
                   help="split seeds (data.seed: which examples are held out and which are "
                   "forgotten), e.g. 0,1,2; with --forget-fractions, every combination")
    s.add_argument("--strategy", default="auto", type=_strategy, metavar="STRATEGY",
                   help="one of the strategies above (default auto)")
    s.set_defaults(func=_cmd_sweep)

    rep = sub.add_parser(
        "report",
        help="one markdown report (tables, figures) over finished runs",
        description="Reads RUN_DIR/config.json and results.json of every run (a directory "
        "without results.json stands for its subdirectories that have one, e.g. a sweep's), "
        "writes one markdown file with each run's settings and results, a comparison table "
        "and figures (PNG files next to it).",
        epilog="example:\n  unprune-jax report runs/demo runs/sfp -o reports/omp_vs_sfp.md",
        formatter_class=_HELP_FORMAT,
    )
    rep.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories")
    rep.add_argument("-o", "--out", default="report.md", metavar="OUT.md",
                     help="the markdown file to write (default report.md)")
    rep.set_defaults(func=_cmd_report)

    ls = sub.add_parser(
        "list",
        help="list pruners, scores, unlearning methods, models, datasets, un-pruning options and "
        "K-run strategies",
        description="Names you can use in a config, each with a one-line description. "
        f"Categories: {', '.join(LIST_CATEGORIES)} (default: all).",
        epilog="example:\n  unprune-jax list unlearners models",
        formatter_class=_HELP_FORMAT,
    )
    ls.add_argument("categories", nargs="*", type=_category, metavar="CATEGORY",
                    help=f"any of {', '.join(LIST_CATEGORIES)}")
    ls.set_defaults(func=_cmd_list)

    pr = sub.add_parser(
        "prepare",
        help="prepare a TFDS dataset once (download it, or --from a local copy)",
        description="Prepares a TensorFlow Datasets dataset as array_record files, the format "
        "the library reads (data.name = 'tfds:NAME'), with TFDS's own builder. Without --from "
        "it downloads the data; with --from it reads a local copy of the official archive: "
        "CIFAR-10's or CIFAR-100's binary or python .tar.gz, or for imagenet2012 the directory "
        "holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar. Ends with a summary "
        "(examples per split, size, where).",
        epilog="examples:\n"
               "  unprune-jax prepare cifar10\n"
               "  unprune-jax prepare cifar10 --from cifar-10-python.tar.gz --data-dir /data/tfds\n"
               "  unprune-jax prepare imagenet2012 --from /data/imagenet --data-dir /data/tfds",
        formatter_class=_HELP_FORMAT,
    )
    pr.add_argument("name", metavar="NAME", help="TFDS dataset name: cifar10, cifar100, "
                    "imagenet2012, ... (a tfds: prefix is accepted)")
    pr.add_argument("--from", dest="source", metavar="ARCHIVE",
                    help="a local copy of the official archive (or ImageNet's manual directory)")
    pr.add_argument("--data-dir", help="TFDS data dir to prepare into (default $TFDS_DATA_DIR or "
                    "~/tensorflow_datasets); give the same as data.data_dir in the config")
    pr.add_argument("--no-progress", action="store_true", help="no progress bars")
    pr.set_defaults(func=_cmd_prepare)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"unprune-jax: error: {e}", file=sys.stderr)
        return 2
    except (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError) as e:
        what = {PermissionError: "permission denied (a read-only file or directory?)",
                NotADirectoryError: "a part of this path is a file, not a directory",
                IsADirectoryError: "it is a directory, not a file",
                FileExistsError: "it exists and is not a directory"}[type(e)]
        print(f"unprune-jax: error: cannot use {e.filename or e}: {what}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
