"""Cuts timed by the model (adapters.torch.monitor): the decision rule on constructed HSV trajectories,
its agreement with the core's Weyl certificate, the schedule in a loop and in the Lightning and HF callbacks."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lti_reduce as lr  # noqa: E402
from torch import nn  # noqa: E402

from adapters.torch import LRU  # noqa: E402
from adapters.torch.monitor import HSVTimedSchedule, kept_set_settled, save_hsv_trajectory_plot  # noqa: E402

# tol 0.2 keeps r = 2 of these (8.6 of 10 >= 8): a gap of 2.6 between sigma_2 and sigma_3
HSV = np.array([5.0, 3.6, 1.0, 0.4, 0.0])


def test_a_still_trajectory_with_small_bounds_is_settled_after_patience_intervals():
    hsvs, bounds = [HSV] * 4, [0.1] * 3
    assert int(lr.rank_for_tol(HSV, 0.2)) == 2
    assert kept_set_settled(hsvs, bounds, 0.2, 3)
    assert not kept_set_settled(hsvs[:3], bounds[:2], 0.2, 3)  # too few looks yet


def test_a_bound_of_half_the_gap_or_more_is_not_a_certificate():
    gap = HSV[1] - HSV[2]
    assert kept_set_settled([HSV] * 4, [0.1, 0.1, 0.49 * gap], 0.2, 3)
    assert not kept_set_settled([HSV] * 4, [0.1, 0.1, 0.5 * gap], 0.2, 3)
    assert not kept_set_settled([HSV] * 4, [0.5 * gap, 0.1, 0.1], 0.2, 3)  # inside the window counts too
    assert kept_set_settled([HSV] * 5, [0.5 * gap, 0.1, 0.1, 0.1], 0.2, 3)  # before the window does not


def test_hsvs_crossing_the_cut_are_not_settled():
    # sigma_3 rises through sigma_2: the kept count moves from 2 to 3 and the gap closes
    rising = [np.array([5.0, 3.6, s, 0.4, 0.0]) for s in (1.0, 2.0, 3.0, 4.0, 5.0)]
    ranks = [int(lr.rank_for_tol(np.sort(h)[::-1], 0.2)) for h in rising]
    assert ranks[0] != ranks[-1]
    hsvs = [np.sort(h)[::-1] for h in rising]
    steps = [float(np.abs(a - b).max()) for a, b in zip(hsvs[1:], hsvs)]
    for j in range(3, 5):
        assert not kept_set_settled(hsvs[:j + 1], steps[:j], 0.2, 3)
        assert not kept_set_settled(hsvs[:j + 1], steps[:j], 0.2, 3, certificate="observed")


def test_a_moving_kept_count_is_not_settled_even_with_zero_bounds():
    other = np.array([5.0, 2.0, 2.0, 1.0, 0.0])  # tol 0.2 keeps 3 of these
    assert int(lr.rank_for_tol(other, 0.2)) == 3
    assert not kept_set_settled([HSV, HSV, other, HSV], [0.0] * 3, 0.2, 3)


def test_observed_movement_settles_where_the_weyl_bound_is_too_loose():
    moved = HSV + np.array([0.01, 0.0, 0.0, 0.0, 0.0])
    hsvs = [HSV, moved, HSV, moved]
    bounds = [1.5] * 3  # the Hankel norm of the difference can exceed the HSVs' own movement
    assert not kept_set_settled(hsvs, bounds, 0.2, 3)
    assert kept_set_settled(hsvs, bounds, 0.2, 3, certificate="observed")


def test_channels_are_decided_separately():
    a, b = HSV, np.array([5.0, 4.9, 0.05, 0.0, 0.0])
    hsvs = [np.stack([a, b])] * 3
    bounds = [np.array([0.1, 3.0])] * 2
    np.testing.assert_array_equal(kept_set_settled(hsvs, bounds, 0.2, 2), [True, False])


def test_with_patience_one_the_rule_is_the_cores_weyl_certificate():
    rng = np.random.default_rng(3)
    for _ in range(20):
        lam = rng.uniform(0.1, 0.9, 6)
        B, C = rng.standard_normal((6, 1)), rng.standard_normal((1, 6))
        s1 = lr.DiagonalSystem(lam, B, C)
        s2 = lr.DiagonalSystem(lam * (1 + 0.05 * rng.standard_normal(6)).clip(0.5, 1.05).clip(max=0.95),
                               B + 0.05 * rng.standard_normal((6, 1)), C)
        h1, h2 = lr.hankel_singular_values(s1), lr.hankel_singular_values(s2)
        r = int(lr.rank_for_tol(h2, 0.1))
        if r >= 6 or int(lr.rank_for_tol(h1, 0.1)) != r:
            continue
        cert = lr.hsv_perturbation_bound(s1, s2, rank=r)
        assert bool(kept_set_settled([h1, h2], [float(cert.bound)], 0.1, 1)) == bool(cert.certified)


def test_bad_options_are_refused_with_the_rule():
    with pytest.raises(ValueError, match="patience"):
        kept_set_settled([HSV, HSV], [0.0], 0.2, 0)
    with pytest.raises(ValueError, match="one bound per interval"):
        kept_set_settled([HSV, HSV], [], 0.2, 1)
    with pytest.raises(ValueError, match="certificate"):
        kept_set_settled([HSV, HSV], [0.0], 0.2, 1, certificate="guess")
    with pytest.raises(ValueError, match="no compressible layer"):
        HSVTimedSchedule(nn.Linear(2, 2), 100)
    with pytest.raises(ValueError, match="every"):
        HSVTimedSchedule(LRU(2, 4), 100, every=0)


# ----------------------------------------------------------------------------------------- the schedule
def _lru_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(LRU(3, 12, r_min=0.3, r_max=0.95), nn.GELU(), LRU(3, 12, r_min=0.3, r_max=0.95))


def test_an_untrained_model_settles_at_the_first_look_after_patience_and_is_cut_once():
    model = _lru_net()
    sched = HSVTimedSchedule(model, 100, tol=0.1, every=5, patience=2, rewarm_steps=0)
    decisions = [sched.should_cut(step) for step in range(0, 11)]
    assert decisions == [False] * 10 + [True]  # looks at 0, 5, 10: two unchanged intervals at step 10
    assert [t["step"] for t in sched.trace] == [0, 5, 10]
    for b, h in zip(sched.trace[-1]["bound"], sched.trace[-1]["hsv"]):  # G - G: sqrt(eps)-level rounding
        assert float(np.max(b)) <= 1e-6 * float(h[0])
    assert sched.should_cut(10) and len(sched.trace) == 3  # asked again: same answer, no new look
    report = sched.step(10, model, None)
    assert report is not None and report.state_after < report.state_before and sched.reason == "settled"
    assert not any(sched.should_cut(s) for s in range(11, 40))


def test_a_model_that_keeps_moving_is_cut_at_the_deadline():
    model = _lru_net()
    sched = HSVTimedSchedule(model, 100, tol=0.1, every=2, patience=2, deadline=9, rewarm_steps=0)
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
    sched = HSVTimedSchedule(model, 100, tol=0.1, every=5, patience=2, certificate="observed", rewarm_steps=0)
    for s in range(11):
        if sched.should_cut(s):
            sched.step(s, model, None)
    fresh = HSVTimedSchedule(_lru_net(), 100, tol=0.3, every=7, patience=4)
    fresh.load_state_dict(sched.state_dict())
    assert (fresh.cut_step, fresh.reason, fresh.certificate, fresh.every, fresh.history) == \
        (10, "settled", "observed", 5, sched.history)
    assert fresh.steps == [10] and not fresh.should_cut(20)


def test_the_trajectory_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    model = _lru_net()
    sched = HSVTimedSchedule(model, 100, tol=0.1, every=1, patience=2, rewarm_steps=0)
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
    sched = HSVTimedSchedule(module.net, 12, tol=0.1, every=2, patience=2, deadline=8, certificate="observed")
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
    sched = HSVTimedSchedule(model.net, 10, tol=0.1, every=2, patience=2, deadline=6, certificate="observed")
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
