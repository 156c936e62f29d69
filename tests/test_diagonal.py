"""Diagonal (SSM-layer) systems: closed-form Gramians, the real-output map, backends and bad input.

Spec (DESIGN.md, issue 3): a :class:`lti_reduce.DiagonalSystem` ``(lam, B, C, D)`` is ``x+ = diag(lam) x + B u``
with ``y = C x + D u`` (``real_output=False``) or ``y = Re(C x) + D u`` (``real_output=True``, the real order-2n
map an LRU computes). Its Gramians and Hankel singular values must equal those of the dense realization
``DiagonalSystem.to_dense()``; for ``real_output=True`` that realization is the real 2n-state system built from
the blocks ``[[Re lam, -Im lam], [Im lam, Re lam]]`` and SLICOT ``ab09ad`` (``dico='D'``) is the reference.

Accuracy of the fast path (numpy): every HSV to ``1e-11 * sigma_1`` against SLICOT ``ab09ad`` and the dense path
(square-root method on factors of both closed-form Gramians; an ``eigh`` of ``Lc^H Q Lc`` only where all HSVs are
``>= 1e-3 sigma_1``, so that its ``eps sigma_1^2 / sigma_i`` error stays below that). torch inputs use the
Cholesky or ``eigh`` factors of the formed Gramians: ``sqrt(order * eps) * sigma_1`` in the worst case.

The builders here (``build_diagonal_system``, ``diagonal_systems``) are shared with ``test_modal.py`` and
``test_perturbation.py``.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lti_reduce as lr
import reference as ref
from strategies import seeds

EPS = float(np.finfo(np.float64).eps)
GRID = ref.unit_circle_grid(64)

# ---------------------------------------------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------------------------------------------


def build_diagonal_system(seed: int, n: int, m: int, p: int, *, lam_kind: str = "complex", rho: float = 0.95,
                          batch: tuple = (), real_output: bool = False, with_D: bool = False,
                          gamma_normalized: bool = False) -> lr.DiagonalSystem:
    """A random stable diagonal system, deterministic in ``seed``.

    ``lam_kind``: ``"complex"`` (moduli in ``[0.3 rho, rho]``, the first equal to ``rho``, random phases),
    ``"real"`` (real ``lam`` of both signs, real ``B``, ``C``) or ``"mixed"`` (complex, some modes real).
    ``gamma_normalized`` scales row ``i`` of ``B`` by ``sqrt(1 - |lam_i|^2)`` as the LRU does.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(batch) + (n,)
    radius = rng.uniform(0.3 * rho, rho, shape)
    radius[..., 0] = rho
    if lam_kind == "real":
        lam = radius * rng.choice([-1.0, 1.0], shape)
        B = rng.standard_normal(tuple(batch) + (n, m))
        C = rng.standard_normal(tuple(batch) + (p, n))
    else:
        lam = radius * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
        if lam_kind == "mixed":  # some modes exactly real (imaginary part exactly 0), with complex B and C
            lam = np.where(rng.random(shape) < 0.4, radius * rng.choice([-1.0, 1.0], shape) + 0j, lam)
        B = (rng.standard_normal(tuple(batch) + (n, m)) + 1j * rng.standard_normal(tuple(batch) + (n, m))) / np.sqrt(2)
        C = (rng.standard_normal(tuple(batch) + (p, n)) + 1j * rng.standard_normal(tuple(batch) + (p, n))) / np.sqrt(2)
    if gamma_normalized:
        B = B * np.sqrt(1.0 - np.abs(lam) ** 2)[..., :, None]
    D = None
    if with_D:
        D = rng.standard_normal(tuple(batch) + (p, m))
        if not real_output and lam_kind != "real":
            D = D + 1j * rng.standard_normal(D.shape)
    return lr.DiagonalSystem(lam, B, C, D, real_output=real_output)


@st.composite
def diagonal_systems(draw, *, n=(1, 16), m=(1, 4), p=(1, 4), lam_kind=None, real_output=None, near_unit=None,
                     batched: bool | None = False, with_D=None) -> lr.DiagonalSystem:
    """Stable diagonal systems; each keyword fixes that aspect or leaves it to Hypothesis (``None``).

    Spectral radius in ``[0.1, 0.95]`` or, near the unit circle, ``[0.99, 0.999]``; batches of shape ``(k,)`` or
    ``(k, l)`` with ``k, l <= 3``.
    """
    size = lambda spec: spec if isinstance(spec, int) else draw(st.integers(*spec))  # noqa: E731
    nn, mm, pp = size(n), size(m), size(p)
    kind = draw(st.sampled_from(["complex", "complex", "real", "mixed"])) if lam_kind is None else lam_kind
    ro = draw(st.booleans()) if real_output is None else real_output
    near = draw(st.booleans()) if near_unit is None else near_unit
    rho = draw(st.floats(0.99, 0.999) if near else st.floats(0.1, 0.95))
    use_batch = draw(st.booleans()) if batched is None else batched
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))) if use_batch else ()
    D = draw(st.booleans()) if with_D is None else with_D
    return build_diagonal_system(draw(seeds), nn, mm, pp, lam_kind=kind, rho=rho, batch=batch, real_output=ro,
                                 with_D=D)


def rel_err(X, Y) -> float:
    """``||X - Y||_F / ||Y||_F`` over all axes (0 when both vanish)."""
    X, Y = ref.as_numpy(X), ref.as_numpy(Y)
    den = np.linalg.norm(Y)
    return float(np.linalg.norm(X - Y) / den) if den > 0 else float(np.linalg.norm(X))


def dense_matrices(sys: lr.DiagonalSystem):
    """``to_dense()`` as numpy arrays."""
    return tuple(ref.as_numpy(X) for X in sys.to_dense())


# The numpy fast path's accuracy target against SLICOT and the dense path, relative to sigma_1 (issue 15).
HSV_RTOL = 1e-11


