"""Balanced truncation of large sparse models from low-rank Gramian factors.

For a state matrix ``A`` of an order ``n`` that dense ``O(n^3)`` methods cannot hold (a
``scipy.sparse`` matrix or a ``scipy.sparse.linalg.LinearOperator``, with ``B`` and ``C``
dense and few inputs and outputs), the Gramians are numerically of low rank and are computed
as factors ``P ~ Z_c Z_c^H`` and ``Q ~ Z_o Z_o^H`` with ``k << n`` columns.

Continuous time, ``A P + P A^H + B B^H = 0``: the low-rank ADI iteration (Penzl 2000; Li &
White 2002) in the residual form of Benner, Kürschner & Saak (2013). With ``W_0 = B`` and shifts
``p_j`` in the open left half-plane,

.. math::

    V_j = (A + p_j I)^{-1} W_{j-1}, \\qquad W_j = W_{j-1} - 2\\,\\mathrm{Re}(p_j)\\, V_j, \\qquad
    Z_j = [\\,Z_{j-1},\\; \\sqrt{-2\\,\\mathrm{Re}(p_j)}\\, V_j\\,],

and the residual of the factored equation is itself of low rank,

.. math:: A Z_j Z_j^H + Z_j Z_j^H A^H + B B^H = W_j W_j^H,

so its norm ``||W_j^H W_j||_2`` costs an ``m x m`` eigenvalue problem. For real ``A`` a
complex-conjugate pair ``p, conj(p)`` is taken in one double step in real arithmetic
(Benner, Kürschner & Saak 2013, Algorithm 3): with ``g = -4 Re p`` and ``d = Re p / Im p``,
``W <- W + g (Re V + d Im V)``, ``Z <- [Z, sqrt(g)(Re V + d Im V), sqrt(g (d^2 + 1)) Im V]``.
The iteration stops when ``||W_j^H W_j||_2 <= tol ||B^H B||_2``.

Discrete time, ``P = A P A^H + B B^H``: the Cayley transform

.. math:: A_c = (A - I)(A + I)^{-1}, \\qquad B_c = \\sqrt 2\\,(A + I)^{-1} B, \\qquad C_c = \\sqrt 2\\, C (A + I)^{-1}

maps the Stein equations onto Lyapunov equations with the *same* Gramians, and each ADI step on
``A_c`` is one solve with ``A - q I``, ``q = (1 - p)/(1 + p)``:
``(A_c + p I)^{-1} = (A + I)((1 + p) A - (1 - p) I)^{-1}``. The Stein residual is
``A P A^H - P + B B^H = 1/2 (A + I) W W^H (A + I)^H``, so the same cheap stopping rule applies to
it directly. Eigenvalues near the unit circle (spectral radius near 1) become eigenvalues near the
imaginary axis, where the ADI shifts adapt to them: the number of steps depends on the spread of
the spectrum, not on ``1 - rho(A)`` as for the (squared) Smith iteration.

Shifts: projection shifts (Benner, Kürschner & Saak 2014): the Ritz values of ``A`` (``A_c``) on
the span of the last iterates, stable ones only, one of each conjugate pair. Both Gramians run in
lockstep with the same shifts, so each shift costs one sparse LU factorization of ``A - q I``
(SuperLU), used for ``A`` and (transposed) for ``A^H``. A ``LinearOperator`` gets its shifted
solves by GMRES, or from a ``solve`` function of its own.

Column compression: the factors are compressed (QR, then an SVD of the triangular factor;
columns with singular values below ``n eps`` of the largest are dropped) whenever they double in
size and at the end. Square-root balanced truncation then needs only the small SVD

.. math:: Z_o^H Z_c = U \\Sigma V^H, \\quad W = Z_o U_r \\Sigma_r^{-1/2}, \\quad
          T = Z_c V_r \\Sigma_r^{-1/2}, \\quad (A_r, B_r, C_r) = (W^H A T, W^H B, C T),

whose singular values estimate the leading Hankel singular values, with the a-priori bound
``2 sum_{i>r} sigma_i`` over the computed ones.

References
----------
T. Penzl, "A cyclic low-rank Smith method for large sparse Lyapunov equations", SIAM J. Sci.
Comput. 21 (2000). J.-R. Li and J. White, "Low rank solution of Lyapunov equations", SIAM J.
Matrix Anal. Appl. 24 (2002). P. Benner, P. Kürschner and J. Saak, "Efficient handling of complex
shift parameters in the low-rank ADI method", Numer. Algorithms 62 (2013); "Self-generating and
efficient shift parameters in ADI methods for large Lyapunov and Sylvester equations", Electron.
Trans. Numer. Anal. 43 (2014).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg

from .energy import rank_for_tol
from .errors import LTIInputError, UnstableSystemError
from .validate import check_rank_tol

__all__ = ["ADIConvergenceError", "LowRankFactor", "LowRankBalancedTruncationResult", "balanced_truncation",
           "compress_columns", "gramian_factors", "hankel_singular_values"]

_TIMES = ("discrete", "continuous")
_EPS = float(np.finfo(np.float64).eps)
# Iterate blocks per Gramian that span the projection subspace for the next shifts (pyMOR's default too).
_SUBSPACE_BLOCKS = 6


class ADIConvergenceError(RuntimeError):
    """The low-rank ADI iteration did not meet its residual tolerance within ``maxiter`` steps.

    The message gives the residual reached; raise ``maxiter``, loosen ``tol``, or give ``shifts``.
    """


# --------------------------------------------------------------------------------------------- operators


def _is_large_operator(A) -> bool:
    return scipy.sparse.issparse(A) or isinstance(A, scipy.sparse.linalg.LinearOperator)


class _Operator:
    """``A`` (sparse matrix or LinearOperator) with products and shifted solves ``(A - s I)^{-1} X``.

    ``mode`` selects the matrix: ``"N"`` is ``A``, ``"T"`` is ``A^T``, ``"H"`` is ``A^H``. One
    factorization of ``A - s I`` serves all three (``(A^T - s I)^{-1} = (A - s I)^{-T}``,
    ``(A^H - conj(s) I)^{-1} = (A - s I)^{-H}``), which is why the observability run of a complex
    model uses the conjugate shifts.
    """

    def __init__(self, A, solve, gmres_rtol: float):
        self.A = A
        self.n = int(A.shape[0])
        self.sparse = scipy.sparse.issparse(A)
        self.complex = np.issubdtype(np.dtype(A.dtype), np.complexfloating)
        self.user_solve = solve
        self.gmres_rtol = gmres_rtol
        self.factorizations = 0
        self.time = None  # set by the caller: the time base, for the message of an exactly singular shift
        self._lu = {}
        self._perm = None
        if self.sparse:
            self.csc = scipy.sparse.csc_matrix(A, dtype=np.complex128 if self.complex else np.float64)
            self._eye = scipy.sparse.identity(self.n, dtype=self.csc.dtype, format="csc")

    # products -----------------------------------------------------------------------------------
    def _raw(self, X, adjoint: bool):
        if self.sparse:
            M = self.csc.conj().T if adjoint else self.csc
            return M @ X
        return (self.A.H if adjoint else self.A).matmat(X)

    def dot(self, X, mode: str = "N"):
        """``A X`` (``A^T X``, ``A^H X``) for an ``(n, k)`` array, real or complex."""
        if not self.complex and np.iscomplexobj(X):  # a real operator applied to re and im separately
            return self.dot(X.real, mode) + 1j * self.dot(X.imag, mode)
        if mode == "T" and self.complex:
            return np.conj(self._raw(np.conj(X), True))
        return self._raw(X, mode != "N")

    # shifted solves ------------------------------------------------------------------------------
    def keep(self, keys):
        """Drop the factorizations not in ``keys`` (one LU of a large model is big)."""
        for k in list(self._lu):
            if k not in keys:
                del self._lu[k]

    def _factor(self, s):
        try:
            return self._factor_unchecked(s)
        except RuntimeError as exc:
            if "singular" not in str(exc).lower():
                raise
            raise _singular_shift_error(s, self.time) from None

    def _factor_unchecked(self, s):
        if s not in self._lu:
            M = self.csc - s * self._eye if np.imag(s) == 0 or self.complex else \
                self.csc.astype(np.complex128) - s * self._eye.astype(np.complex128)
            M = scipy.sparse.csc_matrix(M)
            if self._perm is None:
                # A structurally symmetric pattern (PDE discretizations) is ordered on A + A^T (half the fill of
                # COLAMD on a 5-point Laplacian); every A - s I has the pattern of the first one, so its ordering
                # is computed once and reused by pre-permuting (about 20% of each later factorization).
                pattern = (M != 0).astype(np.int8)
                symmetric = (pattern - pattern.T).nnz == 0
                lu = scipy.sparse.linalg.splu(M, permc_spec="MMD_AT_PLUS_A" if symmetric else "COLAMD")
                if symmetric:
                    inv = np.empty_like(lu.perm_c)
                    inv[lu.perm_c] = np.arange(self.n)
                    self._perm = inv
                else:
                    self._perm = False
                self._lu[s] = (lu, None)
            elif self._perm is False:
                self._lu[s] = (scipy.sparse.linalg.splu(M), None)
            else:
                perm = self._perm
                self._lu[s] = (scipy.sparse.linalg.splu(M[perm][:, perm].tocsc(), permc_spec="NATURAL"), perm)
            self.factorizations += 1
        return self._lu[s]

    def solve(self, s, X, mode: str = "N"):
        """``(A - s I)^{-1} X`` (``mode="N"``), ``(A^T - s I)^{-1} X`` (``"T"``), ``(A^H - conj(s) I)^{-1} X`` (``"H"``)."""
        s = complex(s) if np.imag(s) != 0 else float(np.real(s))
        if self.sparse:
            lu, perm = self._factor(s)
            if isinstance(s, complex) or self.complex:
                X = X.astype(np.complex128, copy=False)
            if perm is None:
                return lu.solve(np.asarray(X, order="F"), trans=mode)
            # (P M P^T)(P x) = P b with (P x)_i = x[perm[i]]; the same for the (conjugate) transpose
            Y = lu.solve(np.asarray(X[perm], order="F"), trans=mode)
            out = np.empty_like(Y)
            out[perm] = Y
            return out
        if mode == "T":  # (A^T - s)^{-1} X = conj((A^H - conj(s))^{-1} conj(X))
            return np.conj(self.solve(s, np.conj(X), "H"))
        if self.user_solve is not None:
            Y = np.asarray(self.user_solve(s, X, adjoint=(mode == "H")))
            if Y.shape != X.shape:
                raise LTIInputError(f"solve(shift, X, adjoint) must return an array of the shape of X {X.shape}, "
                                    f"got {Y.shape}.")
            return Y
        return self._gmres(s, X, mode == "H")

    def _gmres(self, s, X, adjoint: bool):
        shift = np.conj(s) if adjoint else s
        dtype = np.complex128 if (self.complex or np.iscomplexobj(X) or np.imag(s) != 0) else np.float64
        M = scipy.sparse.linalg.LinearOperator(
            (self.n, self.n), dtype=dtype,
            matvec=lambda x: self.dot(np.asarray(x).reshape(-1, 1), "H" if adjoint else "N")[:, 0] - shift * np.ravel(x))
        out = np.empty(X.shape, dtype=np.result_type(dtype, X.dtype))
        restart = min(self.n, 200)
        for j in range(X.shape[1]):
            b = X[:, j].astype(dtype)
            x, info = scipy.sparse.linalg.gmres(M, b, rtol=self.gmres_rtol, atol=0.0, restart=restart,
                                                maxiter=max(10, 20 * self.n // restart))
            if info != 0:
                raise ADIConvergenceError(
                    f"GMRES did not solve (A - s I) x = b for the ADI shift s = {s:.6g} to rtol = {self.gmres_rtol:g} "
                    "(the operator gives no solver of its own); pass solve=your_solver(shift, X, adjoint) with a "
                    "direct or preconditioned solver, or A as a sparse matrix.")
            out[:, j] = x
        return out


# --------------------------------------------------------------------------------------------- ADI runs


@dataclass
class LowRankFactor:
    """A low-rank Gramian factor ``P ~ Z Z^H`` from the ADI iteration.

    Attributes
    ----------
    Z : ndarray, shape (n, k)
        The factor, column-compressed.
    residual : float
        Relative residual of the factored equation, ``||R||_2 / ||B B^H||_2`` (``C^H C`` for
        the observability Gramian), with ``R = W W^H`` as in the module docstring.
    iterations : int
        ADI steps (a complex pair counts two).
    residual_history : list of float
        The relative residual after each step.
    shifts : ndarray
        The shifts ``p_j`` used (for ``A_c`` in discrete time).
    """

    Z: np.ndarray
    residual: float
    iterations: int
    residual_history: list = field(default_factory=list)
    shifts: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _singular_shift_error(s, time) -> LTIInputError:
    """The error for ``A - s I`` exactly singular: ``s`` is an eigenvalue of ``A``; say what that means."""
    z = complex(s)
    shown = f"{z.real:.6g}" if z.imag == 0 else f"{z:.6g}"
    if time == "discrete" and abs(z) >= 1.0:
        return UnstableSystemError(
            f"A has the eigenvalue {shown} (A - ({shown}) I is exactly singular), on or outside the unit circle: the "
            "model is not Schur stable, so its discrete-time Gramians do not exist (an eigenvalue at 1 is a "
            "discrete integrator, at -1 an undamped oscillation at the Nyquist frequency). Check the model (its time "
            "step, or whether it is continuous time: pass time='continuous'), or reduce it densely with "
            "lti_reduce.balanced_truncation(..., unstable='split') if it fits in memory.")
    if time == "continuous" and z.real >= 0.0:
        return UnstableSystemError(
            f"A has the eigenvalue {shown} (A - ({shown}) I is exactly singular) with a non-negative real part: the "
            "model is not Hurwitz stable, so its continuous-time Gramians do not exist. Check the model (or its "
            "sign convention).")
    return LTIInputError(
        f"A - ({shown}) I is exactly singular: the ADI shift {shown} is an eigenvalue of A. Pass shifts= that avoid "
        "the eigenvalues of A.")


class _ADIRun:
    """One low-rank ADI iteration (controllability: ``mode="N"``; observability: ``"T"``/``"H"``)."""

    def __init__(self, op: _Operator, B, mode: str, time: str, real: bool, tol: float):
        self.op, self.mode, self.time, self.real, self.tol = op, mode, time, real, tol
        self.blocks = []
        self.Z = np.zeros((op.n, 0), dtype=np.float64 if real else np.complex128)
        if time == "discrete":  # W_0 = B_c = sqrt(2) (A + I)^{-1} B
            W = np.sqrt(2.0) * op.solve(-1.0, B, mode)
        else:
            W = np.array(B, dtype=np.float64 if real else np.complex128)
        self.W = W.real.copy() if real else W
        self.base = _sq_norm(B)
        self.history = [self._residual()]
        self.steps, self.shifts = 0, []
        self.compressed_at = 0

    @property
    def done(self) -> bool:
        return self.history[-1] <= self.tol

    def _residual(self) -> float:
        W = self.W
        if self.time == "discrete":  # Stein residual: 1/2 (A + I) W W^H (A + I)^H
            W = (self.op.dot(W, self.mode) + W) / np.sqrt(2.0)
        return _sq_norm(W) / self.base if self.base > 0 else 0.0

    def _apply(self, p, W):
        """``(T + p I)^{-1} W`` with ``T`` the run's operator (``A_c`` in discrete time)."""
        op = self.op
        s = self._conj(p)  # the shift of this run; the LU key is always that of p (op.solve conjugates for "H")
        if self.time == "continuous":
            return op.solve(-p, W, self.mode)
        q = (1 - p) / (1 + p)  # (A_c + s I)^{-1} = (A + I)((1 + s) A - (1 - s) I)^{-1}
        Y = op.solve(q, W, self.mode) / (1 + s)
        return op.dot(Y, self.mode) + Y

    def _conj(self, p):
        # the observability run of a complex model works on A^H with the conjugate shifts (same LU)
        return np.conj(p) if (self.mode == "H" and not self.real) else p

    def step(self, p):
        pr = float(np.real(p))
        if self.real and np.imag(p) != 0:  # conjugate pair in one double step, real arithmetic
            V = self._apply(p, self.W)
            g = -4.0 * pr
            d = pr / float(np.imag(p))
            X = V.real + d * V.imag
            self.W = self.W + g * X
            self.blocks += [np.sqrt(g) * X, np.sqrt(g * (d * d + 1.0)) * V.imag]
            self.steps += 2
        else:
            V = self._apply(p, self.W)
            if self.real:
                V = V.real
            s = self._conj(p)
            self.W = self.W - 2.0 * float(np.real(s)) * V
            self.blocks.append(np.sqrt(-2.0 * float(np.real(s))) * V)
            self.steps += 1
        self.shifts.append(p)
        self.history.append(self._residual())

    def last_blocks(self, k: int):
        return self.blocks[-k:]

    def factor(self, final: bool = False):
        """Fold new blocks into ``Z``; compress when it has doubled since the last compression, and at the end."""
        if self.blocks:
            self.Z = np.hstack([self.Z] + self.blocks)
            self.blocks = []
        if final or self.Z.shape[1] > max(2 * self.compressed_at, 128):
            self.Z = compress_columns(self.Z)
            self.compressed_at = self.Z.shape[1]
        return self.Z


