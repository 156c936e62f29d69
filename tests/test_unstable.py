"""Unstable models (``unstable="split"``): the unstable part kept exactly, the stable part reduced.

Reference: SLICOT ``AB09MD`` through slycot (``dico='C'`` with ``alpha=0``, ``dico='D'`` with ``alpha=1``;
inputs padded for slycot 0.7.1's integer workspace, see ``reference_control.py``). Reduced models are compared
by frequency responses at points away from the poles (never realizations), the stable part's HSVs directly.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import reference_control as rc

import lti_reduce as lr


def _unstable_system(seed, time, n=12, nu=3, m=2, p=2):
    """A real system with ``nu`` unstable eigenvalues (one real, the rest in pairs) and ``n - nu`` stable ones."""
    rng = np.random.default_rng(seed)
    As, _, _, _ = rc.stable_system(rng, n - nu, 1, 1, time=time)
    if time == "continuous":
        unstable = [rng.uniform(0.2, 2.0)] + [(rng.uniform(0.1, 1.0), rng.uniform(0.5, 3.0))] * ((nu - 1) // 2)
    else:
        unstable = [rng.choice([-1, 1]) * rng.uniform(1.1, 2.0)] + \
                   [(rng.uniform(0.5, 1.0), rng.uniform(1.0, 1.5))] * ((nu - 1) // 2)
    blocks = [As]
    for u in unstable:
        if np.ndim(u) == 0:
            blocks.append(np.array([[u]]))
        else:
            a, b = u
            blocks.append(np.array([[a, b], [-b, a]]))
    L = np.zeros((n, n))
    k = 0
    for blk in blocks:
        s = blk.shape[0]
        L[k:k + s, k:k + s] = blk
        k += s
    T = rng.standard_normal((n, n))
    A = T @ L @ np.linalg.inv(T)
    return A, rng.standard_normal((n, m)), rng.standard_normal((p, n)), rng.standard_normal((p, m))


def _points(time):
    """Evaluation points off both the stability boundary and the poles' neighbourhoods."""
    if time == "continuous":
        return 1j * np.logspace(-2, 2, 150) + 0.0
    return np.exp(1j * np.linspace(0.01, np.pi - 0.01, 150))


def _dico(time):
    return "C" if time == "continuous" else "D"


TIMES = ["discrete", "continuous"]


@pytest.mark.parametrize("time", TIMES)
def test_default_refuses_unstable_models(time):
    A, B, C, D = _unstable_system(0, time)
    with pytest.raises(lr.UnstableSystemError):
        lr.balanced_truncation(A, B, C, D, rank=6, time=time)
    with pytest.raises(lr.UnstableSystemError):
        lr.hankel_singular_values(A, B, C, time=time)


@pytest.mark.parametrize("time", TIMES)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rank", [4, 7])
def test_split_matches_ab09md(slycot, time, seed, rank):
    A, B, C, D = _unstable_system(seed, time)
    res = lr.balanced_truncation(A, B, C, D, rank=rank, unstable="split", time=time)
    Ar, Br, Cr, ns, hsv = rc.unstable_ab09md(A, B, C, rank=rank, dico=_dico(time))
    assert res.n_unstable == 12 - ns == 3 and res.rank == rank == Ar.shape[0]
    assert np.abs(res.stable_hsv - hsv).max() <= 1e-11 * hsv[0]
    pts = _points(time)
    G_ours = rc.freqresp_points(res.A, res.B, res.C, res.D, pts)
    G_ref = rc.freqresp_points(Ar, Br, Cr, D, pts)
    assert rc.sup_relative_difference(G_ours, G_ref) < 1e-9
    # the error is the stable part's, within its bound, and the unstable poles are kept exactly
    G = rc.freqresp_points(A, B, C, D, pts)
    assert np.linalg.norm(G - G_ours, ord=2, axis=(-2, -1)).max() <= res.error_bound
    assert res.error_bound == pytest.approx(2 * hsv[rank - 3:].sum(), rel=1e-10)
    lam = np.linalg.eigvals(A)
    lam_u = lam[(lam.real > 0) if time == "continuous" else (np.abs(lam) > 1)]
    lam_r = np.linalg.eigvals(res.A)
    assert max(np.min(np.abs(lam_r - z)) for z in lam_u) <= 1e-10 * np.abs(lam_u).max()


