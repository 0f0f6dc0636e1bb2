"""`ruff check` (configured in pyproject.toml: line length 100, rules E, W, F, I, B, UP) is clean on
the package, the tests, the experiments and the benchmarks."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("unprune_jax", "tests", "experiments", "benchmarks")


def test_ruff_check_is_clean():
    try:
        import ruff  # noqa: F401
    except ImportError:
        pytest.fail("ruff is not installed; it comes with the test extra: pip install -e '.[test]'")
    res = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", *PATHS],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, f"ruff check found problems:\n{res.stdout}{res.stderr}"
