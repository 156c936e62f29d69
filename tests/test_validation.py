"""Bad input is refused with a ``ValueError`` subclass whose message names the problem (and the fix).

Spec: every input error is a ``ValueError``; an unstable ``A`` (spectral radius >= 1) raises
``lr.UnstableSystemError`` reporting the spectral radius; NaN/Inf, shape mismatches, ``rank`` outside
``1..n``, ``tol`` outside ``(0, 1)``, both or neither of ``rank``/``tol`` and unknown methods are refused;
complex input is never silently cast to real.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import lti_reduce as lr
from strategies import build_system

SYS = build_system(1, 4, 2, 3, rho=0.9)
A, B, C, D = SYS.matrices()

ALL_SYSTEM_FUNCTIONS = {
    "gramians": lambda A, B, C, D: lr.gramians(A, B, C),
    "gramian_factors": lambda A, B, C, D: lr.gramian_factors(A, B, C),
    "hankel_singular_values": lambda A, B, C, D: lr.hankel_singular_values(A, B, C),
    "hankel_norm": lambda A, B, C, D: lr.hankel_norm(A, B, C),
    "balanced_truncation": lambda A, B, C, D: lr.balanced_truncation(A, B, C, D, rank=1),
    "balanced_truncation_spa": lambda A, B, C, D: lr.balanced_truncation(A, B, C, D, rank=1, method="spa"),
    "hinf_norm": lambda A, B, C, D: lr.hinf_norm(A, B, C, D),
}
WITH_D = {"balanced_truncation", "balanced_truncation_spa", "hinf_norm"}
functions = pytest.mark.parametrize("name", sorted(ALL_SYSTEM_FUNCTIONS))


def call(name, A=A, B=B, C=C, D=D):
    return ALL_SYSTEM_FUNCTIONS[name](A, B, C, D)


def test_every_input_error_type_is_a_value_error():
    assert issubclass(lr.UnstableSystemError, ValueError)
    assert issubclass(lr.LTIInputError, ValueError)


# ---------------------------------------------------------------------------------------------------------------
# Stability
# ---------------------------------------------------------------------------------------------------------------


@functions
def test_unstable_A_raises_unstable_system_error_reporting_the_spectral_radius(name):
    unstable = 1.5 / 0.9 * A  # spectral radius exactly 1.5
    with pytest.raises(lr.UnstableSystemError, match=r"spectral radius") as info:
        call(name, A=unstable)
    assert re.search(r"1\.5\d*", str(info.value)), str(info.value)


@functions
@pytest.mark.parametrize("which", ["rotation", "identity", "minus_identity"])
def test_spectral_radius_exactly_one_raises_unstable_system_error(name, which):
    marginal = {
        "rotation": np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]),
        "identity": np.eye(2),
        "minus_identity": -np.eye(2),
    }[which]
    with pytest.raises(lr.UnstableSystemError, match=r"spectral radius"):
        call(name, A=marginal, B=np.ones((2, 1)), C=np.ones((1, 2)), D=np.zeros((1, 1)))


@functions
def test_unstable_mode_that_is_uncontrollable_and_unobservable_still_raises(name):
    # The input never excites x1 and the output never sees it, so a Gramian-based method could converge anyway;
    # the spec is about A: spectral radius >= 1 is refused, whatever B and C are.
    unstable = np.diag([1.5, 0.5])
    with pytest.raises(lr.UnstableSystemError, match=r"1\.5"):
        call(name, A=unstable, B=np.array([[0.0], [1.0]]), C=np.array([[0.0, 1.0]]), D=np.zeros((1, 1)))


def test_unstable_member_of_a_batch_raises():
    batch = np.stack([A, 1.2 / 0.9 * A])
    with pytest.raises(lr.UnstableSystemError, match=r"1\.2"):
        lr.hankel_singular_values(batch, B, C)


def test_unstable_system_error_can_be_caught_as_value_error():
    with pytest.raises(ValueError):
        lr.gramians(2 * np.eye(2), np.ones((2, 1)), np.ones((1, 2)))


# ---------------------------------------------------------------------------------------------------------------
# NaN / Inf
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, matrix", [(f, m) for f in sorted(ALL_SYSTEM_FUNCTIONS) for m in "ABCD"
                                           if m != "D" or f in WITH_D])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_nan_or_inf_in_any_matrix_is_refused_naming_the_matrix(name, matrix, bad):
    mats = dict(A=A.copy(), B=B.copy(), C=C.copy(), D=D.copy())
    mats[matrix][0, 0] = bad
    with pytest.raises(ValueError, match=r"(?i)nan|inf|finite") as info:
        call(name, **mats)
    assert not isinstance(info.value, lr.UnstableSystemError)
    assert re.search(rf"\b{matrix}\b", str(info.value)), str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------------------------


@functions
def test_non_square_A_is_refused(name):
    with pytest.raises(ValueError, match=r"A .*square|square.*A"):
        call(name, A=np.zeros((4, 3)))


@functions
def test_B_with_the_wrong_number_of_rows_is_refused_naming_both_shapes(name):
    with pytest.raises(ValueError, match=r"\bB\b") as info:
        call(name, B=np.ones((3, 2)))
    assert "(3, 2)" in str(info.value) and "4" in str(info.value)


@functions
def test_C_with_the_wrong_number_of_columns_is_refused(name):
    with pytest.raises(ValueError, match=r"\bC\b") as info:
        call(name, C=np.ones((3, 5)))
    assert "(3, 5)" in str(info.value)


@pytest.mark.parametrize("name", sorted(WITH_D))
def test_D_of_the_wrong_shape_is_refused(name):
    with pytest.raises(ValueError, match=r"\bD\b") as info:
        call(name, D=np.ones((2, 3)))
    assert "(2, 3)" in str(info.value)


@functions
def test_vector_instead_of_a_matrix_is_refused(name):
    with pytest.raises(ValueError, match=r"\bB\b"):
        call(name, B=np.ones(4))


def test_batch_dimensions_that_do_not_broadcast_are_refused():
    with pytest.raises(ValueError, match=r"(?i)batch"):
        lr.gramians(np.stack([A, A]), np.stack([B, B, B]), C)


def test_empty_system_is_refused():
    with pytest.raises(ValueError):
        lr.hankel_singular_values(np.zeros((0, 0)), np.zeros((0, 1)), np.zeros((1, 0)))


def test_mixing_numpy_and_torch_is_refused(torch):
    with pytest.raises(ValueError, match=r"(?i)numpy.*torch|torch.*numpy"):
        lr.gramians(torch.from_numpy(A), B, C)


# ---------------------------------------------------------------------------------------------------------------
# rank / tol / method
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [0, -1, 5, 100])
def test_rank_outside_one_to_n_is_refused_naming_the_range(rank):
    with pytest.raises(ValueError, match=r"rank") as info:
        lr.balanced_truncation(A, B, C, D, rank=rank)
    assert "1..4" in str(info.value) or "1 and 4" in str(info.value), str(info.value)
    assert str(rank) in str(info.value)


@pytest.mark.parametrize("rank", [2.0, 2.5, "2", True])
def test_rank_that_is_not_an_integer_is_refused(rank):
    with pytest.raises(ValueError, match=r"rank"):
        lr.balanced_truncation(A, B, C, D, rank=rank)


@pytest.mark.parametrize("tol", [0.0, 1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_tol_outside_the_open_unit_interval_is_refused(tol):
    with pytest.raises(ValueError, match=r"tol"):
        lr.balanced_truncation(A, B, C, D, tol=tol)
    with pytest.raises(ValueError, match=r"tol"):
        lr.rank_for_tol(np.array([3.0, 2.0, 1.0]), tol)


def test_both_rank_and_tol_are_refused():
    with pytest.raises(ValueError, match=r"rank.*tol|tol.*rank"):
        lr.balanced_truncation(A, B, C, D, rank=2, tol=0.1)


def test_neither_rank_nor_tol_is_refused():
    with pytest.raises(ValueError, match=r"rank.*tol|tol.*rank"):
        lr.balanced_truncation(A, B, C, D)


@pytest.mark.parametrize("kwargs", [dict(rank=0), dict(rank=5), dict(tol=0.0), dict(rank=1, tol=0.5), dict()])
def test_reduce_validates_rank_and_tol_like_balanced_truncation(kwargs):
    res = lr.balanced_truncation(A, B, C, D, rank=2)
    with pytest.raises(ValueError, match=r"rank|tol"):
        res.reduce(**kwargs)


@pytest.mark.parametrize("method", ["balanced", "SPA ", "", None])
def test_unknown_method_is_refused_listing_the_valid_ones(method):
    with pytest.raises(ValueError, match=r"method") as info:
        lr.balanced_truncation(A, B, C, D, rank=2, method=method)
    assert "truncate" in str(info.value) and "spa" in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# Complex input is never silently cast to real
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("matrix", ["A", "B", "C", "D"])
def test_a_complex_matrix_makes_the_reduced_model_complex(matrix):
    mats = dict(A=A, B=B, C=C, D=D)
    mats[matrix] = mats[matrix] + 0.01j * np.ones_like(mats[matrix])
    res = lr.balanced_truncation(mats["A"], mats["B"], mats["C"], mats["D"], rank=2)
    for X in (res.A, res.B, res.C, res.D):
        assert np.iscomplexobj(X)
    assert not np.iscomplexobj(res.hsv)


def test_complex_gramians_keep_their_imaginary_part():
    P, _ = lr.gramians(A, B + 0.5j, C)
    assert np.iscomplexobj(P) and np.abs(P.imag).max() > 0


def test_integer_input_is_computed_in_floating_point():
    res = lr.balanced_truncation(np.array([[0, 0], [1, 0]]), np.array([[1], [0]]), np.array([[0, 1]]), rank=1)
    assert np.issubdtype(res.A.dtype, np.floating)
    np.testing.assert_allclose(res.hsv, [1.0, 1.0], atol=1e-12)  # G(z) = z^-2


# ---------------------------------------------------------------------------------------------------------------
# One stability rule for every path (issue 15): spectral radius < 1 - 1e-12
# ---------------------------------------------------------------------------------------------------------------

MARGINAL = [1.0, 1.0 - 1e-15, 1.0 - 1e-13, 1.0 - 1e-12]


def _paths(radius):
    lam = np.array([-radius + 0j, 0.4j])  # |lam| exactly radius
    A_real = np.diag([radius, 0.4])
    ones = (np.ones((2, 1)), np.ones((1, 2)))
    return {
        "dense": lambda: lr.hankel_singular_values(A_real, *ones),
        "diagonal": lambda: lr.DiagonalSystem(lam, *ones, real_output=True),
        "modal": lambda: lr.modal_form(A_real, *ones),
        "check_stable_eigenvalues": lambda: __import__("lti_reduce.validate", fromlist=["x"]).check_stable_eigenvalues(lam),
    }


@pytest.mark.parametrize("path", ["dense", "diagonal", "modal", "check_stable_eigenvalues"])
@pytest.mark.parametrize("radius", MARGINAL, ids=repr)
def test_every_path_refuses_a_radius_within_1e_12_of_the_unit_circle(path, radius):
    with pytest.raises(lr.UnstableSystemError):
        _paths(radius)[path]()


@pytest.mark.parametrize("path", ["dense", "diagonal", "modal", "check_stable_eigenvalues"])
def test_every_path_accepts_a_radius_just_inside_the_rule(path):
    _paths(1.0 - 1e-11)[path]()


def test_check_stable_eigenvalues_takes_torch_tensors_and_names_them(torch):
    from lti_reduce.validate import check_stable_eigenvalues

    radius = 1.0 - 2.0 ** -52
    with pytest.raises(lr.UnstableSystemError, match=r"system\.lam.*" + re.escape(f"{radius:.17g}")):
        check_stable_eigenvalues(torch.tensor([0.5, radius], dtype=torch.float64), "system.lam")
    check_stable_eigenvalues(torch.tensor([0.5 + 0.5j]), "system.lam")


# ---------------------------------------------------------------------------------------------------------------
# rank_for_tol, reduce(states=), hinf_norm(rtol=), discretize(dt=): clear errors (issue 15)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hsv, match", [
    ([3.0, np.nan, 1.0], "NaN or Inf"),
    ([np.inf, 2.0, 1.0], "NaN or Inf"),
    ([3.0, 2.0, -1.0], ">= 0"),
    ([1.0, 2.0, 3.0], "sorted descending"),
    ([1.0 + 1j, 0.5], "real array"),
], ids=["nan", "inf", "negative", "ascending", "complex"])
def test_rank_for_tol_refuses_hsvs_that_are_not_hsvs(hsv, match):
    with pytest.raises(lr.LTIInputError, match=match):
        lr.rank_for_tol(np.array(hsv), 0.1)


def test_rank_for_tol_still_takes_a_batch_with_equal_values():
    assert lr.rank_for_tol(np.array([[2.0, 2.0, 1.0], [1.0, 1.0, 1.0]]), 0.4).tolist() == [2, 2]


@pytest.mark.parametrize("states", [[0.5], [1.0, 2.0], [True], [0, "1"]], ids=repr)
def test_reduce_refuses_state_indices_that_are_not_integers(states):
    res = lr.balanced_truncation(A, B, C, D, rank=2)
    with pytest.raises(lr.LTIInputError, match="integer indices"):
        res.reduce(states=states)


@pytest.mark.parametrize("rtol", [0, 0.0, -1, float("nan"), "x", True, 1.0], ids=repr)
def test_hinf_norm_refuses_an_rtol_outside_the_open_unit_interval(rtol):
    with pytest.raises(lr.LTIInputError, match="rtol must be a float strictly between 0 and 1"):
        lr.hinf_norm(A, B, C, D, rtol=rtol)


@pytest.mark.parametrize("dt", [True, False, np.bool_(True), "0.1", 0.0, -1.0, np.nan, np.inf], ids=repr)
def test_discretize_refuses_a_step_that_is_not_a_positive_number(dt):
    with pytest.raises(lr.LTIInputError, match="dt must be a positive finite step"):
        lr.discretize(-np.eye(2), np.ones((2, 1)), np.ones((1, 2)), dt=dt)


@pytest.mark.parametrize("A_c, dt", [(np.array([[1.0, 0.5], [0.0, 2.0]]), 1e3), (np.array([[-1.0, 0.5], [0.0, -2.0]]), 1e300)],
                         ids=["unstable_A", "huge_dt"])
def test_zero_order_hold_that_overflows_raises_instead_of_returning_nan(A_c, dt):
    with pytest.raises(lr.LTIInputError, match="non-finite model.*smaller dt"):
        lr.discretize(A_c, np.ones((2, 1)), np.ones((1, 2)), dt=dt, method="zoh")


def test_zero_order_hold_of_an_unstable_A_with_a_moderate_step_is_exact():
    # Reference: scipy's cont2discrete (exact for piecewise-constant inputs).
    import scipy.signal

    Ac, Bc, Cc, Dc = np.array([[1.0, 0.5], [0.0, 2.0]]), np.ones((2, 1)), np.ones((1, 2)), np.zeros((1, 1))
    Ad, Bd, _, _ = lr.discretize(Ac, Bc, Cc, Dc, dt=2.0, method="zoh")
    Ad_ref, Bd_ref, *_ = scipy.signal.cont2discrete((Ac, Bc, Cc, Dc), 2.0, method="zoh")
    np.testing.assert_allclose(Ad, Ad_ref, rtol=1e-12)
    np.testing.assert_allclose(Bd, Bd_ref, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# empty inputs (issue 15)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m, p", [(0, 3), (2, 0), (0, 0)])
def test_hinf_norm_of_a_system_without_inputs_or_outputs_is_zero(m, p):
    # The transfer function is the empty p x m matrix, whose norm is 0 (as numpy's norm of an empty matrix).
    out = lr.hinf_norm(A, B[:, :m], C[:p], D[:p, :m])
    assert float(out) == 0.0


def test_hinf_norm_of_a_batch_without_inputs_is_zero_per_system():
    As = np.stack([A, 0.5 * A])
    out = lr.hinf_norm(As, np.zeros((2, 4, 0)), np.stack([C, C]))
    assert out.shape == (2,) and np.all(out == 0.0)


@pytest.mark.parametrize("name", ["hinf_norm", "hankel_singular_values", "balanced_truncation", "gramians"])
def test_a_batch_of_zero_systems_is_refused_clearly(name):
    with pytest.raises(lr.LTIInputError, match="batch is empty"):
        call(name, A=np.zeros((0, 4, 4)), B=np.zeros((0, 4, 2)), C=np.zeros((0, 3, 4)), D=np.zeros((0, 3, 2)))


def test_a_diagonal_batch_of_zero_systems_is_refused_clearly():
    with pytest.raises(lr.LTIInputError, match="batch is empty"):
        lr.DiagonalSystem(np.zeros((0, 3)), np.zeros((0, 3, 1)), np.zeros((0, 1, 3)))


def test_an_unstable_hurwitz_matrix_suggests_continuous_time_and_hides_the_iteration():
    A = np.diag([-1.0, -2.0, -3.0])
    with pytest.raises(lr.UnstableSystemError) as info:
        lr.balanced_truncation(A, np.ones((3, 1)), np.ones((1, 3)), rank=2)
    text = str(info.value)
    assert "spectral radius 3" in text and 'time="continuous"' in text and 'unstable="split"' in text
    assert "did not converge" not in text
    with pytest.raises(lr.UnstableSystemError) as info:
        lr.balanced_truncation(np.diag([1.5, 0.2, -0.3]), np.ones((3, 1)), np.ones((1, 3)), rank=2)
    assert 'time="continuous"' not in str(info.value)  # not all eigenvalues in the left half-plane


def test_a_stable_matrix_whose_powers_overflow_is_refused_without_calling_it_unstable():
    n = 40
    A = 0.5 * np.eye(n) + np.diag(np.full(n - 1, 1e12), 1)  # rho = 0.5, ||A^k|| ~ 1e12^k first
    with pytest.raises(lr.UnstableSystemError, match=r"eigenvalues lie inside the unit circle \(spectral radius 0.5"):
        lr.hankel_singular_values(A, np.ones((n, 1)), np.ones((1, n)))