def _sq_norm(W) -> float:
    """``||W^H W||_2 = ||W||_2^2``."""
    if W.shape[1] == 0:
        return 0.0
    return float(np.linalg.norm(W.conj().T @ W, 2))


def compress_columns(Z, rtol: float = None):
    """A factor with fewer columns and (to ``rtol``) the same ``Z Z^H``.

    Parameters
    ----------
    Z : ndarray, shape (n, k)
    rtol : float, optional
        Columns of ``Z V`` (``Z = Q R``, ``R = U S V^H``) whose singular value is at most
        ``rtol * s_1`` are dropped; the default ``max(n, k) * eps`` drops only round-off, so
        ``Z Z^H`` changes by at most ``rtol^2 ||Z Z^H||_2``.

    Returns
    -------
    ndarray, shape (n, k')
        ``Z V_{k'} = Q U_{k'} S_{k'}`` with orthogonal columns, ``k' <= k``.
    """
    n, k = Z.shape
    if k == 0:
        return Z
    if rtol is None:
        rtol = max(n, k) * _EPS
    elif isinstance(rtol, bool) or not isinstance(rtol, (int, float, np.floating)) or not 0.0 <= float(rtol) < 1.0:
        raise LTIInputError(f"rtol must be a float in [0, 1) (columns with singular values at most rtol * s_1 are "
                            f"dropped, e.g. 1e-12), got {rtol!r}.")
    R = scipy.linalg.qr(Z, mode="r", check_finite=False)[0][: min(n, k)]
    _, s, Vh = scipy.linalg.svd(R, full_matrices=False, check_finite=False)
    keep = int(np.sum(s > rtol * s[0])) if s[0] > 0 else 0
    return Z @ Vh[:keep].conj().T


