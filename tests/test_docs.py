r"""The docs site: it builds in strict mode (no broken link, anchor or reference), it reads right, and every
example in it and in the README runs.

"Reads right" is checked on the built HTML, as text a reader sees outside code: no raw TeX (``\(``, ``\[``,
``$...$``) or reST role outside the math containers that MathJax typesets, no Markdown list run into a
paragraph, no script or stylesheet from another host (MathJax is served by the site), no ``>>>`` example
shown as nested quotes, and every figure a link to its full-size PNG. The griffe extension that reads the
docstrings' house style (``docs/griffe_docstrings.py``) is tested on its own too.

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
from html.parser import HTMLParser
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


HAS_DOCS_TOOLCHAIN = all(importlib.util.find_spec(m) is not None for m in ("mkdocs", "material", "mkdocstrings",
                                                                               "griffe", "mathjax"))
needs_docs = pytest.mark.skipif(not HAS_DOCS_TOOLCHAIN, reason="docs toolchain not installed (the `docs` extra)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once for this module: ``mkdocs build --strict`` (no broken link, anchor or reference)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f",
                             str(ROOT / "mkdocs.yml"), "-d", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def site_pages(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


@pytest.mark.slow
@needs_docs
def test_docs_build_strict(site):
    assert (site / "api.html").exists()
    assert (site / "figures" / "weak_error.png").exists()  # served from paper_figs/
    assert (site / "assets" / "mathjax" / "tex-chtml.js").exists()  # served from the django-static-mathjax package
    assert len(list((site / "assets" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))) >= 20
    assert len(site_pages(site)) >= 15


# -- what a reader sees: the rendered HTML, read as text outside code and math ---------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
OPAQUE = {"code", "pre", "script", "style", "svg", "textarea"}  # text inside is shown (or run) as is


class Reader(HTMLParser):
    """Splits a page into prose (what is read as text) and math (the arithmatex containers' contents), and
    records every resource the page loads and every quote nested in a quote."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool, bool]] = []  # (tag, inside math, inside code)
        self.prose: list[str] = []
        self.math: list[str] = []
        self.loads: list[tuple[str, str]] = []  # (tag, url)
        self.nested_quotes = 0
        self.figures: list[tuple[str | None, str]] = []  # (href of the enclosing link, img src)
        self.links: list[str | None] = []  # hrefs of the open <a> elements
        self.paragraphs: list[str] = []  # the prose of each <p>, for Markdown lists run into a paragraph

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        in_math, in_code = self.stack[-1][1:] if self.stack else (False, False)
        if tag == "script" and attrs.get("src"):
            self.loads.append((tag, attrs["src"]))
        if tag == "link" and "stylesheet" in (attrs.get("rel") or "").split():
            self.loads.append((tag, attrs.get("href", "")))
        if tag in {"img", "iframe", "source", "embed"} and attrs.get("src"):
            self.loads.append((tag, attrs["src"]))
        if tag == "img" and "figures/" in attrs.get("src", ""):
            self.figures.append((self.links[-1] if self.links else None, attrs["src"]))
        if tag == "blockquote" and any(t == "blockquote" for t, _, _ in self.stack):
            self.nested_quotes += 1
        if tag in VOID:
            return
        is_math = "arithmatex" in (attrs.get("class") or "").split()
        if is_math:
            self.math.append("")
        self.stack.append((tag, in_math or is_math, in_code or tag in OPAQUE))
        if tag == "a":
            self.links.append(attrs.get("href"))
        if tag == "p":
            self.paragraphs.append("")

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        while self.stack:  # tolerate unclosed inline tags, as browsers do
            open_tag = self.stack.pop()[0]
            if open_tag == "a" and self.links:
                self.links.pop()
            if open_tag == tag:
                break

    def handle_data(self, data):
        in_math, in_code = self.stack[-1][1:] if self.stack else (False, False)
        if in_math:
            self.math[-1] += data
        elif not in_code:
            self.prose.append(data)
            if any(t == "p" for t, _, _ in self.stack):
                self.paragraphs[-1] += data


def read(page: Path) -> Reader:
    reader = Reader()
    reader.feed(page.read_text(encoding="utf-8"))
    return reader


RAW_TEX = re.compile(r"\\[(\[]")                   # \( or \[ left for the reader
LITERAL_DOLLARS = re.compile(r"\$[^$\n]{1,200}\$")  # $...$ that arithmatex did not take (e.g. "\Vert $")
REST_ROLE = re.compile(r":(?:math|class|func|meth|mod|attr|data|obj|exc):")
LIST_IN_PARAGRAPH = re.compile(r"\n[ \t]*[-*] \S")  # a list with no blank line before it stays text
DOCTEST_PROMPT = re.compile(r">>>")


@pytest.mark.slow
@needs_docs
def test_math_only_inside_math_containers(site):
    problems = []
    n_math = 0
    for page in site_pages(site):
        reader = read(page)
        prose = "".join(reader.prose)
        for pattern, what in ((RAW_TEX, "raw TeX"), (LITERAL_DOLLARS, "literal $...$"), (REST_ROLE, "reST role")):
            problems += [f"{page.name}: {what}: ...{prose[max(0, m.start() - 40):m.end() + 40]!r}..."
                         for m in pattern.finditer(prose)]
        for tex in reader.math:  # what MathJax will typeset: one delimited formula per container
            tex = tex.strip()
            n_math += 1
            if not ((tex.startswith("\\(") and tex.endswith("\\)")) or (tex.startswith("\\[") and tex.endswith("\\]"))):
                problems.append(f"{page.name}: math container without delimiters: {tex[:80]!r}")
        problems += [f"{page.name}: a Markdown list run into a paragraph: {p[:120]!r}"
                     for p in reader.paragraphs if LIST_IN_PARAGRAPH.search(p)]
    assert not problems, "\n".join(problems[:20])
    assert n_math > 500  # the math page alone has hundreds: the containers were found


@pytest.mark.slow
@needs_docs
def test_no_page_loads_anything_from_another_host(site):
    remote = []
    for page in site_pages(site):
        for tag, url in read(page).loads:
            if re.match(r"^([a-z][a-z0-9+.-]*:|//)", url, re.I):
                remote.append(f"{page.relative_to(site)}: <{tag}> {url}")
            else:  # a local resource: it is in the site
                path = url.split("#")[0].split("?")[0]
                target = (site / path.lstrip("/") if path.startswith("/") else page.parent / path).resolve()
                assert target.is_file(), f"{page.relative_to(site)}: <{tag}> {url} is not in the site"
    assert not remote, "\n".join(sorted(set(remote)))
    scripts = [url for tag, url in read(site / "math.html").loads if tag == "script"]
    assert any(url.endswith("assets/mathjax/tex-chtml.js") for url in scripts), scripts


@pytest.mark.slow
@needs_docs
def test_examples_render_as_code_not_quotes(site):
    for page in site_pages(site):
        reader = read(page)
        assert reader.nested_quotes == 0, f"{page.name}: a quote inside a quote (a >>> example read as Markdown?)"
        prompts = list(DOCTEST_PROMPT.finditer("".join(reader.prose)))
        assert not prompts, f"{page.name}: a doctest prompt outside code"
    html = (site / "api.html").read_text(encoding="utf-8")
    sections = html.split('doc-section-title">Examples:')[1:]
    assert len(sections) >= 20  # the docstrings' `Example:` sections are parsed as example sections
    for section in sections:  # ... and each shows its code as a highlighted block, prompts kept
        head = section.split("doc-section-title")[0]
        assert "<pre" in head and ("&gt;&gt;&gt;" in head or "console" in head), head[:500]


@pytest.mark.slow
@needs_docs
def test_figures_link_to_their_full_size_png(site):
    figures = [(page, href, src) for page in site_pages(site) for href, src in read(page).figures]
    assert len(figures) >= 8
    for page, href, src in figures:
        assert href == src, f"{page.name}: {src} is not a link to itself (href={href})"
        assert (page.parent / src).resolve().is_file()


# -- the griffe extension that reads the docstrings' house style (docs/griffe_docstrings.py) ------------------

@pytest.fixture(scope="module")
def house():
    pytest.importorskip("griffe")
    spec = importlib.util.spec_from_file_location("griffe_docstrings", DOCS / "griffe_docstrings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rewrite_roles_math_and_examples(house):
    text = ("Summary with :math:`\\eta_k` and :func:`~sde_sam.run`.\n\n"
            ".. math:: a = b,\\quad\n          c = d\\ \\text{(see :meth:`Method.update`)}\n"
            "after\n\n"
            "Returns:\n    A :class:`~sde_sam.results.Trajectory` with :attr:`times`.\n\n"
            "Example:\n    >>> x = 1\n    $ sde-sam weak-error\n")
    assert house.rewrite(text) == (
        "Summary with \\(\\eta_k\\) and `run`.\n\n"
        "\\[a = b,\\quad c = d\\ \\text{(see Method.update)}\\]\n\n"
        "after\n\n"
        "Returns:\n    A `Trajectory` with `times`.\n\n"
        "Examples:\n    >>> x = 1\n    ```console\n    $ sde-sam weak-error\n    ```\n")


def test_rewritten_docstring_parses_into_the_right_sections(house):
    import griffe

    code = '''
def f(x, lr=0.1, rho=0.05, *, n=3):
    r"""Summary.

    Args:
        x: The point.
        lr, rho: Step size and radius.
        n: Count.

    Returns:
        A :class:`~pkg.Trajectory` with :math:`x_k`.

    Example:
        >>> f(1)
        2
    """
'''
    with griffe.temporary_visited_module(code, extensions=griffe.load_extensions(house.HouseDocstrings),
                                         docstring_parser="google") as module:
        func = module["f"]
        house.fill_group_defaults(func)
        sections = {s.kind.value: s for s in func.docstring.parsed}
    params = {p.name: p for p in sections["parameters"].value}
    assert str(params["lr, rho"].default) == "0.1, 0.05"
    assert params["x"].default is None  # a required parameter stays required
    (returned,) = sections["returns"].value
    assert returned.name == "" and returned.description == "A `Trajectory` with \\(x_k\\)."
    assert sections["examples"].value == [(griffe.DocstringSectionKind.examples, ">>> f(1)\n2")]


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run(page, tmp_path):
    script = "\n\n".join(python_blocks(page.read_text()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, f"{page.name}:\n{result.stderr[-3000:]}"
