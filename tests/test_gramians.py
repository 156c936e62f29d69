"""Gramians, their square-root factors and Hankel singular values of discrete-time systems.

Spec: ``P = A P A^H + B B^H``, ``Q = A^H Q A + C^H C``, ``P = Lc Lc^H``, ``Q = Lo Lo^H``,
``hsv = sqrt(eig(P Q))`` sorted descending; references are SLICOT (``sb03md``, ``sb03od``, ``ab09ad`` with
``dico='D'``), python-control and scipy (see ``reference.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import lti_reduce as lr
import reference as ref
from reference import cross_path_tol
from strategies import (batched_systems, build_system, random_state_transformation, seeds, spectral_radii,
                        stable_systems)


def rel_err(X, Y) -> float:
    """``||X - Y|| / ||Y||`` (Frobenius), 0 when both vanish."""
    X, Y = ref.as_numpy(X), ref.as_numpy(Y)
    den = np.linalg.norm(Y)
    return float(np.linalg.norm(X - Y) / den) if den > 0 else float(np.linalg.norm(X))


def stein_residuals(A, B, C, P, Q):
    """Relative residuals of ``P = A P A^H + B B^H`` and ``Q = A^H Q A + C^H C``."""
    Ah = A.conj().T
    rp = np.linalg.norm(P - A @ P @ Ah - B @ B.conj().T) / (np.linalg.norm(P) + np.linalg.norm(B) ** 2)
    rq = np.linalg.norm(Q - Ah @ Q @ A - C.conj().T @ C) / (np.linalg.norm(Q) + np.linalg.norm(C) ** 2)
    return rp, rq


def hermitian_psd(X, rtol=1e-10) -> bool:
    X = ref.as_numpy(X)
    if rel_err(X, X.conj().T) > 1e-13:
        return False
    return bool(np.linalg.eigvalsh((X + X.conj().T) / 2).min() >= -rtol * np.linalg.norm(X, 2))


# ---------------------------------------------------------------------------------------------------------------
# Gramians
# ---------------------------------------------------------------------------------------------------------------


@given(stable_systems())
def test_gramians_satisfy_the_discrete_lyapunov_equations(sys):
    P, Q = lr.gramians(sys.A, sys.B, sys.C)
    assert P.shape == Q.shape == (sys.n, sys.n)
    rp, rq = stein_residuals(sys.A, sys.B, sys.C, P, Q)
    assert rp < 1e-12 and rq < 1e-12, (rp, rq)


@given(stable_systems())
def test_gramians_are_hermitian_positive_semidefinite(sys):
    P, Q = lr.gramians(sys.A, sys.B, sys.C)
    assert hermitian_psd(P) and hermitian_psd(Q)


@given(stable_systems())
def test_gramians_match_slicot_sb03md(slycot, sys):
    P, Q = lr.gramians(sys.A, sys.B, sys.C)
    P_ref, Q_ref = ref.gramians_sb03md(sys.A, sys.B, sys.C)
    assert rel_err(P, P_ref) < 1e-8
    assert rel_err(Q, Q_ref) < 1e-8


@given(stable_systems(complex_=False))
def test_gramians_match_python_control_gram_with_dt_1(control, sys):
    P, Q = lr.gramians(sys.A, sys.B, sys.C)
    P_ref, Q_ref = ref.gramians_control(sys.A, sys.B, sys.C)
    assert rel_err(P, P_ref) < 1e-8
    assert rel_err(Q, Q_ref) < 1e-8


@given(stable_systems(complex_=True))
def test_complex_gramians_match_scipy_bartels_stewart(sys):
    P, Q = lr.gramians(sys.A, sys.B, sys.C)
    assert np.iscomplexobj(P) and np.iscomplexobj(Q)
    P_ref, Q_ref = ref.gramians_scipy(sys.A, sys.B, sys.C)
    assert rel_err(P, P_ref) < 1e-8
    assert rel_err(Q, Q_ref) < 1e-8


def test_gramians_of_a_first_order_system_have_the_closed_form():
    a, b, c = 0.999, 2.0, -3.0
    P, Q = lr.gramians(np.array([[a]]), np.array([[b]]), np.array([[c]]))
    np.testing.assert_allclose(P, [[b * b / (1 - a * a)]], rtol=1e-10)
    np.testing.assert_allclose(Q, [[c * c / (1 - a * a)]], rtol=1e-10)


def test_gramians_of_a_complex_diagonal_system_have_the_closed_form():
    lam = np.array([0.9 * np.exp(0.3j), -0.5 + 0.2j, 0.99j])
    rng = np.random.default_rng(3)
    B = rng.standard_normal((3, 2)) + 1j * rng.standard_normal((3, 2))
    C = rng.standard_normal((2, 3)) + 1j * rng.standard_normal((2, 3))
    P, Q = lr.gramians(np.diag(lam), B, C)
    P_ref = (B @ B.conj().T) / (1 - lam[:, None] * lam[None, :].conj())
    Q_ref = (C.conj().T @ C) / (1 - lam[:, None].conj() * lam[None, :])
    assert rel_err(P, P_ref) < 1e-12 and rel_err(Q, Q_ref) < 1e-12


def test_real_A_with_complex_B_gives_complex_gramians_not_a_silent_cast():
    rng = np.random.default_rng(0)
    A = np.diag([0.5, -0.3, 0.8])
    B = rng.standard_normal((3, 1)) + 1j * rng.standard_normal((3, 1))
    C = rng.standard_normal((1, 3))
    P, Q = lr.gramians(A, B, C)
    assert np.iscomplexobj(P)
    P_ref, Q_ref = ref.gramians_scipy(A, B, C)
    assert rel_err(P, P_ref) < 1e-12 and rel_err(Q, Q_ref) < 1e-12


def test_gramians_of_a_system_with_zero_input_matrix_are_zero():
    A = np.array([[0.5, 1.0], [0.0, -0.4]])
    P, Q = lr.gramians(A, np.zeros((2, 1)), np.array([[1.0, 1.0]]))
    assert np.all(P == 0)
    assert np.linalg.norm(Q) > 0


# ---------------------------------------------------------------------------------------------------------------
# Factors
# ---------------------------------------------------------------------------------------------------------------


@given(stable_systems())
def test_gramian_factors_reproduce_the_gramians(sys):
    Lc, Lo = lr.gramian_factors(sys.A, sys.B, sys.C)
    assert Lc.shape[-2] == sys.n and Lo.shape[-2] == sys.n
    P, Q = lr.gramians(sys.A, sys.B, sys.C)
    assert rel_err(Lc @ Lc.conj().T, P) < 1e-12
    assert rel_err(Lo @ Lo.conj().T, Q) < 1e-12


@given(stable_systems(complex_=False))
def test_gramian_factors_match_slicot_sb03od_cholesky_factors(slycot, sys):
    Lc, Lo = lr.gramian_factors(sys.A, sys.B, sys.C)
    Lc_ref, Lo_ref = ref.gramian_cholesky_factors_sb03od(sys.A, sys.B, sys.C)
    # Factors are unique only up to a unitary factor on the right: compare the products.
    assert rel_err(Lc @ Lc.T, Lc_ref @ Lc_ref.T) < 1e-8
    assert rel_err(Lo @ Lo.T, Lo_ref @ Lo_ref.T) < 1e-8


# ---------------------------------------------------------------------------------------------------------------
# Hankel singular values
# ---------------------------------------------------------------------------------------------------------------


@given(stable_systems())
def test_hankel_singular_values_match_slicot_ab09ad(slycot, sys):
    hsv = ref.as_numpy(lr.hankel_singular_values(sys.A, sys.B, sys.C))
    hsv_ref = ref.hsv_ab09ad(sys.A, sys.B, sys.C)
    assert hsv.shape == (sys.n,)
    np.testing.assert_allclose(hsv, hsv_ref, rtol=0, atol=1e-9 * hsv_ref[0])


@given(stable_systems())
def test_hankel_singular_values_are_real_nonnegative_and_sorted_descending(sys):
    hsv = lr.hankel_singular_values(sys.A, sys.B, sys.C)
    assert not np.iscomplexobj(hsv)
    assert np.all(hsv >= 0)
    assert np.all(np.diff(hsv) <= 0)


@given(stable_systems(), seeds)
def test_hankel_singular_values_are_invariant_under_state_transformations(sys, seed):
    T = random_state_transformation(seed, sys.n, complex_=sys.is_complex, cond=10.0)
    Ti = np.linalg.inv(T)
    hsv = lr.hankel_singular_values(sys.A, sys.B, sys.C)
    hsv_t = lr.hankel_singular_values(Ti @ sys.A @ T, Ti @ sys.B, sys.C @ T)
    np.testing.assert_allclose(hsv_t, hsv, rtol=0, atol=1e-9 * hsv[0])


@given(stable_systems(structure=("uncontrollable", "unobservable", "both"), n=(2, 30)))
def test_non_minimal_systems_have_zero_hankel_singular_values(sys):
    hsv = lr.hankel_singular_values(sys.A, sys.B, sys.C)
    P, Q = ref.gramians_scipy(sys.A, sys.B, sys.C)
    # A zero HSV is computed to O(eps * sqrt(||P|| ||Q||)), which can exceed eps * sigma_1 when P and Q are
    # badly scaled against each other; the uncontrollable/unobservable states give n - minimal_order of them.
    scale = np.sqrt(np.linalg.norm(P, 2) * np.linalg.norm(Q, 2))
    assert sys.minimal_order < sys.n
    assert np.all(hsv[sys.minimal_order:] <= 1e-10 * scale), (hsv[sys.minimal_order:], scale)


def test_hankel_singular_values_of_a_system_with_zero_input_matrix_are_all_zero():
    A = np.array([[0.5, 1.0], [0.0, -0.4]])
    hsv = lr.hankel_singular_values(A, np.zeros((2, 1)), np.array([[1.0, 1.0]]))
    assert hsv.shape == (2,)
    assert np.all(hsv == 0)


def test_hankel_singular_value_of_a_first_order_system_has_the_closed_form():
    a, b, c = -0.999, 2.0, 0.5
    hsv = lr.hankel_singular_values(np.array([[a]]), np.array([[b]]), np.array([[c]]))
    np.testing.assert_allclose(hsv, [abs(b * c) / (1 - a * a)], rtol=1e-10)


def test_hankel_singular_values_of_a_complex_system_equal_those_of_its_real_realization_once_each():
    sys = build_system(11, 6, 2, 2, complex_=True, rho=0.95)
    hsv = lr.hankel_singular_values(sys.A, sys.B, sys.C)
    AR, BR, CR, _ = ref.realify_system(sys.A, sys.B, sys.C)
    hsv_real = lr.hankel_singular_values(AR, BR, CR)
    np.testing.assert_allclose(hsv_real[::2], hsv, rtol=1e-10)
    np.testing.assert_allclose(hsv_real[1::2], hsv, rtol=1e-10)


@given(stable_systems())
def test_hankel_norm_is_the_largest_hankel_singular_value(sys):
    hsv = lr.hankel_singular_values(sys.A, sys.B, sys.C)
    assert float(lr.hankel_norm(sys.A, sys.B, sys.C)) == pytest.approx(float(hsv[0]), rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Batches and backends
# ---------------------------------------------------------------------------------------------------------------


@given(batched_systems())
def test_batched_gramians_equal_a_loop_over_the_batch(sys):
    P, Q = lr.gramians(sys.A, sys.B, sys.C)
    hsv = lr.hankel_singular_values(sys.A, sys.B, sys.C)
    assert P.shape == Q.shape == sys.batch + (sys.n, sys.n)
    assert hsv.shape == sys.batch + (sys.n,)
    for idx in np.ndindex(*sys.batch):
        one = sys[idx]
        P1, Q1 = lr.gramians(one.A, one.B, one.C)
        assert rel_err(P[idx], P1) < 1e-12 and rel_err(Q[idx], Q1) < 1e-12
        h1 = lr.hankel_singular_values(one.A, one.B, one.C)
        np.testing.assert_allclose(hsv[idx], h1, rtol=0, atol=1e-12 * h1[0])


def test_batch_dimensions_broadcast_like_numpy():
    sys = build_system(5, 4, 2, 1, rho=0.9)
    A = np.stack([sys.A, 0.5 * sys.A])  # (2, n, n) against unbatched B and C
    P, Q = lr.gramians(A, sys.B, sys.C)
    assert P.shape == (2, 4, 4)
    P1, _ = lr.gramians(0.5 * sys.A, sys.B, sys.C)
    assert rel_err(P[1], P1) < 1e-12


@given(stable_systems(n=(1, 12)))
def test_torch_input_gives_torch_output_equal_to_numpy(torch, sys):
    tA, tB, tC = (torch.from_numpy(X) for X in (sys.A, sys.B, sys.C))
    P, Q = lr.gramians(tA, tB, tC)
    hsv = lr.hankel_singular_values(tA, tB, tC)
    Lc, Lo = lr.gramian_factors(tA, tB, tC)
    for X in (P, Q, Lc, Lo):
        assert isinstance(X, torch.Tensor) and X.dtype == tA.dtype and X.device == tA.device
    assert isinstance(hsv, torch.Tensor) and not hsv.is_complex() and hsv.dtype == torch.float64
    P_np, Q_np = lr.gramians(sys.A, sys.B, sys.C)
    tol = cross_path_tol(sys.rho)
    assert rel_err(P, P_np) < tol and rel_err(Q, Q_np) < tol
    hsv_np = lr.hankel_singular_values(sys.A, sys.B, sys.C)
    np.testing.assert_allclose(hsv.numpy(), hsv_np, rtol=0, atol=tol * hsv_np[0])


@given(batched_systems(n=(1, 8)))
def test_batched_torch_hankel_singular_values_equal_numpy(torch, sys):
    hsv_t = lr.hankel_singular_values(*(torch.from_numpy(X) for X in (sys.A, sys.B, sys.C)))
    hsv = lr.hankel_singular_values(sys.A, sys.B, sys.C)
    assert tuple(hsv_t.shape) == sys.batch + (sys.n,)
    np.testing.assert_allclose(hsv_t.numpy(), hsv, rtol=0, atol=1e-12 * np.max(hsv))


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_single_precision_torch_input_gives_single_precision_output(complex_, torch):
    sys = build_system(2, 5, 2, 2, complex_=complex_, rho=0.9)
    single = torch.complex64 if complex_ else torch.float32
    tA, tB, tC = (torch.from_numpy(X).to(single) for X in (sys.A, sys.B, sys.C))
    P, Q = lr.gramians(tA, tB, tC)
    hsv = lr.hankel_singular_values(tA, tB, tC)
    assert P.dtype == Q.dtype == single
    assert hsv.dtype == torch.float32
    hsv_ref = lr.hankel_singular_values(*(X.to(torch.complex128 if complex_ else torch.float64)
                                          for X in (tA, tB, tC)))
    np.testing.assert_allclose(hsv.numpy(), hsv_ref.numpy(), rtol=0, atol=1e-5 * float(hsv_ref[0]))


@given(stable_systems(near_unit=True, n=(1, 20)))
def test_near_unit_spectral_radius_gramians_still_satisfy_the_equations(sys):
    P, Q = lr.gramians(sys.A, sys.B, sys.C)
    rp, rq = stein_residuals(sys.A, sys.B, sys.C, P, Q)
    assert rp < 1e-11 and rq < 1e-11, (rp, rq)


# ---------------------------------------------------------------------------------------------------------------
# Permuted block-diagonal A (modal-form models): the doubling runs on the blocks
# ---------------------------------------------------------------------------------------------------------------


def permuted_block_diagonal_system(seed: int, n_blocks: int, complex_: bool, rho: float, m: int = 2, p: int = 3):
    """``A = Pi^T blockdiag(A_1, ..., A_q) Pi`` with blocks of order 1..3 and a random permutation ``Pi``."""
    import scipy.linalg

    rng = np.random.default_rng(seed)
    blocks = []
    for size in rng.integers(1, 4, n_blocks):
        M = rng.standard_normal((size, size)) + (1j * rng.standard_normal((size, size)) if complex_ else 0)
        blocks.append(M * (rng.uniform(0.1, 1.0) * rho / ref.spectral_radius(M)))
    blocks[0] = blocks[0] * (rho / ref.spectral_radius(blocks[0]))
    A = scipy.linalg.block_diag(*blocks)
    perm = rng.permutation(A.shape[0])
    A = A[np.ix_(perm, perm)]
    n = A.shape[0]
    B, C = rng.standard_normal((n, m)), rng.standard_normal((p, n))
    return A, B, C


def _block_path_taken(A) -> bool:
    import importlib

    return importlib.import_module("lti_reduce.gramians")._BlockDiagonal.detect(np.asarray(A)) is not None


@given(seeds, st.integers(8, 24), st.booleans(), spectral_radii())
def test_block_diagonal_path_solves_the_stein_equations_and_matches_scipy(seed, n_blocks, complex_, rho):
    A, B, C = permuted_block_diagonal_system(seed, n_blocks, complex_, rho)
    assert _block_path_taken(A)  # 8+ blocks of order <= 3 always qualify
    P, Q = lr.gramians(A, B, C)
    rp, rq = stein_residuals(A, B, C, P, Q)
    assert rp < 1e-12 and rq < 1e-12, (rp, rq)
    P_ref, Q_ref = ref.gramians_scipy(A, B, C)
    assert rel_err(P, P_ref) < 1e-9 and rel_err(Q, Q_ref) < 1e-9
    # the batched call takes the generic dense path: the two paths agree
    Pb, Qb = lr.gramians(A[None], B[None], C[None])
    tol = cross_path_tol(rho)
    assert rel_err(P, Pb[0]) < tol and rel_err(Q, Qb[0]) < tol


@given(seeds, st.integers(8, 24), spectral_radii())
def test_block_diagonal_path_hankel_singular_values_match_slicot_ab09ad(slycot, seed, n_blocks, rho):
    A, B, C = permuted_block_diagonal_system(seed, n_blocks, False, rho)
    hsv = lr.hankel_singular_values(A, B, C)
    hsv_ref = ref.hsv_ab09ad(A, B, C)
    np.testing.assert_allclose(hsv, hsv_ref, rtol=0, atol=1e-9 * hsv_ref[0])


def test_block_diagonal_path_is_taken_for_the_modal_form_and_rejects_an_untouched_unstable_block():
    A, B, C = permuted_block_diagonal_system(3, 20, False, 0.95)
    assert _block_path_taken(A)
    # an unstable 1x1 block that neither B nor C touches: the factors converge without it
    n = A.shape[0]
    A2 = np.zeros((n + 1, n + 1))
    A2[:n, :n] = A
    A2[n, n] = 1.5
    B2, C2 = np.vstack([B, np.zeros((1, B.shape[1]))]), np.hstack([C, np.zeros((C.shape[0], 1))])
    assert _block_path_taken(A2)
    with pytest.raises(lr.UnstableSystemError, match="spectral radius 1.5"):
        lr.gramian_factors(A2, B2, C2)


@given(seeds, st.integers(1, 30), st.integers(1, 5), spectral_radii(), st.integers(0, 3))
def test_generalized_schur_factor_of_a_cauchy_like_gramian_matches_the_closed_form(seed, n, m, rho, n_zero_rows):
    from lti_reduce._cauchy import diagonal_stein_factor

    rng = np.random.default_rng(seed)
    lam = rho * rng.uniform(0.0, 1.0, n) ** 0.25 * np.exp(2j * np.pi * rng.uniform(size=n))
    G = rng.standard_normal((n, m)) + 1j * rng.standard_normal((n, m))
    G[rng.permutation(n)[:n_zero_rows]] = 0.0  # modes the input does not reach
    L = diagonal_stein_factor(lam, G)
    P = (G @ G.conj().T) / (1.0 - lam[:, None] * lam.conj()[None, :])  # P_ij = g_i g_j^H / (1 - lam_i conj(lam_j))
    assert L.shape == (n, n) and np.allclose(L, np.tril(L), atol=0)
    assert rel_err(L @ L.conj().T, P) < 1e-12


def test_generalized_schur_factor_compresses_a_wide_generator():
    from lti_reduce._cauchy import diagonal_stein_factor

    rng = np.random.default_rng(5)
    lam = 0.9 * np.exp(2j * np.pi * rng.uniform(size=6))
    G = rng.standard_normal((6, 40))
    P = (G @ G.T) / (1.0 - lam[:, None] * lam.conj()[None, :])
    assert rel_err(diagonal_stein_factor(lam, G) @ diagonal_stein_factor(lam, G).conj().T, P) < 1e-13


def test_modal_path_is_used_for_well_conditioned_blocks_and_not_for_nearly_defective_ones():
    import importlib

    g = importlib.import_module("lti_reduce.gramians")
    A, B, C = permuted_block_diagonal_system(11, 16, False, 0.99)
    from lti_reduce.validate import dense_system

    sysw = dense_system(A, B, C)
    blocks = g._BlockDiagonal.detect(A)
    assert g._modal_factor_pair(sysw, blocks, B[blocks.perm], C[:, blocks.perm], real=True) is not None
    # a nearly defective 2x2 block (a Jordan block perturbed by 1e-10): eigenvectors with cond ~ 1e5 or worse
    J = np.array([[0.8, 1.0], [1e-10, 0.8]])
    A2 = np.zeros((A.shape[0] + 2,) * 2)
    A2[:-2, :-2], A2[-2:, -2:] = A, J
    B2 = np.vstack([B, np.ones((2, B.shape[1]))])
    C2 = np.hstack([C, np.ones((C.shape[0], 2))])
    blocks2 = g._BlockDiagonal.detect(A2)
    assert blocks2 is not None
    sysw2 = dense_system(A2, B2, C2)
    assert g._modal_factor_pair(sysw2, blocks2, B2[blocks2.perm], C2[:, blocks2.perm], real=True) is None
    # ... and the doubling on the blocks takes over, with the same accuracy
    P, Q = lr.gramians(A2, B2, C2)
    rp, rq = stein_residuals(A2, B2, C2, P, Q)
    assert rp < 1e-12 and rq < 1e-12, (rp, rq)


@given(seeds, st.integers(8, 24), spectral_radii(), st.integers(0, 2))
# Regression: with 1/beta folded into the BLAS alphas of the factor loop, the observability factor's imaginary
# residue rose from 6 to 95 eps here and took the QR route (found by the thorough profile).
@example(seed=5739, n_blocks=13, rho=0.99, n_zero=0)
def test_real_factor_of_the_modal_path_rotates_conjugate_pairs_and_falls_back_to_qr(seed, n_blocks, rho, n_zero):
    """The O(n^2) realification gives the Gramian of the QR route; an uncontrollable pair takes the QR route."""
    import importlib

    from lti_reduce.validate import dense_system

    g = importlib.import_module("lti_reduce.gramians")
    A, B, C = permuted_block_diagonal_system(seed, n_blocks, False, rho)
    B[np.random.default_rng(seed).permutation(B.shape[0])[:n_zero]] = 0.0  # some modes the input misses
    blocks = g._BlockDiagonal.detect(A)
    calls = []
    real_factor = g._real_factor

    def spy(L, Lh, pairs):
        out = real_factor(L, Lh, pairs)
        calls.append((L, Lh, pairs, out))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(g, "_real_factor", spy)
        factors = g._modal_factor_pair(dense_system(A, B, C), blocks, B[blocks.perm], C[:, blocks.perm], real=True)
    assert factors is not None and len(calls) == 2
    for L, Lh, pairs, out in calls:
        assert pairs is not None  # numpy's eig of real blocks gives adjacent conjugate pairs
        assert out.dtype == np.float64
        via_qr = real_factor(L, Lh, None)
        target = (L @ L.conj().T).real
        assert rel_err(out @ out.T, target) < 1e-13 and rel_err(via_qr @ via_qr.T, target) < 1e-13
        if n_zero == 0:  # every mode reached: the O(n^2) rotation, not the QR route (a triangular R^T)
            assert not np.allclose(np.triu(out, 1), 0.0, rtol=0, atol=0)
    # a conjugate pair that the input does not reach: a zero diagonal block of Lh, so the QR route
    lam = np.array([0.5 + 0.4j, 0.5 - 0.4j, -0.3])
    V = np.array([[1.0, 1.0, 0.0], [-1j, 1j, 0.0], [0.0, 0.0, 1.0]]) / np.sqrt([2, 2, 1])
    Lh = np.tril(np.ones((3, 3), dtype=complex))
    Lh[:2, :2] = 0.0
    L = V @ Lh
    out = real_factor(L, Lh, g._conjugate_pairs(lam))
    assert out.dtype == np.float64 and rel_err(out @ out.T, (L @ L.conj().T).real) < 1e-14
    assert g._conjugate_pairs(np.array([0.5 - 0.4j, 0.5 + 0.4j])) is None  # not LAPACK's order
    assert g._conjugate_pairs(np.array([0.5 + 0.4j, 0.2, 0.5 - 0.4j])) is None  # not adjacent
    assert g._conjugate_pairs(np.array([0.5, 0.2])).size == 0  # real eigenvalues only


def test_block_detection_falls_back_to_scipy_for_long_chains_and_agrees_with_it():
    import importlib

    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    g = importlib.import_module("lti_reduce.gramians")
    rng = np.random.default_rng(2)
    n = 52
    A = np.diag(rng.uniform(-0.9, 0.9, n))
    A[np.arange(11), np.arange(1, 12)] = 0.05  # a 12-state chain: 11 label-propagation sweeps
    perm = rng.permutation(n)
    A = A[np.ix_(perm, perm)]
    pattern = (A != 0) | (A != 0).T
    assert g._small_components(pattern) is None
    blocks = g._BlockDiagonal.detect(A)
    assert blocks is not None
    sizes = sorted(int(b.shape[1]) for _, _, grp in blocks.groups for b in grp)
    ref_sizes = sorted(np.bincount(connected_components(csr_matrix(pattern), directed=False)[1]).tolist())
    assert sizes == ref_sizes == [1] * 40 + [12]
    B, C = rng.standard_normal((n, 2)), rng.standard_normal((2, n))
    rp, rq = stein_residuals(A, B, C, *lr.gramians(A, B, C))
    assert rp < 1e-12 and rq < 1e-12


def test_generalized_schur_factor_per_step_coefficients_equal_the_upfront_ones(monkeypatch):
    import importlib

    cauchy = importlib.import_module("lti_reduce._cauchy")
    rng = np.random.default_rng(9)
    lam = 0.99 * rng.uniform(0, 1, 40) * np.exp(2j * np.pi * rng.uniform(size=40))
    G = rng.standard_normal((40, 3)) + 1j * rng.standard_normal((40, 3))
    G[7] = 0.0
    upfront = cauchy.diagonal_stein_factor(lam, G)
    monkeypatch.setattr(cauchy, "_UPFRONT_MAX", 0)  # the large-n branch
    per_step = cauchy.diagonal_stein_factor(lam, G)
    assert np.abs(per_step - upfront).max() <= 1e-13 * np.abs(upfront).max()
    P = (G @ G.conj().T) / (1.0 - lam[:, None] * lam.conj()[None, :])
    assert rel_err(per_step @ per_step.conj().T, P) < 1e-13


# ---------------------------------------------------------------------------------------------------------------
# Low-rank tail of the doubling iteration (dense A, n >= 32): A^(2^k) = X Y^H, then an r x r Stein equation
# ---------------------------------------------------------------------------------------------------------------


def _gramians_module():
    import importlib

    return importlib.import_module("lti_reduce.gramians")


def _spy_on_low_rank_split(monkeypatch):
    """Record the ranks of the low-rank splits that succeed."""
    g = _gramians_module()
    ranks, split = [], g._low_rank_split

    def spy(M, n, k, eps):
        out = split(M, n, k, eps)
        if out[0] is not None:
            ranks.append(out[0][0].shape[1])
        return out

    monkeypatch.setattr(g, "_low_rank_split", spy)
    return ranks


def _check_against_the_iteration_without_the_split(sys, Lc, Lo):
    g = _gramians_module()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(g, "_LOW_RANK_FIRST", 10**6)
        Lc_full, Lo_full = lr.gramian_factors(sys.A, sys.B, sys.C)
    P, Q = Lc @ Lc.conj().T, Lo @ Lo.conj().T
    assert rel_err(P, Lc_full @ Lc_full.conj().T) < 1e-12
    assert rel_err(Q, Lo_full @ Lo_full.conj().T) < 1e-12
    rp, rq = stein_residuals(sys.A, sys.B, sys.C, P, Q)
    assert rp < 1e-11 and rq < 1e-11, (rp, rq)
    # the HSVs to round-off of sigma_1, and to SLICOT's accuracy
    hsv = np.linalg.svd(Lo.conj().T @ Lc, compute_uv=False)
    hsv_full = np.linalg.svd(Lo_full.conj().T @ Lc_full, compute_uv=False)
    assert np.max(np.abs(hsv - hsv_full)) <= 1e-13 * hsv_full[0]
    hsv_ref = ref.hsv_ab09ad(sys.A, sys.B, sys.C)
    k = min(hsv.size, hsv_ref.size)
    assert np.max(np.abs(hsv[:k] - hsv_ref[:k])) <= 1e-10 * hsv_ref[0]


@given(stable_systems(n=(32, 72), near_unit=True, a_kind="gaussian", structure="generic"))
def test_low_rank_tail_gives_the_factors_of_the_full_doubling_iteration(slycot, sys):
    """A near-unit dense A of order >= 32 takes the tail; same factors as without it, same HSVs as SLICOT."""
    with pytest.MonkeyPatch.context() as mp:
        ranks = _spy_on_low_rank_split(mp)
        Lc, Lo = lr.gramian_factors(sys.A, sys.B, sys.C)
    assert ranks, "a near-unit Gaussian A of order >= 32 takes the low-rank tail"
    assert ranks[0] <= sys.A.shape[0] // 2
    _check_against_the_iteration_without_the_split(sys, Lc, Lo)


@given(stable_systems(n=(32, 64), structure=("uncontrollable", "unobservable", "both", "rank_deficient_b")))
def test_low_rank_tail_of_non_minimal_and_modal_systems_gives_the_same_factors(slycot, sys):
    """Hidden blocks (block triangular A), rank-one B, modal or Gaussian A, any radius: tail taken or not."""
    Lc, Lo = lr.gramian_factors(sys.A, sys.B, sys.C)
    _check_against_the_iteration_without_the_split(sys, Lc, Lo)


def test_low_rank_tail_is_not_taken_by_an_unstable_mode_that_b_and_c_do_not_touch(monkeypatch):
    """A split of A^(2^k) with ||.||_F >= 1 is only used once its further powers, squared in full, reach
    ||.||_F < 1 (the proof of stability) and follow the low-rank model: an unstable A never gets there."""
    g = _gramians_module()
    rng = np.random.default_rng(7)
    n = 64
    A0 = rng.standard_normal((n - 1, n - 1))
    A0 *= 0.999 / ref.spectral_radius(A0)
    A = np.zeros((n, n))
    A[:-1, :-1], A[-1, -1] = A0, 1.0005
    B = np.vstack([rng.standard_normal((n - 1, 2)), np.zeros((1, 2))])
    C = np.hstack([rng.standard_normal((2, n - 1)), np.zeros((2, 1))])
    tails, tail = [], g._low_rank_tail
    monkeypatch.setattr(g, "_low_rank_tail", lambda *a: tails.append(1) or tail(*a))
    with pytest.raises(lr.UnstableSystemError, match=r"spectral radius 1\.000(5|49)"):
        lr.gramian_factors(A, B, C)
    assert not tails
    A[-1, -1] = 0.5  # the same system made stable takes the tail
    lr.gramian_factors(A, B, C)
    assert tails


def test_split_verification_rejects_a_model_whose_powers_drift():
    """The check squares A_k in full and compares every power with X (Yh X)^(2^j - 1) Yh."""
    g = _gramians_module()
    eps = float(np.finfo(float).eps)
    rng = np.random.default_rng(4)
    n = 64
    A = rng.standard_normal((n, n))
    A *= 0.999 / ref.spectral_radius(A)
    Ak = g._Dense2D(A)
    for _ in range(7):
        Ak = Ak.square()
    assert 1.0 <= Ak.norm() <= g._LOW_RANK_VERIFY_MAX
    split, _ = g._low_rank_split(Ak.M, n, 7, eps)
    assert split is not None and g._split_verified(Ak, split, n, eps)
    X, Yh = split
    assert not g._split_verified(Ak, (X, Yh * (1 + 1e-10)), n, eps)  # a model 1e-10 off is caught


def test_low_rank_tail_keeps_the_gramians_of_non_normal_matrices_exact(monkeypatch):
    """Regression: A = d I + s J (a shifted Jordan block) has ||A^128|| up to 1e36 while rho(A) = d. A split
    truncated relative to that norm changed the eigenvalues (spurious UnstableSystemError, or errors of 6.6e-4);
    the split now waits for ||A^(2^k)||_F < 1. Reference: the Stein equations solved entry by entry (with
    d, s > 0 and B, C >= 0 every term of the recurrence is nonnegative, so it is accurate to ~n eps)."""
    rng = np.random.default_rng(5)

    def gramians_by_recurrence(n, d, s, W, V):
        # A = d I + s J (J: ones above the diagonal). P - A P A^T = W entry by entry:
        # (1 - d^2) P_ij = W_ij + d s (P_i,j+1 + P_i+1,j) + s^2 P_i+1,j+1, from the last row and column up;
        # Q - A^T Q A = V likewise with the neighbours i-1, j-1, from the first row and column down.
        c = 1.0 - d * d
        P, Q = np.zeros((n + 1, n + 1)), np.zeros((n + 1, n + 1))
        for i in range(n - 1, -1, -1):
            for j in range(n - 1, -1, -1):
                P[i, j] = (W[i, j] + d * s * (P[i, j + 1] + P[i + 1, j]) + s * s * P[i + 1, j + 1]) / c
        for i in range(n):
            for j in range(n):
                Q[i + 1, j + 1] = (V[i, j] + d * s * (Q[i, j + 1] + Q[i + 1, j]) + s * s * Q[i, j]) / c
        return P[:n, :n], Q[1:, 1:]

    ranks = _spy_on_low_rank_split(monkeypatch)
    for n, d, s in ((16, 0.99, 1.0), (16, 0.9, 5.0), (24, 0.9, 5.0), (32, 0.95, 0.5), (64, 0.99, 0.02)):
        A = d * np.eye(n) + s * np.eye(n, k=1)
        B, C = np.abs(rng.standard_normal((n, 1))), np.abs(rng.standard_normal((1, n)))
        ranks.clear()
        P, Q = lr.gramians(A, B, C)
        P_ref, Q_ref = gramians_by_recurrence(n, d, s, B @ B.T, C.T @ C)
        assert rel_err(P, P_ref) < 1e-12 and rel_err(Q, Q_ref) < 1e-12, (n, d, s)
    assert ranks, "the last case splits (at 2^14, once ||A^(2^k)||_F < 1) and is still exact"


def test_low_rank_split_is_exact_for_a_low_rank_matrix_and_predicts_later_tries_otherwise():
    g = _gramians_module()
    eps = float(np.finfo(float).eps)
    rng = np.random.default_rng(3)
    n = 40
    M = rng.standard_normal((n, 5)) @ rng.standard_normal((5, n))
    (X, Yh), nxt = g._low_rank_split(M, n, 7, eps)
    assert nxt is None and X.shape == (n, 5) and Yh.shape == (5, n)  # the rounding-level block is cut
    assert np.allclose(X.T @ X, np.eye(5), atol=1e-14)
    assert np.linalg.norm(X @ Yh - M) <= 10 * eps * np.linalg.norm(M)
    # full rank: no split; the pivots (for a permuted diagonal matrix, its sorted diagonal) predict when the
    # squares sigma_i^(2^j) leave at most n/2 above eps, and that step is the next try (at most k + 4)
    sig = np.geomspace(1.0, 1e-6, n)
    perm = rng.permutation(n)
    full = np.diag(sig)[np.ix_(perm, perm)]
    split, nxt = g._low_rank_split(full, n, 7, eps)
    d = sig / np.linalg.norm(sig)
    expected = next((j for j in (1, 2, 3) if np.count_nonzero(d ** (2 ** j) > eps) <= n // 2), 4)
    assert split is None and nxt == 7 + expected
    assert expected < 4  # the case exercises the prediction, not the cap


# ---------------------------------------------------------------------------------------------------------------
# Regressions from the review of the fast paths (each failed on an intermediate version of this release)
# ---------------------------------------------------------------------------------------------------------------


def _rotation_blocks(rng, n):
    A = np.zeros((n, n))
    for k in range(0, n, 2):
        r, th = rng.uniform(0.3, 0.95), rng.uniform(0.1, 3)
        A[k:k + 2, k:k + 2] = r * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    return A


def test_factors_of_empty_or_zero_inputs_are_empty_or_zero():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((32, 32))
    A *= 0.999 / ref.spectral_radius(A)
    Lc, Lo = lr.gramian_factors(A, np.zeros((32, 2)), rng.standard_normal((2, 32)))
    assert np.all(Lc == 0) and np.linalg.norm(Lo) > 0
    assert np.all(lr.hankel_singular_values(A, np.zeros((32, 2)), rng.standard_normal((2, 32))) == 0)
    A2 = np.array([[0.5, 0.1], [0.0, -0.3]])
    Lc, Lo = lr.gramian_factors(A2, np.zeros((2, 0)), np.ones((2, 2)))
    assert Lc.shape[0] == 2 and np.all(Lc @ Lc.T == 0)
    Lc, Lo = lr.gramian_factors(A2, np.ones((2, 2)), np.zeros((0, 2)))
    assert np.all(Lo @ Lo.T == 0)


@pytest.mark.parametrize("scale", [1e-160, 1e-150, 1e150, 1e160])
def test_modal_path_is_scale_invariant_near_the_limits_of_double_precision(scale):
    """HSVs do not change under B -> s B, C -> C / s; the Cauchy loop's products must not under- or overflow."""
    rng = np.random.default_rng(0)
    A = _rotation_blocks(rng, 16)
    B, C = rng.standard_normal((16, 2)), rng.standard_normal((2, 16))
    assert _block_path_taken(A)
    h = lr.hankel_singular_values(A, B, C)
    hs = lr.hankel_singular_values(A, B * scale, C / scale)
    assert np.max(np.abs(hs - h)) <= 1e-14 * h[0]
    Lc, _ = lr.gramian_factors(A, B * scale, C)
    P_ref = ref.gramians_scipy(A, B, C)[0]
    assert rel_err((Lc / scale) @ (Lc / scale).T, P_ref) < 1e-13


