"""The README's functional-API example runs as written."""

import os
import re
from pathlib import Path

import pytest

from unprune_jax.data import default_data_dir

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.skipif(not os.path.isdir(default_data_dir()),
                    reason="apt-get install dataset-fashion-mnist")
def test_readme_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], str(README), "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert "FT + un-prune" in out and "IoU to gold" in out
