"""Independent references for continuous-time and unstable models, and the SLICOT benchmark models.

Computed without ``lti_reduce``: SLICOT through ``slycot`` with ``dico='C'`` (and ``ab09md`` with either
``dico``), scipy and plain numpy. The workspace trap of slycot 0.7.1 (``ab09ad``/``ab09md``/``ab09nd`` size an
integer workspace ``max(m, p)`` where SLICOT needs up to ``2 n``) is avoided as in ``reference.py``: ``B`` (and
``D``) get zero input columns until ``m >= 2 n``; zero inputs change neither the Gramians, the HSVs nor the
transfer function of the other inputs, and the padding is sliced off the results.

=====================================  ==========================================================
continuous Gramians                    ``sb03md57`` (``dico='C'``), ``scipy.linalg.solve_continuous_lyapunov``
HSVs, balanced truncation              ``ab09ad`` (``dico='C'``, ``job='B'``)
SPA                                    ``ab09nd`` (``dico='C'``, ``job='B'``; matches ``G(0)``)
H-infinity norm                        ``ab13dd`` (``dico='C'``)
unstable models                        ``ab09md`` (``alpha = 0`` continuous, ``1`` discrete)
=====================================  ==========================================================
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import scipy.linalg

SLICOT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "slicot"


def load_slicot_model(name: str):
    """``(A, B, C, D)`` (float64, dense) of ``CDplayer`` or ``iss``.

    From the original MATLAB file in the shared data folder when it is there, else the copy the library ships
    (``lti_reduce.datasets``; ``tests/test_datasets.py`` checks it equals the original wherever both exist).
    """
    import scipy.io
    import scipy.sparse

    path = SLICOT_DATA / f"{name}.mat"
    if not path.is_file():
        from lti_reduce import datasets

        shipped = {"CDplayer": datasets.cd_player, "iss": datasets.iss}[name]()
        return tuple(np.asarray(X, dtype=float) for X in shipped)
    raw = scipy.io.loadmat(path)
    mats = [raw[k].toarray() if scipy.sparse.issparse(raw[k]) else np.asarray(raw[k]) for k in "ABCD"]
    return tuple(np.asarray(X, dtype=float) for X in mats)  # CDplayer's D is uint8


def _pad(B, D=None):
    n, m = B.shape
    extra = max(0, 2 * n - m)
    Bp = np.hstack([B, np.zeros((n, extra))])
    Dp = None if D is None else np.hstack([D, np.zeros((D.shape[0], extra))])
    return Bp, Dp


def gramians_sb03md_continuous(A, B, C):
    """``A P + P A^T + B B^T = 0``, ``A^T Q + Q A + C^T C = 0`` by SLICOT ``SB03MD`` (``dico='C'``), real systems."""
    from slycot import sb03md57

    A, B, C = (np.asarray(X, dtype=float) for X in (A, B, C))
    n = A.shape[0]
    # SB03MD, dico='C': op(A)^T X + X op(A) = scale * RHS; trana='T': A X + X A^T = -B B^T.
    _, _, P, sp, *_ = sb03md57(A.copy(), np.zeros((n, n)), -(B @ B.T), dico="C", job="X", trana="T")
    _, _, Q, sq, *_ = sb03md57(A.copy(), np.zeros((n, n)), -(C.T @ C), dico="C", job="X", trana="N")
    return P / sp, Q / sq


def gramians_scipy_continuous(A, B, C):
    """Continuous Gramians by scipy's Bartels-Stewart solver (complex-capable)."""
    P = scipy.linalg.solve_continuous_lyapunov(A, -(B @ B.conj().T))
    Q = scipy.linalg.solve_continuous_lyapunov(A.conj().T, -(C.conj().T @ C))
    return P, Q


def balanced_truncation_ab09ad_continuous(A, B, C, D, *, rank: int):
    """``(Ar, Br, Cr, D, hsv)`` by SLICOT ``AB09AD`` (``dico='C'``, ``job='B'``, ``equil='N'``)."""
    from slycot import ab09ad

    A, B, C = (np.asarray(X, dtype=float) for X in (A, B, C))
    n, m = B.shape
    Bp, _ = _pad(B)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nr, Ar, Br, Cr, hsv = ab09ad("C", "B", "N", n, Bp.shape[1], C.shape[0], A.copy(), Bp, C.copy(),
                                     nr=rank, tol=0.0)
    return Ar[:nr, :nr], Br[:nr, :m], Cr[:, :nr], np.asarray(D, dtype=float), hsv


def spa_ab09nd_continuous(A, B, C, D, *, rank: int):
    """``(Ar, Br, Cr, Dr, hsv)`` by SLICOT ``AB09ND`` (``dico='C'``, ``job='B'``, ``alpha=0``)."""
    from slycot import ab09nd

    A, B, C, D = (np.asarray(X, dtype=float) for X in (A, B, C, D))
    n, m = B.shape
    Bp, Dp = _pad(B, D)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nr, Ar, Br, Cr, Dr, _, hsv = ab09nd("C", "B", "N", n, Bp.shape[1], C.shape[0], A.copy(), Bp, C.copy(), Dp,
                                            alpha=0.0, nr=rank, tol1=0.0, tol2=0.0)
    return Ar[:nr, :nr], Br[:nr, :m], Cr[:, :nr], Dr[:, :m], hsv


