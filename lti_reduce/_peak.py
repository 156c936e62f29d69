"""Peak search for ``sup_theta sigma_max(G(e^{i theta}))``: the ``method="search"`` of :func:`hinf_norm`.

A diagonal system's frequency response costs ``O(n m p)`` per angle,

.. math:: G(e^{i\\theta}) = \\sum_k \\frac{c_k b_k^T}{e^{i\\theta} - \\lambda_k} + D,

against ``O(n^3)`` for one eigenvalue solve of the level-set algorithm. The search screens
``sigma_max`` on a uniform grid of the circle and at the angles of the poles whose resonances are
narrower than that grid, evaluates the best local maxima exactly, then refines the largest on
shrinking brackets (rounds of samples, a parabolic step at the end). Every value is ``sigma_max``
itself or a Rayleigh quotient of ``G^H G`` (never above ``sigma_max^2``), so the result is a lower
bound on the norm; it equals the norm (to the requested accuracy) whenever the global peak lies in
the bracket of one of the refined maxima, which the pole angles make the rule for a diagonal system.
"""

from __future__ import annotations

import numpy as np

__all__: list[str] = []

_GRID = 64       # uniform angles on the half circle [0, pi] (a real system) or 2 * _GRID on the circle
_POLES = 64       # resonant poles whose angles (and flanks) are added to the grid
_POLISH = 4       # local maxima refined
_FINE = 9         # samples per bracket and refinement round
_SCREENED = 16    # local maxima of the screening values evaluated exactly
_POWER = 8        # power iterations of a screening value
_BLOCK = 1 << 21  # complex entries of one block of the batched response


def complex_modes(lam, B, C, D, real_output):
    """``(lam, B, C, D, symmetric)`` with ``G(z) = C diag(1/(z - lam)) B + D``, all complex but ``D``.

    ``real_output`` (``y = Re(C x) + D u``) becomes the conjugate pair of modes,
    ``G(z) = (C (zI - Λ)^{-1} B + conj(C) (zI - conj Λ)^{-1} conj(B)) / 2 + D``; that map is real,
    so ``sigma_max(G(e^{-i theta})) = sigma_max(G(e^{i theta}))`` (``symmetric``) and only
    ``[0, pi]`` is searched.
    """
    lam, B, C = (np.asarray(x, dtype=np.complex128) for x in (lam, B, C))
    if real_output:
        lam = np.concatenate([lam, lam.conj()])
        B = np.concatenate([B, B.conj()], axis=0)
        C = 0.5 * np.concatenate([C, C.conj()], axis=1)
    real = bool(real_output) or (not np.any(lam.imag) and not np.any(B.imag) and not np.any(C.imag)
                                 and (D is None or not np.any(np.imag(D))))
    return lam, B, C, D, real


_OUTER = 1 << 22  # complex entries of the mode-by-(output, input) matrix X below, at most (64 MiB)


class _Response:
    """``sigma_max(G(e^{i theta}))`` of one diagonal system at batches of angles.

    With ``X[k, (i, j)] = C[i, k] B[k, j]`` (formed once, where it is small enough),
    ``G(e^{i theta}) = w(theta)^T X + D`` with ``w_k = 1 / (e^{i theta} - lam_k)``: the responses at
    ``T`` angles are one ``(T, n) @ (n, p m)`` product, a single BLAS call. Larger systems form
    ``(C diag(w)) B`` per angle instead (no ``n p m`` array).
    """

    def __init__(self, lam, B, C, D):
        self.lam, self.B, self.C, self.D = lam, B, C, D
        n, m, p = lam.size, B.shape[1], C.shape[0]
        self.n, self.m, self.p = n, m, p
        self.X = (C.T[:, :, None] * B[:, None, :]).reshape(n, p * m) if n * p * m <= _OUTER else None

    def _responses(self, theta):
        W = 1.0 / (np.exp(1j * theta)[:, None] - self.lam[None, :])  # (t, n)
        if self.X is not None:
            G = (W @ self.X).reshape(theta.size, self.p, self.m)
        elif self.p <= self.m:
            G = (self.C[None] * W[:, None, :]) @ self.B
        else:
            G = self.C @ (W[:, :, None] * self.B[None])
        return G if self.D is None else G + self.D

    def __call__(self, theta, exact=True):
        """``sigma_max`` at every angle of ``theta`` (shape ``(T,)``).

        ``exact=False``: a screening value, the Rayleigh quotient after ``_POWER`` power iterations on
        the Gram matrix. It is never above ``sigma_max`` and equals it where one singular value
        dominates (at a resonance); where the top two are close it can be some percent low.
        """
        m, p = self.m, self.p
        out = np.empty(theta.size)
        per_angle = max(self.n * min(m, p), p * m)
        step = max(1, _BLOCK // max(1, per_angle))
        for s in range(0, theta.size, step):
            G = self._responses(theta[s:s + step])
            if min(m, p) == 1:
                out[s:s + step] = np.sqrt(np.sum(G.real**2 + G.imag**2, axis=(1, 2)))
                continue
            # sigma_max^2 = the largest eigenvalue of the smaller Gram matrix (to eps relative, like the SVD)
            M = G.conj().transpose(0, 2, 1) @ G if m <= p else G @ G.conj().transpose(0, 2, 1)
            if exact:
                top = np.linalg.eigvalsh(M)[:, -1]
            else:
                v = M.sum(axis=2)[..., None] + 1e-300
                for _ in range(_POWER):
                    v = M @ v
                    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300)
                top = np.real(np.sum(v.conj() * (M @ v), axis=(1, 2)))
            out[s:s + step] = np.sqrt(np.maximum(top, 0.0))
        return out


