"""The command line: subcommands, help, list, sweep parsing, report dispatch, errors, log file."""

import logging
import re

import pytest

from unprune_jax import __version__, cli, pipeline, prune, runs, scores, sweep, unlearn
from unprune_jax.data import DATASET_NAMES
from unprune_jax.models import MODELS


def run_main(argv, capsys):
    """``(exit code, stdout, stderr)``; argparse's own exits (help, errors) included."""
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version(capsys):
    code, out, _ = run_main(["--version"], capsys)
    assert code == 0 and out.strip() == f"unprune-jax {__version__}"


@pytest.mark.parametrize("command", ["run", "sweep", "report", "list"])
def test_every_subcommand_has_help_with_an_example(command, capsys):
    code, out, _ = run_main([command, "--help"], capsys)
    assert code == 0
    assert f"usage: unprune-jax {command}" in out
    assert re.search(rf"example:\n  unprune-jax {command} ", out), out


def test_top_level_help_names_every_subcommand(capsys):
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    for command in ("run", "sweep", "report", "list"):
        assert re.search(rf"^    {command}\s+\S", out, flags=re.M), command


def test_unknown_subcommand_suggests_the_closest(capsys):
    code, _, err = run_main(["rpeort"], capsys)
    assert code == 2 and "Did you mean 'report'?" in err


def test_list_describes_every_entry_of_every_category(capsys):
    code, out, _ = run_main(["list"], capsys)
    assert code == 0
    names = {
        "pruners": list(prune.PRUNERS), "scores": list(scores.SCORES),
        "unlearners": list(unlearn.REGISTRY), "models": list(MODELS),
        "datasets": list(DATASET_NAMES),
        "strategies": ["auto", "vmap", "map", "loop", "spread", "shard"],
        "unprune_options": [f"variant={n}" for n in ("algorithm1", "rescore", "replay")]
        + [f"regrow_score={n}" for n in ("dense", "theta0", "gradient", "fisher", "random")]
        + ["reinit=theta0", "reinit=dense", "reinit=random", "reprune_score=magnitude",
           "reprune_score=gradient", "reprune_score=fisher"],
    }
    sections = dict(re.findall(r"^(\w+):\n((?:  .*\n?)+)", out, flags=re.M))
    assert list(sections) == list(cli.LIST_CATEGORIES) and set(sections) == set(names)
    for category, expected in names.items():
        lines = sections[category].splitlines()
        assert [ln.split()[0] for ln in lines] == expected, category
        for ln in lines:  # a name, then a real description
            assert len(ln.split(None, 1)[1]) > 5 and "(no description)" not in ln, ln


def test_every_dataset_name_has_a_description_and_sweep_help_lists_the_strategies(capsys):
    assert list(cli.list_entries("datasets")) == list(DATASET_NAMES)
    code, out, _ = run_main(["sweep", "--help"], capsys)
    assert code == 0
    for name, description in runs.STRATEGIES.describe().items():
        assert f"  {name:<6} {description}" in out, name


def test_list_one_category_and_a_misspelt_one(capsys):
    code, out, _ = run_main(["list", "models"], capsys)
    assert code == 0 and out.startswith("models:\n") and "pruners:" not in out
    code, _, err = run_main(["list", "unlerners"], capsys)
    assert code == 2 and "unknown category 'unlerners'" in err
    assert "Did you mean 'unlearners'?" in err


@pytest.mark.parametrize(
    "override, message",
    [
        ("prune.method=ompp", "unknown pruner 'ompp'.*Did you mean 'omp'"),
        ("model.name=smal_cnn", "unknown model 'smal_cnn'.*Did you mean 'small_cnn'"),
        ("data.name=fashion-mnist",
         "unknown dataset 'fashion-mnist'.*Did you mean 'fashion_mnist'"),
        ("unlearn.methods=['ft']", "unknown unlearning method 'ft'.*Did you mean 'FT'"),
        ("unlearn.settings.NegGrad.beta=0.5",
         "unlearn.settings 'NegGrad'.*Did you mean 'NegGrad\\+'"),
        ("prune.scope=per-layer", "prune.scope must be one of.*Did you mean 'per_layer'"),
        ("unprune.regrow_score=gradiant", "unprune.regrow_score.*Did you mean 'gradient'"),
        ("unprune.reinit=theta_0", "unprune.reinit.*Did you mean 'theta0'"),
        ("prun.density=0.5", "unknown config key prun.*Did you mean 'prune'"),
        ("prune.densty=0.5", "unknown config key prune.densty.*Did you mean 'density'"),
        ("model.kwargs={widthh=2}", "model.kwargs key of 'small_cnn': 'widthh'; known: "
                                    r"\['dtype', 'hidden', 'pool', 'widths'\].*'widths'"),
        ("train.lr=inf", r"config train.lr must be finite, got inf"),
    ],
)
def test_misspelt_names_get_the_closest_valid_one(tmp_path, override, message, capsys):
    code, _, err = run_main(["run", "-r", str(tmp_path / "r"), "-o", override], capsys)
    assert code == 2
    assert re.search(message, err), err


