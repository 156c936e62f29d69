"""Cheap HSV figures of diagonal systems for watching a model during training (private).

A training-time monitor looks at the Hankel singular values of many small systems every few
hundred steps; it needs the values and a bound on how far they moved, never a balancing
transformation. Two routines serve it, both batched over leading dimensions, numpy or torch:

* :func:`_diagonal_hsv_values`: the HSVs only, ``sigma_i^2 = lambda_i(Lc^H Q Lc)`` with the
  factor ``Lc = V diag(w)^{1/2}`` of ``P = V diag(w) V^H`` (one ``eigh``) and an eigenvalue-only
  Hermitian solve (no second factor, no SVD, no balancing projections).
* :func:`_diagonal_hankel_frobenius_norm`: ``||H_G||_F = sqrt(trace(P Q)) = sqrt(sum_i sigma_i^2)``,
  the Hilbert-Schmidt norm of the Hankel operator, an upper bound of the Hankel norm
  ``sigma_1`` from the closed-form Gramians alone (``O(N^2)`` per system, no factorization).
"""

from __future__ import annotations

from . import _backend as be
from .systems import DiagonalSystem, _diagonal_gramians_working


def _check(sys) -> None:
    """A DiagonalSystem (it refused unstable modes when it was built: it is frozen)."""
    if not isinstance(sys, DiagonalSystem):
        raise TypeError(f"expected a lti_reduce.DiagonalSystem, got {type(sys).__name__}; build one with "
                        f"DiagonalSystem(lam, B, C, D, real_output=...).")


def _diagonal_hsv_values(sys: DiagonalSystem):
    """Hankel singular values of a batch of diagonal systems, values only.

    Parameters
    ----------
    sys : DiagonalSystem
        Batch shape ``(...)``, order ``N`` (``2 n`` for ``real_output=True``).

    Returns
    -------
    array, shape (..., N)
        ``sigma_1 >= ... >= sigma_N >= 0``, real, float64, same backend and device as ``sys.lam``.

    Notes
    -----
    ``sigma_i^2`` are the eigenvalues of ``P Q``, equal to those of the Hermitian
    ``M = Lc^H Q Lc`` for any ``P = Lc Lc^H`` [1]_; the factor comes from ``eigh(P)`` with the
    negative rounding-level eigenvalues set to zero, so a semidefinite ``P`` needs no special case.
    Backward-stable ``eigh`` and ``eigvalsh`` give each ``sigma_i^2`` to an absolute error of order
    ``N eps ||P|| ||Q||``: the leading values to full relative accuracy, values far below
    ``sqrt(N eps ||P|| ||Q||)`` only as "negligible". That is what a decision based on the HSVs'
    sums (:func:`lti_reduce.rank_for_tol`) at a tolerance above ``1e-6`` needs. The accurate
    route for every value is :func:`lti_reduce.hankel_singular_values`.

    References
    ----------
    .. [1] A. C. Antoulas, *Approximation of Large-Scale Dynamical Systems*, SIAM, 2005, sec. 7.1.
    """
    _check(sys)
    P, Q = _diagonal_gramians_working(sys)
    xp = be.namespace(P)
    w, V = xp.linalg.eigh(P)
    L = V * xp.astype(xp.sqrt(xp.where(w > 0, w, 0.0)), V.dtype)[..., None, :]
    s2 = xp.linalg.eigvalsh(be.mH(L) @ Q @ L)
    return xp.flip(xp.sqrt(xp.where(s2 > 0, s2, 0.0)), axis=-1)


def _diagonal_hankel_frobenius_norm(sys: DiagonalSystem):
    """``||H_G||_F = sqrt(trace(P Q))``: an upper bound of the Hankel norm from the Gramians alone.

    Parameters
    ----------
    sys : DiagonalSystem
        Batch shape ``(...)``.

    Returns
    -------
    array, shape (...)
        Real, float64, same backend as ``sys.lam``.

    Notes
    -----
    ``trace(P Q) = sum_i sigma_i^2`` (the HSVs are the singular values of the Hankel operator
    ``H_G``), so ``sigma_1 <= ||H_G||_F``; equality holds for order one. Applied to the
    difference ``G_1 - G_2`` it bounds the movement of the HSVs (Weyl, and its 2-norm form by
    Mirsky [1]_):

    .. math:: \\max_i |\\sigma_i(G_1) - \\sigma_i(G_2)| \\le \\sigma_1(G_1 - G_2) \\le \\|H_{G_1 - G_2}\\|_F,
              \\qquad \\Big(\\sum_i (\\sigma_i(G_1) - \\sigma_i(G_2))^2\\Big)^{1/2} \\le \\|H_{G_1 - G_2}\\|_F.

    For Hermitian ``P`` and ``Q``, ``trace(P Q) = sum_{ij} P_ij conj(Q_ij)``: ``O(N^2)`` per system.

    References
    ----------
    .. [1] L. Mirsky, "Symmetric gauge functions and unitarily invariant norms", *Quart. J. Math.*
       11 (1960), 50-59.
    """
    _check(sys)
    P, Q = _diagonal_gramians_working(sys)
    xp = be.namespace(P)
    t = xp.sum(xp.real(P * xp.conj(Q)), axis=(-2, -1))
    return xp.sqrt(xp.where(t > 0, t, 0.0))
