"""The adapter's layout: imports go only downward, integrations -> cut -> layers -> core; files and functions short.

Read from the source with ``ast`` (nothing is imported), every import counted, also those inside functions.
See CONTRIBUTING.md for what each folder holds.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TORCH = REPO / "adapters" / "torch"

# Lowest first. A module may import modules of its own tier or of a lower one.
CORE, KERNELS, LAYERS, CUT, INTEGRATIONS, TOP = range(6)
TIER_NAMES = ["core", "kernels", "layers", "cut", "integrations", "top"]

# Known upward imports, each with the part of the layout work that removes it.
KNOWN_UPWARD: set[tuple[str, str]] = set()

# Sizes a reader takes in at once: a module of at most MAX_FILE_LINES lines, a function of at most
# MAX_FUNCTION_LINES lines of code (its docstring not counted). Known exceptions, to be split; each entry
# goes when its file or function is split (test_a_known_long_file_or_function_is_still_long).
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
KNOWN_LONG_FILES: set[str] = set()
KNOWN_LONG_FUNCTIONS: set[tuple[str, str]] = set()


def tier(module: str) -> int | None:
    """The tier of a dotted module name; ``None`` for modules outside this repository."""
    if module == "lti_reduce" or module.startswith("lti_reduce."):
        return CORE
    if not module.startswith("adapters.torch"):
        return None
    rest = module[len("adapters.torch"):].lstrip(".").split(".")
    head = rest[0]
    if head in ("scan", "optim"):  # torch-only kernels the layers and the cut run on
        return KERNELS
    if head == "layers":
        return LAYERS
    if head in ("integrations", "lightning", "hf"):  # the last two: the callbacks' public import paths
        return INTEGRATIONS
    if head in ("", "__init__", "experiment", "data", "training"):  # the package's API, and the experiment
        return TOP
    return CUT


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path = REPO) -> set[str]:
    """Dotted names of everything ``path`` imports (relative imports resolved; ``from m import x`` gives ``m.x``)."""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package.pop()
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_tiers_are_what_the_folders_say():
    assert tier("lti_reduce.gramians") == CORE
    assert tier("adapters.torch.scan.linear_recurrence") == KERNELS
    assert tier("adapters.torch.layers.lru") == LAYERS
    assert tier("adapters.torch.compress") == tier("adapters.torch.schedule") == CUT
    assert tier("adapters.torch.integrations.fsdp") == tier("adapters.torch.lightning") == INTEGRATIONS
    assert tier("adapters.torch") == TOP
    assert tier("torch.nn") is None


def test_relative_imports_are_resolved_from_the_importing_module(tmp_path):
    folder = tmp_path / "adapters" / "torch" / "layers"
    folder.mkdir(parents=True)
    (folder / "lru.py").write_text("from ..scan import MODES\nfrom . import _base\nimport torch\n"
                                   "def f():\n    from ...torch.compress import compress_\n")
    found = imported_modules(folder / "lru.py", root=tmp_path)
    assert found == {"adapters.torch.scan.MODES", "adapters.torch.layers._base", "torch",
                     "adapters.torch.compress.compress_"}


def _upward_imports(files) -> list[str]:
    wrong = []
    for path in files:
        name = module_name(path)
        own = tier(name)
        for imported in sorted(imported_modules(path)):
            other = tier(imported)
            if other is None or other <= own:
                continue
            if any(name == a and (imported == b or imported.startswith(b + ".")) for a, b in KNOWN_UPWARD):
                continue
            wrong.append(f"{path.relative_to(REPO)} ({TIER_NAMES[own]}) imports {imported} ({TIER_NAMES[other]})")
    return wrong


def test_imports_in_the_adapter_go_only_downward():
    assert _upward_imports(_python_files(TORCH)) == []


def test_the_layers_import_only_the_core_the_kernels_and_each_other():
    files = _python_files(TORCH / "layers")
    assert {p.name for p in files} >= {"lru.py", "s5.py", "s4d.py", "protocol.py", "resizing.py"}
    assert _upward_imports(files) == []


def test_the_steps_of_the_cut_never_import_its_entry_point():
    """``compress.py`` calls the steps of ``cut/``; a step importing it back would make the two one tangle."""
    files = _python_files(TORCH / "cut")
    assert {p.name for p in files} >= {"plan.py", "compute.py", "apply.py", "certify.py", "report.py"}
    wrong = [f"{path.relative_to(REPO)} imports {m}" for path in files for m in sorted(imported_modules(path))
             if m == "adapters.torch.compress" or m.startswith("adapters.torch.compress.")]
    assert wrong == []


def test_the_core_never_imports_the_adapter():
    wrong = [f"{path.relative_to(REPO)} imports {m}" for path in _python_files(REPO / "lti_reduce")
             for m in sorted(imported_modules(path)) if m == "adapters" or m.startswith("adapters.")]
    assert wrong == []


def test_a_known_upward_import_is_still_there():
    """An entry of KNOWN_UPWARD that no longer applies must go, so the list only ever shrinks."""
    for importer, imported in KNOWN_UPWARD:
        path = REPO / (importer.replace(".", "/") + ".py")
        assert any(m == imported or m.startswith(imported + ".") for m in imported_modules(path)), (importer, imported)


def test_importing_the_adapter_and_the_integrations_package_imports_no_framework():
    pytest.importorskip("torch")
    code = ("import sys, adapters.torch, adapters.torch.integrations, adapters.torch.layers\n"
            "import adapters.torch.integrations.hf.mamba, adapters.torch.integrations.hf._compat\n"
            "print(sorted(m for m in ('lightning', 'transformers', 'accelerate') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_hugging_face_mixers_register_with_the_cut_when_the_adapter_is_imported():
    """The cut never imports an integration: the mixers' kinds reach it by registering (CONTRIBUTING.md).

    ``import adapters.torch`` registers them without importing transformers; a reloaded module's kinds replace
    its earlier ones in place.
    """
    pytest.importorskip("torch")
    code = ("import importlib, sys, adapters.torch\n"
            "from adapters.torch.cut.selective import kinds\n"
            "before = [type(k).__name__ for k in kinds._kinds()]\n"
            "hf = importlib.reload(sys.modules['adapters.torch.integrations.hf.mamba'])\n"
            "after = kinds._kinds()\n"
            "print(before, [type(k).__name__ for k in after] == before, after[1:] == hf.HF_KINDS,\n"
            "      'transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['_SelectiveSSMKind',", "'_MambaMixerKind',", "'_FalconMambaMixerKind',",
                                   "'_Mamba2MixerKind']", "True", "True", "False"]


def function_lengths(source: str) -> dict[str, int]:
    """Lines of code of every function (also methods and nested ones) in ``source``, its docstring not counted.

    The longest of the functions of one name is kept.
    """
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        lines = node.end_lineno - node.lineno + 1
        first = node.body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            lines -= first.end_lineno - first.lineno + 1
        found[node.name] = max(lines, found.get(node.name, 0))
    return found


def _long_files() -> set[str]:
    return {path.relative_to(TORCH).as_posix() for path in _python_files(TORCH)
            if len(path.read_text(encoding="utf-8").splitlines()) > MAX_FILE_LINES}


def _long_functions() -> set[tuple[str, str]]:
    return {(path.relative_to(TORCH).as_posix(), name) for path in _python_files(TORCH)
            for name, lines in function_lengths(path.read_text(encoding="utf-8")).items() if lines > MAX_FUNCTION_LINES}


def test_function_lengths_leave_out_the_docstring_and_count_nested_functions():
    source = 'def f(x):\n    """Doc.\n\n    More.\n    """\n    def g():\n        return 1\n    return g\n'
    assert function_lengths(source) == {"f": 4, "g": 2}


def test_no_module_of_the_adapter_is_longer_than_the_limit():
    assert _long_files() - KNOWN_LONG_FILES == set()


def test_no_function_of_the_adapter_is_longer_than_the_limit():
    assert _long_functions() - KNOWN_LONG_FUNCTIONS == set()


def test_a_known_long_file_or_function_is_still_long():
    """An entry of KNOWN_LONG_FILES or KNOWN_LONG_FUNCTIONS that no longer applies must go."""
    assert KNOWN_LONG_FILES - _long_files() == set()
    assert KNOWN_LONG_FUNCTIONS - _long_functions() == set()