def search_peak(lam, B, C, D, real_output, rtol, symmetric=False, return_angle=False):
    """Largest ``sigma_max(G(e^{i theta}))`` found; a lower bound on ``||G||_inf`` (see the module docstring).

    Parameters
    ----------
    lam : ndarray, shape (n,)
    B : ndarray, shape (n, m)
    C : ndarray, shape (p, n)
    D : ndarray, shape (p, m), or None
    real_output : bool
        ``y = Re(C x) + D u`` (see :class:`~lti_reduce.DiagonalSystem`).
    rtol : float
        Relative accuracy the polished maxima are refined to.
    symmetric : bool
        The map is known to be real (a diagonalized real dense system): search ``[0, pi]`` only.
    return_angle : bool
        Return ``(value, theta)``, the angle where the value was found, instead of the value alone.
    """
    lam, B, C, D, real = complex_modes(lam, B, C, D, real_output)
    real = real or symmetric
    lo = 0.0 if real else -np.pi
    grid = np.linspace(lo, np.pi, _GRID + 1 if real else 2 * _GRID, endpoint=real)
    spacing = np.pi / _GRID
    # Resonant poles: |G| near the angle of lam_k is about |c_k| |b_k| / (1 - |lam_k|) over a width 1 - |lam_k|.
    width = np.maximum(1.0 - np.abs(lam), 1e-15)
    score = np.linalg.norm(C, axis=0) * np.linalg.norm(B, axis=1) / width
    narrow = np.flatnonzero(width < 2.0 * spacing)
    narrow = narrow[np.argsort(score[narrow])[::-1][:_POLES]]
    ang = np.angle(lam[narrow])
    if real:
        ang = np.abs(ang)
    theta = np.concatenate([grid, ang])
    scale = np.concatenate([np.full(grid.size, spacing), np.minimum(4.0 * width[narrow], spacing)])
    theta = np.clip(theta, lo, np.pi) if real else np.mod(theta + np.pi, 2.0 * np.pi) - np.pi
    theta, first = np.unique(theta, return_index=True)
    scale = scale[first]
    sigma = _Response(lam, B, C, D)
    vals = sigma(theta, exact=False)
    if float(np.max(vals)) == 0.0:
        return (0.0, 0.0) if return_angle else 0.0
    # Local maxima of the sampled curve (ends reflect on [0, pi]; the full circle wraps).
    if real:
        left = np.concatenate([[-np.inf], vals[:-1]])
        right = np.concatenate([vals[1:], [-np.inf]])
    else:
        left, right = np.roll(vals, 1), np.roll(vals, -1)
    peaks = np.flatnonzero((vals >= left) & (vals >= right))
    peaks = peaks[np.argsort(vals[peaks])[::-1][:_SCREENED]]
    vals[peaks] = sigma(theta[peaks])  # exact values of the screened maxima
    best = float(np.max(vals[peaks]))
    best_theta = float(theta[peaks[int(np.argmax(vals[peaks]))]])
    peaks = peaks[np.argsort(vals[peaks])[::-1][:_POLISH]]
    peaks = peaks[vals[peaks] >= 0.5 * best]  # a sampled maximum below half the best: not worth refining
    # Bracket: the neighbouring samples, or the resonance width of a pole sample where that is narrower.
    if real:
        a = theta[np.maximum(peaks - 1, 0)]
        b = theta[np.minimum(peaks + 1, theta.size - 1)]
    else:
        a = theta[peaks - 1] - np.where(peaks == 0, 2 * np.pi, 0.0)
        b = theta[(peaks + 1) % theta.size] + np.where(peaks == theta.size - 1, 2 * np.pi, 0.0)
    a = np.maximum(a, theta[peaks] - scale[peaks])
    b = np.minimum(b, theta[peaks] + scale[peaks])
    refined, refined_theta = _refine(sigma, a, b, theta[peaks], vals[peaks], rtol, lo)
    if refined > best:
        best, best_theta = refined, refined_theta
    return (best, best_theta) if return_angle else best


