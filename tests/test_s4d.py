"""The S4D layer: kernel and recurrence agree, the batched protocol, exact reloads, per-channel cuts within bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
scipy_linalg = pytest.importorskip("scipy.linalg")

import lti_reduce as lr  # noqa: E402
from adapters.torch import S4D  # noqa: E402
from reference import error_system, freqresp, hinf_norm_ab13dd, hinf_norm_grid, hsv_ab09ad  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DISCRETIZATIONS = ["zoh", "bilinear"]


class StandInSystem:
    """The attributes ``load_system_`` reads, without the core's validation."""

    def __init__(self, lam, B, C, D=None, real_output=True):
        self.lam, self.B, self.C, self.D, self.real_output = lam, B, C, D, real_output


def channel_reference(layer, h):
    """Channel ``h`` as ``(lam, Bbar, C, D)`` in numpy from the parameters (ZOH by ``scipy.linalg.expm``)."""
    p = {k: v.detach().to(torch.float64).cpu().numpy() for k, v in layer.named_parameters()}
    A = -np.exp(p["log_A_real"][h]) + 1j * p["A_imag"][h]
    dt = float(np.exp(p["log_dt"][h]))
    n = A.shape[0]
    if layer.discretization == "zoh":
        lam, Bbar = np.empty(n, complex), np.empty(n, complex)
        for j in range(n):
            E = scipy_linalg.expm(np.array([[A[j], 1.0], [0.0, 0.0]], complex) * dt)
            lam[j], Bbar[j] = E[0, 0], E[0, 1]
    else:
        lam = (1 + A * dt / 2) / (1 - A * dt / 2)
        Bbar = dt / (1 - A * dt / 2)
    C = 2 * (p["C_re"][h] + 1j * p["C_im"][h])
    return lam, Bbar[:, None], C[None, :], np.array([[p["D"][h]]])


def real_realization(lam, B, C, D):
    A = np.block([[np.diag(lam.real), -np.diag(lam.imag)], [np.diag(lam.imag), np.diag(lam.real)]])
    return A, np.vstack([B.real, B.imag]), np.hstack([C.real, -C.imag]), np.asarray(D, float)


def cut_channels(layer, tol):
    """Every channel to one common real order ``r = max_h r_h``; returns (r, per-channel orders, result)."""
    bal = lr.balance(layer.to_system())
    orders = np.atleast_1d(lr.rank_for_tol(bal.hsv, tol))
    r = int(orders.max())
    res = bal.reduce(rank=r)
    layer.load_system_([res[h].to_diagonal() for h in range(layer.d_model)])
    return r, orders, res, bal


def frequency_response(layer, length):
    """``G_h(e^{i w_k}) = sum_l K_h[l] e^{-i w_k l} + D_h`` at ``w_k = 2 pi k / length``, from the layer's kernel."""
    with torch.no_grad():
        K = layer.kernel(length).to(torch.float64)
        return torch.fft.fft(K, dim=-1) + layer.D.detach().to(torch.float64)[:, None]


# ------------------------------------------------------------------------------------------- initialization
def test_s4d_lin_and_inv_initializations_are_the_papers_formulas():
    n, H = 8, 3
    j = np.arange(n)
    lin = S4D(H, n, init="lin", dtype=torch.float64).A.detach().numpy()
    inv = S4D(H, n, init="inv", dtype=torch.float64).A.detach().numpy()
    N = 2 * n
    assert np.allclose(lin, np.broadcast_to(-0.5 + 1j * np.pi * j, (H, n)), rtol=1e-14)
    assert np.allclose(inv, np.broadcast_to(-0.5 + 1j * (N / np.pi) * (N / (2 * j + 1) - 1), (H, n)), rtol=1e-14)


# -------------------------------------------------------------------------------------------- the forward map
@pytest.mark.parametrize("discretization", DISCRETIZATIONS)
def test_discretization_matches_scipy_expm_and_the_bilinear_formula(discretization):
    torch.manual_seed(0)
    layer = S4D(3, 6, discretization=discretization, dt_min=1e-3, dt_max=1.0, dtype=torch.float64)
    system = layer.to_system()
    for h in range(3):
        lam, B, C, D = channel_reference(layer, h)
        assert np.allclose(system.lam[h].numpy(), lam, rtol=1e-12)
        assert np.allclose(system.B[h].numpy(), B, rtol=1e-10)
        assert np.allclose(system.C[h].numpy(), C, rtol=1e-14) and np.allclose(system.D[h].numpy(), D)


