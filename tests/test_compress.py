"""compress_: the adapter's contract (issue 4)."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
at = pytest.importorskip("adapters.torch")
import lti_reduce as lr  # noqa: E402


class Classifier(torch.nn.Module):
    """Encoder -> two LRU blocks -> mean-pool -> decoder: a model with non-SSM parameters too."""

    def __init__(self, d_model=6, d_state=24, n_classes=3, dtype=torch.float64, r_min=0.3, r_max=0.95):
        super().__init__()
        self.encoder = torch.nn.Linear(1, d_model, dtype=dtype)
        self.blocks = torch.nn.ModuleList(
            [at.LRU(d_model, d_state, r_min=r_min, r_max=r_max, dtype=dtype) for _ in range(2)])
        self.decoder = torch.nn.Linear(d_model, n_classes, dtype=dtype)

    def forward(self, x):
        h = self.encoder(x)
        for block in self.blocks:
            h = h + torch.tanh(block(h))
        return self.decoder(h.mean(dim=1))


def toy_task(n=64, length=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, 1, generator=g, dtype=torch.float64)
    y = (x[:, :10, 0].sum(1) > 0).long() + (x[:, -5:, 0].sum(1) > 1).long()
    return x, y


def train_steps(model, opt, x, y, steps):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def snapshot(model, opt):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), [
        (id(p), p.detach().clone()) for p in model.parameters()]


def assert_identical(model, opt, snap):
    sd, osd, params = snap
    now = model.state_dict()
    assert sd.keys() == now.keys()
    for k in sd:
        assert sd[k].shape == now[k].shape and torch.equal(sd[k], now[k]), k
    assert [id(p) for p in model.parameters()] == [i for i, _ in params]
    for p, (_, v) in zip(model.parameters(), params):
        assert torch.equal(p.detach(), v)
    o = opt.state_dict()
    assert o["param_groups"] == osd["param_groups"]
    assert o["state"].keys() == osd["state"].keys()
    for k in o["state"]:
        for name, v in o["state"][k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(osd["state"][k][name])), (k, name)
    owned = [p for g in opt.param_groups for p in g["params"]]
    assert [id(p) for p in owned] == [id(p) for p in model.parameters()]


@pytest.fixture
def trained():
    torch.manual_seed(0)
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = toy_task()
    train_steps(model, opt, x, y, 3)
    return model, opt, x, y


def test_output_change_is_within_each_layers_error_bound():
    torch.manual_seed(1)
    layer = at.LRU(4, 40, r_min=0.2, r_max=0.9, dtype=torch.float64)
    u = torch.randn(8, 200, 4, dtype=torch.float64)
    y0 = layer(u).detach()
    report = at.compress_(torch.nn.Sequential(layer), tol=1e-3, optimizer=None)
    entry = report.layers[0]
    assert entry.compressed and layer.state_dim < 40
    dy = layer(u).detach() - y0
    # ||y - y_r||_2 <= ||G - G_r||_inf ||u||_2 <= error_bound ||u||_2 per sequence (zero initial state)
    ratio = dy.flatten(1).norm(dim=1) / u.flatten(1).norm(dim=1)
    assert float(ratio.max()) <= entry.error_bound * (1 + 1e-6) + 1e-12
    assert float(ratio.max()) > 0


def test_report_lists_every_layer_with_hsvs_energy_and_bound(trained):
    model, opt, *_ = trained
    report = at.compress_(model, rank=6, optimizer=opt)
    assert [r.name for r in report] == ["blocks.0", "blocks.1"]
    for r in report:
        assert (r.before, r.after, r.compressed) == (24, model.get_submodule(r.name).state_dim, True)
        # 6 modes hold a real map of order <= 12 (a real eigenvalue takes a whole mode)
        assert r.order_before == 48 and 6 <= r.order_after <= 12
        k = r.order_after
        assert r.hsv.shape == (48,) and np.all(np.diff(r.hsv) <= 1e-12)
        assert r.energy_kept == pytest.approx(r.hsv[:k].sum() / r.hsv.sum())
        # 2 * the discarded HSVs, plus the LRU's real-mode budget of 2^-7 sigma_{r+1}
        assert r.hsv_lower == pytest.approx(r.hsv[k])
        assert r.error_bound == pytest.approx(2 * r.hsv[k:].sum() + 2.0**-7 * r.hsv[k], rel=1e-12)
    text = str(report)
    assert "blocks.0" in text and "24->" in text and "total" in text
    assert report.to_dict()["state_before"] == 48


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.Adam(p, lr=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
    lambda p: torch.optim.SGD(p, lr=5e-2, momentum=0.9),
], ids=["Adam", "AdamW", "SGD-momentum"])
def test_training_continues_and_loss_falls_after_compression(make_opt):
    torch.manual_seed(0)
    model = Classifier()
    opt = make_opt(model.parameters())
    x, y = toy_task()
    train_steps(model, opt, x, y, 5)
    at.compress_(model, rank=8, optimizer=opt)
    assert [b.state_dim for b in model.blocks] == [8, 8]
    losses = train_steps(model, opt, x, y, 10)
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_optimizer_keeps_untouched_state_and_resets_rebased_parameters(trained):
    model, opt, x, y = trained
    enc_state = copy.deepcopy(opt.state[model.encoder.weight])
    lr_before = [g["lr"] for g in opt.param_groups]
    at.compress_(model, rank=6, optimizer=opt)
    assert torch.equal(opt.state[model.encoder.weight]["exp_avg"], enc_state["exp_avg"])
    assert float(opt.state[model.encoder.weight]["step"]) == float(enc_state["step"])
    for block in model.blocks:
        for name, p in block.named_parameters():
            # D (elementwise skip) is untouched by truncation: same object, same basis, state kept
            assert (p in opt.state) == (name == "D"), name
    owned = {id(p) for g in opt.param_groups for p in g["params"]}
    assert owned == {id(p) for p in model.parameters()}
    assert [g["lr"] for g in opt.param_groups] == lr_before
    train_steps(model, opt, x, y, 1)
    assert float(opt.state[model.encoder.weight]["step"]) == float(enc_state["step"]) + 1
    assert float(opt.state[model.blocks[0].nu_log]["step"]) == 1


def test_lr_scheduler_keeps_working_after_compression(trained):
    model, opt, x, y = trained
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    at.compress_(model, rank=6, optimizer=opt)
    lr0 = opt.param_groups[0]["lr"]
    train_steps(model, opt, x, y, 1)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr0 * 0.5)


def test_failure_in_load_system_restores_model_and_optimizer_bit_for_bit(trained, monkeypatch):
    model, opt, *_ = trained
    snap = snapshot(model, opt)

    def boom(system):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(model.blocks[1], "load_system_", boom)
    with pytest.raises(RuntimeError, match="injected"):
        at.compress_(model, rank=6, optimizer=opt)
    assert_identical(model, opt, snap)
    assert [b.state_dim for b in model.blocks] == [24, 24]


def test_failure_in_the_core_leaves_everything_unchanged(trained, monkeypatch):
    model, opt, *_ = trained
    snap = snapshot(model, opt)
    calls = {"n": 0}
    real = lr.modal_form

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise lr.LTIInputError("injected core failure")
        return real(*args, **kwargs)

    monkeypatch.setattr("lti_reduce.modal.modal_form", flaky)
    with pytest.raises(lr.LTIInputError, match="injected"):
        at.compress_(model, rank=6, optimizer=opt)
    assert calls["n"] == 2
    assert_identical(model, opt, snap)


def test_failure_in_optimizer_update_restores(trained, monkeypatch):
    model, opt, *_ = trained
    snap = snapshot(model, opt)

    def broken(*a, **k):
        raise RuntimeError("optimizer update failed")

    monkeypatch.setattr("adapters.torch.compress.reset_state_", broken)
    with pytest.raises(RuntimeError, match="optimizer update failed"):
        at.compress_(model, rank=6, optimizer=opt)
    assert_identical(model, opt, snap)


def test_compressed_checkpoint_loads_into_fresh_full_size_model_and_training_resumes(trained):
    model, opt, x, y = trained
    at.compress_(model, rank=5, optimizer=opt)
    sd, osd = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    fresh = Classifier()
    fresh.load_state_dict(sd)
    assert [b.state_dim for b in fresh.blocks] == [5, 5]
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    fresh_opt.load_state_dict(osd)
    la = train_steps(model, opt, x, y, 3)
    lb = train_steps(fresh, fresh_opt, x, y, 3)
    np.testing.assert_allclose(la, lb, rtol=1e-12)


def test_selection_smallest_keeps_less_energy_than_largest(trained):
    model, opt, *_ = trained
    m2 = copy.deepcopy(model)
    largest = at.compress_(model, rank=6, optimizer=None)
    smallest = at.compress_(m2, rank=6, selection="smallest", optimizer=None)
    for a, b in zip(largest, smallest):
        assert b.energy_kept < a.energy_kept
        assert b.error_bound > a.error_bound


def test_selection_random_is_reproducible_with_a_seed(trained):
    model, *_ = trained
    m2 = copy.deepcopy(model)
    r1 = at.compress_(model, rank=6, selection="random", seed=3, optimizer=None)
    r2 = at.compress_(m2, rank=6, selection="random", seed=3, optimizer=None)
    assert [x.energy_kept for x in r1] == [x.energy_kept for x in r2]
    for a, b in zip(model.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_global_scope_picks_layer_adaptive_orders():
    torch.manual_seed(0)
    model = torch.nn.Sequential(at.LRU(4, 30, r_min=0.0, r_max=0.3, dtype=torch.float64),
                                at.LRU(4, 30, r_min=0.9, r_max=0.999, dtype=torch.float64))
    report = at.compress_(model, tol=0.05, scope="global", min_shrink=0.0, optimizer=None)
    fast, slow = report.layers
    assert fast.order_after != slow.order_after
    dropped = [1 - r.energy_kept for r in report]
    assert np.mean(dropped) <= 0.05 + 1e-12


def test_min_shrink_gate_skips_small_cuts(trained):
    model, *_ = trained
    report = at.compress_(model, rank=23, min_shrink=0.05, optimizer=None)
    assert not report.compressed
    assert all("min_shrink" in r.note for r in report)
    assert [b.state_dim for b in model.blocks] == [24, 24]


@pytest.mark.parametrize("kwargs, match", [
    ({"tol": 0.1, "selection": "biggest"}, "selection"),
    ({"tol": 0.1, "scope": "model"}, "scope"),
    ({"tol": 1.5}, "tol"),
    ({"tol": 0.0}, "tol"),
    ({"rank": 0}, "rank"),
    ({}, "exactly one"),
    ({"tol": 0.1, "rank": 3}, "exactly one"),
    ({"rank": 3, "scope": "global"}, "global"),
])
def test_bad_options_raise_clear_value_errors(trained, kwargs, match):
    model, *_ = trained
    with pytest.raises(ValueError, match=match):
        at.compress_(model, optimizer=None, **kwargs)


def test_model_without_compressible_layers_is_an_error():
    with pytest.raises(ValueError, match="no compressible layer"):
        at.compress_(torch.nn.Linear(3, 3), tol=0.1, optimizer=None)


def test_optimizer_that_does_not_own_the_parameters_is_rejected(trained):
    model, *_ = trained
    other = torch.optim.Adam(model.encoder.parameters())
    with pytest.raises(ValueError, match="does not own"):
        at.compress_(model, rank=4, optimizer=other)


def test_layer_with_eigenvalues_on_the_unit_circle_is_named_in_the_error(trained):
    model, opt, *_ = trained
    with torch.no_grad():
        model.blocks[1].nu_log[0] = -800.0  # exp(-exp(-800)) == 1.0 exactly
    snap = snapshot(model, opt)
    with pytest.raises(lr.UnstableSystemError, match="blocks.1"):
        at.compress_(model, rank=4, optimizer=opt)
    assert_identical(model, opt, snap)


def test_schedule_cuts_in_window_and_round_trips_state():
    sched = at.CompressionSchedule(total_steps=1000, window=0.1, num_cuts=4, tol=0.05, min_shrink=0.0)
    assert sched.steps == [25, 50, 75, 100]
    assert [s for s in range(1, 1001) if sched.should_cut(s)] == [25, 50, 75, 100]
    torch.manual_seed(0)
    model = torch.nn.Sequential(at.LRU(4, 20, r_min=0.0, r_max=0.6, dtype=torch.float64))
    assert sched.step(24, model, None) is None
    report = sched.step(25, model, None)
    assert report is not None and sched.history[0]["state_after"] == report.state_after
    other = at.CompressionSchedule(total_steps=10)
    other.load_state_dict(sched.state_dict())
    assert other.steps == sched.steps and other.history == sched.history


def test_rollback_guard_restores_model_and_optimizer_after_a_bad_cut(trained):
    model, opt, x, y = trained
    snap = snapshot(model, opt)
    guard = at.RollbackGuard(model, opt, max_drop=0.01)
    guard.checkpoint(metric=0.9)
    at.compress_(model, rank=2, optimizer=opt)
    assert guard.check(metric=0.5) is True
    assert [b.state_dim for b in model.blocks] == [24, 24]
    sd, osd, _ = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k])
    assert opt.state_dict()["state"].keys() == osd["state"].keys()
    assert not guard.allows_cut
    train_steps(model, opt, x, y, 2)  # optimizer owns the restored parameters


def test_hankel_nuclear_norm_is_differentiable_and_matches_the_core():
    torch.manual_seed(0)
    model = torch.nn.Sequential(at.LRU(3, 8, r_min=0.2, r_max=0.9, dtype=torch.float64))
    reg = at.hankel_nuclear_norm(model)
    expected = lr.hankel_singular_values(model[0].to_system()).sum()
    assert float(reg.detach()) == pytest.approx(float(expected), rel=1e-8)
    reg.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().max()) > 0 for g in grads)
