"""compress_: the adapter's contract (issue 4)."""

import copy
import math

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

    monkeypatch.setattr("adapters.torch.cut.apply.reset_state_", broken)
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


# ------------------------------------------------------------------------------------- issue 15, part 1
def _all_parameters_train(model, opt, x, y):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, opt, x, y, 1)
    return [n for n, p in model.named_parameters() if p.shape != before[n].shape or torch.equal(p.detach(), before[n])]


def test_forgetting_the_optimizer_is_an_immediate_type_error(trained):
    model, opt, *_ = trained
    sizes = [b.state_dim for b in model.blocks]
    with pytest.raises(TypeError, match="optimizer="):
        at.compress_(model, tol=0.05)
    sched = at.CompressionSchedule(total_steps=10, steps=[1], tol=0.05)
    with pytest.raises(TypeError, match="optimizer"):
        sched.step(1, model)
    assert [b.state_dim for b in model.blocks] == sizes


def test_parameters_are_resized_in_place_and_every_one_trains_after_a_cut(trained):
    model, opt, x, y = trained
    objects = {n: p for n, p in model.named_parameters()}
    at.compress_(model, rank=5, optimizer=opt)
    assert all(p is objects[n] for n, p in model.named_parameters())
    assert _all_parameters_train(model, opt, x, y) == []


def test_training_resumes_while_the_last_steps_loss_is_still_referenced(trained):
    model, opt, x, y = trained
    loss = torch.nn.functional.cross_entropy(model(x), y)  # the loop's `loss` keeps its graph alive
    opt.zero_grad()
    loss.backward()
    opt.step()
    at.compress_(model, rank=5, optimizer=opt)
    assert _all_parameters_train(model, opt, x, y) == []
    assert loss.grad_fn is not None


def test_an_optimizer_not_passed_is_caught_at_its_next_step(trained):
    model, opt, x, y = trained
    at.compress_(model, rank=5, optimizer=None)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(at.StaleOptimizerStateError, match="optimizer=opt"):
        opt.step()
    # The fix the message names works: drop the stale moments, then every parameter trains.
    for p in model.parameters():
        opt.state.pop(p, None)
    assert _all_parameters_train(model, opt, x, y) == []


def test_compress_refuses_inference_mode_and_changes_nothing(trained):
    model, opt, *_ = trained
    snap = snapshot(model, opt)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        at.compress_(model, rank=5, optimizer=opt)
    assert_identical(model, opt, snap)


def test_optimizer_built_before_loading_a_compressed_checkpoint_trains_every_parameter(trained):
    model, opt, x, y = trained
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_steps(model, opt, x, y, 2)
    at.compress_(model, rank=5, optimizer=opt)
    train_steps(model, opt, x, y, 1)
    compressed_sd, osd = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    fresh = Classifier()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)  # built BEFORE loading (the order)
    fresh.load_state_dict(compressed_sd)
    fresh_opt.load_state_dict(osd)
    assert len(list(fresh.parameters())) == 20
    assert all(fresh_opt.state[p]["exp_avg"].shape == p.shape for p in fresh.parameters())
    before = {n: p.detach().clone() for n, p in fresh.named_parameters()}
    np.testing.assert_allclose(train_steps(fresh, fresh_opt, x, y, 3), train_steps(model, opt, x, y, 3), rtol=1e-12)
    assert [n for n, p in fresh.named_parameters() if torch.equal(p.detach(), before[n])] == []


def test_rollback_guard_restores_groups_in_another_order_by_identity():
    torch.manual_seed(3)
    model = Classifier()
    x, y = toy_task()
    recurrent = [p for n, p in model.named_parameters() if n.startswith("blocks.") and not n.endswith(".D")]
    non_recurrent = [p for n, p in model.named_parameters() if not (n.startswith("blocks.") and not n.endswith(".D"))]
    opt = torch.optim.AdamW([{"params": non_recurrent}, {"params": recurrent, "lr": 1e-2, "weight_decay": 0.0}],
                            lr=1e-3, weight_decay=0.1)
    train_steps(model, opt, x, y, 1)
    groups = [[id(p) for p in g["params"]] for g in opt.param_groups]
    hyper = [(g["lr"], g["weight_decay"]) for g in opt.param_groups]
    guard = at.RollbackGuard(model, opt, max_drop=0.01)
    guard.checkpoint(1.0)
    saved = copy.deepcopy(opt.state_dict())
    at.compress_(model, rank=5, optimizer=opt)
    assert guard.check(0.0)  # rolled back
    assert [b.state_dim for b in model.blocks] == [24, 24]
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == groups
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == hyper
    for p in recurrent + non_recurrent:  # every parameter has its own moments back
        assert opt.state[p]["exp_avg"].shape == p.shape
    now = opt.state_dict()
    for k, st in saved["state"].items():
        assert torch.equal(now["state"][k]["exp_avg"], st["exp_avg"])
    assert _all_parameters_train(model, opt, x, y) == []


