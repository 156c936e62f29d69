"""The LRU layer and its scans: every scan mode is the same recurrence; the layer protocol round-trips."""

from __future__ import annotations

import cmath
import math

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, strategies as st  # noqa: E402

from adapters.torch.layers.lru import LRU  # noqa: E402
from adapters.torch.scan import MODES, lam_powers, linear_recurrence, real_output_response  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from lti_reduce import UnstableSystemError  # noqa: E402

FAST_MODES = [m for m in MODES if m not in ("auto", "sequential")]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class StandInSystem:
    """The attributes ``load_system_`` reads, without the core's validation (so invalid systems reach the layer)."""

    def __init__(self, lam, B, C, D=None, real_output=True):
        self.lam, self.B, self.C, self.D, self.real_output = lam, B, C, D, real_output


def random_lam(n, *, generator, dtype=torch.complex128, radius=0.99):
    modulus = radius * torch.rand(n, generator=generator, dtype=torch.float64)
    phase = (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * math.pi
    return torch.polar(modulus, phase).to(dtype)


def layer_with_modes(lam, *, d_model=3, seed=0, dtype=torch.float64, device="cpu"):
    """An LRU whose eigenvalues are exactly ``lam`` (complex128), loaded through the protocol."""
    g = torch.Generator().manual_seed(seed)
    r = lam.shape[0]
    B = torch.randn(r, d_model, generator=g, dtype=torch.complex128)
    C = torch.randn(d_model, r, generator=g, dtype=torch.complex128)
    D = torch.diag(torch.randn(d_model, generator=g, dtype=torch.float64))
    layer = LRU(d_model, r, dtype=dtype, device=device)
    layer.load_system_(StandInSystem(lam, B, C, D))
    return layer, (lam, B, C, D)


# ------------------------------------------------------------------------------------------------ scans
@pytest.mark.parametrize("mode", FAST_MODES)
@pytest.mark.parametrize("length", [1, 2, 7, 31, 32, 33, 100])
def test_scan_mode_matches_sequential_loop_in_complex128(mode, length):
    g = torch.Generator().manual_seed(length)
    lam = random_lam(5, generator=g)
    bu = torch.randn(3, length, 5, generator=g, dtype=torch.complex128)
    expected = linear_recurrence(lam, bu, mode="sequential")
    got = linear_recurrence(lam, bu, mode=mode, chunk_size=8)
    assert torch.allclose(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", FAST_MODES)
def test_scan_mode_matches_sequential_loop_in_complex64(mode):
    g = torch.Generator().manual_seed(1)
    lam = random_lam(16, generator=g, dtype=torch.complex64, radius=0.999)
    bu = torch.randn(2, 300, 16, generator=g, dtype=torch.complex64)
    expected = linear_recurrence(lam.to(torch.complex128), bu.to(torch.complex128), mode="sequential")
    got = linear_recurrence(lam, bu, mode=mode)
    assert got.dtype == torch.complex64
    scale = expected.abs().max()
    assert (got.to(torch.complex128) - expected).abs().max() <= 1e-4 * scale


@pytest.mark.parametrize("mode", FAST_MODES)
def test_scan_of_real_eigenvalues_and_real_inputs_stays_real(mode):
    g = torch.Generator().manual_seed(2)
    lam = torch.tensor([0.0, 0.5, -0.9], dtype=torch.float64)
    bu = torch.randn(2, 40, 3, generator=g, dtype=torch.float64)
    got = linear_recurrence(lam, bu, mode=mode, chunk_size=6)
    assert got.dtype == torch.float64
    assert torch.allclose(got, linear_recurrence(lam, bu, mode="sequential"), rtol=0, atol=1e-12)


def test_scan_accepts_any_leading_batch_shape():
    g = torch.Generator().manual_seed(3)
    lam = random_lam(4, generator=g)
    bu = torch.randn(2, 3, 20, 4, generator=g, dtype=torch.complex128)
    got = linear_recurrence(lam, bu)
    assert got.shape == bu.shape
    assert torch.allclose(got[1, 2], linear_recurrence(lam, bu[1, 2], mode="sequential"), atol=1e-12)


@pytest.mark.parametrize("mode", FAST_MODES)
def test_real_output_response_matches_sequential_loop(mode):
    g = torch.Generator().manual_seed(4)
    lam = random_lam(6, generator=g)
    B = torch.randn(6, 4, generator=g, dtype=torch.complex128)
    C = torch.randn(3, 6, generator=g, dtype=torch.complex128)
    D = torch.randn(3, 4, generator=g, dtype=torch.float64)
    u = torch.randn(2, 57, 4, generator=g, dtype=torch.float64)
    expected = real_output_response(u, lam, B, C, D, mode="sequential")
    assert torch.allclose(real_output_response(u, lam, B, C, D, mode=mode), expected, rtol=0, atol=1e-10)


def test_lam_powers_are_exact_for_zero_and_accurate_near_the_unit_circle():
    lam = torch.tensor([0.0, -1.0 + 1e-9, cmath.exp(-1e-6 + 2j)], dtype=torch.complex128)
    powers = lam_powers(lam, 1000)
    k = torch.arange(1000, dtype=torch.float64)
    assert powers[0].eq(1).all() and powers[1:, 0].eq(0).all()
    expected = torch.exp(k[:, None] * torch.log(lam[1:]))  # itself off by about k * eps * |log lam| ~ 7e-13
    assert torch.allclose(powers[:, 1:], expected, rtol=2e-12, atol=0)


@pytest.mark.parametrize("mode", [*FAST_MODES, "sequential"])
def test_scan_gradients_match_finite_differences(mode):
    g = torch.Generator().manual_seed(5)
    lam = random_lam(3, generator=g, radius=0.9).requires_grad_()
    bu = torch.randn(2, 9, 3, generator=g, dtype=torch.complex128, requires_grad=True)
    f = lambda lam, bu: linear_recurrence(lam, bu, mode=mode, chunk_size=4)  # noqa: E731
    assert torch.autograd.gradcheck(f, (lam, bu), fast_mode=True)


@pytest.mark.parametrize("mode", ["scan", "chunked"])
def test_adjoint_scan_is_itself_differentiable(mode):
    g = torch.Generator().manual_seed(6)
    lam = random_lam(2, generator=g, radius=0.9).requires_grad_()
    bu = torch.randn(1, 6, 2, generator=g, dtype=torch.complex128, requires_grad=True)
    f = lambda lam, bu: linear_recurrence(lam, bu, mode=mode, chunk_size=4)  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (lam, bu), fast_mode=True)


def test_scan_rejects_unknown_mode_and_mismatched_shapes():
    lam = torch.full((3,), 0.5, dtype=torch.complex128)
    with pytest.raises(ValueError, match="mode must be one of"):
        linear_recurrence(lam, torch.zeros(1, 4, 3, dtype=torch.complex128), mode="fast")
    with pytest.raises(ValueError, match="n = lam.shape"):
        linear_recurrence(lam, torch.zeros(1, 4, 2, dtype=torch.complex128))
    with pytest.raises(ValueError, match="1-D"):
        linear_recurrence(lam[None], torch.zeros(1, 4, 3, dtype=torch.complex128))


# ------------------------------------------------------------------------------------------------ layer
@pytest.mark.parametrize("mode", FAST_MODES)
def test_layer_modes_agree_with_the_sequential_layer(mode):
    torch.manual_seed(0)
    layer = LRU(5, 12, r_min=0.5, r_max=0.999, dtype=torch.float64)
    u = torch.randn(2, 70, 5, dtype=torch.float64)
    layer.mode = "sequential"
    expected = layer(u)
    layer.mode = mode
    assert torch.allclose(layer(u), expected, rtol=0, atol=1e-10)


def test_layer_in_float32_matches_float64_to_1e_4():
    torch.manual_seed(1)
    layer64 = LRU(8, 32, dtype=torch.float64)
    layer32 = LRU(8, 32, dtype=torch.float32)
    layer32.load_state_dict(layer64.state_dict())
    u = torch.randn(2, 200, 8, dtype=torch.float64)
    expected = layer64(u)
    got = layer32(u.float())
    assert got.dtype == torch.float32
    assert (got.double() - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_layer_computes_the_system_it_reports():
    torch.manual_seed(2)
    layer = LRU(4, 6, dtype=torch.float64)
    system = layer.to_system()
    u = torch.randn(3, 40, 4, dtype=torch.float64)
    # y_k = Re(C x_k) + D u_k with x_k = lam x_{k-1} + B u_k, straight from the system's tensors.
    x = torch.zeros(3, 6, dtype=torch.complex128)
    outputs = []
    for k in range(40):
        x = system.lam * x + u[:, k].to(torch.complex128) @ system.B.T
        outputs.append((x @ system.C.T).real + u[:, k] @ system.D.T)
    assert torch.allclose(layer(u), torch.stack(outputs, dim=1), atol=1e-12)


def test_layer_gradients_match_finite_differences():
    torch.manual_seed(3)
    layer = LRU(2, 3, r_min=0.3, r_max=0.9, dtype=torch.float64)
    u = torch.randn(2, 11, 2, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())

    def f(u, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (u,))

    for mode in ("chunked", "fft"):
        layer.mode, layer.chunk_size = mode, 4
        assert torch.autograd.gradcheck(f, (u, *params), fast_mode=True)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(4)
    layer = LRU(4, 8)
    layer(torch.randn(2, 50, 4)).square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@given(
    nu_log=st.lists(st.floats(-30.0, 5.0), min_size=1, max_size=8),
    theta=st.floats(-100.0, 100.0),
)
def test_eigenvalues_stay_inside_the_unit_disc_for_any_parameter_values(nu_log, theta):
    layer = LRU(2, len(nu_log), dtype=torch.float64)
    with torch.no_grad():
        layer.nu_log.copy_(torch.tensor(nu_log, dtype=torch.float64))
        layer.theta.fill_(theta)
    modulus = layer.lam.abs()
    assert (modulus < 1).all() and (modulus > 0).all()


def test_initialization_with_r_max_one_is_still_stable():
    torch.manual_seed(5)
    layer = LRU(4, 4096, r_min=0.9, r_max=1.0, dtype=torch.float64)
    modulus = layer.lam.abs()
    assert (modulus < 1).all() and (modulus >= 0.9 - 1e-12).all()
    assert torch.allclose(torch.exp(layer.gamma_log), torch.sqrt(1 - modulus**2))


@pytest.mark.parametrize(
    "lam",
    [0.5, 0.999999, -0.7, -0.999999, cmath.rect(0.9, -1.2), cmath.rect(0.3, 2.0), cmath.rect(0.95, -math.pi / 2)],
    ids=["real-positive", "real-positive-near-1", "real-negative", "real-negative-near-1", "negative-phase",
         "positive-phase", "negative-imaginary"],
)
def test_parameterization_round_trips_every_stable_eigenvalue(lam):
    target = torch.tensor([lam], dtype=torch.complex128)
    layer, (_, B, C, D) = layer_with_modes(target)
    assert torch.allclose(layer.lam.detach(), target, rtol=1e-12, atol=0)
    system = layer.to_system()
    assert torch.allclose(system.lam, target, rtol=1e-12, atol=0)
    assert torch.allclose(system.B, B, rtol=1e-12, atol=1e-15)
    assert torch.equal(system.C, C) and torch.equal(system.D, D)


@given(
    modulus=st.floats(1e-300, 1 - 1e-9),
    phase=st.floats(-math.pi, math.pi),
)
def test_parameterization_round_trips_random_eigenvalues(modulus, phase):
    target = torch.tensor([cmath.rect(modulus, phase)], dtype=torch.complex128)
    layer, _ = layer_with_modes(target)
    assert torch.allclose(layer.lam.detach(), target, rtol=1e-12, atol=1e-300)


def test_zero_eigenvalue_is_stored_as_the_smallest_normal_modulus():
    layer, _ = layer_with_modes(torch.tensor([0.0, 0.5], dtype=torch.complex128))
    assert layer.lam.abs()[0] <= torch.finfo(torch.float64).tiny * 1.01
    assert torch.isfinite(layer.nu_log).all() and torch.isfinite(layer.gamma_log).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_to_system_then_load_system_leaves_outputs_unchanged(device, dtype):
    torch.manual_seed(6)
    layer = LRU(4, 10, dtype=dtype, device=device)
    u = torch.randn(2, 64, 4, dtype=dtype, device=device)
    before = layer(u)
    system = layer.to_system()
    assert system.lam.device == before.device and system.B.dtype == (torch.complex64 if dtype == torch.float32
                                                                       else torch.complex128)
    layer.load_system_(system)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(layer(u), before, rtol=0, atol=tol * before.abs().max().item())


def test_load_system_changes_size_and_keeps_requires_grad_and_D():
    torch.manual_seed(7)
    layer = LRU(3, 8, dtype=torch.float64)
    layer.theta.requires_grad_(False)
    old_theta, old_D = layer.theta, layer.D
    system = layer.to_system()
    keep = slice(0, 5)
    layer.load_system_(StandInSystem(system.lam[keep], system.B[keep], system.C[:, keep], system.D))
    assert layer.state_dim == 5 and layer.B_re.shape == (5, 3) and layer.C_im.shape == (3, 5)
    # In place: the Parameter objects (and their requires_grad) are kept, so optimizers hold live tensors.
    assert layer.theta is old_theta and not layer.theta.requires_grad
    assert layer.D is old_D
    layer(torch.randn(1, 10, 3, dtype=torch.float64)).sum().backward()


def test_load_system_with_real_eigenvalue_dtype_and_numpy_arrays():
    np = pytest.importorskip("numpy")
    layer = LRU(2, 4, dtype=torch.float32)
    lam = np.array([0.5, -0.25])
    layer.load_system_(StandInSystem(lam, np.ones((2, 2)), np.ones((2, 2)) * 1j, np.eye(2)))
    assert layer.state_dim == 2 and layer.B_re.dtype == torch.float32
    assert torch.allclose(layer.lam.detach(), torch.tensor([0.5, -0.25], dtype=torch.complex64))


def test_load_system_without_D_means_no_feedthrough():
    layer, (lam, B, C, _) = layer_with_modes(torch.tensor([0.5j], dtype=torch.complex128))
    layer.load_system_(StandInSystem(lam, B, C, None))
    assert torch.equal(layer.D.detach(), torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(real_output=False), "real_output=True"),
        (dict(lam=torch.tensor([0.5, 1.0], dtype=torch.complex128)), r"\|system.lam\| < 1 - 1e-12"),
        (dict(lam=torch.tensor([0.5, float("nan")], dtype=torch.complex128)), "NaN"),
        (dict(D=torch.ones(3, 3, dtype=torch.float64)), "diagonal"),
        (dict(B=torch.ones(2, 4, dtype=torch.complex128)), "shapes"),
        (dict(lam=torch.ones(1, 2, dtype=torch.complex128) * 0.5), r"shape \(r,\)"),
    ],
    ids=["complex-output", "unstable", "nan", "full-D", "wrong-B", "batched-lam"],
)
def test_load_system_rejects_what_an_lru_cannot_represent_and_changes_nothing(change, message):
    layer, (lam, B, C, D) = layer_with_modes(torch.tensor([0.5, -0.5j], dtype=torch.complex128))
    before = {name: (p, p.detach().clone()) for name, p in layer.named_parameters()}
    fields = dict(lam=lam, B=B, C=C, D=D, real_output=True) | change
    with pytest.raises(ValueError, match=message):
        layer.load_system_(StandInSystem(**fields))
    for name, p in layer.named_parameters():
        assert p is before[name][0] and torch.equal(p.detach(), before[name][1]), name


