"""Packaging: ``import adapters.torch`` works beside AdapterHub's regular ``adapters`` package.

AdapterHub's distribution is a regular package named ``adapters``; once it is importable,
Python looks for ``adapters.torch`` only inside AdapterHub's folder. A regular (wheel)
install of lti_reduce ships ``lti_reduce_adapters.pth``, which appends a fallback finder
(``_lti_reduce_adapters``) to ``sys.meta_path``. An editable install hides the conflict
(its own finder maps ``adapters.torch``), so these tests run Python without the site
module or from a wheel installed into a fresh venv.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _fake_adapterhub(tmp_path: Path) -> Path:
    pkg = tmp_path / "hub" / "adapters"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("ADAPTERHUB = True\n")
    return pkg.parent


def _run(python, code, *, extra_path=(), flags=()):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in extra_path)
    return subprocess.run([str(python), *flags, "-c", code], capture_output=True, text=True, env=env, timeout=120)


FIND = (
    "import importlib.util, adapters\n"
    "assert getattr(adapters, 'ADAPTERHUB', False), adapters\n"
    "spec = importlib.util.find_spec('adapters.torch')\n"
    "print(spec.origin if spec else None)\n"
)


def test_without_the_hook_a_regular_adapters_package_hides_ours(tmp_path):
    """The conflict itself (python -S: no .pth files, so neither ours nor an editable finder)."""
    hub = _fake_adapterhub(tmp_path)
    out = _run(sys.executable, f"import sys; sys.path[:0] = [{str(hub)!r}, {str(ROOT)!r}]\n" + FIND, flags=("-S",))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"


def test_the_hook_finds_our_adapters_torch_beside_adapterhub(tmp_path):
    hub = _fake_adapterhub(tmp_path)
    code = f"import sys; sys.path[:0] = [{str(hub)!r}, {str(ROOT)!r}]\nimport _lti_reduce_adapters\n" + FIND
    out = _run(sys.executable, code, flags=("-S",))
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == ROOT / "adapters" / "torch" / "__init__.py"


def test_the_hook_changes_nothing_for_other_names(tmp_path):
    hub = _fake_adapterhub(tmp_path)
    code = (f"import sys; sys.path[:0] = [{str(hub)!r}, {str(ROOT)!r}]\nimport _lti_reduce_adapters\n"
            "import importlib.util\n"
            "assert importlib.util.find_spec('adapters.nothing_here') is None\n"
            "assert _lti_reduce_adapters.AdaptersTorchFinder.find_spec('adapters.torch.lru') is None\n"
            "_lti_reduce_adapters.install(); assert sum(f is _lti_reduce_adapters.AdaptersTorchFinder for f in sys.meta_path) == 1\n")
    out = _run(sys.executable, code, flags=("-S",))
    assert out.returncode == 0, out.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(out)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"pip wheel failed:\n{done.stdout}\n{done.stderr}")
    (whl,) = out.glob("lti_reduce-*.whl")
    return whl


def test_the_wheel_ships_the_hook_and_the_license(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "lti_reduce_adapters.pth" in names and "_lti_reduce_adapters.py" in names
    assert any(n.endswith("LICENSE") for n in names), names
    assert "adapters/torch/__init__.py" in names and "adapters/__init__.py" not in names


def test_a_regular_install_imports_adapters_torch_beside_adapterhub(wheel, tmp_path):
    """The wheel in a fresh venv (no editable finder), AdapterHub's stand-in first on the path."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = _run(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    with zipfile.ZipFile(wheel) as z:  # what pip does for a pure wheel, without needing pip in the venv
        z.extractall(purelib)
    hub = _fake_adapterhub(tmp_path)
    out = _run(python, FIND, extra_path=[hub])
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == Path(purelib) / "adapters" / "torch" / "__init__.py"


def _sdist_of_a_clean_checkout(tmp_path: Path) -> Path:
    """Build the source archive from the tracked files only (no egg-info left by an earlier build,
    which setuptools would otherwise read its file list from)."""
    import shutil

    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    clean = tmp_path / "checkout"
    for name in listed.stdout.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (clean / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clean / name)
    code = ("from setuptools import build_meta\n"
            f"print(build_meta.build_sdist({str(tmp_path)!r}))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=clean, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (archive,) = tmp_path.glob("lti_reduce-*.tar.gz")
    return archive


def test_the_source_archive_carries_what_the_tests_and_the_site_need(tmp_path):
    """``MANIFEST.in``: the sdist holds docs/, benchmarks/, examples/ and mkdocs.yml (test_docs and
    test_examples read them), beside the package and the tests."""
    import tarfile

    archive = _sdist_of_a_clean_checkout(tmp_path)
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("mkdocs.yml", "LICENSE", "docs/index.md", "docs/scripts/mkdocs_hooks.py",
                   "benchmarks/bench_compress.py", "examples/quickstart.py", "tests/test_docs.py",
                   "lti_reduce/__init__.py", "adapters/torch/__init__.py", "lti_reduce_adapters.pth"):
        assert needed in names, needed
    assert not any("__pycache__" in n for n in names)


def test_a_wheel_builds_from_the_source_archive(tmp_path):
    """What ``pip install lti_reduce-<version>.tar.gz`` does: the wheel built from the unpacked
    archive still ships the ``.pth`` hook."""
    import tarfile

    archive = _sdist_of_a_clean_checkout(tmp_path)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "src", filter="data")
    (src,) = (tmp_path / "src").iterdir()
    code = ("from setuptools import build_meta\n"
            f"print(build_meta.build_wheel({str(tmp_path / 'whl')!r}))\n")
    (tmp_path / "whl").mkdir()
    done = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (whl,) = (tmp_path / "whl").glob("lti_reduce-*.whl")
    assert "lti_reduce_adapters.pth" in zipfile.ZipFile(whl).namelist()


def test_the_install_page_lists_every_extra_with_what_it_installs():
    """docs/install.md's table of extras names each extra of pyproject.toml and each package it adds."""
    import re
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    rows = {}
    for line in (ROOT / "docs" / "install.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*`([\w-]+)`\s*\|(.*?)\|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    assert set(extras) <= set(rows), f"extras missing from the install page: {sorted(set(extras) - set(rows))}"
    for name, requirements in extras.items():
        for req in requirements:
            package = re.split(r"[\[<>=!~ ]", req, maxsplit=1)[0]
            listed = rows[name].replace("python-control", "control")
            assert package in listed or (name == "dev" and package in rows["docs"]), (name, package)