@pytest.mark.parametrize("discretization", DISCRETIZATIONS)
@pytest.mark.parametrize("length", [1, 2, 17, 64, 100])
def test_fft_convolution_recurrent_step_and_scans_agree(discretization, length):
    torch.manual_seed(length)
    layer = S4D(4, 8, discretization=discretization, dtype=torch.float64)
    u = torch.randn(2, length, 4, dtype=torch.float64)
    expected = layer(u)  # FFT convolution with the kernel
    state, ys = layer.initial_state(2), []
    for k in range(length):
        y, state = layer.step(u[:, k], state)
        ys.append(y)
    scale = float(expected.abs().max())
    assert torch.allclose(torch.stack(ys, dim=1), expected, rtol=0, atol=1e-12 * scale)
    for mode in ("scan", "chunked", "sequential"):
        layer.mode = mode
        assert torch.allclose(layer(u), expected, rtol=0, atol=1e-12 * scale), mode


def test_kernel_is_the_impulse_response_of_the_reported_systems():
    torch.manual_seed(1)
    layer = S4D(3, 5, dtype=torch.float64)
    K = layer.kernel(30).detach().numpy()
    for h in range(3):
        lam, B, C, _ = channel_reference(layer, h)
        markov = np.array([(C @ np.diag(lam**k) @ B).real.item() for k in range(30)])
        assert np.allclose(K[h], markov, rtol=0, atol=1e-12 * np.abs(markov).max())


def direct_kernel(layer, length):
    """``K_l = 2 Re sum_j C_j Bbar_j Abar_j^l`` in complex128 numpy by repeated multiplication, with the round-off
    scale ``sum_j |C_j Bbar_j| |Abar_j|^l (1 + l)`` of each entry (``l``: the condition of ``Abar^l`` in ``Abar``).
    """
    K, scale = np.empty((layer.d_model, length)), np.empty((layer.d_model, length))
    for h in range(layer.d_model):
        lam, B, C, _ = channel_reference(layer, h)
        term = C[0] / 2 * B[:, 0]  # channel_reference's C is the layer's 2 C
        for k in range(length):
            K[h, k] = 2 * term.sum().real
            scale[h, k] = 2 * np.abs(term).sum() * (1 + k)
            term = term * lam
    return K, scale


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("discretization", DISCRETIZATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_a_direct_float64_evaluation_to_the_dtypes_round_off(dtype, discretization, device):
    torch.manual_seed(13)
    length = 300  # 18 blocks of 17: every block's start power and every in-block power is used
    # Steps up to 1 with S4D-Lin: angles l Im(A dt) of many turns, and modes that decay within the kernel
    layer = S4D(3, 8, discretization=discretization, dt_min=1e-3, dt_max=1.0, dtype=dtype, device=device)
    with torch.no_grad():
        got = layer.kernel(length)
    assert got.dtype == dtype and got.device == layer.D.device and got.shape == (3, length)
    expected, scale = direct_kernel(layer, length)
    error = np.abs(got.cpu().double().numpy() - expected)
    assert (error <= 8 * torch.finfo(dtype).eps * scale).all(), float((error / scale).max())


@pytest.mark.parametrize("discretization", DISCRETIZATIONS)
def test_kernel_gradients_match_finite_differences(discretization):
    torch.manual_seed(14)
    layer = S4D(2, 3, discretization=discretization, dt_min=0.05, dt_max=0.5, dtype=torch.float64)
    names = [name for name, _ in layer.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())

    class Kernel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, length):
            return self.layer.kernel(length)

    def kernel(*values):  # length 20: blocks of 5, so both factors of the blocked product carry gradients
        return torch.func.functional_call(Kernel(), {f"layer.{k}": v for k, v in zip(names, values)}, (20,))

    assert torch.autograd.gradcheck(kernel, values)


