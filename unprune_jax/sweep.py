"""K pipelines as one run: forget-set sizes (or split seeds) side by side.

Each variant of the config is an ordinary pipeline run (its own run directory, checkpoints and
results, so it resumes like any run). :func:`run_sweep` builds one context per variant and hands
them to :func:`pipeline.run_contexts`, which batches the variants' sides (the pruning runs over
seeds on D, D_r and the quantity control) into one ``prune.run_many`` call per side kind, the
identical ones (the original side of a forget-fraction sweep, which does not depend on the forget
set) computed once, and then runs each variant's candidates (every unlearner, plain and
un-pruned, batched over the variant's seeds) and evaluation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import checkpoint as ckpt
from . import pipeline, report
from .config import Config, from_dict
from .data import load_dataset
from .train import Trainer


def variants(cfg: Config, *, forget_fractions: Sequence[float] | None = None,
             seeds: Sequence[int] | None = None) -> list[tuple[str, Config]]:
    """``(label, config)`` per variant: every forget fraction × split seed (``data.seed``)."""
    if forget_fractions is None and seeds is None:
        raise ValueError("a sweep varies forget_fractions, seeds or both; got neither")
    for name, values in (("forget_fractions", forget_fractions), ("seeds", seeds)):
        if values is not None and not len(values):
            raise ValueError(f"{name} is empty")
        if values is not None and len(set(values)) != len(values):
            raise ValueError(f"{name} repeat: {list(values)}")
    for f in forget_fractions or ():
        if not 0.0 < float(f) < 1.0:
            raise ValueError(f"forget fraction must be in (0, 1), got {f!r}")
    if forget_fractions is not None and cfg.data.forget_classes:
        raise ValueError("a forget-fraction sweep needs data.forget_classes unset")
    d = cfg.to_dict()["data"]
    out = []
    for f in forget_fractions if forget_fractions is not None else [None]:
        for seed in seeds if seeds is not None else [None]:
            dv, parts = dict(d), []
            if f is not None:
                dv["forget_fraction"] = float(f)
                parts.append(f"forget{float(f):g}")
            if seed is not None:
                dv["seed"] = int(seed)
                parts.append(f"seed{int(seed)}")
            out.append(("_".join(parts),
                        dataclasses.replace(cfg, data=from_dict(type(cfg.data), dv, where="data"))))
    return out


@ckpt.with_run_dir_lock
def run_sweep(cfg: Config, run_dir: str | Path, *, forget_fractions=None, seeds=None,
              strategy: str = "auto", progress: bool = True,
              say: Callable[[str], None] = print) -> dict:
    """Runs the pipeline for K variants of ``cfg`` as one run; one results table.

    Each variant runs in ``run_dir/<label>`` (``forget0.05``, ``seed3``, ...) and is a complete,
    resumable pipeline run. ``strategy`` is how the batched loops run (``runs`` strategies).
    Writes ``run_dir/sweep.json`` and ``sweep.md`` (every variant's rows in one table). The
    sweep holds ``run_dir``'s lock, each variant its own directory's.
    """
    trainer = Trainer(strategy=strategy, progress=progress)
    vs = variants(cfg, forget_fractions=forget_fractions, seeds=seeds)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(cfg.data.name, cfg.data.data_dir)
    say(f"sweep: {len(vs)} variants ({', '.join(label for label, _ in vs)}), strategy {strategy}")
    t0 = time.perf_counter()

    def tagged(label: str) -> Callable[[str], None]:
        return lambda msg: say("\n".join(f"[{label}] {line}" for line in str(msg).splitlines()))

    trainer.keep_plans_in(run_dir)  # before the variants': one record of the plans, here
    with contextlib.ExitStack() as held:
        for label, _ in vs:
            held.enter_context(ckpt.lock_run_dir(run_dir / label))
        ctxs = [pipeline.build_context(vcfg, run_dir / label, say=tagged(label),
                                       dataset=dataset, trainer=trainer) for label, vcfg in vs]
        results = dict(zip((label for label, _ in vs), pipeline.run_contexts(ctxs)))
    rows = [{"variant": label, **{k: v for k, v in row.items() if k != "mask_metrics"}}
            for label, _ in vs for row in results[label]["rows"]]
    summary = {
        "variants": [label for label, _ in vs],
        "strategy": strategy,
        "rows": rows,
        "IoU_original_gold": {label: r["IoU_original_gold"] for label, r in results.items()},
        "noise_floor": {label: r["noise_floor"] for label, r in results.items()},
        "calibrations": trainer.calibrations,
        "total_seconds": time.perf_counter() - t0,
    }
    ckpt.save_json(run_dir / "sweep.json", summary)
    table = report.format_table(rows, first=("variant", "variant"))
    lines = [f"{label}: IoU(original, gold) = {v:.4f}"
             for label, v in summary["IoU_original_gold"].items()]
    text = (f"# Sweep\n\n{table}\n\n" + "\n".join(lines) +
            f"\n\n{summary['total_seconds']:.0f} s in all\n")
    (run_dir / "sweep.md").write_text(text)
    say("\n" + text + f"\nsweep results in {run_dir / 'sweep.md'}")
    return summary
