"""Unstable models: split off the unstable part, keep it exactly, reduce the stable part.

With ``unstable="split"``, :func:`~lti_reduce.balanced_truncation`, :func:`~lti_reduce.balance`
and :func:`~lti_reduce.hankel_singular_values` accept models with poles outside the stability
region (``|lambda| > 1`` in discrete time, ``Re(lambda) > 0`` in continuous time), as SLICOT
``AB09MD`` and MATLAB's ``balred`` do:

1. An ordered Schur form ``A = Z T Z^H`` puts the ``n_s`` stable eigenvalues first,
   ``T = [[T_11, T_12], [0, T_22]]``.
2. The Sylvester equation ``T_11 X - X T_22 + T_12 = 0`` (LAPACK ``xTRSYL`` on the
   triangular blocks, which have no common eigenvalue) block-diagonalizes it:
   with ``S = [[I, X], [0, I]]``, ``S^{-1} T S = blkdiag(T_11, T_22)``, so

   .. math:: G(s) = G_s(s) + G_u(s), \\quad G_s = (T_{11}, B_1 - X B_2, C_1, D), \\quad
             G_u = (T_{22}, B_2, C_1 X + C_2, 0),

   with ``[B_1; B_2] = Z^H B`` and ``[C_1, C_2] = C Z``. The transformation's condition
   number ``||S|| ||S^{-1}|| <= (1 + ||X||_2)^2`` is reported as ``separation_condition``; a large
   value means stable and unstable poles so close that the two parts are ill determined
   (a :class:`SplitConditioningWarning` is issued above ``1e8``).
3. ``G_s`` is reduced by balanced truncation or SPA; ``G_u`` is kept exactly. The reduced
   model is ``G_r = G_{s,r} + G_u`` and ``||G - G_r||_inf = ||G_s - G_{s,r}||_inf <= 2
   sum_{i > r_s} sigma_i(G_s)``: the bound is the stable part's.

The order ``rank`` counts the whole reduced model (``n_u`` unstable states plus ``r_s``
stable ones), as in MATLAB; ``tol`` applies to the stable part's Hankel singular values. The
HSVs of the whole model follow MATLAB's ``hsvd``: ``inf`` for each unstable state, then the
stable part's HSVs, so ``2 * sum(hsv[rank:])`` is again the bound.

Classification. An eigenvalue within the margin of the stability boundary cannot be assigned
to either part safely: the stable part's Gramians would be nearly singular, or a rounding error
would move it across. Such poles raise an :class:`~lti_reduce.LTIInputError` that names the
margin. The band is ``| |lambda| - 1 | <= margin`` in discrete time and
``|Re(lambda)| <= margin * max(1, |lambda|)`` in continuous time (MATLAB's ``Offset``
convention); ``margin=0`` classifies by the sign alone, so poles on the boundary
(integrators) go to the exactly kept part. A computed eigenvalue carries a rounding error of about
``eps ||A||`` (an integrator in a dense realization comes out as ``+-1e-16``), so poles within
``64 n eps ||A||_1`` of the boundary are always counted as not stable and kept exactly. References: A. Varga, "On stochastic balancing
related model reduction", IEEE CDC 2000, and SLICOT ``AB09MD``/``TB01KD``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

from . import _backend as be
from .errors import LTIInputError, OrderCappedWarning

__all__ = ["SplitConditioningWarning", "SplitReductionResult"]

_COND_WARN = 1e8


class SplitConditioningWarning(UserWarning):
    """The stable/unstable separation is ill conditioned (stable and unstable poles close together)."""


def check_margin(margin) -> float:
    if isinstance(margin, bool) or not isinstance(margin, (int, float, np.floating, np.integer)) \
            or not (0.0 <= float(margin) < 1.0) or math.isnan(float(margin)):
        raise LTIInputError(f"margin must be a float in [0, 1) (how close to the stability boundary a pole may lie "
                            f"and still be classified, e.g. 1e-8), got {margin!r}.")
    return float(margin)


def _roundoff(A) -> float:
    """Distance from the stability boundary within which an eigenvalue of ``A`` is rounding noise.

    A computed eigenvalue carries an error of about ``eps ||A||`` times its condition number; an
    integrator in a non-diagonal realization comes out as ``+-1e-16``, on either side. Poles within
    ``64 n eps ||A||_1`` of the boundary are therefore never counted stable (they are kept exactly,
    which costs order but never accuracy).
    """
    n = int(A.shape[0])
    return 64.0 * max(n, 1) * float(np.finfo(np.float64).eps) * max(float(np.linalg.norm(A, 1)), 1.0)


def _classify(lam, time: str, margin: float, roundoff: float = 0.0):
    """Boolean mask of the stable eigenvalues; raises for eigenvalues inside the margin band.

    Eigenvalues within ``roundoff`` of the boundary (see :func:`_roundoff`) are not stable.
    """
    if time == "discrete":
        dist = np.abs(lam) - 1.0
        band = np.abs(dist) <= margin
        rule = f"| |lambda| - 1 | <= margin = {margin:g}"
    else:
        scale = np.maximum(1.0, np.abs(lam))
        dist = lam.real
        band = np.abs(dist) <= margin * scale
        rule = f"|Re(lambda)| <= margin * max(1, |lambda|), margin = {margin:g}"
    if margin == 0.0:
        band = np.zeros_like(band)  # by the sign alone: on the boundary counts as not stable (kept exactly)
    if np.any(band):
        bad = lam[band]
        shown = ", ".join(f"{complex(z):.6g}" for z in bad[:4]) + (", ..." if bad.size > 4 else "")
        raise LTIInputError(
            f"{int(bad.size)} pole(s) lie too close to the {time}-time stability boundary to be classified as stable "
            f"or unstable ({rule}): {shown}. Pass a smaller margin= (margin=0 classifies by the sign alone and keeps "
            "poles on the boundary, such as integrators, in the exactly kept part), or move these poles.")
    return dist < -roundoff


def _schur_split(A, stable, time: str, roundoff: float = 0.0):
    """Ordered Schur form ``A = Z T Z^H`` with the stable eigenvalues first; ``(T, Z)``."""
    cplx = np.iscomplexobj(A)
    t = roundoff
    if time == "discrete":
        is_stable = (lambda z: abs(z) - 1.0 < -t) if cplx else (lambda x, y: math.hypot(x, y) - 1.0 < -t)
    else:
        is_stable = (lambda z: z.real < -t) if cplx else (lambda x, y: x < -t)
    T, Z, sdim = scipy.linalg.schur(A, output="complex" if cplx else "real", sort=is_stable)
    ns = int(np.sum(stable))
    if sdim != ns:
        raise LTIInputError(f"the ordered Schur form put {sdim} eigenvalues in the stable part where the eigenvalues "
                            f"gave {ns}: some pole lies at rounding distance from the stability boundary; pass a "
                            "larger margin=.")
    return T, Z, ns


def split(A, B, C, D, time: str, margin: float):
    """Additive stable/unstable decomposition of one numpy system (module docstring).

    Returns
    -------
    stable : tuple ``(A_s, B_s, C_s, D)``, shapes ``(n_s, n_s)``, ``(n_s, m)``, ``(p, n_s)``, ``(p, m)``
    unstable : tuple ``(A_u, B_u, C_u)``, shapes ``(n_u, n_u)``, ``(n_u, m)``, ``(p, n_u)``
    condition : float
        ``(1 + ||X||_2)^2``, a bound on the condition number of the separating transformation.
    """
    lam = np.linalg.eigvals(A)
    roundoff = _roundoff(A)
    stable = _classify(lam, time, margin, roundoff)
    if bool(np.all(stable)):
        return (A, B, C, D), (A[:0, :0], B[:0], C[:, :0]), 1.0
    T, Z, ns = _schur_split(A, stable, time, roundoff)
    Bt, Ct = Z.conj().T @ B, C @ Z
    T11, T12, T22 = T[:ns, :ns], T[:ns, ns:], T[ns:, ns:]
    if ns:
        trsyl = lapack.get_lapack_funcs("trsyl", (T11, T22, T12))
        X, scale, info = trsyl(T11, T22, -T12, isgn=-1)  # T11 X - X T22 = scale * (-T12)
        if info < 0 or not np.all(np.isfinite(X)) or scale == 0:
            raise LTIInputError("the Sylvester equation that separates the stable and unstable parts could not be "
                                "solved (stable and unstable poles coincide numerically); pass a larger margin=.")
        X = X / scale
    else:
        X = np.zeros((0, A.shape[0]), dtype=T.dtype)
    cond = (1.0 + float(np.linalg.norm(X, 2)) if X.size else 1.0) ** 2
    if cond > _COND_WARN:
        warnings.warn(f"the stable/unstable separation has condition number up to {cond:.2e} (> {_COND_WARN:.0e}): "
                      "stable and unstable poles lie close together, and both parts (and the stable part's error "
                      "bound) are accurate only to about that factor times the rounding error.",
                      SplitConditioningWarning, stacklevel=4)
    B1, B2 = Bt[:ns], Bt[ns:]
    C1, C2 = Ct[:, :ns], Ct[:, ns:]
    return (T11, B1 - X @ B2, C1, D), (T22, B2, C1 @ X + C2), cond


class SplitReductionResult:
    """A reduced model of an unstable system: the unstable part kept exactly, the stable part reduced.

    Returned by :func:`~lti_reduce.balanced_truncation` and :func:`~lti_reduce.balance` with
    ``unstable="split"``; do not construct directly.

    Attributes
    ----------
    A, B, C, D : arrays, shapes (r, r), (r, m), (p, r), (p, m)
        The reduced model ``blkdiag(A_{s,r}, A_u)``, ``[B_{s,r}; B_u]``, ``[C_{s,r}, C_u]``, ``D_r``.
    rank : int
        The whole reduced order ``r = n_unstable + r_s``.
    n_unstable : int
        Number of unstable states (kept exactly).
    hsv : array, shape (n,)
        ``inf`` for each unstable state, then the stable part's HSVs (MATLAB's ``hsvd`` convention).
    stable_hsv : array, shape (n - n_unstable,)
        The stable part's Hankel singular values.
    error_bound : float
        ``2 * sum(stable_hsv[r_s:])``, a bound on ``||G - G_r||_inf`` (the stable part's).
    stable : BalancedTruncationResult or None
        The reduced stable part (``None`` when ``r_s = 0`` or the model has no stable part).
    unstable_part : tuple of arrays
        ``(A_u, B_u, C_u)``, the unstable part (its feedthrough is in the stable part).
    separation_condition : float
        ``(1 + ||X||_2)^2``, a bound on the condition number of the separating transformation.
    method, projection, time, dt, system
        As in :class:`~lti_reduce.BalancedTruncationResult`.
    """

    def __init__(self, full_stable, stable_parts, unstable_parts, rank: int, method: str, projection: str,
                 time: str, wrap, like, cond: float, *, warn: bool = True):
        self._full = full_stable  # order-n_s BalancedTruncationResult of the stable part, or None
        self._stable_parts = stable_parts
        Au, Bu, Cu = unstable_parts
        self.unstable_part = (Au, Bu, Cu)
        self.n_unstable = nu = int(Au.shape[0])
        self._ns = ns = int(stable_parts[0].shape[0])
        self.rank = int(rank)
        self.method = method
        self.projection = projection
        self.time = time
        self._wrap = wrap
        self.dt = None if wrap is None else wrap.dt
        self._like = like
        self.separation_condition = float(cond)
        s = np.zeros(0) if full_stable is None else be.to_numpy(full_stable.hsv)
        self.stable_hsv = s
        self.hsv = np.concatenate([np.full(nu, np.inf), s])
        rs = self.rank - nu
        self.requested_rank = self.rank
        if full_stable is None or rs == 0:
            self.stable = None
        else:
            with warnings.catch_warnings():
                if not warn:
                    warnings.simplefilter("ignore", OrderCappedWarning)
                self.stable = full_stable.reduce(rank=rs, method=method, projection=projection)
            self.rank = nu + self.stable.rank  # continuous time: capped at the numerical order (OrderCappedWarning)
            rs = self.stable.rank
        self.error_bound = float(2.0 * np.sum(s[rs:])) if ns else 0.0
        self._model_cache = None

    @property
    def n(self) -> int:
        """Order of the full model."""
        return self.n_unstable + self._ns

    def _stable_reduced(self):
        if self.stable is not None:
            return tuple(be.to_numpy(M) for M in self.stable._working_model())
        As, Bs, Cs, D = self._stable_parts
        m, p = Bs.shape[1], Cs.shape[0]
        if self._ns == 0 or self.method == "truncate":
            Dr = D
        else:  # order-0 SPA: the stable part's DC gain, G_s(1) or G_s(0)
            K = (np.eye(self._ns) - As) if self.time == "discrete" else -As
            Dr = D + Cs @ np.linalg.solve(K, Bs)
        return As[:0, :0], np.zeros((0, m), dtype=Bs.dtype), np.zeros((p, 0), dtype=Cs.dtype), Dr

    def _model(self):
        if self._model_cache is None:
            Ar, Br, Cr, Dr = self._stable_reduced()
            Au, Bu, Cu = self.unstable_part
            rs, nu = Ar.shape[0], self.n_unstable
            dtype = np.result_type(Ar, Au, Br, Bu, Cr, Cu, Dr)
            A = np.zeros((rs + nu, rs + nu), dtype=dtype)
            A[:rs, :rs], A[rs:, rs:] = Ar, Au
            mats = (A, np.concatenate([Br, Bu], axis=0).astype(dtype), np.concatenate([Cr, Cu], axis=1).astype(dtype),
                    np.asarray(Dr, dtype=dtype))
            self._model_cache = tuple(_like(M, self._like) for M in mats)
        return self._model_cache

    A = property(lambda self: self._model()[0], doc="Reduced state matrix, shape (r, r).")
    B = property(lambda self: self._model()[1], doc="Reduced input matrix, shape (r, m).")
    C = property(lambda self: self._model()[2], doc="Reduced output matrix, shape (p, r).")
    D = property(lambda self: self._model()[3], doc="Reduced feedthrough, shape (p, m).")

    @property
    def system(self):
        """The reduced model as the kind of object given (same ``dt``); ``(A, B, C, D)`` for arrays."""
        from .interop import rebuild_system

        return rebuild_system(self._wrap, self._model())

    def error_bounds(self):
        """Bounds for every whole order ``r = 0..n``: ``inf`` below ``n_unstable``, then the stable part's.

        Returns
        -------
        array, shape (n + 1,)
        """
        stable = (np.zeros(1) if self._full is None else be.to_numpy(self._full.error_bounds()))
        return np.concatenate([np.full(self.n_unstable, np.inf), stable])

    def reduce(self, rank=None, tol=None, method=None, *, projection=None, max_error=None) -> SplitReductionResult:
        """Another reduced model from the same split and Gramian factors.

        Parameters
        ----------
        rank : int, optional
            Whole reduced order in ``n_unstable..n`` (the unstable states count).
        tol : float in (0, 1), optional
            Discarded fraction of the stable part's HSV sum (see :func:`~lti_reduce.rank_for_tol`).
        method, projection : optional
            As in :func:`~lti_reduce.balanced_truncation`; default to this result's.
        max_error : float, optional
            The smallest whole order whose bound (the stable part's ``2 * sum(stable_hsv[r_s:])``)
            does not exceed ``max_error``; the unstable states are always kept.
        """
        from .balancing import _METHODS, _check_projection
        from .energy import rank_for_tol
        from .validate import check_choice, check_tol

        method = self.method if method is None else check_choice(method, "method", _METHODS)
        projection = self.projection if projection is None else projection
        _check_projection(projection, method)
        nu, n = self.n_unstable, self.n
        if max_error is not None:
            from .balancing import rank_for_max_error

            if rank is not None or tol is not None:
                raise LTIInputError(f"give only one of rank=, tol= and max_error=; got rank={rank!r}, tol={tol!r}, "
                                    f"max_error={max_error!r}.")
            rs = rank_for_max_error(self.stable_hsv, max_error) if self._ns else 0
            if self._ns == 0:
                from .balancing import check_max_error

                check_max_error(max_error)
            return SplitReductionResult(self._full, self._stable_parts, self.unstable_part, nu + rs, method,
                                        projection, self.time, self._wrap, self._like, self.separation_condition)
        if (rank is None) == (tol is None):
            raise LTIInputError("give exactly one of rank= (the whole reduced order, unstable states included) and "
                                f"tol= (the fraction of the stable part's HSV sum that may be discarded); got "
                                f"rank={rank!r}, tol={tol!r}.")
        if rank is not None:
            if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
                raise LTIInputError(f"rank must be an integer in {max(nu, 1)}..{n}, got {rank!r}.")
            rank = int(rank)
            if not (max(nu, 1) <= rank <= n):
                extra = (f"; the model has {nu} unstable states, which are kept exactly, so rank must be at least "
                         f"{nu}" if rank < nu else "")
                raise LTIInputError(f"rank must be in {max(nu, 1)}..n = {max(nu, 1)}..{n}, got {rank}{extra}.")
        else:
            check_tol(tol)
            rank = nu + (int(np.max(rank_for_tol(self.stable_hsv, tol))) if self._ns else 0)
        return SplitReductionResult(self._full, self._stable_parts, self.unstable_part, rank, method, projection,
                                    self.time, self._wrap, self._like, self.separation_condition)

    def __repr__(self) -> str:
        return (f"SplitReductionResult(n={self.n} -> rank={self.rank} ({self.n_unstable} unstable kept), "
                f"method={self.method!r}, time={self.time!r}, error_bound={self.error_bound:.3e})")


def _like(M, like):
    return M if like is None or be.is_numpy(like) else be.from_numpy_like(np.array(M, order="C", copy=True), like)


def balance_split(A, B, C, D, *, time: str, margin: float, wrap=None) -> SplitReductionResult:
    """Split ``(A, B, C, D)`` (one system) and balance its stable part; a full-order result."""
    from .validate import dense_system

    margin = check_margin(margin)
    sysw = dense_system(A, B, C, D)
    if sysw.batch_shape:
        raise LTIInputError(f"unstable='split' takes one system at a time (each system of a batch has its own number "
                            f"of unstable poles); got batch shape {sysw.batch_shape}: loop over the batch.")
    like = sysw.like
    mats = [be.to_numpy(M) for M in (sysw.A, sysw.B, sysw.C, sysw.D)]
    stable, unstable, cond = split(*mats, time=time, margin=margin)
    full = None
    if stable[0].shape[0]:
        from .balancing import BalancedTruncationResult, _decompose

        from .errors import UnstableSystemError

        try:
            if time == "continuous":
                from .continuous import decompose

                dec = decompose(dense_system(*stable))
            else:
                dec = _decompose(*stable)
        except UnstableSystemError as err:
            raise LTIInputError(
                f"the stable part of this model (unstable='split', margin={margin:g}) has no Gramians: a pole counted "
                f"stable lies within rounding of the {time}-time stability boundary ({err.args[0].split(';')[0]}). "
                "Pass a larger margin= (e.g. 1e-8) so that such poles are refused by name, or move them.") from None
        full = BalancedTruncationResult(dec, dec.sysw.n, "truncate", warn=False)
    return SplitReductionResult(full, stable, unstable, sysw.n, "truncate", "sr", time, wrap,
                                None if be.is_numpy(like) else like, cond, warn=False)