# --------------------------------------------------------------------------------------------- checks


def _check_system(A, B, C, D):
    if not _is_large_operator(A):
        raise LTIInputError(f"lti_reduce.lowrank takes A as a scipy.sparse matrix or a LinearOperator, got "
                            f"{type(A).__name__}; use lti_reduce.balanced_truncation for dense arrays.")
    if len(A.shape) != 2 or A.shape[0] != A.shape[1]:
        raise LTIInputError(f"A must be square (n, n), got shape {tuple(A.shape)}.")
    n = int(A.shape[0])
    if n == 0:
        raise LTIInputError("A has zero states (n = 0); there is nothing to reduce.")
    if scipy.sparse.issparse(A) and not np.all(np.isfinite(A.data)):
        raise LTIInputError("A contains NaN or Inf; clean the input.")
    B = _dense(B, "B")
    C = _dense(C, "C")
    if B.shape[0] != n:
        raise LTIInputError(f"B must have n = {n} rows to match A {tuple(A.shape)}, got shape {B.shape}.")
    if C.shape[1] != n:
        raise LTIInputError(f"C must have n = {n} columns to match A {tuple(A.shape)}, got shape {C.shape}.")
    m, p = B.shape[1], C.shape[0]
    if D is None:
        D = np.zeros((p, m), dtype=np.result_type(B.dtype, C.dtype))
    else:
        D = _dense(D, "D")
        if D.shape != (p, m):
            raise LTIInputError(f"D must have shape (p, m) = ({p}, {m}) to match B and C, got {D.shape}.")
    if m > n // 2 or p > n // 2:
        raise LTIInputError(f"the low-rank path needs few inputs and outputs (m, p << n), got m = {m}, p = {p} for "
                            f"n = {n}; use lti_reduce.balanced_truncation on dense arrays.")
    return B, C, D


