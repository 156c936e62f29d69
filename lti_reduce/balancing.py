"""Square-root balanced truncation and singular perturbation approximation.

Given Gramian factors ``P = L_c L_c^H`` and ``Q = L_o L_o^H`` (see
:mod:`lti_reduce.gramians`), the SVD

.. math:: L_o^H L_c = U \\Sigma V^H

gives the Hankel singular values ``sigma_i = Sigma_ii = sqrt(lambda_i(P Q))`` and
the balancing projections of order ``r``

.. math::

    W = L_o U_r \\Sigma_r^{-1/2}, \\qquad V = L_c V_r \\Sigma_r^{-1/2}, \\qquad W^H V = I_r,

so that the reduced system is ``(W^H A V, W^H B, C V, D)``. In discrete time the
truncated model is stable but not exactly balanced (its Gramians are bounded by
``Sigma_r``), unlike the SPA model, which is balanced (Tombs & Postlethwaite, Int. J. Control 46 (1987);
Laub, Heath, Paige & Ward, IEEE TAC 32 (1987)). No ``P + eps I`` shift is used:
states with ``sigma_i`` at round-off level (non-minimal systems) get zero
projection columns, i.e. they are exactly decoupled.

Singular perturbation approximation (SPA, discrete time; Liu & Anderson, Int. J.
Control 50 (1989); SLICOT ``AB09ND``): with the balanced realization partitioned at
``r``,

.. math::

    A_r = A_{11} + A_{12}(I - A_{22})^{-1}A_{21}, \\quad B_r = B_1 + A_{12}(I - A_{22})^{-1}B_2,

    C_r = C_1 + C_2(I - A_{22})^{-1}A_{21}, \\quad D_r = D + C_2(I - A_{22})^{-1}B_2,

which matches the DC gain ``G(1)`` exactly. Both methods satisfy
``sigma_{r+1} <= ||G - G_r||_inf <= 2 sum_{i>r} sigma_i`` and give stable reduced models
(Al-Saggaf & Franklin, IEEE TAC 32 (1987); Pernebo & Silverman, IEEE TAC 27 (1982)).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _backend as be
from . import _dispatch
from .energy import rank_for_tol
from .errors import LTIInputError, OrderCappedWarning
from .gramians import _factor_pair, _no_matrices
from .validate import _Dense, check_choice, check_rank_tol, dense_system

__all__ = ["balance", "balanced_truncation", "hankel_singular_values", "BalancedTruncationResult"]

_METHODS = ("truncate", "spa")
_PROJECTIONS = ("sr", "bfsr")


def _balancing_svd(xp, Lc, Lo, n):
    """SVD ``Lo^H Lc = U diag(s) Vh``, padded with zeros to exactly ``n`` values/vectors."""
    M = be.mH(Lo) @ Lc
    # numpy directly for one numpy system (the array-API wrapper adds a result object per call)
    U, s, Vh = np.linalg.svd(M, full_matrices=False) if be.is_numpy(M) else xp.linalg.svd(M, full_matrices=False)
    k = int(s.shape[-1])
    if k < n:  # rank(P) or rank(Q) < n: the remaining HSVs are exactly zero
        batch = tuple(s.shape[:-1])
        dev = Lc.device if be.is_torch(Lc) else None
        s = xp.concat([s, xp.zeros(batch + (n - k,), dtype=s.dtype, device=dev)], axis=-1)
        U = xp.concat([U, xp.zeros(batch + (int(U.shape[-2]), n - k), dtype=U.dtype, device=dev)], axis=-1)
        Vh = xp.concat([Vh, xp.zeros(batch + (n - k, int(Vh.shape[-1])), dtype=Vh.dtype, device=dev)], axis=-2)
    return U, s, Vh


def _kept(xp, dec: "_Decomposition", keep):
    """``(s, Mc, Mo)`` restricted to the balanced states ``keep`` (an int ``r``: the leading ones)."""
    s, Mc, Mo = dec.s, dec.Mc, dec.Mo
    if isinstance(keep, (int, np.integer)):
        return s[..., :keep], Mc[..., :, :keep], Mo[..., :, :keep]
    idx = xp.asarray(np.asarray(keep, dtype=np.int64), device=s.device if be.is_torch(s) else None)
    return xp.take(s, idx, axis=-1), xp.take(Mc, idx, axis=-1), xp.take(Mo, idx, axis=-1)


def _projections(xp, dec: "_Decomposition", keep):
    """Balancing projections ``W, V`` onto the balanced states ``keep``.

    ``keep`` is an int ``r`` (the ``r`` leading states) or a sequence of state
    indices. States whose HSV is at round-off level get zero columns (decoupled).
    """
    s, Mc, Mo = _kept(xp, dec, keep)
    nonzero = s > dec.floor
    inv_sqrt = xp.where(nonzero, 1.0 / xp.sqrt(xp.where(nonzero, s, 1.0)), 0.0)
    inv_sqrt = xp.astype(inv_sqrt, dec.Fc.dtype)[..., None, :]
    return (dec.Fo @ Mo) * inv_sqrt, (dec.Fc @ Mc) * inv_sqrt


def _bfsr_projections(xp, dec: "_Decomposition", keep):
    """Balancing-free square-root projections ``W, V`` (Varga 1991) onto the states ``keep``.

    ``V = orth(Fc Mc_r)`` and ``W = orth(Fo Mo_r) E^{-H}`` with ``E = orth(Fo Mo_r)^H V``,
    so that ``W^H V = I``: the same subspaces, hence the same reduced transfer function, as
    the balanced square-root projections, but with an orthonormal ``V`` instead of one
    scaled by ``S_r^{-1/2}``, which keeps the projection well conditioned for badly
    scaled systems (the reduced realization is then not balanced).
    """
    _, Mc, Mo = _kept(xp, dec, keep)
    V = xp.linalg.qr(dec.Fc @ Mc)[0]
    Qo = xp.linalg.qr(dec.Fo @ Mo)[0]
    E = be.mH(Qo) @ V
    W = be.mH(xp.linalg.solve(E, be.mH(Qo)))
    return W, V


def _project(sysw: _Dense, W, V, dec: "_Decomposition | None" = None):
    """``(W^H A V, W^H B, C V)``; ``A V`` from the diagonal structure when ``dec`` carries it."""
    Wh = be.mH(W)
    AV = sysw.A @ V if dec is None or dec.lam is None else _diagonal_times(sysw.xp, dec.lam, dec.real_output, V)
    return Wh @ AV, Wh @ sysw.B, sysw.C @ V


def _diagonal_times(xp, lam, real_output: bool, V):
    """``A V`` for the state matrix of a :class:`~lti_reduce.DiagonalSystem`, in ``O(N k)``.

    Parameters
    ----------
    lam : array, shape (..., n)
        The eigenvalues (working precision).
    real_output : bool
        ``False``: ``A = diag(lam)`` (``N = n``). ``True``: the real ``2n`` form
        ``A = [[Re L, -Im L], [Im L, Re L]]`` with ``L = diag(lam)`` (``N = 2n``).
    V : array, shape (..., N, k)

    Returns
    -------
    array, shape (..., N, k)
        ``A V`` without forming the dense ``N x N`` product (``2 N^2 k`` flops saved).
    """
    if not real_output:
        return xp.astype(lam, V.dtype)[..., :, None] * V
    n = int(lam.shape[-1])
    a = xp.astype(xp.real(lam), V.dtype)[..., :, None]
    b = xp.astype(xp.imag(lam), V.dtype)[..., :, None]
    top, bot = V[..., :n, :], V[..., n:, :]
    return xp.concat([a * top - b * bot, b * top + a * bot], axis=-2)


@dataclass(frozen=True)
class _Decomposition:
    """The expensive part of balancing, kept to cut any order cheaply.

    The order-r balancing projections are ``V = Fc Mc[:, :r] S_r^{-1/2}`` and
    ``W = Fo Mo[:, :r] S_r^{-1/2}``: from the SVD ``Lo^H Lc = U S Vh`` (dense path:
    ``Fc, Mc, Fo, Mo = Lc, Vh^H, Lo, U``) or from ``Lc^H Q Lc = V S^2 V^H`` (diagonal
    path: ``Fc, Mc, Fo, Mo = Lc, V, Q Lc, V S^{-1}``). HSVs at or below ``floor``
    (an absolute threshold, shape ``(..., 1)``, set by the path's accuracy) are
    numerically zero: their states are decoupled instead of amplified.
    """

    sysw: _Dense
    s: Any
    Fc: Any
    Mc: Any
    Fo: Any
    Mo: Any
    floor: Any
    lam: Any = None  # diagonal path: eigenvalues (..., n) of sysw.A (see _diagonal_times), else None
    real_output: bool = False
    time: str = "discrete"  # "continuous": sysw is a continuous model (see lti_reduce.continuous)
    wrap: Any = None  # lti_reduce.interop.SystemInput of a system object given by the user, else None

    def __getitem__(self, idx):
        sw = self.sysw
        A = sw.A[idx]
        sub = _Dense(sw.xp, A, sw.B[idx], sw.C[idx], sw.D[idx], tuple(A.shape[:-2]), sw.out_dtype, sw.like)
        return _Decomposition(sub, self.s[idx], self.Fc[idx], self.Mc[idx], self.Fo[idx], self.Mo[idx], self.floor[idx],
                              None if self.lam is None else self.lam[idx], self.real_output, self.time, self.wrap)


def _reduce(dec: _Decomposition, keep, method: str, projection: str = "sr"):
    """Reduced ``(A_r, B_r, C_r, D_r)`` in working precision; ``keep`` as in `_projections`."""
    sysw = dec.sysw
    xp = sysw.xp
    r = keep if isinstance(keep, int) else len(keep)
    if projection == "bfsr":
        W, V = _bfsr_projections(xp, dec, keep)
        Ar, Br, Cr = _project(sysw, W, V, dec)
        return Ar, Br, Cr, sysw.D
    if method == "truncate" or r == sysw.n:
        W, V = _projections(xp, dec, keep)
        Ar, Br, Cr = _project(sysw, W, V, dec)
        return Ar, Br, Cr, sysw.D
    order = keep if isinstance(keep, int) else list(keep) + sorted(set(range(sysw.n)) - set(int(i) for i in keep))
    W, V = _projections(xp, dec, sysw.n if isinstance(keep, int) else order)
    Ab, Bb, Cb = _project(sysw, W, V, dec)
    A11, A12, A21, A22 = Ab[..., :r, :r], Ab[..., :r, r:], Ab[..., r:, :r], Ab[..., r:, r:]
    B1, B2, C1, C2 = Bb[..., :r, :], Bb[..., r:, :], Cb[..., :, :r], Cb[..., :, r:]
    k = sysw.n - r
    eye = xp.eye(k, dtype=Ab.dtype, device=Ab.device if be.is_torch(Ab) else None)
    rhs = xp.concat([A21, B2], axis=-1)
    # residualization at the DC point: z = 1 (discrete), s = 0 (continuous)
    if dec.time == "discrete":
        K = eye - A22
    else:
        from .continuous import spa_residual_matrix

        K = spa_residual_matrix(dec, order, r, A22)
    X = xp.linalg.solve(K, rhs)
    XA, XB = X[..., :, :r], X[..., :, r:]
    return A11 + A12 @ XA, B1 + A12 @ XB, C1 + C2 @ XA, sysw.D + C2 @ XB


class BalancedTruncationResult:
    """A reduced model plus what is needed to cut any other order cheaply.

    Returned by :func:`balanced_truncation`; do not construct directly.

    Attributes
    ----------
    A, B, C, D : arrays, shapes (..., r, r), (..., r, m), (..., p, r), (..., p, m)
        The reduced model, in the input's backend, device and precision.
    hsv : array, shape (..., n)
        Hankel singular values of the full model, descending.
    rank : int
        The reduced order ``r``.
    requested_rank : int
        The order asked for; larger than ``rank`` only for a continuous-time model whose numerical
        order is below it (see :class:`~lti_reduce.OrderCappedWarning`).
    method : str
        ``"truncate"`` or ``"spa"``.
    projection : str
        ``"sr"`` (balanced square root: the reduced realization is balanced) or
        ``"bfsr"`` (balancing-free square root: same transfer function, orthonormal
        right projection).
    error_bound : array, shape (...)
        A-priori bound ``2 * sum(hsv[r:])`` on ``||G - G_r||_inf`` (both methods).
    time : str
        ``"discrete"`` or ``"continuous"``: the time base of the model (and of the reduced one).
    system : object
        The reduced model as the kind of object that was given: a python-control
        ``StateSpace``/``TransferFunction`` or a scipy ``signal.StateSpace``/``lti``/``dlti``, with
        the same time base ``dt`` (see :mod:`lti_reduce.interop`); for arrays, the tuple
        ``(A, B, C, D)``.
    dt : object
        The time base of the system object that was given (python-control: ``0``, ``True``
        or the sampling period; scipy: ``None`` for ``lti``); ``None`` for arrays.

    Notes
    -----
    The Gramian factors and the balancing SVD are kept, so :meth:`reduce` cuts any
    other order in ``O(n^2 r)`` without recomputing them (compute once, truncate
    many times; cf. pyMOR's ``BTReductor`` and MATLAB's ``reducespec``/``getrom``).
    Index a batched result (``res[i]``) to select systems of the batch.
    """

    def __init__(self, dec: _Decomposition, rank: int, method: str, states=None, projection: str = "sr", *,
                 warn: bool = True, requested_rank=None):
        self._dec = dec
        self._sysw = sysw = dec.sysw
        self._s = s = dec.s
        self.rank = int(rank)
        self.requested_rank = self.rank if requested_rank is None else int(requested_rank)
        if dec.time == "continuous":
            self._cap_continuous(states, warn)
        self.method = method
        self.projection = projection
        self.states = None if states is None else tuple(int(i) for i in states)
        self.time = dec.time
        self.dt = None if dec.wrap is None else dec.wrap.dt
        xp, dt = sysw.xp, sysw.out_dtype
        self.hsv = xp.astype(s, be.real_dtype(xp, dt))
        if self.states is None:
            discarded = xp.sum(s[..., self.rank:], axis=-1)
        else:
            dropped = sorted(set(range(sysw.n)) - set(self.states))
            idx = xp.asarray(np.asarray(dropped, dtype=np.int64), device=s.device if be.is_torch(s) else None)
            discarded = xp.sum(xp.take(s, idx, axis=-1), axis=-1)
        self.error_bound = xp.astype(2.0 * discarded, be.real_dtype(xp, dt))
        if projection == "bfsr":
            kept = _kept(xp, dec, self.rank if self.states is None else self.states)[0]
            if not bool(xp.all(kept > dec.floor)):
                raise LTIInputError(
                    "projection='bfsr' needs every kept state to have a nonzero Hankel singular value, but the "
                    f"{int(kept.shape[-1])} kept states include some at round-off level (a non-minimal system); keep "
                    "fewer states, or use projection='sr', which decouples them.")
        self._reduced = None
        self._reduced_w = None

    def _cap_continuous(self, states, warn: bool) -> None:
        """Lower ``rank`` to the numerical order (continuous time); refuse ``states`` at round-off level.

        States with ``sigma_i <= n eps sigma_1`` get zero projection columns, which in discrete time
        decouples them as stable modes at ``z = 0`` but in continuous time puts eigenvalues at ``s = 0``
        (on the stability boundary) into ``A_r``. SLICOT ``AB09AD`` and MATLAB likewise cap the order.
        """
        dec = self._dec
        xp = dec.sysw.xp
        above = be.to_numpy(dec.s > dec.floor)
        numerical = int(np.min(np.count_nonzero(above, axis=-1))) if above.size else 0
        if states is not None:
            kept = _kept(xp, dec, sorted(int(i) for i in states))[0]
            if not bool(xp.all(kept > dec.floor)):
                raise LTIInputError(
                    f"states={list(states)!r} includes balanced states whose Hankel singular value is at round-off "
                    f"level (the model's numerical order is {numerical}); in continuous time they would become "
                    f"eigenvalues at s = 0 of the reduced model. Keep states among 0..{numerical - 1}.")
            return
        if self.rank > numerical:
            if warn:
                where = " (the smallest over the batch)" if dec.sysw.batch_shape else ""
                warnings.warn(
                    f"rank={self.rank} exceeds the numerical order {numerical}{where} of this continuous-time model "
                    f"(Hankel singular values beyond it are at round-off level, <= n * eps * sigma_1): the reduced "
                    f"model has order {numerical} (SLICOT AB09AD returns the same NR). Keeping those states would "
                    "give the reduced A eigenvalues at s = 0, i.e. not stable; .requested_rank holds the order "
                    "asked for.", OrderCappedWarning, stacklevel=_user_stacklevel())
            self.rank = numerical

    def _working_model(self):
        """The reduced ``(A_r, B_r, C_r, D_r)`` in working precision (float64/complex128), cached."""
        if self._reduced_w is None:
            keep = self.rank if self.states is None else self.states
            self._reduced_w = _reduce(self._dec, keep, self.method, self.projection)
        return self._reduced_w

    def _model(self):
        if self._reduced is None:
            xp, dt = self._sysw.xp, self._sysw.out_dtype
            self._reduced = tuple(xp.astype(M, dt, copy=False) for M in self._working_model())
        return self._reduced

    A = property(lambda self: self._model()[0], doc="Reduced state matrix, shape (..., r, r).")
    B = property(lambda self: self._model()[1], doc="Reduced input matrix, shape (..., r, m).")
    C = property(lambda self: self._model()[2], doc="Reduced output matrix, shape (..., p, r).")
    D = property(lambda self: self._model()[3], doc="Reduced feedthrough, shape (..., p, m).")

    @property
    def n(self) -> int:
        """Order of the full model."""
        return self._sysw.n

    @property
    def system(self):
        """The reduced model as the kind of object given (same ``dt``); ``(A, B, C, D)`` for arrays."""
        from .interop import rebuild_system

        return rebuild_system(self._dec.wrap, self._model())

    def error_bounds(self):
        """A-priori bounds ``2 * sum(hsv[r:])`` for every order ``r = 0..n``.

        Returns
        -------
        array, shape (..., n + 1)
            Entry ``r`` bounds ``||G - G_r||_inf`` for the order-``r`` model
            (entry ``n`` is 0, entry 0 is twice the HSV sum).
        """
        xp, s = self._sysw.xp, self._s
        tail = xp.flip(xp.cumulative_sum(xp.flip(s, axis=-1), axis=-1), axis=-1)
        zero = xp.zeros(tuple(s.shape[:-1]) + (1,), dtype=s.dtype, device=s.device if be.is_torch(s) else None)
        return xp.astype(2.0 * xp.concat([tail, zero], axis=-1), be.real_dtype(xp, self._sysw.out_dtype))

    def reduce(self, rank=None, tol=None, method=None, *, states=None, projection=None,
               max_error=None) -> "BalancedTruncationResult":
        """Another reduced model from the same Gramian factors.

        Parameters
        ----------
        rank : int, optional
            Reduced order in ``1..n``.
        tol : float in (0, 1), optional
            Discarded HSV fraction (see :func:`rank_for_tol`).
        method : {"truncate", "spa"}, optional
            Defaults to this result's method.
        states : sequence of int, optional
            Keep exactly these balanced states (indices into ``hsv``) instead of the
            leading ones, e.g. for ablations that keep the *smallest* HSVs. Give
            exactly one of ``rank``, ``tol`` and ``states``. The bound
            ``2 * sum(discarded hsv)`` still holds when the kept and discarded HSVs
            share no value.
        projection : {"sr", "bfsr"}, optional
            Defaults to this result's projection (see :func:`balanced_truncation`).
        max_error : float, optional
            The smallest order whose a-priori bound ``2 * sum(hsv[r:])`` does not exceed
            ``max_error`` (MATLAB's ``getrom(R, MaxError=e)``); order 0 (the static gain) allowed.

        Raises
        ------
        LTIInputError
            For ``rank``/``tol`` as in :func:`balanced_truncation`, more than one of
            ``rank``, ``tol`` and ``states``, or ``states`` that are not distinct integer
            indices in ``0..n-1`` (floats and bools are refused, not truncated).
        """
        method = self.method if method is None else check_choice(method, "method", _METHODS)
        projection = self.projection if projection is None else projection
        _check_projection(projection, method)
        if states is not None:
            if rank is not None or tol is not None or max_error is not None:
                raise LTIInputError("give only one of rank=, tol=, max_error= and states=.")
            states = list(states)
            if any(isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)) for i in states):
                raise LTIInputError(f"states must be integer indices in 0..{self.n - 1} (balanced states, as in "
                                    f"hsv), got {states!r}; a float such as 0.5 is not an index.")
            keep = sorted({int(i) for i in states})
            if not keep or keep[0] < 0 or keep[-1] >= self.n or len(keep) != len(states):
                raise LTIInputError(f"states must be distinct indices in 0..{self.n - 1}, got {states!r}.")
            return BalancedTruncationResult(self._dec, len(keep), method, keep, projection)
        rank = _resolve_rank(self._s, rank, tol, self.n, max_error)
        return BalancedTruncationResult(self._dec, rank, method, projection=projection)

    def to_diagonal(self, *, cond_warn: float = 1e8):
        """The reduced model in modal (diagonal) form, see :func:`lti_reduce.modal_form`.

        For a real reduced model (e.g. from a ``real_output=True`` :class:`DiagonalSystem`)
        conjugate pairs collapse into single complex modes of a ``real_output=True``
        system. Warns when the eigenvector matrix is ill-conditioned. For a batch,
        every system must give the same number of modes (else index the batch first).

        The conversion starts from the reduced model in working precision (float64 /
        complex128, before the cast to the input's precision), so single-precision
        inputs lose nothing to an intermediate rounding of ``A_r``; the result is
        returned in the input's precision, backend and device.
        """
        from . import modal  # looked up at call time: modal.modal_form is the single entry point

        system = modal.modal_form(*self._working_model(), cond_warn=cond_warn)[0]
        return modal._as_precision(system, self._sysw.out_dtype)

    def __getitem__(self, index) -> "BalancedTruncationResult":
        if not self._sysw.batch_shape:
            raise IndexError("this result holds a single system; there is no batch dimension to index.")
        idx = index if isinstance(index, tuple) else (index,)
        return BalancedTruncationResult(self._dec[idx], self.rank, self.method, self.states, self.projection,
                                        warn=False, requested_rank=self.requested_rank)

    def __repr__(self) -> str:
        batch = f", batch={self._sysw.batch_shape}" if self._sysw.batch_shape else ""
        bound = be.to_numpy(self.error_bound)
        b = f"{float(bound):.3e}" if bound.ndim == 0 else f"max {float(bound.max()):.3e}"
        proj = "" if self.projection == "sr" else f", projection={self.projection!r}"
        proj += "" if self.time == "discrete" else f", time={self.time!r}"
        return (f"BalancedTruncationResult(n={self.n} -> rank={self.rank}, method={self.method!r}{proj}{batch}, "
                f"error_bound={b})")


def _user_stacklevel() -> int:
    """``stacklevel`` for :func:`warnings.warn` that points at the first frame outside this package."""
    import os
    import sys

    pkg = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(pkg + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def _check_projection(projection, method: str) -> str:
    check_choice(projection, "projection", _PROJECTIONS)
    if projection == "bfsr" and method != "truncate":
        raise LTIInputError("projection='bfsr' (balancing-free square root) is implemented for method='truncate' "
                            "only; use projection='sr' with method='spa'.")
    return projection


def _resolve_rank(s, rank, tol, n: int, max_error=None) -> int:
    if max_error is not None:
        if rank is not None or tol is not None:
            raise LTIInputError(f"give only one of rank=, tol= and max_error= (the largest allowed a-priori error "
                                f"bound); got rank={rank!r}, tol={tol!r}, max_error={max_error!r}.")
        return rank_for_max_error(s, max_error)
    rank, tol = check_rank_tol(rank, tol, n)
    if rank is not None:
        return rank
    r = rank_for_tol(s, tol)
    return int(np.max(r))


def check_max_error(max_error) -> float:
    if isinstance(max_error, bool) or not isinstance(max_error, (int, float, np.floating, np.integer)):
        raise LTIInputError(f"max_error must be a positive float (the largest allowed bound 2 * sum(hsv[r:]) on "
                            f"||G - G_r||_inf), got {max_error!r} of type {type(max_error).__name__}.")
    e = float(max_error)
    if not (e > 0.0 and math.isfinite(e)):
        raise LTIInputError(f"max_error must be positive and finite (the largest allowed bound 2 * sum(hsv[r:]) "
                            f"on ||G - G_r||_inf, in the units of G), got {max_error!r}.")
    return e


def rank_for_max_error(hsv, max_error) -> int:
    """Smallest order ``r`` in ``0..n`` with ``2 * sum(hsv[r:]) <= max_error`` (MATLAB's ``MaxError``).

    For a batch, the largest such ``r`` over the batch (every system meets the bound). ``r = 0``
    is the static gain ``D`` (truncation) or the DC gain (SPA).
    """
    e = check_max_error(max_error)
    h = np.asarray(be.to_numpy(hsv), dtype=np.float64).reshape(-1, int(hsv.shape[-1]))
    n = h.shape[-1]
    tails = 2.0 * np.cumsum(h[:, ::-1], axis=-1)[:, ::-1]  # tails[:, r] = 2 sum(hsv[r:])
    r = np.array([int(np.argmax(np.append(t <= e, True))) for t in tails])
    for i in range(len(r)):  # the bound is reported as 2 * sum(hsv[r:]): meet it in that summation order too
        while r[i] < n and 2.0 * float(np.sum(h[i, r[i]:])) > e:
            r[i] += 1
    return int(r.max()) if r.size else 0


def _decompose(A, B, C, D) -> _Decomposition:
    """Validated system, Gramian factors and balancing SVD (the expensive part)."""
    from .systems import DiagonalSystem, _diagonal_decompose

    if isinstance(A, DiagonalSystem):
        _no_matrices(B, C, D)
        return _diagonal_decompose(A)
    if B is None or C is None:
        raise TypeError("pass the matrices (A, B, C[, D]) or a DiagonalSystem as the only argument.")
    sysw = dense_system(A, B, C, D)
    Lc, Lo = _factor_pair(sysw)
    U, s, Vh = _balancing_svd(sysw.xp, Lc, Lo, sysw.n)
    floor = s[..., :1] * (sysw.n * float(np.finfo(np.float64).eps))
    return _Decomposition(sysw, s, Lc, be.mH(Vh), Lo, U, floor)


def balance(A, B=None, C=None, D=None, *, time=None, unstable="error", margin=1e-8) -> BalancedTruncationResult:
    """Balance a system once; cut any order from the result.

    The expensive part of balanced truncation (Gramian factors and the balancing
    SVD), for when the order is chosen later or many orders are wanted (cf. MATLAB's
    ``reducespec``, pyMOR's ``BTReductor``).

    Parameters
    ----------
    A : array, shape (..., n, n), or DiagonalSystem
        Schur-stable state matrix (or a :class:`~lti_reduce.DiagonalSystem` alone).
    B : array, shape (..., n, m)
        Input matrix (``m`` inputs).
    C : array, shape (..., p, n)
        Output matrix (``p`` outputs).
    D : array, shape (..., p, m), optional
        Feedthrough; zero if omitted.
    time, unstable, margin
        As in :func:`balanced_truncation`. ``A`` may be a python-control or scipy system object.

    Returns
    -------
    BalancedTruncationResult
        Of full order ``n`` (continuous time: of the numerical order, see :class:`~lti_reduce.OrderCappedWarning`,
        without a warning; a :class:`~lti_reduce.SplitReductionResult` with ``unstable="split"``): ``.A, .B, .C, .D`` are the balanced realization
        (formed only when accessed), ``.hsv`` the HSVs, ``.error_bounds()`` the bound
        for every order, and ``.reduce(rank=|tol=|states=)`` a truncated model.

    Examples
    --------
    >>> import numpy as np, lti_reduce as lr
    >>> bal = lr.balance(np.diag([0.9, 0.5, 0.1]), np.ones((3, 1)), np.ones((1, 3)))
    >>> [bal.reduce(rank=r).rank for r in (1, 2)]
    [1, 2]
    """
    if _dispatch.is_large(A):
        return _dispatch.large_balance(A, B, C, D, time=time, unstable=unstable)
    if _dispatch.routed(A, time, unstable):
        return _dispatch.balance(A, B, C, D, time=time, unstable=unstable, margin=margin)
    dec = _decompose(A, B, C, D)
    return BalancedTruncationResult(dec, dec.sysw.n, "truncate")


def hankel_singular_values(A, B=None, C=None, D=None, *, time=None, unstable="error", margin=1e-8):
    """Hankel singular values of a system, sorted descending.

    .. math:: \\sigma_i = \\sqrt{\\lambda_i(P Q)}, \\quad P = A P A^H + B B^H, \\; Q = A^H Q A + C^H C

    in discrete time; ``A P + P A^H + B B^H = 0``, ``A^H Q + Q A + C^H C = 0`` with ``time="continuous"``.

    Parameters
    ----------
    A : array, shape (..., n, n), DiagonalSystem, system object, or sparse matrix / LinearOperator
        Stable state matrix (or a :class:`~lti_reduce.DiagonalSystem`, or a python-control /
        scipy system object, alone). A ``scipy.sparse`` matrix or ``LinearOperator`` gives the
        estimates of the leading HSVs from low-rank factors
        (:func:`lti_reduce.lowrank.hankel_singular_values`, shape ``(k,)``, ``k <= n``).
    B : array, shape (..., n, m)
        Input matrix (``m`` inputs).
    C : array, shape (..., p, n)
        Output matrix (``p`` outputs).
    D : array, shape (..., p, m), optional
        Checked (shape, NaN/Inf) and otherwise ignored: the HSVs do not depend on the feedthrough.
        Accepted so that the arguments of a :func:`balanced_truncation` call can be passed unchanged.
    time, unstable, margin
        As in :func:`balanced_truncation`. With ``unstable="split"``, unstable states get
        ``inf`` (MATLAB's ``hsvd`` convention), followed by the stable part's HSVs.

    Returns
    -------
    hsv : real array, shape (..., n)
        ``sigma_1 >= ... >= sigma_n >= 0``; exactly zero beyond the rank of the
        Gramian factors (non-minimal systems). Invariant under state transformations.

    Raises
    ------
    UnstableSystemError
        If ``A`` has spectral radius ``>= 1 - 1e-12`` (the message gives it).
    LTIInputError
        Shape mismatch, NaN/Inf, a bad dtype, an empty batch, or HSVs beyond the float64
        range (``sigma_1 > 1.8e308``).

    Notes
    -----
    Computed as the singular values of ``L_o^H L_c`` (square-root factors), which is
    accurate to ``O(eps * sigma_1)`` for every ``sigma_i``; a :class:`DiagonalSystem` (numpy)
    is as accurate. Reference: SLICOT ``AB09AD`` (``DICO='D'``) returns the same values.
    ``B`` and ``C`` with entries beyond ``2^200`` or below ``2^-200`` are first scaled by
    powers of two (``sigma_i(A, a B, c C) = |a c| sigma_i(A, B, C)``), so extreme scales
    give the right values. torch inputs with ``requires_grad`` give differentiable HSVs
    (gradients are well defined where the HSVs are distinct and nonzero).

    Examples
    --------
    >>> import numpy as np, lti_reduce as lr
    >>> hsv = lr.hankel_singular_values(np.array([[0.5]]), np.array([[1.0]]), np.array([[1.0]]))
    >>> round(float(hsv[0]), 12)        # 1 / (1 - 0.5**2)
    1.333333333333
    """
    if _dispatch.is_large(A):
        return _dispatch.large_hankel_singular_values(A, B, C, time=time, unstable=unstable)
    if _dispatch.routed(A, time, unstable):
        return _dispatch.hankel_singular_values(A, B, C, D, time=time, unstable=unstable, margin=margin)
    if D is not None and B is not None and C is not None:
        dense_system(A, B, C, D)  # D checked against B and C (shape, NaN/Inf) though the HSVs ignore it
    scaled = _scaled_for_hsv(A, B, C)
    if scaled is not None:  # extreme scales: HSVs of (A, B 2^-eb, C 2^-ec), times 2^(eb + ec)
        hsv = hankel_singular_values(*scaled[:-1])
        return _unscale_hsv(hsv, scaled[-1])
    dec = _decompose(A, B, C, None)
    xp = dec.sysw.xp
    return xp.astype(dec.s, be.real_dtype(xp, dec.sysw.out_dtype))


def _scaled_for_hsv(A, B, C):
    """``(A, B', C', e)`` or ``(system', e)`` with entries of ``B', C'`` near 1 and ``hsv = 2^e hsv'``; None if not needed.

    HSVs are homogeneous: ``sigma_i(A, a B, c C) = |a c| sigma_i(A, B, C)``. ``B`` and ``C`` with entries
    beyond ``2^200`` (or below ``2^-200``) would overflow (underflow) once squared in the Gramians, so they
    are scaled by powers of two (exact) first.
    """
    from .systems import DiagonalSystem
    from .validate import needs_scaling, power_of_two_exponent, scale_by_power_of_two

    system = A if isinstance(A, DiagonalSystem) else None
    Bm, Cm = (system.B, system.C) if system is not None else (B, C)
    if Bm is None or Cm is None or not (be.is_numpy(Bm) or be.is_torch(Bm)) or not (be.is_numpy(Cm) or be.is_torch(Cm)):
        return None
    try:
        xp = be.namespace(Bm, Cm)
        eb, ec = power_of_two_exponent(xp, Bm), power_of_two_exponent(xp, Cm)
    except Exception:  # mixed backends, bad dtypes: let the validation of the unscaled call report it
        return None
    if not (needs_scaling(eb) or needs_scaling(ec)) or eb is None or ec is None:
        return None
    Bs, Cs = scale_by_power_of_two(Bm, -eb), scale_by_power_of_two(Cm, -ec)
    if system is not None:
        return DiagonalSystem(system.lam, Bs, Cs, system.D, real_output=system.real_output), eb + ec
    return A, Bs, Cs, eb + ec


def _unscale_hsv(hsv, e: int):
    from .validate import scale_by_power_of_two

    xp = be.namespace(hsv)
    top = float(be.to_numpy(xp.max(hsv))) if int(np.prod(hsv.shape)) else 0.0
    if top > 0.0 and math.frexp(top)[1] + e > 1024:
        raise LTIInputError(f"the Hankel singular values exceed the float64 range (sigma_1 = {top!r} * 2^{e}); "
                            "scale B or C down (sigma_i(A, a B, c C) = |a c| sigma_i(A, B, C)).")
    return scale_by_power_of_two(hsv, e)


def balanced_truncation(A, B=None, C=None, D=None, *, rank=None, tol=None, method: str = "truncate",
                        projection: str = "sr", time=None, unstable="error", margin=1e-8, max_error=None):
    """Reduce a system by square-root balanced truncation (or SPA).

    Parameters
    ----------
    A : array, shape (..., n, n), DiagonalSystem, or system object
        Stable state matrix (discrete time: spectral radius < 1; continuous time: every
        eigenvalue in the open left half plane), or a :class:`~lti_reduce.DiagonalSystem`
        given alone, or a python-control ``StateSpace``/``TransferFunction`` or scipy
        ``signal.StateSpace``/``lti``/``dlti`` given alone (see :mod:`lti_reduce.interop`):
        its time base is used, and ``.system`` is the reduced model as the same kind of object.
        A ``scipy.sparse`` matrix or ``scipy.sparse.linalg.LinearOperator`` (one large model, dense
        ``B`` and ``C``) is reduced from low-rank Gramian factors by
        :func:`lti_reduce.lowrank.balanced_truncation` (truncation, ``projection="sr"``; the result
        is a ``LowRankBalancedTruncationResult``), as MATLAB's ``reducespec`` picks its sparse method.
    B : array, shape (..., n, m)
        Input matrix (``m`` inputs); omitted when ``A`` is a system given alone.
    C : array, shape (..., p, n)
        Output matrix (``p`` outputs); omitted when ``A`` is a system given alone.
    D : array, shape (..., p, m), optional
        Feedthrough; zero if omitted.
    rank : int, optional
        Reduced order ``r`` in ``1..n`` (with ``unstable="split"``: at least the number of
        unstable poles, which are all kept).
    tol : float in (0, 1), optional
        Fraction of the HSV sum that may be discarded (CompreSSM's tau): ``r`` is the
        smallest order with ``sum(hsv[:r]) >= (1 - tol) * sum(hsv)``; for a batch, the
        largest such ``r`` over the batch (every system meets ``tol``). Give exactly
        one of ``rank``, ``tol`` and ``max_error``.
    method : {"truncate", "spa"}
        Balanced truncation (exact at high frequency: ``z -> inf``, continuous ``s -> inf``) or
        singular perturbation approximation (exact DC gain: ``G(1)``, continuous ``G(0)``).
    projection : {"sr", "bfsr"}
        ``"sr"``: square-root projections ``V = L_c V_r S_r^{-1/2}``,
        ``W = L_o U_r S_r^{-1/2}``; the reduced realization is balanced (SLICOT
        ``JOB='B'``). ``"bfsr"``: balancing-free square root (A. Varga, 1991; SLICOT
        ``JOB='N'``, pyMOR's default): ``V`` an orthonormal basis of the same subspace,
        ``W^H V = I``. Same reduced transfer function; better conditioned projections
        for badly scaled systems, but the reduced realization is not balanced.
        Truncation only; every kept HSV must be nonzero.
    time : {None, "discrete", "continuous"}
        The time base of matrices: ``None`` means discrete for arrays and the object's own
        time base for a system object. ``"continuous"``: Gramians from
        ``A P + P A^H + B B^H = 0`` and SPA matching ``G(0)`` (see :mod:`lti_reduce.continuous`).
    unstable : {"error", "split"}
        ``"error"``: an unstable model raises :class:`~lti_reduce.UnstableSystemError`.
        ``"split"``: keep the unstable part exactly and reduce the stable part
        (:mod:`lti_reduce.stable_split`); ``rank`` then counts the whole reduced order,
        ``tol`` and the bound refer to the stable part. One system at a time.
    max_error : float, optional
        The largest allowed a-priori error bound: ``r`` is the smallest order in ``0..n`` with
        ``2 * sum(hsv[r:]) <= max_error``, so ``||G - G_r||_inf <= max_error`` (MATLAB's
        ``getrom(R, MaxError=e)``); for a batch, the largest such ``r``. Order 0 is the static
        gain ``D`` (``method="spa"``: the DC gain). With ``unstable="split"`` the bound is the
        stable part's.
    margin : float
        With ``unstable="split"``: poles within this distance of the stability boundary
        (``| |lambda| - 1 | <= margin``; continuous: ``|Re lambda| <= margin * max(1, |lambda|)``)
        cannot be classified and raise :class:`~lti_reduce.LTIInputError`. Poles within rounding
        of the boundary (``64 n eps ||A||_1``, e.g. an integrator computed as ``-4e-17``) are never
        counted stable: with ``margin=0`` they are kept exactly, like poles on the boundary.

    Returns
    -------
    BalancedTruncationResult
        ``.A, .B, .C, .D`` (reduced model), ``.hsv``, ``.rank``, ``.error_bound``,
        ``.error_bounds()`` for all orders and ``.reduce(rank=|tol=)`` for others; with
        ``unstable="split"`` a :class:`~lti_reduce.SplitReductionResult` (the same members, ``hsv``
        ``inf`` for the unstable states, the bound that of the stable part).

    Raises
    ------
    UnstableSystemError
        If ``A`` has spectral radius ``>= 1`` (continuous time: an eigenvalue with
        ``Re >= 0``) and ``unstable="error"`` (the message gives it).
    LTIInputError
        Shape mismatch, NaN/Inf, ``rank`` outside ``1..n``, ``tol`` outside (0, 1),
        both or neither of ``rank``/``tol``, unknown ``method`` or ``projection``.

    Notes
    -----
    Square-root method on directly computed Gramian factors (module docstring);
    the reduced model is stable, and

    .. math:: \\sigma_{r+1} \\le \\|G - G_r\\|_{\\mathcal{H}_\\infty} \\le 2 \\sum_{i > r} \\sigma_i .

    If ``rank`` exceeds the numerical order of a non-minimal system (the number of HSVs above
    ``n eps sigma_1``), in discrete time the extra states are exactly decoupled (zero rows/columns:
    stable modes at ``z = 0``), so batch shapes stay fixed. In continuous time such states would be
    eigenvalues at ``s = 0``, so the order is lowered to the numerical order (for a batch, the smallest
    over the batch) with an :class:`~lti_reduce.OrderCappedWarning`; ``.rank`` is the order returned,
    ``.requested_rank`` the one asked for (SLICOT ``AB09AD`` returns the same ``NR``).
    Compares with SLICOT ``AB09AD`` (truncation) and ``AB09ND`` (SPA), ``DICO='D'`` (``'C'`` with
    ``time="continuous"``); ``unstable="split"`` with ``AB09MD``.

    Examples
    --------
    >>> import numpy as np, lti_reduce as lr
    >>> rng = np.random.default_rng(0)
    >>> A = np.diag([0.9, 0.5, 0.1, -0.2]); B = rng.standard_normal((4, 1)); C = rng.standard_normal((1, 4))
    >>> res = lr.balanced_truncation(A, B, C, rank=2)
    >>> res.A.shape, res.rank
    ((2, 2), 2)
    >>> bool(res.error_bound == 2 * res.hsv[2:].sum())
    True
    """
    if _dispatch.is_large(A):
        return _dispatch.large_balanced_truncation(A, B, C, D, rank=rank, tol=tol, method=method,
                                                   projection=projection, time=time, unstable=unstable,
                                                   max_error=max_error)
    if _dispatch.routed(A, time, unstable):
        return _dispatch.balanced_truncation(A, B, C, D, rank=rank, tol=tol, method=method, projection=projection,
                                             time=time, unstable=unstable, margin=margin, max_error=max_error)
    check_choice(method, "method", _METHODS)
    _check_projection(projection, method)
    dec = _decompose(A, B, C, D)
    r = _resolve_rank(dec.s, rank, tol, dec.sysw.n, max_error)
    return BalancedTruncationResult(dec, r, method, projection=projection)
