"""Back to modal (diagonal) form, for layers that store eigenvalues.

A real system ``(A, B, C, D)`` with ``A = X diag(mu) X^{-1}`` becomes, in modal
coordinates ``z = X^{-1} x``, ``(diag(mu), X^{-1} B, C X, D)``. Conjugate pairs
``mu, conj(mu)`` carry conjugate rows/columns, so each pair collapses into one
complex mode of a real-output system,

.. math:: \\hat c\\, z + \\overline{\\hat c\\, z} = \\operatorname{Re}\\big((2 \\hat c)\\, z\\big),

i.e. ``lam = mu``, ``B = (X^{-1} B)_j``, ``C = 2 (C X)_j``; a real eigenvalue keeps
one mode with real ``lam``, ``B`` row and ``C`` column. The transfer function is
unchanged up to round-off amplified by ``cond(X)``, which is returned: a large
condition number (a nearly defective ``A``) means the modal form is inaccurate.
"""

from __future__ import annotations

import warnings

import numpy as np

from . import _backend as be
from ._blocks import cpu_workers, map_blocks
from .errors import LTIInputError
from .systems import DiagonalSystem
from .validate import check_stable_eigenvalues, dense_system

__all__ = ["modal_form", "ModalConditioningWarning"]

# Matrices per LAPACK call of a torch batch's eig when blocks run side by side (lti_reduce._blocks).
_EIG_BLOCK = 128


class ModalConditioningWarning(UserWarning):
    """The eigenvector matrix of a modal conversion is ill-conditioned."""


def _real_eig(A):
    """Eigenvalues and real eigenvector matrix of a real square ``A`` (LAPACK ``dgeev``).

    Parameters
    ----------
    A : float64 ndarray, shape (r, r)

    Returns
    -------
    mu : complex128 ndarray, shape (r,)
        Eigenvalues; a conjugate pair is stored consecutively, positive imaginary part
        first, and a real eigenvalue has an exactly zero imaginary part.
    V : float64 ndarray, shape (r, r)
        LAPACK's real eigenvector storage: for a pair ``mu_j, mu_{j+1} = conj(mu_j)``,
        ``x_j = V[:, j] + i V[:, j+1]`` and ``x_{j+1} = conj(x_j)``; a real eigenvalue's
        eigenvector is ``V[:, j]``. Each ``x_j`` has unit Euclidean norm.

    Notes
    -----
    The same decomposition as ``numpy.linalg.eig`` (which calls ``dgeev`` and expands
    ``V`` to the complex ``X``), kept real so that the inverse and the products with
    ``B`` and ``C`` cost a quarter of their complex counterparts.
    """
    from scipy.linalg import lapack

    r = int(A.shape[0])
    lwork, info = lapack.dgeev_lwork(r, compute_vl=0, compute_vr=1)
    if info != 0:  # pragma: no cover - a workspace query does not fail
        lwork = 4 * r
    wr, wi, _, V, info = lapack.dgeev(A, compute_vl=0, compute_vr=1, lwork=max(int(lwork), 4 * r, 1),
                                      overwrite_a=0)
    if info > 0:  # QR iteration did not converge: numpy's eig raises LinAlgError here as well
        raise np.linalg.LinAlgError(f"eigenvalue computation did not converge (dgeev info = {info})")
    return wr + 1j * wi, V


def _modal_real(A, B, C, D, cond_warn):
    """Modal form of a real system in real arithmetic; see :func:`modal_form`.

    With ``A = X diag(mu) X^{-1}`` and LAPACK's real eigenvector matrix ``V`` (``X = V S``
    with ``S = [[1, 1], [i, -i]]`` on each conjugate pair's two columns, identity
    elsewhere), ``X^{-1} = S^{-1} V^{-1}`` and ``S^{-1} = [[1, -i], [1, i]] / 2``: the
    pair's modal input row is ``(Z_j - i Z_{j+1}) / 2`` for ``Z = V^{-1} B`` and its output
    column ``(C V)_j + i (C V)_{j+1}``, doubled since the pair collapses into one mode.
    Only the real ``r x r`` LU/inverse and real products are formed; the 1-norm
    condition number of the complex ``X`` is recovered exactly from ``V`` and ``V^{-1}``
    (:func:`_real_modes`, shared with the batched path).
    """
    mu, V = _real_eig(A)
    _check_radius(mu)
    Bm, Cm, cond, keep = _real_modes(mu[None], V[None], B[None], C[None], False)
    keep, cond = keep[0], float(cond[0])
    _warn_conditioning(cond, cond_warn)
    return mu[keep], Bm[0][keep], Cm[0][:, keep], D, cond, True


