"""MkDocs hooks: the committed figures, and the docstrings' reST roles rendered in the API reference.

- ``paper_figs/*.png`` is served as ``figures/*.png`` of the site. The PNGs stay where ``sde-sam reproduce``
  and ``paper_figs/make_figures.py`` write them (no copy inside ``docs/``), so building leaves ``git status``
  clean, and the pages' image links are checked by ``mkdocs build --strict`` like any other link.
- Docstrings write maths and cross-references as reST roles (``:math:`\\eta```, ``:func:`run```,
  ``.. math::``), which Markdown leaves as text; they are turned into MathJax spans and code here.
"""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

FIGURES = Path(__file__).resolve().parents[1] / "paper_figs"

_MATH_ROLE = re.compile(r":math:<code>(.*?)</code>", re.S)
_MATH_BLOCK = re.compile(r"<p>\.\. math::\s*(.*?)</p>", re.S)
_XREF_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):<code>(~?)([^<]*)</code>")


def on_files(files: Files, config) -> Files:
    for png in sorted(FIGURES.glob("*.png")):
        files.append(File.generated(config, f"figures/{png.name}", abs_src_path=str(png)))
    return files


def _xref(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, page, config, files) -> str:
    html = _MATH_BLOCK.sub(lambda m: f'<div class="arithmatex">\\[{m.group(1)}\\]</div>', html)
    html = _MATH_ROLE.sub(lambda m: f'<span class="arithmatex">\\({m.group(1)}\\)</span>', html)
    return _XREF_ROLE.sub(_xref, html)
