"""Shared helpers of the figure scripts: paths, the SLICOT models, matplotlib setup."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run from anywhere, installed or not
    sys.path.insert(1, str(REPO))
FIGURES = REPO / "docs" / "figures"


def slicot_file(name: str) -> Path:
    """A SLICOT benchmark file from ``shared/data/slicot`` beside the repository."""
    for base in (REPO.parent / "shared", REPO / "shared"):
        path = base / "data" / "slicot" / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name} not found in ../shared/data/slicot/ (the SLICOT benchmark collection)")


def load_slicot(name: str):
    """``(A, B, C, D)`` as dense float arrays (the .mat files store A sparse, some have no D)."""
    import scipy.io

    data = scipy.io.loadmat(slicot_file(name))
    dense = lambda x: x.toarray() if hasattr(x, "toarray") else np.asarray(x, dtype=float)  # noqa: E731
    A, B, C = (dense(data[k]) for k in "ABC")
    D = dense(data["D"]) if "D" in data else np.zeros((C.shape[0], B.shape[1]))
    return A, B, C, D


def sigma_max_response(A, B, C, D, z):
    """Largest singular value of ``C (z I - A)^{-1} B + D`` at every point of ``z`` (Schur form, O(n^2) each)."""
    import scipy.linalg

    T, Z = scipy.linalg.schur(A.astype(complex), output="complex")
    ZB, CZ = Z.conj().T @ B, C @ Z
    n = A.shape[0]
    out = np.empty(len(z))
    for k, zk in enumerate(z):
        X = scipy.linalg.solve_triangular(zk * np.eye(n) - T, ZB)
        out[k] = np.linalg.norm(CZ @ X + D, 2)
    return out


def error_system(full, reduced):
    """``G - G_r`` as one state-space system ``(blkdiag(A, A_r), [B; B_r], [C, -C_r], D - D_r)``."""
    A, B, C, D = full
    Ar, Br, Cr, Dr = reduced
    n, r = A.shape[0], Ar.shape[0]
    Ae = np.block([[A, np.zeros((n, r))], [np.zeros((r, n)), Ar]])
    return Ae, np.vstack([B, Br]), np.hstack([C, -Cr]), D - Dr


def save(fig, name: str) -> Path:
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / name
    fig.savefig(path, dpi=150, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    print(f"wrote {path.relative_to(REPO)}")
    return path


def style():
    plt.rcParams.update({
        "figure.figsize": (7.0, 3.2),
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "font.size": 9,
        "legend.fontsize": 8,
        "legend.frameon": False,
    })