def test_state_dict_of_a_smaller_layer_loads_into_a_larger_fresh_layer():
    torch.manual_seed(8)
    small = LRU(4, 16, dtype=torch.float64)
    system = small.to_system()
    small.load_system_(StandInSystem(system.lam[:6], system.B[:6], system.C[:, :6], system.D))
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, dtype=torch.float64), small)
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 4, dtype=torch.float64), LRU(4, 16, dtype=torch.float64))
    fresh.load_state_dict(model.state_dict())
    assert fresh[1].state_dim == 6
    u = torch.randn(2, 30, 4, dtype=torch.float64)
    assert torch.equal(fresh(u), model(u))
    # Training resumes on the resized parameters.
    optimizer = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    fresh(u).square().mean().backward()
    optimizer.step()


def test_state_dict_with_a_different_d_model_still_fails_loudly():
    with pytest.raises(RuntimeError, match="size mismatch"):
        LRU(5, 8).load_state_dict(LRU(4, 6).state_dict())


def test_forward_accepts_unbatched_input_and_rejects_the_wrong_width():
    layer = LRU(3, 4)
    assert layer(torch.randn(10, 3)).shape == (10, 3)
    with pytest.raises(ValueError, match=r"\(\.\.\., L, 3\)"):
        layer(torch.randn(2, 10, 4))