def test_float32_layer_matches_float64_to_1e_4():
    torch.manual_seed(2)
    layer64 = S4D(8, 16, dtype=torch.float64)
    layer32 = S4D(8, 16, dtype=torch.float32)
    layer32.load_state_dict(layer64.state_dict())
    u = torch.randn(2, 300, 8, dtype=torch.float64)
    expected = layer64(u)
    got = layer32(u.float())
    assert got.dtype == torch.float32
    assert (got.double() - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.parametrize("discretization", DISCRETIZATIONS)
def test_gradients_match_finite_differences(discretization):
    torch.manual_seed(3)
    layer = S4D(2, 3, discretization=discretization, dtype=torch.float64)
    u = torch.randn(2, 9, 2, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in layer.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())

    def f(u, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (u,))

    assert torch.autograd.gradcheck(f, (u, *values), fast_mode=True)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(4)
    layer = S4D(4, 8)
    layer(torch.randn(2, 50, 4)).square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------------------- protocol: round trip
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("discretization", DISCRETIZATIONS)
@pytest.mark.parametrize("init", ["lin", "inv"])
def test_loading_its_own_system_leaves_outputs_and_parameters_unchanged(init, discretization, dtype, device):
    torch.manual_seed(5)
    layer = S4D(4, 10, init=init, discretization=discretization, dtype=dtype, device=device)
    u = torch.randn(2, 64, 4, dtype=dtype, device=device)
    before = layer(u)
    old = {k: v.detach().clone() for k, v in layer.named_parameters()}
    objects = dict(layer.named_parameters())
    system = layer.to_system()
    assert system.batch_shape == (4,) and system.lam.device == before.device
    layer.load_system_(system)
    tol = 2e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(layer(u), before, rtol=0, atol=tol * before.abs().max().item())
    for name, p in layer.named_parameters():
        assert p is objects[name], name
        assert torch.allclose(p.detach(), old[name], rtol=100 * tol, atol=100 * tol * old[name].abs().max()), name


def test_channels_with_different_numbers_of_modes_are_filled_with_inert_trainable_modes():
    g = torch.Generator().manual_seed(6)
    layer = S4D(2, 6, dtype=torch.float64)
    lams = [torch.tensor([0.9, 0.5 + 0.2j, -0.3j], dtype=torch.complex128), torch.tensor([0.7j], dtype=torch.complex128)]
    parts = [StandInSystem(lam, torch.randn(len(lam), 1, generator=g, dtype=torch.complex128),
                           torch.randn(1, len(lam), generator=g, dtype=torch.complex128),
                           torch.tensor([[0.5 * h]], dtype=torch.float64)) for h, lam in enumerate(lams)]
    layer.load_system_(parts)
    assert layer.state_dim == 3
    K = layer.kernel(20).detach()
    for h, s in enumerate(parts):  # each channel's map is exactly the one loaded
        markov = torch.stack([(s.C @ torch.diag(s.lam**k) @ s.B).real[0, 0] for k in range(20)])
        assert torch.allclose(K[h], markov, rtol=0, atol=1e-12)
    assert torch.equal(layer.D.detach(), torch.tensor([0.0, 0.5], dtype=torch.float64))
    layer(torch.randn(1, 20, 2, dtype=torch.float64)).square().sum().backward()
    assert bool((layer.C_re.grad[1, 1:] != 0).all())  # the inert modes of channel 1 can learn


# ------------------------------------------------------------------------------------------- cuts and bounds
@pytest.mark.parametrize("discretization, init, dt_max", [("zoh", "inv", 0.5), ("bilinear", "lin", 0.1)])
@pytest.mark.parametrize("tol", [1e-1, 2e-2])
def test_every_channel_stays_within_its_own_bound_at_the_common_order(discretization, init, dt_max, tol):
    torch.manual_seed(7)
    H, n, length = 4, 16, 8192
    layer = S4D(H, n, init=init, discretization=discretization, dt_min=0.02, dt_max=dt_max, dtype=torch.float64)
    full = [real_realization(*channel_reference(layer, h)) for h in range(H)]
    G = frequency_response(layer, length)
    r, orders, res, bal = cut_channels(layer, tol)
    G_r = frequency_response(layer, length)
    reduced = [real_realization(*channel_reference(layer, h)) for h in range(H)]  # from the new parameters
    # The kernel-based responses are exact only if the kernels have decayed within `length` steps.
    slowest = max(np.abs(np.linalg.eigvals(s[0])).max() for s in full + reduced)
    assert slowest**length < 1e-9
    bounds = bal.error_bounds()[:, r].numpy()
    assert r < 2 * n and r == orders.max() and layer.state_dim <= n
    for h in range(H):
        difference = error_system(*full[h], *reduced[h])
        # Two lower estimates of ||G_h - G_h,r||_inf: SLICOT AB13DD and a dense grid plus the pole frequencies.
        error = max(hinf_norm_ab13dd(*difference), hinf_norm_grid(*difference, num=1024))
        hsv = hsv_ab09ad(*full[h][:3])
        # The core's diagonal path resolves HSVs down to about 1e-6 sigma_1 (below: zero), SLICOT further.
        assert bounds[h] == pytest.approx(2 * hsv[r:].sum(), rel=1e-6, abs=2e-6 * hsv[0])
        assert bounds[h] <= float(bal.error_bounds()[h, orders[h]]) + 1e-15  # within its own rule's bound
        assert hsv[r] * (1 - 1e-6) <= error <= bounds[h] * (1 + 1e-6) + 1e-13
        grid_error = float((G[h] - G_r[h]).abs().max())  # the layer's own kernels, FFT on a 8192-point grid
        assert grid_error <= bounds[h] * (1 + 1e-6) + 1e-13
        # ... which are the frequency responses of the realizations above (checked on every 32nd frequency),
        # in the layer's same-step convention G_layer(z) = z (G(z) - D) + D.
        k = np.arange(0, length, 32)
        w = 2 * np.pi * k / length
        for response, system in ((G, full[h]), (G_r, reduced[h])):
            D = system[3][0, 0]
            expected = np.exp(1j * w) * (freqresp(*system, w)[:, 0, 0] - D) + D
            assert np.allclose(response[h, k].numpy(), expected, rtol=0, atol=1e-8 * np.abs(expected).max())


def test_cut_changes_each_channels_output_by_at_most_its_bound_times_the_input_energy():
    torch.manual_seed(8)
    H = 3
    layer = S4D(H, 16, init="inv", dt_min=0.05, dt_max=0.5, dtype=torch.float64)
    u = torch.randn(6, 400, H, dtype=torch.float64)
    before = layer(u).detach()
    r, _, _, bal = cut_channels(layer, 5e-2)
    bounds = bal.error_bounds()[:, r]
    change = (layer(u).detach() - before).norm(dim=1) / u.norm(dim=1)  # (batch, H): per channel
    assert layer.state_dim < 16
    assert bool((change <= bounds * (1 + 1e-6) + 1e-14).all()) and float(change.max()) > 0


def test_batched_reduced_system_with_one_common_number_of_modes_loads_directly():
    torch.manual_seed(9)
    layer = S4D(3, 8, dtype=torch.float64)
    system = layer.to_system()
    keep = [0, 2, 5]
    smaller = StandInSystem(system.lam[:, keep], system.B[:, keep], system.C[:, :, keep], system.D)
    u = torch.randn(2, 50, 3, dtype=torch.float64)
    layer.load_system_(smaller)
    assert layer.state_dim == 3
    K = layer.kernel(50).detach()
    expected = 2 * torch.stack([(smaller.C[:, 0, :] / 2 * smaller.B[:, :, 0] * smaller.lam**k).sum(-1).real
                                for k in range(50)], dim=-1)
    assert torch.allclose(K, expected, atol=1e-12)
    layer(u).sum().backward()


def test_training_continues_after_a_cut():
    torch.manual_seed(10)
    layer = S4D(3, 16, dtype=torch.float64)
    u = torch.randn(4, 60, 3, dtype=torch.float64)
    target = torch.roll(u, 5, dims=1)
    cut_channels(layer, 0.05)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = (layer(u) - target).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert layer.state_dim < 16 and losses[-1] < 0.9 * losses[0]


# ------------------------------------------------------------------------------------------------ checkpoints
def test_compressed_checkpoint_loads_into_a_fresh_full_size_layer():
    torch.manual_seed(11)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, dtype=torch.float64), S4D(4, 16, dtype=torch.float64))
    cut_channels(model[1], 0.05)
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 4, dtype=torch.float64), S4D(4, 16, dtype=torch.float64))
    objects = [id(p) for p in fresh.parameters()]
    fresh.load_state_dict(model.state_dict())
    assert fresh[1].state_dim == model[1].state_dim < 16
    assert [id(p) for p in fresh.parameters()] == objects
    u = torch.randn(2, 30, 4, dtype=torch.float64)
    assert torch.equal(fresh(u), model(u))


