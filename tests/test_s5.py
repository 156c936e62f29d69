"""The S5 layer: ZOH discretization, HiPPO-N initialization, the layer protocol, exact reloads, cuts within bounds."""

from __future__ import annotations

import cmath
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
scipy_linalg = pytest.importorskip("scipy.linalg")

from hypothesis import given, strategies as st  # noqa: E402

import lti_reduce as lr  # noqa: E402
from adapters.torch import S5, compress_  # noqa: E402
from adapters.torch.layers.s5 import hippo_n_eigendecomposition  # noqa: E402
from reference import error_system, hinf_norm_ab13dd, hsv_ab09ad  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FAST_MODES = ["scan", "chunked", "fft"]


class StandInSystem:
    """The attributes ``load_system_`` reads, without the core's validation (so invalid systems reach the layer)."""

    def __init__(self, lam, B, C, D=None, real_output=True):
        self.lam, self.B, self.C, self.D, self.real_output = lam, B, C, D, real_output


def params(layer):
    return {k: v.detach().to(torch.float64).cpu().numpy() for k, v in layer.named_parameters()}


def zoh_reference(layer):
    """``(lam, Bbar, C, D)`` in numpy from the layer's parameters, ZOH by ``scipy.linalg.expm`` of ``[[L, B], [0, 0]] dt``."""
    p = params(layer)
    Lambda = -np.exp(p["Lambda_re_log"]) + 1j * p["Lambda_im"]
    dt = np.exp(p["log_dt"])
    B = p["B_re"] + 1j * p["B_im"]
    n, m = B.shape
    lam, Bbar = np.empty(n, complex), np.empty((n, m), complex)
    for j in range(n):
        M = np.zeros((1 + m, 1 + m), complex)
        M[0, 0], M[0, 1:] = Lambda[j], B[j]
        E = scipy_linalg.expm(M * dt[j])
        lam[j], Bbar[j] = E[0, 0], E[0, 1:]
    return lam, Bbar, p["C_re"] + 1j * p["C_im"], np.diag(p["D"])


def real_realization(lam, B, C, D):
    """The real order-2n system of ``y = Re(C x) + D u`` (state ``[Re x; Im x]``)."""
    A = np.block([[np.diag(lam.real), -np.diag(lam.imag)], [np.diag(lam.imag), np.diag(lam.real)]])
    return A, np.vstack([B.real, B.imag]), np.hstack([C.real, -C.imag]), np.asarray(D, float)


def cut(layer, *, tol=None, rank=None):
    """Balanced truncation through the core and ``load_system_``; returns the result (bound, hsv)."""
    bal = lr.balance(layer.to_system())
    res = bal.reduce(tol=tol) if rank is None else bal.reduce(rank=rank)
    layer.load_system_(res.to_diagonal())
    return res


