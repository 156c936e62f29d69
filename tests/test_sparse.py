"""Large sparse models (``lti_reduce.lowrank``): low-rank ADI Gramian factors and balanced truncation from them.

References: scipy's dense ``solve_continuous_lyapunov`` / ``solve_discrete_lyapunov`` Gramians, the dense
square-root path of ``lti_reduce`` (accurate for small HSVs, unlike ``sqrt(eig(P Q))``), SLICOT ``ab09ad`` with
``dico='C'`` for continuous HSVs, dense residuals of the Lyapunov/Stein equations, and frequency responses of the
full model evaluated densely. The models are small (n <= 270) so the dense references are cheap.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import lti_reduce as lr
import reference as ref
from lti_reduce import lowrank


def heat_2d(N: int):
    """Penzl's 2-D heat equation on the unit square: 5-point Laplacian (Dirichlet), 3 inputs, 3 outputs."""
    h = 1.0 / (N + 1)
    T = sp.diags([np.ones(N - 1), -2 * np.ones(N), np.ones(N - 1)], [-1, 0, 1]) / h**2
    I = sp.identity(N)
    L = (sp.kron(T, I) + sp.kron(I, T)).tocsc()
    x = np.arange(1, N + 1) * h
    X, Y = (M.ravel() for M in np.meshgrid(x, x, indexing="ij"))
    regions = [(X < 0.5) & (Y < 0.5), (X > 0.5) & (Y < 0.5), Y > 0.5]
    B = np.stack([r.astype(float) for r in regions], axis=1)
    C = np.stack([r / r.sum() for r in regions]).astype(float)
    return L, B, C, h


def convection_diffusion_2d(N: int, a: float = 1.5):
    """Diffusion plus central-difference convection in x (cell Peclet number a > 1: complex eigenvalues)."""
    h = 1.0 / (N + 1)
    Tx = sp.diags([(1 + a) * np.ones(N - 1), -2 * np.ones(N), (1 - a) * np.ones(N - 1)], [-1, 0, 1]) / h**2
    T = sp.diags([np.ones(N - 1), -2 * np.ones(N), np.ones(N - 1)], [-1, 0, 1]) / h**2
    I = sp.identity(N)
    A = (sp.kron(Tx, I) + sp.kron(I, T)).tocsc()
    rng = np.random.default_rng(1)
    return A, rng.standard_normal((N * N, 2)), rng.standard_normal((2, N * N))


def forward_euler(L, h):
    """``A_d = I + dt L`` with ``dt = h^2 / 8``: spectrum in (0, 1), spectral radius ``1 - O(h^2)``."""
    return (sp.identity(L.shape[0]) + (h**2 / 8) * L).tocsc()


N = 14  # n = 196


@pytest.fixture(scope="module")
def heat():
    return heat_2d(N)


def dense_gramians(A, B, C, time):
    A = A.toarray() if sp.issparse(A) else A
    if time == "continuous":
        return (scipy.linalg.solve_continuous_lyapunov(A, -B @ B.conj().T),
                scipy.linalg.solve_continuous_lyapunov(A.conj().T, -C.conj().T @ C))
    return scipy.linalg.solve_discrete_lyapunov(A, B @ B.conj().T), scipy.linalg.solve_discrete_lyapunov(A.conj().T, C.conj().T @ C)


def dense_hsv(A, B, C, time):
    """HSVs by the dense square-root path (continuous: after the HSV-preserving bilinear map)."""
    A = A.toarray() if sp.issparse(A) else A
    if time == "continuous":
        A, B, C, _ = ref.bilinear_discretization(A, B, C, np.zeros((C.shape[0], B.shape[1])), 1e-3)
    return ref.as_numpy(lr.hankel_singular_values(A, B, C))


def model(heat, time):
    L, B, C, h = heat
    return (L if time == "continuous" else forward_euler(L, h)), B, C


def freq_points(time):
    if time == "continuous":
        return 1j * np.concatenate([[0.0], np.logspace(-2, 6, 400)])
    return np.exp(1j * np.concatenate([[0.0], np.logspace(-6, np.log10(np.pi), 400)]))


def transfer(A, B, C, D, points):
    A = A.toarray() if sp.issparse(A) else np.asarray(A)
    eye = np.eye(A.shape[0])
    return np.stack([C @ np.linalg.solve(s * eye - A, B) + D for s in points])


# ------------------------------------------------------------------------------------------------ Gramians


