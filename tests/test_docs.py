"""The documentation site's sources: runnable code, a complete API reference, a complete nav.

``make docs`` builds the site itself (it needs the ``docs`` extra); these tests need nothing
beyond the package, so they run with the rest of the suite.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import quantum_partitioner

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks(page: str) -> list[tuple[str, str]]:
    """``(id, code)`` for each fenced Python block of ``docs/<page>``."""
    text = (DOCS / page).read_text()
    blocks = []
    for match in PYTHON_BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        blocks.append((f"{page}:{line}", match.group(1)))
    return blocks


GUIDE_BLOCKS = python_blocks("guide.md") + python_blocks("index.md")


@pytest.mark.parametrize(("where", "code"), GUIDE_BLOCKS, ids=[w for w, _ in GUIDE_BLOCKS])
def test_documented_code_runs_as_written(where, code, tmp_path):
    """Every Python block of the guide and the home page runs and its asserts hold."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, f"{where}\n{result.stdout}\n{result.stderr}"


def dask_collection_blocks() -> list[tuple[str, str]]:
    """The Python blocks of docs/dask.md's section on Dask collections (the rest needs a
    cluster)."""
    text = (DOCS / "dask.md").read_text()
    section = text.count("\n", 0, text.index("## Dask collections on the partitioner")) + 1
    return [(w, c) for w, c in python_blocks("dask.md") if int(w.rsplit(":", 1)[1]) > section]


DASK_BLOCKS = dask_collection_blocks()


@pytest.mark.parametrize(("where", "code"), DASK_BLOCKS, ids=[w for w, _ in DASK_BLOCKS])
def test_dask_collection_examples_run_as_written(where, code, tmp_path):
    """The Dask-collection examples of docs/dask.md run and their asserts hold."""
    pytest.importorskip("dask.array")
    test_documented_code_runs_as_written(where, code, tmp_path)


def test_the_guide_has_runnable_blocks():
    """The guide's examples are found (a changed fence would silently test nothing)."""
    assert len(python_blocks("guide.md")) >= 10


def test_reference_documents_every_public_name():
    """docs/reference.md has a `::: quantum_partitioner.NAME` entry for each name in __all__."""
    reference = (DOCS / "reference.md").read_text()
    documented = set(re.findall(r"^::: quantum_partitioner\.(\w+)\s*$", reference, re.MULTILINE))
    missing = sorted(set(quantum_partitioner.__all__) - documented)
    assert not missing, f"add to docs/reference.md: {', '.join(missing)}"


def test_every_docs_page_is_in_the_nav():
    """Each docs/*.md is listed in mkdocs.yml's nav, and each nav entry exists."""
    config = (ROOT / "mkdocs.yml").read_text()
    nav = config[config.index("\nnav:") :]
    nav = nav[: nav.index("\n\n")]
    listed = re.findall(r":\s*(\S+\.md)\s*$", nav, re.MULTILINE)
    pages = sorted(path.name for path in DOCS.glob("*.md"))
    assert sorted(listed) == pages, "mkdocs.yml nav and docs/*.md differ"