@pytest.mark.parametrize("kwargs, match", [
    (dict(tol=5), "tol"), (dict(tol=0.1, rank=3), "exactly one"), (dict(rank=0), "rank"),
    (dict(steps=[0]), "cut steps"), (dict(steps=["a"]), "steps"), (dict(selection="best"), "selection"),
    (dict(min_shrink=2), "min_shrink"), (dict(seed=-1), "seed"), (dict(window=0), "window"),
    (dict(num_cuts=0), "num_cuts"), (dict(bogus=1), "unknown"), (dict(num_cuts=11), "do not fit in the window of 10"),
    (dict(tol=5), "did you mean 0.05"),
])
def test_schedule_validates_every_option_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        at.CompressionSchedule(total_steps=100, **kwargs)


def test_schedule_refuses_a_model_without_compressible_layers_at_its_first_call():
    sched = at.CompressionSchedule(total_steps=100, tol=0.05)
    with pytest.raises(ValueError, match="no compressible layer"):
        sched.step(1, torch.nn.Linear(3, 3), None)  # no cut due at step 1: refused anyway


def test_seed_must_be_a_non_negative_integer(trained):
    model, opt, *_ = trained
    snap = snapshot(model, opt)
    with pytest.raises(ValueError, match="seed must be None or a non-negative integer.*-1"):
        at.compress_(model, rank=5, selection="random", seed=-1, optimizer=opt)
    assert_identical(model, opt, snap)


