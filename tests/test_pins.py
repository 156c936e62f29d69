"""The tested releases of the integration packages: pins, extras, README and CI say the same thing.

``constraints.txt`` pins the known-good releases the README's commands and CI install;
``.ci/constraints-oldest.txt`` pins the floors of the ``hf`` and ``lightning`` extras; the compatibility module
of the Hugging Face adapter names the tested range in its errors.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> dict[str, Version]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = Version(version.strip())
    return pins


def _extra(name: str) -> dict[str, Requirement]:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {Requirement(r).name.lower(): Requirement(r) for r in extras[name]}


@pytest.mark.parametrize("extra", ["hf", "lightning", "dev"])
def test_the_known_good_pins_lie_inside_the_supported_ranges(extra):
    pins = _pins(ROOT / "constraints.txt")
    for name, req in _extra(extra).items():
        if name in pins:
            assert req.specifier.contains(pins[name]), f"constraints.txt pins {name} {pins[name]} outside {req}"


def test_the_oldest_pins_are_the_floors_of_the_extras():
    oldest = _pins(ROOT / ".ci" / "constraints-oldest.txt")
    reqs = {**_extra("hf"), **_extra("lightning")}
    assert set(oldest) == {"transformers", "accelerate", "lightning"}
    for name, version in oldest.items():
        floors = [Version(s.version) for s in reqs[name].specifier if s.operator == ">="]
        assert floors == [version], f"{name}: extra floor {floors} but .ci/constraints-oldest.txt pins {version}"


def test_the_compat_module_names_the_tested_transformers_range():
    from adapters.torch.integrations.hf._compat import TESTED_TRANSFORMERS  # imports no transformers

    assert TESTED_TRANSFORMERS == (str(_pins(ROOT / ".ci" / "constraints-oldest.txt")["transformers"]),
                                   str(_pins(ROOT / "constraints.txt")["transformers"]))


def test_ci_runs_the_readme_test_command_with_the_known_good_pins():
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^pip install .*python -m pytest -q$", ci, re.M).group(0)
    assert "-c constraints.txt" in command
    readme = (ROOT / "README.md").read_text()
    assert f"```bash\n{command}\n```" in readme
    assert 'pip install torch==2.13.0 -e ".[dev]" -c constraints.txt && lti-reduce train' in readme


@pytest.mark.parametrize("name", ["transformers", "accelerate", "lightning"])
def test_every_integration_package_of_the_dev_extra_imports(name):
    """The integration tests skip where their package is missing; under the ``dev`` extra (CI, the README's
    test command) none may be missing or broken, or those skips would hide it (Lightning < 2.4 fails to
    import without ``pkg_resources``, a ModuleNotFoundError that ``importorskip`` turns into a skip)."""
    __import__(name)
