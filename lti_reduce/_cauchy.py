"""Cholesky factors of the Gramians of diagonal systems, by the generalized Schur algorithm.

For a diagonal ``Lambda = diag(lam)`` with ``|lam_i| < 1`` and a generator ``G`` of shape
``(n, m)``, the Stein equation

.. math:: P - \\Lambda P \\Lambda^H = G G^H

has the Cauchy-like solution ``P_ij = g_i g_j^H / (1 - lam_i conj(lam_j))`` (``g_i`` the rows
of ``G``). Its Cholesky factor ``P = L L^H`` is computed here *without forming P*, one
column per step, by the generalized Schur algorithm (Hammarling's method for a diagonal
``A``): at step ``j``, with ``beta = ||g_j||``, ``alpha = sqrt(1 - |lam_j|^2)``,
``e = g_j^H / beta`` and ``w_i = g_i e``,

.. math::

    L_{jj} = \\beta / \\alpha, \\qquad
    L_{ij} = \\frac{\\alpha\\, w_i}{1 - \\lambda_i \\bar\\lambda_j}, \\qquad
    g_i \\leftarrow g_i + \\big((\\lambda_j - 1) w_i - \\alpha \\lambda_i L_{ij}\\big) e^H ,

and the updated rows generate the Schur complement ``P_22 - L_2 L_2^H`` in the same way
(displacement rank ``m``) for the next step. The cost is ``O(n^2 m)`` flops in ``n``
vectorized steps, against ``O(n^3 log(1/(1-rho)))`` for the doubling iteration on a dense
``A``. No ``1/beta`` survives in ``L`` (``w_i / beta`` is bounded by ``||g_i||``) and the
only other divisor, ``1 - lam_i conj(lam_j)``, is at least ``1 - rho^2``; like SLICOT's
Hammarling solver the recursion does not pivot (diagonal pivoting, which would make the
factor rank revealing, cost up to 4x more in this vectorized form and did not change the
Hankel singular values of the SLICOT models measurably). A generator with more columns
than rows is first compressed to ``n`` columns (``G G^H = R^H R``). See M. Gu, "Stable
and efficient algorithms for structured systems of linear equations", SIAM J. Matrix
Anal. Appl. 19 (1998), and S. J. Hammarling, IMA J. Numer. Anal. 2 (1982) and Systems &
Control Letters 17 (1991), for the (discrete) Lyapunov case.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import blas

__all__: list[str] = []


def stein_coefficients(lam):
    """``(U, K)``: the step coefficients of :func:`diagonal_stein_factor` for ``lam`` (``n x n`` each).

    ``U[t, i] = alpha_t / (1 - lam_i conj(lam_t))`` and ``K[t, i] = (lam_t - 1) - alpha_t lam_i U[t, i]``.
    Those of ``conj(lam)`` are ``(conj(U), conj(K))``: the observability factor of a modal form reuses them.
    """
    lam = np.asarray(lam, dtype=np.complex128)
    alpha = np.sqrt(1.0 - (lam.real ** 2 + lam.imag ** 2))
    U = alpha[:, None] / (1.0 - np.multiply.outer(lam.conj(), lam))
    return U, (lam - 1.0)[:, None] - U * (alpha[:, None] * lam[None, :])


def diagonal_stein_factor(lam, G, coefficients=None):
    """Cholesky factor of ``P = diag(lam) P diag(lam)^H + G G^H`` (numpy, one system).

    Parameters
    ----------
    lam : ndarray, shape (n,)
        Eigenvalues, ``|lam_i| < 1`` (not checked here).
    G : ndarray, shape (n, m)
        Generator (the input matrix in modal coordinates).
    coefficients : tuple of ndarray, optional
        ``stein_coefficients(lam)``, if already at hand (used when ``n <= 512``).

    Returns
    -------
    L : ndarray, shape (n, n), complex
        Lower triangular, ``P = L L^H``; column ``j`` is zero where the generator row
        ``j`` of the current Schur complement vanishes (an uncontrollable mode).
    """
    lam = np.asarray(lam, dtype=np.complex128)
    G = np.asarray(G)
    n = lam.shape[0]
    if G.shape[1] > n:  # G G^H = R^H R with R = qr(G^H): n columns carry the same Gramian
        G = np.conj(np.linalg.qr(np.conj(G.T), mode="r").T)
    # Hc = conj(G)^T in Fortran order: the trailing generator Hc[:, t+1:] is one contiguous
    # block that BLAS reads (xGEMV, conjugate transpose) and updates in place (xGERC); numpy's
    # outer product plus += cost 3x as much. Keeping the conjugate saves a conj() per step.
    Hc = np.array(np.conj(G.T), dtype=np.complex128, order="F")  # (m, n), a copy
    alpha = np.sqrt(1.0 - (lam.real ** 2 + lam.imag ** 2))
    Lt = np.zeros((n, n), dtype=np.complex128)  # L^T; first W[t, i] = w_i at step t (i > t)
    # L_it = alpha_t w_i / (1 - lam_i conj(lam_t)) = U_ti w_i, and the generator update is
    # (lam_t - 1) w_i - alpha_t lam_i L_it = K_ti w_i. For small n the coefficient matrices
    # are formed up front (fewer calls per step); for large n the per-step work dwarfs the
    # call overhead and n x n temporaries would cost more, so each step forms its row.
    upfront = n <= _UPFRONT_MAX
    if upfront:
        U, K = stein_coefficients(lam) if coefficients is None else coefficients
    nrm2, gemv, gerc = blas.dznrm2, blas.zgemv, blas.zgerc
    beta = [0.0] * n
    for t in range(n - 1):
        hc = Hc[:, t]
        b = beta[t] = nrm2(hc)
        if b == 0.0:
            continue
        # conj(e^H), a unit vector. Normalizing first keeps every product g_i e at the size of g_i:
        # 1/beta as the BLAS alpha instead was 10% faster but underflowed for rows far below beta,
        # and its rounding broke the conjugate symmetry _real_factor relies on (residue 95 eps, not 6).
        hc = hc / b
        rest = Hc[:, t + 1:]
        row = Lt[t, t + 1:]
        w = gemv(1.0, rest, hc, trans=2, y=row, overwrite_y=1)  # w_i = g_i e, written into Lt
        if upfront:
            if w is not row:  # f2py copied instead of writing in place (it does not for these views)
                row[:] = w
            coef = w * K[t, t + 1:]
        else:
            lam_rest = lam[t + 1:]
            u = (alpha[t] * w) / (1.0 - lam_rest * lam[t].conjugate())
            coef = (lam[t] - 1.0) * w - alpha[t] * lam_rest * u
            row[:] = u  # w is a view of row: overwritten only now
        updated = gerc(1.0, hc, coef, a=rest, overwrite_a=1)  # rest += conj(e^H) coef^H, in place
        if updated is not rest:  # as above: never taken for a Fortran-ordered complex128 block
            rest[...] = updated
    if n:
        beta[n - 1] = nrm2(Hc[:, n - 1])
    beta = np.array(beta)
    if upfront:
        Lt *= U  # W -> L^T above the diagonal
    Lt[np.diag_indices(n)] = beta / alpha  # L_tt = beta_t / alpha_t
    return Lt.T


# Orders up to which the coefficient matrices are formed before the loop (2 x 4 MiB at 512).
_UPFRONT_MAX = 512
