"""The documentation builds, documents every public name, and the code on its pages runs.

* ``mkdocs build --strict`` passes (broken links, missing references and griffe warnings fail it);
  skipped when mkdocs and its plugins are not installed (``pip install -e ".[docs]"``).
* every name of ``lti_reduce.__all__`` and ``adapters.torch.__all__`` has an entry in the built
  API reference;
* every ```python block of ``docs/**/*.md`` runs: one page's blocks in order in one namespace,
  in a fresh directory, all pages in one subprocess with one BLAS/OpenMP thread (see
  ``docs/scripts/doc_blocks.py`` for the markers that skip a block or shorten a training run);
  pages that need ``adapters.torch`` are skipped while it does not import;
* the doctests of every ``lti_reduce`` module pass.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import importlib.util
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
API_PAGES = {"lti_reduce": DOCS / "api" / "lti_reduce.md", "adapters.torch": DOCS / "api" / "adapters_torch.md"}


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_docs_{name}", DOCS / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


doc_blocks = _load_script("doc_blocks")
PAGES = sorted(p for p in DOCS.rglob("*.md") if doc_blocks.python_blocks(p))


def _mkdocs_available() -> bool:
    return all(importlib.util.find_spec(m) is not None
               for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "pymdownx"))


def _public_names(package: str) -> list[str]:
    """``__all__`` read statically from the package's ``__init__.py`` (empty if it has none yet)."""
    init = REPO.joinpath(*package.split("."), "__init__.py")
    if not init.is_file():
        return []
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


# ----------------------------------------------------------------------------------------------- the build


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> dict:
    """Start the site build and the page runner side by side (two processes, two cores)."""
    started = {}
    if _mkdocs_available():
        out = tmp_path_factory.mktemp("site")
        env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
        cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
        started["site"] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True), out)
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(DOCS / "scripts" / "doc_blocks.py"), "--quick", *map(str, PAGES)]
    started["pages"] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True), None)
    yield started
    for proc, _ in started.values():
        if proc.poll() is None:
            proc.kill()


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{proc.args[:3]} did not finish in {timeout:.0f} s:\n{out[-3000:]}\n{err[-3000:]}")


@pytest.fixture(scope="module")
def site(jobs) -> Path:
    if "site" not in jobs:
        pytest.skip("mkdocs, mkdocs-material, mkdocstrings[python] or pymdown-extensions not installed")
    proc, out = jobs["site"]
    stdout, stderr = _finish(proc, 300)
    if proc.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed (exit {proc.returncode}):\n{stdout[-4000:]}\n{stderr[-8000:]}")
    return out


def test_mkdocs_build_strict_passes(site):
    assert (site / "index.html").is_file()
    assert (site / "api" / "lti_reduce.html").is_file()


def test_site_needs_no_cdn(site):
    """No page loads a script, stylesheet or font from another host (the site must work offline)."""
    import re

    remote = re.compile(r"""<(?:script|link)[^>]+(?:src|href)=["'](?:https?:)?//""", re.I)
    offenders = [str(p.relative_to(site)) for p in site.rglob("*.html") if remote.search(p.read_text(encoding="utf-8"))]
    assert not offenders, f"pages loading remote assets: {offenders}"


def _expected_anchors(package: str, name: str) -> set[str]:
    """HTML ids under which ``package.name`` may be documented.

    Normally ``package.name``. A function re-exported under the name of its own submodule
    (``lti_reduce.gramians`` is both) is documented by its full path, since
    ``package.name`` then names the module.
    """
    anchors = {f"{package}.{name}"}
    folder = REPO.joinpath(*package.split("."))
    if not ((folder / f"{name}.py").is_file() or (folder / name / "__init__.py").is_file()):
        return anchors  # no submodule of that name: nothing to import
    try:
        obj = getattr(importlib.import_module(package), name)
    except Exception:  # noqa: BLE001 - not importable here: the plain id only
        return anchors
    if not isinstance(obj, type(sys)):
        anchors = {f"{obj.__module__}.{obj.__qualname__}"}
    return anchors


@pytest.mark.parametrize("package", sorted(API_PAGES))
def test_every_public_name_is_in_the_api_reference(package, site):
    names = _public_names(package)
    if not names:
        pytest.skip(f"{package} has no __all__ yet")
    html = (site / "api" / (API_PAGES[package].stem + ".html")).read_text(encoding="utf-8")
    missing = [n for n in names if not any(f'id="{a}"' in html for a in _expected_anchors(package, n))]
    assert not missing, f"public names of {package} without an entry in the API reference: {missing}"


@pytest.mark.parametrize("package", sorted(API_PAGES))
def test_api_page_places_or_collects_every_public_name(package):
    """Without a build: each name is placed on its page, or the page collects the rest automatically."""
    text = API_PAGES[package].read_text(encoding="utf-8")
    if f"<!-- api-rest: {package} -->" in text:
        return
    missing = [n for n in _public_names(package) if f"::: {package}.{n}" not in text]
    assert not missing, f"{API_PAGES[package].name} does not document {missing}"


# ---------------------------------------------------------------------------------------- code on the pages


