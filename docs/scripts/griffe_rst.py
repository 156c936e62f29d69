"""Griffe extension: render the package's Sphinx-flavoured docstring markup in MkDocs.

The docstrings of ``lti_reduce`` and ``adapters.torch`` are numpy-style and use two bits of
reStructuredText that Markdown does not know:

* ``.. math::`` directives (one line, or an indented block; blank lines separate
  equations) become ``$$ ... $$`` display blocks, which pymdownx.arithmatex hands to
  MathJax (or leaves as readable TeX when MathJax is not installed);
* ``:func:`name```, ``:class:`~pkg.Name```, ``:meth:``, ``:mod:``, ``:attr:``, ``:data:``
  roles become cross-references to the API reference (an optional autoref: a name that
  is not documented, e.g. ``torch.autograd.Function``, renders as plain code, so
  ``mkdocs build --strict`` never fails on it).

The source docstrings stay as they are (they also read well in ``help()``).
"""

from __future__ import annotations

import html
import re
import textwrap

import griffe

_ROLE = re.compile(r":(?:py:)?(func|class|meth|mod|attr|data|obj|exc):`(~?)([\w.]+)(\(\))?`")
_MATH = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<inline>.*)$")


def math_blocks(text: str) -> str:
    """Replace ``.. math::`` directives by ``$$`` display blocks."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _MATH.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent = m["indent"]
        body: list[str] = [m["inline"]] if m["inline"].strip() else []
        i += 1
        # The directive's content: following lines indented deeper than the directive (or blank).
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(indent)):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        block = textwrap.dedent("\n".join(body)).strip("\n")
        equations = [eq.strip("\n") for eq in re.split(r"\n[ \t]*\n", block) if eq.strip()]
        for eq in equations:
            out.extend(["", indent + "$$"] + [indent + ln for ln in eq.splitlines()] + [indent + "$$", ""])
    return "\n".join(out)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def cross_references(text: str, obj: griffe.Object) -> str:
    """Replace Sphinx roles by optional autorefs to the documented objects."""

    def replace(m: re.Match) -> str:
        short, target, call = m[2] == "~", m[3], m[4] or ""
        title = (target.rsplit(".", 1)[-1] if short else target) + call
        identifier = _resolve(target, obj)
        return (f'<autoref identifier="{html.escape(identifier)}" optional>'
                f"<code>{html.escape(title)}</code></autoref>")

    return _ROLE.sub(replace, text)


def _resolve(target: str, obj: griffe.Object) -> str:
    head, _, tail = target.partition(".")
    if head in ("lti_reduce", "adapters"):
        return target
    scope = obj
    while scope is not None:
        try:
            full = scope.resolve(head)
        except Exception:  # noqa: BLE001 - griffe raises NameResolutionError (and others on odd scopes)
            scope = scope.parent
            continue
        return full + ("." + tail if tail else "")
    return target


class RstToMarkdown(griffe.Extension):
    """Rewrite the docstrings of every object of a package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = cross_references(math_blocks(obj.docstring.value), obj)


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)
