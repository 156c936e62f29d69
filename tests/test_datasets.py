"""The shipped SLICOT benchmark models (``lti_reduce.datasets``).

Checked against the published properties (sizes, slowest poles of the README table of
Chahlaoui & Van Dooren's collection), against the original MATLAB files when the shared data
folder is present, and as installed from a built wheel.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from lti_reduce import datasets

REPO = Path(__file__).resolve().parents[1]
MAT = REPO.parent / "shared" / "data" / "slicot"

# loader, MATLAB file, (n, inputs, outputs), slowest pole (max Re) to 4 digits, nonzeros of A
MODELS = {
    "cd_player": (datasets.cd_player, "CDplayer.mat", (120, 2, 2), -0.0243, 240),
    "iss": (datasets.iss, "iss.mat", (270, 3, 3), -0.0031, 405),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loader_returns_the_published_shapes_as_float64(name):
    load, _, (n, m, p), _, _ = MODELS[name]
    A, B, C, D = load()
    assert [M.shape for M in (A, B, C, D)] == [(n, n), (n, m), (p, n), (p, m)]
    assert all(isinstance(M, np.ndarray) and M.dtype == np.float64 for M in (A, B, C, D))
    assert not np.any(D)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_is_hurwitz_with_the_published_slowest_pole(name):
    load, _, _, slowest, _ = MODELS[name]
    A = load()[0]
    assert round(float(np.linalg.eigvals(A).real.max()), 4) == slowest


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sparse_loader_gives_the_same_matrix(name):
    load, _, _, _, nnz = MODELS[name]
    As = load(sparse=True)[0]
    assert scipy.sparse.issparse(As) and As.nnz == nnz
    np.testing.assert_array_equal(As.toarray(), load()[0])


def test_loaders_return_fresh_arrays():
    A, B, _, _ = datasets.cd_player()
    A[0, 0] = B[0, 0] = 123.0
    A2, B2, _, _ = datasets.cd_player()
    assert A2[0, 0] != 123.0 and B2[0, 0] != 123.0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shipped_model_equals_the_original_matlab_file(name):
    load, filename, _, _, _ = MODELS[name]
    path = MAT / filename
    if not path.is_file():
        pytest.skip(f"{path} not present: the original MATLAB files sit in shared/data/slicot next to the repository "
                    "(their source: lti_reduce.datasets.source()); the other tests use the shipped copies")
    import scipy.io

    raw = scipy.io.loadmat(path)
    for key, M in zip("ABCD", load()):
        ref = raw[key].toarray() if scipy.sparse.issparse(raw[key]) else np.asarray(raw[key])
        np.testing.assert_array_equal(M, ref.astype(np.float64))


def test_source_names_the_collection_and_the_original_readme():
    text = datasets.source()
    assert "Chahlaoui" in text and "Van Dooren" in text and "SLICOT Working Note 2002-2" in text
    assert "CDplayer.mat" in text and "iss.mat" in text


def test_a_built_wheel_contains_the_data(tmp_path):
    """A regular (non-editable) install has the archives: they are package data of the wheel."""
    pytest.importorskip("setuptools")
    cmd = [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"could not build a wheel here: {proc.stderr[-500:]}")
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("cd_player.npz", "iss.npz", "README.md"):
        assert f"lti_reduce/datasets/data/{f}" in names
