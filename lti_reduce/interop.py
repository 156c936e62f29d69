"""System objects in and out: python-control and scipy.signal models.

The public functions (:func:`~lti_reduce.balanced_truncation`, :func:`~lti_reduce.balance`,
:func:`~lti_reduce.hankel_singular_values`, :func:`~lti_reduce.gramians`,
:func:`~lti_reduce.gramian_factors`, :func:`~lti_reduce.hinf_norm`) accept, in place of the
matrices ``(A, B, C, D)``, one system object:

==========================================  =======================================================
python-control ``StateSpace``               ``dt = 0``: continuous time; ``dt = True`` or ``dt > 0``:
                                            discrete time; ``dt = None`` (unspecified) is refused
python-control ``TransferFunction``         through its state-space realization ``control.ss(G)``
scipy ``signal.StateSpace`` / ``lti`` /     ``lti`` (``dt`` absent): continuous; ``dlti``: discrete
``dlti`` (also transfer-function and
zeros-poles-gain forms)
==========================================  =======================================================

Reduced and balanced models come back as the same kind of object with the same time base
(``dt``), input and output names (python-control), through
:attr:`BalancedTruncationResult.system <lti_reduce.BalancedTruncationResult.system>`.
python-control is never imported by :mod:`lti_reduce` itself: its objects are recognised by
their type's module, and the package is looked up only when one of them is given.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import LTIInputError

__all__: list[str] = []

_TIMES = ("discrete", "continuous")


def is_system_object(x) -> bool:
    """True for a python-control or scipy.signal system (recognised without importing either)."""
    mod = type(x).__module__ or ""
    return mod == "control" or mod.startswith(("control.", "scipy.signal"))


@dataclass(frozen=True)
class SystemInput:
    """The matrices of a system object, its time base, and how to rebuild one of its kind."""

    A: Any
    B: Any
    C: Any
    D: Any
    time: str
    dt: Any  # the object's own time base (python-control: 0, True or a float; scipy: None or dt)
    rebuild: Callable  # (A, B, C, D) -> an object of the user's kind, same dt


def check_time(time) -> str | None:
    if time is None:
        return None
    if time not in _TIMES:
        raise LTIInputError(f"time must be 'discrete' or 'continuous' (or None: discrete for arrays, the time base "
                            f"of a system object), got {time!r}.")
    return time


def unwrap(system, time=None) -> SystemInput:
    """The matrices and time base of a python-control or scipy.signal system object.

    ``time``, if given, must agree with the object's own time base.
    """
    mod = type(system).__module__ or ""
    if mod == "control" or mod.startswith("control."):
        out = _unwrap_control(system)
    else:
        out = _unwrap_scipy(system)
    if time is not None and time != out.time:
        raise LTIInputError(f"time={time!r} contradicts the {type(system).__name__}'s time base (dt={out.dt!r}, "
                            f"{out.time} time); drop time= (the object's time base is used) or convert the model.")
    return out


def _unwrap_control(system) -> SystemInput:
    control = sys.modules["control"]  # the object's own package is loaded: no import happens here
    if isinstance(system, control.TransferFunction):
        ss = control.ss(system)

        def rebuild(A, B, C, D, _dt=system.dt, _like=system):
            return control.tf(_control_ss(control, A, B, C, D, _dt, _like))
    elif isinstance(system, control.StateSpace):
        ss = system

        def rebuild(A, B, C, D, _dt=system.dt, _like=system):
            return _control_ss(control, A, B, C, D, _dt, _like)
    else:
        raise LTIInputError(f"{type(system).__name__} is not a linear time-invariant system lti_reduce can read; "
                            "pass a control.StateSpace or control.TransferFunction (or the matrices A, B, C, D).")
    dt = system.dt
    if dt is None:
        raise LTIInputError(f"the {type(system).__name__} has an unspecified time base (dt=None); give it one: "
                            "dt=0 for continuous time, dt=True or the sampling period for discrete time.")
    time = "continuous" if (dt is not True and dt == 0) else "discrete"
    return SystemInput(np.asarray(ss.A), np.asarray(ss.B), np.asarray(ss.C), np.asarray(ss.D), time, dt, rebuild)


def _control_ss(control, A, B, C, D, dt, like):
    """A python-control ``StateSpace`` with the time base and signal names of ``like``."""
    kw = {}
    for key, attr in (("inputs", "input_labels"), ("outputs", "output_labels")):
        labels = getattr(like, attr, None)
        if labels is not None:
            kw[key] = list(labels)
    return control.ss(A, B, C, D, dt, **kw)


def _unwrap_scipy(system) -> SystemInput:
    from scipy import signal

    if not isinstance(system, (signal.lti, signal.dlti)):
        raise LTIInputError(f"{type(system).__name__} is not a scipy.signal linear system; pass a signal.StateSpace, "
                            "signal.lti or signal.dlti (or the matrices A, B, C, D).")
    discrete = isinstance(system, signal.dlti)
    dt = system.dt if discrete else None
    form = ("ss" if isinstance(system, signal.StateSpace) else
            "tf" if isinstance(system, signal.TransferFunction) else "zpk")
    ss = system if form == "ss" else system.to_ss()

    def rebuild(A, B, C, D, _dt=dt, _form=form):
        kw = {} if _dt is None else {"dt": _dt}
        if _form == "ss":
            return signal.StateSpace(A, B, C, D, **kw)
        if B.shape[1] != 1:
            raise LTIInputError(f"a scipy transfer function has one input; this model has {B.shape[1]}.")
        num, den = signal.ss2tf(A, B, C, D)
        # the leading numerator coefficients are D exactly (ss2tf leaves rounding there, which scipy
        # then reports as badly conditioned coefficients)
        num[:, 0] = D[:, 0]
        while num.shape[1] > 1 and not np.any(num[:, 0]):
            num = num[:, 1:]  # exact zeros only (scipy warns about any leading zero)
        tf = signal.TransferFunction(num if num.shape[0] > 1 else num[0], den, **kw)
        return tf if _form == "tf" else tf.to_zpk()

    mats = [np.atleast_2d(np.asarray(M)) for M in (ss.A, ss.B, ss.C, ss.D)]
    return SystemInput(*mats, "discrete" if discrete else "continuous", dt, rebuild)


def rebuild_system(wrap: SystemInput | None, matrices):
    """``matrices = (A, B, C, D)`` as the user's kind of object (``wrap``), or the tuple itself for arrays."""
    if wrap is None:
        return tuple(matrices)
    return wrap.rebuild(*(np.asarray(M) for M in matrices))