def test_constructor_rejects_an_unstable_ring_and_unknown_mode():
    with pytest.raises(ValueError, match="r_max"):
        LRU(2, 2, r_max=1.5)
    with pytest.raises(ValueError, match="mode"):
        LRU(2, 2, mode="parallel")


def test_differentiable_system_carries_gradients_to_the_parameters():
    layer = LRU(2, 3, dtype=torch.float64)
    system = layer.to_system(differentiable=True)
    (system.lam.abs().sum() + system.B.abs().sum() + system.C.abs().sum()).backward()
    assert layer.nu_log.grad is not None and layer.gamma_log.grad is not None and layer.C_re.grad is not None


def test_load_system_resizes_in_place_so_an_optimizer_built_before_trains_every_parameter():
    torch.manual_seed(9)
    layer = LRU(3, 8, dtype=torch.float64)
    params = dict(layer.named_parameters())
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    system = layer.to_system()
    layer.load_system_(StandInSystem(system.lam[:4], system.B[:4], system.C[:, :4], system.D))
    assert all(p is params[name] for name, p in layer.named_parameters())
    before = {name: p.detach().clone() for name, p in layer.named_parameters()}
    layer(torch.randn(2, 20, 3, dtype=torch.float64)).square().sum().backward()
    opt.step()
    for name, p in layer.named_parameters():
        assert p.shape == before[name].shape and not torch.equal(p.detach(), before[name]), name


