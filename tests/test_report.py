"""The markdown report over finished runs: from two real tiny pipeline runs (synthetic data)."""

import json
import math
import shutil
import struct
import sys

import pytest

from unprune_jax import pipeline, report
from unprune_jax.config import load_config

TINY = [
    "data.name=synthetic",
    "model.kwargs={widths = [4, 8], hidden = 16}",
    "train.epochs=1",
    "train.batch_size=64",
    "unlearn.methods=['FT', 'GA']",
    "unlearn.settings={FT = {epochs = 1}, GA = {epochs = 1}}",
    "evaluate.seeds=2",
]


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Two finished runs under one parent: a (density 0.3) and b (density 0.1, forget 30%)."""
    base = tmp_path_factory.mktemp("runs")
    for name, extra in (("a", ["prune.density=0.3"]),
                        ("b", ["prune.density=0.1", "data.forget_fraction=0.3"])):
        pipeline.run(load_config(None, TINY + extra), base / name, progress=False,
                     say=lambda _: None)
    return base


def results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_has_every_run_table_and_figure(runs, tmp_path):
    out = report.write_report([runs / "a", runs / "b"], tmp_path / "sub" / "rep.md")
    assert out == tmp_path / "sub" / "rep.md"
    text = out.read_text()
    assert "## Run a" in text and "## Run b" in text
    assert "- pruner: omp, density 0.3" in text and "- pruner: omp, density 0.1" in text
    assert "- forget set: fraction 0.3" in text
    assert "- unlearning methods: FT, GA" in text
    # the comparison table: one line per (model row, run), numbers from results.json
    for name in ("a", "b"):
        res = results(runs / name)
        for row in res["rows"]:
            iou = "—" if row["IoU_gold"] is None else f"{row['IoU_gold']:.4f}"
            line = (f"| {report.label(row)} | {name} | {100 * row['UA']:.2f} | "
                    f"{100 * row['RA']:.2f} | {100 * row['TA']:.2f} | {iou} |")
            assert line in text, line
        # the summary lines of pipeline.run, one markdown line each
        assert f"IoU(original mask, gold mask) = {res['IoU_original_gold']:.4f}  \nnoise floor" \
            in text
    for suffix in ("delta_j", "ua_iou"):
        png = tmp_path / "sub" / f"rep_{suffix}.png"
        assert f"(rep_{suffix}.png)" in text
        w, h = png_size(png)
        assert w >= 600 and h >= 400, (suffix, w, h)


def test_delta_j_bars_are_the_unpruned_rows_and_the_band_is_the_noise_floor(runs):
    loaded = report.load_runs([runs / "a", runs / "b"])
    fig = report.delta_j_figure(loaded)
    ax = fig.axes[0]
    assert ax.get_xlabel() and "ΔJ" in ax.get_ylabel() and ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["FT\n+ un-prune", "GA\n+ un-prune"]
    heights = [bar.get_height() for bars in ax.containers for bar in bars]
    expected = []
    for name in ("a", "b"):
        rows = {report.label(r): r for r in results(runs / name)["rows"]}
        expected += [rows["FT + un-prune"]["delta_J"], rows["GA + un-prune"]["delta_J"]]
    assert sorted(heights) == pytest.approx(sorted(expected))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "a: ΔJ of un-pruning" in labels and "b: seed noise floor (mean ± std)" in labels
    # the dashed line of run a sits at its noise floor on the ΔJ scale
    res = results(runs / "a")
    floor = res["noise_floor"]["jaccard"]["mean"] - res["IoU_original_gold"]
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert dashed[0].get_ydata()[0] == pytest.approx(floor)


def test_ua_iou_scatter_has_one_point_per_sparse_row(runs):
    fig = report.ua_iou_figure(report.load_runs([runs / "a"]))
    ax = fig.axes[0]
    assert "IoU" in ax.get_xlabel() and "UA" in ax.get_ylabel() and "%" in ax.get_ylabel()
    points = sorted(tuple(map(float, c.get_offsets()[0])) for c in ax.collections)
    rows = [r for r in results(runs / "a")["rows"] if r["IoU_gold"] is not None]
    expected = sorted((r["IoU_gold"], 100 * r["UA"]) for r in rows)
    assert len(points) == len(expected) == 6  # original, FT, FT + un-prune, GA, GA + ..., gold
    for got, want in zip(points, expected):
        assert got == pytest.approx(want)
    assert fig.legends and fig.legends[0].get_texts()


def test_noise_floor_delta_j_by_hand():
    res = {"IoU_original_gold": 0.30, "noise_floor": {"jaccard": {"mean": 0.29, "std": 0.01}}}
    mean, std = report.noise_floor_delta_j(res)
    assert mean == pytest.approx(-0.01) and std == 0.01
    assert report.noise_floor_delta_j({"IoU_original_gold": 0.3, "noise_floor": None}) is None


def test_results_table_shows_missing_values_as_dashes():
    row = {"kind": "baseline", "method": "FT", "UA": 0.1234, "RA": 0.9, "TA": 0.85,
           "IoU_gold": None, "delta_J": math.nan, "diverged": "loss nan"}
    line = report.format_table([row]).splitlines()[2]
    assert line == ("| FT (diverged) | 12.34 | 90.00 | 85.00 | — | — | — | — | — | — | — | — "
                    "| — | — | — | — |")


def test_labels_are_made_from_kind_and_method_and_old_rows_still_read():
    assert [report.label({"kind": k, "method": m}) for k, m in (
        ("dense", None), ("original", None), ("baseline", "GA"), ("unprune", "GA"),
        ("gold", None))] == ["dense (scored by the pruner)", "original (pruned on D)", "GA",
                             "GA + un-prune", "gold (retrain + re-prune)"]
    assert report.label({"model": "FT + un-prune"}) == "FT + un-prune"
    assert report._kind({"model": "FT + un-prune"}) == ("unprune", "FT")
    assert report._kind({"model": "gold (retrain + re-prune)"}) == ("gold", None)


def test_a_directory_of_runs_stands_for_its_runs(runs, tmp_path):
    loaded = report.load_runs([runs])
    assert [r["label"] for r in loaded] == ["a", "b"]


def test_repeated_directory_names_get_distinct_labels(runs, tmp_path):
    for parent in ("x", "y"):
        shutil.copytree(runs / "a", tmp_path / parent / "a",
                        ignore=shutil.ignore_patterns("stages"))
    loaded = report.load_runs([tmp_path / "x" / "a", tmp_path / "y" / "a"])
    assert [r["label"] for r in loaded] == ["x/a", "y/a"]


def test_missing_or_unfinished_runs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
        report.write_report([tmp_path / "nowhere"], tmp_path / "r.md")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*no results.json.*resumes"):
        report.write_report([tmp_path / "empty"], tmp_path / "r.md")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text('{"rows": 3}')
    with pytest.raises(ValueError, match="bad.*results.json has no 'rows'"):
        report.write_report([tmp_path / "bad"], tmp_path / "r.md")


def test_out_must_be_markdown(runs, tmp_path):
    with pytest.raises(ValueError, match="r.txt"):
        report.write_report([runs / "a"], tmp_path / "r.txt")


def test_without_matplotlib_the_report_still_has_its_tables(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    text = report.write_report([runs / "a"], tmp_path / "r.md").read_text()
    assert "Figures skipped: matplotlib is not installed" in text and "## Run a" in text
    assert not list(tmp_path.glob("*.png"))