def assert_hsv_accurate(hsv, hsv_ref):
    """``max |hsv - hsv_ref| <= HSV_RTOL * sigma_1``, per batch member."""
    hsv, hsv_ref = ref.as_numpy(hsv), ref.as_numpy(hsv_ref)
    assert hsv.shape == hsv_ref.shape
    err = np.max(np.abs(hsv - hsv_ref), axis=-1) / hsv_ref[..., 0]
    assert np.all(err <= HSV_RTOL), np.max(err)


def assert_hsv_close_to_dense_path(hsv, hsv_ref, sys):
    """The torch fast path's documented accuracy, per batch member.

    HSVs are accurate to ``sqrt(order * eps * ||P||_F ||Q||_F)`` in absolute terms in the worst case
    (the ``eigh`` factor of a semidefinite formed Gramian); HSVs well above that level agree to 1e-10
    relative to sigma_1.
    """
    hsv, hsv_ref = ref.as_numpy(hsv), ref.as_numpy(hsv_ref)
    P, Q = (ref.as_numpy(G) for G in lr.gramians(sys))
    fro = lambda G: np.sqrt(np.sum(np.abs(G) ** 2, axis=(-2, -1)))[..., None]  # noqa: E731
    accuracy = np.sqrt(sys.order * EPS * fro(P) * fro(Q))
    sigma1 = hsv_ref[..., :1]
    err = np.abs(hsv - hsv_ref)
    assert np.all(err <= 2.0 * accuracy), np.max(err / accuracy)
    large = hsv_ref >= 1e4 * accuracy
    assert np.all(err[large] <= 1e-10 * np.broadcast_to(sigma1, err.shape)[large]), np.max(err / sigma1)


def real_output_response(lam, B, C, D, omegas):
    """``G(z) = (C (zI - L)^{-1} B + conj(C) (zI - conj L)^{-1} conj(B)) / 2 + D`` for ``y = Re(Cx) + Du``."""
    lam, B, C = np.asarray(lam), np.asarray(B), np.asarray(C)
    z = np.exp(1j * np.asarray(omegas))[:, None]
    half = np.einsum("pn,kn,nm->kpm", C, 1.0 / (z - lam), B)
    half_conj = np.einsum("pn,kn,nm->kpm", C.conj(), 1.0 / (z - lam.conj()), B.conj())
    G = 0.5 * (half + half_conj)
    return G if D is None else G + np.asarray(D)


# ---------------------------------------------------------------------------------------------------------------
# the complex map x -> Cx (real_output=False): equal to the dense path on diag(lam)
# ---------------------------------------------------------------------------------------------------------------


@given(diagonal_systems(real_output=False, batched=None))
def test_diagonal_gramians_equal_the_dense_path_on_diag_lam(sys):
    P, Q = lr.gramians(sys)
    A, B, C, _ = dense_matrices(sys)
    P_ref, Q_ref = lr.gramians(A, B, C)
    assert P.shape == Q.shape == sys.batch_shape + (sys.n, sys.n)
    assert rel_err(P, P_ref) < 1e-10 and rel_err(Q, Q_ref) < 1e-10


@given(diagonal_systems(real_output=False, batched=None))
def test_diagonal_hankel_singular_values_equal_the_dense_path_on_diag_lam(sys):
    hsv = lr.hankel_singular_values(sys)
    A, B, C, _ = dense_matrices(sys)
    hsv_ref = lr.hankel_singular_values(A, B, C)
    assert hsv.shape == sys.batch_shape + (sys.n,)
    assert_hsv_accurate(hsv, hsv_ref)


@given(diagonal_systems(real_output=False, lam_kind="complex"))
def test_diagonal_gramians_match_scipy_bartels_stewart(sys):
    P, Q = lr.gramians(sys)
    P_ref, Q_ref = ref.gramians_scipy(*dense_matrices(sys)[:3])
    assert rel_err(P, P_ref) < 1e-10 and rel_err(Q, Q_ref) < 1e-10


@given(diagonal_systems(real_output=None, batched=None))
def test_diagonal_gramian_factors_reproduce_the_closed_form_gramians(sys):
    Lc, Lo = (ref.as_numpy(X) for X in lr.gramian_factors(sys))
    P, Q = lr.gramians(sys)
    assert Lc.shape[:-1] == Lo.shape[:-1] == sys.batch_shape + (sys.order,)
    assert rel_err(Lc @ np.swapaxes(Lc, -1, -2).conj(), P) < 1e-12
    assert rel_err(Lo @ np.swapaxes(Lo, -1, -2).conj(), Q) < 1e-12


@given(diagonal_systems(real_output=None, batched=True))
def test_batched_diagonal_hankel_singular_values_equal_a_loop_over_the_batch(sys):
    hsv = ref.as_numpy(lr.hankel_singular_values(sys))
    for idx in np.ndindex(*sys.batch_shape):
        one = lr.DiagonalSystem(sys.lam[idx], sys.B[idx], sys.C[idx], real_output=sys.real_output)
        h1 = ref.as_numpy(lr.hankel_singular_values(one))
        # Batched and single LAPACK calls round differently: equal to the fast path's accuracy, no better.
        assert_hsv_accurate(hsv[idx], h1)


def test_real_lam_gives_real_gramians_and_hankel_singular_values():
    sys = build_diagonal_system(4, 6, 2, 3, lam_kind="real")
    P, Q = lr.gramians(sys)
    hsv = lr.hankel_singular_values(sys)
    assert not np.iscomplexobj(P) and not np.iscomplexobj(Q) and not np.iscomplexobj(hsv)
    P_ref, Q_ref = ref.gramians_scipy(*dense_matrices(sys)[:3])
    assert rel_err(P, P_ref) < 1e-12 and rel_err(Q, Q_ref) < 1e-12


def test_real_diagonal_system_emits_no_complex_warning():
    sys = build_diagonal_system(4, 6, 2, 3, lam_kind="real")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lr.gramians(sys)
        lr.balanced_truncation(sys, rank=2)