# ------------------------------------------------------------------------------------- one entry point
class Hybrid(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lru = at.LRU(4, 12, r_min=0.3, r_max=0.9)
        self.mixer = at.SelectiveSSM(4, 16, expand=1, d_conv=2)

    def forward(self, u):
        return self.mixer(self.lru(u))


def test_compress_cuts_selective_layers_by_state_selection_and_lti_layers_by_truncation():
    torch.manual_seed(4)
    model = Hybrid()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    u = torch.randn(4, 20, 4)
    model(u).square().mean().backward()
    opt.step()
    with pytest.raises(ValueError, match="calibration_inputs="):
        at.compress_(model, rank=4, optimizer=opt)
    report = at.compress_(model, rank=4, optimizer=opt, calibration_inputs=u)
    assert model.lru.state_dim == 4 and model.mixer.state_dim == 4
    methods = {x.name: x.method for x in report}
    assert methods == {"lru": "balanced_truncation", "mixer": "state_selection"}
    assert report["mixer"].detail is not None and report["mixer"].gain is None
    assert "select" in str(report) and "BT" in str(report)
    opt.zero_grad()
    model(u).square().mean().backward()
    opt.step()


def test_compress_is_atomic_across_selective_and_lti_layers(monkeypatch):
    torch.manual_seed(5)
    model = Hybrid()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    u = torch.randn(4, 20, 4)
    model(u).square().mean().backward()
    opt.step()
    snap = snapshot(model, opt)

    def boom(system, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(model.lru, "load_system_", boom)
    with pytest.raises(RuntimeError, match="injected"):
        at.compress_(model, rank=4, optimizer=opt, calibration_inputs=u)
    assert model.mixer.state_dim == 16 and model.lru.state_dim == 12
    assert_identical(model, opt, snap)


# ------------------------------------------------------------------------------------- batched channels
class Channels(torch.nn.Module):
    """Test-only S4D-like layer: ``H`` independent SISO real-output channels sharing ``n`` complex modes."""

    def __init__(self, H=3, n=10, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        modulus = 0.3 + 0.65 * torch.rand(H, n, generator=g, dtype=torch.float64)
        phase = torch.rand(H, n, generator=g, dtype=torch.float64) * math.pi
        lam = torch.polar(modulus, phase)
        scale = torch.logspace(0, -3, n, dtype=torch.float64)  # decaying energy: a clear cut
        self.lam_re, self.lam_im = torch.nn.Parameter(lam.real), torch.nn.Parameter(lam.imag)
        self.B_re = torch.nn.Parameter(torch.randn(H, n, 1, generator=g, dtype=torch.float64) * scale[:, None])
        self.B_im = torch.nn.Parameter(torch.randn(H, n, 1, generator=g, dtype=torch.float64) * scale[:, None])
        self.C_re = torch.nn.Parameter(torch.randn(H, 1, n, generator=g, dtype=torch.float64))
        self.C_im = torch.nn.Parameter(torch.randn(H, 1, n, generator=g, dtype=torch.float64))

    @property
    def state_dim(self):
        return self.lam_re.shape[-1]

    def to_system(self):
        c = lambda re, im: torch.complex(re.detach(), im.detach())  # noqa: E731
        return lr.DiagonalSystem(c(self.lam_re, self.lam_im), c(self.B_re, self.B_im), c(self.C_re, self.C_im),
                                 real_output=True)

    def load_system_(self, system):
        from adapters.torch.layers._params import set_parameter_

        for name, value in (("lam", system.lam), ("B", system.B), ("C", system.C)):
            set_parameter_(self, f"{name}_re", value.real)
            set_parameter_(self, f"{name}_im", value.imag)


def _real_realization(lam, B, C):
    """Real realization of order 2n of ``y = Re(C x)``: 2x2 rotation blocks, ``[Re b; Im b]``, ``[Re c, -Im c]``."""
    lam, B, C = (x.detach().numpy().astype(complex) for x in (lam, B, C))
    n = lam.shape[0]
    A = np.zeros((2 * n, 2 * n))
    Br = np.zeros((2 * n, B.shape[1]))
    Cr = np.zeros((C.shape[0], 2 * n))
    for k in range(n):
        a, b = lam[k].real, lam[k].imag
        A[2 * k:2 * k + 2, 2 * k:2 * k + 2] = [[a, -b], [b, a]]
        Br[2 * k], Br[2 * k + 1] = B[k].real, B[k].imag
        Cr[:, 2 * k], Cr[:, 2 * k + 1] = C[:, k].real, -C[:, k].imag
    return A, Br, Cr, np.zeros((C.shape[0], B.shape[1]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("kwargs", [dict(tol=0.02), dict(tol=0.1), dict(rank=3)], ids=["tol.02", "tol.1", "rank3"])
def test_independent_channels_are_cut_to_one_order_each_within_its_own_bound(seed, kwargs):
    from reference import error_system, hinf_norm_ab13dd, hsv_ab09ad

    H = 4
    layer = Channels(H=H, n=10, seed=seed)
    before = layer.to_system()
    dense = [_real_realization(before.lam[c], before.B[c], before.C[c]) for c in range(H)]
    hsv = np.stack([hsv_ab09ad(*d[:3]) for d in dense])  # SLICOT, on the real realization of each channel
    report = at.compress_(torch.nn.Sequential(layer), min_shrink=0.0, optimizer=None, certify="hinf", **kwargs)
    entry = report.layers[0]
    after = layer.to_system()
    assert entry.compressed and entry.channels == H and entry.hsv.shape == hsv.shape
    # (The core's diagonal path is accurate to about sqrt(eps) sigma_1 in the small HSVs.)
    np.testing.assert_allclose(entry.hsv, hsv, rtol=1e-6, atol=1e-6 * hsv.max())
    # Each channel's order, read off the loaded modal form (a real eigenvalue is one state, a complex one two,
    # a zero mode lam = B = C = 0 that fills a channel with fewer modes none).
    zero = (after.lam == 0) & (after.B[..., 0] == 0) & (after.C[:, 0, :] == 0)
    states = torch.where(zero, 0, torch.where(after.lam.imag == 0, 1, 2))
    orders = states.sum(-1).tolist()
    if "tol" in kwargs:  # one order for all channels: the smallest keeping 1 - tol of the channels' total energy
        cs = np.cumsum(hsv.sum(0))
        need = int(np.sum(cs < (1 - kwargs["tol"]) * cs[-1]) + 1)
        assert orders == [need] * H
    else:
        assert after.n <= kwargs["rank"]
    gains, errors = [], []
    for c in range(H):
        reduced = _real_realization(after.lam[c], after.B[c], after.C[c])
        gains.append(hinf_norm_ab13dd(*dense[c]))
        errors.append(hinf_norm_ab13dd(*error_system(*dense[c], *reduced)))
        k = orders[c]
        assert hsv[c, k] * (1 - 1e-6) <= errors[c] <= 2 * hsv[c, k:].sum() * (1 + 1e-6)  # its own bounds
    assert entry.gain == pytest.approx(max(gains), rel=1e-5)
    assert entry.error == pytest.approx(max(errors), rel=1e-5)
    assert max(errors) <= entry.error_bound * (1 + 1e-9)


def lr_numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


# ------------------------------------------------------------------------------------- issue 15, part 2
def _lru_map_dense(layer):
    """Dense complex realization of the LRU's own map (x_k = lam x_{k-1} + B u_k, y_k = Re(C x_k) + D u_k)."""
    lam = layer.lam.detach().numpy()
    B = layer.effective_B().detach().numpy()
    C = torch.complex(layer.C_re, layer.C_im).detach().numpy()
    D = np.diag(layer.D.detach().numpy())
    # s_k = x_{k-1}: s_{k+1} = lam s_k + B u_k, y_k = Re(C lam s_k) + (Re(C B) + D) u_k
    A = np.diag(np.concatenate([lam, lam.conj()]))
    Cl = C * lam[None, :]
    return A, np.concatenate([B, B.conj()]), 0.5 * np.concatenate([Cl, Cl.conj()], axis=1), (C @ B).real + D


@pytest.mark.parametrize("tol,hinf_method", [(0.02, "search"), (0.2, "search"), (0.2, "level-set")])
def test_gain_and_error_match_slicot_and_lie_between_the_bounds(trained, tol, hinf_method):
    from reference import error_system, hinf_norm_ab13dd

    model, opt, *_ = trained
    dense_before = [_lru_map_dense(b) for b in model.blocks]
    report = at.compress_(model, tol=tol, optimizer=opt, min_shrink=0.0, hinf_method=hinf_method, certify=True)
    for entry, block, Gd in zip(report, model.blocks, dense_before):
        assert entry.compressed and entry.hinf_method == hinf_method
        gain = hinf_norm_ab13dd(*Gd)
        error = hinf_norm_ab13dd(*error_system(*Gd, *_lru_map_dense(block)))
        assert entry.gain == pytest.approx(gain, rel=1e-5)
        assert entry.error == pytest.approx(error, rel=1e-5)
        budget = 2.0**-7 * entry.hsv_lower  # the LRU's real-mode fix
        assert entry.hsv_lower - budget <= entry.error <= entry.error_bound
        assert entry.relative_error == pytest.approx(entry.error / entry.gain)
    text = str(report)
    assert "err/gain" in text and "bound/gain" in text and f"{report.layers[0].relative_error:.3g}" in text
    import json

    d = json.loads(json.dumps(report.to_dict()))
    assert d["layers"][0]["gain"] == report.layers[0].gain and d["layers"][0]["error"] == report.layers[0].error
    assert d["layers"][0]["hinf_method"] == hinf_method
    assert d["layers"][0]["relative_error"] == pytest.approx(report.layers[0].relative_error)


def test_real_modes_of_a_cut_get_gradients_in_every_direction_and_error_includes_the_fix():
    torch.manual_seed(2)
    layer = at.LRU(3, 16, r_min=0.0, r_max=0.95, max_phase=0.3, dtype=torch.float64)  # many near-real modes
    model = torch.nn.Sequential(layer)
    report = at.compress_(model, rank=4, optimizer=None, certify="hinf")
    s = layer.to_system()
    real = [k for k in range(layer.state_dim) if abs(math.sin(float(layer.theta.detach()[k]))) < 0.05]
    assert real, "the cut produced no real mode; the test proves nothing"
    u, target = torch.randn(4, 40, 3, dtype=torch.float64), torch.randn(4, 40, 3, dtype=torch.float64)
    (layer(u) - target).square().mean().backward()
    for k in real:
        assert float(layer.theta.grad[k]) != 0 and layer.B_im.grad[k].abs().sum() > 0 and layer.C_im.grad[:, k].abs().sum() > 0
    assert s.lam.imag.abs().min() > 0
    assert report.layers[0].error <= report.layers[0].error_bound


def test_lazy_certificates_are_those_of_the_cut_even_after_training_on():
    torch.manual_seed(0)
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = toy_task()
    train_steps(model, opt, x, y, 2)
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-2)
    twin_opt.load_state_dict(opt.state_dict())
    eager = at.compress_(twin, rank=5, optimizer=twin_opt, certify=True)
    lazy = at.compress_(model, rank=5, optimizer=opt, certify="lazy")
    assert all(x._pending is not None for x in lazy)
    train_steps(model, opt, x, y, 3)  # the layers move on; the report keeps the cut's figures
    for a, b in zip(eager, lazy):
        assert b.gain == a.gain and b.error == a.error and b._pending is None
    off = at.compress_(model, rank=4, optimizer=opt, certify=False, min_shrink=0.0)
    assert off.layers[0].gain is None and off.layers[0].error is None and off.layers[0].relative_error is None
    assert "-" in str(off) and off.to_dict()["layers"][0]["gain"] is None
    sched = at.CompressionSchedule(total_steps=10, steps=[1], rank=3)
    assert sched.compress_kwargs["certify"] == "output"  # a schedule's printed report computes no norm
    with pytest.raises(ValueError, match="certify"):
        at.compress_(model, rank=3, optimizer=opt, certify="yes")
    with pytest.raises(ValueError, match="hinf_method must be 'search'.*'level-set'"):
        at.compress_(model, rank=3, optimizer=opt, hinf_method="exact")
    with pytest.raises(ValueError, match="hinf_method"):
        at.CompressionSchedule(total_steps=10, hinf_method="exact")


class ReplacingChannels(Channels):
    """A layer that replaces its parameter objects in load_system_ (the older protocol)."""

    def load_system_(self, system):
        for name, value in (("lam", system.lam), ("B", system.B), ("C", system.C)):
            setattr(self, f"{name}_re", torch.nn.Parameter(value.real.clone()))
            setattr(self, f"{name}_im", torch.nn.Parameter(value.imag.clone()))


def test_an_optimizer_left_on_replaced_parameters_is_caught_at_its_next_step():
    model = torch.nn.Sequential(ReplacingChannels(H=2, n=8, seed=1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    at.compress_(model, rank=3, optimizer=None, certify=False)
    with pytest.raises(at.StaleOptimizerStateError, match="replaced"):
        opt.step()
    model2 = torch.nn.Sequential(ReplacingChannels(H=2, n=8, seed=1))
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    at.compress_(model2, rank=3, optimizer=opt2, certify=False)  # rebound: steps the live parameters
    assert {id(p) for g in opt2.param_groups for p in g["params"]} == {id(p) for p in model2.parameters()}
    opt2.step()


def test_an_optimizer_not_passed_to_a_cut_of_selective_layers_is_caught_too():
    torch.manual_seed(6)
    model = Hybrid()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    u = torch.randn(4, 20, 4)
    model(u).square().mean().backward()
    opt.step()
    at.compress_(model, rank=4, optimizer=None, calibration_inputs=u, certify=False)
    opt.zero_grad()
    model(u).square().mean().backward()
    with pytest.raises(at.StaleOptimizerStateError, match="optimizer=opt"):
        opt.step()


def test_loading_a_compressed_checkpoint_under_a_trained_optimizer_without_its_state_is_caught(trained):
    model, opt, x, y = trained
    at.compress_(model, rank=5, optimizer=opt)
    fresh = Classifier()
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    train_steps(fresh, fresh_opt, x, y, 1)  # moments of the full-size parameters
    fresh.load_state_dict(model.state_dict())  # ... but fresh_opt.load_state_dict is forgotten
    fresh_opt.zero_grad()
    torch.nn.functional.cross_entropy(fresh(x), y).backward()
    with pytest.raises(at.StaleOptimizerStateError, match="old shape"):
        fresh_opt.step()


# --------------------------------------------------------------------------- re-warm-up after a cut
from adapters.torch.optim import rewarm_remaining  # noqa: E402

def _sgd_twins(rewarm_steps, lr=0.1):
    """Two identical 2-LRU models with SGD, cut alike, the first with ``rewarm_steps``, the second without."""
    torch.manual_seed(0)
    a = torch.nn.Sequential(at.LRU(4, 16), torch.nn.Linear(4, 4), at.LRU(4, 16))
    b = copy.deepcopy(a)
    oa, ob = torch.optim.SGD(a.parameters(), lr=lr), torch.optim.SGD(b.parameters(), lr=lr)
    ra = at.compress_(a, rank=6, optimizer=oa, rewarm_steps=rewarm_steps)
    rb = at.compress_(b, rank=6, optimizer=ob, rewarm_steps=0)
    return a, b, oa, ob, ra, rb


def _update_ratios(a, b, oa, ob, u):
    """One step on both from equal parameters; the ratio |update_a| / |update_b| per parameter name."""
    with torch.no_grad():
        for p, q in zip(a.parameters(), b.parameters()):
            q.copy_(p)
    for m, o in ((a, oa), (b, ob)):
        o.zero_grad()
        m(u).square().mean().backward()
    before = {n: p.detach().clone() for n, p in a.named_parameters()}
    oa.step()
    ob.step()
    return {n: float((p.detach() - before[n]).norm() / (q.detach() - before[n]).norm())
            for (n, p), q in zip(a.named_parameters(), b.parameters())}


def test_the_cut_parameters_updates_ramp_up_over_rewarm_steps_and_nothing_else_changes():
    a, b, oa, ob, ra, rb = _sgd_twins(rewarm_steps=10)
    assert ra.rewarm_steps == 10 and rb.rewarm_steps == 0
    assert "ramp up over the next 10 steps" in str(ra) and ra.to_dict()["rewarm_steps"] == 10
    u = torch.randn(3, 12, 4)
    rebased = {"0.B_re", "0.C_im", "0.nu_log", "2.theta", "2.B_im"}
    untouched = {"1.weight", "1.bias", "0.D", "2.D"}  # not re-based by the cut (D is kept as it is)
    for k in range(1, 13):
        ratios = _update_ratios(a, b, oa, ob, u)
        want = min(1.0, k / 10)
        for name in rebased:
            assert ratios[name] == pytest.approx(want, rel=1e-3), (k, name)  # float32 differences
        for name in untouched:
            assert ratios[name] == pytest.approx(1.0, rel=1e-5), (k, name)
    assert rewarm_remaining(oa) == 0 and not any(k.startswith("lti_reduce") for g in oa.param_groups for k in g)


def test_a_rolled_back_cut_stops_its_ramp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(at.LRU(4, 16), at.LRU(4, 16))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = at.RollbackGuard(model, opt, max_drop=0.0)
    guard.checkpoint(metric=1.0)
    at.compress_(model, rank=6, optimizer=opt)
    assert rewarm_remaining(opt) == 20
    assert guard.check(metric=0.0)  # rolled back
    assert rewarm_remaining(opt) == 0
    assert [layer.state_dim for layer in model] == [16, 16]


def test_a_second_cut_replaces_the_first_ramp_and_a_failed_cut_starts_none(monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(at.LRU(4, 16))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    at.compress_(model, rank=10, optimizer=opt, rewarm_steps=5)
    at.compress_(model, rank=6, optimizer=opt, rewarm_steps=7)
    assert rewarm_remaining(opt) == 7
    other = torch.optim.SGD(model.parameters(), lr=0.1)
    monkeypatch.setattr(at.LRU, "load_system_", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        at.compress_(model, rank=3, optimizer=other)
    assert rewarm_remaining(other) == 0


@pytest.mark.parametrize("bad", [-1, 2.5, True, "20", None])
def test_rewarm_steps_must_be_a_non_negative_integer(trained, bad):
    model, opt, *_ = trained
    with pytest.raises(ValueError, match="rewarm_steps must be an integer >= 0"):
        at.compress_(model, tol=0.05, optimizer=opt, rewarm_steps=bad)
    with pytest.raises(ValueError, match="rewarm_steps"):
        at.CompressionSchedule(total_steps=100, tol=0.05, rewarm_steps=bad)


def test_a_wrapper_sharing_the_optimizers_groups_ramps_each_step_once():
    """Wrappers (accelerate, Lightning) share the inner optimizer's param_groups; if both fire step hooks
    the ramp must still scale the update once and count one step."""
    a, b, oa, ob, *_ = _sgd_twins(rewarm_steps=10)

    class Wrapper(torch.optim.Optimizer):
        def __init__(self, inner):  # noqa: D107 - like accelerate's AcceleratedOptimizer, plus hooks
            self.inner, self.param_groups, self.state, self.defaults = inner, inner.param_groups, inner.state, {}
            self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}

        def step(self, closure=None):
            return self.inner.step(closure)

    Wrapper.step = torch.optim.Optimizer.profile_hook_step(Wrapper.step)
    wrapped = Wrapper(oa)
    u = torch.randn(3, 12, 4)
    for k in (1, 2):
        assert _update_ratios(a, b, wrapped, ob, u)["0.B_re"] == pytest.approx(k / 10, rel=1e-3)
    assert rewarm_remaining(oa) == 8
