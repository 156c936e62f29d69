"""Independent references for the discrete-time numerics of ``lti_reduce``.

Everything here is computed **without** ``lti_reduce``: SLICOT through ``slycot`` called directly with
``dico='D'`` (and ``dico='C'`` where a continuous-time value is the reference), python-control, scipy and plain
numpy. The tests compare ``lti_reduce`` against these.

Which routine is the reference for what
---------------------------------------
=====================================  ==========================================================
Gramians ``P``, ``Q``                  ``sb03md`` (through ``slycot.sb03md57``), ``control.gram``,
                                       ``scipy.linalg.solve_discrete_lyapunov``
Cholesky factors of the Gramians       ``sb03od``
Hankel singular values, B&T models     ``ab09ad`` (``job='B'`` square-root, ``job='N'`` balancing-free)
singular perturbation approximation    ``ab09nd`` (minimal systems only, see below), and residualization of
                                       a balanced realization built from ``sb03od`` factors
H-infinity norm                        ``ab13dd`` (``dico='D'``), and a dense unit-circle grid
=====================================  ==========================================================

slycot 0.7.1 and integer workspaces (why B is padded with zero columns)
-----------------------------------------------------------------------
slycot 0.7.1's f2py signatures give ``ab09ad``, ``ab09bd``, ``ab09md`` and ``ab09nd`` an integer workspace
``IWORK`` of length ``max(m, p)``, but SLICOT needs ``N`` entries for ``ab09ad(job='N')`` and ``2*N`` for
``ab09nd``. With ``m, p < n`` the routine writes past the buffer: on this machine ``ab09ad(job='N')`` with
``n=60, m=p=1`` corrupts the heap and the interpreter dies with SIGSEGV at exit (found by running it in a
subprocess); ``ab09nd`` did not crash in our trials but writes out of bounds all the same. Running the call in a
subprocess only hides the crash, not the corruption, so we **pad** instead: ``B`` (and ``D``) get zero columns
until ``m >= 2*n``. Zero inputs change neither the Gramians, the Hankel singular values nor the transfer
function of the other inputs; the padding columns are sliced off the results. With padding every call above
ran cleanly in-process. ``ab13dd`` (``IWORK`` of length ``n``), ``sb03md`` and ``sb03od`` are sized correctly.

slycot 0.7.1 ``ab09nd`` with ``job='B'`` and ``dico='D'`` is not a reference
--------------------------------------------------------------------------
In our trials the square-root variant (``job='B'``) of ``ab09nd`` for discrete systems returned reduced models
whose DC gain ``G_r(1)`` differs from ``G(1)`` by O(1) and whose frequency response differs from the singular
perturbation approximation of the balanced realization (residualization at ``z = 1`` of a balanced
realization computed here by the square-root method). The balancing-free variant (``job='N'``) agrees with
that SPA to 1e-13 and matches ``G(1)``; continuous time (``dico='C'``) is fine for both. :func:`spa_ab09nd`
therefore defaults to ``job='N'``.

``job='N'`` is not a reference for *non-minimal* systems either: with one uncontrollable and one
unobservable state (n = 16, minimal order 14) its order-r models missed ``G(1)`` by up to 0.07 and differed by
5e-4 (relative) from the residualization of the balanced minimal realization, which matches ``G(1)`` to
1e-13. :func:`spa_balanced_residualization` is the SPA reference for those: square-root balancing on the
``sb03od`` Cholesky factors, then the residualization formulas at ``z = 1``.

Complex systems
---------------
SLICOT here is real only. A complex system ``(A, B, C, D)`` is handled through its *realification*
``R(X) = [[Re X, -Im X], [Im X, Re X]]`` applied to every matrix. ``R`` is a *-homomorphism
(``R(XY) = R(X) R(Y)``, ``R(X^H) = R(X)^T``), so

* the Gramians of the realified system are ``R(P)`` and ``R(Q)``, from which ``P`` and ``Q`` are read off;
* its Hankel singular values are those of the complex system, each repeated twice;
* its H-infinity norm equals the complex system's (``R(G)`` is unitarily similar to
  ``blkdiag(G(z), conj(G(conj z)))``, and ``z -> conj z`` maps the unit circle onto itself).

``scipy.linalg.solve_discrete_lyapunov`` (complex-capable) is the second, independent Gramian reference.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg

__all__ = [
    "as_numpy",
    "realify",
    "realify_system",
    "spectral_radius",
    "gramians_scipy",
    "gramians_sb03md",
    "gramians_control",
    "gramian_cholesky_factors_sb03od",
    "hsv_ab09ad",
    "balanced_truncation_ab09ad",
    "spa_ab09nd",
    "cross_path_tol",
    "spa_balanced_residualization",
    "hinf_norm_ab13dd",
    "freqresp",
    "hinf_norm_grid",
    "unit_circle_grid",
    "error_system",
    "bilinear_discretization",
]


# --------------------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------------------


def realify(X: np.ndarray) -> np.ndarray:
    """Real representation ``[[Re X, -Im X], [Im X, Re X]]`` of a complex matrix (last two axes)."""
    X = np.asarray(X)
    re, im = X.real, X.imag
    top = np.concatenate([re, -im], axis=-1)
    bottom = np.concatenate([im, re], axis=-1)
    return np.concatenate([top, bottom], axis=-2)


def realify_system(A, B, C, D=None):
    """Realification of every matrix of a (possibly complex) system; real systems are returned unchanged."""
    mats = [np.asarray(X) for X in (A, B, C)] + ([] if D is None else [np.asarray(D)])
    if not any(np.iscomplexobj(X) for X in mats):
        return tuple(np.asarray(X, dtype=float) for X in mats) + ((None,) if D is None else ())
    out = tuple(realify(X.astype(complex)) for X in mats)
    return out + ((None,) if D is None else ())


def _complex_from_realified(XR: np.ndarray) -> np.ndarray:
    """Inverse of :func:`realify` on a matrix that is exactly ``R(X)`` (reads the first block column)."""
    n = XR.shape[-2] // 2
    return XR[..., :n, : XR.shape[-1] // 2] + 1j * XR[..., n:, : XR.shape[-1] // 2]


def as_numpy(x) -> np.ndarray:
    """A numpy view/copy of a numpy array or a torch tensor, for comparisons."""
    if hasattr(x, "detach"):
        return x.detach().cpu().resolve_conj().numpy()
    return np.asarray(x)


def spectral_radius(A) -> float:
    return float(np.max(np.abs(np.linalg.eigvals(np.asarray(A)))))


def _zero_D(B, C):
    return np.zeros((np.shape(C)[-2], np.shape(B)[-1]), dtype=np.result_type(B, C))


def unit_circle_grid(num: int = 512, *, include_dc: bool = True) -> np.ndarray:
    """Frequencies ``w`` in ``[0, 2 pi)`` (radians per sample); ``e^{iw}`` covers the unit circle.

    The full circle is needed for complex systems, whose response at ``w`` and ``-w`` differ.
    """
    w = np.linspace(0.0, 2.0 * np.pi, num, endpoint=False)
    if not include_dc:
        w = w[1:]
    return w


# --------------------------------------------------------------------------------------------------------------
# Gramians
# --------------------------------------------------------------------------------------------------------------


def gramians_scipy(A, B, C):
    """``P = A P A^H + B B^H`` and ``Q = A^H Q A + C^H C`` by scipy's Bartels-Stewart (complex-capable)."""
    A, B, C = (np.asarray(X) for X in (A, B, C))
    P = scipy.linalg.solve_discrete_lyapunov(A, B @ B.conj().T)
    Q = scipy.linalg.solve_discrete_lyapunov(A.conj().T, C.conj().T @ C)
    return P, Q