def test_unbatched_lam_broadcasts_against_batched_input_and_output_matrices():
    one = build_diagonal_system(8, 5, 2, 2)
    B = np.stack([one.B, 2.0 * one.B])
    sys = lr.DiagonalSystem(one.lam, B, one.C)
    hsv = lr.hankel_singular_values(sys)
    assert hsv.shape == (2, 5)
    np.testing.assert_allclose(hsv[1], 2.0 * lr.hankel_singular_values(one), rtol=1e-10)


# ---------------------------------------------------------------------------------------------------------------
# the real-output map y = Re(Cx) + Du: the real 2n-state system
# ---------------------------------------------------------------------------------------------------------------


@given(diagonal_systems(real_output=True, with_D=True, n=(1, 8)))
def test_the_real_realization_has_the_transfer_function_of_y_equal_re_cx(sys):
    A, B, C, D = dense_matrices(sys)
    assert A.shape == (2 * sys.n, 2 * sys.n) and not np.iscomplexobj(A)
    w = ref.unit_circle_grid(64)
    G = ref.freqresp(A, B, C, D, w)
    G_ref = real_output_response(sys.lam, sys.B, sys.C, sys.D, w)
    assert rel_err(G, G_ref) < 1e-10


@given(diagonal_systems(real_output=True, batched=None))
def test_real_output_gramians_equal_scipy_on_the_real_2n_realization(sys):
    P, Q = (ref.as_numpy(X) for X in lr.gramians(sys))
    assert P.shape == sys.batch_shape + (2 * sys.n, 2 * sys.n) and not np.iscomplexobj(P)
    A, B, C, _ = dense_matrices(sys)
    for idx in np.ndindex(*sys.batch_shape):
        P_ref, Q_ref = ref.gramians_scipy(A[idx], B[idx], C[idx])
        assert rel_err(P[idx], P_ref) < 1e-10 and rel_err(Q[idx], Q_ref) < 1e-10


@given(diagonal_systems(real_output=True))
def test_real_output_hankel_singular_values_equal_slicot_ab09ad_on_the_real_2n_realization(slycot, sys):
    hsv = lr.hankel_singular_values(sys)
    assert hsv.shape == (2 * sys.n,)
    hsv_ref = ref.hsv_ab09ad(*dense_matrices(sys)[:3], dico="D")
    assert_hsv_accurate(hsv, hsv_ref)


def test_real_output_hankel_singular_values_differ_from_those_of_the_complex_map():
    # The subtlety of issue 3: an LRU computes y = Re(Cx), a real system of order 2n. The HSVs of the complex
    # map x -> Cx (what the published CompreSSM code ranks states by) are different numbers, so a cut chosen
    # from them ranks the wrong states and its error bound is not a bound for the layer.
    sys = build_diagonal_system(0, 8, 2, 2, rho=0.99, real_output=True, gamma_normalized=True)
    hsv_real = lr.hankel_singular_values(sys)
    hsv_complex = lr.hankel_singular_values(lr.DiagonalSystem(sys.lam, sys.B, sys.C, real_output=False))
    assert hsv_real.shape == (16,) and hsv_complex.shape == (8,)
    np.testing.assert_allclose(hsv_real, ref.hsv_ab09ad(*dense_matrices(sys)[:3]), rtol=0, atol=1e-10 * hsv_real[0])
    relative_difference = np.abs(hsv_real[:8] - hsv_complex) / hsv_complex
    assert np.max(relative_difference) > 0.1, relative_difference


def test_real_output_with_real_data_is_the_complex_map_plus_n_unreachable_states():
    # A real lam with real B and C and real_output=True is allowed (documented): each mode still carries the
    # states Re x and Im x, and Im x is never driven (Im B = 0), so n HSVs are zero and the rest are those of x -> Cx.
    sys = build_diagonal_system(3, 5, 2, 2, lam_kind="real", real_output=True)
    hsv = lr.hankel_singular_values(sys)
    hsv_complex = lr.hankel_singular_values(lr.DiagonalSystem(sys.lam, sys.B, sys.C))
    np.testing.assert_allclose(hsv[:5], hsv_complex, rtol=1e-10)
    assert np.all(np.abs(hsv[5:]) <= np.sqrt(10 * EPS) * hsv[0])


def test_real_output_hsvs_do_not_jump_when_real_eigenvalues_carry_round_off_imaginary_parts():
    # lam = r * exp(i pi) has an imaginary part of 1e-16: the real realization then has 2x2 blocks
    # [[a, -1e-16], [1e-16, a]], nearly repeated eigenvalues. The HSVs must be those of the exactly real lam.
    # (SLICOT ab09ad, equil='N', is not a reliable reference on this realization: on this example its HSVs are
    # off by 2% of sigma_1, while scipy's Bartels-Stewart Gramians, sb03md, and ab09ad after a random orthogonal
    # similarity all agree with lti_reduce.)
    rng = np.random.default_rng(1)
    n = 8
    radius = rng.uniform(0.3, 0.98, n)
    phase = np.where(np.arange(n) % 2 == 0, np.pi, rng.uniform(-np.pi, np.pi, n))
    lam = radius * np.exp(1j * phase)
    assert np.all(np.abs(lam[::2].imag) > 0)
    B = rng.standard_normal((n, 1)) + 1j * rng.standard_normal((n, 1))
    C = rng.standard_normal((1, n)) + 1j * rng.standard_normal((1, n))
    sys = lr.DiagonalSystem(lam, B, C, real_output=True)
    exact = lr.DiagonalSystem(np.where(np.arange(n) % 2 == 0, lam.real + 0j, lam), B, C, real_output=True)
    hsv = lr.hankel_singular_values(sys)
    np.testing.assert_allclose(hsv, lr.hankel_singular_values(exact), rtol=0, atol=np.sqrt(2 * n * EPS) * hsv[0])
    P, Q = ref.gramians_scipy(*dense_matrices(sys)[:3])
    hsv_scipy = np.sort(np.sqrt(np.abs(np.linalg.eigvals(P @ Q))))[::-1]
    np.testing.assert_allclose(hsv[:n], hsv_scipy[:n], rtol=1e-8)


