"""hankel_nuclear_norm: finite gradients on every reference layer, values equal to the core's HSVs."""

import pytest

torch = pytest.importorskip("torch")

import adapters.torch as at  # noqa: E402
import lti_reduce as lr  # noqa: E402
from lti_reduce._differentiable import hankel_singular_values_for_gradients  # noqa: E402


@pytest.mark.parametrize("make", [lambda: at.S4D(4, 16), lambda: at.S5(4, 8), lambda: at.LRU(4, 8)],
                         ids=["S4D", "S5", "LRU"])
def test_gradients_are_finite_and_the_value_is_the_sum_of_the_cores_hsvs(make):
    torch.manual_seed(0)
    layer = make()
    reg = at.hankel_nuclear_norm(torch.nn.Sequential(layer))
    reg.backward()
    grads = {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}
    assert grads and all(torch.isfinite(g).all() for g in grads.values()), grads
    assert any(float(g.abs().max()) > 0 for g in grads.values())
    system = layer.to_system()
    wide = [x.to(torch.complex128 if x.is_complex() else torch.float64) for x in (system.lam, system.B, system.C)]
    reference = lr.hankel_singular_values(lr.DiagonalSystem(*wide, real_output=system.real_output)).sum()
    assert float(reg.detach()) == pytest.approx(float(reference), rel=1e-5)


def test_s4d_channels_with_hsvs_at_round_off_have_the_gradient_of_finite_differences():
    # An S4D channel's HSVs fall below 1e-12 sigma_1 within a few states: the balancing routes'
    # backward passes divide by their (vanishing) gaps; this one does not.
    torch.manual_seed(1)
    layer = at.S4D(2, 8, dtype=torch.float64)
    hsv = lr.hankel_singular_values(layer.to_system())
    assert float(hsv[..., -1].max() / hsv[..., 0].min()) < 1e-6  # the case that failed: tiny, near-equal HSVs
    params = [layer.log_A_real, layer.A_imag, layer.C_re, layer.C_im, layer.log_dt]

    def total(*values):
        for p, v in zip(params, values):
            p.data = v
        return hankel_singular_values_for_gradients(layer.to_system(differentiable=True)).sum()

    values = [p.detach().clone() for p in params]
    analytic = torch.autograd.grad(total(*[v.clone().requires_grad_() for v in values]), params)
    for i, (p, g) in enumerate(zip(values, analytic)):
        d = torch.randn_like(p)
        h = 1e-5
        plus = [v.clone() for v in values]
        minus = [v.clone() for v in values]
        plus[i] = p + h * d
        minus[i] = p - h * d
        with torch.no_grad():
            fd = (total(*plus) - total(*minus)) / (2 * h)
        assert float((g * d).sum()) == pytest.approx(float(fd), rel=1e-5, abs=1e-6)
