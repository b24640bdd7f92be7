"""The docs site: it builds in strict mode (no broken link, anchor or reference), and every example in it
and in the README runs.

Each page's ```python blocks run in order in one fresh interpreter (a page is one script), from a temporary
working directory so that nothing is written into the checkout. A block preceded by ``<!-- skip -->``
is shown but not run (e.g. a Ray cluster or a long study).
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"(?P<skip><!--\s*skip\s*-->\s*\n)?^(?P<indent>[ \t]*)```python[^\n]*\n(?P<code>.*?)^(?P=indent)```",
                   re.M | re.S)


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a Markdown page, in order, without those marked ``<!-- skip -->``."""
    blocks = []
    for m in FENCE.finditer(text):
        if m["skip"]:
            continue
        indent = len(m["indent"])
        blocks.append("\n".join(line[indent:] for line in m["code"].splitlines()))
    return blocks


PAGES = sorted(p for p in [*DOCS.rglob("*.md"), ROOT / "README.md"] if python_blocks(p.read_text()))


def test_python_blocks_extraction():
    text = "a\n```python\nx = 1\n```\n<!-- skip -->\n```python\nraise SystemExit(1)\n```\n```bash\nls\n```\n"
    assert python_blocks(text) == ["x = 1"]


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs not installed (the `docs` extra)")
def test_docs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f",
                             str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "api" / "index.html").exists()
    assert (tmp_path / "site" / "figures" / "weak_error.png").exists()  # served from paper_figs/


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run(page, tmp_path):
    script = "\n\n".join(python_blocks(page.read_text()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, f"{page.name}:\n{result.stderr[-3000:]}"