def test_checkpoint_load_resizes_in_place():
    torch.manual_seed(10)
    small = LRU(4, 16, dtype=torch.float64)
    system = small.to_system()
    small.load_system_(StandInSystem(system.lam[:6], system.B[:6], system.C[:, :6], system.D))
    fresh = LRU(4, 16, dtype=torch.float64)
    params = dict(fresh.named_parameters())
    fresh.load_state_dict(small.state_dict())
    assert fresh.state_dim == 6 and all(p is params[name] for name, p in fresh.named_parameters())


# ------------------------------------------------------------------------------------------------ real modes
def _dense_real_output(lam, B, C, D=None):
    """Complex realization of ``y = Re(C x) + D u``: ``diag(lam, conj lam)``, ``[B; conj B]``, ``[C, conj C] / 2``."""
    np = pytest.importorskip("numpy")
    lam, B, C = (x.detach().cpu().numpy().astype(complex) for x in (lam, B, C))
    A = np.diag(np.concatenate([lam, lam.conj()]))
    return A, np.concatenate([B, B.conj()]), 0.5 * np.concatenate([C, C.conj()], axis=1), \
        (None if D is None else D.detach().cpu().numpy())


def _map_change(sys1, sys2):
    """||G1 - G2||_inf of two real-output diagonal systems, by SLICOT ab13dd on the dense realization."""
    from reference import error_system, hinf_norm_ab13dd

    A, B, C, D = error_system(*_dense_real_output(sys1.lam, sys1.B, sys1.C, sys1.D),
                              *_dense_real_output(sys2.lam, sys2.B, sys2.C, sys2.D))
    return hinf_norm_ab13dd(A, B, C, D)


