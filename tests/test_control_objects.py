"""python-control and scipy.signal system objects in and out, with their time base kept.

References: python-control itself (``control.gram``, ``control.hsvd``, ``control.norm``, ``control.balred`` for
continuous time, frequency responses ``sys(s)``), SLICOT ``ab09ad``/``ab13dd`` with ``dico='D'`` for discrete
objects (python-control 0.10.2 reduces discrete systems as continuous ones, so its ``balred`` is no
discrete-time reference), and scipy's own conversions.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import reference as ref
import reference_control as rc

import lti_reduce as lr

REPO = Path(__file__).resolve().parents[1]


def _continuous(seed=0, n=10, m=2, p=2):
    return rc.stable_system(np.random.default_rng(seed), n, m, p, time="continuous")


def _discrete(seed=0, n=10, m=2, p=2):
    return rc.stable_system(np.random.default_rng(seed), n, m, p, time="discrete")


def _unit_circle():
    return np.exp(1j * np.linspace(0.0, np.pi, 200))


def _response_control(sys_, points):
    """``sys(s)`` evaluated by python-control, shape ``(k, p, m)``."""
    return np.stack([np.atleast_2d(sys_(s)) for s in points])


# ----------------------------------------------------------------------------------------- python-control


@pytest.mark.parametrize("dt", [True, 0.05])
def test_discrete_statespace_round_trip_keeps_dt_and_names(control, dt):
    A, B, C, D = _discrete()
    G = control.ss(A, B, C, D, dt, inputs=["u1", "u2"], outputs=["y1", "y2"])
    res = lr.balanced_truncation(G, rank=4)
    red = res.system
    assert isinstance(red, control.StateSpace) and red.dt == dt and red.nstates == 4
    assert red.input_labels == ["u1", "u2"] and red.output_labels == ["y1", "y2"]
    assert res.time == "discrete" and res.dt == dt
    # the same reduced model as the array interface, and SLICOT's (dico='D') transfer function
    arr = lr.balanced_truncation(A, B, C, D, rank=4)
    Ar, Br, Cr, Dr, _ = ref.balanced_truncation_ab09ad(A, B, C, D, rank=4)
    z = _unit_circle()
    G_obj = _response_control(red, z)
    assert rc.sup_relative_difference(G_obj, rc.freqresp_points(arr.A, arr.B, arr.C, arr.D, z)) < 1e-12
    assert rc.sup_relative_difference(G_obj, rc.freqresp_points(Ar, Br, Cr, Dr, z)) < 1e-9


def test_continuous_statespace_matches_balred(control):
    A, B, C, D = _continuous()
    G = control.ss(A, B, C, D)
    for method, theirs in (("truncate", "truncate"), ("spa", "matchdc")):
        red = lr.balanced_truncation(G, rank=4, method=method).system
        assert isinstance(red, control.StateSpace) and red.dt == 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref_red = control.balred(G, 4, method=theirs)
        pts = rc.imaginary_axis_grid(A)
        assert rc.sup_relative_difference(_response_control(red, pts), _response_control(ref_red, pts)) < 1e-8


def test_transfer_function_in_transfer_function_out(control):
    A, B, C, D = _continuous(2, n=8, m=1, p=1)
    tf = control.tf(control.ss(A, B, C, D))
    res = lr.balanced_truncation(tf, rank=3)
    red = res.system
    assert isinstance(red, control.TransferFunction) and red.dt == 0
    ss = control.ss(tf)
    arr = lr.balanced_truncation(ss.A, ss.B, ss.C, ss.D, rank=3, time="continuous")
    pts = rc.imaginary_axis_grid(A)
    assert rc.sup_relative_difference(_response_control(red, pts),
                                      rc.freqresp_points(arr.A, arr.B, arr.C, arr.D, pts)) < 1e-8
    # discrete transfer functions keep their sampling period
    tfd = control.tf(control.ss(*_discrete(1, n=6, m=1, p=1), 0.1))
    assert lr.balanced_truncation(tfd, rank=2).system.dt == 0.1


@pytest.mark.parametrize("dt", [0, True])
def test_gramians_match_control_gram(control, dt):
    A, B, C, D = _continuous() if dt == 0 else _discrete()
    G = control.ss(A, B, C, D, dt)
    P, Q = lr.gramians(G)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        Pr, Qr = control.gram(G, "c"), control.gram(G, "o")
    assert np.linalg.norm(P - Pr) <= 1e-10 * np.linalg.norm(Pr)
    assert np.linalg.norm(Q - Qr) <= 1e-10 * np.linalg.norm(Qr)
    Lc, Lo = lr.gramian_factors(G)
    assert np.linalg.norm(Lc @ Lc.T - Pr) <= 1e-10 * np.linalg.norm(Pr)
    assert np.linalg.norm(Lo @ Lo.T - Qr) <= 1e-10 * np.linalg.norm(Qr)


def test_hsv_match_hsvd_and_ab09ad(control, slycot):
    A, B, C, D = _continuous(3)
    hsv = lr.hankel_singular_values(control.ss(A, B, C, D))
    # control.hsvd takes sqrt(eig(P Q)) of the Gramians: the smallest values lose digits (3.6e-9 seen here)
    assert np.abs(hsv - control.hsvd(control.ss(A, B, C, D))).max() <= 1e-7 * hsv[0]
    ref_hsv = ref.hsv_ab09ad(A, B, C, dico="C")  # square-root factors: accurate to O(eps sigma_1)
    assert np.abs(hsv - ref_hsv).max() <= 1e-12 * ref_hsv[0]
    Ad, Bd, Cd, Dd = _discrete(3)
    hsv_d = lr.hankel_singular_values(control.ss(Ad, Bd, Cd, Dd, True))  # control.hsvd refuses discrete systems
    ref_d = ref.hsv_ab09ad(Ad, Bd, Cd, dico="D")
    assert np.abs(hsv_d - ref_d).max() <= 1e-11 * ref_d[0]


@pytest.mark.parametrize("dt", [0, True])
def test_hinf_norm_matches_control_norm(control, slycot, dt):
    A, B, C, D = _continuous(4) if dt == 0 else _discrete(4)
    G = control.ss(A, B, C, D, dt)
    ours = lr.hinf_norm(G)
    assert isinstance(ours, float)
    assert ours == pytest.approx(float(control.norm(G, p="inf")), rel=1e-8)


def test_balance_gives_a_balanced_statespace(control):
    A, B, C, D = _continuous(5)
    bal = lr.balance(control.ss(A, B, C, D))
    Gb = bal.system
    assert isinstance(Gb, control.StateSpace) and Gb.dt == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        P, Q = control.gram(Gb, "c"), control.gram(Gb, "o")
    S = np.diag(bal.hsv)
    assert np.abs(P - S).max() <= 1e-9 * bal.hsv[0] and np.abs(Q - S).max() <= 1e-9 * bal.hsv[0]
    red = bal.reduce(rank=3).system  # cut later: still the user's kind and time base
    assert isinstance(red, control.StateSpace) and red.dt == 0 and red.nstates == 3


def test_object_errors(control):
    A, B, C, D = _discrete()
    with pytest.raises(lr.LTIInputError, match="dt=None"):
        lr.balanced_truncation(control.ss(A, B, C, D, None), rank=2)
    with pytest.raises(lr.LTIInputError, match="contradicts"):
        lr.balanced_truncation(control.ss(A, B, C, D, True), rank=2, time="continuous")
    with pytest.raises(TypeError, match="alone"):
        lr.balanced_truncation(control.ss(A, B, C, D, True), B, C, rank=2)
    nonlinear = control.nlsys(lambda t, x, u, params: -x, None, inputs=1, outputs=1, states=1)
    with pytest.raises(lr.LTIInputError, match="not a linear"):
        lr.hankel_singular_values(nonlinear)
    # a continuous object that is not Hurwitz is refused as such
    with pytest.raises(lr.UnstableSystemError, match="Hurwitz"):
        lr.balanced_truncation(control.ss(np.diag([0.5, -1.0]), np.ones((2, 1)), np.ones((1, 2)), 0), rank=1)


def test_python_control_is_not_imported_by_lti_reduce():
    code = ("import sys, numpy as np, lti_reduce as lr\n"
            "A = np.diag([0.5, 0.2]); B = np.ones((2, 1)); C = np.ones((1, 2))\n"
            "lr.balanced_truncation(A, B, C, rank=1); lr.hinf_norm(A, B, C)\n"
            "lr.balanced_truncation(-A, B, C, rank=1, time='continuous')\n"
            "import scipy.signal as sg\n"
            "lr.balanced_truncation(sg.StateSpace(A, B, C, np.zeros((1, 1)), dt=1.0), rank=1)\n"
            "assert 'control' not in sys.modules, 'python-control was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={"PYTHONPATH": str(REPO),
                                                                           "OMP_NUM_THREADS": "1"})


# ----------------------------------------------------------------------------------------- scipy.signal


def test_scipy_discrete_statespace_and_dlti():
    from scipy import signal

    A, B, C, D = _discrete(6)
    for obj, dt in ((signal.StateSpace(A, B, C, D, dt=0.25), 0.25), (signal.dlti(A, B, C, D), True)):
        res = lr.balanced_truncation(obj, rank=4)
        red = res.system
        assert isinstance(red, signal.StateSpace) and isinstance(red, signal.dlti) and red.dt == dt
        arr = lr.balanced_truncation(A, B, C, D, rank=4)
        z = _unit_circle()
        assert rc.sup_relative_difference(rc.freqresp_points(red.A, red.B, red.C, red.D, z),
                                          rc.freqresp_points(arr.A, arr.B, arr.C, arr.D, z)) < 1e-12


def test_scipy_continuous_lti_and_transfer_function(slycot):
    from scipy import signal

    A, B, C, D = _continuous(7, n=8, m=1, p=1)
    obj = signal.StateSpace(A, B, C, D)
    red = lr.balanced_truncation(obj, rank=3).system
    assert isinstance(red, signal.lti) and isinstance(red, signal.StateSpace)
    Ar, Br, Cr, Dr, _ = rc.balanced_truncation_ab09ad_continuous(A, B, C, D, rank=3)
    pts = rc.imaginary_axis_grid(A)
    assert rc.sup_relative_difference(rc.freqresp_points(red.A, red.B, red.C, red.D, pts),
                                      rc.freqresp_points(Ar, Br, Cr, Dr, pts)) < 1e-9
    tf = obj.to_tf()
    red_tf = lr.balanced_truncation(tf, rank=3).system
    assert isinstance(red_tf, signal.TransferFunction) and isinstance(red_tf, signal.lti)
    w = pts.imag[1:50]
    _, H = signal.freqresp(red_tf, w)
    assert np.abs(H - rc.freqresp_points(Ar, Br, Cr, Dr, 1j * w)[:, 0, 0]).max() <= 1e-8 * np.abs(H).max()
    zpk = lr.balanced_truncation(obj.to_zpk(), rank=3).system
    assert isinstance(zpk, signal.ZerosPolesGain)
    assert lr.hinf_norm(obj) == pytest.approx(rc.hinf_norm_ab13dd_continuous(A, B, C, D), rel=1e-8)