def test_defective_diagonal_blocks_fall_back_to_the_doubling_iteration():
    """Eight nilpotent 3 x 3 shift blocks: eig gives a singular eigenvector matrix (inv used to raise)."""
    A = 0.9 * np.kron(np.eye(8), np.eye(3, k=1))
    rng = np.random.default_rng(1)
    B, C = rng.standard_normal((24, 2)), rng.standard_normal((2, 24))
    assert _block_path_taken(A)
    P, Q = lr.gramians(A, B, C)
    P_ref, Q_ref = ref.gramians_scipy(A, B, C)
    assert rel_err(P, P_ref) < 1e-13 and rel_err(Q, Q_ref) < 1e-13


def test_a_stable_matrix_with_entries_above_1e154_is_not_declared_divergent():
    """||A||_F overflows numpy's norm; the scaled xNRM2 does not. P_00 = sum_k (k 0.5^(k-1))^2 = 80/27."""
    A = np.array([[0.5, 1e160], [0.0, 0.5]])
    Lc, _ = lr.gramian_factors(A, np.array([[0.0], [1e-160]]), np.array([[1e-160, 0.0]]))
    assert (Lc @ Lc.T)[0, 0] == pytest.approx(80 / 27, rel=1e-14)


def test_results_do_not_alias_the_callers_arrays():
    rng = np.random.default_rng(2)
    A = np.diag([0.9, 0.5, -0.3])
    B, C, D = rng.standard_normal((3, 2)), rng.standard_normal((2, 3)), np.ones((2, 2))
    for method in ("truncate", "spa"):
        res = lr.balanced_truncation(A, B, C, D, rank=1, method=method)
        D_before = np.array(res.D)
        D[0, 0] = 99.0
        assert np.array_equal(res.D, D_before)
        D[0, 0] = 1.0
    bal = lr.balance(A, B, C, D)
    assert not np.shares_memory(bal.D, D) and not np.shares_memory(bal.reduce(rank=2).D, D)


