"""From a tolerance to a reduced order: the energy rule of CompreSSM.

The rule (CompreSSM, arXiv 2510.02823): keep the smallest number of states whose
Hankel singular values carry a fraction ``1 - tol`` of the total,

.. math:: r(\\tau) = \\min\\{\\, r \\ge 1 : \\textstyle\\sum_{i \\le r} \\sigma_i \\ge (1 - \\tau) \\sum_i \\sigma_i \\,\\}.

``energy="squared"`` uses ``sigma_i^2`` instead (the squared Hankel/Frobenius energy).
"""

from __future__ import annotations

import numpy as np

from . import _backend as be
from .errors import LTIInputError
from .validate import check_choice, check_tol

__all__ = ["rank_for_tol"]


def rank_for_tol(hsv, tol, *, energy: str = "sum"):
    """Smallest order ``r`` whose HSVs keep a fraction ``1 - tol`` of the energy.

    Parameters
    ----------
    hsv : array, shape (..., n)
        Hankel singular values sorted descending (as returned by
        :func:`hankel_singular_values`).
    tol : float in (0, 1)
        Fraction of the HSV sum that may be discarded (the paper's tau).
    energy : {"sum", "squared"}
        ``"sum"`` (default, the paper's rule) compares sums of ``sigma_i``;
        ``"squared"`` compares sums of ``sigma_i^2``.

    Returns
    -------
    int or numpy.ndarray of int, shape (...)
        The order ``r`` in ``1..n`` for each system of the batch (a Python ``int``
        for a single system).

    Raises
    ------
    LTIInputError
        If ``tol`` is not in ``(0, 1)``, ``energy`` is unknown, or ``hsv`` is not a real
        array of shape ``(..., n)``, ``n >= 1``, with finite, non-negative values sorted
        descending along the last axis.

    Examples
    --------
    >>> import numpy as np, lti_reduce as lr
    >>> lr.rank_for_tol(np.array([4.0, 3.0, 2.0, 1.0]), 0.25)   # keep >= 7.5 of 10
    3
    """
    tol = check_tol(tol)
    check_choice(energy, "energy", ("sum", "squared"))
    h = be.to_numpy(hsv)
    if np.iscomplexobj(h) or not (np.issubdtype(h.dtype, np.floating) or np.issubdtype(h.dtype, np.integer)):
        raise LTIInputError(f"hsv must be a real array of Hankel singular values, got dtype {h.dtype}; pass "
                            "the output of hankel_singular_values.")
    h = h.astype(np.float64)
    if h.ndim < 1 or h.shape[-1] < 1:
        raise LTIInputError(f"hsv must have shape (..., n) with n >= 1, got {h.shape}.")
    if not np.all(np.isfinite(h)):
        raise LTIInputError("hsv contains NaN or Inf; Hankel singular values are finite (check the system "
                            "they came from).")
    if np.any(h < 0):
        raise LTIInputError(f"hsv must be >= 0 (singular values), got a minimum of {float(h.min())!r}.")
    if h.shape[-1] > 1 and np.any(np.diff(h, axis=-1) > 0):
        raise LTIInputError("hsv must be sorted descending (as hankel_singular_values returns them); sort first, "
                            "e.g. np.sort(hsv)[..., ::-1].")
    if energy == "squared":
        h = h * h
    cs = np.cumsum(h, axis=-1)
    need = (1.0 - tol) * cs[..., -1:]
    r = np.sum(cs < need, axis=-1) + 1
    r = np.minimum(r, h.shape[-1])
    return int(r) if r.ndim == 0 else r.astype(np.int64)