@pytest.mark.parametrize("time", TIMES)
def test_split_spa_matches_the_dc_gain(time):
    A, B, C, D = _unstable_system(5, time)
    res = lr.balanced_truncation(A, B, C, D, rank=5, unstable="split", time=time, method="spa")
    dc = 0.0 if time == "continuous" else 1.0
    G0 = rc.freqresp_points(A, B, C, D, [dc])[0]
    assert np.abs(rc.freqresp_points(res.A, res.B, res.C, res.D, [dc])[0] - G0).max() <= 1e-10 * np.abs(G0).max()
    pts = _points(time)
    err = np.linalg.norm(rc.freqresp_points(A, B, C, D, pts) - rc.freqresp_points(res.A, res.B, res.C, res.D, pts),
                         ord=2, axis=(-2, -1)).max()
    assert err <= res.error_bound


@pytest.mark.parametrize("time", TIMES)
def test_rank_counts_the_whole_order_and_tol_the_stable_part(time):
    A, B, C, D = _unstable_system(1, time)
    bal = lr.balance(A, B, C, D, unstable="split", time=time)
    assert bal.rank == 12 and bal.n_unstable == 3
    assert np.all(np.isinf(bal.hsv[:3])) and np.array_equal(bal.hsv[3:], bal.stable_hsv)
    stable_ref = lr.hankel_singular_values(*bal_stable_part(bal), time=time)
    np.testing.assert_allclose(bal.stable_hsv, stable_ref, rtol=0, atol=1e-12 * stable_ref[0])
    res = bal.reduce(tol=1e-2)
    assert res.rank == 3 + int(lr.rank_for_tol(bal.stable_hsv, 1e-2))
    bounds = bal.error_bounds()
    assert bounds.shape == (13,) and np.all(np.isinf(bounds[:3]))
    assert bounds[res.rank] == pytest.approx(res.error_bound, rel=1e-12)
    with pytest.raises(lr.LTIInputError, match="at least 3"):
        bal.reduce(rank=2)
    r3 = bal.reduce(rank=3)  # only the unstable part (+ D): the stable part is cut entirely
    assert r3.A.shape == (3, 3) and r3.error_bound == pytest.approx(2 * bal.stable_hsv.sum())
    hsv = lr.hankel_singular_values(A, B, C, unstable="split", time=time)
    np.testing.assert_array_equal(hsv, bal.hsv)


def bal_stable_part(bal):
    """The stable part ``(A_s, B_s, C_s)`` that the split reduced: ``G - G_u`` realized on its own."""
    return bal._stable_parts[:3]


def test_stable_part_plus_unstable_part_is_the_model():
    A, B, C, D = _unstable_system(2, "continuous")
    bal = lr.balance(A, B, C, D, unstable="split", time="continuous")
    (As, Bs, Cs, Ds), (Au, Bu, Cu) = bal._stable_parts, bal.unstable_part
    pts = _points("continuous")
    G = rc.freqresp_points(A, B, C, D, pts)
    Gs = rc.freqresp_points(As, Bs, Cs, Ds, pts)
    Gu = rc.freqresp_points(Au, Bu, Cu, np.zeros_like(D), pts)
    assert np.abs(G - Gs - Gu).max() <= 1e-11 * np.abs(G).max()
    assert np.all(np.linalg.eigvals(As).real < 0) and np.all(np.linalg.eigvals(Au).real > 0)


def test_a_stable_model_split_is_ordinary_truncation():
    A, B, C, D = rc.stable_system(np.random.default_rng(0), 10, 2, 2, time="discrete")
    a = lr.balanced_truncation(A, B, C, D, rank=4)
    b = lr.balanced_truncation(A, B, C, D, rank=4, unstable="split")
    assert b.n_unstable == 0 and b.separation_condition == 1.0
    np.testing.assert_allclose(b.stable_hsv, a.hsv, rtol=0, atol=1e-13 * a.hsv[0])
    z = _points("discrete")
    assert rc.sup_relative_difference(rc.freqresp_points(b.A, b.B, b.C, b.D, z),
                                      rc.freqresp_points(a.A, a.B, a.C, a.D, z)) < 1e-12


