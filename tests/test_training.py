"""The training experiment: the LRU classifier learns, run_comparison cuts the states, runs are reproducible."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from adapters.torch.data import DatasetError, from_tensors, load_dataset, mnist1d  # noqa: E402
from adapters.torch.training import (  # noqa: E402
    ConfigError,
    ExperimentConfig,
    LRUClassifier,
    build_model,
    cut_steps,
    default_chunk_size,
    format_table,
    interleaved_step_times,
    resolve_device,
    run_comparison,
    train_run,
)


def toy_data(n_train=256, n_test=128, length=16, seed=0):
    """Three classes: is the sequence's mean low, middle or high? Learnable in a few dozen steps."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, length, 1, generator=gen)
    x = x + torch.randint(-1, 2, (n_train + n_test, 1, 1), generator=gen).float()
    mean = x.mean(dim=(1, 2))
    y = (mean > -0.5).long() + (mean > 0.5).long()
    return from_tensors(x[:n_train], y[:n_train], x[n_train:], y[n_train:], name="toy")


def tiny_config(tmp_path, **overrides):
    base = dict(d_model=16, d_state=24, n_layers=2, steps=60, batch_size=32, lr=1e-2, ssm_lr=5e-3, dropout=0.0,
                tol=0.1, cuts=(4, 8), progress=False, threads=1, out=str(tmp_path / "run"), warmup_frac=0.1)
    base.update(overrides)
    return ExperimentConfig(**base)


def test_the_classifier_maps_sequences_to_logits():
    model = LRUClassifier(3, 7, d_model=8, d_state=[5, 4], dropout=0.1)
    assert model(torch.randn(2, 11, 3)).shape == (2, 7)
    assert model.state_dims == [5, 4]


def test_the_model_trains_and_its_loss_falls(tmp_path):
    data = toy_data()
    config = tiny_config(tmp_path, cuts=None)
    torch.manual_seed(0)
    model = build_model(config, data)
    record = train_run(model, data, config, steps=60, cuts=[])
    loss = np.asarray(record["loss"])
    assert loss[-10:].mean() < 0.6 * loss[:10].mean()
    assert record["cuts"] == [] and record["train_time_s"] > 0


def test_run_comparison_compresses_the_states_and_builds_scratch_at_the_reached_size(tmp_path):
    results = run_comparison(tiny_config(tmp_path), data=toy_data())
    runs = results["runs"]
    compressed = runs["compressed"]
    assert [c["step"] for c in compressed["cuts"]] == [4, 8]
    assert compressed["cuts"][0]["state_before"] == 2 * 24
    assert all(d < 24 for d in compressed["state_dims"])
    assert compressed["total_state"] < runs["baseline"]["total_state"] == 48
    for cut in compressed["cuts"]:
        for layer in cut["layers"]:
            assert layer["after"] <= layer["before"]
            assert len(layer["hsv"]) == 2 * layer["before"]  # real-output order of the layer's map
            assert layer["error_bound"] >= 0
    assert runs["scratch"]["state_dims"] == compressed["state_dims"]
    # Phases cover every step, and their sizes follow the cuts.
    phases = compressed["phases"]
    assert phases[0]["start_step"] == 0 and phases[-1]["end_step"] == 60
    assert [p["state_dims"] for p in phases][-1] == compressed["state_dims"]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["runs"]["compressed"]["state_dims"] == compressed["state_dims"]
    table = format_table(results)
    assert "(2) compressed in training" in table and "compress_ calls: 2" in table
    # the final models' step times, timed in turn: one per run, the baseline's ratio exactly 1
    ms, ratio = saved["step_time_interleaved_ms"], saved["step_speedup_interleaved"]
    assert set(ms) == set(ratio) == {"baseline", "compressed", "scratch"}
    assert all(v > 0 for v in ms.values()) and ratio["baseline"] == 1.0
    assert ratio["compressed"] == pytest.approx(ms["baseline"] / ms["compressed"])
    assert "timed in turn" in table


def test_interleaved_step_times_leave_the_trained_models_untouched(tmp_path):
    data, config = toy_data(), tiny_config(tmp_path)
    models = {"baseline": build_model(config, data), "scratch": build_model(config, data, d_state=[5, 6])}
    before = {name: [p.detach().clone() for p in m.parameters()] for name, m in models.items()}
    models["baseline"].eval()
    ms = interleaved_step_times(models, data, config, rounds=2, steps_per_round=3)
    assert set(ms) == {"baseline", "scratch"} and all(v > 0 for v in ms.values())
    for name, m in models.items():
        assert all(torch.equal(p, q) for p, q in zip(m.parameters(), before[name]))
        assert all(p.grad is None for p in m.parameters())
    assert not models["baseline"].training and models["scratch"].training  # modes are the models' own


def test_runs_are_reproducible_up_to_timing(tmp_path):
    config = tiny_config(tmp_path, steps=20, cuts=(5,), runs=("compressed",))
    first = run_comparison(config, data=toy_data())["runs"]["compressed"]
    second = run_comparison(config, data=toy_data())["runs"]["compressed"]
    assert first["loss"] == second["loss"]
    assert first["state_dims"] == second["state_dims"]
    assert first["test_accuracy"] == second["test_accuracy"]


