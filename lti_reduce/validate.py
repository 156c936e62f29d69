"""Checks of user input, shared by every public function.

Each check raises an :class:`~lti_reduce.errors.LTIInputError` (a ``ValueError``)
whose message names the argument, the rule it broke and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _backend as be
from .errors import LTIInputError, UnstableSystemError

__all__: list[str] = []


@dataclass(frozen=True)
class _Dense:
    """A validated dense system in working precision (float64/complex128), batch broadcast."""

    xp: Any
    A: Any
    B: Any
    C: Any
    D: Any
    batch_shape: tuple
    out_dtype: Any  # dtype results are returned in
    like: Any  # an input array, for backend/device of the results

    @property
    def n(self) -> int:
        return int(self.A.shape[-1])


def _shape_str(x) -> str:
    return "(" + ", ".join(str(int(s)) for s in x.shape) + ")"


def check_finite(xp, x, name: str) -> None:
    if not bool(xp.all(xp.isfinite(x))):
        raise LTIInputError(f"{name} contains NaN or Inf; clean the input (e.g. check the training run that produced it).")


def check_nonempty_batch(batch) -> None:
    """Refuse a batch of zero systems (a leading dimension of size 0), which has no result to give."""
    if any(int(b) == 0 for b in batch):
        raise LTIInputError(f"the batch is empty (batch shape {tuple(int(b) for b in batch)}): there is no system "
                            "to work on; pass at least one system, or skip the call for an empty batch.")


_VECTOR_FIX = {
    "A": "A is the n x n state matrix; for one state write [[a]], for a diagonal A use numpy.diag(a) (or a "
         "DiagonalSystem)",
    "B": "reshape a vector to a column (one input), e.g. B[:, None]",
    "C": "reshape a vector to a row (one output), e.g. C[None, :]",
    "D": "give D the shape (p, m), e.g. D.reshape(p, m) or numpy.atleast_2d(D) for one input and one output",
}


def _as_input_array(x, name: str):
    """``x`` as a numpy array or torch tensor, refusing what is not a matrix with a message that says so."""
    if x is None:
        raise LTIInputError(f"{name} is None; pass the matrix {name} (a numpy array, a torch tensor or a nested list).")
    if isinstance(x, (str, bytes)):
        raise LTIInputError(f"{name} is a string ({x[:40]!r}); pass the matrix {name} as a numpy array, a torch tensor "
                            "or a nested list of numbers.")
    if isinstance(x, np.ma.MaskedArray):
        if np.ma.count_masked(x):
            raise LTIInputError(f"{name} is a masked array with {int(np.ma.count_masked(x))} masked entries; a state-space "
                                "matrix has no missing values. Fill them (numpy.ma.filled) or pass the model without "
                                "masked entries.")
        x = np.asarray(x.data)
    if not (be.is_numpy(x) or be.is_torch(x)):
        try:
            x = np.asarray(x)
        except ValueError:
            raise LTIInputError(f"{name} ({type(x).__name__}) is not rectangular: its rows have different lengths; give "
                                f"every row of {name} the same number of entries.") from None
        except Exception:
            raise LTIInputError(f"{name} must be an array (numpy, torch or a nested list of numbers), got "
                                f"{type(x).__name__}.") from None
    if be.is_numpy(x):
        if x.dtype == object:
            raise LTIInputError(f"{name} ({type(x).__name__}) holds objects, not numbers (rows of different lengths, or "
                                f"entries that are not numbers); give {name} as a rectangular array of numbers.")
        if x.dtype.kind in "USV":
            raise LTIInputError(f"{name} has dtype {x.dtype} (text or raw bytes); pass numbers.")
        if (x.dtype.kind == "f" and x.dtype.itemsize > 8) or (x.dtype.kind == "c" and x.dtype.itemsize > 16):
            raise LTIInputError(f"{name} has dtype {x.dtype} (extended precision); the computation runs in float64 / "
                                f"complex128 (LAPACK has no extended precision), so nothing would be gained and the "
                                f"result would silently lose digits. Pass {name}.astype(numpy.float64) (or complex128).")
    return x


def check_matrix(x, name: str, xp=None):
    x = _as_input_array(x, name)
    xp = xp or be.namespace(x)
    if x.ndim < 2:
        fix = _VECTOR_FIX.get(name, f"reshape it to a matrix, e.g. {name}[:, None]")
        raise LTIInputError(f"{name} must have at least 2 dimensions (..., rows, cols), got shape {_shape_str(x)}; "
                            f"{fix}.")
    if not (xp.isdtype(x.dtype, ("real floating", "complex floating", "integral")) or x.dtype == xp.bool):
        raise LTIInputError(f"{name} has dtype {x.dtype}; pass a real or complex floating array.")
    return x


def broadcast_batch(shapes, names) -> tuple:
    try:
        return tuple(int(s) for s in np.broadcast_shapes(*[tuple(int(d) for d in s) for s in shapes]))
    except ValueError:
        detail = ", ".join(f"{nm} batch {tuple(int(d) for d in s)}" for nm, s in zip(names, shapes))
        raise LTIInputError(f"leading (batch) dimensions do not broadcast: {detail}; "
                            "give every matrix the same leading dimensions.") from None


def dense_system(A, B, C, D=None, *, check_stability: bool = False) -> _Dense:
    """Validate ``(A, B, C, D)`` and return them broadcast, in working precision."""
    sysw = _plain_numpy_system(A, B, C, D)
    if sysw is not None:
        if check_stability:
            require_stable(sysw)
        return sysw
    arrays = [check_matrix(A, "A"), check_matrix(B, "B"), check_matrix(C, "C")]
    if D is not None:
        arrays.append(check_matrix(D, "D"))
    kinds = {be.is_torch(a) for a in arrays}
    if len(kinds) > 1:
        raise LTIInputError("A, B, C, D mix numpy arrays and torch tensors; pass all of one kind.")
    xp = be.namespace(*arrays)
    A, B, C = arrays[:3]
    D = arrays[3] if D is not None else None
    if be.is_torch(A):
        devices = {a.device for a in arrays}
        if len(devices) > 1:
            raise LTIInputError(f"A, B, C, D live on different devices {sorted(map(str, devices))}; move them to one.")
    n = int(A.shape[-1])
    if int(A.shape[-2]) != n:
        raise LTIInputError(f"A must be square (..., n, n), got shape {_shape_str(A)}.")
    if n == 0:
        raise LTIInputError("A has zero states (n = 0); there is nothing to reduce.")
    if int(B.shape[-2]) != n:
        raise LTIInputError(f"B must have n = {n} rows to match A {_shape_str(A)}, got shape {_shape_str(B)}.")
    if int(C.shape[-1]) != n:
        raise LTIInputError(f"C must have n = {n} columns to match A {_shape_str(A)}, got shape {_shape_str(C)}.")
    m, p = int(B.shape[-1]), int(C.shape[-2])
    if D is not None and (int(D.shape[-2]), int(D.shape[-1])) != (p, m):
        raise LTIInputError(f"D must have shape (..., p, m) = (..., {p}, {m}) to match B and C, got {_shape_str(D)}.")
    names = ["A", "B", "C", "D"][: len(arrays)]
    batch = broadcast_batch([a.shape[:-2] for a in arrays], names)
    check_nonempty_batch(batch)
    for a, nm in zip(arrays, names):
        check_finite(xp, a, nm)
    out_dtype = be.result_dtype(xp, *arrays)
    wdt = be.working_dtype(xp, *arrays)

    def prep(x, rows, cols):
        x = xp.astype(x, wdt)
        return xp.broadcast_to(x, batch + (rows, cols))

    A_, B_, C_ = prep(A, n, n), prep(B, n, m), prep(C, p, n)
    D_ = prep(D, p, m) if D is not None else xp.zeros(batch + (p, m), dtype=wdt, device=_device(A))
    sysw = _Dense(xp, A_, B_, C_, D_, batch, out_dtype, A)
    if check_stability:
        require_stable(sysw)
    return sysw


_PLAIN_DTYPES = (np.dtype(np.float64), np.dtype(np.complex128))


def _plain_numpy_system(A, B, C, D):
    """:func:`dense_system` for the common case, or None: one float64/complex128 numpy system, all valid.

    The general path costs ~0.1 ms of namespace and dtype bookkeeping, 5% of a balanced
    truncation at n = 64. Anything unusual (another type, dtype or dimension, a shape
    mismatch, NaN/Inf) returns None, and the general path then runs and raises its errors.
    """
    arrays = (A, B, C) if D is None else (A, B, C, D)
    if any(type(x) is not np.ndarray or x.ndim != 2 or x.dtype not in _PLAIN_DTYPES for x in arrays):
        return None
    n, (nb, m), (p, nc) = A.shape[0], B.shape, C.shape
    if A.shape[1] != n or n == 0 or nb != n or nc != n or (D is not None and D.shape != (p, m)):
        return None
    if not all(np.isfinite(x).all() for x in arrays):
        return None
    cplx = any(x.dtype == np.complex128 for x in arrays)
    dtype = np.complex128 if cplx else np.float64
    out = []
    for x in (A, B, C, np.zeros((p, m), dtype=dtype) if D is None else D):
        # copies, as the general path makes: a result may hand D on, and must not alias the caller's D
        x = x.astype(dtype, copy=True)
        x.flags.writeable = False
        out.append(x)
    return _Dense(be.namespace(A), *out, (), dtype, A)


def _device(x):
    return x.device if be.is_torch(x) else None


def spectral_radius(xp, A):
    """Spectral radius ``max |eig(A)|`` over the last two axes, shape ``(...)``."""
    return xp.max(xp.abs(xp.linalg.eigvals(A)), axis=-1)


# The one stability rule of the library, for dense systems, DiagonalSystem, modal forms and layers that
# load a system: a discrete-time model is accepted iff its spectral radius is below 1 - STABILITY_MARGIN.
# Beyond that the Gramians (sums of powers lam^k up to k ~ 36 / (1 - |lam|)) are not computable in
# double precision, and a pole that close to the circle is one rounding away from an unstable one.
STABILITY_MARGIN = 1e-12
# The fixes the unstable-model messages name; the CLI replaces them by its own options.
SPLIT_FIX = 'give balanced_truncation (or balance, hankel_singular_values) unstable="split"'
SPLIT_ADVICE = f"{SPLIT_FIX}: the unstable part is kept exactly and the stable part reduced."
CONTINUOUS_FIX = 'pass time="continuous" or discretize it first (lti_reduce.discretize)'
MAX_SPECTRAL_RADIUS = 1.0 - STABILITY_MARGIN


def raise_unstable(xp, A, detail: str = "") -> None:
    """Raise :class:`UnstableSystemError` for ``A``, naming its spectral radius and the fixes.

    ``detail`` (the mechanism that found it, e.g. a Gramian iteration that did not converge) is said
    only where the eigenvalues themselves look stable, the one case where it explains something.
    """
    lam = be.to_numpy(xp.linalg.eigvals(A))
    rho = np.max(np.abs(lam), axis=-1) if lam.shape[-1] else np.zeros(lam.shape[:-1])
    worst = float(np.max(rho)) if rho.size else float("nan")
    where, k = "", int(np.argmax(rho)) if rho.size else 0
    if rho.ndim > 0 and rho.size > 1:
        idx = tuple(int(i) for i in np.unravel_index(k, rho.shape))
        where = f" (batch element {idx})"
    if worst < MAX_SPECTRAL_RADIUS:
        raise UnstableSystemError(
            f"the discrete-time Gramians of A could not be computed: {detail}although A's eigenvalues lie inside the "
            f"unit circle (spectral radius {worst:.15g}{where}), its powers grow beyond the float64 range before they "
            "decay (a strongly non-normal A). Scale the state (a better-conditioned realization) or check A.")
    worst_eigenvalues = lam.reshape(-1, lam.shape[-1])[k]  # of the batch element with the largest radius
    continuous = worst_eigenvalues.size > 0 and bool(np.all(worst_eigenvalues.real < 0))
    hint = (f" Its eigenvalues all have negative real parts: if this is a continuous-time model, {CONTINUOUS_FIX}."
            if continuous else "")
    raise UnstableSystemError(
        f"A is not Schur stable: spectral radius {worst:.15g}{where} >= 1 - 1e-12; discrete-time Gramians and H-infinity norms exist "
        f"only for spectral radius < 1.{hint} Check the time step / discretization. To reduce a model with unstable "
        f"poles, {SPLIT_ADVICE}"
    )


def require_stable(sysw: _Dense) -> None:
    rho = be.to_numpy(spectral_radius(sysw.xp, sysw.A))
    if rho.size and not np.all(rho < MAX_SPECTRAL_RADIUS):
        raise_unstable(sysw.xp, sysw.A)


def check_stable_eigenvalues(lam, name: str = "lam", fix: str = "") -> None:
    """Raise :class:`UnstableSystemError` unless every ``|lam| < 1 - 1e-12`` (the library's stability rule).

    Parameters
    ----------
    lam : array (numpy or torch, any shape)
        Eigenvalues (a ``DiagonalSystem``'s ``lam``, a modal form's, or those a layer is about to store).
    name : str
        How the message names them.
    fix : str
        The fix the message suggests (a default one if empty).

    Raises
    ------
    UnstableSystemError
        With the largest ``|lam|`` to 17 digits, if it is ``>= 1 - 1e-12``. NaN counts as unstable.

    Notes
    -----
    The same rule as the dense functions' ``spectral radius < 1 - 1e-12``; layers that load a system
    (``load_system_``) call this before writing, so that every path accepts the same models.
    """
    x = be.as_array(lam, name)
    xp = be.namespace(x)
    if int(np.prod(x.shape)) == 0:
        return
    radius = xp.abs(x)
    ok = bool(xp.all(radius < MAX_SPECTRAL_RADIUS))
    if not ok:
        worst = float(be.to_numpy(xp.max(xp.where(xp.isnan(radius), xp.inf, radius))))
        raise UnstableSystemError(
            f"{name} must satisfy |{name}| < 1 - 1e-12 (a stable discrete-time system; the same rule as the "
            f"dense functions' spectral radius); the largest |{name}| is {worst:.17g}. "
            + (fix or "Clamp or re-parameterize the eigenvalues (e.g. lam = exp(-exp(nu_log) + i theta)).")
        )


def check_rank_tol(rank, tol, n: int):
    """Exactly one of ``rank`` (an int in 1..n) and ``tol`` (a float in (0, 1))."""
    if (rank is None) == (tol is None):
        raise LTIInputError("give exactly one of rank= (the reduced order) and tol= (the fraction of the HSV sum "
                            f"that may be discarded); got rank={rank!r}, tol={tol!r}.")
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
            raise LTIInputError(f"rank must be an integer in 1..{n}, got {rank!r} of type {type(rank).__name__}.")
        if not 1 <= int(rank) <= n:
            raise LTIInputError(f"rank must be in 1..n = 1..{n}, got {int(rank)}.")
        return int(rank), None
    check_tol(tol)
    return None, float(tol)


def check_tol(tol) -> float:
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating, np.integer)):
        raise LTIInputError(f"tol must be a float in (0, 1), got {tol!r} of type {type(tol).__name__}.")
    if not (0.0 < float(tol) < 1.0) or math.isnan(float(tol)):
        raise LTIInputError(f"tol must lie strictly between 0 and 1 (the fraction of the HSV sum that may be "
                            f"discarded, e.g. 1e-2), got {tol!r}.")
    return float(tol)


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise LTIInputError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.")
    return value


# Entry sizes (max |x|) outside [2^-_SCALE_RANGE, 2^_SCALE_RANGE] are scaled by a power of two before a
# computation that squares them (Gramians, H-infinity level sets): beyond ~1e154 squares overflow, below
# ~1e-154 they underflow. Inside the range nothing is scaled, so ordinary inputs give bit-identical results.
_SCALE_RANGE = 200


def power_of_two_exponent(xp, X):
    """``e`` with ``max |X|`` in ``[2^(e-1), 2^e)`` (``math.frexp``), or None for an empty or zero ``X``."""
    if int(np.prod(X.shape)) == 0:
        return None
    top = float(be.to_numpy(xp.max(xp.abs(X))))
    if top == 0.0:
        return None
    return math.frexp(top)[1]


def needs_scaling(e) -> bool:
    return e is not None and abs(e) > _SCALE_RANGE


def scale_by_power_of_two(X, e: int):
    """``X * 2^e``, exact (away from subnormals), in two steps so that ``2^e`` itself never overflows."""
    half = int(e) // 2
    return (X * math.ldexp(1.0, half)) * math.ldexp(1.0, int(e) - half)
