"""Continuous time with ``rank`` above the numerical order: the order is capped, never zero eigenvalues.

States whose Hankel singular value is at round-off level would enter the reduced ``A`` as eigenvalues at
``s = 0``; SLICOT ``AB09AD`` (``dico='C'``) returns the numerical order ``NR`` instead, and so do we, with an
:class:`~lti_reduce.OrderCappedWarning`. Reference: ``ab09ad``/``ab09nd`` with ``dico='C'``, ``ab13dd``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import reference_control as rc

import lti_reduce as lr

CASES = [("truncate", "sr"), ("truncate", "bfsr"), ("spa", "sr")]


def _issue_system(seed=0, n=40):
    rng = np.random.default_rng(seed)
    A = -np.diag(np.exp(rng.uniform(-1, 1, n)))
    return A, rng.standard_normal((n, 2)), rng.standard_normal((2, n)), np.zeros((2, 2))


@pytest.mark.parametrize("method,projection", CASES)
def test_rank_above_numerical_order_is_capped_to_slicot_nr(slycot, method, projection):
    A, B, C, D = _issue_system()
    nr = rc.balanced_truncation_ab09ad_continuous(A, B, C, D, rank=30)[0].shape[0]
    with pytest.warns(lr.OrderCappedWarning, match="numerical order"):
        res = lr.balanced_truncation(A, B, C, rank=30, time="continuous", method=method, projection=projection)
    assert res.requested_rank == 30
    assert abs(res.rank - nr) <= 1  # the same rule as AB09AD (HSVs above n eps sigma_1)
    assert res.A.shape == (res.rank, res.rank)
    assert np.max(np.linalg.eigvals(res.A).real) < 0  # Hurwitz, as the docstring promises


@pytest.mark.parametrize("method,projection", CASES)
def test_capped_model_has_finite_norm_matching_slicot(slycot, method, projection):
    A, B, C, D = _issue_system()
    with pytest.warns(lr.OrderCappedWarning):
        res = lr.balanced_truncation(A, B, C, rank=30, time="continuous", method=method, projection=projection)
    err = rc.hinf_norm_ab13dd_continuous(*_error_system(A, B, C, D, res.A, res.B, res.C, res.D))
    assert np.isfinite(rc.hinf_norm_ab13dd_continuous(res.A, res.B, res.C, res.D))
    assert err <= float(res.error_bound) + 1e-9 * float(res.hsv[0])


def _error_system(A, B, C, D, Ar, Br, Cr, Dr):
    n, r = A.shape[0], Ar.shape[0]
    Ae = np.block([[A, np.zeros((n, r))], [np.zeros((r, n)), Ar]])
    return Ae, np.vstack([B, Br]), np.hstack([C, -Cr]), D - Dr


def test_non_minimal_system_full_rank_request_is_capped_and_stable():
    rng = np.random.default_rng(3)
    A1 = -np.diag(rng.uniform(0.5, 2.0, 8))
    A = np.block([[A1, np.zeros((8, 8))], [np.zeros((8, 8)), -np.eye(8)]])  # second half uncontrollable
    B = np.vstack([rng.standard_normal((8, 1)), np.zeros((8, 1))])
    C = rng.standard_normal((1, 16))
    with pytest.warns(lr.OrderCappedWarning):
        res = lr.balanced_truncation(A, B, C, rank=16, time="continuous")
    assert res.rank == 8
    assert np.max(np.linalg.eigvals(res.A).real) < 0


def test_rank_within_numerical_order_does_not_warn():
    A, B, C, _ = _issue_system()
    with warnings.catch_warnings():
        warnings.simplefilter("error", lr.OrderCappedWarning)
        res = lr.balanced_truncation(A, B, C, rank=10, time="continuous")
    assert res.rank == res.requested_rank == 10


def test_reduce_from_balance_caps_and_reports():
    A, B, C, _ = _issue_system()
    bal = lr.balance(A, B, C, time="continuous")  # the full-order result: capped, no warning asked for
    with pytest.warns(lr.OrderCappedWarning):
        res = bal.reduce(rank=35)
    assert res.rank < 35 and res.requested_rank == 35
    assert np.max(np.linalg.eigvals(bal.A).real) < 0


def test_states_at_round_off_level_are_refused_in_continuous_time():
    A, B, C, _ = _issue_system()
    bal = lr.balance(A, B, C, time="continuous")
    with pytest.raises(lr.LTIInputError, match="round-off"):
        bal.reduce(states=[0, 1, 39])


def test_discrete_time_keeps_the_requested_order():
    # discrete time: decoupled states are eigenvalues at z = 0, which are stable; the order stays as asked
    A, B, C, _ = _issue_system()
    Ad = np.diag(np.exp(np.diag(A)))
    res = lr.balanced_truncation(Ad, B, C, rank=30)
    assert res.rank == 30
    assert np.max(np.abs(np.linalg.eigvals(res.A))) < 1


def test_split_continuous_caps_the_stable_part_and_keeps_the_unstable_one():
    rng = np.random.default_rng(5)
    As = -np.diag(rng.uniform(0.5, 2.0, 6))
    A = np.block([[As, np.zeros((6, 4))], [np.zeros((4, 6)), -np.eye(4)]])
    A = np.block([[A, np.zeros((10, 1))], [np.zeros((1, 10)), np.array([[0.7]])]])  # one unstable pole
    B = np.vstack([rng.standard_normal((6, 1)), np.zeros((4, 1)), np.ones((1, 1))])  # 4 uncontrollable states
    C = rng.standard_normal((1, 11))
    with pytest.warns(lr.OrderCappedWarning):
        res = lr.balanced_truncation(A, B, C, rank=11, time="continuous", unstable="split")
    assert res.n_unstable == 1 and res.rank == 7 and res.requested_rank == 11
    lam = np.linalg.eigvals(res.A)
    assert np.sum(lam.real > 0) == 1 and np.all(np.abs(lam.real) > 1e-3)  # no eigenvalue at s = 0
