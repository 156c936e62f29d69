"""The delay task (``--task delay``): deterministic data, targets that are the lagged inputs, its score, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from adapters.torch.experiment import ConfigError  # noqa: E402
from adapters.torch.experiment.cli import main  # noqa: E402
from adapters.torch.experiment.delay import (  # noqa: E402
    DelayConfig,
    DelaySweepConfig,
    build_regressor,
    delay_scores,
    delay_targets,
    make_delay_data,
)

TASK = DelayConfig(seq_len=20, lags=(3, 7, 10), n_train=12, n_test=6, data_seed=5)


def test_the_same_seed_gives_identical_data_and_another_seed_other_data():
    a, b = make_delay_data(TASK), make_delay_data(TASK)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    c = make_delay_data(DelayConfig(seq_len=20, lags=(3, 7, 10), n_train=12, n_test=6, data_seed=6))
    assert not torch.equal(a.x_train, c.x_train)


def test_inputs_are_iid_standard_normal_draws_of_numpy_pcg64():
    data = make_delay_data(TASK)
    draws = np.random.default_rng(5).standard_normal((18, 20, 1)).astype(np.float32)
    np.testing.assert_array_equal(torch.cat([data.x_train, data.x_test]).numpy(), draws)
    assert data.x_train.shape == (12, 20, 1) and data.y_train.shape == (12, 20, 3)
    assert data.y_train.dtype == torch.float32


def test_targets_are_the_input_at_each_lag_and_zero_before_it():
    data = make_delay_data(TASK)
    u, y = data.x_train[..., 0].numpy(), data.y_train.numpy()
    for k, lag in enumerate(TASK.lags):
        for t in range(TASK.seq_len):
            expected = u[:, t - lag] if t >= lag else np.zeros(len(u))
            np.testing.assert_array_equal(y[:, t, k], expected)


def test_targets_are_the_output_of_a_pure_delay_run_as_a_recurrence():
    # independent reference: a shift register x_{t+1} = S x_t + e_1 u_t, y_t = x_t[lag] (state 0 = input now)
    u = torch.randn(4, 15, 1, dtype=torch.float64)
    lags = (1, 4, 7)
    out = torch.zeros(4, 15, len(lags), dtype=torch.float64)
    reg = torch.zeros(4, 8, dtype=torch.float64)
    for t in range(15):
        reg = torch.cat([u[:, t], reg[:, :-1]], dim=1)
        out[:, t] = reg[:, list(lags)]
    torch.testing.assert_close(delay_targets(u, lags), out, rtol=0, atol=0)


def test_r2_is_one_for_the_targets_zero_for_their_mean_and_matches_its_formula():
    data = make_delay_data(TASK)
    y = data.y_test
    assert delay_scores(y, y, TASK.lags)["r2"] == pytest.approx(1.0)
    assert delay_scores(y, y, TASK.lags)["mse"] == 0.0
    mean_pred = y.clone()
    for k, lag in enumerate(TASK.lags):
        mean_pred[:, lag:, k] = y[:, lag:, k].mean()
    assert delay_scores(mean_pred, y, TASK.lags)["r2_per_lag"] == pytest.approx([0.0] * 3, abs=1e-12)
    pred = y + 0.3 * torch.randn_like(y)
    scores = delay_scores(pred, y, TASK.lags)
    for k, lag in enumerate(TASK.lags):
        t, p = y[:, lag:, k].double().numpy().ravel(), pred[:, lag:, k].double().numpy().ravel()
        assert scores["r2_per_lag"][k] == pytest.approx(1 - ((p - t) ** 2).sum() / ((t - t.mean()) ** 2).sum())
    assert scores["mse"] == pytest.approx(float(((pred - y) ** 2).double().mean()))


@pytest.mark.parametrize("model", ["lru", "s5", "s4d"])
def test_every_lti_layer_gives_a_prediction_per_step_and_lag(model):
    sweep = DelaySweepConfig.quick()
    data = make_delay_data(TASK)
    from dataclasses import replace

    net = build_regressor(replace(sweep.base, model=model), data)
    assert net(data.x_test).shape == data.y_test.shape


@pytest.mark.parametrize("task, needle", [(DelayConfig(seq_len=10, lags=(10,)), "lags"),
                                          (DelayConfig(lags=()), "lags"),
                                          (DelayConfig(n_train=1), "n_train")])
def test_bad_task_settings_are_refused_with_the_rule(task, needle):
    with pytest.raises(ConfigError, match=needle):
        make_delay_data(task)


@pytest.fixture(scope="module")
def quick_delay_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("delay") / "run"
    return out, main(["train", "--task", "delay", "--quick", "--no-progress", "--out", str(out)])


def test_train_task_delay_runs_three_models_and_writes_scores(quick_delay_run, capsys):
    out, code = quick_delay_run
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["runs"]) == ["compressed-tol0.1-seed0", "full-seed0", "scratch-tol0.1-seed0",
                                       "timed-either-tol0.1-seed0"]
    timed = results["runs"]["timed-either-tol0.1-seed0"]
    assert timed["cut_reason"] in ("certified", "observed", "deadline") and 3 <= timed["cut_step"] <= 15  # warm-up .. deadline
    assert [c["step"] for c in timed["cuts"]] == [timed["cut_step"]]
    assert [w["step"] for w in timed["watch"]] == list(range(0, timed["cut_step"] + 1, 5))
    assert (out / "hsv_trajectories-timed-either-tol0.1-seed0.png").is_file()
    comp, scratch = results["runs"]["compressed-tol0.1-seed0"], results["runs"]["scratch-tol0.1-seed0"]
    assert scratch["state_dims"] == comp["state_dims"]
    assert comp["total_state"] < results["runs"]["full-seed0"]["total_state"]
    for r in results["runs"].values():
        assert np.isfinite(r["r2"]) and r["mse"] > 0 and len(r["r2_per_lag"]) == 3


def test_delay_refuses_the_classification_dataset_options(tmp_path, capsys):
    assert main(["train", "--task", "delay", "--quick", "--dataset", "smnist", "--out", str(tmp_path / "x")]) == 1
    assert "--task delay generates its own data" in capsys.readouterr().err
