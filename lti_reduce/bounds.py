"""Error bounds and norms: a-priori BT bounds, the H-infinity and Hankel norms.

* A-priori (balanced truncation and SPA, discrete time):
  ``sigma_{r+1} <= ||G - G_r||_inf <= 2 sum_{i>r} sigma_i``
  (see :meth:`BalancedTruncationResult.error_bounds`).
* A-posteriori: :func:`hinf_norm`, ``||G||_inf = sup_{|z|=1} sigma_max(G(z))``.
* :func:`hankel_norm`: ``||G||_H = sigma_1``, the norm of the Hankel operator that
  maps past inputs to future outputs.
"""

from __future__ import annotations

import math

import numpy as np

from . import _backend as be
from .errors import LTIInputError
from .validate import broadcast_batch, dense_system

__all__ = ["hinf_norm", "hankel_norm", "hsv_perturbation_bound", "HSVPerturbation"]


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


def _far_rotation(lam) -> float:
    """An angle ``phi`` that puts ``z = -e^{i phi}`` far from the eigenvalues ``lam`` (0 if ``-1`` is far enough).

    The bilinear map sends ``z = -1`` to ``s = inf`` and inverts ``A + I``: a pole near ``-1``
    becomes a huge, badly resolved continuous pole, and the level-set iteration can then miss
    a peak there. ``||G||_inf`` is the same for ``G(e^{i phi} z)``, so the circle is rotated to
    put the point sent to infinity where the nearest pole is farthest (a grid of 512 angles and
    the midpoints of the gaps between the poles' angles); ``phi = 0`` is kept while ``-1`` is at
    least half as far from the poles as that best point (no complex arithmetic for a real system).
    """
    if lam.size == 0:
        return 0.0
    ang = np.sort(np.angle(lam))
    gaps = 0.5 * (ang + np.roll(ang, -1) + np.where(np.arange(ang.size) == ang.size - 1, 2 * np.pi, 0.0))
    psi = np.concatenate([np.linspace(-np.pi, np.pi, 512, endpoint=False), gaps, [np.pi]])
    dist = np.min(np.abs(np.exp(1j * psi)[:, None] - lam[None, :]), axis=1)
    best = int(np.argmax(dist))
    if dist[-1] >= 0.5 * dist[best]:
        return 0.0
    return float(psi[best] - np.pi)


_MODES_COND = 1e8  # eigenvector condition number up to which the modal screening picks the start
_SEARCH_FULL = 64  # from this order on the modal search refines to rtol itself (see _hinf_single)


def _eig_modes(A):
    """``(lam, V)`` with ``A V = V diag(lam)``, ``V`` None where it is ill-conditioned (``cond(V) > 1e8``)."""
    lam, V = np.linalg.eig(A)
    if V.shape[0] and np.linalg.cond(V) > _MODES_COND:
        return lam, None
    return lam, V


def _modal_start(lam, V, B, C, D, rtol, real: bool):
    """``(value, theta)``: the peak of ``sigma_max(G(e^{i theta}))`` found on the diagonalized system.

    A screening of the circle and the poles' angles (:func:`lti_reduce._peak.search_peak`) at
    ``O(n m p)`` per angle; the caller evaluates the returned angle exactly again, so the
    diagonalization's rounding (``cond(V) eps``) never enters the norm.
    """
    from ._peak import search_peak

    Bm, Cm = np.linalg.solve(V, B), C @ V
    return search_peak(lam, Bm, Cm, D, False, rtol, symmetric=real, return_angle=True)


def _hinf_single(A, B, C, D, rtol, modes=None):
    """Bruinsma-Steinbuch two-step algorithm on the bilinear-transformed system.

    ``modes = (lam, V)`` (an eigendecomposition of ``A``, ``V`` None if ill-conditioned) saves the
    eigenvalue solve when the caller has it. With a well-conditioned ``V`` the starting lower bound
    is the peak of a modal frequency search, evaluated again exactly (one solve), so the first
    level set usually certifies it; otherwise a sweep of 62 exact evaluations and a final local
    polish of the best peaks stand in for it.
    """
    lam, V = _eig_modes(A) if modes is None else modes
    phi = _far_rotation(lam)
    real = not (np.iscomplexobj(A) or np.iscomplexobj(B) or np.iscomplexobj(C) or np.iscomplexobj(D))
    if phi != 0.0:  # G(e^{i phi} z) = C e^{-i phi} (z I - e^{-i phi} A)^{-1} B + D: the same norm
        rot = np.exp(-1j * phi)
        A, C, lam = rot * A, rot * C, rot * lam
        real = False
    Ac, Bc, Cc, Dc = _bilinear_to_continuous(A, B, C, D)
    with np.errstate(divide="ignore", invalid="ignore"):
        poles = (lam - 1.0) / (lam + 1.0)  # the eigenvalues of Ac (lam = -1 is excluded by the rotation)
    if V is not None:
        # Below ~64 states a Hamiltonian eigenvalue solve costs less than the search's refinement rounds:
        # a start within 1e-6 then leaves the last digits to the level sets.
        search_rtol = rtol if A.shape[0] >= _SEARCH_FULL else max(rtol, 1e-6)
        theta = _modal_start(lam, V, B, C, D, search_rtol, real)[1]
        return _hinf_level_set(Ac, Bc, Cc, Dc, rtol, poles, start=_theta_to_w(theta, 1.0))
    return _hinf_level_set(Ac, Bc, Cc, Dc, rtol, poles)


