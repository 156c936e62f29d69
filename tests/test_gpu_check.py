"""benchmarks/gpu_check.sh: valid bash, and its dry run prints the table with every row (no test runs)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
ROWS = ("CUDA tests", "compress_ vs 1 training step", "LRU step time by d_state", "batched HSVs", "lti-reduce train --quick")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not available")


def test_gpu_check_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_gpu_check_dry_run_prints_every_row(tmp_path):
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--device", "cpu", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    for row in ROWS:
        assert row in out, row
    assert "--device cpu" in (tmp_path / "train_quick.log").read_text()


def test_gpu_check_rejects_an_unknown_device(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--device", "tpu", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--device must be" in proc.stderr
