"""Error bounds and norms: a-priori BT bounds, the H-infinity and Hankel norms.

* A-priori (balanced truncation and SPA, discrete time):
  ``sigma_{r+1} <= ||G - G_r||_inf <= 2 sum_{i>r} sigma_i``
  (see :meth:`BalancedTruncationResult.error_bounds`).
* A-posteriori: :func:`hinf_norm`, ``||G||_inf = sup_{|z|=1} sigma_max(G(z))``.
* :func:`hankel_norm`: ``||G||_H = sigma_1``, the norm of the Hankel operator that
  maps past inputs to future outputs.
"""

from __future__ import annotations

import numpy as np

from . import _backend as be
from .validate import dense_system

__all__ = ["hinf_norm", "hankel_norm"]


def _bilinear_to_continuous(A, B, C, D):
    """Continuous realization with ``G_c(s) = G_d((1 + s) / (1 - s))``.

    The map sends the unit circle to the imaginary axis, so both have the same
    H-infinity norm: ``Ac = (A + I)^{-1}(A - I)``, ``Bc = sqrt(2) (A + I)^{-1} B``,
    ``Cc = sqrt(2) C (A + I)^{-1}``, ``Dc = D - C (A + I)^{-1} B``.
    """
    n = A.shape[-1]
    eye = np.eye(n)
    M = A + eye
    X = np.linalg.solve(M, np.concatenate([A - eye, B], axis=1))
    Ac, MB = X[:, :n], X[:, n:]
    CM = np.linalg.solve(M.T, C.T).T  # C (A + I)^{-1}
    return Ac, np.sqrt(2.0) * MB, np.sqrt(2.0) * CM, D - C @ MB


def _sigma_max_c(Ac, Bc, Cc, Dc, w):
    n = Ac.shape[0]
    G = Cc @ np.linalg.solve(1j * w * np.eye(n) - Ac, Bc) + Dc
    return float(np.linalg.norm(G, 2))


def _hinf_single(A, B, C, D, rtol):
    """Bruinsma-Steinbuch two-step algorithm on the bilinear-transformed system."""
    Ac, Bc, Cc, Dc = _bilinear_to_continuous(A, B, C, D)
    n, m, p = Ac.shape[0], Bc.shape[1], Cc.shape[0]
    poles = np.linalg.eigvals(Ac)
    # Initial lower bound: infinity (z = -1), DC (z = 1) and the most resonant pole.
    cands = [0.0]
    if np.any(poles.imag != 0):
        ratio = np.abs(poles.imag / np.where(poles.real == 0, -1e-300, poles.real)) / np.maximum(np.abs(poles), 1e-300)
        cands.append(float(abs(poles[np.argmax(ratio)].imag)))
        cands.append(-cands[-1])
    else:
        cands.append(float(np.min(np.abs(poles))))
    gamma_lb = float(np.linalg.norm(Dc, 2)) if min(p, m) else 0.0
    w_peak = np.inf
    for w in cands:
        g = _sigma_max_c(Ac, Bc, Cc, Dc, w)
        if g > gamma_lb:
            gamma_lb, w_peak = g, w
    if gamma_lb == 0.0:
        return 0.0
    for _ in range(50):
        gamma = (1.0 + 2.0 * rtol) * gamma_lb
        R = Dc.conj().T @ Dc - gamma**2 * np.eye(m)
        S = Dc @ Dc.conj().T - gamma**2 * np.eye(p)
        Ri_Dh_C = np.linalg.solve(R, Dc.conj().T @ Cc)
        Ri_Bh = np.linalg.solve(R, Bc.conj().T)
        H = np.block([
            [Ac - Bc @ Ri_Dh_C, -gamma * Bc @ Ri_Bh],
            [gamma * Cc.conj().T @ np.linalg.solve(S, Cc), -Ac.conj().T + Cc.conj().T @ Dc @ Ri_Bh],
        ])
        ev = np.linalg.eigvals(H)
        on_axis = np.abs(ev.real) <= 1e-8 * np.maximum(1.0, np.abs(ev))
        ws = np.sort(ev[on_axis].imag)
        if ws.size < 2:
            break
        mids = 0.5 * (ws[:-1] + ws[1:])
        vals = [_sigma_max_c(Ac, Bc, Cc, Dc, w) for w in mids]
        best = int(np.argmax(vals))
        if vals[best] <= gamma_lb:
            break
        gamma_lb, w_peak = vals[best], mids[best]
    return gamma_lb


def hinf_norm(A, B, C, D=None, *, rtol: float = 1e-10):
    """H-infinity norm of a stable discrete-time system.

    .. math:: \\|G\\|_{\\mathcal{H}_\\infty} = \\sup_{\\theta \\in [0, 2\\pi)} \\sigma_{\\max}\\big(C (e^{i\\theta} I - A)^{-1} B + D\\big).

    Parameters
    ----------
    A : array, shape (..., n, n)
        Schur-stable state matrix.
    B : array, shape (..., n, m)
    C : array, shape (..., p, n)
    D : array, shape (..., p, m), optional
    rtol : float
        Relative accuracy of the returned value.

    Returns
    -------
    array, shape (...)
        The norm per system, real, in the input's backend and device.

    Notes
    -----
    The bilinear map ``z = (1 + s) / (1 - s)`` turns the system into a continuous
    one with the same norm; the norm is then found by the quadratically convergent
    level-set algorithm of Bruinsma & Steinbuch (Systems & Control Letters 14, 1990):
    imaginary eigenvalues of a Hamiltonian matrix mark the frequencies where
    ``sigma_max = gamma``. This is an a-posteriori check, so it runs in float64 on the
    host (torch inputs are copied there). Reference: SLICOT ``AB13DD`` (``DICO='D'``).
    A :class:`~lti_reduce.DiagonalSystem` may be given alone instead of the matrices.

    Examples
    --------
    >>> import numpy as np, lti_reduce as lr
    >>> round(float(lr.hinf_norm(np.array([[0.5]]), np.array([[1.0]]), np.array([[1.0]]))), 10)  # G(1) = 2
    2.0
    """
    from .systems import DiagonalSystem, _as_dense

    if isinstance(A, DiagonalSystem):
        from .gramians import _no_matrices

        _no_matrices(B, C, D)
        A, B, C, D = _as_dense(A)
    sysw = dense_system(A, B, C, D, check_stability=True)
    As, Bs, Cs, Ds = (be.to_numpy(M).reshape((-1,) + tuple(M.shape[-2:])) for M in (sysw.A, sysw.B, sysw.C, sysw.D))
    out = np.array([_hinf_single(a, b, c, d, rtol) for a, b, c, d in zip(As, Bs, Cs, Ds)]).reshape(sysw.batch_shape)
    xp = sysw.xp
    res = be.from_numpy_like(out, sysw.like)
    return xp.astype(res, be.real_dtype(xp, sysw.out_dtype))


def hankel_norm(A, B=None, C=None):
    """Hankel norm ``||G||_H = sigma_1``, the largest Hankel singular value.

    Parameters
    ----------
    A, B, C : arrays ``(..., n, n)``, ``(..., n, m)``, ``(..., p, n)``, or a DiagonalSystem alone.

    Returns
    -------
    array, shape (...)
        ``sigma_1`` per system; ``sigma_1 <= ||G - D||_inf``.
    """
    from .balancing import hankel_singular_values

    return hankel_singular_values(A, B, C)[..., 0]