def _theta_to_w(theta: float, scale: float) -> float:
    """The frequency ``w = scale tan(theta / 2)`` of the angle ``theta`` (``inf`` at ``theta = +-pi``)."""
    return float(scale * np.tan(0.5 * theta)) if abs(theta) < np.pi - 1e-12 else np.inf


def _hinf_continuous(A, B, C, D, rtol, lam, V, alpha):
    """The norm on the imaginary axis of a Hurwitz ``(A, B, C, D)`` with ``A = V diag(lam) V^{-1}``.

    The level sets run on ``(A, B, C, D)`` itself. The starting lower bound comes from the modal search on
    the unit circle of the Cayley map ``z = (alpha + s) / (alpha - s)`` (``s = i alpha tan(theta / 2)``),
    formed from the modes without any matrix: ``V^{-1} B_d = sqrt(2 alpha) diag(1/(alpha - lam)) V^{-1} B``,
    ``C_d V = sqrt(2 alpha) C V diag(1/(alpha - lam))``, ``D_d = D + C V diag(1/(alpha - lam)) V^{-1} B``.
    ``V`` None (ill-conditioned): the exact sweep and polish over ``w = alpha tan(theta / 2)``.
    """
    from ._peak import search_peak

    if V is None:
        return _hinf_level_set(A, B, C, D, rtol, lam, w_scale=alpha)
    Bm, Cm = np.linalg.solve(V, B), C @ V
    k = 1.0 / (alpha - lam)
    s = np.sqrt(2.0 * alpha)
    Dd = D + (Cm * k[None, :]) @ Bm
    real = not (np.iscomplexobj(A) or np.iscomplexobj(B) or np.iscomplexobj(C) or np.iscomplexobj(D))
    search_rtol = rtol if A.shape[0] >= _SEARCH_FULL else max(rtol, 1e-6)
    theta = search_peak((alpha + lam) * k, s * k[:, None] * Bm, s * Cm * k[None, :], Dd, False, search_rtol,
                        symmetric=real, return_angle=True)[1]
    return _hinf_level_set(A, B, C, D, rtol, lam, start=_theta_to_w(theta, alpha), w_scale=alpha)


