"""Every public name has a docstring, and every documented parameter or attribute a description.

The API reference (mkdocstrings) renders these docstrings; a ``name : type`` line with nothing under it
shows as an empty row.
"""

import inspect
import re

import pytest

import lti_reduce

at = pytest.importorskip("adapters.torch")

_HEAD = re.compile(r"-{3,}")
_ENTRY = re.compile(r"^[A-Za-z_*][\w, *]* :")


def _public():
    for mod in (lti_reduce, at):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            yield f"{mod.__name__}.{name}", obj
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    if isinstance(member, property) or inspect.isfunction(member):
                        yield f"{mod.__name__}.{name}.{attr}", member


def _undescribed(doc: str) -> list[str]:
    lines, section, bad = doc.splitlines(), None, []
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if _HEAD.fullmatch(nxt.strip()):
            section = line.strip()
        elif section in ("Parameters", "Attributes") and _ENTRY.match(line) and not nxt.startswith("    "):
            bad.append(line)
    return bad


@pytest.mark.parametrize("name,obj", list(_public()), ids=lambda x: x if isinstance(x, str) else "")
def test_public_name_is_documented_with_every_parameter_described(name, obj):
    doc = obj.__doc__ if isinstance(obj, property) else inspect.getdoc(obj)
    assert doc and doc.strip(), f"{name} has no docstring"
    assert not _undescribed(inspect.cleandoc(doc)), f"{name}: entries without a description: {_undescribed(inspect.cleandoc(doc))}"
