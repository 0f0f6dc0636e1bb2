"""Every ```python block of every docs/*.md page runs, in order, one namespace per page.

A block fenced as ```python no-test is shown but not run (e.g. a multi-host launch). A failure
names the page, the block number and the line inside the block.
"""

import re
import traceback
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```[ \t]*$", flags=re.M | re.S)
PAGES = sorted(p.name for p in DOCS.glob("*.md"))


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``[(block number from 1, source)]`` of the runnable python blocks, in page order."""
    out = []
    for i, m in enumerate(FENCE.finditer(text), start=1):
        if "no-test" not in m.group(1).split():
            out.append((i, m.group(2)))
    return out


def test_fence_parser():
    text = ("x\n```python\na = 1\n```\n```python no-test\nboom()\n```\n```bash\nls\n```\n"
            "```python\nb = a + 1\n```\n")
    assert python_blocks(text) == [(1, "a = 1\n"), (3, "b = a + 1\n")]


@pytest.mark.parametrize("page", PAGES)
def test_page_snippets_run(page, tmp_path, monkeypatch):
    blocks = python_blocks((DOCS / page).read_text())
    monkeypatch.chdir(tmp_path)  # snippets that write files (run directories) write here
    namespace = {"__name__": f"docs_{page[:-3]}"}
    for number, source in blocks:
        filename = f"docs/{page} python block {number}"
        try:
            exec(compile(source, filename, "exec"), namespace)
        except Exception:
            pytest.fail(f"{filename} failed:\n{traceback.format_exc(limit=-3)}", pytrace=False)


def test_concept_pages_exist_with_snippets():
    for page in ("masks.md", "pruners.md", "unlearners.md", "unpruning.md", "metrics.md"):
        assert python_blocks((DOCS / page).read_text()), f"{page} has no runnable snippet"


def test_index_links_every_page():
    index = (DOCS / "README.md").read_text()
    linked = set(re.findall(r"\]\(([\w.-]+\.md)\)", index))
    missing = set(PAGES) - {"README.md"} - linked
    assert not missing, f"docs/README.md does not link {sorted(missing)}"
    assert "runs.md" in linked
