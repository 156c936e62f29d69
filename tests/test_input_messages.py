"""Bad or unusual input gets a clear message that names the fix; small gaps in the public functions.

References: the HSVs of python-control (continuous time) and the closed form ``||D||_2`` of a static gain.
"""

from __future__ import annotations

import numpy as np
import pytest

import lti_reduce as lr

A = np.diag([0.5, 0.2])
B = np.ones((2, 1))
C = np.array([[1.0, -2.0]])
D = np.array([[0.3]])


def test_hankel_norm_takes_d_and_time():
    control = pytest.importorskip("control")
    Ac = -np.diag([1.0, 2.0])
    got = lr.hankel_norm(Ac, B, C, D, time="continuous")
    ref = control.hsvd(control.ss(Ac, B, C, D))[0]
    assert got == pytest.approx(ref, rel=1e-12)
    assert lr.hankel_norm(A, B, C, D) == pytest.approx(lr.hankel_singular_values(A, B, C)[0], rel=1e-15)


def test_hsv_perturbation_bound_takes_system_objects():
    control = pytest.importorskip("control")
    A2 = np.diag([0.5, 0.21])
    got = lr.hsv_perturbation_bound(control.ss(A, B, C, D, True), control.ss(A2, B, C, D, True))
    ref = lr.hsv_perturbation_bound((A, B, C), (A2, B, C))
    assert float(got.bound) == pytest.approx(float(ref.bound), rel=1e-12)


def test_hsv_perturbation_bound_refuses_mixed_time_bases():
    control = pytest.importorskip("control")
    with pytest.raises(lr.LTIInputError, match="different time bases"):
        lr.hsv_perturbation_bound(control.ss(-A, B, C, D), control.ss(A, B, C, D, True))


def test_one_dimensional_c_gets_the_row_fix():
    with pytest.raises(lr.LTIInputError, match=r"C\[None, :\]"):
        lr.balanced_truncation(A, B, C[0], rank=1)


def test_one_dimensional_b_gets_the_column_fix():
    with pytest.raises(lr.LTIInputError, match=r"B\[:, None\]"):
        lr.balanced_truncation(A, B[:, 0], C, rank=1)


def test_ragged_list_says_rows_differ():
    with pytest.raises(lr.LTIInputError, match="rows have different lengths"):
        lr.balanced_truncation([[0.5, 0.0], [0.0]], B, C, rank=1)


def test_nested_lists_work():
    res = lr.balanced_truncation(A.tolist(), B.tolist(), C.tolist(), rank=1)
    np.testing.assert_allclose(res.hsv, lr.hankel_singular_values(A, B, C), rtol=1e-14)


@pytest.mark.parametrize("bad,needle", [("abc", "is a string"), (None, "A is None")])
def test_string_or_none_for_a_is_named(bad, needle):
    with pytest.raises(lr.LTIInputError, match=needle):
        lr.balanced_truncation(bad, B, C, rank=1)


def test_hinf_norm_of_a_static_gain_is_the_norm_of_d():
    Dm = np.array([[3.0, 4.0]])
    for time in (None, "continuous"):
        assert lr.hinf_norm(np.zeros((0, 0)), np.zeros((0, 2)), np.zeros((1, 0)), Dm, time=time) == pytest.approx(5.0)


@pytest.mark.parametrize("bad,needle", [(np.ones((3, 3)), "D must have shape"),
                                        (np.array([[np.nan]]), "D contains NaN")])
def test_hankel_singular_values_checks_d(bad, needle):
    with pytest.raises(lr.LTIInputError, match=needle):
        lr.hankel_singular_values(A, B, C, bad)
    with pytest.raises(lr.LTIInputError, match=needle):
        lr.hankel_singular_values(-A, B, C, bad, time="continuous")


def test_masked_entries_are_refused():
    Am = np.ma.masked_array(A, mask=[[0, 1], [0, 0]])
    with pytest.raises(lr.LTIInputError, match="masked entries"):
        lr.balanced_truncation(Am, B, C, rank=1)


def test_masked_array_without_masked_entries_is_used():
    res = lr.balanced_truncation(np.ma.masked_array(A), B, C, rank=1)
    np.testing.assert_allclose(res.hsv, lr.hankel_singular_values(A, B, C), rtol=1e-14)


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8, reason="long double is float64 on this platform")
def test_longdouble_is_refused_with_the_cast_to_make():
    with pytest.raises(lr.LTIInputError, match="extended precision.*astype"):
        lr.balanced_truncation(A.astype(np.longdouble), B, C, rank=1)


@pytest.mark.parametrize("kw,needle", [(dict(gmres_rtol=float("nan")), "gmres_rtol must be"),
                                       (dict(gmres_rtol=0.0), "gmres_rtol must be")])
def test_lowrank_checks_its_gmres_tolerance(kw, needle):
    import scipy.sparse as sp

    from lti_reduce import lowrank

    A = sp.diags([0.5] * 10).tocsc()
    with pytest.raises(lr.LTIInputError, match=needle):
        lowrank.balanced_truncation(A, np.ones((10, 1)), np.ones((1, 10)), rank=1, **kw)


@pytest.mark.parametrize("bad", [float("nan"), -0.1, 1.0, "1e-3"])
def test_compress_columns_checks_its_tolerance(bad):
    from lti_reduce import lowrank

    with pytest.raises(lr.LTIInputError, match="rtol must be"):
        lowrank.compress_columns(np.ones((3, 2)), rtol=bad)
