"""Launching the two-process gloo jobs of the distributed tests (a helper module, imported by plain name).

Each such test file is also a script: ``python tests/test_x.py RANK WORLD PORT OUTDIR`` runs one rank's worker,
which saves what the test compares as ``OUTDIR/rank{RANK}.pt``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(script: str, out: Path, job: str, timeout: float = 120) -> None:
    """Run ``script`` as ranks 0 and 1 of a gloo job writing into ``out``; fail the test with a rank's log if it
    fails, or if the job does not finish within ``timeout`` seconds (both processes are killed then)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, script, str(r), "2", str(port), str(out)], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=timeout)[0].decode())
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"the 2-process {job} job did not finish in {timeout:g} s")
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} failed:\n{log}"
