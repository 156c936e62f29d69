"""Back to modal (diagonal) form: ``modal_form`` and ``BalancedTruncationResult.to_diagonal()``.

Spec (issue 3): a layer stores eigenvalues, so a reduced real system of order ``r`` comes back as a
``DiagonalSystem`` with ``real_output=True``: one complex mode per conjugate pair (``C`` doubled, since
``c z + conj(c z) = Re(2 c z)``) and one mode with real ``lam``, ``B`` row and ``C`` column per real eigenvalue.
Its transfer function

    G(z) = (C (zI - L)^{-1} B + conj(C) (zI - conj L)^{-1} conj(B)) / 2 + D

equals the dense reduced model's up to round-off amplified by ``cond(X)`` (the eigenvector matrix), which is
reported, with a ``ModalConditioningWarning`` when large. ``|lam| < 1`` always. A complex system has no conjugate
symmetry to exploit and comes back with ``real_output=False`` and ``r`` modes.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import lti_reduce as lr
import reference as ref
from strategies import build_system, stable_systems
from test_diagonal import build_diagonal_system, diagonal_systems, real_output_response

GRID = ref.unit_circle_grid(128)


def modal_response(sys: lr.DiagonalSystem, omegas=GRID):
    """Frequency response of a modal system, as the map it computes (real output or not)."""
    lam, B, C = (ref.as_numpy(X) for X in (sys.lam, sys.B, sys.C))
    D = None if sys.D is None else ref.as_numpy(sys.D)
    if sys.real_output:
        return real_output_response(lam, B, C, D, omegas)
    return ref.freqresp(np.diag(lam), B, C, D, omegas)


def relative_response_error(G, G_ref) -> float:
    return float(np.max(np.abs(G - G_ref)) / max(np.max(np.abs(G_ref)), np.finfo(float).tiny))


def modal_quietly(*args, **kwargs):
    """``modal_form`` with its conditioning warning silenced (tests that check the warning call it directly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lr.ModalConditioningWarning)
        return lr.modal_form(*args, **kwargs)


@st.composite
def reduced_real_output_models(draw, **kwargs):
    """A real-output diagonal system and a balanced truncation of it to a drawn rank in ``1..2n``."""
    sys = draw(diagonal_systems(real_output=True, with_D=True, **kwargs))
    rank = draw(st.integers(1, sys.order))
    return sys, lr.balanced_truncation(sys, rank=rank)


# ---------------------------------------------------------------------------------------------------------------
# same transfer function
# ---------------------------------------------------------------------------------------------------------------


@given(reduced_real_output_models())
def test_modal_form_of_a_reduced_model_has_the_dense_reduced_models_frequency_response(case):
    _, res = case
    modal, cond = modal_quietly(res.A, res.B, res.C, res.D)
    G_dense = ref.freqresp(res.A, res.B, res.C, res.D, GRID)
    assert relative_response_error(modal_response(modal), G_dense) < 1e-10 * max(1.0, cond)


@given(reduced_real_output_models(n=(1, 8)))
def test_to_diagonal_is_modal_form_of_the_reduced_model(case):
    _, res = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lr.ModalConditioningWarning)
        modal = res.to_diagonal()
    reference, cond = modal_quietly(res.A, res.B, res.C, res.D)
    assert modal.n == reference.n and modal.real_output
    G = modal_response(modal)
    assert relative_response_error(G, modal_response(reference)) < 1e-12 * max(1.0, cond)


@given(stable_systems(complex_=False, a_kind="gaussian", structure="generic", n=(1, 16)))
def test_modal_form_of_a_real_dense_system_has_its_frequency_response(sys):
    modal, cond = modal_quietly(sys.A, sys.B, sys.C, sys.D)
    assume(cond < 1e8)
    G_ref = ref.freqresp(sys.A, sys.B, sys.C, sys.D, GRID)
    assert relative_response_error(modal_response(modal), G_ref) < 1e-10 * max(1.0, cond)


# ---------------------------------------------------------------------------------------------------------------
# structure: conjugate pairs, real modes, stability, complex systems
# ---------------------------------------------------------------------------------------------------------------


@given(reduced_real_output_models())
def test_conjugate_pairs_collapse_into_one_mode_and_real_eigenvalues_keep_one(case):
    _, res = case
    mu = np.linalg.eigvals(ref.as_numpy(res.A))
    pairs, reals = int(np.sum(mu.imag > 0)), int(np.sum(mu.imag == 0))
    modal, _ = modal_quietly(res.A, res.B, res.C, res.D)
    assert modal.real_output is True
    assert modal.n == pairs + reals