def _hinf_level_set(Ac, Bc, Cc, Dc, rtol, poles, start=None, w_scale=1.0):
    """The level-set iteration on ``(Ac, Bc, Cc, Dc)`` from a lower bound.

    ``start`` is the frequency of a peak found by a search (evaluated here exactly), or None: then an
    exact sweep of ``w = w_scale tan(theta / 2)`` over 62 angles starts it and a local polish ends it.
    """
    m, p = Bc.shape[1], Cc.shape[0]
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
    if start is not None:
        # the search's peak, evaluated exactly (w = inf: the value is D's, already in gamma_lb)
        if np.isfinite(start):
            cands.append(float(start))
        sweep_theta = sweep_vals = np.zeros(0)
    else:
        # A coarse sweep of the unit circle guards the initial lower bound (theta = 2 atan(w / w_scale)).
        sweep_theta = np.linspace(-np.pi, np.pi, 65)[1:-1]
        step = float(sweep_theta[1] - sweep_theta[0])
        sweep_vals = np.array([_sigma_max_c(Ac, Bc, Cc, Dc, w_scale * np.tan(0.5 * th)) for th in sweep_theta])
        i = int(np.argmax(sweep_vals))
        if sweep_vals[i] > gamma_lb:
            gamma_lb, w_peak = float(sweep_vals[i]), float(w_scale * np.tan(0.5 * sweep_theta[i]))
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
        # Generous on-axis test: eigenvalues of H are only accurate to ~eps ||H||, and a
        # false positive merely adds a test frequency, while a miss stops too early.
        # Near a peak two crossings merge into a double eigenvalue, perturbed by
        # ~sqrt(eps ||H||): hence the square-root slack.
        slack = np.maximum(1e-4 * np.abs(ev), np.sqrt(np.finfo(float).eps * np.linalg.norm(H, 1)))
        ws = np.sort(ev[np.abs(ev.real) <= slack].imag)
        if ws.size == 0:
            break
        # Level-set intervals may be unbounded (the peak at z = -1, i.e. w = inf): test
        # beyond the outermost crossings too.
        span = max(1.0, float(np.max(np.abs(ws))))
        mids = np.concatenate([0.5 * (ws[:-1] + ws[1:]), [ws[0] - span, ws[-1] + span]])
        vals = [_sigma_max_c(Ac, Bc, Cc, Dc, w) for w in mids]
        best = int(np.argmax(vals))
        if vals[best] <= gamma:
            # nothing above the tested level: the crossings were rounding (the double eigenvalue of a peak
            # within rtol of gamma_lb, or a generous on-axis test), so the norm is below gamma
            if vals[best] > gamma_lb:
                gamma_lb, w_peak = vals[best], mids[best]
            break
        gamma_lb, w_peak = vals[best], mids[best]
    if start is not None:
        # the modal search screened the whole circle and the poles' angles: it is the safeguard
        return gamma_lb
    # Safeguard for what the level sets resolve poorly (gamma barely above sigma_max(D),
    # where R is nearly singular): polish the best peak and the sweep's local maxima.
    starts = [(2.0 * np.arctan(w_peak / w_scale) if np.isfinite(w_peak) else np.pi, 1e-3)]
    order = np.argsort(sweep_vals)[::-1]
    for i in order[:3]:
        if sweep_vals[i] >= sweep_vals[i - 1] and sweep_vals[i] >= sweep_vals[(i + 1) % len(sweep_vals)]:
            starts.append((sweep_theta[i], step))
    return max([gamma_lb] + [_polish(Ac, Bc, Cc, Dc, th, h, w_scale) for th, h in starts])


def _polish(Ac, Bc, Cc, Dc, theta0, h, w_scale=1.0):
    """Local maximization of sigma_max on ``[theta0 - h, theta0 + h]`` (bounded Brent), ``w = w_scale tan(theta/2)``."""
    from scipy.optimize import minimize_scalar

    d_norm = float(np.linalg.norm(Dc, 2)) if Dc.size else 0.0
    f = lambda th: -_sigma_max_c(Ac, Bc, Cc, Dc, w_scale * np.tan(0.5 * th)) if abs(th) < np.pi else -d_norm  # noqa: E731
    res = minimize_scalar(f, bounds=(theta0 - h, theta0 + h), method="bounded", options={"xatol": 1e-12})
    return float(-res.fun)


def _check_rtol(rtol) -> float:
    if isinstance(rtol, (bool, np.bool_)) or not isinstance(rtol, (int, float, np.integer, np.floating)) \
            or not 0.0 < float(rtol) < 1.0:
        raise LTIInputError(f"rtol must be a float strictly between 0 and 1 (the relative accuracy of the norm, "
                            f"e.g. 1e-10), got {rtol!r} of type {type(rtol).__name__}.")
    return float(rtol)


def _hinf_scaled(A, B, C, D, rtol, solver=None, modes=None) -> float:
    """:func:`_hinf_single` on ``(A, B 2^-eb, C 2^-ec', D 2^-e)``, times ``2^e`` (exact power-of-two scaling).

    ``||G||_inf`` is homogeneous in ``(B, C, D)``: ``e = max(eb + ec, ed)`` puts every entry of the scaled
    ``B``, ``C``, ``D`` at most 1 (``ec' = e - eb``), so the level-set iteration, which squares ``gamma``,
    never overflows or underflows, whatever the scale of the system (norms up to the float64 maximum).
    With ``m = 0`` inputs or ``p = 0`` outputs ``G`` is the empty matrix, of norm 0. ``solver(A, B, C, D, rtol)``
    replaces :func:`_hinf_single` (``A`` is then whatever that solver takes, e.g. a diagonal's eigenvalues).
    """
    from .validate import power_of_two_exponent

    if B.shape[1] == 0 or C.shape[0] == 0:
        return 0.0
    eb, ec, ed = (power_of_two_exponent(np, X) for X in (B, C, D))
    if eb is None or ec is None:  # G(z) = D
        return float(np.linalg.norm(D, 2)) if ed is not None else 0.0
    e = eb + ec if ed is None else max(eb + ec, ed)
    with np.errstate(under="ignore"):
        Bs, Cs, Ds = np.ldexp(B.real, -eb), np.ldexp(C.real, -(e - eb)), np.ldexp(D.real, -e)
        if np.iscomplexobj(B):
            Bs = Bs + 1j * np.ldexp(B.imag, -eb)
        if np.iscomplexobj(C):
            Cs = Cs + 1j * np.ldexp(C.imag, -(e - eb))
        if np.iscomplexobj(D):
            Ds = Ds + 1j * np.ldexp(D.imag, -e)
    g = solver(A, Bs, Cs, Ds, rtol) if solver is not None else _hinf_single(A, Bs, Cs, Ds, rtol, modes=modes)
    if g > 0.0 and math.frexp(g)[1] + e > 1024:
        raise LTIInputError(f"the H-infinity norm exceeds the float64 range ({g!r} * 2^{e}); scale B, C and D "
                            "down (the norm is homogeneous in them).")
    return float(np.ldexp(g, e))


