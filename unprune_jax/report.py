"""One markdown report over finished pipeline runs: settings, tables and figures.

:func:`write_report` reads each run directory's ``config.json`` and ``results.json`` (written by
``pipeline.run``) and writes

- per run: the resolved key settings, the results table and the summary lines;
- across runs: a comparison table (method × run: UA, RA, TA, IoU to gold, ΔJ, RTE);
- two figures, PNG files next to the markdown: the un-pruning gain ΔJ per method and run as
  grouped bars against each run's seed noise-floor band, and UA against IoU to the gold mask.

The figures need matplotlib (the ``experiments`` extra); without it the report has its tables
and says that the figures were skipped.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from .metrics.topology import format_topology_table

__all__ = ["write_report", "load_runs", "comparison_table", "format_table", "summary_lines",
           "label", "noise_floor_delta_j", "delta_j_figure", "ua_iou_figure"]

#: Row kinds of a pipeline result, in table order.
KINDS = ("dense", "original", "baseline", "unprune", "gold")
_FIXED_LABELS = {"dense": "dense (scored by the pruner)", "original": "original (pruned on D)",
                 "gold": "gold (retrain + re-prune)"}
_UNPRUNE_SUFFIX = " + un-prune"


def label(row: dict) -> str:
    """A result row's display name, from its ``kind`` and ``method`` (rows of results files
    written before rows had kinds carry their name in ``model``)."""
    if "kind" not in row:
        return row["model"]
    if row["kind"] in _FIXED_LABELS:
        return _FIXED_LABELS[row["kind"]]
    return row["method"] + (_UNPRUNE_SUFFIX if row["kind"] == "unprune" else "")


def _kind(row: dict) -> tuple[str, str | None]:
    """``(kind, method)`` of a row, also for rows of older results files."""
    if "kind" in row:
        return row["kind"], row.get("method")
    name = row["model"]
    for kind, text in _FIXED_LABELS.items():
        if name == text:
            return kind, None
    if name.endswith(_UNPRUNE_SUFFIX):
        return "unprune", name[: -len(_UNPRUNE_SUFFIX)]
    return "baseline", name


# --- the results table -----------------------------------------------------------------------


def format_table(rows: list[dict], first: tuple[str, str] | None = None) -> str:
    """Markdown table of pipeline result rows (percentages for accuracies; '—' where a value is
    missing or undefined, e.g. in an older run's results).

    ``first = (key, header)`` adds a leading column (the sweep's variant label).
    """

    def num(key, fmt, scale=1.0):
        x = r.get(key)
        return "—" if x is None or x != x else format(scale * x, fmt)

    columns = (("UA", ".2f", 100), ("RA", ".2f", 100), ("TA", ".2f", 100), ("MIA", ".2f", 100),
               ("travelled_beyond_control", "+.2f"), ("p_vs_gold", ".3f"),
               ("IoU_gold", ".4f"), ("IoU_gold_corrected", ".4f"), ("delta_J", "+.4f"),
               ("corrected_fraction", ".3f"),
               ("JS_gold_forget", ".4f"), ("weight_distance_gold", ".2f"), ("seconds", ".1f"),
               ("compile_seconds", ".1f"), ("RTE", ".2f"))
    head = ("| model | UA % | RA % | TA % | MIA % | → gold beyond control | p vs gold | IoU gold | "
            "J* gold | ΔJ | corrected | JS D_f | ‖θ−θ_gold‖ | time s | compile s "
            "| RTE |")
    lead = f"| {first[1]} " if first else ""
    lines = [lead + head, "|" + "---|" * (len(columns) + 1 + bool(first))]
    for r in rows:
        flag = " (diverged)" if r.get("diverged") else ""
        cells = [f"{label(r)}{flag}"] + [num(*c) for c in columns]
        lines.append((f"| {r[first[0]]} " if first else "") + "| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_lines(results: dict) -> str:
    """The run's headline numbers under the table: IoU(original, gold), the seed noise floor,
    the topology test."""
    lines = [f"IoU(original mask, gold mask) = {results['IoU_original_gold']:.4f}"]
    if results.get("filter_IoU_original_gold") is not None:
        lines.append("filter-level IoU(original, gold) = "
                     f"{results['filter_IoU_original_gold']:.4f}")
    floor = results.get("noise_floor")
    if floor:
        j = floor["jaccard"]
        lines.append(f"noise floor: IoU between gold masks of {floor['pairs']} seed pairs = "
                     f"{j['mean']:.4f} ± {j['std']:.4f} (min {j['min']:.4f}, max {j['max']:.4f})")
    if results.get("topology"):
        lines += ["", format_topology_table(results["topology"])]
    return "\n".join(lines)


# --- loading ----------------------------------------------------------------------------------


def _expand(run_dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """Run directories; one without ``results.json`` stands for its subdirectories that have
    one (a sweep's), in sorted order."""
    out = []
    for d in run_dirs:
        d = Path(d)
        if not d.is_dir():
            raise FileNotFoundError(f"run directory {str(d)!r} does not exist")
        if (d / "results.json").is_file():
            out.append(d)
            continue
        subs = sorted(p.parent for p in d.glob("*/results.json"))
        if not subs:
            raise FileNotFoundError(
                f"{str(d)!r} has no results.json (nor any subdirectory with one): is the run "
                f"finished? `unprune-jax run -r {d}` resumes it")
        out.extend(subs)
    if not out:
        raise ValueError("no run directories given")
    return out


def _labels(dirs: list[Path]) -> list[str]:
    """Short distinct labels: the directory names, or paths below the common parent when names
    repeat."""
    names = [d.name or str(d) for d in dirs]
    if len(set(names)) == len(names):
        return names
    resolved = [d.resolve() for d in dirs]
    common = Path(os.path.commonpath(resolved))
    return [str(r.relative_to(common)) or r.name for r in resolved]


def load_runs(run_dirs: Sequence[str | os.PathLike]) -> list[dict]:
    """``[{'dir', 'label', 'config', 'results'}]`` for every run (see :func:`write_report`).

    Raises:
        FileNotFoundError: naming a directory that is missing or holds no finished run.
        ValueError: naming a results file that is not a pipeline result.
    """
    dirs = _expand(run_dirs)
    runs = []
    for d, label in zip(dirs, _labels(dirs)):
        path = d / "results.json"
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
            raise ValueError(f"{path} has no 'rows' list: not a results file of pipeline.run")
        cfg_path = d / "config.json"
        config = (json.loads(cfg_path.read_text()) if cfg_path.is_file()
                  else results.get("config", {}))
        runs.append({"dir": d, "label": label, "config": config, "results": results})
    return runs


# --- tables -----------------------------------------------------------------------------------


def _num(x, fmt: str, scale: float = 1.0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return format(scale * x, fmt)


def comparison_table(runs: list[dict]) -> str:
    """Method × run: one line per (model row, run), grouped by model row in first-seen order."""
    order: list[str] = []
    for run in runs:
        for r in run["results"]["rows"]:
            if label(r) not in order:
                order.append(label(r))
    lines = ["| model | run | UA % | RA % | TA % | IoU gold | ΔJ | RTE |",
             "|---|---|---|---|---|---|---|---|"]
    for name in order:
        for run in runs:
            row = next((r for r in run["results"]["rows"] if label(r) == name), None)
            if row is None:
                continue
            lines.append(
                f"| {name} | {run['label']} | {_num(row.get('UA'), '.2f', 100)} | "
                f"{_num(row.get('RA'), '.2f', 100)} | {_num(row.get('TA'), '.2f', 100)} | "
                f"{_num(row.get('IoU_gold'), '.4f')} | {_num(row.get('delta_J'), '+.4f')} | "
                f"{_num(row.get('RTE'), '.2f')} |")
    return "\n".join(lines)


def noise_floor_delta_j(results: dict) -> tuple[float, float] | None:
    """The seed noise floor on the ΔJ scale: (mean, std) of J(gold_a, gold_b) − J(original, gold).

    A mask with this ΔJ is as close to the gold mask as a gold mask of another data-order seed
    is: un-pruning cannot be asked to do better. None when the run had no noise floor (S = 1).
    """
    floor = results.get("noise_floor")
    if not floor:
        return None
    j = floor["jaccard"]
    return j["mean"] - results["IoU_original_gold"], j["std"]


def _settings(run: dict) -> str:
    c, res = run["config"], run["results"]
    d, m, p = c.get("data", {}), c.get("model", {}), c.get("prune", {})
    u, un = c.get("unlearn", {}), c.get("unprune", {})
    split = res.get("split", {})
    forget = (f"classes {d['forget_classes']}" if d.get("forget_classes")
              else f"fraction {d.get('forget_fraction')}")
    kwargs = f" {m['kwargs']}" if m.get("kwargs") else ""
    machine = res.get("machine", {})
    lines = [
        f"- run directory: `{run['dir']}`",
        f"- dataset: {d.get('name')} (split seed {d.get('seed')}): train {split.get('train')}, "
        f"retain {split.get('retain')}, forget {split.get('forget')}, test {split.get('test')}",
        f"- forget set: {forget}",
        f"- model: {m.get('name')}{kwargs} (θ_0 seed {m.get('seed')})",
        f"- pruner: {p.get('method')}, density {p.get('density')}, {p.get('scope')}, "
        f"{p.get('granularity')} granularity",
        f"- training: {c.get('train', {}).get('epochs')} epochs, lr {c.get('train', {}).get('lr')}"
        f", batch {c.get('train', {}).get('batch_size')}",
        f"- unlearning methods: {', '.join(u.get('methods', []))}",
        f"- un-pruning: p_θ {un.get('fraction')}, {un.get('rounds')} round(s), regrow by "
        f"{un.get('regrow_score')}, re-init {un.get('reinit')}, re-prune by "
        f"{un.get('reprune_score')}",
        f"- seeds for the noise floor and topology test: {c.get('evaluate', {}).get('seeds')}",
    ]
    if machine:
        lines.append(f"- machine: {machine.get('backend')} backend, "
                     f"{len(machine.get('devices', []))} device(s), jax {machine.get('jax')}; "
                     f"total {_num(res.get('total_seconds'), '.1f')} s")
    return "\n".join(lines)


def _summary(results: dict) -> str:
    try:
        return summary_lines(results)
    except (KeyError, TypeError):  # a results file of an older version: the headline only
        return f"IoU(original mask, gold mask) = {_num(results.get('IoU_original_gold'), '.4f')}"


# --- figures ----------------------------------------------------------------------------------


def _methods(runs: list[dict], kinds=("unprune",)) -> list[str]:
    """Methods with a row of one of ``kinds``, in first-seen order."""
    out: list[str] = []
    for run in runs:
        for r in run["results"]["rows"]:
            kind, method = _kind(r)
            if kind in kinds and method not in out:
                out.append(method)
    return out


def _row(run: dict, kind: str, method: str | None = None) -> dict | None:
    return next((r for r in run["results"]["rows"] if _kind(r) == (kind, method)), None)


def delta_j_figure(runs: list[dict]):
    """Grouped bars: ΔJ of '<method> + un-prune' per method (groups) and run (bars), with each
    run's noise-floor band (:func:`noise_floor_delta_j`). A matplotlib ``Figure``, or None when
    no run has an un-pruned model."""
    from matplotlib.figure import Figure

    methods = _methods(runs)
    if not methods:
        return None
    n = len(runs)
    width = 0.8 / n
    fig = Figure(figsize=(max(7.0, 1.3 * len(methods) * max(1, n / 2) + 2), 5.0 + 0.25 * n),
                 layout="constrained")
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(n)]
    for i, run in enumerate(runs):
        xs, ys = [], []
        for k, meth in enumerate(methods):
            r = _row(run, "unprune", meth)
            if r is not None and r.get("delta_J") is not None:
                xs.append(k - 0.4 + width * (i + 0.5))
                ys.append(r["delta_J"])
        ax.bar(xs, ys, width * 0.9, color=colors[i], label=f"{run['label']}: ΔJ of un-pruning")
        band = noise_floor_delta_j(run["results"])
        if band is not None:
            mean, std = band
            ax.axhspan(mean - std, mean + std, color=colors[i], alpha=0.15, lw=0)
            ax.axhline(mean, color=colors[i], ls="--", lw=1,
                       label=f"{run['label']}: seed noise floor (mean ± std)")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(range(len(methods)), [f"{m}\n+ un-prune" for m in methods])
    ax.set_xlabel("unlearning method wrapped in un-pruning")
    ax.set_ylabel("ΔJ = IoU(un-pruned, gold) − IoU(original, gold)\n(IoU over prunable weights)")
    ax.set_title("Un-pruning gain ΔJ per method and run")
    # below the axes: the legend names every run's bars and band and must not hide them
    fig.legend(loc="outside lower center", ncols=min(2, 2 * n), fontsize="small",
               title="band: ΔJ at which the mask is as close to gold as another seed's gold mask",
               title_fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return fig


def ua_iou_figure(runs: list[dict]):
    """One panel per run: UA (%) against IoU to the gold mask for every sparse model row. A
    matplotlib ``Figure``, or None when no row has a mask metric."""
    from matplotlib.figure import Figure

    if not any(r.get("IoU_gold") is not None for run in runs for r in run["results"]["rows"]):
        return None
    # baselines without an un-pruned twin still get a colour
    methods = _methods(runs, ("unprune", "baseline"))
    color = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    n = len(runs)
    cols = min(n, 3)
    rows_n = math.ceil(n / cols)
    fig = Figure(figsize=(4.6 * cols + 1.8, 4.0 * rows_n), layout="constrained")
    axes = fig.subplots(rows_n, cols, squeeze=False, sharey=True)
    handles = {}
    for i, run in enumerate(runs):
        ax = axes[i // cols][i % cols]
        for r in run["results"]["rows"]:
            if r.get("IoU_gold") is None:
                continue  # the dense model: no mask to compare
            kind, method = _kind(r)
            if kind == "gold":
                style = dict(marker="*", s=160, color="goldenrod", label=label(r))
            elif kind == "original":
                style = dict(marker="x", s=50, color="black", zorder=3, label=label(r))
            elif kind == "unprune":
                style = dict(marker="^", s=60, color=color[method], label=label(r))
            else:
                # hollow and large: it shares its IoU (same mask) with the original's cross
                style = dict(marker="o", s=110, facecolors="none", edgecolors=color[method],
                             linewidths=1.5, label=f"{method} (original mask)")
            h = ax.scatter(r["IoU_gold"], 100 * r["UA"], **style)
            handles.setdefault(style["label"], h)
        gold = _row(run, "gold")
        if gold is not None:
            ax.axhline(100 * gold["UA"], color="goldenrod", ls=":", lw=1)
        ax.set_title(run["label"])
        ax.set_xlabel("IoU(mask, gold mask) over prunable weights")
        if i % cols == 0:
            ax.set_ylabel("UA = 1 − accuracy on D_f (%)")
        ax.grid(alpha=0.3)
    for j in range(n, rows_n * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.legend(list(handles.values()), list(handles), loc="outside right center",
               fontsize="small", title="model (dotted: gold's UA)")
    fig.suptitle("Forgetting (UA) against closeness of the mask to the gold mask")
    return fig


# --- the report -------------------------------------------------------------------------------


def write_report(run_dirs: Sequence[str | os.PathLike], out_md: str | os.PathLike) -> Path:
    """Writes one markdown report over the runs in ``run_dirs``; returns its path.

    Args:
        run_dirs: finished run directories (each with ``results.json``; ``config.json`` is used
            when present, else the config saved inside the results). A directory without
            ``results.json`` stands for its subdirectories that have one.
        out_md: the markdown file to write; the figures go next to it as
            ``<stem>_delta_j.png`` and ``<stem>_ua_iou.png``.

    Raises:
        FileNotFoundError: naming a missing or unfinished run directory.
        ValueError: naming a results file that is not a pipeline result.
    """
    runs = load_runs(run_dirs)
    out = Path(out_md)
    if out.suffix != ".md":
        raise ValueError(f"the report must be a .md file, got {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# unprune-jax report: {len(runs)} run(s)", ""]
    parts += ["Accuracies in %: UA = 1 − accuracy on D_f (forgetting), RA = accuracy on D_r, "
              "TA = test accuracy. IoU gold: Jaccard of the kept weights with the gold "
              "(retrain + re-prune) mask; ΔJ = IoU(model, gold) − IoU(original, gold); RTE: run "
              "time without compilation relative to the gold standard's.", ""]
    parts += ["## Comparison", "", comparison_table(runs), ""]
    figures = []
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parts += ["Figures skipped: matplotlib is not installed "
                  "(`pip install 'unprune_jax[experiments]'`).", ""]
    else:
        stem = out.with_suffix("")

        def save(fig, suffix):
            if fig is None:
                return None
            path = Path(f"{stem}_{suffix}.png")
            fig.savefig(path, dpi=120)
            return path

        dj = save(delta_j_figure(runs), "delta_j")
        if dj is not None:
            figures.append((dj, "ΔJ per method and run",
                            "Un-pruning gain ΔJ per method and run. Shaded: the seed noise "
                            "floor on the ΔJ scale, J(gold seed a, gold seed b) − J(original, "
                            "gold), mean ± std over seed pairs: a bar reaching it brings the "
                            "mask as close to gold as retraining with another data order does."))
        sc = save(ua_iou_figure(runs), "ua_iou")
        if sc is not None:
            figures.append((sc, "UA against IoU to gold", "UA against IoU to the gold mask: "
                            "circles keep the original mask (the cross), triangles are "
                            "un-pruned, the star is gold (IoU 1)."))
    if figures:
        parts += ["## Figures", ""]
        for path, alt, caption in figures:
            parts += [f"![{alt}]({path.name})", "", caption, ""]
    for run in runs:
        res = run["results"]
        parts += [f"## Run {run['label']}", "", _settings(run), "", format_table(res["rows"]),
                  "", _summary(res).replace("\n", "  \n"), ""]
    out.write_text("\n".join(parts))
    return out