@given(stable_systems(complex_=False, a_kind="gaussian", structure="generic", n=(1, 16)))
def test_real_eigenvalues_give_real_lam_b_and_c(sys):
    modal, _ = modal_quietly(sys.A, sys.B, sys.C, sys.D)
    lam, B, C = (ref.as_numpy(X) for X in (modal.lam, modal.B, modal.C))
    real = lam.imag == 0
    assert int(np.sum(real)) == int(np.sum(np.linalg.eigvals(sys.A).imag == 0))
    assert np.all(B[real].imag == 0) and np.all(C[:, real].imag == 0)
    assert np.all(lam[~real].imag > 0)  # one representative per pair, the upper half plane


def test_a_rotation_scaling_block_becomes_one_complex_mode():
    # x+ = 0.5 [[1, -0.8], [0.8, 1]] x: eigenvalues 0.5 +- 0.4i, one mode with real_output.
    A = np.array([[0.5, -0.4], [0.4, 0.5]])
    B = np.array([[1.0], [0.0]])
    C = np.array([[0.0, 1.0]])
    modal, cond = lr.modal_form(A, B, C)
    assert modal.n == 1 and modal.real_output
    np.testing.assert_allclose(modal.lam, [0.5 + 0.4j], rtol=1e-14)
    # 1-norm condition number of the unitary eigenvector matrix [[1, 1], [-i, i]] / sqrt(2)
    assert cond == pytest.approx(2.0)
    assert relative_response_error(modal_response(modal), ref.freqresp(A, B, C, None, GRID)) < 1e-14


@given(reduced_real_output_models(near_unit=True))
def test_modal_eigenvalues_are_inside_the_unit_circle(case):
    _, res = case
    modal, _ = modal_quietly(res.A, res.B, res.C, res.D)
    assert np.all(np.abs(ref.as_numpy(modal.lam)) < 1.0)