def _system_with_real_modes(seed, d_model=3):
    """A real-output system with two complex and two real modes (one negative), real B/C rows on the real ones."""
    g = torch.Generator().manual_seed(seed)
    lam = torch.tensor([0.7 + 0.5j, -0.2 + 0.9j, 0.95, -0.6], dtype=torch.complex128)
    B = torch.randn(4, d_model, generator=g, dtype=torch.complex128)
    C = torch.randn(d_model, 4, generator=g, dtype=torch.complex128)
    B[2:], C[:, 2:] = B[2:].real.to(B.dtype), C[:, 2:].real.to(C.dtype)
    D = torch.diag(torch.randn(d_model, generator=g, dtype=torch.float64))
    return StandInSystem(lam, B, C, D)


def _real_mode_gradients(layer, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(4, 40, layer.d_model, generator=g, dtype=layer.B_re.dtype)
    target = torch.randn(4, 40, layer.d_model, generator=g, dtype=layer.B_re.dtype)
    layer.zero_grad()
    (layer(u) - target).square().mean().backward()
    return layer.theta.grad[2:], layer.B_im.grad[2:], layer.C_im.grad[:, 2:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_real_modes_get_a_gradient_in_every_direction_after_loading(dtype):
    system = _system_with_real_modes(11)
    frozen = LRU(3, 4, dtype=dtype).load_system_(system, real_mode_change=0.0)
    # The defect: at a conjugation-symmetric real mode the loss is even in (theta, B_im, C_im).
    # (Zero up to pi rounded to the dtype, which leaves a slightly complex mode with a tiny gradient.)
    grads = _real_mode_gradients(frozen)
    scale = frozen.theta.grad[:2].abs().max()
    for grad in grads:
        assert grad.abs().max() <= (1e-12 if dtype == torch.float64 else 1e-5) * scale
    layer = LRU(3, 4, dtype=dtype).load_system_(system)
    theta, b_im, c_im = _real_mode_gradients(layer)
    assert bool((theta.abs() > 0).all())
    assert bool((b_im.abs().sum(-1) > 0).all()) and bool((c_im.abs().sum(0) > 0).all())
    assert theta.abs().min() > 1e-3 * theta.abs().max().clamp(min=1e-30) or theta.abs().min() > 1e-6


@pytest.mark.parametrize("budget", [None, 1e-3, 1e-8])
def test_real_mode_fix_changes_the_map_by_at_most_its_budget(budget):
    system = _system_with_real_modes(12)
    layer = LRU(3, 4, dtype=torch.float64).load_system_(system, real_mode_change=budget)
    loaded = layer.to_system()
    # Complex modes are loaded exactly, real modes are moved off the real axis.
    assert torch.allclose(loaded.lam[:2], system.lam[:2], rtol=1e-14, atol=0)
    assert bool((loaded.lam[2:].imag != 0).all())
    if budget is None:  # the documented default
        M = system.C[:, 2:].mT.unsqueeze(-1) * system.B[2:].unsqueeze(-2)
        budget = float((torch.linalg.matrix_norm(M.real, ord=2) / (1 - system.lam[2:].abs())).sum()) * 2.0**-10
    change = _map_change(system, loaded)
    assert 0 < change <= budget * (1 + 1e-9)
    assert change >= 0.1 * budget  # the rotation uses its budget (the bound is within a small factor)


def test_real_mode_fix_leaves_complex_systems_and_complex_products_alone():
    layer, (lam, B, C, D) = layer_with_modes(torch.tensor([0.5, -0.3, 0.2 + 0.4j], dtype=torch.complex128))
    # Random complex B, C give complex C_k B_k on the real eigenvalues: not a symmetric point, loaded exactly.
    assert torch.equal(layer.theta.detach()[:2], torch.tensor([0.0, math.pi], dtype=torch.float64))


def test_real_mode_change_must_be_a_finite_nonnegative_number():
    layer = LRU(3, 4, dtype=torch.float64)
    for bad in (-1.0, float("nan"), float("inf"), "1e-3", True):
        with pytest.raises(ValueError, match="real_mode_change"):
            layer.load_system_(_system_with_real_modes(13), real_mode_change=bad)


def test_real_modes_leave_the_real_axis_in_training_and_frozen_ones_never_do():
    system = _system_with_real_modes(14)
    g = torch.Generator().manual_seed(15)
    teacher = LRU(3, 6, dtype=torch.float64)
    u = torch.randn(8, 60, 3, generator=g, dtype=torch.float64)
    target = teacher(u).detach()
    moved = {}
    for budget in (0.0, None):
        layer = LRU(3, 4, dtype=torch.float64).load_system_(system, real_mode_change=budget)
        theta0 = layer.theta.detach().clone()
        opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
        for _ in range(30):
            opt.zero_grad()
            (layer(u) - target).square().mean().backward()
            opt.step()
        moved[budget] = (layer.theta.detach() - theta0)[2:].abs()
    # Frozen at the saddle: the positive real mode (theta exactly 0) does not move at all. (The negative one,
    # theta = pi rounded, is complex by 1e-16; Adam's normalized steps amplify that tiny gradient.)
    assert moved[0.0][0] == 0
    assert bool((moved[None] > 1e-3).all())  # every real mode turned complex


@pytest.mark.parametrize("seed", range(6))
def test_real_mode_bound_holds_for_random_real_modes_near_the_unit_circle(seed):
    g = torch.Generator().manual_seed(100 + seed)
    q, m = 3, 2
    modulus = 1 - torch.logspace(-3, -0.5, q, dtype=torch.float64)[torch.randperm(q, generator=g)]
    sign = torch.where(torch.rand(q, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    lam = torch.cat([(sign * modulus).to(torch.complex128), torch.tensor([0.6 + 0.7j], dtype=torch.complex128)])
    B = torch.randn(q + 1, m, generator=g, dtype=torch.complex128)
    C = torch.randn(m, q + 1, generator=g, dtype=torch.complex128)
    phase = torch.exp(1j * torch.rand(q, generator=g, dtype=torch.float64) * 6.0)  # real M_k = C_k B_k, complex rows
    B[:q] = B[:q].real.to(B.dtype) * phase[:, None]
    C[:, :q] = C[:, :q].real.to(C.dtype) / phase[None, :]
    system = StandInSystem(lam, B, C, torch.zeros(m, m, dtype=torch.float64))
    budget = float(torch.rand(1, generator=g)) * 1e-2
    layer = LRU(m, q + 1, dtype=torch.float64).load_system_(system, real_mode_change=budget)
    loaded = layer.to_system()
    assert bool((loaded.lam[:q].imag != 0).all()) and torch.allclose(loaded.lam[q], lam[q], rtol=1e-14, atol=0)
    assert 0 < _map_change(system, loaded) <= budget * (1 + 1e-9)


# ------------------------------------------------------------------ one stability rule, also when loading
@pytest.mark.parametrize("dtype,nu_log,bad", [(torch.float32, -20.0, True), (torch.float32, -16.0, False),
                                              (torch.float64, -28.0, True), (torch.float64, -27.0, False)])
def test_a_checkpoint_whose_eigenvalues_round_to_the_unit_circle_is_refused_before_loading(dtype, nu_log, bad):
    sd = LRU(3, 6, dtype=dtype).state_dict()
    sd["nu_log"][2] = nu_log
    layer = LRU(3, 6, dtype=dtype)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    if bad:
        with pytest.raises(UnstableSystemError, match=r"'nu_log'.*1 - 1e-12.*clamp_\(min="):
            layer.load_state_dict(sd)
        assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())  # nothing loaded
    else:
        layer.load_state_dict(sd)
        assert float(layer.to_system().lam.abs().max()) < 1 - 1e-12  # what the rule lets load, the core accepts


@pytest.mark.parametrize("radius", [1.0, 1 - 1e-13])
def test_load_system_applies_the_library_stability_rule(radius):
    layer = LRU(2, 4, dtype=torch.float64)
    lam = torch.tensor([0.5 + 0j, radius + 0j], dtype=torch.complex128)
    system = SimpleNamespace(lam=lam, B=torch.ones(2, 2, dtype=torch.complex128),
                             C=torch.ones(2, 2, dtype=torch.complex128), D=None, real_output=True)
    with pytest.raises(UnstableSystemError, match="1 - 1e-12"):
        layer.load_system_(system)
    assert layer.state_dim == 4
