"""Shared plumbing of the experiment scripts: the FashionMNIST set-up, provenance, tables, figures.

Every script writes its table as CSV and markdown and its figure as PNG into one results
directory, and the markdown starts with the provenance: the command, the settings, the seeds,
the software versions and the machine, so a number can always be traced to the run that made it.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import jax

from unprune_jax import pipeline, runs
from unprune_jax.config import Config, DataConfig, ModelConfig
from unprune_jax.models import init_model

# One CPU device per core (importing JAX does not start it; this must come before it starts), so
# the trainer's 'auto' can step one run per core ('spread') as `unprune-jax run` does.
runs.use_cpu_cores()


def fashion_setup(train_size: int | None, *, split_seed: int = 0, model_seed: int = 0,
                  forget_fraction: float = 0.1, model: str = "small_cnn", data_dir=None,
                  data=None) -> pipeline.Context:
    """FashionMNIST (the Debian package's IDX files), ``train_size`` training images of which
    ``forget_fraction`` are to be forgotten, the official test set, and ``model`` at θ_0: the
    pipeline's own in-memory context (``pipeline.build_context``), so an experiment prunes the
    same leaves and splits the data exactly as ``unprune-jax run`` does."""
    cfg = Config(data=DataConfig(name="fashion_mnist", data_dir=data_dir, seed=split_seed,
                                 train_size=train_size, forget_fraction=forget_fraction),
                 model=ModelConfig(name=model, seed=model_seed))
    return pipeline.build_context(cfg, None, progress=False, say=lambda _: None, dataset=data)


def random_params(ctx: pipeline.Context):
    """A fresh draw of the model's initialiser (seed θ_0's + 1), for ``reinit='random'``."""
    params, _ = init_model(ctx.model, jax.random.PRNGKey(ctx.cfg.model.seed + 1),
                           ctx.dataset.x[:1])
    return params


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(settings: dict, seeds: dict) -> dict:
    """What made a result: command, settings, seeds, software versions, machine, date, commit."""
    import flax
    import numpy
    import optax

    return {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "settings": settings,
        "seeds": seeds,
        "versions": {"python": platform.python_version(), "jax": jax.__version__,
                     "flax": flax.__version__, "optax": optax.__version__,
                     "numpy": numpy.__version__},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "backend": jax.default_backend(),
                    "devices": [d.device_kind for d in jax.devices()]},
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": _git_commit(),
    }


def provenance_md(prov: dict) -> str:
    m = prov["machine"]
    return (
        f"Command: `{prov['command']}`  \n"
        f"Settings: `{json.dumps(prov['settings'])}`  \n"
        f"Seeds: `{json.dumps(prov['seeds'])}`  \n"
        f"Software: " + ", ".join(f"{k} {v}" for k, v in prov["versions"].items()) + "  \n"
        f"Machine: {m['cpus']} CPUs, {m['platform']}, JAX backend {m['backend']} "
        f"({', '.join(sorted(set(m['devices'])))}); {prov['date']}, commit {prov['commit']}\n"
    )


Column = tuple[str, str, str]  # (row key, markdown header, format spec)


def write_table(rows: Sequence[dict], columns: Sequence[Column], out: Path, name: str, *,
                title: str, prov: dict, notes: str = "") -> Path:
    """``name.csv`` (every key of every row) and ``name.md`` (the chosen columns, with the
    provenance above and ``notes`` below), both in ``out``. Returns the markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)

    def cell(v, fmt):
        if v is None or (isinstance(v, float) and v != v):
            return "—"
        return (format(v, fmt) if fmt else str(v)).replace("|", "\\|")  # a cell's own bars

    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k), fmt) for k, _, fmt in columns) + " |"
              for r in rows]
    text = f"# {title}\n\n{provenance_md(prov)}\n" + "\n".join(lines) + "\n"
    if notes:
        text += f"\n{notes.strip()}\n"
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.provenance.json").write_text(json.dumps(prov, indent=1) + "\n")
    return out / f"{name}.md"


def pyplot():
    """matplotlib's pyplot on the Agg backend, or a clear error if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("this experiment draws figures: pip install 'unprune_jax[experiments]'")\
            from None
    return plt


def save_figure(fig, out: Path, name: str) -> Path:
    """``out/name.png`` at a readable resolution; the figure is closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=110)
    plt.close(fig)
    return out / f"{name}.png"


def log_row(row: dict) -> None:
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
          flush=True)