def hinf_norm(A, B=None, C=None, D=None, *, rtol: float = 1e-10, time=None, method: str = "level-set"):
    """H-infinity norm of a stable system.

    .. math:: \\|G\\|_{\\mathcal{H}_\\infty} = \\sup_{\\theta \\in [0, 2\\pi)} \\sigma_{\\max}\\big(C (e^{i\\theta} I - A)^{-1} B + D\\big)

    in discrete time, ``sup_w sigma_max(C (i w I - A)^{-1} B + D)`` with ``time="continuous"``.

    Parameters
    ----------
    A : array, shape (..., n, n), DiagonalSystem, or system object
        Stable state matrix (discrete time: spectral radius below 1; continuous time: every
        eigenvalue in the open left half plane), or a system given alone (see ``time``).
    B : array, shape (..., n, m)
        Input matrix (``m`` inputs).
    C : array, shape (..., p, n)
        Output matrix (``p`` outputs).
    D : array, shape (..., p, m), optional
        Feedthrough; zero if omitted.
    rtol : float in (0, 1)
        Relative accuracy of the returned value.
    time : {None, "discrete", "continuous"}
        ``None``: discrete for arrays, the object's time base for a python-control / scipy
        system object (given alone as ``A``; the norm is then a float). ``"continuous"``:
        the norm on the imaginary axis of a Hurwitz system, computed on its Cayley map
        (same norm, see :mod:`lti_reduce.continuous`).
    method : {"level-set", "search"}
        ``"level-set"`` (default): the norm to ``rtol``, guaranteed (see Notes); ``O(n^3)`` per
        iteration. ``"search"``: the largest ``sigma_max`` found by a frequency search, a *lower
        bound* on the norm that equals it to ``rtol`` whenever the global peak is among the
        polished local maxima (see Notes); ``O(T n m p)`` on a :class:`~lti_reduce.DiagonalSystem`
        with ``T`` a few hundred angles, tens to hundreds of times faster than ``"level-set"`` at
        ``n`` in the hundreds. A dense system is diagonalized first (the level set is used
        where its eigenvectors are ill-conditioned, ``cond(V) > 1e8``).

    Returns
    -------
    array, shape (...), or float
        The norm per system, real, in the input's backend and device (a float for a
        python-control / scipy system object); 0 for a system with no inputs (``m = 0``) or no
        outputs (``p = 0``); ``||D||_2`` for a static gain (``n = 0``, ``A`` of shape ``(..., 0, 0)``).

    Raises
    ------
    UnstableSystemError
        If ``A`` has spectral radius ``>= 1 - 1e-12`` (continuous time: an eigenvalue with
        ``Re >= 0``); the norm of an unstable system is not finite.
    LTIInputError
        Shape mismatch, NaN/Inf, an empty batch, ``rtol`` not a number in ``(0, 1)``
        (``0``, negative, NaN, a string), or a norm beyond the float64 range.

    Notes
    -----
    The bilinear map ``z = (1 + s) / (1 - s)`` turns the system into a continuous
    one with the same norm; the norm is then found by the quadratically convergent
    level-set algorithm of Bruinsma & Steinbuch (Systems & Control Letters 14, 1990):
    imaginary eigenvalues of a Hamiltonian matrix mark the frequencies where
    ``sigma_max = gamma``. A pole near ``z = -1`` (sent to ``s = inf``) would be badly
    resolved, so the circle is first rotated, ``G(e^{i phi} z)`` (same norm), to send the
    point farthest from the poles to infinity instead. ``B``, ``C`` and ``D`` are first scaled by powers of two
    (exact; the norm is homogeneous in them), so any scale works, from subnormal to ``1e308``. This is an
    a-posteriori check, so it runs in float64 on the host (torch inputs are copied there). Reference: SLICOT ``AB13DD`` (``DICO='D'``).
    A :class:`~lti_reduce.DiagonalSystem` may be given alone instead of the matrices.

    ``method="search"`` screens ``sigma_max(G(e^{i theta}))`` at 128 angles of the circle (65 of
    ``[0, pi]`` for a real map, where ``sigma_max`` is even in ``theta``) and at the angles of up to 64
    poles whose resonance ``|c_k| |b_k| / (1 - |lambda_k|)`` is largest among those narrower than the
    grid, evaluates the 16 largest local maxima exactly, and refines the four largest (those above half
    the best) on brackets as wide as their neighbours or their pole's resonance, by rounds of 9 samples
    each and a final parabolic step. Every value is a Rayleigh quotient or an eigenvalue of
    ``G^H G``, so the result is never above the norm (up to the rounding of the response, which
    matters only for norms near round-off); it is below it only if a peak falls outside every
    refined bracket (a narrow resonance of a pole left out of the 64, or resonances adding up between
    samples). :func:`adapters.torch.compress_` uses it for the per-layer ``gain`` and ``error``; the tests
    compare it with SLICOT ``AB13DD`` on trained and random layers (agreement to 1e-7 relative or better).

    Examples
    --------
    >>> import numpy as np, lti_reduce as lr
    >>> round(float(lr.hinf_norm(np.array([[0.5]]), np.array([[1.0]]), np.array([[1.0]]))), 10)  # G(1) = 2
    2.0
    >>> sys = lr.DiagonalSystem(np.array([0.9 + 0.3j]), np.array([[1.0]]), np.array([[1.0]]), real_output=True)
    >>> g_search, g_level = lr.hinf_norm(sys, method="search"), lr.hinf_norm(sys)
    >>> bool(abs(g_search - g_level) <= 1e-9 * g_level)
    True
    """
    from . import _dispatch
    from .systems import DiagonalSystem, _as_dense

    if method not in ("level-set", "search"):
        raise LTIInputError(f"method must be 'level-set' (the norm, guaranteed) or 'search' (a fast lower "
                            f"bound by frequency search), got {method!r}.")
    static = _static_gain_norm(A, B, C, D)
    if static is not None:
        return static
    if _dispatch.routed(A, time):
        return _dispatch.hinf_norm(A, B, C, D, time=time, rtol=rtol, method=method)
    if isinstance(A, DiagonalSystem):
        from .gramians import _no_matrices

        _no_matrices(B, C, D)
        if method == "search":
            return _hinf_diagonal_search(A, _check_rtol(rtol))
        A, B, C, D = _as_dense(A)
    if B is None or C is None:
        raise TypeError("hinf_norm(A, B, C[, D]) needs B and C (or pass a DiagonalSystem as the only argument).")
    rtol = _check_rtol(rtol)
    sysw = dense_system(A, B, C, D, check_stability=method != "level-set")
    count = be.batch_size(sysw.batch_shape)
    As, Bs, Cs, Ds = (be.to_numpy(M).reshape((count,) + tuple(M.shape[-2:])) for M in (sysw.A, sysw.B, sysw.C, sysw.D))
    if method == "level-set":
        out = np.array(_hinf_level_set_batch(sysw, As, Bs, Cs, Ds, rtol)).reshape(sysw.batch_shape)
    else:
        out = np.array([_hinf_dense_search(a, b, c, d, rtol)
                        for a, b, c, d in zip(As, Bs, Cs, Ds)]).reshape(sysw.batch_shape)
    xp = sysw.xp
    res = be.from_numpy_like(out, sysw.like)
    return xp.astype(res, be.real_dtype(xp, sysw.out_dtype))


