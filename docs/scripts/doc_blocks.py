"""Find and run the ```python code blocks of the documentation pages.

Used by ``tests/test_docs.py`` (the code on every page is executed in the test suite, so
the docs cannot rot) and by figure scripts that plot what a tutorial computes
(``fig_mnist1d.py``), so a figure shows what the page's code does.

A page's blocks run in order in one namespace, in a fresh working directory.

Markers (HTML comments, invisible on the site):

``<!-- docs-test: skip (REASON) -->``
    on the line(s) just before a fence: never run that block (e.g. multi-process DDP); the
    reason is required (the test suite checks it) and should name where the code is tested.
``<!-- docs-test: replace "OLD" "NEW" -->``
    just before a fence: run the block with the text OLD replaced by NEW (e.g. fewer
    training steps in the test suite than on the page).
``<!-- docs-test: data CDplayer.mat iss.mat -->``
    anywhere in a page: the page reads these files from its working directory; the
    runner links them there from ``../shared/data/slicot/`` beside the repository, or
    skips the page when they are not there.

A page is *skipped* (not failed) from the first block that needs what is missing: a block
that uses ``adapters.torch`` while it does not import yet, or a block that raises
``ModuleNotFoundError`` for an optional dependency (torch, mnist1d, slycot, control,
matplotlib, transformers, accelerate, lightning).

Command line (what the test suite runs, in a subprocess with one BLAS/OpenMP thread)::

    python docs/scripts/doc_blocks.py [--quick] PAGE.md ...   # prints one JSON line per page
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OPTIONAL_MODULES = {"torch", "mnist1d", "slycot", "control", "matplotlib", "transformers", "lightning", "accelerate"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")
_MARKER = re.compile(r"<!--\s*docs-test:\s*(?P<what>[\w-]+)(?P<args>.*?)-->")


@dataclass
class Block:
    page: Path
    line: int                       # 1-based line of the opening fence
    code: str
    skip: bool = False
    skip_reason: str = ""           # the text after ``skip`` in the marker, e.g. "(a torchrun script)"
    replacements: list[tuple[str, str]] = field(default_factory=list)

    def source(self, quick: bool = True) -> str:
        code = self.code
        for old, new in self.replacements if quick else []:
            if old not in code:
                raise ValueError(f"{self.page.name}:{self.line}: docs-test replace marker: {old!r} not in the block")
            code = code.replace(old, new)
        return code


def python_blocks(page: Path) -> list[Block]:
    """Every fenced block whose info string starts with ``python`` (or ``py``), in page order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].strip()
        close = re.compile(rf"^{re.escape(indent)}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        start, body = i, []
        i += 1
        while i < len(lines) and not close.match(lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1
        lang = info.split()[0].lower().lstrip(".{") if info else ""
        if lang in ("python", "py"):
            block = Block(page, start + 1, "\n".join(body) + "\n")
            _apply_markers(block, lines, start)
            blocks.append(block)
    return blocks


def _apply_markers(block: Block, lines: list[str], fence_index: int) -> None:
    j = fence_index - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    while j >= 0 and (m := _MARKER.search(lines[j])):
        if m["what"] == "skip":
            block.skip = True
            block.skip_reason = m["args"].strip().strip("()").strip()
        elif m["what"] == "replace":
            old, new = shlex.split(m["args"])
            block.replacements.append((old, new))
        j -= 1


def required_data(page: Path) -> list[str]:
    """File names a page declares with ``<!-- docs-test: data ... -->``."""
    names: list[str] = []
    for m in _MARKER.finditer(page.read_text(encoding="utf-8")):
        if m["what"] == "data":
            names.extend(m["args"].split())
    return names


def data_dir() -> Path:
    return REPO.parent / "shared" / "data" / "slicot"


def adapter_available() -> bool:
    try:
        import adapters.torch as at
    except Exception:  # noqa: BLE001 - any import failure means "not there yet"
        return False
    return hasattr(at, "compress_") and hasattr(at, "LRU")


def run_page(page: Path, namespace: dict | None = None, *, quick: bool = False) -> dict:
    """Run a page's blocks in order in one namespace, in the current directory; returns it.

    Raises ``SkipPage`` when the page needs something that is not installed.
    """
    ns = {"__name__": "__docs__"} if namespace is None else namespace
    has_adapter = None
    for block in python_blocks(page):
        if block.skip:
            continue
        if "adapters.torch" in block.code or "adapters import torch" in block.code:
            has_adapter = adapter_available() if has_adapter is None else has_adapter
            if not has_adapter:
                raise SkipPage(f"{page.name}:{block.line}: adapters.torch does not import yet")
        code = "\n" * (block.line) + block.source(quick)   # tracebacks show the page's line numbers
        try:
            exec(compile(code, str(page), "exec"), ns)  # noqa: S102 - our own documentation
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] in OPTIONAL_MODULES:
                raise SkipPage(f"{page.name}:{block.line}: needs {exc.name}") from exc
            raise
    return ns


class SkipPage(Exception):
    """The page needs an optional dependency or data file that is not available."""


def run_pages(pages: list[Path], *, quick: bool) -> list[dict]:
    """Run every page in its own namespace and working directory; a result dict per page."""
    results = []
    for page in pages:
        started = time.perf_counter()
        result = {"page": str(page), "status": "ok", "message": "", "seconds": 0.0}
        with tempfile.TemporaryDirectory(prefix="docs-") as work:
            old_cwd = os.getcwd()
            try:
                missing = [n for n in required_data(page) if not (data_dir() / n).is_file()]
                if missing:
                    raise SkipPage(f"data files not found in {data_dir()}: {missing}")
                for name in required_data(page):
                    os.symlink(data_dir() / name, Path(work) / name)
                os.chdir(work)
                run_page(page, quick=quick)
            except SkipPage as exc:
                result.update(status="skip", message=str(exc))
            except BaseException:  # noqa: BLE001 - reported to the test, which fails
                result.update(status="fail", message=traceback.format_exc(limit=-8))
            finally:
                os.chdir(old_cwd)
                if "matplotlib.pyplot" in sys.modules:
                    sys.modules["matplotlib.pyplot"].close("all")
        result["seconds"] = round(time.perf_counter() - started, 2)
        results.append(result)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run the python code blocks of documentation pages.")
    parser.add_argument("pages", nargs="+", type=Path)
    parser.add_argument("--quick", action="store_true", help="apply the docs-test replace markers")
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.path.insert(0, str(REPO))
    for result in run_pages([p.resolve() for p in args.pages], quick=args.quick):
        print("DOCS-RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