@pytest.mark.parametrize("radius", [1.0, 1.0 - 1e-15, 1.0 - 1e-13], ids=["1", "1-1e-15", "1-1e-13"])
def test_an_eigenvalue_within_1e_12_of_the_unit_circle_is_refused_like_on_the_dense_path(radius):
    # One stability rule (issue 15): modal_form used to pull such eigenvalues back to 1 - 1e-9 with a warning,
    # while the dense functions raise. The dense path is the reference here.
    A = np.diag([radius, 0.3])
    with pytest.raises(lr.UnstableSystemError):
        lr.hankel_singular_values(A, np.ones((2, 1)), np.ones((1, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(lr.UnstableSystemError, match=re.escape(f"{radius:.17g}")):
            lr.modal_form(A, np.ones((2, 1)), np.ones((1, 2)))


def test_an_eigenvalue_just_inside_the_rule_is_kept_unchanged():
    A = np.diag([1.0 - 1e-11, 0.3])
    modal, _ = lr.modal_form(A, np.ones((2, 1)), np.ones((1, 2)))
    np.testing.assert_allclose(np.sort(np.abs(modal.lam)), [0.3, 1.0 - 1e-11], rtol=1e-15)


@pytest.mark.parametrize("cond_warn", [np.nan, "x", True, 0.0, -1.0], ids=repr)
def test_cond_warn_that_is_not_a_positive_number_is_refused(cond_warn):
    with pytest.raises(lr.LTIInputError, match="cond_warn must be a positive number"):
        lr.modal_form(np.diag([0.5, 0.3]), np.ones((2, 1)), np.ones((1, 2)), cond_warn=cond_warn)


def test_cond_warn_inf_never_warns():
    A, B, C = nearly_defective(1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lr.modal_form(A, B, C, cond_warn=np.inf)


@pytest.mark.parametrize("m, p", [(0, 2), (2, 0), (0, 0)])
def test_no_inputs_or_no_outputs_give_an_empty_modal_system(m, p):
    # Reference: the modes of A (its eigenvalues) with empty B / C; the transfer function is the empty matrix.
    A = np.array([[0.5, -0.4], [0.4, 0.5]])
    modal, cond = lr.modal_form(A, np.ones((2, m)), np.ones((p, 2)))
    assert modal.B.shape == (1, m) and modal.C.shape == (p, 1) and modal.D.shape == (p, m)
    np.testing.assert_allclose(np.sort_complex(np.concatenate([modal.lam, modal.lam.conj()])),
                               np.sort_complex(np.linalg.eigvals(A)), atol=1e-15)


def test_a_batch_of_zero_systems_is_refused_clearly():
    with pytest.raises(lr.LTIInputError, match="batch is empty"):
        lr.modal_form(np.zeros((0, 2, 2)), np.zeros((0, 2, 1)), np.zeros((0, 1, 2)))


def test_a_marginal_mode_of_a_diagonal_layer_reduces_to_a_stable_modal_layer():
    # A layer whose slowest mode sits 1e-11 inside the unit circle (real lam, complex B and C): after
    # reduction the modal eigenvalues must still be storable, |lam| < 1.
    rng = np.random.default_rng(0)
    lam = np.array([1.0 - 1e-11, 0.5j, 0.9 * np.exp(0.5j), -0.3 + 0j])
    B = rng.standard_normal((4, 2)) + 1j * rng.standard_normal((4, 2))
    C = rng.standard_normal((2, 4)) + 1j * rng.standard_normal((2, 4))
    res = lr.balanced_truncation(lr.DiagonalSystem(lam, B, C, real_output=True), rank=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        modal = res.to_diagonal()
    assert np.all(np.abs(modal.lam) < 1.0)


@given(diagonal_systems(real_output=False, lam_kind="complex", n=(1, 10)), st.data())
def test_complex_systems_give_real_output_false_with_one_mode_per_state(sys, data):
    rank = data.draw(st.integers(1, sys.n))
    res = lr.balanced_truncation(sys, rank=rank)
    modal, cond = modal_quietly(res.A, res.B, res.C, res.D)
    assert modal.real_output is False and modal.n == rank
    G_dense = ref.freqresp(res.A, res.B, res.C, res.D, GRID)
    assert relative_response_error(modal_response(modal), G_dense) < 1e-10 * max(1.0, cond)


@pytest.mark.parametrize("seed", range(3))
def test_real_modal_form_equals_the_complex_eigendecomposition(seed):
    # Reference: numpy's complex eig with X^{-1} B and C X, pairs collapsed by hand; the modal form works on
    # LAPACK's real eigenvector matrix instead. Residues C_j B_j are independent of eigenvector scaling.
    rng = np.random.default_rng(seed)
    r, m, p = 90, 3, 2
    A = rng.standard_normal((r, r))
    A *= 0.9 / np.max(np.abs(np.linalg.eigvals(A)))
    B, C, D = rng.standard_normal((r, m)), rng.standard_normal((p, r)), rng.standard_normal((p, m))
    modal, cond = modal_quietly(A, B, C, D)
    mu, X = np.linalg.eig(A)
    X_inv = np.linalg.inv(X)
    assert cond == pytest.approx(np.linalg.norm(X, 1) * np.linalg.norm(X_inv, 1), rel=1e-8)
    keep = mu.imag >= 0
    assert np.any(mu.imag == 0) and np.any(mu.imag > 0)  # both kinds of mode occur
    scale = np.where(mu.imag > 0, 2.0, 1.0)
    res_ref = np.einsum("pj,jm->jpm", (C @ X)[:, keep] * scale[keep], (X_inv @ B)[keep])
    lam, Bm, Cm = modal.lam, modal.B, modal.C
    assert lam.shape == (int(keep.sum()),)
    match = [int(np.argmin(np.abs(mu[keep] - z))) for z in lam]
    assert sorted(match) == list(range(len(lam)))
    np.testing.assert_allclose(lam, mu[keep][match], rtol=0, atol=1e-12)
    res = np.einsum("pj,jm->jpm", Cm, Bm)
    assert np.max(np.abs(res - res_ref[match])) < 1e-12 * cond * np.max(np.abs(res_ref))
    real = lam.imag == 0
    assert np.all(Bm[real].imag == 0) and np.all(Cm[:, real].imag == 0)


def test_to_diagonal_of_a_complex64_layer_matches_the_double_precision_reduced_model():
    # to_diagonal starts from the reduced model before its cast to single precision.
    sys = build_diagonal_system(2, 24, 3, 3, rho=0.99, real_output=True, with_D=True, gamma_normalized=True)
    single = lr.DiagonalSystem(sys.lam.astype(np.complex64), sys.B.astype(np.complex64),
                               sys.C.astype(np.complex64), sys.D.astype(np.float32), real_output=True)
    modal = quiet_to_diagonal(lr.balanced_truncation(single, rank=20))
    assert modal.lam.dtype == modal.B.dtype == modal.C.dtype == np.complex64 and modal.D.dtype == np.float32
    double = lr.DiagonalSystem(*(np.asarray(X, np.complex128) for X in (single.lam, single.B, single.C)),
                               np.asarray(single.D, np.float64), real_output=True)
    res = lr.balanced_truncation(double, rank=20)
    assert relative_response_error(modal_response(modal), ref.freqresp(res.A, res.B, res.C, res.D, GRID)) < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# conditioning
# ---------------------------------------------------------------------------------------------------------------


def nearly_defective(delta: float):
    """A Jordan-like block with eigenvalues 0.5 and 0.5 + delta: cond(X) ~ 1 / delta."""
    return np.array([[0.5, 1.0], [0.0, 0.5 + delta]]), np.array([[1.0], [1.0]]), np.array([[1.0, 0.0]])


def test_an_ill_conditioned_eigenvector_matrix_warns_and_reports_its_condition_number():
    A, B, C = nearly_defective(1e-9)
    with pytest.warns(lr.ModalConditioningWarning, match="condition number"):
        _, cond = lr.modal_form(A, B, C)
    _, X = np.linalg.eig(A)
    assert cond == pytest.approx(np.linalg.cond(X), rel=1e-6)
    assert cond > 1e8


def test_the_conditioning_threshold_is_configurable():
    A, B, C = nearly_defective(1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error", lr.ModalConditioningWarning)
        lr.modal_form(A, B, C, cond_warn=1e12)
    with pytest.warns(lr.ModalConditioningWarning):
        lr.modal_form(*nearly_defective(1e-3), cond_warn=10.0)


def test_a_well_conditioned_modal_form_does_not_warn():
    A, B, C = nearly_defective(0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, cond = lr.modal_form(A, B, C)
    assert cond < 1e3


def test_to_diagonal_warns_on_an_ill_conditioned_reduced_model():
    # An order-2 "reduced model" that is nearly defective: to_diagonal goes through the same check.
    A, B, C = nearly_defective(1e-9)
    res = lr.balance(A, B, C)
    assert res.rank == 2
    with pytest.warns(lr.ModalConditioningWarning):
        res.to_diagonal()


def test_a_defective_state_matrix_has_no_modal_form():
    A, B, C = nearly_defective(0.0)
    with pytest.raises(lr.LTIInputError, match="defective"):
        lr.modal_form(A, B, C)


# ---------------------------------------------------------------------------------------------------------------
# backends, dtypes, batches, bad input
# ---------------------------------------------------------------------------------------------------------------


def test_torch_input_gives_a_torch_modal_system_in_matching_precision(torch):
    A = torch.tensor([[0.5, -0.4], [0.4, 0.5]], dtype=torch.float32)
    modal, _ = lr.modal_form(A, torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0, 1.0]]))
    assert isinstance(modal.lam, torch.Tensor)
    assert modal.lam.dtype == modal.B.dtype == modal.C.dtype == torch.complex64
    assert modal.D.dtype == torch.float32


def test_to_diagonal_of_a_complex64_torch_layer_keeps_complex64(torch):
    sys = build_diagonal_system(3, 6, 2, 2, rho=0.95, real_output=True)
    single = lr.DiagonalSystem(*(torch.from_numpy(X).to(torch.complex64) for X in (sys.lam, sys.B, sys.C)),
                               real_output=True)
    modal = quiet_to_diagonal(lr.balanced_truncation(single, rank=4))
    assert modal.lam.dtype == torch.complex64 and modal.real_output
    assert np.all(np.abs(modal.lam.numpy()) < 1.0)


def quiet_to_diagonal(res):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lr.ModalConditioningWarning)
        return res.to_diagonal()


def test_a_batch_with_equal_mode_counts_equals_a_loop():
    members = [build_system(s, 5, 2, 2, rho=0.9, a_kind="modal") for s in range(40)]
    counts = {}
    for s in members:
        counts.setdefault(int(np.sum(np.linalg.eigvals(s.A).imag >= 0)), []).append(s)
    same = max(counts.values(), key=len)[:3]
    assert len(same) == 3
    A, B, C, D = (np.stack([getattr(s, name) for s in same]) for name in "ABCD")
    batch, cond = modal_quietly(A, B, C, D)
    assert cond.shape == (3,)
    for i, s in enumerate(same):
        one, _ = modal_quietly(s.A, s.B, s.C, s.D)
        G = modal_response(lr.DiagonalSystem(batch.lam[i], batch.B[i], batch.C[i], batch.D[i], real_output=True))
        assert relative_response_error(G, modal_response(one)) < 1e-12


def test_a_batch_with_different_mode_counts_raises():
    A = np.stack([np.diag([0.5, 0.3]), np.array([[0.5, -0.4], [0.4, 0.5]])])  # 2 real modes vs 1 pair
    with pytest.raises(lr.LTIInputError, match="different numbers of modes"):
        lr.modal_form(A, np.ones((2, 2, 1)), np.ones((2, 1, 2)))


def test_an_unstable_state_matrix_raises():
    with pytest.raises(lr.UnstableSystemError, match="spectral radius"):
        lr.modal_form(np.diag([1.01, 0.2]), np.ones((2, 1)), np.ones((1, 2)))


@pytest.mark.parametrize("complex_data", [False, True], ids=["real", "complex"])
def test_a_torch_batch_has_the_dense_frequency_responses_and_numpys_modes(torch, complex_data):
    # A batch of torch systems runs eig and inv through torch's LAPACK. Reference: each member's dense frequency
    # response, and numpy's eig of the same member (eigenvalues, condition number of the eigenvector matrix).
    rng = np.random.default_rng(7)
    count, r = 5, 12
    A = rng.standard_normal((count, r, r)) + (1j * rng.standard_normal((count, r, r)) if complex_data else 0.0)
    A *= 0.9 / np.max(np.abs(np.linalg.eigvals(A)), axis=-1)[:, None, None]
    B, C, D = rng.standard_normal((count, r, 2)), rng.standard_normal((count, 1, r)), rng.standard_normal((count, 1, 2))
    modal, cond = modal_quietly(*(torch.from_numpy(X) for X in (A, B, C, D)), pad=True)
    assert isinstance(modal.lam, torch.Tensor) and modal.real_output is not complex_data
    for k in range(count):
        member = lr.DiagonalSystem(modal.lam[k], modal.B[k], modal.C[k], modal.D[k], real_output=modal.real_output)
        mu, X = np.linalg.eig(A[k])
        cond_ref = np.linalg.norm(X, 1) * np.linalg.norm(np.linalg.inv(X), 1)
        assert float(cond[k]) == pytest.approx(cond_ref, rel=1e-8)
        G = modal_response(member)
        assert relative_response_error(G, ref.freqresp(A[k], B[k], C[k], D[k], GRID)) < 1e-12 * cond_ref
        lam = ref.as_numpy(modal.lam[k])
        kept = mu if complex_data else mu[mu.imag >= 0]
        lam = lam[:kept.shape[0]]  # the zero modes that pad=True appends come last
        assert np.max(np.abs(np.sort_complex(lam) - np.sort_complex(kept))) < 1e-12


def test_a_numpy_batch_with_real_eigenvalues_and_pairs_matches_the_complex_eigendecomposition():
    # The batched real path reads LAPACK's real eigenvectors back from the complex ones and inverts them in
    # real arithmetic; reference: numpy's complex eig and inverse of each member (condition number, modes,
    # frequency response).
    rng = np.random.default_rng(11)
    count, r = 6, 9  # odd order: every member has at least one real eigenvalue
    A = rng.standard_normal((count, r, r))
    A *= 0.9 / np.max(np.abs(np.linalg.eigvals(A)), axis=-1)[:, None, None]
    B, C, D = rng.standard_normal((count, r, 2)), rng.standard_normal((count, 3, r)), rng.standard_normal((count, 3, 2))
    modal, cond = modal_quietly(A, B, C, D, pad=True)
    for k in range(count):
        mu, X = np.linalg.eig(A[k])
        cond_ref = np.linalg.norm(X, 1) * np.linalg.norm(np.linalg.inv(X), 1)
        assert cond[k] == pytest.approx(cond_ref, rel=1e-10)
        member = lr.DiagonalSystem(modal.lam[k], modal.B[k], modal.C[k], modal.D[k], real_output=True)
        G = modal_response(member)
        assert relative_response_error(G, ref.freqresp(A[k], B[k], C[k], D[k], GRID)) < 1e-12 * cond_ref
        kept = mu[mu.imag >= 0]
        lam = modal.lam[k][:kept.shape[0]]
        assert np.max(np.abs(np.sort_complex(lam) - np.sort_complex(kept))) < 1e-12
        assert np.all(modal.lam[k][kept.shape[0]:] == 0)
