"""Every benchmark script runs end to end at a tiny size, so none of them can rot.

The scripts are imported from ``benchmarks/`` and their ``main`` is called in-process with tiny
arguments (MLP or a narrow CNN, a few batches). The tests check the tables they print and the
numbers they return, not speed.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from unprune_jax import checkpoint

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith(f"| {first_cell}")]


def test_bench_train_step_tiny(capsys):
    mod = _load("bench_train_step")
    mod.main(["--model", "mlp", "--batch", "8", "--steps", "2", "--repeats", "1", "--k", "2",
              "--settle", "0"])
    out = capsys.readouterr().out
    (plain,) = _table_rows(out, "plain JAX masked SGD")
    (ours,) = _table_rows(out, "ours: make_train_step")
    assert plain[-1] == "1.00" and float(ours[-1]) > 0
    assert len(_table_rows(out, "ablation:")) == 3
    (k2,) = _table_rows(out, "2 |")
    assert float(k2[3]) > 0


def test_bench_torch_tiny(capsys):
    mod = _load("bench_torch")
    mod.main(["--smoke", "--model", "mlp", "--no-compile"])
    out = capsys.readouterr().out
    (ours,) = _table_rows(out, "JAX ours: train.fit")
    assert ours[-1] == "1.00" and float(ours[1]) > 0
    assert _table_rows(out, "JAX ours, epoch as one lax.scan")
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "PyTorch | failed: not importable" in out
    else:
        assert len(_table_rows(out, "PyTorch")) == 2
        assert re.search(r"ours vs fastest PyTorch row .*: \d+\.\d\dx "
                         r"\(goal >= 1.0: (met|not met)\)", out)


def test_bench_torch_maxpool_twin_matches_small_cnn():
    """The 'before' row's model is SmallCNN(pool='max') with nn.max_pool: same params, same
    output."""
    import jax
    import jax.numpy as jnp

    mod = _load("bench_torch")
    new, old = mod.jax_model("maxpool"), mod.jax_model("maxpool", flax_pool=True)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 28, 28, 1))
    params = new.init(jax.random.PRNGKey(1), x)
    np.testing.assert_array_equal(np.asarray(new.apply(params, x)),
                                  np.asarray(old.apply(params, x)))
    assert jax.tree.structure(params) == jax.tree.structure(old.init(jax.random.PRNGKey(1), x))
    assert jnp.shape(new.apply(params, x)) == (2, 10)


def test_bench_runs_tiny(capsys):
    mod = _load("bench_runs")
    mod.main(["--smoke", "--strategies", "loop", "vmap", "auto"])
    out = capsys.readouterr().out
    for k in ("1", "2"):
        (row,) = [r for r in _table_rows(out, k) if "×" in r[1]]
        assert row[1].endswith("(1.00×)")  # the loop column is the reference
        assert len(row) == 4
    assert re.search(r"auto vs loop, worst over K: \d+\.\d\d×", out)
    mem = [r for r in _table_rows(out, "") if len(r) == 5 and r[0] in ("1", "2")]
    assert len(mem) == 2
    # Two stacked states take twice the bytes of one.
    assert float(mem[1][4]) == pytest.approx(2 * float(mem[0][4]), rel=0.02)


def test_bench_mfu_tiny(capsys):
    mod = _load("bench_mfu")
    res = mod.main(["--smoke"])
    out = capsys.readouterr().out
    assert "MFU" in out and "not measured here" in out
    assert res["matmul_flops"] > 0 and res["step_flops"] > 0 and res["img_s"] > 0
    assert res["mfu"] == pytest.approx(
        res["step_flops"] / res["step_seconds"] / res["matmul_flops"])


def test_bench_mfu_counts_matmul_flops():
    """XLA's cost analysis, as the script reads it, counts 2·m·k·n for a matmul."""
    import jax
    import jax.numpy as jnp

    mod = _load("bench_mfu")
    f = jax.jit(lambda a, b: a @ b)
    a, b = jnp.ones((16, 32)), jnp.ones((32, 8))
    assert mod.step_flops(f, a, b) == 2 * 16 * 32 * 8