def test_an_all_unstable_model_is_kept():
    A = np.diag([1.5, -2.0])
    res = lr.balanced_truncation(A, np.ones((2, 1)), np.ones((1, 2)), rank=2, unstable="split")
    assert res.n_unstable == 2 and res.error_bound == 0.0
    np.testing.assert_allclose(np.sort(np.linalg.eigvals(res.A).real), [-2.0, 1.5])


@pytest.mark.parametrize("time, pole", [("discrete", 1.0 + 1e-10), ("discrete", 1.0 - 1e-10),
                                        ("continuous", 1e-10), ("continuous", 0.0)])
def test_poles_at_the_boundary_raise_an_error_naming_the_margin(time, pole):
    A, B, C, D = _unstable_system(3, time, n=6, nu=1)
    A = np.block([[A, np.zeros((6, 1))], [np.zeros((1, 6)), np.array([[pole]])]])
    B, C = np.vstack([B, np.ones((1, 2))]), np.hstack([C, np.ones((2, 1))])
    with pytest.raises(lr.LTIInputError, match=r"margin = 1e-08.*margin="):
        lr.balanced_truncation(A, B, C, D, rank=4, unstable="split", time=time)
    # a smaller margin classifies it (margin=0: by the sign; a pole on the boundary is kept exactly)
    res = lr.balanced_truncation(A, B, C, D, rank=4, unstable="split", time=time, margin=0.0)
    kept = res.n_unstable
    assert kept == (2 if (pole >= 1.0 if time == "discrete" else pole >= 0.0) else 1)


def test_bad_margin_and_batches_are_refused():
    A, B, C, D = _unstable_system(0, "discrete")
    with pytest.raises(lr.LTIInputError, match="margin must be"):
        lr.balanced_truncation(A, B, C, D, rank=5, unstable="split", margin=-1.0)
    with pytest.raises(lr.LTIInputError, match="unstable must be"):
        lr.balanced_truncation(A, B, C, D, rank=5, unstable="keep")
    with pytest.raises(lr.LTIInputError, match="one system at a time"):
        lr.balanced_truncation(np.stack([A, A]), np.stack([B, B]), np.stack([C, C]), rank=5, unstable="split")


def test_ill_conditioned_separation_warns():
    eps = 1e-5  # a stable and an unstable pole 2e-5 apart, with nearly parallel eigenvectors
    A = np.array([[1.0 - eps, 1.0], [0.0, 1.0 + eps]])
    with pytest.warns(lr.SplitConditioningWarning, match="condition number"):
        res = lr.balanced_truncation(A, np.ones((2, 1)), np.ones((1, 2)), rank=1, unstable="split", margin=1e-6)
    assert res.separation_condition > 1e8


def test_complex_unstable_model():
    rng = np.random.default_rng(4)
    As, *_ = rc.stable_system(rng, 8, 2, 2, time="discrete", complex_=True)
    A = np.zeros((10, 10), dtype=complex)
    A[:8, :8], A[8, 8], A[9, 9] = As, 1.5j, -1.2 + 0.3j
    T = rng.standard_normal((10, 10)) + 1j * rng.standard_normal((10, 10))
    A = T @ A @ np.linalg.inv(T)
    B = rng.standard_normal((10, 2)) + 1j * rng.standard_normal((10, 2))
    C = rng.standard_normal((2, 10)) + 1j * rng.standard_normal((2, 10))
    res = lr.balanced_truncation(A, B, C, rank=5, unstable="split")
    assert res.n_unstable == 2
    z = np.exp(1j * np.linspace(-np.pi, np.pi, 300, endpoint=False))
    err = np.linalg.norm(rc.freqresp_points(A, B, C, np.zeros((2, 2)), z)
                         - rc.freqresp_points(res.A, res.B, res.C, res.D, z), ord=2, axis=(-2, -1)).max()
    assert err <= res.error_bound
    assert min(abs(np.linalg.eigvals(res.A) - 1.5j)) < 1e-10