@pytest.fixture(scope="module")
def page_results(jobs) -> dict[str, dict]:
    """Every page's code, run once in one subprocess (torch and friends are imported once)."""
    proc, _ = jobs["pages"]
    stdout, stderr = _finish(proc, 900)
    results = {}
    for line in stdout.splitlines():
        if line.startswith("DOCS-RESULT "):
            result = json.loads(line[len("DOCS-RESULT "):])
            results[result["page"]] = result
    if not results:
        pytest.fail(f"the docs runner printed no result (exit {proc.returncode}):\n{stderr[-6000:]}")
    return results


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_code_on_page_runs(page, page_results):
    result = page_results.get(str(page))
    assert result is not None, f"no result for {page} (the runner died before it?)"
    if result["status"] == "skip":
        pytest.skip(result["message"])
    assert result["status"] == "ok", f"code on {page.relative_to(REPO)} failed:\n{result['message']}"


def test_every_skipped_block_says_why_it_is_skipped():
    unexplained = [f"{b.page.relative_to(REPO)}:{b.line}" for p in PAGES for b in doc_blocks.python_blocks(p)
                   if b.skip and not b.skip_reason]
    assert not unexplained, f"docs-test: skip without a reason at {unexplained}"


USER_PAGES = [p for p in PAGES if p.name.startswith("quickstart") or p.parent.name == "tutorials"]


def test_quickstarts_and_tutorials_need_no_files_from_outside_the_package():
    assert USER_PAGES, "no quickstart or tutorial page found"
    needing = {str(p.relative_to(DOCS)): doc_blocks.required_data(p) for p in USER_PAGES}
    assert not {k: v for k, v in needing.items() if v}


@pytest.mark.parametrize("page", USER_PAGES, ids=[str(p.relative_to(DOCS)) for p in USER_PAGES])
def test_quickstarts_and_tutorials_run_in_full_where_everything_is_installed(page, page_results):
    """With the ``dev`` extra every optional dependency is there, so a quickstart or tutorial page
    may not be skipped as a whole; only marked blocks (each with its reason) stay out."""
    missing = sorted(m for m in doc_blocks.OPTIONAL_MODULES if importlib.util.find_spec(m) is None)
    if missing or not doc_blocks.adapter_available():
        pytest.skip(f"not a full dev install (missing: {missing or ['adapters.torch']})")
    result = page_results.get(str(page))
    assert result is not None and result["status"] == "ok", result


def test_runner_honours_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text('Text\n\n```python\nx = 1\n```\n\n<!-- docs-test: skip -->\n```python\nraise SystemExit\n```\n\n'
                    '<!-- docs-test: replace "steps = 1000" "steps = 3" -->\n```python\nsteps = 1000\ny = x + steps\n```\n'
                    '\n```bash\nexit 1\n```\n', encoding="utf-8")
    blocks = doc_blocks.python_blocks(page)
    assert [b.skip for b in blocks] == [False, True, False]
    ns = doc_blocks.run_page(page, quick=True)
    assert ns["y"] == 4


# ------------------------------------------------------------------------------------------------ doctests

_CORE_MODULES = ["lti_reduce"] + sorted(
    f"lti_reduce.{m.name}" for m in pkgutil.iter_modules([str(REPO / "lti_reduce")]))
# listed without importing torch; the Lightning callback's module needs lightning and has no examples
_ADAPTER_MODULES = ["adapters.torch"] + sorted(
    f"adapters.torch.{package}{m.name}" for package in ("", "layers.", "cut.", "integrations.")
    for m in pkgutil.iter_modules([str(REPO / "adapters" / "torch" / package.rstrip("."))])
    if not m.ispkg and m.name != "lightning")


@pytest.mark.parametrize("name", _CORE_MODULES + _ADAPTER_MODULES)
def test_doctests_of_module(name):
    if name.startswith("adapters."):
        pytest.importorskip("torch")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples in {name} failed (output above)"


@pytest.mark.parametrize("name", ["lti_reduce.balancing", "lti_reduce.bounds", "adapters.torch.compress",
                                  "adapters.torch.schedule", "adapters.torch.layers.protocol"])
def test_the_main_modules_carry_examples(name):
    if name.startswith("adapters."):
        pytest.importorskip("torch")
    tests = doctest.DocTestFinder().find(importlib.import_module(name))
    assert sum(len(t.examples) for t in tests) > 0


# ------------------------------------------------------------------------------------- docstring conversion


def test_rst_math_and_roles_become_markdown():
    griffe = pytest.importorskip("griffe")
    ext = _load_script("griffe_rst")
    text = "Intro.\n\n.. math::\n\n    a = b\n\n    c = d\n\nAfter.\n\n.. math:: x^2\n"
    out = ext.math_blocks(text)
    assert out.count("$$") == 6 and "a = b" in out and "x^2" in out and ".. math::" not in out
    module = griffe.Module("pkg")
    ref = ext.cross_references("see :func:`~pkg.sub.f` and :class:`torch.Tensor`", module)
    assert '<autoref identifier="pkg.sub.f" optional><code>f</code></autoref>' in ref
    assert '<autoref identifier="torch.Tensor" optional><code>torch.Tensor</code></autoref>' in ref