def test_run_comparison_leaves_the_thread_count_as_it_was(tmp_path):
    before = torch.get_num_threads()
    run_comparison(tiny_config(tmp_path, steps=4, cuts=(2,), runs=("compressed",), threads=1), data=toy_data())
    assert torch.get_num_threads() == before


def test_default_schedule_cuts_evenly_within_the_first_tenth():
    config = ExperimentConfig(n_cuts=4)
    assert cut_steps(config, 2000) == [50, 100, 150, 200]
    assert all(0 < c <= 0.1 * 1000 for c in cut_steps(config, 1000))
    assert cut_steps(ExperimentConfig(), 2000) == [200]  # the default: one cut at 10% of the steps


def test_explicit_cuts_outside_the_run_are_rejected():
    with pytest.raises(ConfigError, match="1..99"):
        cut_steps(ExperimentConfig(cuts=(10, 100)), 100)


def test_bad_options_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="tol"):
        run_comparison(tiny_config(tmp_path, tol=1.5), data=toy_data())
    with pytest.raises(ConfigError, match="compressed"):
        run_comparison(tiny_config(tmp_path, runs=("baseline", "scratch")), data=toy_data())


def test_unavailable_cuda_device_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    with pytest.raises(ConfigError, match="--device cpu"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_chunk_size_divides_the_sequence_length():
    assert default_chunk_size(40) in (8, 10)
    assert 784 % default_chunk_size(784) == 0


# --------------------------------------------------------------------------------------------------- data
def test_from_tensors_adds_the_channel_axis_and_checks_shapes():
    data = from_tensors(np.zeros((4, 9)), [0, 1, 2, 1], np.zeros((2, 9)), [0, 2])
    assert data.x_train.shape == (4, 9, 1) and data.x_train.dtype == torch.float32
    assert data.y_train.dtype == torch.int64 and data.n_classes == 3
    with pytest.raises(DatasetError, match="y_train"):
        from_tensors(np.zeros((4, 9)), [0, 1], np.zeros((2, 9)), [0, 1])
    with pytest.raises(DatasetError, match="same"):
        from_tensors(np.zeros((4, 9)), [0, 1, 0, 1], np.zeros((2, 8)), [0, 1])


def test_mnist1d_is_generated_locally_and_cached(tmp_path):
    first = mnist1d(tmp_path)
    assert first.x_train.shape == (4000, 40, 1) and first.x_test.shape == (1000, 40, 1)
    assert first.n_classes == 10
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 1
    second = mnist1d(tmp_path)  # from the cache
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_test, second.y_test)


def test_file_datasets_need_an_existing_directory(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("smnist", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="--data-dir"):
        load_dataset("scifar", None)
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("imagenet")


def test_file_datasets_explain_a_missing_torchvision(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise ImportError("No module named 'torchvision'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    with pytest.raises(DatasetError, match="pip install torchvision"):
        load_dataset("smnist", tmp_path)


def test_a_larger_mnist1d_test_split_comes_from_one_generator_call(tmp_path):
    published = mnist1d(tmp_path)
    same = mnist1d(tmp_path, test_examples=1000)  # num_samples 5000, train_split 0.8: the published arguments
    assert torch.equal(same.x_train, published.x_train) and torch.equal(same.y_test, published.y_test)
    larger = mnist1d(tmp_path, test_examples=2000)
    assert larger.x_train.shape == (4000, 40, 1) and larger.x_test.shape == (2000, 40, 1)
    assert larger.name == "mnist1d-4000/2000" and published.name == "mnist1d"
    assert sorted(torch.bincount(torch.cat([larger.y_train, larger.y_test])).tolist()) == [600] * 10


def test_equalizing_mode_scales_keeps_the_layer_map_and_its_parameters():
    from adapters.torch import LRU
    from adapters.torch.experiment.loop import equalize_mode_scales_

    torch.manual_seed(1)
    layer = LRU(3, 5, dtype=torch.float64)
    with torch.no_grad():
        layer.B_re.mul_(torch.logspace(-2, 2, 5, dtype=torch.float64)[:, None])

    def response(system):  # G(z) = Re-output map via the complex realization diag(lam, conj lam)
        lam, B, C = (np.asarray(t) for t in (system.lam, system.B, system.C))
        z = np.exp(1j * np.linspace(0, np.pi, 33))[:, None]
        G1 = np.einsum("pn,fn,nm->fpm", C, 1 / (z - lam), B)
        G2 = np.einsum("pn,fn,nm->fpm", C.conj(), 1 / (z - lam.conj()), B.conj())
        return 0.5 * (G1 + G2)

    before = response(layer.to_system())
    params = [id(p) for p in layer.parameters()]
    assert equalize_mode_scales_(torch.nn.Sequential(layer)) == 1
    assert np.abs(response(layer.to_system()) - before).max() <= 1e-12 * np.abs(before).max()
    assert [id(p) for p in layer.parameters()] == params
    rows = torch.complex(layer.B_re, layer.B_im).abs().square().sum(-1).sqrt()
    cols = torch.complex(layer.C_re, layer.C_im).abs().square().sum(0).sqrt()
    assert torch.allclose(rows, cols, rtol=1e-12)
