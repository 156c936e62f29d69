"""MkDocs hooks: MathJax served from the site itself, and complete API pages.

1. Math renders offline (below).
2. ``<!-- api-rest: PACKAGE -->`` on an API page is replaced by ``::: PACKAGE.NAME``
   entries for every name of ``PACKAGE.__all__`` that the page does not document yet, so
   a new public name appears in the reference even before someone files it under a
   section. ``__all__`` is read statically from ``PACKAGE/__init__.py`` (nothing is
   imported, so building the site needs neither torch nor the package's dependencies).

Offline math

MathJax is not vendored in the repository (megabytes of generated JavaScript). The
``django-static-mathjax`` wheel on PyPI ships the official MathJax 3 build, with no
dependencies (the Django part is only a static-files folder); it installs as the import
package ``mathjax``. When it is installed, this hook copies one self-contained
component, ``es5/tex-svg-full.js`` (TeX input with every extension, SVG output: no font
files and no further downloads), into the built site and loads it on every page.

When it is not installed the site still builds (``--strict`` too) and the math is left
as readable TeX source between ``\\(``/``\\)`` and ``\\[``/``\\]`` (pymdownx.arithmatex
in generic mode); no CDN is ever contacted.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import re
from pathlib import Path

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.mathjax")

MATHJAX_COMPONENT = "tex-svg-full.js"
SITE_PATH = "javascripts/mathjax/" + MATHJAX_COMPONENT

_found: Path | None = None


def find_mathjax() -> Path | None:
    """Path of MathJax's ``es5/tex-svg-full.js`` from the ``mathjax`` package, or None."""
    try:
        spec = importlib.util.find_spec("mathjax")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(root) / "static" / "mathjax" / "es5" / MATHJAX_COMPONENT
        if candidate.is_file():
            return candidate
    return None


def on_config(config, **kwargs):
    global _found
    _found = find_mathjax()
    if _found is None:
        log.info("MathJax not installed (pip install django-static-mathjax): math is shown as TeX source.")
        return config
    if SITE_PATH not in [str(s) for s in config.extra_javascript]:
        config.extra_javascript.append(SITE_PATH)
    return config


def on_files(files, config, **kwargs):
    if _found is not None:
        files.append(File.generated(config, SITE_PATH, abs_src_path=str(_found)))
    return files


_API_REST = re.compile(r"<!--\s*api-rest:\s*(?P<package>[\w.]+)\s*-->")


def public_names(package: str, root: Path) -> list[str]:
    """``package.__all__`` read from ``root/package/__init__.py`` without importing it."""
    init = root.joinpath(*package.split("."), "__init__.py")
    if not init.is_file():
        return []
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return [str(x) for x in ast.literal_eval(node.value)]
    return []


def on_page_markdown(markdown, page, config, files, **kwargs):
    def rest(match):
        package = match["package"]
        names = public_names(package, Path(config.config_file_path).parent)
        missing = [n for n in names if not re.search(rf"^:::\s*{re.escape(package)}\.{re.escape(n)}\s*$", markdown, re.M)]
        if not names:
            return (f'!!! note "`{package}` not found"\n    `{package}/__init__.py` has no `__all__` '
                    "when this site was built.\n")
        if not missing:
            return ""
        entries = "\n\n".join(f"::: {package}.{n}" for n in missing)
        return f"## Other public names\n\n{entries}\n"

    return _API_REST.sub(rest, markdown)