def _hinf_diagonal_search(sys, rtol):
    """``hinf_norm(sys, method="search")`` of a (batched) :class:`~lti_reduce.DiagonalSystem`."""
    from ._peak import search_peak

    xp = be.namespace(sys.lam, sys.B, sys.C)
    batch = tuple(sys.batch_shape)
    count = be.batch_size(batch)
    n, m, p = sys.n, int(sys.B.shape[-1]), int(sys.C.shape[-2])
    shapes = {"lam": (n,), "B": (n, m), "C": (p, n), "D": (p, m)}
    arr = {}
    for name, shape in shapes.items():
        x = getattr(sys, name)
        x = np.zeros(shape) if x is None else be.to_numpy(x)
        arr[name] = np.broadcast_to(x, batch + shape).reshape((count,) + shape)
    dt = np.float64 if not np.iscomplexobj(arr["D"]) else np.complex128
    real_output = sys.real_output
    solver = lambda lam, B, C, D, rt: search_peak(lam, B, C, D, real_output, rt)  # noqa: E731
    out = np.array([_hinf_scaled(arr["lam"][k], arr["B"][k], arr["C"][k], arr["D"][k].astype(dt), rtol, solver=solver)
                    for k in range(count)]).reshape(batch)
    like = sys.lam
    res = be.from_numpy_like(out, like)
    return xp.astype(res, be.real_dtype(xp, be.result_dtype(xp, sys.lam, sys.B, sys.C, sys.D)))