def test_sweep_parses_and_dispatches(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_sweep(cfg, run_dir, **kwargs):
        calls.append((cfg, run_dir, kwargs))
        kwargs["say"]("swept")

    monkeypatch.setattr(sweep, "run_sweep", fake_sweep)
    code, out, _ = run_main(["sweep", "-r", str(tmp_path / "s"), "-o", "data.name=synthetic",
                             "--forget-fractions", "0.01,0.05,0.1", "--seeds", "0,1,2",
                             "--strategy", "vmap", "--no-progress"], capsys)
    assert code == 0 and "swept" in out
    (cfg, run_dir, kwargs), = calls
    assert cfg.data.name == "synthetic" and run_dir == tmp_path / "s"
    assert kwargs["forget_fractions"] == (0.01, 0.05, 0.1) and kwargs["seeds"] == (0, 1, 2)
    assert kwargs["strategy"] == "vmap" and kwargs["progress"] is False
    assert "swept" in (tmp_path / "s" / "log.txt").read_text()


def test_sweep_defaults(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(sweep, "run_sweep", lambda cfg, d, **kw: calls.append(kw))
    assert run_main(["sweep", "-r", str(tmp_path / "s")], capsys)[0] == 0
    assert calls[0]["forget_fractions"] is None and calls[0]["seeds"] is None
    assert calls[0]["strategy"] == "auto" and calls[0]["progress"] is True


@pytest.mark.parametrize(
    "args, message",
    [
        (["--strategy", "vmapp"], "unknown strategy 'vmapp'.*Did you mean 'vmap'"),
        (["--forget-fractions", "0.1,1.5"], "--forget-fractions: 1.5 is not in \\(0, 1\\)"),
        (["--forget-fractions", "0.1,x"], "'x' in '0.1,x' is not a float"),
        (["--seeds", "0,-1"], "--seeds: -1 is < 0"),
        (["--seeds", "1,1"], "'1,1' repeats a value"),
    ],
)
def test_sweep_rejects_bad_arguments(args, message, tmp_path, capsys):
    code, _, err = run_main(["sweep", "-r", str(tmp_path / "s"), *args], capsys)
    assert code == 2 and re.search(message, err), err


def test_report_dispatches_to_write_report(tmp_path, monkeypatch, capsys):
    import unprune_jax.report as report

    calls = []
    monkeypatch.setattr(report, "write_report",
                        lambda dirs, out: calls.append((dirs, out)) or tmp_path / "x.md")
    code, out, _ = run_main(["report", "r1", "r2", "-o", "out/rep.md"], capsys)
    assert code == 0 and calls == [(["r1", "r2"], "out/rep.md")]
    assert f"report written to {tmp_path / 'x.md'}" in out
    run_main(["report", "r1"], capsys)
    assert calls[-1] == (["r1"], "report.md")


def test_report_of_a_missing_run_is_an_error(tmp_path, capsys):
    code, _, err = run_main(["report", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "nowhere" in err and "does not exist" in err


TINY = ["-o", "data.name=synthetic", "-o", "model.kwargs={widths = [4, 8], hidden = 16}",
        "-o", "train.epochs=1", "-o", "train.batch_size=64", "-o", "unlearn.methods=['FT']",
        "-o", "unlearn.settings={FT = {epochs = 1}}", "-o", "evaluate.seeds=1"]


def test_run_logs_everything_it_prints(tmp_path, capsys):
    run_dir = tmp_path / "r"
    code, out, _ = run_main(["run", "-r", str(run_dir), "--no-progress", *TINY], capsys)
    assert code == 0
    # a record's first line starts with its time stamp; the lines of a table follow bare
    logged = [re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "", ln) for ln in
              (run_dir / "log.txt").read_text().splitlines()]
    printed = out.splitlines()
    assert "| FT + un-prune |" in out
    missing = [ln for ln in printed if ln not in logged]
    assert not missing, missing
    # no handler outlives the call: a later run in this process cannot write into this file
    for name in ("unprune_jax", "py.warnings"):
        assert not [h for h in logging.getLogger(name).handlers
                    if isinstance(h, logging.FileHandler)], name


def test_failed_run_logs_its_error(tmp_path, capsys, monkeypatch):
    def broken(*a, **k):
        raise ValueError("the data are gone")

    monkeypatch.setattr(pipeline, "run", broken)
    code, _, err = run_main(["run", "-r", str(tmp_path / "r"), *TINY], capsys)
    assert code == 2 and "the data are gone" in err
    assert "error: ValueError: the data are gone" in (tmp_path / "r" / "log.txt").read_text()


def test_cpu_devices_refuses_a_count_jax_cannot_give(capsys, tmp_path):
    code, _, err = run_main(["run", "-r", str(tmp_path / "r"), "--cpu-devices", "0"], capsys)
    assert code == 2 and "'0' is not a positive integer" in err
    # JAX has started with one CPU device (conftest): 3 cannot be had, and nothing is made
    for command in ("run", "sweep"):
        code, _, err = run_main([command, "-r", str(tmp_path / command), "--cpu-devices", "3"],
                                capsys)
        assert code == 2 and "3 CPU devices asked for, but JAX has 1" in err
        assert not (tmp_path / command).exists()