@pytest.mark.parametrize("time", ["continuous", "discrete"])
def test_factors_reproduce_the_dense_scipy_gramians(heat, time):
    A, B, C = model(heat, time)
    P, Q = dense_gramians(A, B, C, time)
    Fc, Fo = lowrank.gramian_factors(A, B, C, time=time, adi_tol=1e-12)
    assert Fc.Z.shape[1] < A.shape[0] // 2 and Fo.Z.shape[1] < A.shape[0] // 2
    assert np.linalg.norm(Fc.Z @ Fc.Z.T - P, 2) <= 1e-10 * np.linalg.norm(P, 2)
    assert np.linalg.norm(Fo.Z @ Fo.Z.T - Q, 2) <= 1e-10 * np.linalg.norm(Q, 2)


@pytest.mark.parametrize("time", ["continuous", "discrete"])
@pytest.mark.parametrize("adi_tol", [1e-6, 1e-10])
def test_residual_stopping_rule_meets_its_tolerance_on_the_dense_residual(heat, time, adi_tol):
    A, B, C = model(heat, time)
    Ad = A.toarray()
    Fc, Fo = lowrank.gramian_factors(A, B, C, time=time, adi_tol=adi_tol)
    for F, M, rhs in ((Fc, Ad, B @ B.T), (Fo, Ad.T, C.T @ C)):
        X = F.Z @ F.Z.T
        R = M @ X + X @ M.T + rhs if time == "continuous" else M @ X @ M.T - X + rhs
        true = np.linalg.norm(R, 2) / np.linalg.norm(rhs, 2)
        assert true <= adi_tol
        # the cheap low-rank residual norm is the residual of the factored equation
        assert true == pytest.approx(F.residual, rel=1e-6, abs=1e-3 * adi_tol)
        assert F.residual_history[-1] == F.residual and F.iterations == len(F.residual_history) - 1


@pytest.mark.parametrize("time", ["continuous", "discrete"])
def test_complex_shifts_for_a_nonsymmetric_real_model(time):
    A, B, C = convection_diffusion_2d(14)
    if time == "discrete":
        A = (sp.identity(A.shape[0]) + A / 1.2e4).tocsc()  # forward Euler, step 1 / 1.2e4: spectral radius 0.998
    P, Q = dense_gramians(A, B, C, time)
    Fc, Fo = lowrank.gramian_factors(A, B, C, time=time, adi_tol=1e-12)
    assert np.any(np.imag(Fc.shifts) != 0)             # complex pairs taken in real arithmetic
    assert np.isrealobj(Fc.Z) and np.isrealobj(Fo.Z)
    assert np.linalg.norm(Fc.Z @ Fc.Z.T - P, 2) <= 1e-9 * np.linalg.norm(P, 2)
    assert np.linalg.norm(Fo.Z @ Fo.Z.T - Q, 2) <= 1e-9 * np.linalg.norm(Q, 2)


def test_complex_model_gramians_match_scipy():
    rng = np.random.default_rng(3)
    n = 80
    A = sp.diags([rng.uniform(-3, -0.5, n) + 1j * rng.uniform(-5, 5, n), 0.3 * np.ones(n - 1)], [0, 1]).tocsc()
    B = rng.standard_normal((n, 2)) + 1j * rng.standard_normal((n, 2))
    C = rng.standard_normal((1, n)) + 1j * rng.standard_normal((1, n))
    for time, M in (("continuous", A), ("discrete", (A / 6.0).tocsc())):
        P, Q = dense_gramians(M, B, C, time)
        Fc, Fo = lowrank.gramian_factors(M, B, C, time=time, adi_tol=1e-12)
        assert np.linalg.norm(Fc.Z @ Fc.Z.conj().T - P, 2) <= 1e-9 * np.linalg.norm(P, 2)
        assert np.linalg.norm(Fo.Z @ Fo.Z.conj().T - Q, 2) <= 1e-9 * np.linalg.norm(Q, 2)


# ------------------------------------------------------------------------------------------------ HSVs


@pytest.mark.parametrize("time", ["continuous", "discrete"])
def test_hankel_singular_values_agree_with_the_dense_path(heat, time):
    A, B, C = model(heat, time)
    hsv = lowrank.hankel_singular_values(A, B, C, time=time, adi_tol=1e-12)
    dense = dense_hsv(A, B, C, time)
    k = hsv.size
    assert np.max(np.abs(hsv - dense[:k])) <= 1e-10 * dense[0]
    assert dense[k] <= 1e-12 * dense[0] if k < dense.size else True  # the factors resolve every HSV that matters