@given(diagonal_systems(real_output=True, n=(1, 6)))
def test_hinf_norm_of_a_diagonal_system_is_that_of_its_dense_realization(sys):
    A, B, C, D = dense_matrices(sys)
    norm = float(lr.hinf_norm(sys, None, None))
    assert norm == pytest.approx(float(lr.hinf_norm(A, B, C, D)), rel=1e-9)


def test_hinf_norm_accepts_a_diagonal_system_alone():
    sys = build_diagonal_system(1, 3, 1, 1, real_output=True)
    assert float(lr.hinf_norm(sys)) > 0


def test_full_order_balancing_of_a_non_minimal_diagonal_system_is_stable():
    # Found by Hypothesis (thorough profile). A real lam with complex B and one output: the real 2-state
    # realization has A = lam I and C of rank 1, so one state is unobservable and its HSV is exactly zero
    # (the dense path gives 1.5e-14). Balanced truncation must never return an unstable model.
    lam = np.array([-0.9956828522626159 + 0.0j])
    B = np.array([[0.4660828271676282 - 0.6322072651008774j, -0.3892962022869637 + 0.33109741420649536j]])
    C = np.array([[-1.1480282852680208 + 0.8612610781539732j]])
    res = lr.balanced_truncation(lr.DiagonalSystem(lam, B, C, real_output=True), rank=2)
    assert res.hsv[1] <= 1e-12 * res.hsv[0], res.hsv
    assert np.max(np.abs(np.linalg.eigvals(res.A))) < 1.0, np.linalg.eigvals(res.A)


# ---------------------------------------------------------------------------------------------------------------
# the fast path's documented accuracy, at its hardest: near the unit circle
# ---------------------------------------------------------------------------------------------------------------


@given(diagonal_systems(near_unit=True, n=(4, 16), real_output=None, lam_kind="complex"))
def test_fast_path_hankel_singular_values_are_within_1e_11_sigma1_of_the_dense_path(sys):
    hsv = lr.hankel_singular_values(sys)
    hsv_ref = lr.hankel_singular_values(*dense_matrices(sys)[:3])
    assert_hsv_accurate(hsv, hsv_ref)


# ---------------------------------------------------------------------------------------------------------------
# accuracy against SLICOT: every HSV to 1e-11 sigma_1 (issue 15, part 3; the eigh-only path gave 1.3e-7)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_real_output_hsvs_of_the_issue_case_match_slicot_to_1e_11_sigma1(slycot, seed):
    # n = 32 complex modes, m = 4, p = 3: the Gramians are numerically semidefinite (fast HSV decay), where the
    # eigenproblem Lc^H Q Lc = V S^2 V^H alone resolves HSVs only to sqrt(eps) sigma_1.
    sys = build_diagonal_system(seed, 32, 4, 3, real_output=True)
    hsv = lr.hankel_singular_values(sys)
    hsv_ref = ref.hsv_ab09ad(*dense_matrices(sys)[:3], dico="D")
    assert hsv_ref[-1] < 1e-4 * hsv_ref[0]  # small HSVs, which lose digits to eps sigma_1^2 / sigma_i in the eigh
    assert_hsv_accurate(hsv, hsv_ref)


@pytest.mark.parametrize("lam_kind", ["complex", "real", "mixed"])
def test_complex_output_hsvs_match_slicot_on_the_realification(slycot, lam_kind):
    sys = build_diagonal_system(7, 24, 3, 2, lam_kind=lam_kind, rho=0.99)
    A, B, C, _ = dense_matrices(sys)
    assert_hsv_accurate(lr.hankel_singular_values(sys), ref.hsv_ab09ad(A, B, C, dico="D"))


def test_batched_hsvs_match_slicot_per_member(slycot):
    sys = build_diagonal_system(3, 20, 2, 3, real_output=True, batch=(2, 2), rho=0.999, gamma_normalized=True)
    hsv = ref.as_numpy(lr.hankel_singular_values(sys))
    A, B, C, _ = dense_matrices(sys)
    for idx in np.ndindex(2, 2):
        assert_hsv_accurate(hsv[idx], ref.hsv_ab09ad(A[idx], B[idx], C[idx], dico="D"))


def test_definite_gramians_take_the_cholesky_route_and_stay_accurate(slycot):
    # Many inputs and outputs (the SSM-layer case): both Gramians are well conditioned, every HSV is above
    # 1e-3 sigma_1, and the cheap eigh route is taken. Still 1e-11 sigma_1 against SLICOT.
    from lti_reduce.systems import _EIGH_MIN_RATIO, _diagonal_gramians_working, _numpy_cholesky

    sys = build_diagonal_system(2, 12, 16, 16, real_output=True, gamma_normalized=True)
    P, _ = _diagonal_gramians_working(sys)
    assert bool(_numpy_cholesky(P)[1])
    hsv_ref = ref.hsv_ab09ad(*dense_matrices(sys)[:3], dico="D")
    assert hsv_ref[-1] ** 2 >= _EIGH_MIN_RATIO * hsv_ref[0] ** 2
    assert_hsv_accurate(lr.hankel_singular_values(sys), hsv_ref)


def test_cholesky_of_an_ill_conditioned_gramian_is_not_used(slycot):
    # One input and rho = 0.5: P is numerically singular, yet its Cholesky factorization succeeds (found in a
    # random scan: taking that factor gave 1.7e-11 sigma_1 against SLICOT). The conditioning test sends it to
    # the generalized Schur algorithm instead.
    from lti_reduce.systems import _diagonal_gramians_working, _well_conditioned_cholesky

    sys = build_diagonal_system(495, 12, 1, 7, rho=0.5)
    P, _ = _diagonal_gramians_working(sys)
    np.linalg.cholesky(P)  # succeeds
    assert _well_conditioned_cholesky(P) is None
    A, B, C, _ = dense_matrices(sys)
    assert_hsv_accurate(lr.hankel_singular_values(sys), ref.hsv_ab09ad(A, B, C, dico="D"))


