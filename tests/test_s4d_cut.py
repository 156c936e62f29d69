"""Layers of independent channels (S4D) are cut without a loop over channels, to one order from their total energy."""

import numpy as np
import pytest

import lti_reduce as lr

torch = pytest.importorskip("torch")
at = pytest.importorskip("adapters.torch")
from adapters.torch.cut.plan import _layer_order  # noqa: E402


def _stable_batch(count=8, r=7, m=1, p=1, seed=0, complex_=False):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((count, r, r))
    if complex_:
        A = A + 1j * rng.standard_normal((count, r, r))
    A *= 0.9 / np.abs(np.linalg.eigvals(A)).max(-1)[:, None, None]
    B, C = rng.standard_normal((count, r, m)), rng.standard_normal((count, p, r))
    D = rng.standard_normal((count, p, m))
    return A, B, C, D


def _response(lam, B, C, D, z, real_output):
    """Transfer function of a diagonal system at the points ``z``: shape (len(z), p, m)."""
    g = np.einsum("pk,zk,km->zpm", C, 1.0 / (z[:, None] - lam[None, :]), B)
    if real_output:  # y = Re(C x): the conjugate modes contribute the conjugate terms, halved
        g = 0.5 * (g + np.einsum("pk,zk,km->zpm", C.conj(), 1.0 / (z[:, None] - lam.conj()[None, :]), B.conj()))
    return g + D


def _dense_response(A, B, C, D, z):
    eye = np.eye(A.shape[-1])
    return np.stack([C @ np.linalg.solve(w * eye - A, B) + D for w in z])


@pytest.mark.parametrize("complex_", [False, True])
def test_a_batch_converts_in_one_call_like_one_system_at_a_time(complex_):
    A, B, C, D = _stable_batch(seed=1, complex_=complex_, m=2, p=3)
    counts = [lr.modal_form(A[i], B[i], C[i], D[i])[0].n for i in range(len(A))]
    if not complex_:
        assert len(set(counts)) > 1  # the case under test: different numbers of modes
        with pytest.raises(lr.LTIInputError, match="pad=True"):
            lr.modal_form(A, B, C, D)
    batch, cond = lr.modal_form(A, B, C, D, pad=True)
    assert batch.real_output is not complex_ and batch.n == max(counts) and cond.shape == (len(A),)
    z = np.exp(1j * np.linspace(0.05, 3.1, 9))
    for i in range(len(A)):
        one, cond_one = lr.modal_form(A[i], B[i], C[i], D[i])
        k = counts[i]
        np.testing.assert_allclose(np.sort_complex(batch.lam[i, :k]), np.sort_complex(one.lam), atol=1e-12)
        assert np.all(batch.lam[i, k:] == 0) and np.all(batch.B[i, k:] == 0) and np.all(batch.C[i, :, k:] == 0)
        assert cond[i] == pytest.approx(cond_one, rel=1e-6)
        got = _response(batch.lam[i], batch.B[i], batch.C[i], batch.D[i], z, not complex_)
        np.testing.assert_allclose(got, _dense_response(A[i], B[i], C[i], D[i], z), rtol=1e-9, atol=1e-10)


def test_pad_must_be_a_bool():
    with pytest.raises(lr.LTIInputError, match="pad must be True or False"):
        lr.modal_form(*_stable_batch(), pad="yes")


def test_s4d_stores_zero_modes_as_inert_modes_and_computes_the_padded_map():
    torch.manual_seed(0)
    layer = at.S4D(3, 4, dtype=torch.float64)
    A, B, C, D = _stable_batch(count=3, r=5, seed=5)  # 3, 4 and 5 modes
    system, _ = lr.modal_form(A, B, C, D, pad=True)
    assert bool((system.lam == 0).any())
    layer.load_system_(system)
    assert layer.state_dim == system.n and torch.isfinite(layer.log_A_real).all()
    u = torch.randn(2, 40, 3, dtype=torch.float64)
    y = layer(u).detach().numpy()
    for h in range(3):  # the channel's own dense recurrence, same step convention as the layer (K_0 = C B)
        x, out = np.zeros((2, 5)), []
        for t in range(40):
            x = x @ A[h].T + u[:, t, h : h + 1].numpy() @ B[h].T
            out.append(x @ C[h, 0] + D[h, 0, 0] * u[:, t, h].numpy())
        np.testing.assert_allclose(y[:, :, h], np.stack(out, 1), rtol=1e-9, atol=1e-9)


def test_the_layer_order_keeps_1_minus_tol_of_the_channels_total_energy():
    rng = np.random.default_rng(0)
    decay = np.array([1.0, 1.2, 0.9, 0.1])  # three channels whose HSVs fall fast and one slow one
    hsv = np.exp(-np.outer(decay, np.arange(20))) * rng.uniform(0.5, 2.0, (4, 1))
    for tol in (0.01, 0.05, 0.2):
        total, cum = hsv.sum(), np.cumsum(hsv.sum(0))
        r = _layer_order(hsv, tol)
        assert hsv[:, r:].sum() <= tol * total < hsv[:, r - 1:].sum()  # smallest order within the budget
        assert r == int(np.searchsorted(cum, (1 - tol) * total - 1e-12 * total) + 1)
        assert r < int(np.max(lr.rank_for_tol(hsv, tol)))  # the slow channel alone would keep more
    assert _layer_order(hsv[0], 0.05) == lr.rank_for_tol(hsv[0], 0.05)  # one system: its own rule


def test_a_briefly_trained_s4d_layer_shrinks_and_reports_each_channels_bound():
    torch.manual_seed(0)
    layer = at.S4D(4, 16, dtype=torch.float64)
    model = torch.nn.Sequential(layer, torch.nn.Linear(4, 4, dtype=torch.float64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(4, 64, 4, dtype=torch.float64)
    for _ in range(5):
        loss = (model(x) - torch.roll(x, 3, dims=1)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    system = layer.to_system()
    report = at.compress_(model, tol=0.05, optimizer=opt)
    entry = report.layers[0]
    hsv = entry.hsv
    r = _layer_order(hsv, 0.05)
    assert int(np.max(lr.rank_for_tol(hsv, 0.05))) > r  # the old rule (largest channel order) keeps more
    assert entry.compressed and entry.order_after == r and layer.state_dim < 16
    # Each channel's own bound at the common order; the report gives the largest, which holds for the layer.
    own = 2 * hsv[:, r:].sum(-1)
    assert entry.error_bound == pytest.approx(own.max(), rel=1e-6)
    after = layer.to_system()
    from adapters.torch.cut.certify import _difference

    errors = lr.hinf_norm(_difference(system, after))
    assert bool((errors.numpy() <= own * (1 + 1e-6)).all())


def test_the_table_says_that_an_s4d_layers_energy_kept_is_its_worst_channels():
    torch.manual_seed(0)
    model = torch.nn.Sequential(at.S4D(4, 16))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 30, 4)).sum().backward()
    opt.step()
    opt.zero_grad()
    report = at.compress_(model, tol=0.1, optimizer=opt, progress=False)
    assert report["0"].compressed and report["0"].channels == 4
    assert "energy kept of a layer of independent channels (S4D): its worst channel's" in str(report)
    torch.manual_seed(0)
    lru = torch.nn.Sequential(at.LRU(4, 16))
    text = str(at.compress_(lru, rank=4, optimizer=None, progress=False))
    assert "worst channel" not in text
