"""Continuous- to discrete-time conversion for the models the core reduces.

Bilinear (Tustin) with the balanced scaling

.. math::

    M = (I - \\tfrac{h}{2} A)^{-1},\\quad A_d = M (I + \\tfrac{h}{2} A),\\quad B_d = \\sqrt{h}\\, M B,\\quad
    C_d = \\sqrt{h}\\, C M,\\quad D_d = D + \\tfrac{h}{2} C M B,

keeps the transfer function (``G_d(z) = G_c(s)`` with ``s = (2/h)(z-1)/(z+1)``), the
H-infinity norm and the Hankel singular values of the continuous model. Zero-order
hold (``method="zoh"``) is exact for piecewise-constant inputs (``scipy.signal.cont2discrete``)
but changes the HSVs.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from . import _backend as be
from .errors import LTIInputError
from .validate import check_choice, dense_system

__all__ = ["discretize"]


def discretize(A, B, C, D=None, *, dt: float, method: str = "bilinear"):
    """Discretize a continuous-time system ``x' = A x + B u, y = C x + D u``.

    Parameters
    ----------
    A, B, C : arrays, shapes (n, n), (n, m), (p, n)
        Continuous-time model (numpy; batched inputs are not supported here).
    D : array, shape (p, m), optional
        Feedthrough of the continuous model; zero if omitted.
    dt : float > 0
        Sampling step ``h``.
    method : {"bilinear", "zoh"}
        Tustin with HSV-preserving scaling (default) or zero-order hold.

    Returns
    -------
    Ad, Bd, Cd, Dd : numpy arrays
        Discrete-time model; Schur stable iff ``A`` is Hurwitz (for "bilinear").

    Raises
    ------
    LTIInputError
        If ``dt`` is not a positive finite number (a bool is refused, not read as 1), if
        ``method`` is unknown, for a batch, if ``I - (dt/2) A`` is singular ("bilinear"), or if
        the zero-order hold overflows (an unstable ``A`` with a large ``dt``, or ``dt ||A||``
        beyond the matrix exponential's range): never a model with NaN or Inf entries.

    Examples
    --------
    >>> import numpy as np, lti_reduce as lr
    >>> Ad, Bd, Cd, Dd = lr.discretize(np.array([[-1.0]]), np.array([[1.0]]), np.array([[1.0]]), dt=0.1)
    >>> round(float(Ad[0, 0]), 6)        # (1 - 0.05) / (1 + 0.05)
    0.904762
    """
    check_choice(method, "method", ("bilinear", "zoh"))
    if isinstance(dt, (bool, np.bool_)) or not (isinstance(dt, (int, float, np.integer, np.floating))
                                                and np.isfinite(dt) and dt > 0):
        raise LTIInputError(f"dt must be a positive finite step (a float such as 0.01), got {dt!r} of type "
                            f"{type(dt).__name__}.")
    sysw = dense_system(A, B, C, D)
    if sysw.batch_shape:
        raise LTIInputError("discretize takes a single system; loop over the batch.")
    A, B, C, D = (be.to_numpy(M) for M in (sysw.A, sysw.B, sysw.C, sysw.D))
    n = A.shape[0]
    h = float(dt)
    if method == "bilinear":
        left = np.eye(n) - 0.5 * h * A
        if np.linalg.cond(left) > 1e14:
            raise LTIInputError(f"I - (dt/2) A is singular (A has an eigenvalue near 2/dt = {2 / h:g}); change dt.")
        lu = scipy.linalg.lu_factor(left)
        Ad = scipy.linalg.lu_solve(lu, np.eye(n) + 0.5 * h * A)
        MB = scipy.linalg.lu_solve(lu, B)
        CM = scipy.linalg.lu_solve(lu, C.T, trans=1).T if not np.iscomplexobj(A) else np.linalg.solve(left.T, C.T).T
        return Ad, np.sqrt(h) * MB, np.sqrt(h) * CM, D + 0.5 * h * (C @ MB)
    m = B.shape[1]
    with np.errstate(over="ignore", invalid="ignore"):
        E = scipy.linalg.expm(np.block([[A, B], [np.zeros((m, n + m), dtype=A.dtype)]]) * h)
    if not np.all(np.isfinite(E)):
        abscissa = float(np.max(np.linalg.eigvals(A).real))
        why = (f"A is unstable (largest real part of its eigenvalues {abscissa:.6g} > 0), so exp(A dt) grows like "
               f"exp({abscissa:.3g} dt) and overflows float64 for dt above about {709.0 / abscissa:.3g}"
               if abscissa > 0 else
               f"dt * ||A|| = {h * float(np.linalg.norm(A, 1)):.3g} is too large for the matrix exponential")
        raise LTIInputError(f"zero-order hold with dt = {h!r} gives a non-finite model: {why}. Use a smaller dt.")
    return E[:n, :n], E[:n, n:], C.copy(), D.copy()