@given(diagonal_systems(real_output=None, batched=None, n=(1, 12)))
def test_hypothesis_hsvs_match_slicot_to_1e_11_sigma1(slycot, sys):
    hsv = ref.as_numpy(lr.hankel_singular_values(sys))
    A, B, C, _ = dense_matrices(sys)
    for idx in np.ndindex(*sys.batch_shape):
        assert_hsv_accurate(hsv[idx], ref.hsv_ab09ad(A[idx], B[idx], C[idx], dico="D"))


@pytest.mark.parametrize("seed", range(3))
def test_balanced_truncation_of_the_issue_case_matches_slicot_ab09ad(slycot, seed):
    # The diagonal balance / balanced_truncation path shares the HSV computation: same HSVs, same reduced
    # transfer function as SLICOT on the real 2n realization.
    sys = build_diagonal_system(seed, 32, 4, 3, real_output=True, with_D=True)
    A, B, C, D = dense_matrices(sys)
    res = lr.balanced_truncation(sys, rank=12)
    Ar, Br, Cr, Dr, hsv_ref = ref.balanced_truncation_ab09ad(A, B, C, D, rank=12)
    assert_hsv_accurate(res.hsv, hsv_ref)
    G, G_ref = ref.freqresp(res.A, res.B, res.C, res.D, GRID), ref.freqresp(Ar, Br, Cr, Dr, GRID)
    assert np.max(np.abs(G - G_ref)) <= 1e-9 * np.max(np.abs(G_ref))


# ---------------------------------------------------------------------------------------------------------------
# large orders: Lc^H Q Lc by BLAS triangular products, A V from the diagonal structure
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_triangular_congruence_equals_the_plain_products(dtype):
    from lti_reduce.systems import _TRMM_MIN_ORDER, _congruence

    rng = np.random.default_rng(1)
    N = _TRMM_MIN_ORDER + 16
    draw = lambda *s: rng.standard_normal(s) + (1j * rng.standard_normal(s) if dtype == np.complex128 else 0)  # noqa: E731
    X, Y = draw(2, N, N + 3), draw(2, N, N + 5)
    Q = X @ np.swapaxes(X, -1, -2).conj()
    L = np.linalg.cholesky(Y @ np.swapaxes(Y, -1, -2).conj())
    QL, M = _congruence(np, L, Q, True)
    assert rel_err(QL, Q @ L) < 1e-13
    assert rel_err(M, np.swapaxes(L, -1, -2).conj() @ Q @ L) < 1e-13


@pytest.mark.parametrize("real_output, n", [(True, 40), (False, 70), (False, 66)], ids=["real_output", "complex_map", "real_lam"])
@pytest.mark.parametrize("method", ["truncate", "spa"])
def test_large_order_fast_path_reduces_like_the_dense_path(real_output, n, method):
    from lti_reduce.systems import _TRMM_MIN_ORDER

    sys = build_diagonal_system(11, n, 3, 2, rho=0.95, real_output=real_output, batch=(2,), with_D=True,
                                lam_kind="real" if n == 66 else "complex")
    assert sys.order >= _TRMM_MIN_ORDER
    A, B, C, D = dense_matrices(sys)
    assert_hsv_accurate(lr.hankel_singular_values(sys), lr.hankel_singular_values(A, B, C))
    res = lr.balanced_truncation(sys, rank=10, method=method)
    res_ref = lr.balanced_truncation(A, B, C, D, rank=10, method=method)
    # SPA also uses the states of the smallest HSVs, hence its looser tolerance.
    tol = 1e-9 if method == "truncate" else 1e-7
    for i in range(2):
        G = ref.freqresp(*(ref.as_numpy(X[i]) for X in (res.A, res.B, res.C, res.D)), GRID)
        G_ref = ref.freqresp(*(ref.as_numpy(X[i]) for X in (res_ref.A, res_ref.B, res_ref.C, res_ref.D)), GRID)
        assert np.max(np.abs(G - G_ref)) < tol * np.max(np.abs(G_ref))
    # A V from the diagonal structure equals the dense product with to_dense()'s A (same decomposition).
    from dataclasses import replace

    from lti_reduce.balancing import _reduce

    dec = res._dec
    assert dec.lam is not None
    for X, Y in zip(_reduce(dec, 10, method), _reduce(replace(dec, lam=None), 10, method)):
        assert rel_err(X, Y) < 1e-12


# ---------------------------------------------------------------------------------------------------------------
# torch
# ---------------------------------------------------------------------------------------------------------------


def to_torch(torch, sys: lr.DiagonalSystem, dtype=None) -> lr.DiagonalSystem:
    def conv(x):
        if x is None:
            return None
        t = torch.from_numpy(np.asarray(x))
        if dtype is not None:
            t = t.to(dtype if t.is_complex() else {torch.complex64: torch.float32}.get(dtype, torch.float64))
        return t

    return lr.DiagonalSystem(conv(sys.lam), conv(sys.B), conv(sys.C), conv(sys.D), real_output=sys.real_output)


@given(diagonal_systems(real_output=None, batched=None))
def test_torch_diagonal_gramians_and_hsvs_equal_numpy(torch, sys):
    tsys = to_torch(torch, sys)
    P, Q = lr.gramians(tsys)
    hsv = lr.hankel_singular_values(tsys)
    assert isinstance(P, torch.Tensor) and isinstance(hsv, torch.Tensor)
    real_data = not np.iscomplexobj(sys.lam) and not np.iscomplexobj(sys.B) and not np.iscomplexobj(sys.C)
    assert P.dtype == (torch.float64 if sys.real_output or real_data else torch.complex128)
    assert hsv.dtype == torch.float64
    P_np, Q_np = lr.gramians(sys)
    assert rel_err(P, P_np) < 1e-12 and rel_err(Q, Q_np) < 1e-12
    # HSVs below sqrt(eps) * sigma_1 are round-off on either backend (different Cholesky/eigh kernels): compare
    # both with the accurate dense path at the fast path's documented accuracy.
    hsv_dense = lr.hankel_singular_values(*dense_matrices(sys)[:3])
    assert_hsv_close_to_dense_path(hsv, hsv_dense, sys)