def _modal_complex(A, B, C, D, cond_warn):
    """Modal form of a complex system (``r`` modes); see :func:`modal_form`."""
    mu, X = np.linalg.eig(A)
    _check_radius(mu)
    try:
        X_inv = np.linalg.inv(X)
    except np.linalg.LinAlgError:
        X_inv = np.full_like(X, np.inf)
    # 1-norm condition number from the inverse we need anyway (an SVD would cost as much as eig).
    cond = float(np.linalg.norm(X, 1) * np.linalg.norm(X_inv, 1))
    _check_defective(cond)
    Bm = X_inv @ B
    Cm = C @ X
    _warn_conditioning(cond, cond_warn)
    return mu, Bm, Cm, D, cond, False


def _check_radius(mu):
    """The library's one stability rule (:func:`lti_reduce.validate.check_stable_eigenvalues`) on ``eig(A)``."""
    check_stable_eigenvalues(mu, "eigenvalue", "The state matrix must have spectral radius < 1 - 1e-12 for a modal "
                             "form a layer can store; reduce a stable system, or stabilize the model first.")


def _check_defective(cond):
    if not np.isfinite(cond) or cond > 1.0 / np.finfo(np.float64).eps:
        raise LTIInputError(
            f"the reduced state matrix is (numerically) defective: eigenvector condition number {cond:.3e}; "
            "it has no modal form. Use a smaller rank, or keep the dense realization.")


def _warn_conditioning(cond, cond_warn):
    if cond > cond_warn:
        warnings.warn(f"modal form: eigenvector condition number {cond:.3e} > {cond_warn:.1e}; the diagonal "
                      "realization may be inaccurate (frequency response error up to ~cond * eps).",
                      ModalConditioningWarning, stacklevel=4)


def _check_cond_warn(cond_warn) -> float:
    if isinstance(cond_warn, bool) or not isinstance(cond_warn, (int, float, np.integer, np.floating)) \
            or not float(cond_warn) > 0.0:
        raise LTIInputError(f"cond_warn must be a positive number (the eigenvector condition number above which "
                            f"modal_form warns, e.g. 1e8; inf never warns), got {cond_warn!r}.")
    return float(cond_warn)


def _modal_single(A, B, C, D, cond_warn):
    if np.iscomplexobj(A) or np.iscomplexobj(B) or np.iscomplexobj(C):
        return _modal_complex(A, B, C, D, cond_warn)
    return _modal_real(np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64),
                       np.asarray(C, dtype=np.float64), D, cond_warn)


def _batched_eig(A, use_torch: bool):
    """``(mu, X)`` of a float64/complex128 numpy stack ``A`` (count, r, r): eigenvalues and eigenvectors.

    ``use_torch``: the caller's arrays are torch tensors, so torch is loaded; ``torch.linalg.eig``
    runs the same LAPACK routine (``xGEEV``) over the stack, on a zero-copy view of the numpy array, in
    the LAPACK torch is built with (MKL in the x86 wheels: 512 real matrices of order 55 took 0.27-0.30 s
    against numpy's 0.44-0.56 s, one thread). Both return a conjugate pair consecutively, positive
    imaginary part first, a real eigenvalue with an exactly zero imaginary part (LAPACK's ``wr + i wi``),
    and a pair's eigenvectors as LAPACK's real columns ``V_j +/- i V_{j+1}`` (:func:`_torch_blocks`).
    """
    if use_torch:
        import torch  # only reached for torch inputs

        mu, X = _torch_blocks(torch.linalg.eig, A)
        return mu.numpy(), X.numpy()
    mu, X = np.linalg.eig(A)
    return mu.astype(np.complex128), X.astype(np.complex128)


def _torch_blocks(fn, M):
    """``fn`` (a batched torch function returning a tuple) of a numpy stack ``M``, on a zero-copy view.

    With more than one torch thread, blocks of ``_EIG_BLOCK`` matrices run side by side
    (:mod:`lti_reduce._blocks`); the results are concatenated.
    """
    import torch

    Mt = torch.from_numpy(np.require(M, requirements="CW"))
    workers, count = cpu_workers(Mt), int(Mt.shape[0])
    block = _EIG_BLOCK if workers > 1 else max(count, 1)
    parts = map_blocks(lambda i: fn(Mt[i:i + block]), range(0, max(count, 1), block), workers)
    return parts[0] if len(parts) == 1 else tuple(torch.cat(X) for X in zip(*parts))


