"""MkDocs hooks: the committed figures, MathJax served by the site itself, and figures that open at full size.

- ``paper_figs/*.png`` is served as ``figures/*.png`` of the site. The PNGs stay where ``sde-sam reproduce``
  and ``paper_figs/make_figures.py`` write them (no copy inside ``docs/``), so building leaves ``git status``
  clean, and the pages' image links are checked by ``mkdocs build --strict`` like any other link.
- MathJax 3 is served as ``assets/mathjax/`` of the site, from the files that the ``django-static-mathjax``
  package installs (``pip install -e ".[docs]"``; the package is MathJax's own distribution, and nothing of
  Django is used or installed). No page loads anything from another host, so the formulas render offline,
  from ``file://`` included.
- Each figure is wrapped in a link to its PNG: a click shows it at full size (no script needed).
- The table of studies on ``studies/index.md`` is written from the study registry (``experiments.STUDIES``:
  title, page, summary, sections of the maths page) in place of the page's ``STUDIES_TABLE`` marker, so the
  index lists exactly the registered studies.

The docstrings' reST (roles, ``.. math::``, ``Example:``) is read by ``docs/griffe_docstrings.py``.
"""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

FIGURES = Path(__file__).resolve().parents[1] / "paper_figs"
MATHJAX_DEST = "assets/mathjax"
# What the ``tex-chtml`` component loads: itself, its web fonts, and the TeX extensions it loads on demand
# (``\boldsymbol``, ...). ``ui``/``a11y``/``sre`` are for the right-click menu's accessibility options.
MATHJAX_PARTS = ("tex-chtml.js", "output/chtml/fonts/woff-v2", "input/tex/extensions", "ui", "a11y", "sre")

_FIGURE = re.compile(r'(<a\b[^>]*>\s*)?(<img\b[^>]*\bsrc="([^"]*figures/[^"]+\.png)"[^>]*>)')


def mathjax_root() -> Path:
    """The ``es5`` folder of the installed MathJax 3 distribution."""
    try:
        import mathjax  # the django-static-mathjax package
    except ImportError as error:
        raise PluginError('MathJax is not installed: pip install -e ".[docs]" (django-static-mathjax)') from error
    root = Path(mathjax.__file__).resolve().parent / "static" / "mathjax" / "es5"
    if not (root / "tex-chtml.js").is_file():
        raise PluginError(f"no MathJax 3 distribution at {root}: reinstall django-static-mathjax")
    return root


def on_files(files: Files, config) -> Files:
    for png in sorted(FIGURES.glob("*.png")):
        files.append(File.generated(config, f"figures/{png.name}", abs_src_path=str(png)))
    root = mathjax_root()
    for part in MATHJAX_PARTS:
        paths = [root / part] if (root / part).is_file() else sorted(p for p in (root / part).rglob("*") if p.is_file())
        for path in paths:
            rel = path.relative_to(root).as_posix()
            files.append(File.generated(config, f"{MATHJAX_DEST}/{rel}", abs_src_path=str(path)))
    return files


STUDIES_TABLE = "<!-- the table of studies: written from experiments/registry.py by docs/hooks.py -->"


def _section_link(section: str, base: str) -> str:
    """``"2.2"`` -> ``[§2.2](<base>math.md#s2-2)`` (the anchors of ``docs/math.md``)."""
    return f"[§{section}]({base}math.md#s{section.replace('.', '-')})"


def studies_table(studies=None) -> str:
    """The Markdown table of ``studies/index.md``, one row per registered study, links relative to ``studies/``."""
    if studies is None:
        import experiments  # the package of the source checkout (pip install -e .)

        studies = experiments.STUDIES
    rows = ["| study | what it shows | theory |", "|---|---|---|"]
    for study in studies:
        page = study.doc[len("studies/"):] if study.doc.startswith("studies/") else f"../{study.doc}"
        theory = ", ".join(_section_link(s, "../") for s in study.theory)
        rows.append(f"| [{study.title}]({page}) | {study.summary} | {theory} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != "studies/index.md":
        return markdown
    if STUDIES_TABLE not in markdown:
        raise PluginError(f"docs/studies/index.md has lost its marker {STUDIES_TABLE!r}")
    return markdown.replace(STUDIES_TABLE, studies_table())


def _link_figure(match: re.Match) -> str:
    anchor, img, src = match.groups()
    if anchor:  # already a link: leave it
        return match.group(0)
    return f'<a class="figure-link" href="{src}" title="Open the full-size figure">{img}</a>'


def on_page_content(html: str, page, config, files) -> str:
    return _FIGURE.sub(_link_figure, html)
