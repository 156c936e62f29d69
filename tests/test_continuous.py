"""Continuous-time models (``time="continuous"``): Gramians, HSVs, balanced truncation, SPA, H-infinity norm.

References: SLICOT through slycot with ``dico='C'`` (``sb03md``, ``ab09ad``, ``ab09nd``, ``ab13dd``), scipy's
continuous Lyapunov solver, python-control's ``balred``/``gram`` (continuous time is what they do), and the
SLICOT benchmark models (CD player, ISS) in continuous time, not discretized. Reduced models are compared by
their frequency responses on the imaginary axis, never by their realizations.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import reference_control as rc

import lti_reduce as lr
from lti_reduce import continuous

SEEDS = range(6)


def _system(seed, n=12, m=2, p=3, **kw):
    return rc.stable_system(np.random.default_rng(seed), n, m, p, time="continuous", **kw)


def _lyapunov_residuals(A, B, C, P, Q):
    rp = np.linalg.norm(A @ P + P @ A.conj().T + B @ B.conj().T) / (np.linalg.norm(A) * np.linalg.norm(P))
    rq = np.linalg.norm(A.conj().T @ Q + Q @ A + C.conj().T @ C) / (np.linalg.norm(A) * np.linalg.norm(Q))
    return rp, rq


# ------------------------------------------------------------------------------------------------ Gramians


@pytest.mark.parametrize("seed", SEEDS)
def test_gramians_match_sb03md(slycot, seed):
    A, B, C, _ = _system(seed)
    P, Q = lr.gramians(A, B, C, time="continuous")
    Pr, Qr = rc.gramians_sb03md_continuous(A, B, C)
    assert np.linalg.norm(P - Pr) <= 1e-11 * np.linalg.norm(Pr)
    assert np.linalg.norm(Q - Qr) <= 1e-11 * np.linalg.norm(Qr)
    assert max(_lyapunov_residuals(A, B, C, P, Q)) < 1e-13


@pytest.mark.parametrize("seed", SEEDS)
def test_complex_gramians_match_scipy(seed):
    A, B, C, _ = _system(seed, complex_=True)
    P, Q = lr.gramians(A, B, C, time="continuous")
    Pr, Qr = rc.gramians_scipy_continuous(A, B, C)
    assert np.linalg.norm(P - Pr) <= 1e-11 * np.linalg.norm(Pr)
    assert np.linalg.norm(Q - Qr) <= 1e-11 * np.linalg.norm(Qr)


def test_gramian_factors_reproduce_the_gramians(slycot):
    A, B, C, _ = _system(0)
    Lc, Lo = lr.gramian_factors(A, B, C, time="continuous")
    Pr, Qr = rc.gramians_sb03md_continuous(A, B, C)
    assert np.linalg.norm(Lc @ Lc.T - Pr) <= 1e-11 * np.linalg.norm(Pr)
    assert np.linalg.norm(Lo @ Lo.T - Qr) <= 1e-11 * np.linalg.norm(Qr)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_cayley_map_gives_the_continuous_gramians_for_any_alpha(scale):
    """The theory the module rests on: the mapped discrete Gramians equal the continuous ones for every alpha."""
    A, B, C, D = _system(3)
    sysw = lr.validate.dense_system(A, B, C, D)
    alpha = continuous.cayley_alpha(sysw) * scale
    sysd, _ = continuous.cayley(sysw, alpha)
    Pd, Qd = ref.gramians_scipy(sysd.A, sysd.B, sysd.C)
    Pc, Qc = rc.gramians_scipy_continuous(A, B, C)
    assert np.linalg.norm(Pd - Pc) <= 1e-9 * np.linalg.norm(Pc)
    assert np.linalg.norm(Qd - Qc) <= 1e-9 * np.linalg.norm(Qc)
    # and the same transfer function: G_d(z) = G(s) with s = alpha (z - 1) / (z + 1)
    z = np.exp(1j * np.linspace(0.1, 3.0, 7))
    s = float(alpha) * (z - 1) / (z + 1)
    Gd = rc.freqresp_points(sysd.A, sysd.B, sysd.C, sysd.D, z)
    Gc = rc.freqresp_points(A, B, C, D, s)
    assert np.abs(Gd - Gc).max() <= 1e-10 * np.abs(Gc).max()


# ------------------------------------------------------------------------------------------------ HSVs, BT, SPA


@pytest.mark.parametrize("seed", SEEDS)
def test_hsv_match_ab09ad(slycot, seed):
    A, B, C, _ = _system(seed)
    hsv = lr.hankel_singular_values(A, B, C, time="continuous")
    hsv_ref = ref.hsv_ab09ad(A, B, C, dico="C")
    assert np.abs(hsv - hsv_ref).max() <= 1e-12 * hsv_ref[0]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rank", [3, 6])
def test_truncation_matches_ab09ad_and_keeps_the_bounds(slycot, seed, rank):
    A, B, C, D = _system(seed)
    res = lr.balanced_truncation(A, B, C, D, rank=rank, time="continuous")
    Ar, Br, Cr, Dr, hsv = rc.balanced_truncation_ab09ad_continuous(A, B, C, D, rank=rank)
    pts = rc.imaginary_axis_grid(A)
    G_ours, G_ref = (rc.freqresp_points(*M, pts) for M in ((res.A, res.B, res.C, res.D), (Ar, Br, Cr, Dr)))
    assert rc.sup_relative_difference(G_ours, G_ref) < 1e-9
    assert np.all(np.linalg.eigvals(res.A).real < 0)  # continuous truncation of a balanced system is stable
    err = rc.hinf_norm_ab13dd_continuous(*ref.error_system(A, B, C, D, res.A, res.B, res.C, res.D))
    assert hsv[rank] * (1 - 1e-8) <= err <= float(res.error_bound) * (1 + 1e-8)
    assert float(res.error_bound) == pytest.approx(2 * hsv[rank:].sum(), rel=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
def test_spa_matches_ab09nd_and_the_dc_gain(slycot, seed):
    A, B, C, D = _system(seed)
    res = lr.balanced_truncation(A, B, C, D, rank=4, time="continuous", method="spa")
    Ar, Br, Cr, Dr, _ = rc.spa_ab09nd_continuous(A, B, C, D, rank=4)
    pts = rc.imaginary_axis_grid(A)
    G_ours, G_ref = rc.freqresp_points(res.A, res.B, res.C, res.D, pts), rc.freqresp_points(Ar, Br, Cr, Dr, pts)
    assert rc.sup_relative_difference(G_ours, G_ref) < 1e-9
    G0 = D - C @ np.linalg.solve(A, B)
    assert np.abs(G_ours[0] - G0).max() <= 1e-10 * np.abs(G0).max()  # pts[0] = 0: G_r(0) = G(0)
    err = rc.hinf_norm_ab13dd_continuous(*ref.error_system(A, B, C, D, res.A, res.B, res.C, res.D))
    assert err <= float(res.error_bound) * (1 + 1e-8)


def test_spa_of_a_non_minimal_system_matches_the_minimal_one(slycot):
    """Decoupled (zero-HSV) states have zero rows in A_22; continuous SPA must not divide by them."""
    A, B, C, D = _system(4, n=8)
    n = 8
    Ab = np.zeros((n + 2, n + 2))
    Ab[:n, :n], Ab[n, n], Ab[n + 1, n + 1] = A, -1.0, -2.0
    Bb = np.vstack([B, np.zeros((1, 2)), np.ones((1, 2))])  # state n: uncontrollable; n + 1: unobservable
    Cb = np.hstack([C, np.ones((3, 1)), np.zeros((3, 1))])
    res = lr.balanced_truncation(Ab, Bb, Cb, D, rank=4, time="continuous", method="spa")
    Ar, Br, Cr, Dr, _ = rc.spa_ab09nd_continuous(A, B, C, D, rank=4)
    pts = rc.imaginary_axis_grid(A)
    assert rc.sup_relative_difference(rc.freqresp_points(res.A, res.B, res.C, res.D, pts),
                                      rc.freqresp_points(Ar, Br, Cr, Dr, pts)) < 1e-8


def test_balanced_realization_is_balanced(slycot):
    A, B, C, D = _system(2)
    bal = lr.balance(A, B, C, D, time="continuous")
    P, Q = rc.gramians_sb03md_continuous(bal.A, bal.B, bal.C)
    S = np.diag(bal.hsv)
    assert np.abs(P - S).max() <= 1e-10 * bal.hsv[0] and np.abs(Q - S).max() <= 1e-10 * bal.hsv[0]
    # reduce() of a continuous result stays continuous
    r2 = bal.reduce(rank=3, method="spa")
    assert r2.time == "continuous"
    Ar, Br, Cr, Dr, _ = rc.spa_ab09nd_continuous(A, B, C, D, rank=3)
    pts = rc.imaginary_axis_grid(A)
    assert rc.sup_relative_difference(rc.freqresp_points(r2.A, r2.B, r2.C, r2.D, pts),
                                      rc.freqresp_points(Ar, Br, Cr, Dr, pts)) < 1e-9


def test_complex_truncation_keeps_the_bound():
    A, B, C, D = _system(1, complex_=True)
    res = lr.balanced_truncation(A, B, C, D, rank=5, time="continuous")
    pts = np.concatenate([rc.imaginary_axis_grid(A), -rc.imaginary_axis_grid(A)])  # both signs: complex system
    err = np.linalg.norm(rc.freqresp_points(A, B, C, D, pts) - rc.freqresp_points(res.A, res.B, res.C, res.D, pts),
                         ord=2, axis=(-2, -1)).max()
    assert res.hsv[5] * (1 - 1e-6) <= float(lr.hinf_norm(*ref.error_system(A, B, C, D, res.A, res.B, res.C, res.D),
                                                         time="continuous"))
    assert err <= float(res.error_bound)
    Pr, Qr = rc.gramians_scipy_continuous(A, B, C)
    hsv_ref = np.sort(np.sqrt(np.abs(np.linalg.eigvals(Pr @ Qr))))[::-1]
    assert np.abs(res.hsv - hsv_ref).max() <= 1e-9 * hsv_ref[0]


def test_matches_python_control_balred(control):
    """python-control's balred is a correct continuous-time reference (it hard-codes dico='C')."""
    A, B, C, D = _system(5)
    red = control.balred(control.ss(A, B, C, D), 5)
    res = lr.balanced_truncation(A, B, C, D, rank=5, time="continuous")
    pts = rc.imaginary_axis_grid(A)
    assert rc.sup_relative_difference(rc.freqresp_points(res.A, res.B, res.C, res.D, pts),
                                      rc.freqresp_points(red.A, red.B, red.C, red.D, pts)) < 1e-9


