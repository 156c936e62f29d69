"""Balanced truncation and singular perturbation approximation of discrete-time systems.

Reduced models are compared through their transfer functions on the unit circle, never through realizations
(two reduced models agree only up to a state transformation). References: SLICOT ``ab09ad`` (truncation) and
``ab09nd`` (SPA) with ``dico='D'``; complex systems through their real realization (see ``reference.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import lti_reduce as lr
import reference as ref
from strategies import batched_systems, build_system, stable_systems

W = ref.unit_circle_grid(256)


def response(A, B, C, D=None, omegas=W):
    return ref.freqresp(*(ref.as_numpy(X) for X in (A, B, C)), None if D is None else ref.as_numpy(D), omegas)


def peak(G) -> float:
    """Largest singular value over a frequency grid of responses ``(k, p, m)``."""
    return float(np.max(np.linalg.norm(G, ord=2, axis=(-2, -1))))


def well_separated_ranks(hsv, *, min_ratio=1e-6, min_gap=1.01):
    """Orders ``r`` at which a reduced model is numerically well defined: ``sigma_r >= min_ratio * sigma_1``
    and a clear gap ``sigma_r >= min_gap * sigma_{r+1}`` (so that the order-r model is unique)."""
    hsv = np.asarray(hsv)
    n = hsv.size
    ok = []
    for r in range(1, n + 1):
        nxt = hsv[r] if r < n else 0.0
        if hsv[r - 1] >= min_ratio * hsv[0] and hsv[r - 1] >= min_gap * nxt:
            ok.append(r)
    return ok


def draw_rank(data, hsv, **kw) -> int:
    ranks = well_separated_ranks(hsv, **kw)
    assume(ranks)
    return data.draw(st.sampled_from(ranks), label="rank")


def rank_rule(hsv, tol) -> int:
    """The documented tol -> rank rule, written out: smallest r with sum(hsv[:r]) >= (1 - tol) * sum(hsv)."""
    total = float(np.sum(hsv))
    for r in range(1, len(hsv) + 1):
        if float(np.sum(hsv[:r])) >= (1 - tol) * total:
            return r
    return len(hsv)


# ---------------------------------------------------------------------------------------------------------------
# Agreement with SLICOT
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("job", ["B", "N"], ids=["square_root", "balancing_free"])
@given(data=st.data(), sys=stable_systems(complex_=False))
def test_truncated_model_has_the_transfer_function_of_slicot_ab09ad(slycot, job, data, sys):
    hsv = ref.as_numpy(lr.hankel_singular_values(sys.A, sys.B, sys.C))
    r = draw_rank(data, hsv)
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=r)
    Ar, Br, Cr, Dr, _ = ref.balanced_truncation_ab09ad(sys.A, sys.B, sys.C, sys.D, rank=r, job=job)
    assert Ar.shape == (r, r) and res.A.shape == (r, r)
    G_ref = response(Ar, Br, Cr, Dr)
    G = response(res.A, res.B, res.C, res.D)
    assert np.max(np.abs(G - G_ref)) <= 1e-7 * peak(G_ref)


@given(data=st.data(), sys=stable_systems(complex_=False))
def test_balancing_free_model_has_the_transfer_function_of_slicot_ab09ad_job_n(slycot, data, sys):
    hsv = ref.as_numpy(lr.hankel_singular_values(sys.A, sys.B, sys.C))
    r = draw_rank(data, hsv)
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=r, projection="bfsr")
    Ar, Br, Cr, Dr, _ = ref.balanced_truncation_ab09ad(sys.A, sys.B, sys.C, sys.D, rank=r, job="N")
    assert res.projection == "bfsr" and res.A.shape == (r, r)
    G_ref = response(Ar, Br, Cr, Dr)
    assert np.max(np.abs(response(res.A, res.B, res.C, res.D) - G_ref)) <= 1e-7 * peak(G_ref)


@given(data=st.data(), sys=stable_systems(structure="generic"))
def test_balancing_free_projection_is_biorthogonal_with_an_orthonormal_right_basis(data, sys):
    import importlib

    balancing = importlib.import_module("lti_reduce.balancing")
    bal = lr.balance(sys.A, sys.B, sys.C, sys.D)
    r = draw_rank(data, ref.as_numpy(bal.hsv))
    W, V = balancing._bfsr_projections(np, bal._dec, r)
    eye = np.eye(r)
    assert np.abs(V.conj().T @ V - eye).max() < 1e-12
    assert np.abs(W.conj().T @ V - eye).max() < 1e-8 * np.linalg.cond(W)
    # same transfer function as the balanced square-root model of the same order
    sr, bf = bal.reduce(rank=r), bal.reduce(rank=r, projection="bfsr")
    G_sr = response(sr.A, sr.B, sr.C, sr.D)
    assert np.max(np.abs(response(bf.A, bf.B, bf.C, bf.D) - G_sr)) <= 1e-8 * peak(G_sr)


@given(data=st.data(), sys=stable_systems(structure="generic", n=(1, 12)))
def test_balancing_free_torch_input_gives_the_numpy_model(torch, data, sys):
    r = draw_rank(data, ref.as_numpy(lr.hankel_singular_values(sys.A, sys.B, sys.C)))
    res_np = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=r, projection="bfsr")
    res_t = lr.balanced_truncation(*(torch.from_numpy(X) for X in (sys.A, sys.B, sys.C, sys.D)), rank=r,
                                   projection="bfsr")
    assert isinstance(res_t.A, torch.Tensor)
    G = response(res_np.A, res_np.B, res_np.C, res_np.D)
    assert np.max(np.abs(response(res_t.A, res_t.B, res_t.C, res_t.D) - G)) <= 1e-9 * peak(G)


def test_balancing_free_projection_refuses_spa_round_off_states_and_unknown_names():
    A = np.diag([0.9, 0.5, 0.1])
    B, C = np.array([[1.0], [1.0], [0.0]]), np.array([[1.0, 1.0, 1.0]])  # the third state is uncontrollable
    with pytest.raises(lr.LTIInputError, match="method='truncate' only"):
        lr.balanced_truncation(A, B, C, rank=1, method="spa", projection="bfsr")
    with pytest.raises(lr.LTIInputError, match="projection must be one of 'sr', 'bfsr'"):
        lr.balanced_truncation(A, B, C, rank=1, projection="balanced")
    with pytest.raises(lr.LTIInputError, match="round-off level"):
        lr.balanced_truncation(A, B, C, rank=3, projection="bfsr")
    res = lr.balanced_truncation(A, B, C, rank=2, projection="bfsr")
    assert res.A.shape == (2, 2) and "projection='bfsr'" in repr(res)
    with pytest.raises(lr.LTIInputError, match="round-off level"):
        res.reduce(states=[0, 2])


@given(data=st.data(), sys=stable_systems(complex_=True, n=(1, 15)))
def test_complex_truncated_model_realified_matches_ab09ad_on_the_real_realization(slycot, data, sys):
    hsv = ref.as_numpy(lr.hankel_singular_values(sys.A, sys.B, sys.C))
    r = draw_rank(data, hsv)
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=r)
    assert np.iscomplexobj(res.A)
    # The real realization has every HSV twice, so its order-2r truncation is the realified order-r one.
    AR, BR, CR, DR = ref.realify_system(sys.A, sys.B, sys.C, sys.D)
    Ar, Br, Cr, Dr, _ = ref.balanced_truncation_ab09ad(AR, BR, CR, DR, rank=2 * r)
    G_ref = response(Ar, Br, Cr, Dr)
    G = response(*ref.realify_system(res.A, res.B, res.C, res.D))
    assert np.max(np.abs(G - G_ref)) <= 1e-7 * peak(G_ref)


@given(data=st.data(), sys=stable_systems(complex_=False))
def test_spa_model_is_the_residualization_of_the_balanced_realization(slycot, data, sys):
    hsv = ref.as_numpy(lr.hankel_singular_values(sys.A, sys.B, sys.C))
    r = draw_rank(data, hsv)
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=r, method="spa")
    Ar, Br, Cr, Dr, _ = ref.spa_balanced_residualization(sys.A, sys.B, sys.C, sys.D, rank=r)
    G_ref = response(Ar, Br, Cr, Dr)
    G = response(res.A, res.B, res.C, res.D)
    assert np.max(np.abs(G - G_ref)) <= 1e-7 * peak(G_ref)


# ab09nd is a reference for minimal systems only (see reference.py); non-minimal ones are covered above.
@given(data=st.data(), sys=stable_systems(complex_=False, structure=("generic", "rank_deficient_b")))
def test_spa_model_has_the_transfer_function_of_slicot_ab09nd(slycot, data, sys):
    hsv = ref.as_numpy(lr.hankel_singular_values(sys.A, sys.B, sys.C))
    r = draw_rank(data, hsv)
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=r, method="spa")
    Ar, Br, Cr, Dr, _ = ref.spa_ab09nd(sys.A, sys.B, sys.C, sys.D, rank=r)
    G_ref = response(Ar, Br, Cr, Dr)
    G = response(res.A, res.B, res.C, res.D)
    assert np.max(np.abs(G - G_ref)) <= 1e-7 * peak(G_ref)


@given(stable_systems())
def test_result_reports_the_hankel_singular_values_of_the_full_model(sys):
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=1)
    hsv = lr.hankel_singular_values(sys.A, sys.B, sys.C)
    assert res.hsv.shape == (sys.n,)
    np.testing.assert_allclose(res.hsv, hsv, rtol=0, atol=1e-13 * hsv[0])


# ---------------------------------------------------------------------------------------------------------------
# Properties of the reduced model
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["truncate", "spa"])
@given(data=st.data(), sys=stable_systems())
def test_reduced_model_is_stable(method, data, sys):
    hsv = ref.as_numpy(lr.hankel_singular_values(sys.A, sys.B, sys.C))
    r = draw_rank(data, hsv, min_ratio=1e-10, min_gap=1.001)
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=r, method=method)
    assert ref.spectral_radius(res.A) < 1


@pytest.mark.parametrize("method", ["truncate", "spa"])
@given(sys=stable_systems())
def test_full_order_reduction_reproduces_the_transfer_function(method, sys):
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=sys.n, method=method)
    G = response(sys.A, sys.B, sys.C, sys.D)
    assert np.max(np.abs(response(res.A, res.B, res.C, res.D) - G)) <= 1e-8 * peak(G)


@given(data=st.data(), sys=stable_systems())
def test_spa_matches_the_dc_gain_exactly(data, sys):
    hsv = ref.as_numpy(lr.hankel_singular_values(sys.A, sys.B, sys.C))
    r = draw_rank(data, hsv)
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=r, method="spa")
    G1 = response(sys.A, sys.B, sys.C, sys.D, [0.0])
    Gr1 = response(res.A, res.B, res.C, res.D, [0.0])
    scale = peak(response(sys.A, sys.B, sys.C, sys.D))
    assert np.max(np.abs(Gr1 - G1)) <= 1e-8 * scale


@given(data=st.data(), sys=stable_systems())
def test_truncation_keeps_the_feedthrough_unchanged(data, sys):
    r = data.draw(st.integers(1, sys.n), label="rank")
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=r)
    np.testing.assert_array_equal(res.D, sys.D)


def test_omitted_feedthrough_is_zero():
    sys = build_system(4, 6, 2, 3, rho=0.9)
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, rank=2)
    assert res.D.shape == (3, 2)
    assert np.all(res.D == 0)


@given(data=st.data(), sys=stable_systems())
def test_spa_model_is_balanced_with_the_leading_hankel_singular_values(data, sys):
    hsv = ref.as_numpy(lr.hankel_singular_values(sys.A, sys.B, sys.C))
    r = draw_rank(data, hsv, min_ratio=1e-4)
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=r, method="spa")
    P, Q = ref.gramians_scipy(res.A, res.B, res.C)
    S = np.diag(hsv[:r])
    assert np.linalg.norm(P - S) <= 1e-7 * hsv[0]
    assert np.linalg.norm(Q - S) <= 1e-7 * hsv[0]


@given(data=st.data(), sys=stable_systems())
def test_truncated_model_gramians_are_bounded_by_the_leading_hankel_singular_values(data, sys):
    # Discrete-time truncation of a balanced model is *not* balanced: its Gramians satisfy
    # Sigma_1 - P_r = A11 (Sigma_1 - P_r) A11^H + A12 Sigma_2 A12^H >= 0, and likewise for Q_r.
    hsv = ref.as_numpy(lr.hankel_singular_values(sys.A, sys.B, sys.C))
    r = draw_rank(data, hsv, min_ratio=1e-4)
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=r)
    P, Q = ref.gramians_scipy(res.A, res.B, res.C)
    S = np.diag(hsv[:r])
    assert np.linalg.eigvalsh(S - (P + P.conj().T) / 2).min() >= -1e-7 * hsv[0]
    assert np.linalg.eigvalsh(S - (Q + Q.conj().T) / 2).min() >= -1e-7 * hsv[0]


@given(stable_systems(structure=("uncontrollable", "unobservable", "both"), n=(3, 20)))
def test_non_minimal_system_reduces_to_its_minimal_order_without_loss(sys):
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=sys.minimal_order)
    G = response(sys.A, sys.B, sys.C, sys.D)
    assert np.max(np.abs(response(res.A, res.B, res.C, res.D) - G)) <= 1e-7 * peak(G)


@given(stable_systems(structure=("uncontrollable", "unobservable", "both"), n=(3, 20)))
def test_rank_above_the_minimal_order_of_a_non_minimal_system_is_allowed_and_stable(sys):
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=sys.n)
    assert res.A.shape == (sys.n, sys.n) and res.rank == sys.n
    assert np.all(np.isfinite(res.A)) and np.all(np.isfinite(res.B)) and np.all(np.isfinite(res.C))
    assert ref.spectral_radius(res.A) < 1
    G = response(sys.A, sys.B, sys.C, sys.D)
    assert np.max(np.abs(response(res.A, res.B, res.C, res.D) - G)) <= 1e-7 * peak(G)


# ---------------------------------------------------------------------------------------------------------------
# Error bounds, reduce(), tol -> rank
# ---------------------------------------------------------------------------------------------------------------


@given(data=st.data(), sys=stable_systems())
def test_error_bound_is_twice_the_sum_of_the_discarded_hankel_singular_values(data, sys):
    r = data.draw(st.integers(1, sys.n), label="rank")
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=r)
    assert res.rank == r
    assert float(res.error_bound) == pytest.approx(2 * float(np.sum(res.hsv[r:])), rel=1e-12, abs=1e-300)


@given(stable_systems())
def test_error_bounds_for_every_order_agree_with_reduce(sys):
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=1)
    bounds = ref.as_numpy(res.error_bounds())
    assert bounds.shape == (sys.n + 1,)
    assert bounds[-1] == 0
    assert bounds[0] == pytest.approx(2 * float(np.sum(res.hsv)), rel=1e-12)
    assert np.all(np.diff(bounds) <= 0)
    for r in range(1, sys.n + 1):
        assert float(res.reduce(rank=r).error_bound) == pytest.approx(bounds[r], rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("method", ["truncate", "spa"])
@given(data=st.data(), sys=stable_systems(n=(2, 30)))
def test_reduce_gives_the_model_a_fresh_call_gives(method, data, sys):
    first = data.draw(st.integers(1, sys.n), label="first rank")
    r = data.draw(st.integers(1, sys.n), label="rank")
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=first, method=method).reduce(rank=r)
    fresh = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=r, method=method)
    assert res.rank == r and res.A.shape == (r, r)
    assert res.method == method
    G = response(fresh.A, fresh.B, fresh.C, fresh.D)
    assert np.max(np.abs(response(res.A, res.B, res.C, res.D) - G)) <= 1e-10 * max(peak(G), 1e-300)


def test_reduce_returns_a_new_result_and_leaves_the_original_alone():
    sys = build_system(7, 8, 2, 2, rho=0.9)
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=5)
    A5 = np.array(res.A)
    other = res.reduce(rank=2)
    assert other is not res
    assert res.rank == 5 and other.rank == 2
    np.testing.assert_array_equal(res.A, A5)


@given(stable_systems(), st.floats(1e-6, 0.9))
def test_tol_selects_the_smallest_rank_keeping_one_minus_tol_of_the_hsv_sum(sys, tol):
    hsv = ref.as_numpy(lr.hankel_singular_values(sys.A, sys.B, sys.C))
    assume(hsv[0] > 0)
    r = lr.rank_for_tol(hsv, tol)
    assert r == rank_rule(hsv, tol)
    assert np.sum(hsv[:r]) >= (1 - tol) * np.sum(hsv)
    assert r == 1 or np.sum(hsv[: r - 1]) < (1 - tol) * np.sum(hsv)
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, tol=tol)
    assert res.rank == r
    assert res.reduce(tol=tol).rank == r


def test_rank_for_tol_on_a_worked_example():
    hsv = np.array([4.0, 3.0, 2.0, 1.0])  # sum 10
    assert lr.rank_for_tol(hsv, 0.25) == 3  # keep >= 7.5: 4 + 3 = 7 is not enough, 9 is
    assert lr.rank_for_tol(hsv, 0.3) == 2  # keep >= 7: exactly 7 counts
    assert lr.rank_for_tol(hsv, 0.05) == 4
    assert lr.rank_for_tol(hsv, 0.99) == 1


def test_rank_for_tol_of_a_batch_is_per_system():
    hsv = np.array([[4.0, 3.0, 2.0, 1.0], [10.0, 0.1, 0.1, 0.0]])
    np.testing.assert_array_equal(lr.rank_for_tol(hsv, 0.25), [3, 1])


@given(batched_systems(), st.floats(1e-4, 0.5))
def test_tol_on_a_batch_uses_the_largest_rank_any_member_needs(sys, tol):
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, tol=tol)
    hsv = ref.as_numpy(res.hsv)
    per_system = [rank_rule(hsv[idx], tol) for idx in np.ndindex(*sys.batch)]
    assert res.rank == max(per_system)


# ---------------------------------------------------------------------------------------------------------------
# Batches and backends
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["truncate", "spa"])
@given(data=st.data(), sys=batched_systems())
def test_batched_reduction_equals_a_loop_over_the_batch(method, data, sys):
    r = data.draw(st.integers(1, sys.n), label="rank")
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=r, method=method)
    assert res.A.shape == sys.batch + (r, r)
    assert res.B.shape == sys.batch + (r, sys.m) and res.C.shape == sys.batch + (sys.p, r)
    assert res.hsv.shape == sys.batch + (sys.n,) and np.shape(res.error_bound) == sys.batch
    assert res.error_bounds().shape == sys.batch + (sys.n + 1,)
    for idx in np.ndindex(*sys.batch):
        one = sys[idx]
        single = lr.balanced_truncation(one.A, one.B, one.C, one.D, rank=r, method=method)
        np.testing.assert_allclose(res.hsv[idx], single.hsv, rtol=0, atol=1e-12 * single.hsv[0])
        assert float(res.error_bound[idx]) == pytest.approx(float(single.error_bound), rel=1e-9, abs=1e-12)
        G = response(single.A, single.B, single.C, single.D)
        Gb = response(res.A[idx], res.B[idx], res.C[idx], res.D[idx])
        assert np.max(np.abs(Gb - G)) <= 1e-9 * peak(G)


@pytest.mark.parametrize("method", ["truncate", "spa"])
@given(data=st.data(), sys=stable_systems(n=(1, 12)))
def test_torch_input_gives_torch_output_with_the_numpy_transfer_function(torch, method, data, sys):
    r = data.draw(st.integers(1, sys.n), label="rank")
    tA, tB, tC, tD = (torch.from_numpy(X) for X in sys.matrices())
    res_t = lr.balanced_truncation(tA, tB, tC, tD, rank=r, method=method)
    res = lr.balanced_truncation(sys.A, sys.B, sys.C, sys.D, rank=r, method=method)
    for X in (res_t.A, res_t.B, res_t.C, res_t.D):
        assert isinstance(X, torch.Tensor) and X.dtype == tA.dtype and X.device == tA.device
    assert isinstance(res_t.hsv, torch.Tensor) and not res_t.hsv.is_complex()
    np.testing.assert_allclose(res_t.hsv.numpy(), res.hsv, rtol=0, atol=ref.cross_path_tol(sys.rho) * res.hsv[0])
    G = response(res.A, res.B, res.C, res.D)
    assert np.max(np.abs(response(res_t.A, res_t.B, res_t.C, res_t.D) - G)) <= 1e-9 * peak(G)


@given(batched_systems(n=(1, 8)))
def test_batched_torch_reduction_equals_batched_numpy(torch, sys):
    r = max(1, sys.n // 2)
    res_t = lr.balanced_truncation(*(torch.from_numpy(X) for X in sys.matrices()), rank=r)
    res = lr.balanced_truncation(*sys.matrices(), rank=r)
    assert tuple(res_t.A.shape) == sys.batch + (r, r)
    for idx in np.ndindex(*sys.batch):
        G = response(res.A[idx], res.B[idx], res.C[idx], res.D[idx])
        Gt = response(res_t.A[idx], res_t.B[idx], res_t.C[idx], res_t.D[idx])
        assert np.max(np.abs(Gt - G)) <= 1e-9 * peak(G)


def test_hankel_singular_values_take_the_arguments_of_a_balanced_truncation_call():
    """``D`` is accepted (and does not change the HSVs), for arrays and with ``time="continuous"``."""
    rng = np.random.default_rng(3)
    A = np.diag([0.9, 0.5, -0.3, 0.1]); B = rng.standard_normal((4, 2)); C = rng.standard_normal((3, 4))
    D = rng.standard_normal((3, 2))
    ref = lr.balanced_truncation(A, B, C, D, rank=2).hsv
    np.testing.assert_allclose(lr.hankel_singular_values(A, B, C, D), ref, rtol=1e-13)
    Ac = np.diag([-1.0, -2.0, -0.5, -3.0])
    np.testing.assert_allclose(lr.hankel_singular_values(Ac, B, C, D, time="continuous"),
                               lr.balanced_truncation(Ac, B, C, D, rank=2, time="continuous").hsv, rtol=1e-13)