def _batched_inv(M, use_torch: bool):
    """Inverses of a numpy stack ``M`` (count, r, r) by LU (``xGETRF``/``xGETRI``), or None if one is singular."""
    if use_torch:
        import torch

        inv, info = _torch_blocks(torch.linalg.inv_ex, M)
        return inv.numpy() if bool((info == 0).all()) else None
    try:
        return np.linalg.inv(M)
    except np.linalg.LinAlgError:
        return None


def _modal_batch(A, B, C, D, cond_warn, use_torch: bool = False):
    """Modal forms of a batch ``A`` (count, r, r) in one batched ``eig``; see :func:`modal_form`.

    Returns ``lam`` (count, k), ``B`` (count, k, m), ``C`` (count, p, k), ``D``, the number of modes of
    each system ``counts`` (count,) with ``k = max(counts)`` (a system's modes first, then zero modes
    ``lam = 0, B = 0, C = 0``), ``cond`` (count,) and ``real_output``.

    Notes
    -----
    ``use_torch`` (torch inputs): the LAPACK calls go through torch (:func:`_batched_eig`).
    A real stack stays in real arithmetic after its ``eig``, as :func:`_modal_real` does for one
    system: LAPACK's real eigenvector matrix ``V`` is read back from the complex ``X`` (a pair's
    ``x_j = V_j + i V_{j+1}``), and only the real inverse ``V^{-1}`` and the real products ``V^{-1} B``,
    ``C V`` are formed (a quarter of the work of the complex ones); the pair's second mode is dropped
    and its first one's output column doubled, and ``cond(X)`` is recovered exactly from ``V`` and
    ``V^{-1}``. The modes each system keeps are moved to the front with one stable argsort over the
    batch (no loop over systems).
    """
    real_output = not (np.iscomplexobj(A) or np.iscomplexobj(B) or np.iscomplexobj(C))
    if real_output:
        A, B, C = (np.asarray(M, dtype=np.float64) for M in (A, B, C))
    mu, X = _batched_eig(np.ascontiguousarray(A), use_torch)
    _check_radius(mu.reshape(-1))
    if real_output:
        Bm, Cm, cond, keep = _real_modes(mu, _real_vectors(mu, X), B, C, use_torch)
    else:
        X_inv = _batched_inv(X, use_torch)
        if X_inv is None:  # a singular eigenvector matrix in the batch: defective
            _check_defective(np.inf)
        cond = np.abs(X).sum(-2).max(-1) * np.abs(X_inv).sum(-2).max(-1)
        _check_defective(float(np.max(cond, initial=0.0)) if np.all(np.isfinite(cond)) else np.inf)
        Bm, Cm, keep = X_inv @ B, C @ X, np.ones(mu.shape, dtype=bool)
    counts = keep.sum(-1)
    k = int(counts.max(initial=0))
    order = np.argsort(~keep, axis=-1, kind="stable")[:, :k]
    present = np.arange(k) < counts[:, None]
    lam = np.where(present, np.take_along_axis(mu, order, -1), 0)
    Bk = np.where(present[:, :, None], np.take_along_axis(Bm, order[:, :, None], -2), 0)
    Ck = np.where(present[:, None, :], np.take_along_axis(Cm, order[:, None, :], -1), 0)
    _warn_conditioning(float(np.max(cond, initial=0.0)), cond_warn)
    return lam, Bk, Ck, D, counts, cond, real_output


def _real_vectors(mu, X):
    """LAPACK's real eigenvector matrices ``V`` (count, r, r) read back from the complex ``X`` of ``eig``.

    A pair ``mu_j, mu_{j+1} = conj(mu_j)`` (positive imaginary part first) has ``x_j = V_j + i V_{j+1}``;
    a real eigenvalue's eigenvector is real.
    """
    _, second = _pair_places(mu)
    return np.where(second[:, None, :], np.roll(X.imag, 1, axis=-1), X.real)


def _pair_places(mu):
    """``(pair, second)`` (count, r) boolean: a conjugate pair's first and second places in LAPACK's order."""
    pair = mu.imag > 0
    second = np.zeros_like(pair)
    second[:, 1:] = pair[:, :-1]
    return pair, second