# ------------------------------------------------------------------------------------------------ H-infinity norm


@pytest.mark.parametrize("seed", SEEDS)
def test_hinf_norm_matches_ab13dd(slycot, seed):
    A, B, C, D = _system(seed, spread=30.0)
    ours = float(lr.hinf_norm(A, B, C, D, time="continuous"))
    assert ours == pytest.approx(rc.hinf_norm_ab13dd_continuous(A, B, C, D), rel=1e-8)


def test_hinf_norm_of_a_lightly_damped_resonance(slycot):
    # G(s) = w^2 / (s^2 + 2 zeta w s + w^2): peak 1 / (2 zeta sqrt(1 - zeta^2)) at w sqrt(1 - 2 zeta^2)
    w, zeta = 50.0, 1e-3
    A = np.array([[0.0, 1.0], [-w**2, -2 * zeta * w]])
    B, C, D = np.array([[0.0], [w**2]]), np.array([[1.0, 0.0]]), np.zeros((1, 1))
    exact = 1.0 / (2 * zeta * np.sqrt(1 - zeta**2))
    assert float(lr.hinf_norm(A, B, C, D, time="continuous")) == pytest.approx(exact, rel=1e-9)
    assert rc.hinf_norm_ab13dd_continuous(A, B, C, D) == pytest.approx(exact, rel=1e-9)