def _dense(X, name):
    if scipy.sparse.issparse(X):
        X = X.toarray()
    X = np.asarray(X)
    if X.ndim != 2:
        raise LTIInputError(f"{name} must be a 2-D array, got shape {X.shape}; batches are not supported by the "
                            "low-rank path.")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.complexfloating)
            or np.issubdtype(X.dtype, np.integer)):
        raise LTIInputError(f"{name} has dtype {X.dtype}; pass a real or complex floating array.")
    if not np.all(np.isfinite(X)):
        raise LTIInputError(f"{name} contains NaN or Inf; clean the input.")
    return X.astype(np.complex128 if np.iscomplexobj(X) else np.float64)


def _check_time(time):
    time = "discrete" if time is None else time
    if time not in _TIMES:
        raise LTIInputError(f"time must be 'discrete' (x[k+1] = A x[k] + B u[k]) or 'continuous' (x' = A x + B u), "
                            f"got {time!r}.")
    return time


def _is_stable(theta, time):
    return np.abs(theta) < 1.0 if time == "discrete" else np.real(theta) < 0.0


# --------------------------------------------------------------------------------------------- shifts


def _ritz_values(op: _Operator, Q, time: str):
    """Eigenvalues of the Galerkin projection of ``A`` (``A_c`` in discrete time) onto ``range(Q)``."""
    if time == "continuous":
        H = Q.conj().T @ op.dot(Q)
    else:  # A_c Q = (A - I)(A + I)^{-1} Q
        Y = op.solve(-1.0, Q)
        H = Q.conj().T @ (op.dot(Y) - Y)
    return scipy.linalg.eigvals(H)