@pytest.mark.parametrize("real_output", [False, True], ids=["complex_map", "real_output"])
def test_complex64_torch_input_returns_single_precision_accurate_to_1e_5(torch, real_output):
    sys = build_diagonal_system(5, 12, 3, 3, rho=0.99, real_output=real_output, batch=(2,), gamma_normalized=True)
    single = to_torch(torch, sys, torch.complex64)
    P, Q = lr.gramians(single)
    hsv = lr.hankel_singular_values(single)
    assert P.dtype == Q.dtype == (torch.float32 if real_output else torch.complex64)
    assert hsv.dtype == torch.float32
    # Reference: the same single-precision data, computed in double precision.
    double = lr.DiagonalSystem(*(X.to(torch.complex128) for X in (single.lam, single.B, single.C)),
                               real_output=real_output)
    hsv_ref = lr.hankel_singular_values(double).numpy()
    P_ref, _ = lr.gramians(double)
    np.testing.assert_allclose(hsv.numpy(), hsv_ref, rtol=0, atol=1e-5 * np.max(hsv_ref))
    assert rel_err(P, P_ref) < 1e-5


def test_complex64_numpy_input_returns_single_precision():
    sys = build_diagonal_system(6, 6, 2, 2, real_output=True)
    single = lr.DiagonalSystem(sys.lam.astype(np.complex64), sys.B.astype(np.complex64), sys.C.astype(np.complex64),
                               real_output=True)
    assert lr.hankel_singular_values(single).dtype == np.float32
    assert lr.gramians(single)[0].dtype == np.float32


def test_torch_balanced_truncation_of_a_diagonal_system_returns_torch_tensors(torch):
    sys = to_torch(torch, build_diagonal_system(2, 6, 2, 2, real_output=True, with_D=True))
    res = lr.balanced_truncation(sys, rank=4)
    for X in (res.A, res.B, res.C, res.D, res.hsv):
        assert isinstance(X, torch.Tensor) and X.dtype == torch.float64
    assert tuple(res.A.shape) == (4, 4)



def mixed_route_batch(torch):
    """A torch batch of real-output systems (n = 8, m = p = 4) whose members take different routes.

    Member 0: four inputs and outputs, every HSV above 1e-3 sigma_1 (the ``eigh`` route). Members 1-3: one
    input and one output (the other columns zero), poles of modulus <= 0.4: HSVs decaying to 1e-12 sigma_1 and
    below, ill-conditioned Gramians (the SVD route on Cholesky or ``eigh`` factors).
    """
    members = [build_diagonal_system(11, 8, 4, 4, real_output=True, rho=0.9, gamma_normalized=True)]
    for seed in (12, 13, 14):
        sys = build_diagonal_system(seed, 8, 4, 4, real_output=True, rho=0.4)
        B, C = np.array(sys.B), np.array(sys.C)
        B[:, 1:], C[1:, :] = 0.0, 0.0
        members.append(lr.DiagonalSystem(sys.lam, B, C, real_output=True))
    stack = lambda name: np.stack([getattr(x, name) for x in members])  # noqa: E731
    return to_torch(torch, lr.DiagonalSystem(stack("lam"), stack("B"), stack("C"), real_output=True))


def test_torch_fast_path_on_ill_conditioned_members_matches_slicot(torch, slycot):
    # The torch path decides the route per member and computes each route only on its members; every member
    # keeps the torch path's documented accuracy against SLICOT ab09ad on the real 2n realization, and the
    # batch gives what each member gives alone.
    tsys = mixed_route_batch(torch)
    hsv = ref.as_numpy(lr.hankel_singular_values(tsys))
    A, B, C, _ = dense_matrices(tsys)
    hsv_ref = np.stack([ref.hsv_ab09ad(A[k], B[k], C[k], dico="D") for k in range(4)])
    assert hsv_ref[0, -1] >= 1e-3 * hsv_ref[0, 0]
    assert np.all(hsv_ref[1:, -1] <= 1e-12 * hsv_ref[1:, 0])
    assert_hsv_close_to_dense_path(hsv, hsv_ref, tsys)
    for k in range(4):
        alone = lr.DiagonalSystem(tsys.lam[k], tsys.B[k], tsys.C[k], real_output=True)
        np.testing.assert_allclose(ref.as_numpy(lr.hankel_singular_values(alone)), hsv[k], rtol=0,
                                   atol=1e-12 * hsv[k, 0])


def test_torch_balanced_truncation_of_ill_conditioned_members_matches_slicot_transfer_functions(torch, slycot):
    # Order 4 of 16 keeps HSVs far above round-off in every member; the reduced transfer functions equal SLICOT's
    # ab09ad reduced models on the unit circle (realizations differ by a state transformation).
    tsys = mixed_route_batch(torch)
    res = lr.balanced_truncation(tsys, rank=4)
    A, B, C, D = dense_matrices(tsys)
    omegas = ref.unit_circle_grid(256)
    for k in range(4):
        Ar, Br, Cr, Dr, hsv_ref = ref.balanced_truncation_ab09ad(A[k], B[k], C[k], D[k], rank=4)
        assert hsv_ref[3] >= 1e-6 * hsv_ref[0]
        G = ref.freqresp(*(ref.as_numpy(X)[k] for X in (res.A, res.B, res.C, res.D)), omegas)
        G_ref = ref.freqresp(Ar, Br, Cr, Dr, omegas)
        assert np.max(np.abs(G - G_ref)) <= 1e-8 * hsv_ref[0], np.max(np.abs(G - G_ref)) / hsv_ref[0]