def _real_modes(mu, V, B, C, use_torch: bool):
    """Modal ``B``, ``C`` of a real stack from its real eigenvectors; see :func:`_modal_real`.

    Parameters
    ----------
    mu : complex ndarray, shape (count, r)
        Eigenvalues in LAPACK's order: a conjugate pair consecutively, positive imaginary part first.
    V : float64 ndarray, shape (count, r, r)
        LAPACK's real eigenvectors: a pair's ``x_j = V_j + i V_{j+1}``, ``x_{j+1} = conj(x_j)``.
    B : float64 ndarray, shape (count, r, m)
    C : float64 ndarray, shape (count, p, r)

    Returns
    -------
    ``(Bm, Cm, cond, keep)``: ``Bm`` (count, r, m) and ``Cm`` (count, p, r) complex, with a pair's
    modal input row ``(Z_j - i Z_{j+1}) / 2`` (``Z = V^{-1} B``) and doubled output column
    ``2 ((C V)_j + i (C V)_{j+1})`` in its first place; ``cond`` (count,) the 1-norm condition number of
    the complex ``X``; ``keep`` (count, r) the places that hold a mode (a pair's first, a real eigenvalue).

    Raises
    ------
    LTIInputError
        If some ``V`` is singular or ``cond`` exceeds ``1 / eps`` (numerically defective).
    """
    pair, second = _pair_places(mu)
    V_inv = _batched_inv(V, use_torch)
    if V_inv is None:  # a singular eigenvector matrix in the batch: defective
        _check_defective(np.inf)
    # ||X||_1: both columns of a pair have the moduli |x_j| = sqrt(V_j^2 + V_{j+1}^2) (the second column's
    # |V_{j+1}| is smaller and never the maximum); ||X^{-1}||_1: a pair's rows (V_inv_j -/+ i V_inv_{j+1}) / 2
    # add up to |V_inv_jk + i V_inv_{j+1,k}|. Squares in place: a few passes over the stack.
    col = V * V
    col[:, :, :-1] += np.where(pair[:, None, :-1], col[:, :, 1:], 0.0)
    rows = V_inv * V_inv
    rows[:, :-1, :] += np.where(pair[:, :-1, None], rows[:, 1:, :], 0.0)
    rows *= ~second[:, :, None]
    cond = np.sqrt(col, out=col).sum(-2).max(-1) * np.sqrt(rows, out=rows).sum(-2).max(-1)
    _check_defective(float(np.max(cond, initial=0.0)) if np.all(np.isfinite(cond)) else np.inf)
    Z, CV = V_inv @ B, C @ V
    # A real eigenvalue has a real eigenvector: its B row and C column are real.
    Bm, Cm = Z.astype(np.complex128), CV.astype(np.complex128)
    Bm[:, :-1, :] = np.where(pair[:, :-1, None], 0.5 * (Z[:, :-1, :] - 1j * Z[:, 1:, :]), Bm[:, :-1, :])
    Cm[:, :, :-1] = np.where(pair[:, None, :-1], 2.0 * (CV[:, :, :-1] + 1j * CV[:, :, 1:]), Cm[:, :, :-1])
    return Bm, Cm, cond, pair | ~second