def _refine(sigma, a, b, t, v, rtol, lo):
    """Maximize ``sigma_max`` on every bracket ``[a_j, b_j]`` at once (best sample ``t_j``, value ``v_j``).

    Each round samples ``_FINE`` points across every bracket in one batched evaluation and shrinks the
    bracket to the two cells around its best point (a factor ``(_FINE - 1) / 2`` per round). Once the
    cells are narrow enough that ``sigma_max`` is locally a parabola, the vertex of the parabola through
    the best point and its two neighbours is evaluated as well; rounds continue until the bracket is
    narrower than about ``sqrt(rtol)`` of its starting width, where the value is within ``rtol`` of a
    smooth peak (a kink, where two singular values cross, is approached by the rounds alone).
    """
    if t.size == 0:
        return 0.0, 0.0
    shrink = (_FINE - 1) / 2.0
    rounds = int(np.ceil(np.log(1.0 / min(1e-2, 0.3 * np.sqrt(rtol))) / np.log(shrink)))
    rounds = max(2, rounds - 2)  # the parabolic step makes up the last rounds (tested against AB13DD)
    u = np.linspace(0.0, 1.0, _FINE)
    best = float(np.max(v))
    best_theta = float(t[int(np.argmax(v))])
    rows = np.arange(t.size)
    mid = (_FINE - 1) // 2
    fresh = [j for j in range(1, _FINE - 1) if j != mid]  # the columns a known bracket still needs
    prev = None
    for _ in range(rounds):
        pts = a[:, None] + (b - a)[:, None] * u[None, :]  # (k, _FINE)
        if lo == 0.0:
            pts = np.clip(pts, 0.0, np.pi)
        # Exact values (screening values here cost accuracy: 1e-4 on trained layers). A bracket around an
        # interior best point starts and ends at that point's neighbours and has it in the middle: those
        # three values are known from the round before.
        known = np.zeros(t.size, dtype=bool) if prev is None else (prev[1] > 0) & (prev[1] < _FINE - 1)
        vals = np.empty(pts.shape)
        if np.any(~known):
            vals[~known] = sigma(pts[~known].ravel()).reshape(-1, _FINE)
        if np.any(known):
            r = np.flatnonzero(known)
            vals[r[:, None], [0, mid, _FINE - 1]] = prev[0][r[:, None], prev[1][r][:, None] + np.array([-1, 0, 1])]
            vals[r[:, None], fresh] = sigma(pts[r][:, fresh].ravel()).reshape(r.size, len(fresh))
        i = np.argmax(vals, axis=1)
        prev = (vals, i)
        if float(vals.max()) > best:
            k = int(np.argmax(vals.max(axis=1)))
            best, best_theta = float(vals[k, i[k]]), float(pts[k, i[k]])
        h = (b - a) / (_FINE - 1)
        c = pts[rows, i]
        a, b = c - h, c + h
    # Parabolic vertex through the last round's best point and its neighbours (interior points only).
    j = np.clip(i, 1, _FINE - 2)
    f0, f1, f2 = vals[rows, j - 1], vals[rows, j], vals[rows, j + 1]
    den = f0 - 2.0 * f1 + f2
    ok = den < 0.0
    if np.any(ok):
        step = np.where(ok, 0.5 * (f0 - f2) / np.where(ok, den, -1.0), 0.0)
        vertex = pts[rows, j] + np.clip(step, -1.0, 1.0) * h
        if lo == 0.0:
            vertex = np.clip(vertex, 0.0, np.pi)
        vv = sigma(vertex[ok])
        if float(np.max(vv)) > best:
            best, best_theta = float(np.max(vv)), float(vertex[ok][int(np.argmax(vv))])
    return best, best_theta


def dense_modes(A, B, C):
    """A diagonalization ``(lam, V^{-1} B, C V)`` of a dense system, or None where it is ill-conditioned."""
    lam, V = np.linalg.eig(A)
    if np.linalg.cond(V) > 1e8:
        return None
    return lam, np.linalg.solve(V, B), C @ V
