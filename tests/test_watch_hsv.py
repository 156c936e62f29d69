"""The core's cheap HSV figures for watching training (lti_reduce._watch), against scipy's Lyapunov solver."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla

import lti_reduce as lr
from lti_reduce._watch import _diagonal_hankel_frobenius_norm, _diagonal_hsv_values


def _real_dense(lam, B, C):
    """The real realization of ``y = Re(C x)`` (module docstring of lti_reduce.systems)."""
    A = np.block([[np.diag(lam.real), -np.diag(lam.imag)], [np.diag(lam.imag), np.diag(lam.real)]])
    return A, np.vstack([B.real, B.imag]), np.hstack([C.real, -C.imag])


def _reference(lam, B, C):
    A, Bd, Cd = _real_dense(lam, B, C)
    P = sla.solve_discrete_lyapunov(A, Bd @ Bd.T)
    Q = sla.solve_discrete_lyapunov(A.T, Cd.T @ Cd)
    return np.sort(np.sqrt(np.abs(np.linalg.eigvals(P @ Q))))[::-1], float(np.sqrt(np.trace(P @ Q)))


def _draw(rng, n=5, batch=(3,)):
    lam = rng.uniform(0.2, 0.97, batch + (n,)) * np.exp(1j * rng.uniform(0, np.pi, batch + (n,)))
    B = rng.standard_normal(batch + (n, 1)) + 1j * rng.standard_normal(batch + (n, 1))
    C = rng.standard_normal(batch + (1, n)) + 1j * rng.standard_normal(batch + (1, n))
    return lam, B, C


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_values_and_frobenius_norm_match_scipy_lyapunov_for_a_batch(backend):
    lam, B, C = _draw(np.random.default_rng(0))
    sys = lr.DiagonalSystem(lam, B, C, real_output=True)
    if backend == "torch":
        torch = pytest.importorskip("torch")
        sys = lr.DiagonalSystem(torch.as_tensor(lam), torch.as_tensor(B), torch.as_tensor(C), real_output=True)
    s, f = np.asarray(_diagonal_hsv_values(sys)), np.asarray(_diagonal_hankel_frobenius_norm(sys))
    assert s.shape == (3, 10) and f.shape == (3,)
    for k in range(3):
        ref, fro = _reference(lam[k], B[k], C[k])
        # sqrt(eig(P Q)) and the values-only route both resolve sigma_i to ~sqrt(eps) sigma_1 at the small end
        np.testing.assert_allclose(s[k], ref, rtol=1e-8, atol=1e-7 * ref[0])
        np.testing.assert_allclose(f[k], fro, rtol=1e-9)
        assert s[k, 0] <= f[k] * (1 + 1e-12)  # the Hankel norm is below the Frobenius norm


def test_values_agree_with_the_accurate_route_on_a_semidefinite_gramian():
    # two equal modes with equal inputs: P is singular (semidefinite), the eigh factor handles it
    lam = np.array([[0.5, 0.5, 0.3], [0.6, 0.2, 0.4]]) + 0j
    B = np.ones((2, 3, 1)) + 0j
    C = np.array([[[1.0, 2.0, 0.5]], [[1.0, -1.0, 0.3]]]) + 0j
    sys = lr.DiagonalSystem(lam, B, C, real_output=True)
    np.testing.assert_allclose(_diagonal_hsv_values(sys), lr.hankel_singular_values(sys), atol=1e-10)


def test_the_frobenius_norm_of_a_difference_bounds_the_hsvs_movement():
    rng = np.random.default_rng(4)
    for _ in range(10):
        lam, B, C = _draw(rng, n=4, batch=())
        lam2 = np.clip(np.abs(lam) * (1 + 0.05 * rng.standard_normal(4)), 0.1, 0.98) * np.exp(1j * np.angle(lam))
        s1 = lr.DiagonalSystem(lam, B, C, real_output=True)
        s2 = lr.DiagonalSystem(lam2, B + 0.1 * rng.standard_normal((4, 1)), C, real_output=True)
        diff = lr.DiagonalSystem(np.concatenate([lam, lam2]), np.concatenate([s1.B, s2.B]),
                                 np.concatenate([C, -C], axis=-1), real_output=True)
        moved = np.abs(lr.hankel_singular_values(s1) - lr.hankel_singular_values(s2))
        fro = float(_diagonal_hankel_frobenius_norm(diff))
        assert float(lr.hankel_norm(diff)) <= fro * (1 + 1e-9)
        assert np.sqrt(np.sum(moved ** 2)) <= fro * (1 + 1e-9)  # Mirsky


def test_unstable_and_wrong_inputs_are_refused():
    with pytest.raises(lr.UnstableSystemError, match="spectral radius"):
        _diagonal_hsv_values(lr.DiagonalSystem(np.array([1.0, 0.5]), np.ones((2, 1)), np.ones((1, 2))))
    with pytest.raises(TypeError, match="DiagonalSystem"):
        _diagonal_hankel_frobenius_norm((np.eye(2), np.ones((2, 1)), np.ones((1, 2))))