def test_continuous_hankel_singular_values_match_slicot_ab09ad(slycot):
    A, B, C = convection_diffusion_2d(14)
    hsv = lowrank.hankel_singular_values(A, B, C, time="continuous", adi_tol=1e-12)
    hsv_ref = ref.hsv_ab09ad(A.toarray(), B, C, dico="C")
    k = hsv.size
    np.testing.assert_allclose(hsv, hsv_ref[:k], rtol=0, atol=1e-10 * hsv_ref[0])
    assert hsv_ref[k] <= 1e-12 * hsv_ref[0]


def test_discrete_hankel_singular_values_of_a_dense_bilinear_map_match_the_dense_path():
    # bilinear map with step 1e-4 (spectral radius 0.99): a dense A_d passed as a sparse matrix
    A, B, C = convection_diffusion_2d(10)
    Ad, Bd, Cd, _ = lr.discretize(A.toarray(), B, C, dt=1e-4)
    hsv = lowrank.hankel_singular_values(sp.csc_matrix(Ad), Bd, Cd, adi_tol=1e-12)
    dense = ref.as_numpy(lr.hankel_singular_values(Ad, Bd, Cd))
    np.testing.assert_allclose(hsv, dense[:hsv.size], rtol=0, atol=1e-10 * dense[0])


# ------------------------------------------------------------------------------------------------ LinearOperator


@pytest.mark.parametrize("time", ["continuous", "discrete"])
def test_linear_operator_input_gives_the_sparse_result(heat, time):
    A, B, C = model(heat, time)
    op = spla.aslinearoperator(A)
    hsv_sparse = lowrank.hankel_singular_values(A, B, C, time=time, adi_tol=1e-11)
    hsv_op = lowrank.hankel_singular_values(op, B, C, time=time, adi_tol=1e-11)  # GMRES solves
    k = min(hsv_sparse.size, hsv_op.size, 20)
    np.testing.assert_allclose(hsv_op[:k], hsv_sparse[:k], rtol=0, atol=1e-9 * hsv_sparse[0])


def test_linear_operator_with_its_own_solver(heat):
    A, B, C = model(heat, "continuous")
    calls = []

    def solve(shift, X, adjoint):
        calls.append(shift)
        M = (A - shift * sp.identity(A.shape[0])).tocsc()
        return spla.spsolve(M.conj().T if adjoint else M, X).reshape(X.shape)

    res = lowrank.balanced_truncation(spla.aslinearoperator(A), B, C, rank=8, time="continuous", solve=solve)
    dense = dense_hsv(A, B, C, "continuous")
    assert calls
    np.testing.assert_allclose(res.hsv[:8], dense[:8], rtol=0, atol=1e-9 * dense[0])


# ------------------------------------------------------------------------------------------------ reduction


@pytest.mark.parametrize("time", ["continuous", "discrete"])
@pytest.mark.parametrize("rank", [2, 6])
def test_reduced_model_error_lies_within_the_bound(heat, time, rank):
    A, B, C = model(heat, time)
    D = np.zeros((C.shape[0], B.shape[1]))
    res = lowrank.balanced_truncation(A, B, C, D, rank=rank, time=time, adi_tol=1e-12)
    pts = freq_points(time)
    err = np.linalg.norm(transfer(A, B, C, D, pts) - transfer(res.A, res.B, res.C, res.D, pts), ord=2, axis=(1, 2)).max()
    dense = dense_hsv(A, B, C, time)
    assert err <= res.error_bound * (1 + 1e-6)
    assert err >= dense[rank] * (1 - 1e-3) * 0.5  # a grid can miss the peak a little, never by a factor 2 here
    assert res.error_bound == pytest.approx(2 * dense[rank:].sum(), rel=1e-6)
    stable = np.max(np.real(np.linalg.eigvals(res.A))) < 0 if time == "continuous" else \
        np.max(np.abs(np.linalg.eigvals(res.A))) < 1
    assert stable


def test_reduced_continuous_model_has_the_transfer_function_of_slicot_ab09ad(slycot):
    A, B, C = convection_diffusion_2d(12)
    D = np.zeros((2, 2))
    res = lowrank.balanced_truncation(A, B, C, D, rank=8, time="continuous", adi_tol=1e-12)
    nr, Ar, Br, Cr, _ = ref._ab09ad(A.toarray(), B, C, nr=8, job="B", dico="C")
    assert nr == 8
    pts = freq_points("continuous")
    G_ref = transfer(Ar, Br, Cr, D, pts)
    G = transfer(res.A, res.B, res.C, res.D, pts)
    peak = np.max(np.linalg.norm(transfer(A, B, C, D, pts), ord=2, axis=(-2, -1)))
    assert np.max(np.abs(G - G_ref)) <= 1e-8 * peak


