"""Every script under ``examples/`` runs from the package alone and says what it claims."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def _run(path: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=300,
                          cwd=path.parent)
    assert done.returncode == 0, f"{path.name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_there_are_examples_and_the_gallery_shows_each():
    gallery = (ROOT / "docs" / "examples.md").read_text()
    assert EXAMPLES and all(f'--8<-- "examples/{p.name}"' in gallery for p in EXAMPLES)


def test_quickstart_reduces_the_cd_player_within_the_bound():
    out = _run(ROOT / "examples" / "quickstart.py")
    assert "n = 120 -> r =" in out and "error bound" in out
    assert out.splitlines()[2].rstrip().endswith("True"), out


def test_compress_in_training_cuts_and_trains_on():
    pytest.importorskip("torch")
    out = _run(ROOT / "examples" / "compress_in_training.py")
    assert out.count("total") == 3, out            # three cuts, each printing its report
    sizes = out.rsplit("state sizes", 1)[1]
    assert all(int(s) < 64 for s in sizes.strip(" []\n").split(","))