def _sb03md_real(A, B, C):
    from slycot import sb03md57

    n = A.shape[0]
    # SB03MD, dico='D': op(A)^T X op(A) - X = scale * RHS.
    # trana='T' (op(A) = A^T) gives A X A^T - X = -B B^T, the controllability Gramian.
    _, _, P, scale_p, *_ = sb03md57(A.copy(), np.zeros((n, n)), -(B @ B.T), dico="D", job="X", trana="T")
    # trana='N' gives A^T X A - X = -C^T C, the observability Gramian.
    _, _, Q, scale_q, *_ = sb03md57(A.copy(), np.zeros((n, n)), -(C.T @ C), dico="D", job="X", trana="N")
    return P / scale_p, Q / scale_q


def gramians_sb03md(A, B, C):
    """Discrete Gramians by SLICOT ``SB03MD`` (``dico='D'``); complex systems through their realification."""
    A, B, C = (np.asarray(X) for X in (A, B, C))
    if np.iscomplexobj(A) or np.iscomplexobj(B) or np.iscomplexobj(C):
        AR, BR, CR, _ = realify_system(A, B, C)
        PR, QR = _sb03md_real(AR, BR, CR)
        return _complex_from_realified(PR), _complex_from_realified(QR)
    return _sb03md_real(A.astype(float), B.astype(float), C.astype(float))


