"""Continuous-time Gramians, balanced truncation and norms, through a Gramian-preserving Cayley map.

For a Hurwitz-stable ``A`` (every eigenvalue has ``Re(lambda) < 0``) the continuous Gramians solve
the Lyapunov equations

.. math:: A P + P A^H + B B^H = 0, \\qquad A^H Q + Q A + C^H C = 0 .

For any ``alpha > 0`` the Cayley (bilinear) map

.. math::

    A_d = (\\alpha I + A)(\\alpha I - A)^{-1}, \\quad B_d = \\sqrt{2\\alpha}\\,(\\alpha I - A)^{-1} B, \\quad
    C_d = \\sqrt{2\\alpha}\\, C (\\alpha I - A)^{-1}, \\quad D_d = D + C(\\alpha I - A)^{-1} B

gives a Schur-stable discrete system whose Stein-equation Gramians ``P = A_d P A_d^H + B_d B_d^H``,
``Q = A_d^H Q A_d + C_d^H C_d`` are **equal** to the continuous ``P`` and ``Q`` (multiply the
Lyapunov equation by ``(alpha I - A)^{-1}`` on both sides), and ``G_d(z) = G(s)`` with
``s = alpha (z - 1) / (z + 1)``, which maps the unit circle onto the imaginary axis: the same
Hankel singular values and the same H-infinity norm. So the discrete machinery (the factored
doubling iteration of :mod:`lti_reduce.gramians`, the norm of :mod:`lti_reduce.bounds`) computes
the Gramian factors, HSVs and norm, and the square-root projections ``W``, ``V`` from those
factors are then applied to the continuous ``(A, B, C)``. Truncation does not commute with the
map, so the discrete model is never truncated and mapped back.

Choice of ``alpha``. A pole ``lambda = -d + i w`` maps to ``|z|^2 = ((alpha - d)^2 + w^2) /
((alpha + d)^2 + w^2)``; the doubling iteration needs ``~log2(log(eps) / log |z|)`` steps, so
``alpha`` should keep every ``|z|`` away from 1. For real poles in ``[d_min, d_max]`` the
geometric mean ``alpha = sqrt(d_min d_max)`` maximizes the smallest gap ``1 - |z|^2 = 4 alpha d /
(alpha + d)^2``; lightly damped poles are best served by ``alpha ~ |lambda|``. We take
``alpha = sqrt(min |lambda_i| * max |lambda_i|)`` per system, which also places the band of poles
symmetrically around ``z = i``. Since ``Re(lambda) < 0 < alpha``, ``|alpha - lambda| > alpha``:
``alpha I - A`` is never near-singular for a diagonalizable ``A``.

SPA in continuous time (Liu & Anderson, Int. J. Control 50 (1989); SLICOT ``AB09ND``,
``DICO='C'``) residualizes at ``s = 0``:
``A_r = A_11 - A_12 A_22^{-1} A_21``, ``B_r = B_1 - A_12 A_22^{-1} B_2``,
``C_r = C_1 - C_2 A_22^{-1} A_21``, ``D_r = D - C_2 A_22^{-1} B_2``, which matches ``G(0)``.
The bounds ``sigma_{r+1} <= ||G - G_r||_inf <= 2 sum_{i>r} sigma_i`` hold as in discrete time
(Enns 1984; Glover, Int. J. Control 39 (1984)). References: Moore, IEEE TAC 26 (1981);
Laub, Heath, Paige & Ward, IEEE TAC 32 (1987) (square root); SLICOT ``AB09AD``/``SB03MD``/``AB13DD``
with ``DICO='C'``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import _backend as be
from .errors import LTIInputError, UnstableSystemError
from .validate import SPLIT_ADVICE, _Dense

__all__: list[str] = []


def _device(x):
    return x.device if be.is_torch(x) else None


def cayley_alpha(sysw: _Dense):
    """``alpha = sqrt(min |lambda| max |lambda|)`` per system, shape ``(...)``; raises if ``A`` is not Hurwitz.

    The eigenvalues are computed anyway for the choice of ``alpha``, so the stability test comes free.
    """
    xp, A = sysw.xp, sysw.A
    lam = xp.linalg.eigvals(A)
    re = be.to_numpy(xp.real(lam))
    mag = np.abs(be.to_numpy(lam))
    worst = re.max(axis=-1)
    if not np.all(worst < 0):
        raise_not_hurwitz(re, mag)
    alpha = np.sqrt(mag.min(axis=-1) * mag.max(axis=-1))
    return alpha


def raise_not_hurwitz(re, mag, detail: str = ""):
    worst = re.max(axis=-1)
    where = ""
    if np.ndim(worst) > 0 and np.size(worst) > 1:
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(worst)), np.shape(worst)))
        where = f" (batch element {idx})"
    raise UnstableSystemError(
        f"A is not Hurwitz stable: the largest real part of its eigenvalues is {float(np.max(worst)):.15g}{where}, "
        f"not < 0; continuous-time Gramians and H-infinity norms exist only when every eigenvalue has a negative real part. {detail}"
        f"Check the model (or its sign convention). To reduce a model with unstable poles, {SPLIT_ADVICE}")


def cayley(sysw: _Dense, alpha=None) -> tuple[_Dense, np.ndarray]:
    """The discrete system with the same Gramians (module docstring), and the ``alpha`` used.

    Parameters
    ----------
    sysw : validated continuous system, matrices ``(..., n, n)``, ``(..., n, m)``, ``(..., p, n)``, ``(..., p, m)``
    alpha : array, shape (...), optional
        Defaults to :func:`cayley_alpha`.
    """
    xp, A, B, C, D = sysw.xp, sysw.A, sysw.B, sysw.C, sysw.D
    if alpha is None:
        alpha = cayley_alpha(sysw)
    n = sysw.n
    rdt = be.real_dtype(xp, A.dtype)
    a = xp.asarray(np.asarray(alpha, dtype=np.float64), device=_device(A))
    a = xp.astype(a, rdt)[..., None, None]
    eye = xp.eye(n, dtype=A.dtype, device=_device(A))
    M = a * eye - A
    X = xp.linalg.solve(M, xp.concat([a * eye + A, B], axis=-1))
    Ad, MB = X[..., :, :n], X[..., :, n:]
    # C M^{-1} = (M^{-T} C^T)^T (plain transposes: no conjugation)
    CM = xp.matrix_transpose(xp.linalg.solve(xp.matrix_transpose(M), xp.matrix_transpose(C)))
    s = xp.sqrt(2.0 * a)
    out = dataclasses.replace(sysw, A=Ad, B=s * MB, C=s * CM, D=D + C @ MB)
    return out, np.asarray(alpha)


def factor_pair(sysw: _Dense):
    """Continuous Gramian factors ``P = Lc Lc^H``, ``Q = Lo Lo^H`` (working precision)."""
    from .gramians import _factor_pair

    sysd, _ = cayley(sysw)
    try:
        return _factor_pair(sysd)
    except UnstableSystemError:
        # Hurwitz in floating point, but so close to the axis that the mapped system is not Schur stable
        lam = be.to_numpy(sysw.xp.linalg.eigvals(sysw.A))
        raise_not_hurwitz(lam.real, np.abs(lam), "The mapped discrete-time Gramian iteration did not converge "
                          "(eigenvalues within rounding of the imaginary axis). ")


def decompose(sysw: _Dense):
    """:class:`~lti_reduce.balancing._Decomposition` of a continuous system (projections act on ``sysw``)."""
    from .balancing import _balancing_svd, _Decomposition

    Lc, Lo = factor_pair(sysw)
    U, s, Vh = _balancing_svd(sysw.xp, Lc, Lo, sysw.n)
    floor = s[..., :1] * (sysw.n * float(np.finfo(np.float64).eps))
    return _Decomposition(sysw, s, Lc, be.mH(Vh), Lo, U, floor, time="continuous")


def hinf_norm(sysw: _Dense, rtol: float, method: str = "level-set"):
    """``sup_w sigma_max(C (i w I - A)^{-1} B + D)`` per system, through the Cayley map (same norm)."""
    from .bounds import hinf_norm as discrete_hinf_norm

    if method == "level-set":
        return _hinf_level_set(sysw, rtol)
    sysd, _ = cayley(sysw)
    mats = [be.to_numpy(M) for M in (sysd.A, sysd.B, sysd.C, sysd.D)]
    try:
        return discrete_hinf_norm(*mats, rtol=rtol, method=method)
    except UnstableSystemError:
        lam = be.to_numpy(sysw.xp.linalg.eigvals(sysw.A))
        raise_not_hurwitz(lam.real, np.abs(lam))


def _hinf_level_set(sysw: _Dense, rtol: float):
    """The level-set norm per system from one eigendecomposition of each ``A``.

    The eigenvalues give ``alpha`` and the stability test, and with the eigenvectors the modal search
    that starts the level sets (on the Cayley map's circle, formed from the modes); the level sets then
    run on the continuous system itself (:func:`lti_reduce.bounds._hinf_continuous`).
    """
    from .bounds import _MODES_COND, _hinf_continuous, _hinf_scaled
    from .validate import MAX_SPECTRAL_RADIUS

    batch = sysw.batch_shape
    count = int(np.prod(batch)) if batch else 1
    A = be.to_numpy(sysw.A).reshape((count,) + (sysw.n, sysw.n))
    decs = [np.linalg.eig(a) for a in A]
    lam = np.stack([d[0] for d in decs])
    if not np.all(lam.real.max(axis=-1) < 0):
        raise_not_hurwitz(lam.real.reshape(batch + (sysw.n,)), np.abs(lam).reshape(batch + (sysw.n,)))
    mag = np.abs(lam)
    alpha = np.sqrt(mag.min(axis=-1) * mag.max(axis=-1))
    lam_d = (alpha[:, None] + lam) / (alpha[:, None] - lam)
    if not np.all(np.abs(lam_d) < MAX_SPECTRAL_RADIUS):  # Hurwitz, but within rounding of the axis
        raise_not_hurwitz(lam.real.reshape(batch + (sysw.n,)), mag.reshape(batch + (sysw.n,)))
    mats = [be.to_numpy(M).reshape((count,) + tuple(M.shape[-2:])) for M in (sysw.A, sysw.B, sysw.C, sysw.D)]
    out = []
    for i, (a, b, c, d) in enumerate(zip(*mats)):
        V = decs[i][1]
        V = V if np.linalg.cond(V) <= _MODES_COND else None
        solver = lambda a_, b_, c_, d_, rt, i=i, V=V: _hinf_continuous(a_, b_, c_, d_, rt, lam[i], V,  # noqa: E731
                                                                        float(alpha[i]))
        out.append(_hinf_scaled(a, b, c, d, rtol, solver=solver))
    return np.array(out).reshape(batch)


def check_no_diagonal(A, what: str):
    from .systems import DiagonalSystem

    if isinstance(A, DiagonalSystem):
        raise LTIInputError(f"{what} with time='continuous' takes dense matrices; a DiagonalSystem describes a "
                            "discrete-time layer. Pass its matrices (DiagonalSystem.to_dense()) instead.")


def spa_residual_matrix(dec, order, r: int, A22):
    """``-A_22`` for continuous SPA, with the decoupled states given the dynamics ``-1``.

    States whose HSV is at round-off level get zero projection columns (see
    :func:`lti_reduce.balancing._projections`), so their rows and columns of ``A_22``, ``A_12``,
    ``A_21``, ``B_2``, ``C_2`` are zero and ``A_22`` is singular. Any nonzero dynamics keeps them
    decoupled and contributing nothing; ``-1`` makes ``-A_22`` invertible there.
    """
    xp = dec.sysw.xp
    s = dec.s
    if isinstance(order, (int, np.integer)):
        rest = s[..., r:]
    else:
        idx = xp.asarray(np.asarray(list(order)[r:], dtype=np.int64), device=_device(s))
        rest = xp.take(s, idx, axis=-1)
    dead = xp.astype(rest <= dec.floor, A22.dtype)
    k = int(A22.shape[-1])
    eye = xp.eye(k, dtype=A22.dtype, device=_device(A22))
    return eye * dead[..., None, :] - A22