def test_torch_batch_decomposed_in_cpu_blocks_equals_the_whole_batch_and_matches_slicot(torch, slycot, monkeypatch):
    # A CPU batch is balanced block by block (the blocks stay in cache); blocks of 3 split the mixed-route batch
    # (members on the eigh and the SVD routes) into a mixed and a single-member block, batched as (2, 2). Each
    # member's HSVs equal those of the one-block decomposition (to round-off: LAPACK's batched kernels may order
    # their work by batch size) and keep the documented accuracy against SLICOT ab09ad.
    from lti_reduce import systems
    from lti_reduce.systems import _diagonal_decompose

    flat = mixed_route_batch(torch)
    tsys = lr.DiagonalSystem(*(X.reshape((2, 2) + tuple(X.shape[1:])) for X in (flat.lam, flat.B, flat.C)),
                             real_output=True)
    whole = _diagonal_decompose(tsys)
    monkeypatch.setattr(systems, "_TORCH_CPU_BLOCK", 3)
    blocks = _diagonal_decompose(tsys)
    for name in ("s", "Fc", "Mc", "Fo", "Mo", "floor"):
        assert tuple(getattr(blocks, name).shape[:2]) == (2, 2), name
    s, s_whole = ref.as_numpy(blocks.s), ref.as_numpy(whole.s)
    np.testing.assert_allclose(s, s_whole, rtol=0, atol=1e-12 * s_whole[..., :1].max())
    np.testing.assert_allclose(ref.as_numpy(blocks.floor), ref.as_numpy(whole.floor), rtol=1e-12)
    A, B, C, _ = dense_matrices(flat)
    hsv_ref = np.stack([ref.hsv_ab09ad(A[k], B[k], C[k], dico="D") for k in range(4)])
    assert_hsv_close_to_dense_path(ref.as_numpy(blocks.s).reshape(4, -1), hsv_ref, flat)


def test_torch_eigh_route_with_a_semidefinite_observability_gramian_matches_slicot(torch, slycot):
    # One output, four inputs (the S4D-channel shape): P has a well-conditioned Cholesky factor, Q does not, and
    # HSVs fall far below 1e-3 sigma_1. The torch path takes the eigh route at its documented accuracy (the SVD
    # route would use an eigh factor of Q, no more accurate) and decouples states below its noise level; HSVs and
    # reduced transfer functions still match SLICOT ab09ad.
    from lti_reduce.systems import _diagonal_decompose

    members = []
    for seed in (20, 21, 22, 23):
        sys = build_diagonal_system(seed, 8, 4, 4, real_output=True, rho=0.7, gamma_normalized=True)
        C = np.array(sys.C)
        C[1:, :] = 0.0
        members.append(lr.DiagonalSystem(sys.lam, sys.B, C, real_output=True))
    stack = lambda name: np.stack([getattr(x, name) for x in members])  # noqa: E731
    tsys = to_torch(torch, lr.DiagonalSystem(stack("lam"), stack("B"), stack("C"), real_output=True))
    dec = _diagonal_decompose(tsys)
    hsv = ref.as_numpy(dec.s)
    noise = ref.as_numpy(dec.floor)[:, 0] / hsv[:, 0]
    assert np.all(noise > 16 * EPS) and np.all(noise <= 1e-6)  # the eigh route's noise level, not round-off
    A, B, C, D = dense_matrices(tsys)
    omegas = ref.unit_circle_grid(256)
    res = lr.balanced_truncation(tsys, rank=3)
    for k in range(4):
        Ar, Br, Cr, Dr, hsv_ref = ref.balanced_truncation_ab09ad(A[k], B[k], C[k], D[k], rank=3)
        assert hsv_ref[-1] <= 1e-6 * hsv_ref[0] and hsv_ref[2] >= 1e-4 * hsv_ref[0]
        assert_hsv_close_to_dense_path(hsv[k], hsv_ref, members[k])
        G = ref.freqresp(*(ref.as_numpy(X)[k] for X in (res.A, res.B, res.C, res.D)), omegas)
        G_ref = ref.freqresp(Ar, Br, Cr, Dr, omegas)
        assert np.max(np.abs(G - G_ref)) <= 1e-8 * hsv_ref[0], np.max(np.abs(G - G_ref)) / hsv_ref[0]


def test_torch_eigh_route_with_definite_gramians_and_small_hsvs_keeps_the_documented_accuracy(torch, slycot):
    # SISO members whose Gramians both have well-conditioned Cholesky factors and whose HSVs fall below
    # 1e-3 sigma_1 (down to ~1e-5): the torch path takes the eigh route (its round-off level is far below
    # 1e-12 sigma_1^2) instead of the SVD of the factors; every HSV stays within the torch path's documented
    # accuracy against SLICOT ab09ad, the kept states' reduced transfer functions match SLICOT's, and the numpy
    # path still keeps every HSV to round-off.
    from lti_reduce.systems import _closed_form_gramian, _diagonal_decompose, _torch_cholesky, _working

    members = [build_diagonal_system(seed, 6, 1, 1, real_output=True, rho=0.9) for seed in (2, 7, 8, 14)]
    stack = lambda name: np.stack([getattr(x, name) for x in members])  # noqa: E731
    tsys = to_torch(torch, lr.DiagonalSystem(stack("lam"), stack("B"), stack("C"), real_output=True))
    _, lam, B, C = _working(tsys)
    good_p = _torch_cholesky(_closed_form_gramian(torch, lam, B, True))[1]
    good_q = _torch_cholesky(_closed_form_gramian(torch, lam.conj(), C.mH, True))[1]
    assert bool(good_p.all()) and bool(good_q.all())
    dec = _diagonal_decompose(tsys)
    hsv = ref.as_numpy(dec.s)
    assert np.all(ref.as_numpy(dec.floor)[:, 0] > 16 * EPS * hsv[:, 0])  # the eigh route's noise floor
    A, Bd, Cd, D = dense_matrices(tsys)
    res = lr.balanced_truncation(tsys, rank=4)
    omegas = ref.unit_circle_grid(256)
    for k in range(4):
        Ar, Br, Cr, Dr, hsv_ref = ref.balanced_truncation_ab09ad(A[k], Bd[k], Cd[k], D[k], rank=4)
        assert hsv_ref[-1] < 1e-3 * hsv_ref[0]
        assert_hsv_close_to_dense_path(hsv[k], hsv_ref, members[k])
        np.testing.assert_allclose(lr.hankel_singular_values(members[k]), hsv_ref, rtol=0, atol=1e-12 * hsv_ref[0])
        G = ref.freqresp(*(ref.as_numpy(X)[k] for X in (res.A, res.B, res.C, res.D)), omegas)
        assert np.max(np.abs(G - ref.freqresp(Ar, Br, Cr, Dr, omegas))) <= 1e-8 * hsv_ref[0]


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------