def _hinf_level_set_batch(sysw, As, Bs, Cs, Ds, rtol):
    """The level-set norm of every system; one eigendecomposition each serves the stability check too."""
    from .validate import MAX_SPECTRAL_RADIUS, raise_unstable

    modes = [_eig_modes(a) for a in As]
    if any(lam.size and float(np.max(np.abs(lam))) >= MAX_SPECTRAL_RADIUS for lam, _ in modes):
        raise_unstable(sysw.xp, sysw.A)
    return [_hinf_scaled(a, b, c, d, rtol, modes=md) for a, b, c, d, md in zip(As, Bs, Cs, Ds, modes)]


def _hinf_dense_search(A, B, C, D, rtol):
    """``method="search"`` on one dense system: diagonalized, or the level set where that is ill-conditioned."""
    from ._peak import dense_modes, search_peak

    if B.shape[1] == 0 or C.shape[0] == 0:
        return 0.0
    modes = dense_modes(A, B, C)
    if modes is None:
        return _hinf_scaled(A, B, C, D, rtol)
    lam, Bm, Cm = modes
    real = not (np.iscomplexobj(A) or np.iscomplexobj(B) or np.iscomplexobj(C) or np.iscomplexobj(D))
    solver = lambda lam_, B_, C_, D_, rt: search_peak(lam_, B_, C_, D_, False, rt, symmetric=real)  # noqa: E731
    return _hinf_scaled(lam, Bm, Cm, D, rtol, solver=solver)


def _static_gain_norm(A, B, C, D):
    """``||D||_2`` per system for a model without states (``A`` of shape ``(..., 0, 0)``), else None."""
    shape = getattr(A, "shape", None)
    if shape is None or len(shape) < 2 or int(shape[-1]) != 0 or int(shape[-2]) != 0 or B is None or C is None:
        return None
    from .validate import check_finite, check_matrix

    Bm, Cm = check_matrix(B, "B"), check_matrix(C, "C")
    m, p = int(Bm.shape[-1]), int(Cm.shape[-2])
    if D is None:
        Dn = np.zeros(tuple(int(d) for d in shape[:-2]) + (p, m))
        like = Bm
    else:
        Dm = check_matrix(D, "D")
        if (int(Dm.shape[-2]), int(Dm.shape[-1])) != (p, m):
            raise LTIInputError(f"D must have shape (..., p, m) = (..., {p}, {m}) to match B and C, got "
                                f"{tuple(int(d) for d in Dm.shape)}.")
        check_finite(be.namespace(Dm), Dm, "D")
        Dn, like = be.to_numpy(Dm), Dm
    out = np.linalg.norm(Dn, 2, axis=(-2, -1)) if p and m else np.zeros(Dn.shape[:-2])
    if be.is_numpy(like):
        return out
    xp = be.namespace(like)
    return xp.astype(be.from_numpy_like(np.asarray(out, dtype=np.float64), like), be.real_dtype(xp, like.dtype))


def hankel_norm(A, B=None, C=None, D=None, *, time=None):
    """Hankel norm ``||G||_H = sigma_1``, the largest Hankel singular value.

    Parameters
    ----------
    A : array, shape (..., n, n), DiagonalSystem, or system object
        Stable state matrix, or a :class:`~lti_reduce.DiagonalSystem` or a python-control /
        scipy system object given alone.
    B : array, shape (..., n, m)
        Input matrix.
    C : array, shape (..., p, n)
        Output matrix.
    D : array, shape (..., p, m), optional
        Checked and ignored: the Hankel norm does not depend on the feedthrough. Accepted so that
        the arguments of a :func:`balanced_truncation` call can be passed unchanged.
    time : {None, "discrete", "continuous"}
        As in :func:`~lti_reduce.balanced_truncation`.

    Returns
    -------
    array, shape (...)
        ``sigma_1`` per system; ``sigma_1 <= ||G - D||_inf``.
    """
    from .balancing import hankel_singular_values

    return hankel_singular_values(A, B, C, D, time=time)[..., 0]