# ------------------------------------------------------------------------------------------------ errors, backends


def test_unstable_continuous_model_is_refused_with_its_real_part():
    A = np.diag([-1.0, 0.25])
    with pytest.raises(lr.UnstableSystemError, match=r"Hurwitz.*0\.25"):
        lr.balanced_truncation(A, np.ones((2, 1)), np.ones((1, 2)), rank=1, time="continuous")
    with pytest.raises(lr.UnstableSystemError, match="Hurwitz"):  # an integrator
        lr.gramians(np.diag([-1.0, 0.0]), np.ones((2, 1)), np.ones((1, 2)), time="continuous")
    with pytest.raises(lr.UnstableSystemError, match="Hurwitz"):
        lr.hinf_norm(A, np.ones((2, 1)), np.ones((1, 2)), time="continuous")


def test_a_discrete_stable_matrix_is_not_mistaken_for_continuous():
    A = np.diag([0.5, 0.2])  # Schur stable, not Hurwitz
    lr.balanced_truncation(A, np.ones((2, 1)), np.ones((1, 2)), rank=1)
    with pytest.raises(lr.UnstableSystemError):
        lr.balanced_truncation(A, np.ones((2, 1)), np.ones((1, 2)), rank=1, time="continuous")


def test_bad_time_and_diagonal_systems_are_refused():
    A, B, C, _ = _system(0, n=4)
    with pytest.raises(lr.LTIInputError, match="time must be"):
        lr.hankel_singular_values(A, B, C, time="cont")
    diag = lr.DiagonalSystem(np.array([0.5, 0.2]), np.ones((2, 1)), np.ones((1, 2)))
    with pytest.raises(lr.LTIInputError, match="DiagonalSystem"):
        lr.balanced_truncation(diag, rank=1, time="continuous")


