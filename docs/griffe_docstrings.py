"""Griffe extension: the docstrings' house style read right by the Google-style parser of the API reference.

The docstrings are written for readers of the source: reST roles (``:func:`run```, ``:math:`\\eta```),
``.. math::`` directives, ``Example:`` sections of ``>>>`` lines, and parameter groups (``lr, rho: ...``).
Griffe's Google parser knows none of these, and each goes wrong in its own way:

- ``Example:`` (singular) is not a section title to it, so the ``>>>`` lines stay Markdown text and render as
  nested block quotes with the lines run together. Renamed ``Examples:`` here, which it parses into code.
- In ``Returns:``, an entry ``A :class:`~x.Y` with ...`` is split at the role's colon into a name ``A`` and a
  type ``class``. Roles become Markdown code (``Y``) and math (``\\(\\eta\\)``) *before* parsing, so no colon of
  a role is left to split on.
- A group ``a, b: ...`` names no single parameter, so its defaults are never looked up and the table says
  "required". Once the package is loaded, each group gets the defaults of its parameters from the signature.

Loaded by mkdocstrings (``extensions:`` in ``mkdocs.yml``); the source docstrings are not changed.
"""
from __future__ import annotations

import re
from typing import Any

import griffe

_XREF_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)$")
_EXAMPLE_TITLE = re.compile(r"^(?P<indent>[ \t]*)Examples?:[ \t]*$")
_GROUP_ITEM = re.compile(r"^\s+\w+(?:\s*,\s*\w+)+\s*:")


def _target(match: re.Match) -> str:
    tilde, target = match.groups()
    return target.rsplit(".", 1)[-1] if tilde else target


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _math_directives(lines: list[str]) -> list[str]:
    """``.. math:: body`` (body on the same line and/or indented below it) -> one ``\\[body\\]`` paragraph."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _MATH_DIRECTIVE.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        indent, body = match["indent"], [match["first"].strip()] if match["first"].strip() else []
        i += 1
        if not body:  # reST also allows the body after a blank line
            while i < len(lines) and not lines[i].strip():
                i += 1
        while i < len(lines) and lines[i].strip() and _indent(lines[i]) > len(indent):
            body.append(lines[i].strip())
            i += 1
        # A role inside the formula (e.g. in \text{...}) can only be plain text there.
        tex = _XREF_ROLE.sub(_target, " ".join(body))
        if out and out[-1].strip():
            out.append("")
        out.append(f"{indent}\\[{tex}\\]")
        if i < len(lines) and lines[i].strip():
            out.append("")
    return out


def _examples(lines: list[str]) -> list[str]:
    """``Example:`` -> ``Examples:``; shell lines (``$ ...``) of an example section fenced as console code."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _EXAMPLE_TITLE.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        out.append(f"{match['indent']}Examples:")
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(match["indent"])):
            if lines[i].lstrip().startswith("$ "):
                pad = lines[i][: _indent(lines[i])]
                out.append(f"{pad}```console")
                while i < len(lines) and lines[i].lstrip().startswith("$ "):
                    out.append(lines[i])
                    i += 1
                out.append(f"{pad}```")
            else:
                out.append(lines[i])
                i += 1
    return out


def rewrite(text: str) -> str:
    """The docstring text as the Google parser and Markdown need it (pure; tested in ``tests/test_docs.py``)."""
    lines = _examples(_math_directives(text.split("\n")))
    text = "\n".join(lines)
    text = _MATH_ROLE.sub(lambda m: f"\\({m.group(1)}\\)", text)
    return _XREF_ROLE.sub(lambda m: f"`{_target(m)}`", text)


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def fill_group_defaults(obj: griffe.Object) -> None:
    """Give each ``a, b: ...`` parameter entry the defaults of ``a`` and ``b`` (all of them, or none)."""
    docstring = obj.docstring
    if docstring is None or not any(_GROUP_ITEM.match(line) for line in docstring.value.split("\n")):
        return
    try:
        parameters = obj.parameters
    except AttributeError:  # a module, or a class without __init__
        return
    for section in docstring.parsed:
        if section.kind is not griffe.DocstringSectionKind.parameters:
            continue
        for item in section.value:
            names = [name.strip() for name in item.name.split(",")]
            if len(names) < 2 or item.default is not None:
                continue
            found = [parameters[name] for name in names if name in parameters]
            if len(found) == len(names) and all(p.default is not None for p in found):
                item.default = ", ".join(str(p.default) for p in found)


class HouseDocstrings(griffe.Extension):
    """Rewrites each docstring before it is parsed, and fills grouped defaults once the package is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            fill_group_defaults(obj)
