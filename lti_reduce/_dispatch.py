"""The public functions on system objects, continuous-time models and unstable models.

The public entry points (``balancing``, ``gramians``, ``bounds``) keep their fast path for discrete
arrays and call :func:`routed` first; everything else is resolved here: a python-control or scipy
object is unwrapped (:mod:`lti_reduce.interop`), continuous time goes through the Cayley map
(:mod:`lti_reduce.continuous`), ``unstable="split"`` through :mod:`lti_reduce.stable_split`.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from . import _backend as be
from .errors import LTIInputError
from .interop import check_time, is_system_object, unwrap

__all__: list[str] = []

_UNSTABLE = ("error", "split")


def is_large(A) -> bool:
    """True for a ``scipy.sparse`` matrix or a ``LinearOperator`` (cheap: no import when scipy.sparse is not loaded)."""
    if type(A) is np.ndarray:
        return False
    sparse = sys.modules.get("scipy.sparse")
    if sparse is None:
        return False
    if sparse.issparse(A):
        return True
    linalg = sys.modules.get("scipy.sparse.linalg")
    return linalg is not None and isinstance(A, linalg.LinearOperator)


def _large_options(A, B, C, time, unstable, what: str, method="truncate", projection="sr") -> str:
    """Check what the low-rank path supports; the time base (discrete unless ``time="continuous"``)."""
    kind = "a scipy.sparse matrix" if sys.modules["scipy.sparse"].issparse(A) else "a LinearOperator"
    if B is None or C is None:
        raise TypeError(f"{what} with {kind} A needs B and C: {what}(A, B, C[, D], ...).")
    if unstable != "error":
        raise LTIInputError(f"unstable={unstable!r} needs a dense A (the stable/unstable split is an ordered Schur "
                            f"form); A is {kind}. Pass A.toarray() if n is small, or stabilize the model first.")
    if method != "truncate":
        raise LTIInputError(f"method={method!r} needs the whole balanced realization; A is {kind}, which is reduced "
                            "from low-rank Gramian factors by truncation only (lti_reduce.lowrank). Pass "
                            "method='truncate', or A.toarray() for a dense SPA if n is small.")
    if projection != "sr":
        raise LTIInputError(f"projection={projection!r} is for dense models; A is {kind}, reduced by the square-root "
                            "method from low-rank factors (lti_reduce.lowrank). Pass projection='sr'.")
    return check_time(time) or "discrete"


def large_balanced_truncation(A, B, C, D, *, rank, tol, method, projection, time, unstable, max_error):
    """A sparse or operator ``A``: low-rank balanced truncation (:func:`lti_reduce.lowrank.balanced_truncation`)."""
    from . import lowrank

    time = _large_options(A, B, C, time, unstable, "balanced_truncation", method, projection)
    return lowrank.balanced_truncation(A, B, C, D, rank=rank, tol=tol, max_error=max_error, time=time)


def large_balance(A, B, C, D, *, time, unstable):
    from . import lowrank

    time = _large_options(A, B, C, time, unstable, "balance")
    Fc, Fo = lowrank.gramian_factors(A, B, C, time=time)
    hsv = lowrank._svd(Fc, Fo)[1]
    k = int(np.sum(hsv > 0))
    if k == 0:
        raise LTIInputError("every computed Hankel singular value is zero (B = 0 or C = 0): the transfer function "
                            "is D; there is nothing to balance.")
    return lowrank.balanced_truncation(A, B, C, D, rank=k, time=time)


def large_hankel_singular_values(A, B, C, *, time, unstable):
    from . import lowrank

    time = _large_options(A, B, C, time, unstable, "hankel_singular_values")
    return lowrank.hankel_singular_values(A, B, C, time=time)


def routed(A, time, unstable="error") -> bool:
    """True when the call needs this module (an object, ``time=`` given, or ``unstable="split"``)."""
    return time is not None or unstable != "error" or is_system_object(A)


def _route(A, B, C, D, time, unstable="error"):
    """``(A, B, C, D, time, wrap)`` with the matrices of a system object and the resolved time base."""
    time = check_time(time)
    if unstable not in _UNSTABLE:
        raise LTIInputError(f"unstable must be 'error' (refuse unstable models) or 'split' (keep the unstable part "
                            f"exactly, reduce the stable part), got {unstable!r}.")
    if is_system_object(A):
        if any(x is not None for x in (B, C, D)):
            raise TypeError(f"pass either a system object ({type(A).__name__}) alone or the matrices (A, B, C, D), "
                            "not both.")
        w = unwrap(A, time)
        return w.A, w.B, w.C, w.D, w.time, w
    return A, B, C, D, time or "discrete", None


def _decompose(A, B, C, D, time, wrap):
    from . import balancing, continuous
    from .validate import dense_system

    if time == "continuous":
        continuous.check_no_diagonal(A, "balanced truncation")
        if B is None or C is None:
            raise TypeError("pass the matrices (A, B, C[, D]) or a system object as the only argument.")
        dec = continuous.decompose(dense_system(A, B, C, D))
    else:
        dec = balancing._decompose(A, B, C, D)
    return dataclasses.replace(dec, wrap=wrap) if wrap is not None else dec


def balanced_truncation(A, B, C, D, *, rank, tol, method, projection, time, unstable, margin, max_error=None):
    from . import balancing, stable_split

    A, B, C, D, time, wrap = _route(A, B, C, D, time, unstable)
    balancing.check_choice(method, "method", balancing._METHODS)
    balancing._check_projection(projection, method)
    if unstable == "split":
        bal = stable_split.balance_split(A, B, C, D, time=time, margin=margin, wrap=wrap)
        return bal.reduce(rank=rank, tol=tol, method=method, projection=projection, max_error=max_error)
    dec = _decompose(A, B, C, D, time, wrap)
    r = balancing._resolve_rank(dec.s, rank, tol, dec.sysw.n, max_error)
    return balancing.BalancedTruncationResult(dec, r, method, projection=projection)


def balance(A, B, C, D, *, time, unstable, margin):
    from . import balancing, stable_split

    A, B, C, D, time, wrap = _route(A, B, C, D, time, unstable)
    if unstable == "split":
        return stable_split.balance_split(A, B, C, D, time=time, margin=margin, wrap=wrap)
    dec = _decompose(A, B, C, D, time, wrap)
    return balancing.BalancedTruncationResult(dec, dec.sysw.n, "truncate", warn=False)


def hankel_singular_values(A, B, C, D=None, *, time, unstable, margin):
    from . import stable_split

    A, B, C, D, time, wrap = _route(A, B, C, D, time, unstable)
    if unstable == "split":
        hsv = stable_split.balance_split(A, B, C, D, time=time, margin=margin).hsv
        return hsv if wrap is not None or be.is_numpy(A) else be.from_numpy_like(hsv, A)
    if D is not None and B is not None and C is not None:
        from .validate import dense_system

        dense_system(A, B, C, D)  # D checked though the HSVs ignore it
    dec = _decompose(A, B, C, None, time, None)
    xp = dec.sysw.xp
    s = xp.astype(dec.s, be.real_dtype(xp, dec.sysw.out_dtype))
    return np.asarray(s) if wrap is not None else s


def gramian_factors(A, B, C, *, time, products: bool):
    from . import continuous
    from .gramians import gramian_factors as discrete_factors
    from .gramians import gramians as discrete_gramians

    A, B, C, _, time, _wrap = _route(A, B, C, None, time)
    if time == "discrete":
        return (discrete_gramians if products else discrete_factors)(A, B, C)
    continuous.check_no_diagonal(A, "gramians" if products else "gramian_factors")
    if B is None or C is None:
        raise TypeError("gramians(A, B, C, time='continuous') needs B and C (or a system object alone).")
    from .validate import dense_system

    sysw = dense_system(A, B, C)
    Lc, Lo = continuous.factor_pair(sysw)
    if products:
        Lc, Lo = Lc @ be.mH(Lc), Lo @ be.mH(Lo)
    xp = sysw.xp
    return xp.astype(Lc, sysw.out_dtype), xp.astype(Lo, sysw.out_dtype)


def hinf_norm(A, B, C, D, *, time, rtol, method="level-set"):
    from . import bounds, continuous

    A, B, C, D, time, wrap = _route(A, B, C, D, time)
    if time == "discrete":
        out = bounds.hinf_norm(A, B, C, D, rtol=rtol, method=method)
        return float(out) if wrap is not None else out
    continuous.check_no_diagonal(A, "hinf_norm")
    static = bounds._static_gain_norm(A, B, C, D)
    if static is not None:
        return float(static) if wrap is not None else static
    if B is None or C is None:
        raise TypeError("hinf_norm(A, B, C[, D], time='continuous') needs B and C (or a system object alone).")
    from .validate import dense_system

    sysw = dense_system(A, B, C, D)
    out = continuous.hinf_norm(sysw, rtol, method)
    if wrap is not None:
        return float(out)
    xp = sysw.xp
    return xp.astype(be.from_numpy_like(np.asarray(out), sysw.like), be.real_dtype(xp, sysw.out_dtype))
