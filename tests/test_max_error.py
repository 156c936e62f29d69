"""``max_error=``: the smallest order whose a-priori bound ``2 * sum(hsv[r:])`` is at most ``e`` (MATLAB's MaxError).

References: the bound against the H-infinity norm of the error system by SLICOT ``ab13dd``; the order against
a direct scan of the HSVs.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import reference_control as rc

import lti_reduce as lr


def _system(seed=0, n=12):
    rng = np.random.default_rng(seed)
    A = np.diag(rng.uniform(-0.9, 0.9, n)) + 0.02 * rng.standard_normal((n, n))
    return A, rng.standard_normal((n, 2)), rng.standard_normal((3, n)), rng.standard_normal((3, 2))


def _smallest_order(hsv, e):
    return next(r for r in range(len(hsv) + 1) if 2 * hsv[r:].sum() <= e)


@pytest.mark.parametrize("e", [1e-8, 1e-3, 0.5, 3.0])
@pytest.mark.parametrize("method", ["truncate", "spa"])
def test_max_error_gives_the_smallest_order_meeting_the_bound(slycot, e, method):
    A, B, C, D = _system()
    res = lr.balanced_truncation(A, B, C, D, max_error=e, method=method)
    hsv = np.asarray(res.hsv)
    assert res.rank == _smallest_order(hsv, e)
    assert float(res.error_bound) <= e
    if res.rank > 0:
        assert 2 * hsv[res.rank - 1:].sum() > e  # one state fewer would not meet it
    Ae, Be, Ce, De = ref.error_system(A, B, C, D, res.A, res.B, res.C, res.D)
    assert ref.hinf_norm_ab13dd(Ae, Be, Ce, De) <= e * (1 + 1e-9)


def test_max_error_above_twice_the_hsv_sum_gives_the_static_gain():
    A, B, C, D = _system()
    hsv = lr.hankel_singular_values(A, B, C)
    res = lr.balanced_truncation(A, B, C, D, max_error=2.0 * hsv.sum() * 1.01)
    assert res.rank == 0 and res.A.shape == (0, 0) and res.B.shape == (0, 2) and res.C.shape == (3, 0)
    np.testing.assert_array_equal(res.D, D)


def test_max_error_order_zero_spa_is_the_dc_gain_continuous(slycot):
    rng = np.random.default_rng(1)
    A = -np.diag(rng.uniform(0.5, 3.0, 6))
    B, C, D = rng.standard_normal((6, 1)), rng.standard_normal((1, 6)), np.zeros((1, 1))
    res = lr.balanced_truncation(A, B, C, D, max_error=1e6, method="spa", time="continuous")
    assert res.rank == 0
    np.testing.assert_allclose(res.D, D - C @ np.linalg.solve(A, B), rtol=1e-12)
    Ae, Be, Ce, De = ref.error_system(A, B, C, D, res.A, res.B, res.C, res.D)
    assert rc.hinf_norm_ab13dd_continuous(Ae, Be, Ce, De) <= float(res.error_bound) * (1 + 1e-9)


def test_reduce_with_max_error_matches_the_direct_call():
    A, B, C, D = _system()
    bal = lr.balance(A, B, C, D)
    assert bal.reduce(max_error=0.1).rank == lr.balanced_truncation(A, B, C, D, max_error=0.1).rank


def test_max_error_on_a_batch_meets_the_bound_for_every_system():
    systems = [_system(s) for s in range(3)]
    A, B, C, D = (np.stack(M) for M in zip(*systems))
    res = lr.balanced_truncation(A, B, C, D, max_error=0.2)
    assert np.all(np.asarray(res.error_bound) <= 0.2)
    assert res.rank == max(_smallest_order(np.asarray(lr.hankel_singular_values(*s[:3])), 0.2) for s in systems)


def test_max_error_with_unstable_split_keeps_the_unstable_part():
    A, B, C, D = _system()
    A = A.copy()
    A[0, 0] = 1.5
    res = lr.balanced_truncation(A, B, C, D, max_error=0.1, unstable="split")
    assert res.n_unstable == 1 and res.error_bound <= 0.1
    assert res.rank == 1 + _smallest_order(res.stable_hsv, 0.1)


@pytest.mark.parametrize("kw", [dict(rank=2), dict(tol=0.1)])
def test_max_error_with_rank_or_tol_is_refused(kw):
    A, B, C, D = _system()
    with pytest.raises(lr.LTIInputError, match="only one of rank=, tol= and max_error="):
        lr.balanced_truncation(A, B, C, D, max_error=0.1, **kw)
    with pytest.raises(lr.LTIInputError, match="only one of"):
        lr.balance(A, B, C, D).reduce(max_error=0.1, **kw)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "0.1", True])
def test_max_error_must_be_positive_and_finite(bad):
    A, B, C, D = _system()
    with pytest.raises(lr.LTIInputError, match="max_error must be"):
        lr.balanced_truncation(A, B, C, D, max_error=bad)