def gramians_control(A, B, C):
    """Discrete Gramians by python-control's ``gram`` on ``ss(A, B, C, 0, dt=1)`` (real systems only)."""
    import control

    sys = control.ss(A, B, C, _zero_D(B, C), dt=1)
    with warnings.catch_warnings():
        # control 0.10.2 calls the deprecated slycot.sb03md signature; not our concern here.
        warnings.simplefilter("ignore", DeprecationWarning)
        return control.gram(sys, "c"), control.gram(sys, "o")


def gramian_cholesky_factors_sb03od(A, B, C):
    """Upper-triangular ``Uc, Uo`` with ``P = Uc^T Uc`` and ``Q = Uo^T Uo`` from SLICOT ``SB03OD`` (real only).

    Returned as *left* factors ``Lc = Uc^T``, ``Lo = Uo^T`` (``P = Lc Lc^T``), the convention of ``lti_reduce``.
    """
    from slycot import sb03od

    A, B, C = (np.asarray(X, dtype=float) for X in (A, B, C))
    n = A.shape[0]

    def factor(Aop, rhs_rows):
        # SB03OD, dico='D', trans='N': A_op^T X A_op - X = -scale^2 Bop^T Bop with Bop of shape (k, n).
        # slycot's wrapper fixes B to n-by-n (it is overwritten by the factor), so k <= n: more rows are
        # first compressed by a QR factorization, which keeps Bop^T Bop.
        if rhs_rows.shape[0] > n:
            rhs_rows = np.linalg.qr(rhs_rows, mode="r")
        k = rhs_rows.shape[0]
        Bop = np.zeros((n, n))
        Bop[:k] = rhs_rows
        U, scale, _ = sb03od(n, k, Aop.copy(), np.zeros((n, n)), Bop, "D", fact="N", trans="N")
        return np.triu(U[:n, :n]) / scale

    Uc = factor(A.T, B.T)  # A P A^T - P = -B B^T
    Uo = factor(A, C)  # A^T Q A - Q = -C^T C
    return Uc.T, Uo.T


# --------------------------------------------------------------------------------------------------------------
# Balanced truncation and SPA through AB09AD / AB09ND
# --------------------------------------------------------------------------------------------------------------


def _pad_inputs(B, D=None):
    """Zero input columns so that ``m >= 2 n`` (see the module docstring: slycot's IWORK is ``max(m, p)``)."""
    n, m = B.shape
    extra = max(0, 2 * n - m)
    Bp = np.hstack([B, np.zeros((n, extra))])
    Dp = None if D is None else np.hstack([D, np.zeros((D.shape[0], extra))])
    return Bp, Dp


def hsv_ab09ad(A, B, C, *, dico: str = "D") -> np.ndarray:
    """Hankel singular values (descending) by SLICOT ``AB09AD``; complex systems via the realification.

    For a complex system of order ``n`` the realified one has every HSV twice; every other one is returned.
    """
    A, B, C = (np.asarray(X) for X in (A, B, C))
    complex_system = any(np.iscomplexobj(X) for X in (A, B, C))
    AR, BR, CR, _ = realify_system(A, B, C)
    hsv = _ab09ad(AR, BR, CR, nr=None, job="B", dico=dico)[4]
    return hsv[::2].copy() if complex_system else hsv


def _ab09ad(A, B, C, *, nr, job, dico="D"):
    from slycot import ab09ad

    n, m = B.shape
    p = C.shape[0]
    Bp, _ = _pad_inputs(B)
    with warnings.catch_warnings():
        # iwarn=1 (order above the minimal one, lowered automatically) is expected for non-minimal systems.
        warnings.simplefilter("ignore")
        nr_out, Ar, Br, Cr, hsv = ab09ad(dico, job, "N", n, Bp.shape[1], p, A.copy(), Bp, C.copy(), nr=nr, tol=0.0)
    return nr_out, Ar, Br[:, :m], Cr, hsv


def balanced_truncation_ab09ad(A, B, C, D=None, *, rank: int, job: str = "B"):
    """Reduced model of order ``rank`` by SLICOT ``AB09AD`` (``dico='D'``, ``equil='N'``).

    Real systems only. Returns ``(Ar, Br, Cr, D, hsv)``; ``Ar`` may be of lower order than ``rank`` when the
    system has a minimal realization of lower order (SLICOT caps the order at the numerically minimal one).
    """
    A, B, C = (np.asarray(X, dtype=float) for X in (A, B, C))
    D = _zero_D(B, C) if D is None else np.asarray(D, dtype=float)
    _, Ar, Br, Cr, hsv = _ab09ad(A, B, C, nr=rank, job=job)
    return Ar, Br, Cr, D, hsv