class HSVPerturbation:
    """Weyl certificate for the Hankel singular values of two systems.

    Attributes
    ----------
    bound : array, shape (...)
        ``sigma_1(G1 - G2)``, the Hankel norm of the difference; every HSV moves by at
        most this much: ``|sigma_i(G1) - sigma_i(G2)| <= bound`` for all ``i``.
    hsv1, hsv2 : arrays, shape (..., N)
        HSVs of both systems, zero-padded to a common length ``N``.
    max_change : array, shape (...)
        The observed ``max_i |sigma_i(G1) - sigma_i(G2)|`` (never above ``bound``).
    rank : int or None
        The order whose ranking is checked.
    gap : array, shape (...) or None
        ``sigma_r(G1) - sigma_{r+1}(G1)``.
    certified : array of bool, shape (...) or None
        ``gap > 2 * bound``: the ``r`` leading HSVs of ``G2`` are the images of those of
        ``G1``, so the order-``r`` cut keeps "the same" dominant states.
    """

    def __init__(self, bound, hsv1, hsv2, rank):
        xp = be.namespace(hsv1)
        self.bound, self.hsv1, self.hsv2, self.rank = bound, hsv1, hsv2, rank
        self.max_change = xp.max(xp.abs(hsv1 - hsv2), axis=-1)
        if rank is None:
            self.gap = self.certified = None
        else:
            self.gap = hsv1[..., rank - 1] - hsv1[..., rank]
            self.certified = self.gap > 2.0 * bound

    def __repr__(self) -> str:
        b = be.to_numpy(self.bound)
        cert = "" if self.certified is None else f", certified={be.to_numpy(self.certified).tolist()}"
        return f"HSVPerturbation(bound={b.tolist()}, max_change={be.to_numpy(self.max_change).tolist()}{cert})"


def _difference_system(sys1, sys2):
    """``G1 - G2`` as one system (diagonal if both are, else dense block-diagonal)."""
    from .systems import DiagonalSystem, _as_dense

    if isinstance(sys1, DiagonalSystem) and isinstance(sys2, DiagonalSystem):
        if sys1.real_output != sys2.real_output:
            raise LTIInputError("compare two DiagonalSystems with the same real_output setting.")
        xp = be.namespace(sys1.lam, sys2.lam)
        batch = broadcast_batch([sys1.batch_shape, sys2.batch_shape], ["system1", "system2"])
        bc = lambda x, tail: xp.broadcast_to(x, batch + tail)  # noqa: E731
        lam = xp.concat([bc(sys1.lam, (sys1.n,)), bc(sys2.lam, (sys2.n,))], axis=-1)
        _io_match(sys1.B.shape[-1], sys2.B.shape[-1], sys1.C.shape[-2], sys2.C.shape[-2])
        dt = be.result_dtype(xp, sys1.B, sys2.B, sys1.C, sys2.C)
        B = xp.concat([bc(xp.astype(sys1.B, dt), tuple(sys1.B.shape[-2:])), bc(xp.astype(sys2.B, dt), tuple(sys2.B.shape[-2:]))], axis=-2)
        C = xp.concat([bc(xp.astype(sys1.C, dt), tuple(sys1.C.shape[-2:])), -bc(xp.astype(sys2.C, dt), tuple(sys2.C.shape[-2:]))], axis=-1)
        return (DiagonalSystem(lam, B, C, real_output=sys1.real_output),)
    mats = []
    for s in (sys1, sys2):
        mats.append(_as_dense(s)[:3] if isinstance(s, DiagonalSystem) else tuple(s)[:3])
    (A1, B1, C1), (A2, B2, C2) = mats
    w1, w2 = dense_system(A1, B1, C1), dense_system(A2, B2, C2)
    xp = w1.xp
    _io_match(B1.shape[-1], B2.shape[-1], C1.shape[-2], C2.shape[-2])
    batch = broadcast_batch([w1.batch_shape, w2.batch_shape], ["system1", "system2"])
    n1, n2 = w1.n, w2.n
    bc = lambda x: xp.broadcast_to(x, batch + tuple(x.shape[-2:]))  # noqa: E731
    dev = w1.A.device if be.is_torch(w1.A) else None
    dt = w1.A.dtype if be.is_complex(xp, w1.A) else w2.A.dtype
    z12 = xp.zeros(batch + (n1, n2), dtype=dt, device=dev)
    A = xp.concat([xp.concat([bc(xp.astype(w1.A, dt)), z12], axis=-1),
                   xp.concat([z12.mT, bc(xp.astype(w2.A, dt))], axis=-1)], axis=-2)
    dtb = be.working_dtype(xp, w1.B, w2.B, w1.C, w2.C, w1.A, w2.A)
    B = xp.concat([bc(xp.astype(w1.B, dtb)), bc(xp.astype(w2.B, dtb))], axis=-2)
    C = xp.concat([bc(xp.astype(w1.C, dtb)), -bc(xp.astype(w2.C, dtb))], axis=-1)
    return (A, B, C)


