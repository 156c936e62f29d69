"""Shared test configuration: BLAS threads, Hypothesis profiles, optional-dependency fixtures.

Hypothesis profiles
-------------------
``ci`` (default)   15 examples per property, derandomized (the same examples on every run), no deadline.
``thorough``       200 examples per property, random; run with ``HYPOTHESIS_PROFILE=thorough pytest tests``.

Any other registered profile name may be given in ``HYPOTHESIS_PROFILE``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# One BLAS thread. The systems under test are small (n <= 30, a few of n = 270): multi-threaded OpenBLAS only
# adds synchronization, and on a busy 2-core CI runner it made SLICOT calls 100x slower (0.3 s instead of
# 3 ms). Must be set before numpy is first imported; a value already in the environment wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# tests/ holds helper modules (reference.py, strategies.py) imported by plain name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

settings.register_profile(
    "ci",
    max_examples=15,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def torch():
    """torch, or skip the test (it is an optional dependency)."""
    return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def slycot():
    """slycot (SLICOT), or skip: the independent references in reference.py need it."""
    return pytest.importorskip("slycot")


@pytest.fixture(scope="session")
def control():
    """python-control, or skip."""
    return pytest.importorskip("control")