def _orth(X):
    if X.shape[1] == 0:
        return X
    Q, R = scipy.linalg.qr(X, mode="economic", check_finite=False)
    d = np.abs(np.diag(R))
    return Q[:, d > max(X.shape) * _EPS * (d.max() if d.size else 0.0)]


def _select_shifts(theta, real: bool):
    """Stable Ritz values (``Re < 0``) as shifts: one per conjugate pair, nearly real ones made real."""
    p = theta[np.isfinite(theta) & (np.real(theta) < 0)]
    if real:
        p = p[np.imag(p) >= 0]
        p = np.where(np.abs(np.imag(p)) <= 1e-12 * np.abs(np.real(p)), np.real(p), p)
    return p[np.argsort(np.abs(p))].astype(np.complex128)


def _check_ritz_certifies_stability(op: _Operator, theta, time: str):
    """For a symmetric (Hermitian) ``A`` Ritz values lie in the spectrum's hull: an unstable one proves instability."""
    if not op.sparse:
        return
    A = op.csc
    if abs(A - A.conj().T).max() if A.nnz else 0.0:
        return
    # Ritz values of A itself (not of A_c): hull of the real spectrum of a Hermitian A
    bad = theta[~_is_stable(theta, time)] if time == "continuous" else theta[np.abs(theta) >= 1]
    if bad.size:
        what = (f"a Ritz value {float(np.real(bad[0])):.6g} >= 0" if time == "continuous"
                else f"a Ritz value of modulus {float(np.max(np.abs(bad))):.6g} >= 1")
        raise UnstableSystemError(
            f"A is Hermitian and has {what}, so it has an eigenvalue outside the stability region "
            f"({'Re < 0' if time == 'continuous' else 'modulus < 1'}); {time}-time Gramians do not exist. "
            "Check the model (sign of A, time step) or stabilize it first.")


def _instability_detail(op: _Operator, time: str) -> str:
    """A few eigenvalues near the stability boundary (ARPACK), to tell an unstable model from slow convergence."""
    try:
        if op.n <= 2000:
            lam = scipy.linalg.eigvals(op.csc.toarray()) if op.sparse else None
        else:
            lam = None
        if lam is None:
            which = "LM" if time == "discrete" else "LR"
            lam = scipy.sparse.linalg.eigs(op.csc if op.sparse else op.A, k=3, which=which, maxiter=2000, tol=1e-8,
                                           return_eigenvectors=False)
    except Exception:  # noqa: BLE001 - only used to word the message
        return ""
    bad = lam[~_is_stable(lam, time)]
    if bad.size:
        worst = bad[np.argmax(np.abs(bad) if time == "discrete" else np.real(bad))]
        raise UnstableSystemError(
            f"A has the eigenvalue {complex(worst):.6g} outside the stability region "
            f"({'modulus < 1' if time == 'discrete' else 'Re < 0'}); {time}-time Gramians do not exist, and the "
            "low-rank ADI iteration diverged. Check the model (sign of A, time step) or stabilize it first.")
    return ""


# --------------------------------------------------------------------------------------------- the solver