def spa_ab09nd(A, B, C, D=None, *, rank: int, job: str = "N"):
    """Singular perturbation approximation of order ``rank`` by SLICOT ``AB09ND`` (``dico='D'``, ``alpha=1``).

    Real systems only. Returns ``(Ar, Br, Cr, Dr, hsv)``. ``job='B'`` is wrong for discrete systems in
    slycot 0.7.1 (see the module docstring), hence the balancing-free default.
    """
    from slycot import ab09nd

    A, B, C = (np.asarray(X, dtype=float) for X in (A, B, C))
    D = _zero_D(B, C) if D is None else np.asarray(D, dtype=float)
    n, m = B.shape
    p = C.shape[0]
    Bp, Dp = _pad_inputs(B, D)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, Ar, Br, Cr, Dr, _, hsv = ab09nd(
            "D", job, "N", n, Bp.shape[1], p, A.copy(), Bp, C.copy(), Dp, alpha=1.0, nr=rank, tol1=0.0, tol2=0.0
        )
    return Ar, Br[:, :m], Cr, Dr[:, :m], hsv


def spa_balanced_residualization(A, B, C, D=None, *, rank: int, drop_below: float = 1e-10):
    """SPA reference: balance with ``sb03od`` factors, residualize the states ``rank+1 ..`` at ``z = 1``.

    Real systems only. States with HSVs below ``drop_below * sigma_1`` (numerically non-minimal) are truncated
    first, which changes the transfer function by at most ``2 * sum`` of those HSVs. Then, with the balanced
    minimal realization partitioned at ``rank``: ``Ar = A11 + A12 (I - A22)^{-1} A21``,
    ``Br = B1 + A12 (I - A22)^{-1} B2``, ``Cr = C1 + C2 (I - A22)^{-1} A21``, ``Dr = D + C2 (I - A22)^{-1} B2``.
    Returns ``(Ar, Br, Cr, Dr, hsv)``.
    """
    A, B, C = (np.asarray(X, dtype=float) for X in (A, B, C))
    D = _zero_D(B, C) if D is None else np.asarray(D, dtype=float)
    Lc, Lo = gramian_cholesky_factors_sb03od(A, B, C)
    U, hsv, Vh = np.linalg.svd(Lo.T @ Lc)
    k = max(rank, int(np.sum(hsv > drop_below * hsv[0])))
    s = np.sqrt(hsv[:k])
    T = (Lc @ Vh[:k].T) / s  # right projection, Ti @ T = I
    Ti = (Lo @ U[:, :k] / s).T
    Ab, Bb, Cb = Ti @ A @ T, Ti @ B, C @ T
    r = rank
    A11, A12, A21, A22 = Ab[:r, :r], Ab[:r, r:], Ab[r:, :r], Ab[r:, r:]
    X = np.linalg.solve(np.eye(k - r) - A22, np.hstack([A21, Bb[r:]]))
    XA, XB = X[:, :r], X[:, r:]
    return A11 + A12 @ XA, Bb[:r] + A12 @ XB, Cb[:, :r] + Cb[:, r:] @ XA, D + Cb[:, r:] @ XB, hsv


# --------------------------------------------------------------------------------------------------------------
# Norms and frequency responses
# --------------------------------------------------------------------------------------------------------------


def hinf_norm_ab13dd(A, B, C, D=None, *, tol: float = 1e-10) -> float:
    """Discrete H-infinity norm ``sup_w ||G(e^{iw})||_2`` by SLICOT ``AB13DD``; complex systems realified."""
    from slycot import ab13dd

    A, B, C = (np.asarray(X) for X in (A, B, C))
    D = _zero_D(B, C) if D is None else np.asarray(D)
    AR, BR, CR, DR = realify_system(A, B, C, D)
    n = AR.shape[0]
    m = BR.shape[1]
    p = CR.shape[0]
    if n == 0:
        return float(np.linalg.norm(DR, 2))
    gpeak, _ = ab13dd("D", "I", "N", "D", n, m, p, AR.copy(), np.eye(n), BR.copy(), CR.copy(), DR.copy(), tol)
    return float(gpeak)