def modal_form(A, B, C, D=None, *, cond_warn: float = 1e8, pad: bool = False):
    """Diagonal (modal) realization of a dense system, collapsing conjugate pairs.

    Parameters
    ----------
    A : array, shape (..., r, r)
        Schur-stable, diagonalizable state matrix.
    B : array, shape (..., r, m)
        Input matrix.
    C : array, shape (..., p, r)
        Output matrix.
    D : array, shape (..., p, m), optional
        Feedthrough, carried over unchanged (zero if omitted).
    cond_warn : float
        Warn (:class:`ModalConditioningWarning`) when ``cond(X)`` exceeds it; a positive
        number (``inf`` never warns).
    pad : bool
        For a batch of real systems whose numbers of modes differ (a real eigenvalue takes a
        whole mode): ``False`` (default) raises; ``True`` returns every system with the largest
        number of modes, its own modes first, then *zero modes* ``lam = 0, B = 0, C = 0``, which add
        nothing to its transfer function.

    Returns
    -------
    system : DiagonalSystem
        For a real system: ``real_output=True`` with one mode per conjugate pair
        and per real eigenvalue (``k`` modes, ``r/2 <= k <= r``). For a complex
        system: ``real_output=False`` with ``r`` modes. Same transfer function.
    cond : float or numpy.ndarray
        1-norm condition number ``||X||_1 ||X^{-1}||_1`` of the eigenvector matrix
        (per batch element).

    Raises
    ------
    UnstableSystemError
        If ``A`` has an eigenvalue with ``|mu| >= 1 - 1e-12``: the stability rule of every
        function (dense systems, :class:`DiagonalSystem`, layers loading a system).
    LTIInputError
        If ``A`` is numerically defective, if ``cond_warn`` is not a positive number (NaN,
        a string, a bool), if the batch is empty, or, for a batch, if the systems have
        different numbers of modes and ``pad=False`` (index the batch and convert one at a time,
        or pass ``pad=True``).

    Notes
    -----
    Runs ``eig`` on the host in float64 (torch inputs are copied there and the result
    copied back; a batch of them through torch's own LAPACK): these are small ``r x r`` matrices. Eigenvalues are returned as computed,
    never moved: a model with a pole within ``1e-12`` of the unit circle is refused instead.
    With ``m = 0`` inputs or ``p = 0`` outputs the result has empty ``B`` or ``C`` (the
    modes of ``A``, a zero transfer function).

    A real system stays in real arithmetic: LAPACK ``dgeev`` stores a pair's eigenvector
    ``x = u + i v`` as the two real columns ``u, v`` of ``V``; ``X^{-1} B`` and ``C X`` follow
    from the real ``V^{-1} B`` and ``C V`` (see ``_modal_real``), a quarter of the cost of
    the complex inverse and products. The dense ``eig`` (about ``25 r^3`` flops) dominates:
    everything else costs ``O(r^2 (m + p) + r^3)`` with a small constant. A batch is converted
    by one batched ``numpy.linalg.eig`` and batched inverses and products (see ``_modal_batch``),
    with no Python loop over its systems.

    Examples
    --------
    >>> import numpy as np, lti_reduce as lr
    >>> A = np.array([[0.5, -0.4], [0.4, 0.5]]); B = np.array([[1.0], [0.0]]); C = np.array([[0.0, 1.0]])
    >>> sys, cond = lr.modal_form(A, B, C)
    >>> sys.n, sys.real_output
    (1, True)
    """
    cond_warn = _check_cond_warn(cond_warn)
    if not isinstance(pad, (bool, np.bool_)):
        raise LTIInputError(f"pad must be True or False, got {pad!r}.")
    sysw = dense_system(A, B, C, D)
    count = be.batch_size(sysw.batch_shape)
    Ms = [be.to_numpy(M).reshape((count,) + tuple(M.shape[-2:])) for M in (sysw.A, sysw.B, sysw.C, sysw.D)]
    batch = sysw.batch_shape
    if count == 1:  # one system: LAPACK's real eigenvectors, a quarter of the complex work
        lam, Bm, Cm, Dm, cond, real_output = _modal_single(*(M[0] for M in Ms), cond_warn)
        lam, Bm, Cm, Dm, cond = (np.reshape(x, batch + np.shape(x)) for x in (lam, Bm, Cm, Dm, cond))
    else:
        lam, Bm, Cm, Dm, counts, cond, real_output = _modal_batch(*Ms, cond_warn, be.is_torch(sysw.A))
        if not pad and counts.min() != counts.max():
            raise LTIInputError(f"the batch's systems have different numbers of modes {sorted(set(counts.tolist()))} "
                                "(real eigenvalues use one mode, pairs one); pass pad=True to fill the shorter ones "
                                "with zero modes, or convert them one at a time: modal_form(A[i], B[i], C[i], D[i]).")
        lam, Bm, Cm, Dm = (x.reshape(batch + x.shape[1:]) for x in (lam, Bm, Cm, Dm))
        cond = cond.reshape(batch)
    xp, like = sysw.xp, sysw.like
    cdt = {xp.float32: xp.complex64, xp.float64: xp.complex128}.get(sysw.out_dtype, sysw.out_dtype)
    conv = lambda x, dt: xp.astype(be.from_numpy_like(x, like), dt)  # noqa: E731
    system = DiagonalSystem(conv(lam, cdt), conv(Bm, cdt), conv(Cm, cdt), conv(Dm, sysw.out_dtype), real_output=real_output)
    return system, (float(cond) if cond.ndim == 0 else cond)


def _as_precision(system: DiagonalSystem, out_dtype) -> DiagonalSystem:
    """``system`` with ``lam, B, C`` cast to the complex counterpart of ``out_dtype`` and ``D`` to ``out_dtype``.

    Parameters
    ----------
    system : DiagonalSystem
        A modal form computed in working precision (complex128 / float64).
    out_dtype : dtype of ``system``'s backend
        A real or complex floating dtype (float32 for a single-precision real-output layer).
    """
    xp = be.namespace(system.lam)
    cdt = {xp.float32: xp.complex64, xp.float64: xp.complex128}.get(out_dtype, out_dtype)
    if system.lam.dtype == cdt and system.D.dtype == out_dtype:
        return system
    return DiagonalSystem(xp.astype(system.lam, cdt), xp.astype(system.B, cdt), xp.astype(system.C, cdt),
                          xp.astype(system.D, out_dtype), real_output=system.real_output)
