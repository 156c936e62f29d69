"""Cuts timed by the model (adapters.torch.monitor): the decision rule on constructed HSV trajectories,
its agreement with the core's Weyl certificate, the schedule in a loop and in the Lightning and HF callbacks."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lti_reduce as lr  # noqa: E402
from torch import nn  # noqa: E402

from adapters.torch import LRU, compressible_layers  # noqa: E402
from adapters.torch.monitor import HSVTimedSchedule, Settled, kept_set_settled, save_hsv_trajectory_plot  # noqa: E402

# tol 0.2 keeps r = 2 of these (8.6 of 10 >= 8): a gap of 2.6 between sigma_2 and sigma_3
HSV = np.array([5.0, 3.6, 1.0, 0.4, 0.0])


def test_a_still_trajectory_with_small_bounds_is_settled_on_both_paths_after_patience_intervals():
    hsvs, bounds = [HSV] * 4, [0.1] * 3
    assert int(lr.rank_for_tol(HSV, 0.2)) == 2
    assert kept_set_settled(hsvs, bounds, 0.2, 3) == Settled(True, True, 2)
    assert kept_set_settled(hsvs[:3], bounds[:2], 0.2, 3) == Settled(False, False, 2)  # too few looks yet


def test_a_bound_of_half_the_gap_or_more_is_not_a_certificate():
    gap = HSV[1] - HSV[2]
    assert kept_set_settled([HSV] * 4, [0.1, 0.1, 0.49 * gap], 0.2, 3).certified
    assert not kept_set_settled([HSV] * 4, [0.1, 0.1, 0.5 * gap], 0.2, 3).certified
    assert not kept_set_settled([HSV] * 4, [0.5 * gap, 0.1, 0.1], 0.2, 3).certified  # inside the window counts
    assert kept_set_settled([HSV] * 5, [0.5 * gap, 0.1, 0.1, 0.1], 0.2, 3).certified  # before it does not
    assert not kept_set_settled([HSV] * 4, [0.1, None, 0.1], 0.2, 3).certified  # a bound not computed
    assert kept_set_settled([HSV] * 4, [0.5 * gap] * 3, 0.2, 3).observed  # the still looks settle it anyway


def test_hsvs_crossing_the_cut_are_settled_on_neither_path():
    # a kept state (3.6) falls and a dropped one (1.0) rises through the cut: tol 0.3 keeps 2 all along
    hsvs = [np.sort(np.array([5.0, 3.6 - 0.65 * k, 1.0 + 0.65 * k, 0.4, 0.0]))[::-1] for k in range(5)]
    assert {int(lr.rank_for_tol(h, 0.3)) for h in hsvs} == {2}  # the count alone does not see it
    moves = [float(np.abs(a - b).max()) for a, b in zip(hsvs[1:], hsvs)]
    for j in range(2, 5):
        got = kept_set_settled(hsvs[:j + 1], moves[:j], 0.3, 2)
        assert not got.certified and not got.observed
    # and one that rises through the cut and stays above: settled again once it is past
    rising = [np.sort(np.array([5.0, 3.6, s, 0.4, 0.0]))[::-1] for s in (1.0, 2.0, 3.0, 3.0, 3.0)]
    got = kept_set_settled(rising[:3], [1.0, 1.0], 0.2, 2)
    assert not got.certified and not got.observed
    assert kept_set_settled(rising, [1.0, 1.0, 0.0, 0.0], 0.2, 2) == Settled(True, True, 3)


def test_a_moving_kept_count_is_not_settled_even_with_zero_bounds_unless_the_slack_allows_it():
    other = np.array([5.0, 2.0, 2.0, 1.0, 0.0])  # tol 0.2 keeps 3 of these
    assert int(lr.rank_for_tol(other, 0.2)) == 3
    got = kept_set_settled([HSV, HSV, other, HSV], [0.0] * 3, 0.2, 3)
    assert not got.certified and not got.observed
    # the energy of the 2 leading states moves by 8.6/10 - 7/10 = 0.16 in the window: within a 0.2 slack only
    assert kept_set_settled([HSV, HSV, other, HSV], [0.0] * 3, 0.2, 3, rank_slack=1, energy_slack=0.2).observed
    assert not kept_set_settled([HSV, HSV, other, HSV], [0.0] * 3, 0.2, 3, rank_slack=1, energy_slack=0.1).observed


def test_the_observed_path_settles_where_the_weyl_bound_is_too_loose():
    # the leading HSV grows (lightly damped modes): its move exceeds the gap at the cut, the cut stays put
    hsvs = [HSV * np.array([1.0 + 0.02 * k, 1, 1, 1, 1]) for k in range(4)]
    bounds = [3.0] * 3  # the Hankel norm of the difference can exceed every HSV
    got = kept_set_settled(hsvs, bounds, 0.2, 3)
    assert not got.certified and got.observed


def test_the_observed_path_fails_when_the_captured_energy_drifts():
    drift = [np.array([5.0, 3.6, 1.0 + 0.1 * k, 0.4, 0.0]) for k in range(4)]  # captured: 0.860 ... 0.835
    assert len({int(lr.rank_for_tol(h, 0.2)) for h in drift}) == 1  # the count alone does not see it
    assert not kept_set_settled(drift, [0.0] * 3, 0.2, 3, energy_slack=0.005).observed
    assert kept_set_settled(drift, [0.0] * 3, 0.2, 3, energy_slack=0.01).observed


def test_channels_are_cut_to_one_order_and_every_channel_must_be_certified():
    a, b = HSV, np.array([5.0, 4.9, 0.05, 0.0, 0.0])
    layer = np.stack([a, b])  # summed profile [10, 8.5, 1.05, 0.4, 0]: tol 0.2 keeps 2
    got = kept_set_settled([layer] * 3, [np.array([0.1, 0.1])] * 2, 0.2, 2)
    assert got == Settled(True, True, 2)
    assert not kept_set_settled([layer] * 3, [np.array([0.1, 3.0])] * 2, 0.2, 2).certified


def test_with_patience_one_the_certified_path_is_the_cores_weyl_certificate():
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(40):
        lam = rng.uniform(0.1, 0.9, 6)
        B, C = rng.standard_normal((6, 1)), rng.standard_normal((1, 6))
        s1 = lr.DiagonalSystem(lam, B, C)
        s2 = lr.DiagonalSystem((lam * (1 + 0.05 * rng.standard_normal(6))).clip(0.05, 0.95),
                               B + 0.05 * rng.standard_normal((6, 1)), C)
        h1, h2 = lr.hankel_singular_values(s1), lr.hankel_singular_values(s2)
        r = int(lr.rank_for_tol(h2, 0.1))
        if r >= 6 or int(lr.rank_for_tol(h1, 0.1)) != r:
            continue
        cert = lr.hsv_perturbation_bound(s1, s2, rank=r)
        assert kept_set_settled([h1, h2], [float(cert.bound)], 0.1, 1).certified == bool(cert.certified)
        checked += 1
    assert checked >= 10


def test_bad_options_are_refused_with_the_rule():
    with pytest.raises(ValueError, match="patience"):
        kept_set_settled([HSV, HSV], [0.0], 0.2, 0)
    with pytest.raises(ValueError, match="one bound per interval"):
        kept_set_settled([HSV, HSV], [], 0.2, 1)
    with pytest.raises(ValueError, match="rank_slack"):
        kept_set_settled([HSV, HSV], [0.0], 0.2, 1, rank_slack=-1)
    with pytest.raises(ValueError, match="energy_slack"):
        kept_set_settled([HSV, HSV], [0.0], 0.2, 1, energy_slack=-0.1)
    with pytest.raises(ValueError, match="no compressible layer"):
        HSVTimedSchedule(nn.Linear(2, 2), 100)
    with pytest.raises(ValueError, match="every"):
        HSVTimedSchedule(LRU(2, 4), 100, every=0)
    with pytest.raises(ValueError, match="budget"):
        HSVTimedSchedule(LRU(2, 4), 100, budget=2.0)
    with pytest.raises(ValueError, match="rule"):
        HSVTimedSchedule(LRU(2, 4), 100, rule="weyl")
    with pytest.raises(ValueError, match="energy_slack"):
        HSVTimedSchedule(LRU(2, 4), 100, energy_slack=-1.0)


# ----------------------------------------------------------------------------------------- the schedule
def _lru_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(LRU(3, 12, r_min=0.3, r_max=0.95), nn.GELU(), LRU(3, 12, r_min=0.3, r_max=0.95))


def test_an_untrained_model_settles_at_the_first_look_after_patience_and_is_cut_once():
    model = _lru_net()
    sched = HSVTimedSchedule(model, 100, tol=0.1, every=5, budget=None, patience=2, rewarm_steps=0)
    decisions = [sched.should_cut(step) for step in range(0, 11)]
    assert decisions == [False] * 10 + [True]  # looks at 0, 5, 10: two unchanged intervals at step 10
    assert [t["step"] for t in sched.trace] == [0, 5, 10]
    for b, h in zip(sched.trace[-1]["bound"], sched.trace[-1]["hsv"]):  # G - G: sqrt(eps)-level rounding
        assert float(np.max(b)) <= 1e-6 * float(h[0])
    assert sched.should_cut(10) and len(sched.trace) == 3  # asked again: same answer, no new look
    report = sched.step(10, model, None)
    assert report is not None and report.state_after < report.state_before and sched.reason == "certified"
    assert not any(sched.should_cut(s) for s in range(11, 40))


def test_the_budget_spaces_the_looks_so_watching_stays_within_its_share(monkeypatch):
    import adapters.torch.monitor as monitor

    clock = {"t": 0.0}
    monkeypatch.setattr(monitor.time, "perf_counter", lambda: clock["t"])
    values = monitor._diagonal_hsv_values

    def slow_look(sys):  # every look costs 1/8 s of the fake clock (binary fractions: exact sums)
        clock["t"] += 0.125
        return values(sys)

    monkeypatch.setattr(monitor, "_diagonal_hsv_values", slow_look)
    def run(budget, deadline):
        sched = HSVTimedSchedule(_lru_net(), 1000, tol=0.1, every=1, budget=budget, patience=2, deadline=deadline,
                                 min_step=999, rewarm_steps=0)
        for step in range(200):
            clock["t"] += 1.0  # a training step of 1 s
            sched.should_cut(step)
        return sched

    sched = run(1 / 32, 1000)  # looks until the run's end: the budget is a share of the time trained so far
    looks = [t["step"] for t in sched.trace]
    assert looks[:3] == [0, 8, 12]  # 2/8 <= 8 steps / 32, 3/8 <= 12 steps / 32
    assert sched.watch_time_s == 0.125 * len(looks)
    assert sched.watch_time_s <= sched.train_time_s / 32
    assert looks == [0] + list(range(8, 200, 4))  # then every 4 steps: 1/8 s of looking per 4 s of training
    # looks stop at a deadline at half the run: the run's 1/64 is spent before it, as 1/32 of those steps
    assert [t["step"] for t in run(1 / 64, 500).trace] == looks


def test_a_model_that_keeps_moving_is_cut_at_the_deadline():
    model = _lru_net()
    sched = HSVTimedSchedule(model, 100, tol=0.1, every=2, budget=None, patience=2, deadline=9, rewarm_steps=0)
    cut = None
    for step in range(0, 20):
        with torch.no_grad():  # a large random step between looks: the bound dwarfs every gap
            for layer in (model[0], model[2]):
                layer.B_re.add_(torch.randn_like(layer.B_re))
        if sched.should_cut(step):
            cut = step
            sched.step(step, model, None)
            break
    assert cut == 9 and sched.reason == "deadline"


def test_state_dict_round_trip_keeps_the_decision():
    model = _lru_net()
    sched = HSVTimedSchedule(model, 100, tol=0.1, every=5, budget=None, patience=2, rule="observed",
                             rewarm_steps=0)
    for s in range(11):
        if sched.should_cut(s):
            sched.step(s, model, None)
    fresh = HSVTimedSchedule(_lru_net(), 100, tol=0.3, every=7, patience=4)
    fresh.load_state_dict(sched.state_dict())
    assert (fresh.cut_step, fresh.reason, fresh.rule, fresh.every, fresh.budget, fresh.history) == \
        (10, "observed", "observed", 5, None, sched.history)
    assert fresh.steps == [10] and not fresh.should_cut(20)


def test_the_trajectory_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    model = _lru_net()
    sched = HSVTimedSchedule(model, 100, tol=0.1, every=1, budget=None, patience=2, rewarm_steps=0)
    for s in range(3):
        sched.should_cut(s)
    path = save_hsv_trajectory_plot(sched.trace, tmp_path / "hsv.png", cut_step=2, fixed_step=1)
    assert path and (tmp_path / "hsv.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------ callbacks
def _regression_data(n=8, length=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, length, 3, generator=g)
    return u, u.roll(1, dims=1)


def test_the_lightning_callback_cuts_where_the_monitor_decides(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from adapters.torch.lightning import CompressionCallback

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _lru_net()

        def training_step(self, batch, batch_idx):
            u, y = batch
            return (self.net(u) - y).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    module = Net()
    sched = HSVTimedSchedule(module.net, 12, tol=0.1, every=2, patience=2, deadline=8, budget=None,
                           rule="observed")
    callback = CompressionCallback(sched)
    u, y = _regression_data()
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, max_steps=12,
                         default_root_dir=str(tmp_path), callbacks=[callback])
    trainer.fit(module, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(u, y), batch_size=4))
    assert sched.cut_step is not None and sched.cut_step <= 8
    assert [c["step"] for c in callback.cuts] == [sched.cut_step]
    assert [t["step"] for t in sched.trace] == list(range(2, sched.cut_step + 1, 2))
    assert sum(m.state_dim for m in module.net if isinstance(m, LRU)) < 24


def test_the_hf_callback_cuts_where_the_monitor_decides(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainingArguments

    from adapters.torch.hf import CompressionCallback

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _lru_net()

        def forward(self, inputs, labels=None):
            out = self.net(inputs)
            return {"loss": (out - labels).pow(2).mean(), "outputs": out}

    model = Wrapped()
    sched = HSVTimedSchedule(model.net, 10, tol=0.1, every=2, patience=2, deadline=6, budget=None,
                           rule="observed")
    u, y = _regression_data()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, learning_rate=1e-2,
                             max_steps=10, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                             logging_steps=1000)
    callback = CompressionCallback(sched)
    Trainer(model=model, args=args, train_dataset=[{"inputs": u[i], "labels": y[i]} for i in range(8)],
            callbacks=[callback]).train()
    assert sched.cut_step is not None and sched.cut_step <= 6
    assert [c["step"] for c in callback.cuts] == [sched.cut_step]
    assert sum(m.state_dim for m in model.net if isinstance(m, LRU)) < 24


def test_layers_of_one_state_size_but_different_widths_are_watched_in_separate_batches():
    # grouped by every shape (as the cut groups them), not by the state size alone: stacking an
    # LRU(3, 8) with an LRU(5, 8) failed inside torch.stack
    torch.manual_seed(0)
    model = torch.nn.Sequential(LRU(3, 8), torch.nn.Linear(3, 5), LRU(5, 8))
    schedule = HSVTimedSchedule(model, 100, every=1, budget=None)
    assert schedule.observe(1) == (False, False)
    hsv = schedule.trace[-1]["hsv"]
    for (_, layer), h in zip(compressible_layers(model), hsv):
        np.testing.assert_allclose(h, lr.hankel_singular_values(layer.to_system()).numpy(), rtol=1e-6, atol=1e-9)