def test_checkpoint_with_a_different_d_model_still_fails_loudly():
    with pytest.raises(RuntimeError, match="size mismatch"):
        S4D(5, 8).load_state_dict(S4D(4, 6).state_dict())


# ------------------------------------------------------------------------------------------------ bad input
def _valid(H=2, r=2):
    return dict(lam=torch.full((H, r), 0.5, dtype=torch.complex128), B=torch.ones(H, r, 1, dtype=torch.complex128),
                C=torch.ones(H, 1, r, dtype=torch.complex128), D=torch.zeros(H, 1, 1, dtype=torch.float64),
                real_output=True)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(real_output=False), "real_output=True"),
        (dict(lam=torch.tensor([[0.5, 1.0], [0.5, 0.5]], dtype=torch.complex128)), r"\|system.lam\| < 1 - 1e-12"),
        (dict(lam=torch.tensor([[0.5, float("nan")], [0.5, 0.5]], dtype=torch.complex128)), "NaN"),
        (dict(lam=torch.full((3, 2), 0.5, dtype=torch.complex128)), r"shape \(2, r\)"),
        (dict(B=torch.ones(2, 2, 2, dtype=torch.complex128)), "SISO"),
        (dict(D=torch.ones(2, 1, 1, dtype=torch.complex128) * 1j), "real"),
        (dict(D=torch.ones(2, 2, dtype=torch.float64)), "shape"),
    ],
    ids=["complex-output", "unstable", "nan", "channels", "mimo", "complex-D", "D-shape"],
)
def test_load_system_rejects_what_s4d_cannot_represent_and_changes_nothing(change, message):
    torch.manual_seed(12)
    layer = S4D(2, 4, dtype=torch.float64)
    before = {name: (p, p.detach().clone()) for name, p in layer.named_parameters()}
    with pytest.raises(ValueError, match=message):
        layer.load_system_(StandInSystem(**(_valid() | change)))
    with pytest.raises(ValueError, match="exactly one system per channel"):
        layer.load_system_([StandInSystem(**_valid(H=1))])
    for name, p in layer.named_parameters():
        assert p is before[name][0] and torch.equal(p.detach(), before[name][1]), name