def hinf_norm_ab13dd_continuous(A, B, C, D, *, tol: float = 1e-10) -> float:
    """``sup_w ||G(i w)||_2`` by SLICOT ``AB13DD`` (``dico='C'``), real systems."""
    from slycot import ab13dd

    A, B, C, D = (np.asarray(X, dtype=float) for X in (A, B, C, D))
    n, m, p = A.shape[0], B.shape[1], C.shape[0]
    gpeak, _ = ab13dd("C", "I", "N", "D", n, m, p, A.copy(), np.eye(n), B.copy(), C.copy(), D.copy(), tol)
    return float(gpeak)


def unstable_ab09md(A, B, C, *, rank: int, dico: str, job: str = "B"):
    """``(Ar, Br, Cr, ns, hsv)`` by SLICOT ``AB09MD``: the unstable part kept, B&T of the stable part.

    ``rank`` is the whole order (stable + unstable), ``hsv[:ns]`` the stable part's HSVs. The stability
    boundary is ``Re = 0`` (``dico='C'``) or ``|z| = 1`` (``dico='D'``).
    """
    from slycot import ab09md

    A, B, C = (np.asarray(X, dtype=float) for X in (A, B, C))
    n, m = B.shape
    Bp, _ = _pad(B)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nr, Ar, Br, Cr, ns, hsv = ab09md(dico, job, "N", n, Bp.shape[1], C.shape[0], A.copy(), Bp, C.copy(),
                                         alpha=0.0 if dico == "C" else 1.0, nr=rank, tol=0.0)
    return Ar[:nr, :nr], Br[:nr, :m], Cr[:, :nr], ns, hsv[:ns]


def freqresp_points(A, B, C, D, points) -> np.ndarray:
    """``G(s) = C (s I - A)^{-1} B + D`` at complex ``points`` (shape ``(k, p, m)``), via a complex Schur form."""
    A, B, C, D = (np.asarray(X) for X in (A, B, C, D))
    n = A.shape[0]
    if n == 0:
        return np.broadcast_to(D, (len(points),) + D.shape).astype(complex)
    T, Z = scipy.linalg.schur(A.astype(complex), output="complex")
    ZhB, CZ, eye = Z.conj().T @ B, C @ Z, np.eye(n)
    return np.stack([CZ @ scipy.linalg.solve_triangular(s * eye - T, ZhB) + D for s in points])


def imaginary_axis_grid(A, num: int = 400) -> np.ndarray:
    """``i w`` for ``w`` log-spaced over the poles' range (two decades beyond) plus the poles' own ``|Im|``."""
    lam = np.linalg.eigvals(np.asarray(A))
    mag = np.abs(lam[lam != 0]) if np.any(lam != 0) else np.ones(1)
    w = np.concatenate([np.logspace(np.log10(mag.min()) - 2, np.log10(mag.max()) + 2, num), np.abs(lam.imag)])
    return 1j * np.concatenate([[0.0], np.unique(w)])


def sup_relative_difference(G1, G2) -> float:
    """``max_k ||G1_k - G2_k||_2 / max_k ||G2_k||_2`` over a grid of responses."""
    diff = np.linalg.norm(G1 - G2, ord=2, axis=(-2, -1)).max()
    return float(diff / np.linalg.norm(G2, ord=2, axis=(-2, -1)).max())


def stable_system(rng, n, m, p, *, time: str, spread: float = 10.0, complex_: bool = False):
    """A random stable, non-normal system ``(A, B, C, D)``.

    Continuous time: eigenvalues with ``Re`` log-uniform in ``[-spread, -1/spread]`` (real ones and, for real
    systems, conjugate pairs with ``|Im|`` up to ``spread``). Discrete time: moduli in ``[0.05, 0.95]``.
    """
    blocks, k = [], 0
    while k < n:
        if time == "continuous":
            re = -float(np.exp(rng.uniform(-np.log(spread), np.log(spread))))
            im = float(rng.uniform(0, spread))
        else:
            rad, ang = float(rng.uniform(0.05, 0.95)), float(rng.uniform(0, np.pi))
            re, im = rad * np.cos(ang), rad * np.sin(ang)
        if complex_:
            blocks.append(np.array([[re + 1j * im]]))
            k += 1
        elif k + 2 <= n and rng.uniform() < 0.5:
            blocks.append(np.array([[re, im], [-im, re]]))
            k += 2
        else:
            blocks.append(np.array([[re if time == "continuous" else np.hypot(re, im) * rng.choice([-1, 1])]]))
            k += 1
    L = scipy.linalg.block_diag(*blocks)
    T = rng.standard_normal((n, n)) + (1j * rng.standard_normal((n, n)) if complex_ else 0)
    A = T @ L @ np.linalg.inv(T)
    cast = (lambda X: X + 1j * rng.standard_normal(X.shape)) if complex_ else (lambda X: X)
    return A, cast(rng.standard_normal((n, m))), cast(rng.standard_normal((p, n))), cast(rng.standard_normal((p, m)))