@pytest.mark.parametrize("blocks", [1, 2], ids=["diagonal", "rotation-blocks"])
def test_modal_path_is_invariant_under_a_state_scaling_spanning_1e290(blocks):
    """x -> diag(d) x leaves the HSVs alone. Rows of the generator 1e-290 below the others used to underflow
    in the BLAS products (1/beta folded into alpha): 2.5e-2 relative error, silently."""
    rng = np.random.default_rng(0)
    n = 16
    A = np.diag(np.linspace(0.3, 0.9, n)) if blocks == 1 else _rotation_blocks(rng, n)
    B, C = rng.standard_normal((n, 1)), rng.standard_normal((1, n))
    d = np.repeat(np.array([1.0, 1e-50, 1e-290, 1e-120, 1.0, 1e-200, 1e-10, 1e-290]), 2)
    assert _block_path_taken(A)
    h0 = lr.hankel_singular_values(A, B, C)
    with np.errstate(over="raise", invalid="raise"):  # and no overflow on the way
        h = lr.hankel_singular_values(A, d[:, None] * B, C / d)
    assert np.max(np.abs(h - h0)) <= 1e-14 * h0[0]


def test_a_hidden_unstable_mode_that_squaring_rounds_below_one_is_still_rejected():
    """rho(A) = 1 + 1.05e-9 in an eigenvector basis of condition 1e4 (||A||_F ~ 1e3): 31 squarings, each off
    by ~eps ||A_j||^2 cond, pull the computed mode below 1 and ||A^(2^31)||_F < 1. A certificate that took 20
    or more squarings is now backed by the eigenvalues."""
    rng = np.random.default_rng(0)
    n = 3
    A0 = np.diag(np.r_[rng.uniform(-0.6, 0.6, n - 1), 1 + 1e-9])
    B0 = np.r_[rng.standard_normal((n - 1, 1)), [[0.0]]]
    C0 = np.c_[rng.standard_normal((1, n - 1)), [[0.0]]]
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    T = U @ np.diag(np.logspace(0, -4, n)) @ V.T
    Ti = np.linalg.inv(T)
    A, B, C = T @ A0 @ Ti, T @ B0, C0 @ Ti
    with pytest.raises(lr.UnstableSystemError, match=r"spectral radius 1\.0000000"):
        lr.gramian_factors(A, B, C)
    with pytest.raises(lr.UnstableSystemError):
        lr.gramian_factors(A[None], B[None], C[None])  # the batched path as well
