"""SLICOT benchmark models (CD player, n = 120; ISS component 1r, n = 270), discretized by the bilinear map.

The models ship with the package (:mod:`lti_reduce.datasets`), so these tests run everywhere.

The bilinear (Tustin) map with the ``sqrt(dt)`` scaling of ``reference.bilinear_discretization`` keeps the
Hankel singular values, so the discrete HSVs of ``lti_reduce`` must equal the *continuous* ones that SLICOT
``ab09ad`` computes with ``dico='C'`` on the original model: an independent check across time domains.
"""

from __future__ import annotations

import numpy as np
import pytest

import lti_reduce as lr
import reference as ref
from lti_reduce import datasets

# Reduced orders with a clear gap sigma_r / sigma_{r+1} (1.36 and 2.1), so that the reduced model is unique.
MODELS = {"CDplayer": 20, "iss": 10}
LOADERS = {"CDplayer": datasets.cd_player, "iss": datasets.iss}


class Model:
    def __init__(self, name: str):
        self.name = name
        self.Ac, self.Bc, self.Cc, self.Dc = LOADERS[name]()
        # Step at the geometric mean of the pole magnitudes: the bilinear map then sends the band of poles
        # symmetrically around z = i instead of crowding it at z = +-1.
        poles = np.abs(np.linalg.eigvals(self.Ac))
        self.dt = 2.0 / np.sqrt(poles.min() * poles.max())
        self.A, self.B, self.C, self.D = ref.bilinear_discretization(self.Ac, self.Bc, self.Cc, self.Dc, self.dt)
        self.rank = MODELS[name]
        self.hsv = ref.as_numpy(lr.hankel_singular_values(self.A, self.B, self.C))

        self._reduced = {}

    def matrices(self):
        return self.A, self.B, self.C, self.D

    def reduced(self, method: str = "truncate"):
        """The order-``rank`` reduced model (computed once per method: n = 270 is not free)."""
        if method not in self._reduced:
            self._reduced[method] = lr.balanced_truncation(*self.matrices(), rank=self.rank, method=method)
        return self._reduced[method]

    def error_system(self, method: str = "truncate"):
        res = self.reduced(method)
        return ref.error_system(*self.matrices(), res.A, res.B, res.C, res.D)

    def error_norm_ab13dd(self, method: str = "truncate") -> float:
        """``||G - G_r||_inf`` by SLICOT ab13dd, once per method."""
        key = ("ab13dd", method)
        if key not in self._reduced:
            self._reduced[key] = ref.hinf_norm_ab13dd(*self.error_system(method))
        return self._reduced[key]


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    return Model(request.param)


W = ref.unit_circle_grid(512)


def peak(G) -> float:
    return float(np.max(np.linalg.norm(G, ord=2, axis=(-2, -1))))


def test_benchmark_models_are_stable_after_discretization(model):
    assert ref.spectral_radius(model.A) < 1
    assert model.A.shape == (model.Ac.shape[0],) * 2


def test_discrete_hankel_singular_values_match_slicot_ab09ad(slycot, model):
    hsv_ref = ref.hsv_ab09ad(*model.matrices()[:3], dico="D")
    np.testing.assert_allclose(model.hsv, hsv_ref, rtol=0, atol=1e-9 * hsv_ref[0])


def test_bilinear_map_preserves_the_continuous_hankel_singular_values(slycot, model):
    hsv_continuous = ref.hsv_ab09ad(model.Ac, model.Bc, model.Cc, dico="C")
    np.testing.assert_allclose(model.hsv, hsv_continuous, rtol=0, atol=1e-9 * hsv_continuous[0])


def test_reduced_model_has_the_transfer_function_of_slicot_ab09ad(slycot, model):
    res = model.reduced()
    Ar, Br, Cr, Dr, _ = ref.balanced_truncation_ab09ad(*model.matrices(), rank=model.rank)
    G_ref = ref.freqresp(Ar, Br, Cr, Dr, W)
    G = ref.freqresp(res.A, res.B, res.C, res.D, W)
    assert np.max(np.abs(G - G_ref)) <= 1e-7 * peak(G_ref)
    assert ref.spectral_radius(res.A) < 1


def test_spa_model_matches_slicot_ab09nd_and_the_dc_gain(slycot, model):
    res = model.reduced("spa")
    Ar, Br, Cr, Dr, _ = ref.spa_ab09nd(*model.matrices(), rank=model.rank)
    G_ref = ref.freqresp(Ar, Br, Cr, Dr, W)
    G = ref.freqresp(res.A, res.B, res.C, res.D, W)
    assert np.max(np.abs(G - G_ref)) <= 1e-7 * peak(G_ref)
    dc = ref.freqresp(*model.matrices(), [0.0])
    assert np.max(np.abs(ref.freqresp(res.A, res.B, res.C, res.D, [0.0]) - dc)) <= 1e-8 * peak(G_ref)


@pytest.mark.parametrize("method", ["truncate", "spa"])
def test_reduction_error_of_the_benchmark_lies_within_the_bounds(slycot, model, method):
    res = model.reduced(method)
    E = model.error_system(method)
    err = model.error_norm_ab13dd(method)
    assert model.hsv[model.rank] * (1 - 1e-6) <= err <= float(res.error_bound) * (1 + 1e-6)
    assert ref.hinf_norm_grid(*E, num=1024) <= float(res.error_bound) * (1 + 1e-6)


def test_hinf_norm_of_the_benchmark_reduction_error_matches_slicot_ab13dd(slycot, model):
    E = model.error_system("truncate")
    assert float(lr.hinf_norm(*E)) == pytest.approx(model.error_norm_ab13dd("truncate"), rel=1e-6)


def test_hinf_norm_of_the_benchmark_matches_slicot_ab13dd(slycot, model):
    assert float(lr.hinf_norm(*model.matrices())) == pytest.approx(ref.hinf_norm_ab13dd(*model.matrices()),
                                                                    rel=1e-6)


def test_hinf_norm_is_invariant_under_the_bilinear_map(slycot, model):
    # ||G_d||_inf = ||G_c||_inf: the map sends the imaginary axis onto the unit circle (continuous ab13dd).
    from slycot import ab13dd

    n, m = model.Bc.shape
    p = model.Cc.shape[0]
    continuous, _ = ab13dd("C", "I", "N", "D", n, m, p, model.Ac, np.eye(n), model.Bc, model.Cc, model.Dc)
    assert float(lr.hinf_norm(*model.matrices())) == pytest.approx(continuous, rel=1e-6)


def test_error_bounds_of_the_benchmark_decrease_to_zero(model):
    res = model.reduced()
    bounds = ref.as_numpy(res.error_bounds())
    assert bounds.shape == (model.A.shape[0] + 1,)
    assert bounds[-1] == 0 and np.all(np.diff(bounds) <= 0)
    assert bounds[model.rank] == pytest.approx(float(res.error_bound), rel=1e-12)