def test_constructor_and_forward_reject_bad_options():
    for kwargs, match in [(dict(init="legs"), "init"), (dict(discretization="euler"), "discretization"),
                          (dict(dt_min=-1.0), "dt_min"), (dict(mode="auto"), "mode")]:
        with pytest.raises(ValueError, match=match):
            S4D(2, 4, **kwargs)
    with pytest.raises(ValueError, match=r"\(\.\.\., L, 3\)"):
        S4D(3, 4)(torch.randn(2, 10, 4))


def test_differentiable_system_carries_gradients_to_the_parameters():
    layer = S4D(2, 3, dtype=torch.float64)
    system = layer.to_system(differentiable=True)
    (system.lam.abs().sum() + system.B.abs().sum() + system.C.abs().sum()).backward()
    assert layer.log_dt.grad is not None and layer.log_A_real.grad is not None and layer.C_re.grad is not None


def test_forward_accepts_unbatched_input():
    assert S4D(3, 4)(torch.randn(10, 3)).shape == (10, 3)
    assert math.isfinite(float(S4D(3, 4, mode="chunked")(torch.randn(10, 3)).detach().sum()))


def test_compress_cuts_s4d_channels_to_one_order_within_the_reported_bound_and_trains_on():
    import adapters.torch as at

    torch.manual_seed(0)
    model = torch.nn.Sequential(at.S4D(4, 16), torch.nn.Linear(4, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(4, 64, 4)

    def step():
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(5):
        step()
    before = model[0].to_system()
    report = at.compress_(model, tol=0.1, optimizer=opt, certify="hinf")
    (entry,) = report
    assert entry.compressed and entry.channels == 4 and model[0].state_dim < 16
    assert entry.hsv_lower - 1e-9 <= entry.error <= entry.error_bound
    after = model[0].to_system()
    # Each channel's change, from the layers' own systems, within the reported (worst-channel) bound.
    for h in range(4):
        diff = lr.hinf_norm(lr.DiagonalSystem(
            np.concatenate([before.lam[h].numpy(), after.lam[h].numpy()]),
            np.concatenate([before.B[h].numpy(), after.B[h].numpy()]),
            np.concatenate([before.C[h].numpy(), -after.C[h].numpy()], axis=-1),
            None, real_output=True))
        assert diff <= entry.error_bound * (1 + 1e-6)
    assert np.isfinite(step())
