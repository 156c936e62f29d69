"""Weyl certificates for Hankel singular values: ``hsv_perturbation_bound`` and ``hankel_norm``.

Spec (DESIGN.md, issue 3): for two stable systems with the same inputs and outputs,

    |sigma_i(G1) - sigma_i(G2)| <= sigma_1(G1 - G2),

the Hankel norm of the difference system ``(blkdiag(A1, A2), [B1; B2], [C1, -C2])``; the rank-r ranking is
certified when the gap ``sigma_r(G1) - sigma_{r+1}(G1)`` exceeds twice that bound. Reference for the bound:
SLICOT ``ab09ad`` (``dico='D'``) on the dense difference realization (``reference.error_system``).

Round-off: with dense inputs everything is accurate to ``O(eps) * sigma_1``. Two ``DiagonalSystem`` inputs use
the closed-form path on the difference system, whose Gramians are as large as those of the two systems while its
HSVs are as small as the change: the bound is then accurate only to about ``sqrt(order * eps * ||P|| ||Q||)``
(Gramians of the two systems), which exceeds the ``sqrt(order * eps) * sigma_1`` the docstring states on
unbalanced realizations (measured: 2.2x that, on an example with ``sqrt(||P|| ||Q||) = 31 sigma_1``). A
perturbation below that level gives a bound made of round-off (in these tests it stayed an upper bound, but is
not tight).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import lti_reduce as lr
import reference as ref
from strategies import build_system, seeds, stable_systems
from test_diagonal import build_diagonal_system, diagonal_systems, dense_matrices

EPS = float(np.finfo(np.float64).eps)

# Relative size of a perturbation: from below the fast path's round-off to a large change.
perturbation_sizes = st.floats(-8.0, -1.0).map(lambda e: 10.0**e)


def perturb_diagonal(sys: lr.DiagonalSystem, seed: int, delta: float) -> lr.DiagonalSystem:
    """``lam``, ``B`` and ``C`` moved by a relative amount ``delta`` (lam multiplicatively, kept stable)."""
    rng = np.random.default_rng(seed)
    lam, B, C = (ref.as_numpy(X) for X in (sys.lam, sys.B, sys.C))
    lam2 = lam * np.exp(delta * (rng.standard_normal(lam.shape) + 1j * rng.standard_normal(lam.shape)))
    lam2 = np.where(np.abs(lam2) > 0.9999, 0.9999 * lam2 / np.abs(lam2), lam2)
    B2 = B + delta * np.max(np.abs(B)) * rng.standard_normal(B.shape)
    C2 = C + delta * np.max(np.abs(C)) * rng.standard_normal(C.shape)
    return lr.DiagonalSystem(lam2, B2, C2, real_output=sys.real_output)


@st.composite
def diagonal_pairs(draw, **kwargs):
    """A diagonal system of order >= 2 and a random perturbation of it."""
    sys = draw(diagonal_systems(n=(2, 10), **kwargs))
    return sys, perturb_diagonal(sys, draw(seeds), draw(perturbation_sizes))


@st.composite
def dense_pairs(draw):
    """A dense stable system of order >= 2 and a perturbation of ``A``, ``B``, ``C`` (kept stable)."""
    sys = draw(stable_systems(n=(2, 12), near_unit=False))
    rng = np.random.default_rng(draw(seeds))
    delta = draw(perturbation_sizes)

    def moved(X):
        noise = rng.standard_normal(X.shape) + (1j * rng.standard_normal(X.shape) if np.iscomplexobj(X) else 0)
        return X + delta * np.linalg.norm(X, 2) * noise / np.sqrt(X.size)

    A2 = moved(sys.A)
    assume(ref.spectral_radius(A2) < 0.999)
    return (sys.A, sys.B, sys.C), (A2, moved(sys.B), moved(sys.C))


def hankel_norm_of_difference_ab09ad(first, second) -> float:
    """Reference: the largest HSV of ``G1 - G2`` by SLICOT on the dense difference realization."""
    A1, B1, C1 = first[:3]
    A2, B2, C2 = second[:3]
    A, B, C, _ = ref.error_system(A1, B1, C1, None, A2, B2, C2, None)
    return float(ref.hsv_ab09ad(A, B, C, dico="D")[0])


def fast_path_round_off(first: lr.DiagonalSystem, second: lr.DiagonalSystem) -> float:
    """Accuracy of the closed-form path on the difference system: ``sqrt(order * eps * ||P|| ||Q||)``.

    ``P`` and ``Q`` are block-diagonal bounds on the difference's Gramians (norms add), per batch member.
    """
    norms = []
    for sys in (first, second):
        P, Q = (ref.as_numpy(X) for X in lr.gramians(sys))
        norms.append((np.linalg.norm(P, 2, axis=(-2, -1)), np.linalg.norm(Q, 2, axis=(-2, -1))))
    size = (norms[0][0] + norms[1][0]) * (norms[0][1] + norms[1][1])
    return float(np.max(np.sqrt((first.order + second.order) * EPS * size)))


def dense_round_off(cert) -> float:
    return 1e-10 * max(float(np.max(ref.as_numpy(cert.hsv1))), float(np.max(ref.as_numpy(cert.hsv2))))


# ---------------------------------------------------------------------------------------------------------------
# the inequality holds
# ---------------------------------------------------------------------------------------------------------------


@given(diagonal_pairs())
def test_no_hankel_singular_value_of_a_diagonal_system_moves_more_than_the_bound(pair):
    first, second = pair
    cert = lr.hsv_perturbation_bound(first, second)
    assert float(cert.max_change) <= float(cert.bound) + fast_path_round_off(first, second)


@given(dense_pairs())
def test_no_hankel_singular_value_of_a_dense_system_moves_more_than_the_bound(pair):
    first, second = pair
    cert = lr.hsv_perturbation_bound(first, second)
    hsv1 = lr.hankel_singular_values(*first)
    hsv2 = lr.hankel_singular_values(*second)
    np.testing.assert_allclose(cert.hsv1, hsv1, rtol=0, atol=1e-12 * hsv1[0])
    np.testing.assert_allclose(cert.hsv2, hsv2, rtol=0, atol=1e-12 * hsv2[0])
    assert float(cert.max_change) == pytest.approx(float(np.max(np.abs(hsv1 - hsv2))), abs=1e-12 * hsv1[0])
    assert float(cert.max_change) <= float(cert.bound) + dense_round_off(cert)


def test_the_bound_is_attained_by_a_scaled_system():
    # G2 = (1 + d) G1: every HSV moves by d * sigma_i, the difference is -d G1 with Hankel norm d * sigma_1.
    sys = build_diagonal_system(7, 6, 2, 2, rho=0.95, real_output=True)
    d = 1e-2
    cert = lr.hsv_perturbation_bound(sys, lr.DiagonalSystem(sys.lam, sys.B, (1 + d) * sys.C, real_output=True))
    sigma1 = float(cert.hsv1[0])
    assert float(cert.bound) == pytest.approx(d * sigma1, rel=1e-8)
    assert float(cert.max_change) == pytest.approx(d * sigma1, rel=1e-8)


# ---------------------------------------------------------------------------------------------------------------
# the bound is the Hankel norm of the difference
# ---------------------------------------------------------------------------------------------------------------


@given(diagonal_pairs())
def test_diagonal_bound_equals_the_hankel_norm_of_the_dense_difference_system(slycot, pair):
    first, second = pair
    cert = lr.hsv_perturbation_bound(first, second)
    expected = hankel_norm_of_difference_ab09ad(dense_matrices(first), dense_matrices(second))
    assert abs(float(cert.bound) - expected) <= fast_path_round_off(first, second)


@given(dense_pairs())
def test_dense_bound_equals_the_hankel_norm_of_the_difference_system(slycot, pair):
    first, second = pair
    cert = lr.hsv_perturbation_bound(first, second)
    expected = hankel_norm_of_difference_ab09ad(first, second)
    assert abs(float(cert.bound) - expected) <= dense_round_off(cert) + 1e-8 * expected


@given(diagonal_pairs())
def test_diagonal_and_dense_inputs_give_the_same_certificate(pair):
    first, second = pair
    cert = lr.hsv_perturbation_bound(first, second)
    dense = lr.hsv_perturbation_bound(dense_matrices(first)[:3], dense_matrices(second)[:3])
    mixed = lr.hsv_perturbation_bound(first, dense_matrices(second))
    tol = fast_path_round_off(first, second)
    assert abs(float(cert.bound) - float(dense.bound)) <= tol
    assert abs(float(mixed.bound) - float(dense.bound)) <= tol
    np.testing.assert_allclose(cert.hsv1, dense.hsv1, rtol=0, atol=tol)
    np.testing.assert_allclose(cert.hsv2, dense.hsv2, rtol=0, atol=tol)


def test_identical_systems_have_a_zero_bound():
    first = build_system(3, 8, 2, 2, rho=0.9)
    cert = lr.hsv_perturbation_bound(first.matrices(), first.matrices(), rank=2)
    assert float(cert.bound) <= 1e-13 * float(cert.hsv1[0])
    assert float(cert.max_change) == 0.0
    assert bool(cert.certified)


def test_feedthrough_does_not_enter_the_bound():
    first = build_system(4, 6, 2, 2, rho=0.9)
    other_D = (first.A, first.B, first.C, first.D + 10.0)
    assert float(lr.hsv_perturbation_bound(first.matrices(), other_D).bound) <= 1e-13 * np.abs(first.C).max()


def test_systems_of_different_orders_are_compared_with_zero_padded_hsvs():
    big = build_diagonal_system(5, 6, 1, 1, rho=0.9)
    small = lr.DiagonalSystem(big.lam[:4], big.B[:4], big.C[:, :4])
    cert = lr.hsv_perturbation_bound(big, small, rank=2)
    assert cert.hsv1.shape == cert.hsv2.shape == (6,)
    assert np.all(cert.hsv2[4:] == 0)
    assert float(cert.max_change) <= float(cert.bound) + fast_path_round_off(big, small)


# ---------------------------------------------------------------------------------------------------------------
# the certificate
# ---------------------------------------------------------------------------------------------------------------


@given(diagonal_pairs(), st.data())
def test_certified_means_the_gap_exceeds_twice_the_bound(pair, data):
    first, second = pair
    rank = data.draw(st.integers(1, first.order - 1))
    cert = lr.hsv_perturbation_bound(first, second, rank=rank)
    assert cert.rank == rank
    assert float(cert.gap) == float(cert.hsv1[rank - 1] - cert.hsv1[rank])
    assert bool(cert.certified) == (float(cert.gap) > 2.0 * float(cert.bound))


@given(dense_pairs(), st.data())
def test_a_certified_ranking_is_kept_by_the_perturbed_system(pair, data):
    first, second = pair
    rank = data.draw(st.integers(1, first[0].shape[-1] - 1))
    cert = lr.hsv_perturbation_bound(first, second, rank=rank)
    assume(bool(cert.certified))
    hsv2 = lr.hankel_singular_values(*second)
    # sigma_r(G2) >= sigma_r(G1) - bound > sigma_{r+1}(G1) + bound >= sigma_{r+1}(G2)
    assert hsv2[rank - 1] - hsv2[rank] >= float(cert.gap) - 2.0 * float(cert.bound) - 2 * dense_round_off(cert)
    assert hsv2[rank - 1] > hsv2[rank]


def test_without_a_rank_there_is_no_certificate():
    sys = build_diagonal_system(2, 4, 1, 1)
    cert = lr.hsv_perturbation_bound(sys, perturb_diagonal(sys, 0, 1e-3))
    assert cert.rank is None and cert.gap is None and cert.certified is None


def test_a_small_change_certifies_a_large_gap_and_a_large_change_does_not():
    # The docstring's example, in both directions.
    s1 = lr.DiagonalSystem(np.array([0.9, 0.2]), np.ones((2, 1)), np.ones((1, 2)))
    small = lr.hsv_perturbation_bound(s1, lr.DiagonalSystem(np.array([0.9, 0.21]), np.ones((2, 1)), np.ones((1, 2))),
                                      rank=1)
    large = lr.hsv_perturbation_bound(s1, lr.DiagonalSystem(np.array([0.3, 0.2]), np.ones((2, 1)), np.ones((1, 2))),
                                      rank=1)
    assert bool(small.certified) and not bool(large.certified)


# ---------------------------------------------------------------------------------------------------------------
# hankel_norm
# ---------------------------------------------------------------------------------------------------------------


@given(diagonal_systems(real_output=True))
def test_hankel_norm_of_a_diagonal_system_is_slicots_largest_hsv(slycot, sys):
    expected = ref.hsv_ab09ad(*dense_matrices(sys)[:3])[0]
    assert float(lr.hankel_norm(sys)) == pytest.approx(expected, rel=1e-10)


# ---------------------------------------------------------------------------------------------------------------
# batches, backends, bad input
# ---------------------------------------------------------------------------------------------------------------


def test_batched_certificates_equal_a_loop():
    first = build_diagonal_system(11, 5, 2, 2, batch=(3,), real_output=True)
    second = perturb_diagonal(first, 1, 1e-3)
    cert = lr.hsv_perturbation_bound(first, second, rank=2)
    assert cert.bound.shape == cert.max_change.shape == cert.certified.shape == (3,)
    for i in range(3):
        one = lr.hsv_perturbation_bound(*(lr.DiagonalSystem(s.lam[i], s.B[i], s.C[i], real_output=True)
                                          for s in (first, second)), rank=2)
        tol = fast_path_round_off(first, second)
        assert abs(float(cert.bound[i]) - float(one.bound)) <= tol
        assert bool(cert.certified[i]) == bool(one.certified)


def test_torch_systems_give_a_torch_certificate_equal_to_numpy(torch):
    first = build_diagonal_system(12, 5, 2, 2, real_output=True)
    second = perturb_diagonal(first, 2, 1e-2)
    as_torch = lambda s: lr.DiagonalSystem(*(torch.from_numpy(np.asarray(X)) for X in (s.lam, s.B, s.C)),  # noqa: E731
                                           real_output=True)
    cert_t = lr.hsv_perturbation_bound(as_torch(first), as_torch(second), rank=2)
    cert = lr.hsv_perturbation_bound(first, second, rank=2)
    assert isinstance(cert_t.bound, torch.Tensor) and isinstance(cert_t.certified, torch.Tensor)
    assert float(cert_t.bound) == pytest.approx(float(cert.bound), abs=fast_path_round_off(first, second))


def test_different_numbers_of_inputs_or_outputs_raise():
    first = build_diagonal_system(0, 3, 2, 2)
    second = build_diagonal_system(1, 3, 1, 2)
    with pytest.raises(lr.LTIInputError, match="same inputs and outputs"):
        lr.hsv_perturbation_bound(first, second)
    with pytest.raises(lr.LTIInputError, match="same inputs and outputs"):
        lr.hsv_perturbation_bound(dense_matrices(first)[:3], dense_matrices(second)[:3])


def test_comparing_real_output_with_complex_output_raises():
    first = build_diagonal_system(0, 3, 1, 1, real_output=True)
    second = lr.DiagonalSystem(first.lam, first.B, first.C, real_output=False)
    with pytest.raises(lr.LTIInputError, match="real_output"):
        lr.hsv_perturbation_bound(first, second)


@pytest.mark.parametrize("rank", [0, 6, -1, 2.0, True])
def test_a_rank_without_states_on_both_sides_of_the_cut_raises(rank):
    sys = build_diagonal_system(0, 3, 1, 1, real_output=True)  # order 6: ranks 1..5
    with pytest.raises(lr.LTIInputError, match=r"rank must be an integer in 1\.\.5"):
        lr.hsv_perturbation_bound(sys, sys, rank=rank)


def test_an_unstable_dense_system_raises_with_the_spectral_radius():
    stable = build_system(0, 3, 1, 1, rho=0.9)
    with pytest.raises(lr.UnstableSystemError, match="spectral radius 1.2"):
        lr.hsv_perturbation_bound(stable.matrices(), (1.2 * np.eye(3), stable.B, stable.C))