def _run_adi(op: _Operator, B, C, time: str, tol: float, maxiter: int, shifts):
    real = not (op.complex or np.iscomplexobj(B) or np.iscomplexobj(C))
    obs_mode = "T" if real else "H"
    runs = [_ADIRun(op, B, "N", time, real, tol), _ADIRun(op, np.conj(C.T), obs_mode, time, real, tol)]
    given = shifts is not None
    if given:
        pool = np.asarray(shifts, dtype=np.complex128).ravel()
        if pool.size == 0 or not np.all(np.real(pool) < 0):
            raise LTIInputError(f"shifts must be a non-empty list of numbers with negative real part (for A_c = "
                                f"(A - I)(A + I)^(-1) in discrete time), got {shifts!r}.")
        if real:  # one shift of each conjugate pair: the double step takes both
            pool = pool[np.imag(pool) >= 0]
    else:
        Q = _orth(np.hstack([B, np.conj(C.T)]).astype(np.complex128 if not real else np.float64))
        theta_A = scipy.linalg.eigvals(Q.conj().T @ op.dot(Q))
        _check_ritz_certifies_stability(op, theta_A, time)
        pool = _select_shifts(_ritz_values(op, Q, time), real)
        if pool.size == 0:  # Krylov vectors instead: a larger subspace, more Ritz values
            K = [Q]
            for _ in range(4):
                K.append(op.dot(K[-1]))
            pool = _select_shifts(_ritz_values(op, _orth(np.hstack(K)), time), real)
        if pool.size == 0:
            _instability_detail(op, time)
            raise ADIConvergenceError("no stable projection shifts could be found (every Ritz value of A on the "
                                      "span of B, C^H and their Krylov vectors is unstable); give shifts=.")
    j = 0
    while not all(r.done for r in runs):
        if max(r.steps for r in runs if not r.done) >= maxiter:
            break
        p = pool[j]
        if time == "discrete":
            q = (1 - p) / (1 + p)
            key = complex(q) if np.imag(q) != 0 else float(np.real(q))
            op.keep({key, -1.0})
        else:
            key = complex(-p) if np.imag(p) != 0 else float(np.real(-p))
            op.keep({key})
        for r in runs:
            if not r.done:
                r.step(p)
        if any(r.history[-1] > 1e8 * max(r.history[0], 1.0) or not np.isfinite(r.history[-1]) for r in runs):
            _instability_detail(op, time)
            raise ADIConvergenceError(f"the low-rank ADI residual grew to {max(r.history[-1] for r in runs):.3e} "
                                      "(relative); A may be unstable or the shifts poor. Give shifts=.")
        j += 1
        if j == pool.size:
            j = 0
            if not given:
                blocks = [b for r in runs for b in r.last_blocks(_SUBSPACE_BLOCKS)]
                for r in runs:
                    r.factor()
                new = _select_shifts(_ritz_values(op, _orth(np.hstack(blocks)), time), real)
                if new.size:
                    pool = new
    op.keep(set())
    if not all(r.done for r in runs):
        worst = max(runs, key=lambda r: r.history[-1])
        which = "controllability" if worst is runs[0] else "observability"
        _instability_detail(op, time)
        raise ADIConvergenceError(
            f"the low-rank ADI iteration for the {which} Gramian reached the relative residual "
            f"{worst.history[-1]:.3e} after maxiter = {maxiter} steps, above tol = {tol:g}; raise maxiter, "
            "loosen tol, or give shifts= (e.g. from a few eigenvalues of A).")
    return [LowRankFactor(r.factor(final=True), r.history[-1], r.steps, r.history, np.asarray(r.shifts))
            for r in runs]


def _check_options(tol, maxiter, gmres_rtol=1e-13):
    if isinstance(gmres_rtol, bool) or not isinstance(gmres_rtol, (int, float, np.floating)) \
            or not (0 < float(gmres_rtol) < 1):
        raise LTIInputError(f"gmres_rtol must be a float in (0, 1) (the relative residual of the GMRES solves of a "
                            f"LinearOperator, e.g. 1e-13), got {gmres_rtol!r}.")
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not (0 < float(tol) < 1):
        raise LTIInputError(f"adi_tol must be a float in (0, 1) (the relative residual at which the ADI iteration "
                            f"stops, e.g. 1e-10), got {tol!r}.")
    if isinstance(maxiter, bool) or not isinstance(maxiter, (int, np.integer)) or maxiter < 1:
        raise LTIInputError(f"maxiter must be a positive integer (ADI steps), got {maxiter!r}.")