def ones_io(n):
    return np.ones((n, 1)), np.ones((1, n))


@pytest.mark.parametrize("bad", [1.0, -1.0, 1j, 1.2 * np.exp(0.4j), 1.0 + 1e-15], ids=str)
def test_eigenvalue_on_or_outside_the_unit_circle_raises_unstable_system_error_with_the_radius(bad):
    lam = np.array([0.5, bad, 0.1j])
    with pytest.raises(lr.UnstableSystemError, match=re.escape(f"{abs(bad):.17g}")):
        lr.DiagonalSystem(lam, *ones_io(3))


def test_unstable_system_error_is_a_value_error():
    with pytest.raises(ValueError):
        lr.DiagonalSystem(np.array([1.5]), *ones_io(1))


def test_unstable_torch_lam_raises_unstable_system_error(torch):
    with pytest.raises(lr.UnstableSystemError, match="1.5"):
        lr.DiagonalSystem(torch.tensor([0.5, -1.5]), torch.ones(2, 1), torch.ones(1, 2))


@pytest.mark.parametrize("where", ["lam", "B", "C", "D"])
@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_nan_or_inf_raises_naming_the_array(where, value):
    data = dict(lam=np.array([0.5, 0.2j]), B=np.ones((2, 1)), C=np.ones((1, 2)), D=np.ones((1, 1)))
    data[where] = data[where].astype(complex if where == "lam" else float)
    data[where].flat[0] = value
    with pytest.raises(lr.LTIInputError, match=f"^{where} contains NaN or Inf"):
        lr.DiagonalSystem(**data)


@pytest.mark.parametrize("B_shape, C_shape, D_shape, name", [
    ((3, 1), (1, 2), None, "B"),
    ((2, 1), (1, 3), None, "C"),
    ((2, 1), (1, 2), (2, 1), "D"),
    ((2,), (1, 2), None, "B"),
    ((2, 1), (2,), None, "C"),
], ids=["B_rows", "C_cols", "D_shape", "B_vector", "C_vector"])
def test_shape_mismatch_raises_naming_the_matrix(B_shape, C_shape, D_shape, name):
    D = None if D_shape is None else np.ones(D_shape)
    with pytest.raises(lr.LTIInputError, match=f"^{name} must have"):
        lr.DiagonalSystem(np.array([0.5, 0.2]), np.ones(B_shape), np.ones(C_shape), D)


def test_batch_dimensions_that_do_not_broadcast_raise():
    with pytest.raises(lr.LTIInputError, match="do not broadcast"):
        lr.DiagonalSystem(np.full((3, 2), 0.5), np.ones((2, 2, 1)), np.ones((1, 2)))


def test_scalar_lam_raises():
    with pytest.raises(lr.LTIInputError, match="scalar"):
        lr.DiagonalSystem(np.array(0.5), np.ones((1, 1)), np.ones((1, 1)))


def test_complex_feedthrough_with_real_output_raises():
    with pytest.raises(lr.LTIInputError, match="D must be real"):
        lr.DiagonalSystem(np.array([0.5j]), np.ones((1, 1)), np.ones((1, 1)), np.array([[1.0 + 1e-3j]]),
                          real_output=True)


def test_complex_feedthrough_without_real_output_is_allowed():
    sys = lr.DiagonalSystem(np.array([0.5j]), np.ones((1, 1)), np.ones((1, 1)), np.array([[1.0 + 1j]]))
    assert np.iscomplexobj(sys.to_dense()[3])


def test_mixing_numpy_and_torch_raises(torch):
    with pytest.raises(lr.LTIInputError, match="mix numpy arrays and torch tensors"):
        lr.DiagonalSystem(torch.tensor([0.5]), np.ones((1, 1)), np.ones((1, 1)))


def test_passing_matrices_next_to_a_diagonal_system_raises_type_error():
    sys = lr.DiagonalSystem(np.array([0.5]), np.ones((1, 1)), np.ones((1, 1)))
    with pytest.raises(TypeError, match="not both"):
        lr.gramians(sys, np.ones((1, 1)))


@given(seeds, st.integers(2, 10), st.booleans())
def test_balancing_free_reduction_of_a_diagonal_system_equals_the_square_root_one(seed, n, real_output):
    rng = np.random.default_rng(seed)
    lam = 0.95 * rng.uniform(0.2, 1.0, n) * np.exp(1j * rng.uniform(0.0, 3.0, n))
    B = rng.standard_normal((n, 2)) + 1j * rng.standard_normal((n, 2))
    C = rng.standard_normal((3, n)) + 1j * rng.standard_normal((3, n))
    bal = lr.balance(lr.DiagonalSystem(lam, B, C, real_output=real_output))
    hsv = np.asarray(bal.hsv)
    r = max(1, int(np.sum(hsv > 1e-6 * hsv[0])) // 2)
    sr, bf = bal.reduce(rank=r), bal.reduce(rank=r, projection="bfsr")
    grid = ref.unit_circle_grid(128)
    G_sr, G_bf = ref.freqresp(sr.A, sr.B, sr.C, sr.D, grid), ref.freqresp(bf.A, bf.B, bf.C, bf.D, grid)
    assert np.abs(G_bf - G_sr).max() <= 1e-8 * np.abs(G_sr).max()
