"""Discrete-time Gramians and their square-root factors.

For a Schur-stable ``A`` (spectral radius ``rho(A) < 1``) the controllability and
observability Gramians are the unique solutions of the Stein (discrete Lyapunov)
equations

.. math::

    P = A P A^H + B B^H, \\qquad Q = A^H Q A + C^H C,

i.e. ``P = sum_k A^k B B^H (A^H)^k`` and ``Q = sum_k (A^H)^k C^H C A^k``.

The square-root method needs only factors ``P = L_c L_c^H`` and ``Q = L_o L_o^H``.
They are computed here *directly*, never by factoring a computed ``P`` (which
would square the condition number and lose the small Hankel singular values), by
the factored squared-Smith (doubling) iteration

.. math::

    Z_0 = B,\\quad A_0 = A,\\qquad Z_{k+1} = [\\,Z_k,\\; A_k Z_k\\,],\\quad A_{k+1} = A_k^2,

so that ``Z_k Z_k^H = sum_{j < 2^k} A^j B B^H (A^H)^j``. Whenever ``Z_k`` has more
than ``n`` columns it is compressed to an ``n x n`` triangular factor with a QR
decomposition of ``Z_k^H`` (``Z Z^H = R^H R``), which is exact in exact
arithmetic. The iteration stops when the new block is negligible,
``||A_k Z_k||_F <= eps * ||Z_k||_F``; it needs ``~ log2(log(eps) / log(rho))``
steps (10 for ``rho = 0.95``, 16 for ``rho = 0.999``). Everything is matrix
products and QR, so it runs batched on any array backend (numpy, torch on CPU or
CUDA). For one numpy system the late steps run on a smaller system: once
``A^(2^k) = X Y^H`` has rank ``r <= n/2``, the rest is an ``r x r`` Stein equation
(see :func:`_doubling_rt`). References: R. A. Smith, SIAM J. Appl. Math. 16 (1968); T. Penzl, SIAM J.
Sci. Comput. 21 (2000) (low-rank Smith); P. Benner, E. S. Quintana-Orti, G.
Quintana-Orti, Parallel Comput. 26 (2000) (factored sign/doubling iterations).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.linalg import blas, lapack

from . import _backend as be
from .validate import _Dense, dense_system, raise_unstable, require_stable

__all__ = ["gramians", "gramian_factors"]

# Enough doublings for rho(A) <= 1 - 1e-12 (rho^(2^45) ~ exp(-35)); beyond that
# the Gramians are not computable in double precision anyway.
_MAX_DOUBLINGS = 45


def _host_float(x) -> float:
    """A scalar as a Python float, outside autograd (these are convergence tests, not results)."""
    return float(x.detach() if hasattr(x, "detach") else x)


def _frobenius(xp, X):
    """Frobenius norm over the last two axes, maximized over the batch (a float)."""
    if X.shape[-1] == 0:
        return 0.0
    return _host_float(xp.max(xp.reshape(xp.sqrt(xp.sum(xp.abs(X) ** 2, axis=(-2, -1))), (-1,))))


def _relative_size(xp, new, old):
    """max over the batch of ||new||_F / ||old||_F (0/0 counts as 0)."""
    num = xp.sqrt(xp.sum(xp.abs(new) ** 2, axis=(-2, -1)))
    den = xp.sqrt(xp.sum(xp.abs(old) ** 2, axis=(-2, -1)))
    ratio = xp.where(den > 0, num / xp.where(den > 0, den, 1.0), xp.where(num > 0, float("inf"), 0.0))
    return _host_float(xp.max(xp.reshape(ratio, (-1,))))


def _compress(xp, Z):
    """An ``(..., n, n)`` factor with the same ``Z Z^H`` (QR of ``Z^H``)."""
    R = be.r_factor(xp, be.mH(Z))
    return be.mH(R)


def _tpqrt_block(n: int) -> int:
    """Block size for ``xTPQRT`` on ``n x n`` blocks: 16 below n = 384, else 32.

    Measured (OpenBLAS, 1 thread) against 64: 40% faster at n = 64..128, 20% at 256-512.
    """
    return min(n, 16 if n < 384 else 32)


def _factor_pair(sysw: _Dense):
    """Square-root factors by the factored doubling iteration (working precision).

    Returns ``(Lc, Lo)`` with ``P = Lc Lc^H``, ``Q = Lo Lo^H``; each has at most
    ``n`` columns. One numpy system takes :func:`_factor_pair_numpy`; batches and
    torch tensors take the array-API loop below.
    """
    xp, A, n = sysw.xp, sysw.A, sysw.n
    if A.ndim == 2 and be.is_numpy(A):
        return _factor_pair_numpy(sysw)
    eps = float(np.finfo(np.float64).eps)
    Zc, Zo = sysw.B, be.mH(sysw.C)
    done_c = done_o = False
    Ak = A
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(_MAX_DOUBLINGS):
            if not done_c:
                Zc, done_c = _double(xp, Ak, Zc, n, eps)
            if not done_o:
                Zo, done_o = _double(xp, be.mH(Ak), Zo, n, eps)
            # ||A^(2^k)||_F < 1 certifies rho(A) < 1, also for modes that B and C do not
            # touch (the factors converge without them); it usually holds by now.
            if done_c and done_o and _frobenius(xp, Ak) < 1.0:
                _check_a_late_certificate(sysw, k)
                return Zc, Zo
            Ak = Ak @ Ak
            if not bool(xp.all(xp.isfinite(Ak))):
                break
    raise_unstable(xp, A, "the doubling iteration did not converge ")


# From this many squarings on, the proof ||A^(2^k)||_F < 1 is backed by an eigenvalue check.
_EIG_CHECK_STEPS = 20


def _check_a_late_certificate(sysw: _Dense, k: int) -> None:
    """Back a proof ``||A^(2^k)||_F < 1`` that took ``k >= 20`` squarings by the eigenvalues of ``A``.

    Each squaring of a non-normal ``A`` errs by about ``eps ||A_j||^2`` times the eigenvalue
    condition number, and over many squarings that can pull an eigenvalue ``1 + 1e-9`` below 1
    (found in review: ``||A||_F ~ 1e3``, eigenvector condition ``1e4``, a mode that ``B`` and ``C`` do
    not touch; factors came back). Only spectral radii within about ``36 / 2^20 ~ 3e-5`` of 1
    need that many squarings, so the ``O(n^3)`` eigenvalues are rarely computed.
    """
    if k >= _EIG_CHECK_STEPS:
        require_stable(sysw)


def _factor_pair_numpy(sysw: _Dense):
    """:func:`_factor_pair` for one numpy system, in LAPACK calls with little overhead.

    The same iteration as the generic path, kept in the transposed form that LAPACK
    wants: the factors are carried as ``R = Z^H`` (upper triangular once compressed),
    the new block as ``X = (A_k Z)^H = R A_k^H`` (``R A_k`` for the observability
    factor), and ``[R; X]`` is compressed by ``xTPQRT`` without any copy or transpose
    in between. The block that meets the stopping test (``||X||_F <= eps ||R||_F``)
    is left out: it changes the Gramian by at most ``eps^2 ||P||``. At ``n = 64`` this
    takes 30% less time than the generic path, which spends it in array-API bookkeeping.

    When a symmetric permutation makes ``A`` block diagonal with small blocks (as in
    modal-form models, e.g. the SLICOT CD player and ISS models: 2 x 2 blocks), the
    iteration runs in the permuted coordinates, where ``A_k = A^(2^k)`` stays block
    diagonal: squaring it and applying it cost ``O(sum b_i^3)`` and ``O(n k b)``
    instead of ``2 n^3`` each, and only the QR compressions remain ``O(n^3)``.
    """
    A, n = sysw.A, sysw.n
    cplx = np.iscomplexobj(A) or np.iscomplexobj(sysw.B) or np.iscomplexobj(sysw.C)
    dtype = np.complex128 if cplx else np.float64
    A = np.asarray(A, dtype=dtype)
    B, C = np.asarray(sysw.B, dtype=dtype), np.asarray(sysw.C, dtype=dtype)
    Ak = _BlockDiagonal.detect(A)
    if Ak is not None:
        B, C = B[Ak.perm], C[:, Ak.perm]
        factors = _modal_factor_pair(sysw, Ak, B, C, real=not cplx)
        if factors is not None:
            return Ak.unpermute(factors[0]), Ak.unpermute(factors[1])
    else:
        Ak = _Dense2D(A)
    # R^H R = Z Z^H: controllability starts from Z = B (R = B^H), observability from Z = C^H (R = C).
    factors = _doubling_rt(Ak, np.conj(B.T), np.array(C), n, certify=True)
    if factors is None:
        raise_unstable(sysw.xp, sysw.A, "the doubling iteration did not converge ")
    _check_a_late_certificate(sysw, factors[2])
    Lc, Lo = np.conj(factors[0].T), np.conj(factors[1].T)
    return Ak.unpermute(Lc), Ak.unpermute(Lo)


def _doubling_rt(Ak, Rc, Ro, n: int, *, certify: bool, first_try: int = None):
    """The doubling iteration on factors carried as ``R = Z^H``; ``(Rc, Ro, k)`` or None if it diverges.

    ``k``: the number of squarings of the power ``A^(2^k)`` whose ``||.||_F < 1`` ended it.

    ``Ak`` is a :class:`_Dense2D` or :class:`_BlockDiagonal` holding ``A``. With ``certify`` the
    iteration also squares ``A`` until ``||A^(2^k)||_F < 1`` (a proof of ``rho(A) < 1``), as the
    caller needs; the recursive call on the low-rank tail leaves that to its caller.

    Low-rank tail (dense ``A`` only). The powers ``A_k = A^(2^k)`` lose rank fast: only the
    eigenvalues near the unit circle survive squaring (for a random ``64 x 64`` matrix with
    ``rho = 0.999`` the numerical rank is 64, 54, 38, 18, 6 at ``2^k = 16 ... 256``, while the
    iteration needs ``2^k ~ 32768``). Once ``A_k = X Y^H`` to working precision, with ``r``
    columns, the remaining sum obeys ``P = Z_k Z_k^H + A_k P A_k^H``, so ``P = Z_k Z_k^H + X M X^H``
    with the ``r x r`` Stein equation

    .. math:: M = (Y^H X) M (Y^H X)^H + (Y^H Z_k)(Y^H Z_k)^H

    (``M = Y^H P Y``), and likewise ``Q = Z_o Z_o^H + Y N Y^H`` with ``N = (Y^H X)^H N (Y^H X) +
    (X^H Z_o)(X^H Z_o)^H``. Both are solved by this iteration on the ``r x r`` system, and one
    compression of ``[Z_k, X L_M]`` (``M = L_M L_M^H``) finishes each factor: the remaining
    steps cost ``O(r^3)`` instead of ``O(n^3)``. The split is a pivoted QR of ``A_k``
    (``xGEQP3``), truncated where the discarded block has ``||R_22||_F <= sqrt(n) eps ||A_k||_F``
    (its rounding level). It is tried from ``2^k = 128`` on while ``||A_k||_F <= 8``, when the pivots
    of the last try predict a rank ``<= n / 2``, and not when ``||A_k||_F`` shows that at most three
    more steps are left; and it is used only if it passes :func:`_split_verified`: ``A_k`` squared
    in full until ``||A^(2^k')||_F < 1`` (the proof of ``rho(A) < 1`` that ``certify`` asks for),
    every power matching the model to rounding. That check is what rules out a non-normal ``A_k``
    that is large while its eigenvalues are small: a truncation relative to its norm would move
    them (a shifted Jordan block has ``||A^128|| ~ 1e36``).
    """
    eps = float(np.finfo(np.float64).eps)
    cplx = any(np.iscomplexobj(x) for x in (Ak.M if type(Ak) is _Dense2D else Ak.groups[0][2], Rc, Ro))
    nrm2 = blas.dznrm2 if cplx else blas.dnrm2
    tpqrt = lapack.ztpqrt if cplx else lapack.dtpqrt
    R, tri, done = [Rc, Ro], [False, False], [False, False]
    if first_try is None:
        first_try = _LOW_RANK_FIRST
    next_try = first_try if type(Ak) is _Dense2D and n >= _LOW_RANK_MIN_ORDER else None
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(_MAX_DOUBLINGS):
            worth_a_try = next_try is not None and k >= next_try and not (done[0] and done[1])
            norm = Ak.norm() if worth_a_try else np.inf
            if norm < 1.0 and _steps_left(Ak, eps) <= _LOW_RANK_MIN_STEPS:
                worth_a_try = False  # the iteration is about to end anyway
            if worth_a_try and norm <= _LOW_RANK_VERIFY_MAX:
                split, next_try = _low_rank_split(Ak.M, n, k, eps)
                extra = _split_verified(Ak, split, n, eps) if split is not None else 0
                if split is not None and not extra:
                    split, next_try = None, None  # the powers left the model: no split for this system
                if split is not None:
                    tail = _low_rank_tail(split, R, tri, done, n, tpqrt)
                    return None if tail is None else (tail[0], tail[1], k + extra)
            for i in (0, 1):  # 0: controllability (R A_k^H), 1: observability (R A_k)
                if done[i]:
                    continue
                X = Ak.rmul(R[i], adjoint=(i == 0))
                size = _nrm2(nrm2, X)
                if not np.isfinite(size):  # rho(A) >= 1: A_k overflows next
                    continue
                if size <= eps * _nrm2(nrm2, R[i]):
                    done[i] = True
                else:
                    R[i], tri[i] = _append_rows(R[i], tri[i], X, n, tpqrt)
            # ||A^(2^k)||_F < 1 certifies rho(A) < 1 (see _factor_pair).
            if done[0] and done[1] and (not certify or Ak.norm() < 1.0):
                return R[0], R[1], k
            Ak = Ak.square()
            if not Ak.finite():
                break
    return None


def _nrm2(nrm2, X) -> float:
    """``||X||_F`` by BLAS ``xNRM2`` (scaled: no overflow for entries above 1e154); 0 for an empty ``X``."""
    return float(nrm2(X.ravel(order="K"))) if X.size else 0.0


def _split_verified(Ak, split, n: int, eps: float) -> int:
    """Whether the powers of ``A_k = X Yh`` (split while ``||A_k||_F <= 8``) follow the model.

    Returns the number ``j >= 1`` of further squarings to ``||A_{k+j}||_F < 1`` if so, else 0.

    Squares ``A_k`` further, up to the first power with ``||A_{k+j}||_F < 1`` (which also proves
    ``rho(A) < 1``), with norms staying at most 8 on the way (a bounded transient), and checks that
    power against the model, ``A_k^(2^j) = X (Yh X)^(2^j - 1) Yh``, to ``8 sqrt(n) eps`` (measured on
    random matrices at n = 64..512: 0.3-1.1 times ``sqrt(n) eps``; the model's powers are those of
    one ``r x r`` matrix, so a deviation at an earlier power carries over to this one). A
    non-normal ``A_k`` whose powers grow, or whose small eigenvalues the truncation moved, fails.
    """
    X, Yh = split
    P, N = Yh @ X, None  # P = M^(2^(j-1)) and N = M^(2^(j-1) - 1), M = Yh X (N = None: the identity)
    with np.errstate(over="ignore", invalid="ignore"):
        for j in range(1, _MAX_DOUBLINGS + 1):
            Ak = Ak.square()
            N = P if N is None else P @ N
            P = P @ P
            norm = Ak.norm()
            if not (norm <= _LOW_RANK_VERIFY_MAX):  # also NaN
                return 0
            if norm < 1.0:  # the last power, where every earlier deviation would show
                return j if np.linalg.norm(Ak.M - X @ (N @ Yh)) <= 8.0 * np.sqrt(n) * eps else 0
    return 0


def _steps_left(Ak, eps: float) -> float:
    """An upper bound on the doublings left once ``||A_k||_F < 1`` (``||A_k||^(2^j) <= eps``), else inf."""
    nrm = Ak.norm()
    return float(np.log2(np.log(eps) / np.log(nrm))) if 0.0 < nrm < 1.0 else (0.0 if nrm == 0.0 else np.inf)


# Doubling step at which the low-rank split is first tried (A_k = A^128: for a random matrix the
# eigenvalues within eps^(1/128) ~ 0.75 rho of the circle, ~43% of them, survive), the largest
# rank (as a fraction of n) at which the tail is taken, and the smallest order for which it is tried.
_LOW_RANK_FIRST = 7
_LOW_RANK_MAX = 0.5
_LOW_RANK_MIN_ORDER = 16
_LOW_RANK_FIRST_TAIL = 1
_LOW_RANK_MIN_STEPS = 3
# Largest ||A_k||_F at which a split is tried (and then verified: _split_verified).
_LOW_RANK_VERIFY_MAX = 8.0


def _append_rows(R, tri: bool, X, n: int, tpqrt):
    """``(R', triangular)`` with ``R'^H R' = R^H R + X^H X`` and at most ``n`` rows.

    ``xTPQRT`` when ``R`` is ``n x n`` triangular, else a QR decomposition once the rows exceed ``n``.
    """
    if tri:
        R, _, _, info = tpqrt(0, _tpqrt_block(n), np.asfortranarray(R), np.asfortranarray(X),
                              overwrite_a=True, overwrite_b=True)
        if info != 0:  # pragma: no cover - LAPACK argument error
            raise RuntimeError(f"LAPACK xTPQRT failed with info = {info}")
        return R, True  # the strict lower triangle is not referenced and stays zero
    R = np.concatenate([R, X], axis=0)
    if R.shape[0] > n:
        qr, _, _, info = (lapack.zgeqrf if np.iscomplexobj(R) else lapack.dgeqrf)(R, overwrite_a=True)
        if info != 0:  # pragma: no cover - LAPACK argument error
            raise RuntimeError(f"LAPACK xGEQRF failed with info = {info}")
        return np.asfortranarray(qr[:n] * _upper_mask(n)), True
    return R, False


def _low_rank_split(M, n: int, k: int, eps: float):
    """``((X, Yh), None)``: ``M = X Yh`` to rounding, in at most ``n / 2`` columns; else ``(None, k')``.

    Pivoted QR ``M Pi = Q R`` (``xGEQP3``): ``X = Q[:, :r]`` and ``Yh = R[:r] Pi^T`` with the
    smallest ``r`` whose trailing block has ``||R[r:, r:]||_F <= sqrt(n) eps ||M||_F`` (for the upper
    triangular ``R`` that block holds all of rows ``r:``): the size of the pivoted QR's own rounding.
    Whether the sum over the powers of ``M`` tolerates it is :func:`_split_verified`'s to check. (Measured: the HSVs move by at most
    4e-15 sigma_1 from those of the iteration without the split at n = 64..256, rho = 0.98..0.999.)
    When ``r`` is too large, the pivots predict the rank of the next powers
    (``sigma_i(M^(2^j)) ~ sigma_i(M)^(2^j)``, exact for a normal ``M``), and ``k'`` is the first
    step ``k + j`` (``j <= 3``, else ``k + 4``) at which that prediction is ``<= n / 2``.
    """
    cplx = np.iscomplexobj(M)
    QR, jpvt, tau, _, info = (lapack.zgeqp3 if cplx else lapack.dgeqp3)(M)
    if info != 0:  # pragma: no cover - LAPACK argument error
        raise RuntimeError(f"LAPACK xGEQP3 failed with info = {info}")
    R = QR * _upper_mask(n)
    row_sq = np.einsum("ij,ij->i", R, np.conj(R)).real
    tail = np.sqrt(np.cumsum(row_sq[::-1])[::-1])  # tail[r] = ||R[r:, r:]||_F
    total = float(tail[0])
    if not np.isfinite(total):
        return None, None  # overflow: the caller's iteration stops
    r = int(np.count_nonzero(tail > np.sqrt(n) * eps * total))
    if r <= _LOW_RANK_MAX * n:
        r = max(r, 1)
        Q, _, info = (lapack.zungqr if cplx else lapack.dorgqr)(QR[:, :r], tau[:r])
        if info != 0:  # pragma: no cover - LAPACK argument error
            raise RuntimeError(f"LAPACK xUNGQR failed with info = {info}")
        Yh = np.empty((r, n), dtype=R.dtype)
        Yh[:, jpvt - 1] = R[:r]
        return (Q, Yh), None
    d = np.abs(np.diag(R)) / total
    for j in range(1, 4):
        if np.count_nonzero(d ** (2 ** j) > eps) <= _LOW_RANK_MAX * n:
            return None, k + j
    return None, k + 4


@functools.lru_cache(maxsize=8)
def _upper_mask(n: int):
    """``triu(ones((n, n)))``, cached: multiplying by it is 4x faster than ``np.triu``."""
    return np.triu(np.ones((n, n)))


def _low_rank_tail(split, R, tri, done, n: int, tpqrt):
    """Finish :func:`_doubling_rt` from ``A_k = X Yh`` by the ``r x r`` Stein equations (see there)."""
    X, Yh = split
    r = X.shape[1]
    small = []
    for i in (0, 1):
        if done[i]:  # converged already: the tail is below round-off
            small.append(R[i][:0, :r])
            continue
        # Z-form: Y^H Z_c and X^H Z_o; carried as their adjoints R Y and R X
        G = R[i] @ np.conj(Yh.T) if i == 0 else R[i] @ X
        small.append(_append_rows(G[:0], False, G, r, tpqrt)[0])
    tail = _doubling_rt(_Dense2D(Yh @ X), small[0], small[1], r, certify=False, first_try=_LOW_RANK_FIRST_TAIL)
    if tail is None:
        return None
    tail = tail[:2]
    out = []
    for i in (0, 1):
        Ri = R[i]
        if not done[i] and tail[i].shape[0]:
            # [Z_c, X L_M] and [Z_o, Y L_N] in R-form: rows L_M^H X^H and L_N^H Y^H
            Ri = _append_rows(Ri, tri[i], tail[i] @ (np.conj(X.T) if i == 0 else Yh), n, tpqrt)[0]
        out.append(Ri)
    # No stability proof to add: _split_verified made it (a power of A with ||.||_F < 1).
    return out[0], out[1]


# Largest eigenvector condition number of a diagonal block for which the modal path is used.
_MODAL_COND_MAX = 1e4


def _modal_factor_pair(sysw: _Dense, blocks: "_BlockDiagonal", B, C, *, real: bool):
    """Factors of a block-diagonal system through its modal form, or None if that is ill-conditioned.

    Each diagonal block is diagonalized, ``A_i = V_i diag(lam_i) V_i^{-1}`` (a batched ``eig``
    of the small blocks); in modal coordinates ``x = V xh`` the Gramians are Cauchy-like,
    ``Ph - Lam Ph Lam^H = Bh Bh^H`` with ``Bh = V^{-1} B``, and their Cholesky factors come from
    the generalized Schur algorithm (:func:`lti_reduce._cauchy.diagonal_stein_factor`) in
    ``O(n^2 m)``. Back in the given coordinates ``Lc = V Lch`` and ``Lo = V^{-H} Loh``; for a
    real system the complex factor is made real by a QR decomposition of ``[Re L, Im L]^T``
    (``P = Re(L L^H) = Re L Re L^T + Im L Im L^T``). The eigenvector matrices enter the
    error with their condition number, so blocks with ``||V_i||_F ||V_i^{-1}||_F > 1e4`` (nearly
    defective ones) or a singular ``V_i`` send the system back to the doubling iteration (None).
    """
    from ._cauchy import _UPFRONT_MAX, diagonal_stein_factor, stein_coefficients

    lam, V, Vinv = [], [], []
    for _, _, Ai in blocks.groups:
        w, Vi = np.linalg.eig(Ai)
        if not np.all(np.isfinite(w)):
            return None
        try:
            Vi_inv = np.linalg.inv(Vi) if Vi.shape[-1] > 1 else 1.0 / Vi
        except np.linalg.LinAlgError:  # a defective block (singular eigenvector matrix)
            return None
        if not np.all(np.isfinite(Vi_inv)):
            return None
        # Frobenius condition number ||V||_F ||V^-1||_F: at least the 2-norm one, at most b times it
        if Vi.shape[-1] > 1 and np.max(np.linalg.norm(Vi, axis=(1, 2)) * np.linalg.norm(Vi_inv, axis=(1, 2))) \
                > _MODAL_COND_MAX:
            return None
        lam.append(w.reshape(-1))
        V.append(Vi)
        Vinv.append(Vi_inv)
    lam = np.concatenate(lam)
    if lam.size and float(np.abs(lam).max()) >= 1.0 - 1e-12:
        raise_unstable(sysw.xp, sysw.A)

    def apply(mats, X, adjoint=False):
        """``blockdiag(mats) @ X`` (``blockdiag(mats)^H @ X`` if ``adjoint``), block by block."""
        out = np.empty(X.shape, dtype=np.result_type(X, np.complex128))
        for (start, stop, _), M in zip(blocks.groups, mats):
            q, b, _ = M.shape
            Xg = X[start:stop].reshape(q, b, -1)
            out[start:stop] = ((np.conj(M.transpose(0, 2, 1)) if adjoint else M) @ Xg).reshape(stop - start, -1)
        return out

    coefs = stein_coefficients(lam) if lam.size <= _UPFRONT_MAX else None
    Lch = diagonal_stein_factor(lam, apply(Vinv, B), coefs)
    if coefs is not None:  # those of conj(lam) are the conjugates
        coefs = (np.conj(coefs[0]), np.conj(coefs[1]))
    Loh = diagonal_stein_factor(np.conj(lam), apply(V, np.conj(C.T), adjoint=True), coefs)
    Lc, Lo = apply(V, Lch), apply(Vinv, Loh, adjoint=True)
    if real:
        pairs = _conjugate_pairs(lam)
        Lc, Lo = _real_factor(Lc, Lch, pairs), _real_factor(Lo, Loh, pairs)
    return Lc, Lo


def _conjugate_pairs(lam):
    """Indices ``j`` of the conjugate pairs, or None.

    ``lam[j + 1] == conj(lam[j])`` and ``Im lam[j] > 0`` for every ``j``, and the pairs cover every
    complex ``lam``; None if ``lam`` is not in that order.

    LAPACK's ``xGEEV`` returns the eigenvalues of a real matrix in this order, with the
    eigenvectors of a pair exact conjugates of each other.
    """
    j = np.flatnonzero(lam.imag > 0)
    if j.size == 0:
        return j
    if j[-1] + 1 >= lam.size or np.count_nonzero(lam.imag < 0) != j.size or np.any(lam[j + 1] != np.conj(lam[j])):
        return None
    return j


# Largest ||Im(L Psi)||_F / ||Re(L Psi)||_F accepted by _real_factor (else the QR route is taken).
_REALIFY_RTOL = 64 * float(np.finfo(np.float64).eps)


def _real_factor(L, Lh, pairs):
    """A real factor of the real Gramian ``L L^H``, from the modal-path factor ``L = V Lh``.

    The QR route, ``R^T`` with ``R = qr([Re L^T; Im L^T])`` (``L L^H = Re L Re L^T + Im L Im L^T``
    for a real Gramian), costs ``O(n^3)``. This one costs ``O(n^2)``: with the eigenvalues of
    every conjugate pair adjacent (``pairs``) and the permutation ``Pi`` that swaps each pair,
    ``conj(V) = V Pi`` and the modal Gramian obeys ``Pi conj(Ph) Pi = Ph``, so ``Pi conj(Lh)``
    is another factor of ``Ph``. It is block lower triangular, hence ``Pi conj(Lh) = Lh Omega``
    with ``Omega`` unitary *and* block diagonal (2 x 2 blocks on the pairs, 1 on real
    eigenvalues), read off the diagonal blocks of ``Lh``: ``Omega_k = Lh_kk^{-1} Pi_0
    conj(Lh_kk)``. ``Omega_k`` is symmetric unitary, and its principal square root ``Psi_k``
    (``Psi_k^2 = Omega_k``, ``Psi_k = Psi_k^T``) makes ``L Psi`` real: ``conj(L Psi) = L Omega
    conj(Psi) = L Psi``. In floating point ``Im(L Psi)`` is round-off; it is measured, and
    anything above ``64 eps ||L||`` (a nearly singular ``Lh_kk``: a nearly uncontrollable
    pair) or any pairing LAPACK did not give (``pairs`` None) takes the QR route.
    """
    if pairs is not None:
        Y = np.array(L)
        if pairs.size:
            j = pairs
            # all pairs evenly spaced by 2 (a modal form of only complex pairs): views, no gathers
            even = j.size > 1 and np.all(np.diff(j) == 2)
            j0, j1 = (slice(j[0], j[-1] + 1, 2), slice(j[0] + 1, j[-1] + 2, 2)) if even else (j, j + 1)
            a, c, d = Lh[j, j], Lh[j + 1, j], Lh[j + 1, j + 1]  # Lh_kk = [[a, 0], [c, d]]
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                # Omega_k = Lh_kk^{-1} [[conj c, conj d], [conj a, 0]]
                w00, w01 = np.conj(c) / a, np.conj(d) / a
                w10, w11 = (np.conj(a) - c * np.conj(c) / a) / d, -c * np.conj(d) / (a * d)
                # principal square root of a 2 x 2 matrix: (Omega + s I) / t, s^2 = det, t^2 = tr + 2 s
                tr, s = w00 + w11, np.sqrt(w00 * w11 - w01 * w10)
                s = np.where(np.abs(tr + 2 * s) >= np.abs(tr - 2 * s), s, -s)
                t = np.sqrt(tr + 2 * s)
                p00, p01, p10, p11 = (w00 + s) / t, w01 / t, w10 / t, (w11 + s) / t
                L0, L1 = L[:, j0], L[:, j1]
                Y[:, j0] = L0 * p00 + L1 * p10
                Y[:, j1] = L0 * p01 + L1 * p11
        re = Y.real
        if np.all(np.isfinite(Y)) and _nrm2(blas.dnrm2, Y.imag) <= _REALIFY_RTOL * _nrm2(blas.dnrm2, re):
            return np.ascontiguousarray(re)
    return np.linalg.qr(np.concatenate([L.real.T, L.imag.T]), mode="r").T


def _small_components(pattern, max_sweeps: int = 8):
    """Connected components of a symmetric sparsity pattern by label propagation, or None.

    Every node takes the smallest label among its neighbours until nothing changes; that
    takes as many sweeps as the longest shortest path inside a component (1 or 2 for the
    1 x 1 and 2 x 2 blocks of a modal form), so after ``max_sweeps`` sweeps it gives up
    (None). Five times faster than building a sparse matrix for ``scipy.sparse.csgraph``.
    """
    rows, cols = np.nonzero(pattern)  # row-major: the neighbours of each node are contiguous
    n = pattern.shape[0]
    labels = np.arange(n)
    starts = np.searchsorted(rows, labels)
    if rows.size == 0 or np.any(np.diff(np.append(starts, rows.size)) == 0):
        # a node without neighbours (a zero row and column): reduceat needs every segment non-empty
        pattern = pattern | np.eye(n, dtype=bool)
        rows, cols = np.nonzero(pattern)
        starts = np.searchsorted(rows, labels)
    for _ in range(max_sweeps):
        new = np.minimum(labels, np.minimum.reduceat(labels[cols], starts))
        if np.array_equal(new, labels):
            return labels
        labels = new
    return None


class _Dense2D:
    """A dense ``(n, n)`` numpy matrix ``M`` with the operations the doubling loop needs."""

    def __init__(self, M):
        self.M = M
        self._norm = None

    def rmul(self, R, adjoint: bool):
        """``R M^H`` (``adjoint``) or ``R M``, Fortran-ordered for ``xTPQRT`` (no copy)."""
        M = self.M
        return (((np.conj(M) if np.iscomplexobj(M) else M) if adjoint else M.T) @ R.T).T

    def square(self):
        return _Dense2D(self.M @ self.M)

    def norm(self) -> float:
        if self._norm is None:  # xNRM2 scales: entries up to the overflow threshold are fine
            self._norm = _nrm2(blas.dznrm2 if np.iscomplexobj(self.M) else blas.dnrm2, self.M)
        return self._norm

    def finite(self) -> bool:
        return bool(np.isfinite(self.norm())) or bool(np.all(np.isfinite(self.M)))

    def unpermute(self, L):
        return L


class _BlockDiagonal(_Dense2D):
    """``P^T M P = blockdiag(M_1, ..., M_q)`` for a permutation ``P``, blocks grouped by size.

    ``perm`` orders the states so that the blocks are contiguous, ascending in size;
    ``groups`` holds ``(start, stop, blocks)`` with ``blocks`` of shape ``(count, b, b)``.
    """

    def __init__(self, perm, groups):
        self.perm, self.groups = perm, groups

    @staticmethod
    def detect(A, max_cost: float = 1 / 8):
        """The block-diagonal form of ``A`` if its blocks cost at most ``max_cost * n^3``; else None."""
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import connected_components

        n = A.shape[0]
        pattern = A != 0
        if n < 8 or np.count_nonzero(pattern) > n * n // 4:
            return None
        pattern |= pattern.T
        labels = _small_components(pattern)
        if labels is None:  # components with a long path: the general algorithm
            labels = connected_components(csr_matrix(pattern), directed=False)[1]
        labels = np.unique(labels, return_inverse=True)[1].reshape(-1)
        count, sizes = int(labels.max()) + 1, np.bincount(labels)
        if count == 1 or float(np.sum(sizes.astype(float) ** 3)) > max_cost * float(n) ** 3:
            return None
        # states ordered by (block size, block label, index): equal-size blocks are contiguous
        perm = np.argsort(sizes[labels] * n + labels, kind="stable")
        groups, start = [], 0
        for b in np.unique(sizes):
            stop = start + int(np.sum(sizes == b)) * int(b)
            idx = perm[start:stop].reshape(-1, b)
            groups.append((start, stop, A[idx[:, :, None], idx[:, None, :]]))
            start = stop
        return _BlockDiagonal(perm, groups)

    def rmul(self, R, adjoint: bool):
        out = np.empty_like(R, dtype=np.result_type(R, self.groups[0][2]))
        k = R.shape[0]
        for start, stop, blocks in self.groups:
            q, b, _ = blocks.shape
            Rg = R[:, start:stop].reshape(k, q, b).transpose(1, 0, 2)  # (q, k, b)
            M = np.conj(blocks.transpose(0, 2, 1)) if adjoint else blocks
            out[:, start:stop] = (Rg @ M).transpose(1, 0, 2).reshape(k, stop - start)
        return out

    def square(self):
        return _BlockDiagonal(self.perm, [(a, z, blocks @ blocks) for a, z, blocks in self.groups])

    def norm(self) -> float:
        return float(np.sqrt(sum(np.sum(np.abs(blocks) ** 2) for _, _, blocks in self.groups)))

    def finite(self) -> bool:
        return all(bool(np.all(np.isfinite(blocks))) for _, _, blocks in self.groups)

    def unpermute(self, L):
        out = np.empty_like(L)
        out[self.perm] = L
        return out


def _double(xp, Ak, Z, n, eps):
    """One doubling step ``Z <- [Z, A_k Z]`` (compressed); returns ``(Z, converged)``."""
    AZ = Ak @ Z
    if not bool(xp.all(xp.isfinite(AZ))):
        return Z, False
    done = _relative_size(xp, AZ, Z) <= eps
    Z = xp.concat([Z, AZ], axis=-1)
    if Z.shape[-1] > n:
        return _compress(xp, Z), done
    return Z, done


def gramian_factors(A, B=None, C=None, *, time=None):
    """Square-root factors of the controllability and observability Gramians.

    Parameters
    ----------
    A : array, shape (..., n, n), or DiagonalSystem
        State matrix, Schur stable (spectral radius < 1). A
        :class:`~lti_reduce.DiagonalSystem` may be given alone: its factors come
        from the closed-form Gramians (Cholesky, or ``eigh`` when semidefinite).
    B : array, shape (..., n, m)
        Input matrix.
    C : array, shape (..., p, n)
        Output matrix.
    time : {None, "discrete", "continuous"}
        ``None``: discrete for arrays, the object's time base for a python-control / scipy
        system object (given alone as ``A``). ``"continuous"``: factors of the Lyapunov
        solutions ``A P + P A^H + B B^H = 0``, ``A^H Q + Q A + C^H C = 0`` for a Hurwitz
        ``A`` (see :mod:`lti_reduce.continuous`).

    Returns
    -------
    Lc : array, shape (..., n, kc)
        Controllability factor, ``P = Lc Lc^H`` with ``P = A P A^H + B B^H``; ``kc <= n``.
    Lo : array, shape (..., n, ko)
        Observability factor, ``Q = Lo Lo^H`` with ``Q = A^H Q A + C^H C``; ``ko <= n``.

    Raises
    ------
    UnstableSystemError
        If ``A`` has spectral radius ``>= 1`` (the message gives it).
    LTIInputError
        On shape mismatch, NaN/Inf or a bad dtype.

    Notes
    -----
    Computed directly by the factored squared-Smith (doubling) iteration (see the
    module docstring), without forming ``P`` or ``Q`` and without regularization,
    so rank-deficient Gramians of non-minimal systems are represented exactly.
    The factors are not unique (any ``L U`` with unitary ``U`` is a factor too).
    Computation runs in float64/complex128; results come back in the input's
    precision, backend and device.

    Examples
    --------
    >>> import numpy as np, lti_reduce as lr
    >>> A = np.array([[0.5, 0.1], [0.0, -0.3]]); B = np.array([[1.0], [1.0]]); C = np.array([[1.0, 0.0]])
    >>> Lc, Lo = lr.gramian_factors(A, B, C)
    >>> P = Lc @ Lc.T
    >>> bool(np.allclose(P, A @ P @ A.T + B @ B.T))
    True
    """
    from . import _dispatch
    from .systems import DiagonalSystem, _diagonal_factors

    if _dispatch.routed(A, time):
        return _dispatch.gramian_factors(A, B, C, time=time, products=False)
    if isinstance(A, DiagonalSystem):
        _no_matrices(B, C)
        return _diagonal_factors(A)
    if B is None or C is None:
        raise TypeError("gramian_factors(A, B, C) needs B and C (or pass a DiagonalSystem as the only argument).")
    sysw = dense_system(A, B, C)
    Lc, Lo = _factor_pair(sysw)
    xp = sysw.xp
    return xp.astype(Lc, sysw.out_dtype), xp.astype(Lo, sysw.out_dtype)


def gramians(A, B=None, C=None, *, time=None):
    """Controllability and observability Gramians.

    Solves the Stein equations

    .. math:: P = A P A^H + B B^H, \\qquad Q = A^H Q A + C^H C

    (discrete time), or with ``time="continuous"`` the Lyapunov equations
    ``A P + P A^H + B B^H = 0``, ``A^H Q + Q A + C^H C = 0``.

    Parameters
    ----------
    A : array, shape (..., n, n), or DiagonalSystem
        State matrix with spectral radius < 1. A :class:`~lti_reduce.DiagonalSystem`
        may be given instead of ``(A, B, C)`` (closed-form Gramians, no solver).
    B : array, shape (..., n, m)
        Input matrix (``m`` inputs).
    C : array, shape (..., p, n)
        Output matrix (``p`` outputs).
    time : {None, "discrete", "continuous"}
        As in :func:`gramian_factors`; ``A`` may be a system object given alone.

    Returns
    -------
    P, Q : arrays, shape (..., n, n)
        Hermitian positive semidefinite Gramians, in the input's backend, device
        and precision.

    Raises
    ------
    UnstableSystemError
        If the spectral radius of ``A`` is ``>= 1``.

    Notes
    -----
    Formed as ``Lc Lc^H`` and ``Lo Lo^H`` from :func:`gramian_factors`, so they are
    exactly Hermitian and semidefinite. Reference: SLICOT ``SB03MD``/``SB03OD``
    (``DICO='D'``) solve the same equations.

    Examples
    --------
    >>> import numpy as np, lti_reduce as lr
    >>> P, Q = lr.gramians(np.array([[0.5]]), np.array([[1.0]]), np.array([[2.0]]))
    >>> round(float(P[0, 0]), 12), round(float(Q[0, 0]), 12)      # 1 / (1 - 0.25), 4 / (1 - 0.25)
    (1.333333333333, 5.333333333333)
    """
    from . import _dispatch
    from .systems import DiagonalSystem, _diagonal_gramians

    if _dispatch.routed(A, time):
        return _dispatch.gramian_factors(A, B, C, time=time, products=True)
    if isinstance(A, DiagonalSystem):
        _no_matrices(B, C)
        return _diagonal_gramians(A)
    if B is None or C is None:
        raise TypeError("gramians(A, B, C) needs B and C (or pass a DiagonalSystem as the only argument).")
    sysw = dense_system(A, B, C)
    Lc, Lo = _factor_pair(sysw)
    xp = sysw.xp
    P, Q = Lc @ be.mH(Lc), Lo @ be.mH(Lo)
    return xp.astype(P, sysw.out_dtype), xp.astype(Q, sysw.out_dtype)


def _no_matrices(*args):
    if any(a is not None for a in args):
        raise TypeError("pass either a DiagonalSystem alone or the matrices (A, B, C), not both.")