def _fake_run(run_dir: pathlib.Path) -> dict:
    """A results.json and un-prune stage metadata as the pipeline writes them (numbers by hand)."""
    row = dict(IoU_gold=0.5, compile_seconds=0.0)
    results = {
        "rows": [
            {**row, "kind": "baseline", "method": "FT", "seconds": 4.0, "RTE": 0.2},
            {**row, "kind": "unprune", "method": "FT", "seconds": 5.0, "RTE": 0.25,
             "IoU_gold": 0.4, "travelled_beyond_control": 0.25,
             "travelled_beyond_control_ci": [-0.05, 0.55]},
            {**row, "kind": "gold", "method": None, "seconds": 21.0, "compile_seconds": 1.0,
             "RTE": 1.0},
        ],
        "seeds": 2,
        "config": {"model": {"name": "small_cnn"}, "data": {"name": "synthetic"}},
    }
    checkpoint.save_json(run_dir / "results.json", results)
    # 10 s in the stage for 2 seeds, of which the method took 8 s: un-pruning 1 s per seed.
    checkpoint.save_stage(run_dir, "unprune/FT", {}, {"seconds": 10.0, "method_seconds": 8.0})
    return results


def test_bench_unprune_cost_from_run_dir(tmp_path, capsys):
    mod = _load("bench_unprune_cost")
    _fake_run(tmp_path)
    (row,) = mod.main(["--run-dir", str(tmp_path)])
    assert row["method"] == "FT"
    assert row["unprune_rte"] == pytest.approx(1.0 / 20.0)  # gold: 21 s - 1 s compile
    assert (row["row_rte"], row["method_rte"]) == (0.25, 0.2)
    assert (row["iou_gold"], row["iou_gold_method"], row["beyond_control"]) == (0.4, 0.5, 0.25)
    out = capsys.readouterr().out
    assert "| FT | 0.0500 (met) | 0.250 | 0.200 | 0.400 / 0.500 | +0.25 [-0.05, +0.55] |" in out


def test_bench_unprune_cost_needs_unprune_rows():
    mod = _load("bench_unprune_cost")
    with pytest.raises(ValueError, match="un-pruning rows"):
        mod.cost_rows({"rows": [{"kind": "baseline", "method": "FT"},
                                {"kind": "gold", "method": None, "seconds": 1.0}]})


def test_bench_checkpoint_compares_bool_and_packed_masks(capsys):
    mod = _load("bench_checkpoint")
    bool_rows, packed_rows = mod.main(["--model", "mlp"])
    assert packed_rows["mask_stage"] < bool_rows["mask_stage"]
    assert min(bool_rows["save_s"], bool_rows["load_s"]) > 0
    out = capsys.readouterr().out
    n = 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10  # MLP parameters
    assert f"| mask (bool) | {n:,} |" in out
    assert "| mask as packed bits |" in out


def test_gpu_script_flags_parse():
    """gpu.sh is valid bash and every flag it passes (GPU and --smoke) is accepted by its script."""
    text = (BENCH / "gpu.sh").read_text()
    subprocess.run(["bash", "-n", str(BENCH / "gpu.sh")], check=True)
    arrays: dict[str, list[list[str]]] = {}
    for name, body in re.findall(r"^\s*([A-Z_]+)=\((.*)\)\s*$", text, re.M):
        arrays.setdefault(name, []).append(shlex.split(body))
    calls = re.findall(r'benchmarks/(bench_\w+)\.py "\$\{DEV\[@\]\}" "\$\{(\w+)\[@\]\}"', text)
    assert {s for s, _ in calls} == {"bench_train_step", "bench_mfu", "bench_runs"}
    for script, var in calls:
        mod = _load(script)
        assert len(arrays[var]) == 2, var  # a GPU and a --smoke setting
        for flags in arrays[var]:
            for dev in arrays["DEV"]:
                mod.parse_args(dev + flags)  # argparse exits on an unknown flag


def test_bench_topology_tiny(capsys):
    mod = _load("bench_topology")
    res = mod.main(["--tiny"])
    out = capsys.readouterr().out
    timing = res["timing"]
    assert timing["same_energy"] and timing["same_auc"]  # the naive nulls equal ours
    for what in ("energy test, original vs gold", "LOPO LLR AUC with its null"):
        (row,) = _table_rows(out, what)
        assert row[-1] == "True" and row[3].endswith("×") and float(row[1]) > 0
    assert "| mixture 50% gold |" in out
    power = res["validation"]["power"]
    assert {"energy, hamming", "energy, jaccard", "LOPO LLR AUC"} <= set(power)
    assert all(0.0 <= r <= 1.0 for row in power.values() for r in row.values())
    assert all(a["symmetric"] for a in res["validation"]["auc_null"].values())