def test_python_control_unstable_object(control, slycot):
    A, B, C, D = _unstable_system(6, "continuous")
    G = control.ss(A, B, C, D)
    res = lr.balanced_truncation(G, rank=6, unstable="split")
    red = res.system
    assert isinstance(red, control.StateSpace) and red.dt == 0 and red.nstates == 6
    Ar, Br, Cr, _, _ = rc.unstable_ab09md(A, B, C, rank=6, dico="C")
    pts = _points("continuous")
    assert rc.sup_relative_difference(rc.freqresp_points(red.A, red.B, red.C, red.D, pts),
                                      rc.freqresp_points(Ar, Br, Cr, D, pts)) < 1e-9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = control.balred(G, 6)  # python-control's balred also splits (ab09md) in continuous time
    assert rc.sup_relative_difference(rc.freqresp_points(theirs.A, theirs.B, theirs.C, theirs.D, pts),
                                      rc.freqresp_points(Ar, Br, Cr, D, pts)) < 1e-9


def test_torch_single_system(torch):
    A, B, C, D = _unstable_system(7, "discrete")
    res = lr.balanced_truncation(*(torch.as_tensor(X) for X in (A, B, C, D)), rank=6, unstable="split")
    assert isinstance(res.A, torch.Tensor) and tuple(res.A.shape) == (6, 6)
    ref_res = lr.balanced_truncation(A, B, C, D, rank=6, unstable="split")
    z = _points("discrete")
    assert rc.sup_relative_difference(rc.freqresp_points(*(M.numpy() for M in (res.A, res.B, res.C, res.D)), z),
                                      rc.freqresp_points(ref_res.A, ref_res.B, ref_res.C, ref_res.D, z)) < 1e-12


# ------------------------------------------------------------------------- poles within round-off of the boundary


def _similar(diag, seed):
    T = np.random.default_rng(seed).standard_normal((len(diag), len(diag)))
    return T @ np.diag(diag) @ np.linalg.inv(T)


def test_integrator_in_a_dense_realization_is_kept_exactly_with_margin_zero():
    # eig computes the integrator as -1.05e-16 for this seed: it must not be counted stable
    A = _similar([0.0, -0.5, -2.0, -3.0], 0)
    assert np.max(np.linalg.eigvals(A).real) < 0
    rng = np.random.default_rng(10)
    B, C = rng.standard_normal((4, 1)), rng.standard_normal((1, 4))
    res = lr.balanced_truncation(A, B, C, rank=2, time="continuous", unstable="split", margin=0)
    assert res.n_unstable == 1
    assert np.all(np.isfinite(res.stable_hsv)) and res.stable_hsv[0] < 1e6
    # the bound holds at low frequency, where the integrator dominates
    s = np.array([1e-3j, 1e-1j, 1j, 10j])
    err = rc.freqresp_points(A, B, C, np.zeros((1, 1)), s) - rc.freqresp_points(res.A, res.B, res.C, res.D, s)
    assert np.max(np.abs(err)) <= res.error_bound * (1 + 1e-6) + 1e-9


def test_unit_pole_in_a_dense_discrete_realization_is_kept_exactly_with_margin_zero():
    A = _similar([1.0, 0.5, 0.2, -0.3], 1)  # |lambda| computed as 1 - 7.8e-16
    assert np.max(np.abs(np.linalg.eigvals(A))) < 1
    rng = np.random.default_rng(11)
    B, C = rng.standard_normal((4, 1)), rng.standard_normal((1, 4))
    res = lr.balanced_truncation(A, B, C, rank=2, unstable="split", margin=0)
    assert res.n_unstable == 1
    z = np.exp(1j * np.array([1e-3, 0.1, 1.0, 3.0]))
    err = rc.freqresp_points(A, B, C, np.zeros((1, 1)), z) - rc.freqresp_points(res.A, res.B, res.C, res.D, z)
    assert np.max(np.abs(err)) <= res.error_bound * (1 + 1e-6) + 1e-9


def test_split_failure_on_the_stable_part_does_not_advise_split(monkeypatch):
    from lti_reduce import stable_split

    A = _similar([1.0, 0.5, 0.2, -0.3], 1)
    rng = np.random.default_rng(11)
    B, C = rng.standard_normal((4, 1)), rng.standard_normal((1, 4))
    monkeypatch.setattr(stable_split, "_roundoff", lambda A: 0.0)  # the rounding band off: the pole counts stable
    with pytest.raises(lr.LTIInputError) as info:
        lr.balanced_truncation(A, B, C, rank=2, unstable="split", margin=0)
    msg = str(info.value)
    assert "margin=" in msg and 'unstable="split": the unstable part' not in msg