def gramian_factors(A, B, C, *, time: str = "discrete", adi_tol: float = 1e-10, maxiter: int = 200, shifts=None,
                    solve=None, gmres_rtol: float = 1e-13):
    """Low-rank factors of the controllability and observability Gramians of a large sparse model.

    Parameters
    ----------
    A : scipy.sparse matrix or scipy.sparse.linalg.LinearOperator, shape (n, n)
        Stable state matrix (discrete time: spectral radius < 1; continuous time: every
        eigenvalue with negative real part).
    B : array, shape (n, m)
    C : array, shape (p, n)
    time : {"discrete", "continuous"}
        Discrete: ``P = A P A^H + B B^H``, ``Q = A^H Q A + C^H C``. Continuous:
        ``A P + P A^H + B B^H = 0``, ``A^H Q + Q A + C^H C = 0``.
    adi_tol : float
        Stop each iteration when the relative residual ``||R||_2 / ||B B^H||_2`` (resp.
        ``C^H C``) of the factored equation is at most ``adi_tol``.
    maxiter : int
        Most ADI steps per Gramian (a complex pair counts two).
    shifts : sequence of complex, optional
        ADI shifts (negative real part; for ``A_c = (A - I)(A + I)^{-1}`` in discrete time),
        cycled. Default: projection shifts, recomputed after each pass.
    solve : callable, optional
        For a LinearOperator ``A``: ``solve(shift, X, adjoint)`` returning ``(A - shift I)^{-1} X``
        (``(A - shift I)^{-H} X`` when ``adjoint``), for ``X`` of shape ``(n, k)``. Without it
        GMRES solves to ``gmres_rtol``. Sparse matrices use a sparse LU (SuperLU).
    gmres_rtol : float
        Relative tolerance of the GMRES solves (LinearOperator without ``solve``).

    Returns
    -------
    (LowRankFactor, LowRankFactor)
        Controllability and observability factors: ``P ~ Zc.Z Zc.Z^H``, ``Q ~ Zo.Z Zo.Z^H``,
        with their residuals and iteration counts.

    Raises
    ------
    LTIInputError
        Non-square ``A``, mismatched ``B``, ``C``, NaN/Inf, bad options.
    UnstableSystemError
        When ``A`` is found unstable (a Ritz value of a Hermitian ``A``, or eigenvalues checked
        after a diverging or stalled iteration).
    ADIConvergenceError
        The residual did not reach ``adi_tol`` within ``maxiter`` steps.

    Notes
    -----
    Low-rank ADI with projection shifts and the residual stopping rule of Benner, Kürschner &
    Saak (2013); discrete time through the Cayley transform (module docstring).

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> from lti_reduce import lowrank
    >>> A = sp.diags([np.full(99, 0.25), np.full(100, 0.5), np.full(99, 0.25)], [-1, 0, 1])
    >>> B = np.ones((100, 1)); C = np.ones((1, 100))
    >>> Fc, Fo = lowrank.gramian_factors(A, B, C)
    >>> bool(Fc.residual <= 1e-10), Fc.Z.shape[1] < 100
    (True, True)
    """
    time = _check_time(time)
    B, C, _ = _check_system(A, B, C, None)
    _check_options(adi_tol, maxiter, gmres_rtol)
    op = _Operator(A, solve, gmres_rtol)
    op.time = time
    return tuple(_run_adi(op, B, C, time, float(adi_tol), int(maxiter), shifts))


class LowRankBalancedTruncationResult:
    """A reduced dense model from the low-rank Gramian factors of a large model.

    Returned by :func:`balanced_truncation`; do not construct directly.

    Attributes
    ----------
    A, B, C, D : ndarrays, shapes (r, r), (r, m), (p, r), (p, m)
        The reduced model (same time base as the full one), balanced.
    hsv : ndarray, shape (k,)
        Estimates of the ``k`` leading Hankel singular values, the singular values of
        ``Zo^H Zc``; the others are below what the factors resolve.
    rank : int
        The reduced order ``r``.
    time : str
        ``"discrete"`` or ``"continuous"``.
    error_bound : float
        ``2 * sum(hsv[r:])`` over the computed HSVs: the a-priori bound on ``||G - G_r||_inf``
        for the Gramians the factors represent (to the ADI residual).
    controllability_factor, observability_factor : LowRankFactor
        The factors, residuals and iteration counts.
    """

    def __init__(self, op: _Operator, B, C, D, factors, rank: int, time: str, svd):
        self._op, self._B, self._C, self.D = op, B, C, D
        self.controllability_factor, self.observability_factor = factors
        self.time = time
        self._U, self.hsv, self._Vh = svd
        self.rank = int(rank)
        self.error_bound = float(2.0 * np.sum(self.hsv[self.rank:]))
        self._model = None

    def error_bounds(self):
        """``2 * sum(hsv[r:])`` for every ``r = 0..k``, shape (k + 1,)."""
        tail = np.concatenate([np.cumsum(self.hsv[::-1])[::-1], [0.0]])
        return 2.0 * tail

    def _reduced(self):
        if self._model is None:
            r = self.rank
            s = self.hsv[:r]
            scale = 1.0 / np.sqrt(s)
            W = (self.observability_factor.Z @ self._U[:, :r]) * scale
            T = (self.controllability_factor.Z @ self._Vh[:r].conj().T) * scale
            AT = self._op.dot(T)
            Wh = W.conj().T
            Ar, Br, Cr = Wh @ AT, Wh @ self._B, self._C @ T
            real = not (np.iscomplexobj(Ar) or np.iscomplexobj(Br) or np.iscomplexobj(Cr))
            self._model = tuple(np.real(M) if real else M for M in (Ar, Br, Cr))
        return self._model

    A = property(lambda self: self._reduced()[0], doc="Reduced state matrix, shape (r, r).")
    B = property(lambda self: self._reduced()[1], doc="Reduced input matrix, shape (r, m).")
    C = property(lambda self: self._reduced()[2], doc="Reduced output matrix, shape (p, r).")

    def reduce(self, rank=None, tol=None, *, max_error=None) -> "LowRankBalancedTruncationResult":
        """Another order from the same factors and SVD (``rank`` in ``1..k``, an energy ``tol``, or ``max_error``)."""
        r = _resolve_rank(self.hsv, rank, tol, max_error)
        return LowRankBalancedTruncationResult(self._op, self._B, self._C, self.D,
                                               (self.controllability_factor, self.observability_factor), r,
                                               self.time, (self._U, self.hsv, self._Vh))

    def __repr__(self) -> str:
        return (f"LowRankBalancedTruncationResult(n={self._op.n} -> rank={self.rank}, time={self.time!r}, "
                f"hsv computed={self.hsv.size}, error_bound={self.error_bound:.3e})")