def _io_match(m1, m2, p1, p2):
    if (int(m1), int(p1)) != (int(m2), int(p2)):
        raise LTIInputError(f"the two systems must have the same inputs and outputs: (m, p) = ({int(m1)}, {int(p1)}) "
                            f"vs ({int(m2)}, {int(p2)}).")


def hsv_perturbation_bound(system1, system2, *, rank=None):
    """How far the Hankel singular values can move between two systems (Weyl).

    For the Hankel operators of two stable systems, Weyl's inequality for singular
    values gives

    .. math:: |\\sigma_i(G_1) - \\sigma_i(G_2)| \\le \\|\\mathcal H_{G_1} - \\mathcal H_{G_2}\\| = \\sigma_1(G_1 - G_2),

    the Hankel norm of the difference system ``(blkdiag(A1, A2), [B1; B2], [C1, -C2])``.
    If the gap ``sigma_r(G1) - sigma_{r+1}(G1)`` exceeds twice that norm, no HSV can
    cross the cut: the order-``r`` ranking is *certified stable* between the two.

    Parameters
    ----------
    system1, system2 : DiagonalSystem, tuple (A, B, C[, D]), or system object
        Two systems with the same inputs and outputs (e.g. a layer before and after
        some training steps); orders may differ. ``D`` does not enter Hankel operators.
        python-control / scipy system objects are taken with their time base (both must
        have the same); tuples are discrete time.
    rank : int, optional
        The cut to certify (``1 <= rank < N``).

    Returns
    -------
    HSVPerturbation
        ``bound``, ``hsv1``, ``hsv2``, ``max_change`` and, with ``rank``, ``gap`` and
        ``certified``.

    Notes
    -----
    The certificate bounds a *change that happened* between two known systems; it
    does not predict how HSVs evolve under future training steps. Two diagonal
    systems use the closed-form path (accurate to ``O(order * eps) * sigma_1`` for numpy inputs).

    Examples
    --------
    >>> import numpy as np, lti_reduce as lr
    >>> s1 = lr.DiagonalSystem(np.array([0.9, 0.2]), np.ones((2, 1)), np.ones((1, 2)))
    >>> s2 = lr.DiagonalSystem(np.array([0.9, 0.21]), np.ones((2, 1)), np.ones((1, 2)))
    >>> cert = lr.hsv_perturbation_bound(s1, s2, rank=1)
    >>> bool(cert.max_change <= cert.bound), bool(cert.certified)
    (True, True)
    """
    from .balancing import hankel_singular_values
    from .interop import is_system_object, unwrap

    times = []
    converted = []
    for s in (system1, system2):
        if is_system_object(s):
            w = unwrap(s)
            s, t = (w.A, w.B, w.C), w.time
        elif isinstance(s, (tuple, list)):
            s, t = tuple(s), "discrete"
        elif type(s).__name__ == "DiagonalSystem":
            t = "discrete"
        else:
            raise LTIInputError(f"system1 and system2 must each be a DiagonalSystem, a tuple (A, B, C[, D]) or a "
                                f"python-control / scipy system object, got {type(s).__name__}.")
        converted.append(s)
        times.append(t)
    if times[0] != times[1]:
        raise LTIInputError(f"the two systems have different time bases ({times[0]} and {times[1]}); compare two "
                            "discrete-time or two continuous-time systems.")
    system1, system2 = converted
    time = None if times[0] == "discrete" else "continuous"
    diff = _difference_system(system1, system2)
    bound = hankel_singular_values(*diff, time=time)[..., 0]
    hsv = []
    for s in (system1, system2):
        hsv.append(hankel_singular_values(s) if not isinstance(s, tuple) else
                   hankel_singular_values(*s[:3], time=time))
    xp = be.namespace(hsv[0])
    N = max(int(h.shape[-1]) for h in hsv)
    padded = []
    for h in hsv:
        k = int(h.shape[-1])
        if k < N:
            h = xp.concat([h, xp.zeros(tuple(h.shape[:-1]) + (N - k,), dtype=h.dtype,
                                       device=h.device if be.is_torch(h) else None)], axis=-1)
        padded.append(h)
    batch = broadcast_batch([padded[0].shape[:-1], padded[1].shape[:-1]], ["system1", "system2"])
    h1, h2 = (xp.broadcast_to(h, batch + (N,)) for h in padded)
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= int(rank) < N:
            raise LTIInputError(f"rank must be an integer in 1..{N - 1} (a cut with states on both sides), got {rank!r}.")
        rank = int(rank)
    return HSVPerturbation(xp.astype(bound, h1.dtype), h1, h2, rank)