def freqresp(A, B, C, D=None, omegas=None) -> np.ndarray:
    """``G(e^{iw}) = C (e^{iw} I - A)^{-1} B + D`` at every ``w`` in ``omegas``.

    Batched over leading dimensions of the matrices: returns shape ``(..., len(omegas), p, m)``. A single
    system goes through a complex Schur form ``A = Z T Z^H`` (one O(n^2) triangular solve per frequency), so
    dense grids stay cheap for the n = 270 benchmark models.
    """
    A, B, C = (np.asarray(X) for X in (A, B, C))
    if omegas is None:
        omegas = unit_circle_grid()
    z = np.exp(1j * np.asarray(omegas, dtype=float))
    n = A.shape[-1]
    if A.ndim == 2 and n > 0:
        T, Z = scipy.linalg.schur(A.astype(complex), output="complex")
        ZhB = Z.conj().T @ B
        CZ = C @ Z
        eye = np.eye(n)
        G = np.stack([CZ @ scipy.linalg.solve_triangular(zk * eye - T, ZhB, check_finite=False) for zk in z])
    else:
        # (..., k, n, n) resolvents against (..., 1, n, m) inputs
        zI_minus_A = z[:, None, None] * np.eye(n) - A[..., None, :, :]
        X = np.linalg.solve(zI_minus_A, np.broadcast_to(B[..., None, :, :], zI_minus_A.shape[:-1] + B.shape[-1:]))
        G = C[..., None, :, :] @ X
    if D is not None:
        G = G + np.asarray(D)[..., None, :, :]
    return G


def hinf_norm_grid(A, B, C, D=None, num: int = 2048) -> float:
    """Dense-grid estimate of the H-infinity norm (a lower bound up to rounding) of one system.

    The grid is uniform on the circle and additionally contains the frequencies of the poles
    (``angle(eig(A))``), where lightly damped peaks sit.
    """
    A = np.asarray(A)
    if A.shape[-1] == 0:
        return float(np.linalg.norm(np.asarray(D), 2)) if D is not None else 0.0
    w = np.concatenate([unit_circle_grid(num), np.mod(np.angle(np.linalg.eigvals(A)), 2 * np.pi)])
    G = freqresp(A, B, C, D, w)
    return float(np.max(np.linalg.norm(G, ord=2, axis=(-2, -1))))


def error_system(A1, B1, C1, D1, A2, B2, C2, D2):
    """Realization of ``G1 - G2``: ``blkdiag(A1, A2)``, ``[B1; B2]``, ``[C1, -C2]``, ``D1 - D2``."""
    A1, B1, C1, A2, B2, C2 = (np.asarray(X) for X in (A1, B1, C1, A2, B2, C2))
    n1, n2 = A1.shape[-1], A2.shape[-1]
    dtype = np.result_type(A1, A2, B1, B2, C1, C2)
    A = np.zeros((n1 + n2, n1 + n2), dtype=dtype)
    A[:n1, :n1] = A1
    A[n1:, n1:] = A2
    B = np.concatenate([B1, B2], axis=0)
    C = np.concatenate([C1, -C2], axis=1)
    D1 = _zero_D(B1, C1) if D1 is None else np.asarray(D1)
    D2 = _zero_D(B2, C2) if D2 is None else np.asarray(D2)
    return A, B, C, D1 - D2


# --------------------------------------------------------------------------------------------------------------
# Continuous to discrete
# --------------------------------------------------------------------------------------------------------------


def bilinear_discretization(A, B, C, D, dt: float):
    """Tustin map that keeps the Hankel singular values of the continuous system.

    ``M = (I - dt/2 A)^{-1}``, ``Ad = M (I + dt/2 A)``, ``Bd = sqrt(dt) M B``, ``Cd = sqrt(dt) C M``,
    ``Dd = D + dt/2 C M B``; then ``Gd(z) = Gc(s)`` with ``s = (2/dt)(z - 1)/(z + 1)``.
    """
    A, B, C, D = (np.asarray(X, dtype=float) for X in (A, B, C, D))
    n = A.shape[0]
    eye = np.eye(n)
    lu = scipy.linalg.lu_factor(eye - dt / 2 * A)
    Ad = scipy.linalg.lu_solve(lu, eye + dt / 2 * A)
    MB = scipy.linalg.lu_solve(lu, B)
    CM = scipy.linalg.lu_solve(lu, C.T, trans=1).T
    return Ad, np.sqrt(dt) * MB, np.sqrt(dt) * CM, D + dt / 2 * (C @ MB)


def cross_path_tol(rho: float) -> float:
    """Tolerance for two of our own paths (numpy vs torch, one system vs a batch) on the same system.

    Both are backward stable, so each is off by about ``eps / (1 - rho^2)`` (the conditioning of the
    Stein operator) relative; near the unit circle that exceeds a flat 1e-12 (seen: 1.4e-12 at
    ``rho = 0.9989``, 1.6e-12 at ``rho = 0.996``).
    """
    return max(1e-12, 64 * float(np.finfo(float).eps) / (1.0 - rho ** 2))
