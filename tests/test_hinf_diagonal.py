"""hinf_norm on DiagonalSystem (resolvent-grid start of the level-set iteration) against SLICOT AB13DD."""

import numpy as np
import pytest

import lti_reduce as lr
from reference import hinf_norm_ab13dd


def _random(rng, n, m, p, rmax, real_output, with_d):
    lam = np.sqrt(rng.uniform(0.1, 1.0, n)) * rmax * np.exp(1j * rng.uniform(-np.pi, np.pi, n))
    B = rng.standard_normal((n, m)) + 1j * rng.standard_normal((n, m))
    C = rng.standard_normal((p, n)) + 1j * rng.standard_normal((p, n))
    D = rng.standard_normal((p, m)) if with_d else None
    return lr.DiagonalSystem(lam, B, C, D, real_output=real_output)


@pytest.mark.parametrize("real_output", [True, False])
@pytest.mark.parametrize("rmax", [0.9, 0.999, 0.99999])
@pytest.mark.parametrize("seed", range(3))
def test_diagonal_hinf_matches_ab13dd_and_dense(seed, rmax, real_output):
    pytest.importorskip("slycot")
    rng = np.random.default_rng(seed)
    sys = _random(rng, int(rng.integers(1, 25)), int(rng.integers(1, 4)), int(rng.integers(1, 4)), rmax,
                  real_output, seed % 2 == 0)
    dense = [np.asarray(x) for x in sys.to_dense()]
    g = float(lr.hinf_norm(sys))
    assert g == pytest.approx(hinf_norm_ab13dd(*dense), rel=1e-8)
    assert g == pytest.approx(float(lr.hinf_norm(*dense)), rel=1e-8)


def test_diagonal_hinf_batched_matches_each_system():
    rng = np.random.default_rng(7)
    lam = 0.99 * np.exp(1j * rng.uniform(-np.pi, np.pi, (3, 6)))
    B = rng.standard_normal((3, 6, 2)) + 0j
    C = rng.standard_normal((3, 2, 6)) + 0j
    g = np.asarray(lr.hinf_norm(lr.DiagonalSystem(lam, B, C, real_output=True)))
    assert g.shape == (3,)
    for k in range(3):
        ref = hinf_norm_ab13dd(*[np.asarray(x) for x in lr.DiagonalSystem(lam[k], B[k], C[k], real_output=True).to_dense()])
        assert g[k] == pytest.approx(ref, rel=1e-8)


def test_diagonal_hinf_with_no_inputs_is_zero():
    sys = lr.DiagonalSystem(np.array([0.5 + 0.1j]), np.zeros((1, 0), complex), np.ones((2, 1), complex))
    assert float(lr.hinf_norm(sys)) == 0.0


def test_diagonal_hinf_of_an_lru_difference_system():
    pytest.importorskip("slycot")
    rng = np.random.default_rng(3)
    n, r = 24, 10
    lam = np.sqrt(rng.uniform(0.25, 0.998, n)) * np.exp(1j * rng.uniform(0, np.pi / 5, n))
    B = (rng.standard_normal((n, 4)) + 1j * rng.standard_normal((n, 4))) / 4
    C = (rng.standard_normal((4, n)) + 1j * rng.standard_normal((4, n))) / 4
    keep = np.argsort(np.abs(lam))[-r:]
    diff = lr.DiagonalSystem(np.concatenate([lam, lam[keep]]), np.concatenate([B, B[keep]]),
                             np.concatenate([C, -C[:, keep]], axis=1), real_output=True)
    g = float(lr.hinf_norm(diff))
    assert g == pytest.approx(hinf_norm_ab13dd(*[np.asarray(x) for x in diff.to_dense()]), rel=1e-8)