def test_reduce_and_tol_cut_other_orders_from_the_same_factors(heat):
    A, B, C = model(heat, "discrete")
    res = lowrank.balanced_truncation(A, B, C, tol=1e-3)
    assert res.rank == lr.rank_for_tol(res.hsv, 1e-3)
    other = res.reduce(rank=3)
    assert other.A.shape == (3, 3) and other.controllability_factor is res.controllability_factor
    assert other.error_bound == pytest.approx(res.error_bounds()[3])


# ------------------------------------------------------------------------------------------------ bad input


def test_unstable_hermitian_model_is_refused_at_once(heat):
    L, B, C, _ = heat
    A = (L + 100.0 * sp.identity(L.shape[0])).tocsc()  # lambda_max(L) = -2 pi^2 (1 + O(h^2)) ~ -19.6
    with pytest.raises(lr.UnstableSystemError, match="Gramians do not exist"):
        lowrank.balanced_truncation(A, B, C, rank=2, time="continuous")


def test_unstable_nonsymmetric_model_is_refused_with_its_eigenvalue():
    n = 60
    d = np.linspace(-5.0, -0.5, n)
    d[10] = 0.2  # one unstable mode
    A = sp.diags([d, 0.5 * np.ones(n - 1)], [0, 1]).tocsc()
    B, C = np.ones((n, 1)), np.ones((1, n))
    with pytest.raises(lr.UnstableSystemError, match=r"eigenvalue \(?0\.2"):
        lowrank.balanced_truncation(A, B, C, rank=2, time="continuous", maxiter=60)


def test_unstable_discrete_model_is_refused(heat):
    L, B, C, h = heat
    A = (1.05 * forward_euler(L, h)).tocsc()  # spectral radius 1.05 * (1 - 0.011) > 1
    with pytest.raises(lr.UnstableSystemError, match="modulus"):
        lowrank.balanced_truncation(A, B, C, rank=2)


def test_no_convergence_within_maxiter_names_the_residual(heat):
    A, B, C = model(heat, "continuous")
    with pytest.raises(lowrank.ADIConvergenceError, match=r"maxiter = 3 steps.*tol = 1e-10"):
        lowrank.balanced_truncation(A, B, C, rank=2, time="continuous", maxiter=3)


@pytest.mark.parametrize("args, match", [
    (lambda A, B, C: (A[:, :-1], B, C), "square"),
    (lambda A, B, C: (A, B[:-1], C), "B must have n = 196 rows"),
    (lambda A, B, C: (A, B, C[:, :-1]), "C must have n = 196 columns"),
    (lambda A, B, C: (A.toarray(), B, C), "scipy.sparse matrix or a LinearOperator"),
    (lambda A, B, C: (A, np.full_like(B, np.nan), C), "NaN"),
])
def test_bad_shapes_and_values_raise_clear_errors(heat, args, match):
    A, B, C = model(heat, "continuous")
    with pytest.raises(lr.LTIInputError, match=match):
        lowrank.balanced_truncation(*args(A, B, C), rank=2, time="continuous")


def test_bad_options_raise_clear_errors(heat):
    A, B, C = model(heat, "continuous")
    with pytest.raises(lr.LTIInputError, match="time must be"):
        lowrank.balanced_truncation(A, B, C, rank=2, time="analog")
    with pytest.raises(lr.LTIInputError, match="adi_tol"):
        lowrank.balanced_truncation(A, B, C, rank=2, time="continuous", adi_tol=0)
    with pytest.raises(lr.LTIInputError, match="shifts must"):
        lowrank.balanced_truncation(A, B, C, rank=2, time="continuous", shifts=[1.0])
    with pytest.raises(lr.LTIInputError, match="rank must be in 1"):
        lowrank.balanced_truncation(A, B, C, rank=10_000, time="continuous")


def test_given_shifts_are_cycled(heat):
    A, B, C = model(heat, "continuous")
    lam = np.linalg.eigvalsh(A.toarray())
    shifts = -np.geomspace(-lam.max(), -lam.min(), 8)  # log-spaced over the spectrum
    Fc, _ = lowrank.gramian_factors(A, B, C, time="continuous", shifts=shifts)
    assert Fc.residual <= 1e-10
    np.testing.assert_array_equal(np.real(Fc.shifts[:8]), shifts)