def test_time_discrete_is_the_array_default():
    A, B, C, D = ref.bilinear_discretization(*_system(0, n=6), 0.3)
    a = lr.balanced_truncation(A, B, C, D, rank=3)
    b = lr.balanced_truncation(A, B, C, D, rank=3, time="discrete")
    assert a.time == b.time == "discrete"
    np.testing.assert_array_equal(a.hsv, b.hsv)
    np.testing.assert_allclose(b.A, a.A, rtol=0, atol=0)


def test_torch_batch_matches_numpy(torch):
    systems = [_system(s, n=6) for s in range(3)]
    A, B, C, D = (np.stack([s[i] for s in systems]) for i in range(4))
    res_t = lr.balanced_truncation(*(torch.as_tensor(X) for X in (A, B, C, D)), rank=3, time="continuous",
                                   method="spa")
    assert isinstance(res_t.A, torch.Tensor) and res_t.A.shape == (3, 3, 3)
    pts = rc.imaginary_axis_grid(A[0])
    for i, sys_i in enumerate(systems):
        res_n = lr.balanced_truncation(*sys_i, rank=3, time="continuous", method="spa")
        assert np.abs(ref.as_numpy(res_t.hsv[i]) - res_n.hsv).max() <= 1e-12 * res_n.hsv[0]
        assert rc.sup_relative_difference(
            rc.freqresp_points(*(ref.as_numpy(M[i]) for M in (res_t.A, res_t.B, res_t.C, res_t.D)), pts),
            rc.freqresp_points(res_n.A, res_n.B, res_n.C, res_n.D, pts)) < 1e-10
    h = lr.hinf_norm(*(torch.as_tensor(X) for X in (A, B, C, D)), time="continuous")
    assert isinstance(h, torch.Tensor) and h.shape == (3,)


# ------------------------------------------------------------------------------------------------ benchmark models

MODELS = {"CDplayer": 20, "iss": 10}  # orders with a clear HSV gap (as in test_slicot_models.py)


@pytest.fixture(scope="module", params=sorted(MODELS))
def slicot_model(request):
    return request.param, rc.load_slicot_model(request.param)


def test_benchmark_model_hsv_and_truncation_match_ab09ad(slycot, slicot_model):
    name, (A, B, C, D) = slicot_model
    r = MODELS[name]
    res = lr.balanced_truncation(A, B, C, D, rank=r, time="continuous")
    Ar, Br, Cr, Dr, hsv = rc.balanced_truncation_ab09ad_continuous(A, B, C, D, rank=r)
    assert np.abs(res.hsv - hsv).max() <= 1e-11 * hsv[0]
    pts = rc.imaginary_axis_grid(A)
    G, G_ours, G_ref = (rc.freqresp_points(*M, pts) for M in ((A, B, C, D), (res.A, res.B, res.C, res.D),
                                                               (Ar, Br, Cr, Dr)))
    assert rc.sup_relative_difference(G_ours, G_ref) < 1e-9
    err = np.linalg.norm(G - G_ours, ord=2, axis=(-2, -1)).max()
    assert hsv[r] * 0.99 <= err <= float(res.error_bound)


def test_benchmark_model_spa_matches_ab09nd(slycot, slicot_model):
    name, (A, B, C, D) = slicot_model
    r = MODELS[name]
    res = lr.balanced_truncation(A, B, C, D, rank=r, time="continuous", method="spa")
    Ar, Br, Cr, Dr, _ = rc.spa_ab09nd_continuous(A, B, C, D, rank=r)
    pts = rc.imaginary_axis_grid(A)
    G_ours, G_ref = rc.freqresp_points(res.A, res.B, res.C, res.D, pts), rc.freqresp_points(Ar, Br, Cr, Dr, pts)
    assert rc.sup_relative_difference(G_ours, G_ref) < 1e-9


def test_benchmark_model_hinf_norm_matches_ab13dd(slycot, slicot_model):
    _, (A, B, C, D) = slicot_model
    assert float(lr.hinf_norm(A, B, C, D, time="continuous")) == pytest.approx(
        rc.hinf_norm_ab13dd_continuous(A, B, C, D), rel=1e-9)