# ------------------------------------------------------------------------------------------- initialization
def test_hippo_n_eigenvalues_match_numpy_eig_of_the_normal_hippo_matrix():
    N = 12
    k = np.arange(N)
    A = np.zeros((N, N))
    for i in range(N):
        for j in range(N):
            A[i, j] = -math.sqrt(2 * i + 1) * math.sqrt(2 * j + 1) if i > j else (-(i + 1) if i == j else 0.0)
    S = A + np.outer(np.sqrt(k + 0.5), np.sqrt(k + 0.5))
    expected = np.linalg.eigvals(S)
    lam, V = hippo_n_eigendecomposition(N)
    lam, V = lam.numpy(), V.numpy()
    by_imag = lambda z: z[np.argsort(z.imag)]  # noqa: E731 (real parts are all -1/2 up to round-off)
    assert np.allclose(by_imag(lam), by_imag(expected), atol=1e-10)
    assert np.allclose(V @ np.diag(lam) @ V.conj().T, S, atol=1e-10)
    assert np.allclose(lam[: N // 2], np.conj(lam[N // 2:][::-1]), atol=1e-12)  # conjugate pairs


@pytest.mark.parametrize("blocks", [1, 4])
def test_hippo_init_stores_one_eigenvalue_per_conjugate_pair(blocks):
    torch.manual_seed(0)
    layer = S5(3, 8, blocks=blocks, dtype=torch.float64)
    Lambda = layer.Lambda.detach()
    lam_block, _ = hippo_n_eigendecomposition(2 * 8 // blocks)
    expected = lam_block[: 8 // blocks].repeat(blocks)
    assert torch.allclose(Lambda, expected, atol=1e-12)
    assert (Lambda.imag < 0).all()
    dt = torch.exp(layer.log_dt.detach())
    assert ((dt >= 1e-3 - 1e-12) & (dt <= 1e-1 + 1e-12)).all()


def test_ring_init_puts_discrete_eigenvalues_on_the_ring():
    torch.manual_seed(1)
    layer = S5(3, 400, init="ring", r_min=0.6, r_max=0.9, max_phase=math.pi, dtype=torch.float64)
    lam, Bbar = layer.discretize()
    modulus = lam.detach().abs()
    assert (modulus >= 0.6 - 1e-12).all() and (modulus <= 0.9 + 1e-12).all()
    assert (lam.detach().angle() >= -1e-12).all() and (lam.detach().angle() < math.pi + 1e-12).all()
    # Bbar is normalized as in the LRU: its rows have mean square (1 - |lam|^2) / 2 per part over d_model.
    ratio = (Bbar.detach().abs() ** 2).sum(1) / (1 - modulus**2)
    assert 0.7 < float(ratio.mean()) < 1.3


# -------------------------------------------------------------------------------------------- the forward map
def test_discretization_is_the_zero_order_hold_of_scipy_expm():
    torch.manual_seed(2)
    layer = S5(3, 6, dtype=torch.float64, dt_min=1e-4, dt_max=1.0)
    lam_ref, Bbar_ref, _, _ = zoh_reference(layer)
    lam, Bbar = layer.discretize()
    assert np.allclose(lam.detach().numpy(), lam_ref, rtol=1e-12, atol=0)
    assert np.allclose(Bbar.detach().numpy(), Bbar_ref, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("mode", FAST_MODES)
def test_modes_agree_with_the_sequential_layer(mode):
    torch.manual_seed(3)
    layer = S5(5, 12, dtype=torch.float64)
    u = torch.randn(2, 70, 5, dtype=torch.float64)
    layer.mode = "sequential"
    expected = layer(u)
    layer.mode = mode
    assert torch.allclose(layer(u), expected, rtol=0, atol=1e-10)


def test_layer_computes_the_system_it_reports():
    torch.manual_seed(4)
    layer = S5(4, 6, dtype=torch.float64)
    lam, Bbar, C, D = (torch.as_tensor(x) for x in zoh_reference(layer))
    u = torch.randn(3, 40, 4, dtype=torch.float64)
    x = torch.zeros(3, 6, dtype=torch.complex128)
    outputs = []
    for k in range(40):
        x = lam * x + u[:, k].to(torch.complex128) @ Bbar.T
        outputs.append((x @ C.T).real + u[:, k] @ D.T)
    assert torch.allclose(layer(u), torch.stack(outputs, dim=1), atol=1e-12)
    system = layer.to_system()
    assert torch.allclose(system.lam, lam, rtol=1e-12) and torch.allclose(system.B, Bbar, rtol=1e-10, atol=1e-14)


def test_float32_layer_matches_float64_to_1e_4():
    torch.manual_seed(5)
    layer64 = S5(8, 32, dtype=torch.float64)
    layer32 = S5(8, 32, dtype=torch.float32)
    layer32.load_state_dict(layer64.state_dict())
    u = torch.randn(2, 200, 8, dtype=torch.float64)
    expected = layer64(u)
    got = layer32(u.float())
    assert got.dtype == torch.float32
    assert (got.double() - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_gradients_match_finite_differences():
    torch.manual_seed(6)
    layer = S5(2, 3, dtype=torch.float64, dt_min=0.05, dt_max=0.5)
    u = torch.randn(2, 9, 2, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in layer.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())

    def f(u, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (u,))

    for mode in ("chunked", "fft"):
        layer.mode, layer.chunk_size = mode, 4
        assert torch.autograd.gradcheck(f, (u, *values), fast_mode=True)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(7)
    layer = S5(4, 8)
    layer(torch.randn(2, 50, 4)).square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@given(re_log=st.lists(st.floats(-30.0, 5.0), min_size=1, max_size=6), im=st.floats(-1e3, 1e3),
       log_dt=st.floats(-10.0, 2.0))
def test_discrete_eigenvalues_stay_inside_the_unit_disc_for_any_parameter_values(re_log, im, log_dt):
    layer = S5(2, len(re_log), dtype=torch.float64)
    with torch.no_grad():
        layer.Lambda_re_log.copy_(torch.tensor(re_log, dtype=torch.float64))
        layer.Lambda_im.fill_(im)
        layer.log_dt.fill_(log_dt)
    assert (layer.discretize()[0].abs() <= 1).all()
    assert (layer.Lambda.real < 0).all()


# ---------------------------------------------------------------------------------------- protocol: round trip
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("init", ["hippo", "ring"])
def test_loading_its_own_system_leaves_outputs_and_parameters_unchanged(init, dtype, device):
    torch.manual_seed(8)
    layer = S5(4, 10, init=init, dtype=dtype, device=device)
    u = torch.randn(2, 64, 4, dtype=dtype, device=device)
    before = layer(u)
    old = {k: v.detach().clone() for k, v in layer.named_parameters()}
    objects = dict(layer.named_parameters())
    system = layer.to_system()
    assert system.lam.device == before.device
    layer.load_system_(system)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(layer(u), before, rtol=0, atol=tol * before.abs().max().item())
    for name, p in layer.named_parameters():
        assert p is objects[name], name  # resized in place: optimizers and hooks keep the same objects
        assert torch.allclose(p.detach(), old[name], rtol=100 * tol, atol=100 * tol * old[name].abs().max()), name


@pytest.mark.parametrize(
    "lam",
    [0.5, 0.999999, -0.7, -0.999999, cmath.rect(0.9, -1.2), cmath.rect(0.3, 2.0), 1e-300],
    ids=["real-positive", "near-1", "real-negative", "near-minus-1", "negative-phase", "positive-phase", "tiny"],
)
def test_any_stable_discrete_mode_is_represented_exactly(lam):
    g = torch.Generator().manual_seed(9)
    layer = S5(3, 4, dtype=torch.float64)
    target = torch.tensor([lam, 0.4 + 0.3j], dtype=torch.complex128)
    B = torch.randn(2, 3, generator=g, dtype=torch.complex128)
    C = torch.randn(3, 2, generator=g, dtype=torch.complex128)
    layer.load_system_(StandInSystem(target, B, C, torch.eye(3, dtype=torch.float64)))
    lam_bar, Bbar = layer.discretize()
    assert torch.allclose(lam_bar.detach(), target, rtol=1e-12, atol=1e-300)
    assert torch.allclose(Bbar.detach(), B, rtol=1e-9)
    assert (layer.Lambda.detach().real < 0).all()


def test_new_modes_take_the_timescale_of_the_nearest_old_mode():
    torch.manual_seed(10)
    layer = S5(3, 6, dtype=torch.float64)
    old_lam = layer.discretize()[0].detach()
    old_dt = torch.exp(layer.log_dt.detach())
    target = old_lam[[4, 1]] * 0.999  # two modes that barely moved
    B = torch.ones(2, 3, dtype=torch.complex128)
    layer.load_system_(StandInSystem(target, B, B.T.clone(), None))
    assert torch.allclose(torch.exp(layer.log_dt.detach()), old_dt[[4, 1]], rtol=1e-14)
    assert torch.equal(layer.D.detach(), torch.zeros(3, dtype=torch.float64))


# ------------------------------------------------------------------------------------------- cuts and bounds
@pytest.mark.parametrize("init", ["hippo", "ring"])
@pytest.mark.parametrize("tol", [1e-1, 1e-2])
def test_cut_changes_the_map_by_at_most_the_bound_and_at_least_the_next_hsv(init, tol):
    torch.manual_seed(11)
    layer = S5(3, 12, init=init, r_min=0.3, r_max=0.95, dt_min=0.01, dt_max=0.5, dtype=torch.float64)
    full = real_realization(*zoh_reference(layer))
    res = cut(layer, tol=tol)
    reduced = real_realization(*zoh_reference(layer))  # from the parameters the layer now holds
    error = hinf_norm_ab13dd(*error_system(*full, *reduced))
    hsv = hsv_ab09ad(*full[:3])
    r = res.rank
    assert layer.state_dim < 12 and res.error_bound == pytest.approx(2 * hsv[r:].sum(), rel=1e-6)
    assert hsv[r] * (1 - 1e-6) <= error <= float(res.error_bound) * (1 + 1e-6)


def test_cut_changes_outputs_by_at_most_the_bound_times_the_input_energy():
    torch.manual_seed(12)
    layer = S5(4, 40, dt_min=0.01, dt_max=0.5, dtype=torch.float64)
    u = torch.randn(8, 300, 4, dtype=torch.float64)
    before = layer(u).detach()
    res = cut(layer, tol=1e-3)
    change = (layer(u).detach() - before).flatten(1).norm(dim=1) / u.flatten(1).norm(dim=1)
    assert layer.state_dim < 40
    assert 0 < float(change.max()) <= float(res.error_bound) * (1 + 1e-6)


def test_compress_cuts_s5_layers_within_their_reported_bound():
    torch.manual_seed(13)
    model = torch.nn.Sequential(S5(4, 24, dtype=torch.float64), torch.nn.Tanh(), S5(4, 24, dtype=torch.float64))
    u = torch.randn(4, 100, 4, dtype=torch.float64)
    y0 = model[0](u).detach()
    report = compress_(model, tol=0.05, optimizer=None)
    entry = report.layers[0]
    assert entry.compressed and model[0].state_dim == entry.after < 24
    change = (model[0](u).detach() - y0).flatten(1).norm(dim=1) / u.flatten(1).norm(dim=1)
    assert float(change.max()) <= entry.error_bound * (1 + 1e-6)


def test_training_continues_after_a_cut():
    torch.manual_seed(14)
    layer = S5(3, 16, dtype=torch.float64)
    u = torch.randn(8, 60, 3, dtype=torch.float64)
    target = torch.roll(u, 3, dims=1)
    cut(layer, rank=6)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = (layer(u) - target).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert layer.state_dim <= 6 and losses[-1] < 0.9 * losses[0]


# ------------------------------------------------------------------------------------------------ checkpoints
def test_compressed_checkpoint_loads_into_a_fresh_full_size_layer():
    torch.manual_seed(15)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, dtype=torch.float64), S5(4, 16, dtype=torch.float64))
    cut(model[1], rank=5)
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 4, dtype=torch.float64), S5(4, 16, dtype=torch.float64))
    objects = [id(p) for p in fresh.parameters()]
    fresh.load_state_dict(model.state_dict())
    assert fresh[1].state_dim == model[1].state_dim <= 5
    assert [id(p) for p in fresh.parameters()] == objects
    u = torch.randn(2, 30, 4, dtype=torch.float64)
    assert torch.equal(fresh(u), model(u))
    optimizer = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    fresh(u).square().mean().backward()
    optimizer.step()


def test_checkpoint_with_a_different_d_model_still_fails_loudly():
    with pytest.raises(RuntimeError, match="size mismatch"):
        S5(5, 8).load_state_dict(S5(4, 6).state_dict())


# ------------------------------------------------------------------------------------------------ bad input
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
def test_load_system_rejects_what_s5_cannot_represent_and_changes_nothing(change, message):
    torch.manual_seed(16)
    layer = S5(3, 4, dtype=torch.float64)
    fields = dict(lam=torch.tensor([0.5, -0.5j], dtype=torch.complex128), B=torch.ones(2, 3, dtype=torch.complex128),
                  C=torch.ones(3, 2, dtype=torch.complex128), D=torch.eye(3, dtype=torch.float64), real_output=True)
    before = {name: (p, p.detach().clone()) for name, p in layer.named_parameters()}
    with pytest.raises(ValueError, match=message):
        layer.load_system_(StandInSystem(**(fields | change)))
    for name, p in layer.named_parameters():
        assert p is before[name][0] and torch.equal(p.detach(), before[name][1]), name


def test_constructor_rejects_bad_options():
    for kwargs, match in [(dict(init="legs"), "init"), (dict(blocks=3), "blocks"), (dict(dt_min=0.0), "dt_min"),
                          (dict(r_max=1.5), "r_max"), (dict(mode="fast"), "mode")]:
        with pytest.raises(ValueError, match=match):
            S5(2, 4, **kwargs)


def test_forward_rejects_the_wrong_width():
    with pytest.raises(ValueError, match=r"\(\.\.\., L, 3\)"):
        S5(3, 4)(torch.randn(2, 10, 4))


def test_differentiable_system_carries_gradients_to_the_parameters():
    layer = S5(2, 3, dtype=torch.float64)
    system = layer.to_system(differentiable=True)
    (system.lam.abs().sum() + system.B.abs().sum()).backward()
    assert layer.log_dt.grad is not None and layer.Lambda_re_log.grad is not None and layer.B_re.grad is not None