def _resolve_rank(hsv, rank, tol, max_error=None) -> int:
    k = int(np.sum(hsv > 0))
    if max_error is not None:
        from .balancing import rank_for_max_error

        if rank is not None or tol is not None:
            raise LTIInputError(f"give only one of rank=, tol= and max_error= (the largest allowed a-priori error "
                                f"bound); got rank={rank!r}, tol={tol!r}, max_error={max_error!r}.")
        return rank_for_max_error(hsv[:k], max_error) if k else 0
    if k == 0:
        raise LTIInputError("every computed Hankel singular value is zero (B = 0 or C = 0): the transfer function "
                            "is D; there is nothing to reduce.")
    rank, tol = check_rank_tol(rank, tol, k)
    if rank is None:
        rank = int(rank_for_tol(hsv[:k], tol))
    return rank


def _svd(Fc: LowRankFactor, Fo: LowRankFactor):
    M = Fo.Z.conj().T @ Fc.Z
    if M.size == 0:
        return np.zeros((Fo.Z.shape[1], 0)), np.zeros(0), np.zeros((0, Fc.Z.shape[1]))
    return scipy.linalg.svd(M, full_matrices=False)


def hankel_singular_values(A, B, C, **options):
    """Estimates of the leading Hankel singular values of a large sparse model.

    The singular values of ``Zo^H Zc`` from :func:`gramian_factors` (same parameters), descending.

    Returns
    -------
    ndarray, shape (k,)
    """
    Fc, Fo = gramian_factors(A, B, C, **options)
    return _svd(Fc, Fo)[1]


def balanced_truncation(A, B, C, D=None, *, rank=None, tol=None, time: str = "discrete", adi_tol: float = 1e-10,
                        maxiter: int = 200, shifts=None, solve=None, gmres_rtol: float = 1e-13, max_error=None):
    """Square-root balanced truncation of a large sparse model from low-rank Gramian factors.

    Parameters
    ----------
    A : scipy.sparse matrix or scipy.sparse.linalg.LinearOperator, shape (n, n)
        Stable state matrix (discrete time: spectral radius < 1; continuous time: every
        eigenvalue with negative real part).
    B : array, shape (n, m)
    C : array, shape (p, n)
    D : array, shape (p, m), optional
        Feedthrough, zero if omitted (kept as is).
    rank : int, optional
        Reduced order ``r`` in ``1..k`` (``k`` computed HSVs).
    tol : float in (0, 1), optional
        Fraction of the computed HSV sum that may be discarded (see :func:`lti_reduce.rank_for_tol`).
        Give exactly one of ``rank``, ``tol`` and ``max_error``.
    time : {"discrete", "continuous"}
        Time base of the model and of the reduced one.
    adi_tol, maxiter, shifts, solve, gmres_rtol
        Options of the low-rank ADI iteration, see :func:`gramian_factors`.
    max_error : float, optional
        The smallest order ``r`` in ``0..k`` with ``2 * sum(hsv[r:]) <= max_error`` over the computed
        HSVs (MATLAB's ``MaxError``); order 0 is the static gain ``D``.

    Returns
    -------
    LowRankBalancedTruncationResult
        ``.A, .B, .C, .D`` (the dense reduced model), ``.hsv`` (HSV estimates), ``.error_bound``,
        ``.error_bounds()``, ``.reduce(rank=|tol=)`` and the factors.

    Raises
    ------
    LTIInputError, UnstableSystemError, ADIConvergenceError
        As :func:`gramian_factors`; ``rank``/``tol`` as :func:`lti_reduce.balanced_truncation`.

    Notes
    -----
    ``Zo^H Zc = U S V^H``, ``W = Zo U_r S_r^{-1/2}``, ``T = Zc V_r S_r^{-1/2}``,
    ``(A_r, B_r, C_r, D_r) = (W^H A T, W^H B, C T, D)``: ``r`` products with ``A``, nothing of
    order ``n^2``. Truncation only (singular perturbation needs the whole balanced realization).
    The bound ``sigma_{r+1} <= ||G - G_r||_inf <= 2 sum_{i>r} sigma_i`` holds for the Gramians of
    the factors; their residual (``adi_tol``) limits how well those match the exact ones.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> from lti_reduce import lowrank
    >>> n = 400
    >>> A = sp.diags([np.ones(n - 1), np.full(n, -2.0), np.ones(n - 1)], [-1, 0, 1]) * (n + 1) ** 2
    >>> B = np.zeros((n, 1)); B[0] = (n + 1) ** 2; C = np.ones((1, n)) / (n + 1)
    >>> res = lowrank.balanced_truncation(A, B, C, rank=6, time="continuous")
    >>> res.A.shape, bool(res.error_bound < 1e-2 * res.hsv[0])
    ((6, 6), True)
    """
    time = _check_time(time)
    B, C, D = _check_system(A, B, C, D)
    _check_options(adi_tol, maxiter, gmres_rtol)
    op = _Operator(A, solve, gmres_rtol)
    op.time = time
    factors = _run_adi(op, B, C, time, float(adi_tol), int(maxiter), shifts)
    svd = _svd(*factors)
    r = _resolve_rank(svd[1], rank, tol, max_error)
    return LowRankBalancedTruncationResult(op, B, C, D, factors, r, time, svd)
