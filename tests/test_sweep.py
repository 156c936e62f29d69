"""lti-reduce sweep: the runs it makes, its statistics (against scipy.stats), its JSON, resuming from --out."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
scipy_stats = pytest.importorskip("scipy.stats")

from adapters.torch.data import from_tensors  # noqa: E402
from adapters.torch.experiment import ConfigError, ExperimentConfig, SweepConfig, run_sweep  # noqa: E402
from adapters.torch.experiment import sweep as sweep_module  # noqa: E402
from adapters.torch.experiment.models import layer_class  # noqa: E402
from adapters.torch.experiment.stats import (  # noqa: E402
    compare_on_one_test_set,
    mcnemar_test,
    paired_t_interval,
    wilson_interval,
)

TOLS, SEEDS = (0.1, 0.3), (0, 1, 2)


def toy_data(n_train=192, n_test=96, length=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, length, 1, generator=gen)
    x = x + torch.randint(-1, 2, (n_train + n_test, 1, 1), generator=gen).float()
    mean = x.mean(dim=(1, 2))
    y = (mean > -0.5).long() + (mean > 0.5).long()
    return from_tensors(x[:n_train], y[:n_train], x[n_train:], y[n_train:], name="toy")


def tiny_sweep(out, **overrides):
    base = ExperimentConfig(d_model=8, d_state=12, n_layers=2, steps=24, batch_size=32, lr=1e-2, n_cuts=2,
                            cut_window=0.25, progress=False, threads=1, out=str(out), rewarm_steps=2,
                            mnist1d_test=None)
    settings = dict(base=base, tols=TOLS, seeds=SEEDS, timing_rounds=1, timing_steps=2)
    settings.update(overrides)
    return SweepConfig(**settings)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "run"
    lines = []
    results = run_sweep(tiny_sweep(out), data=toy_data(), log=lines.append)
    return out, results, lines


def test_every_run_is_made_once_and_scratch_takes_the_compressed_size(swept):
    out, results, lines = swept
    runs = results["runs"]
    assert len(runs) == len(SEEDS) * (1 + 2 * len(TOLS)) == len(lines)
    for seed in SEEDS:
        full = runs[f"full-seed{seed}"]
        assert full["total_state"] == 24 and full["cuts"] == []
        for tol in TOLS:
            comp, scratch = runs[f"compressed-tol{tol:g}-seed{seed}"], runs[f"scratch-tol{tol:g}-seed{seed}"]
            assert comp["tol"] == tol and comp["seed"] == seed and len(comp["cuts"]) == 2
            assert scratch["state_dims"] == comp["state_dims"] and scratch["cuts"] == []
            assert comp["total_state"] < 24
            assert (out / "runs" / f"compressed-tol{tol:g}-seed{seed}.pt").is_file()


def test_results_json_has_the_summary_and_paired_schema(swept):
    out, results, _ = swept
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"] == results["summary"] and saved["paired"] == results["paired"]
    keys = {"method", "tol", "state_mean", "acc_mean", "acc_std", "n_seeds"}
    assert all(keys <= set(row) for row in saved["summary"])
    assert [(r["method"], r["tol"]) for r in saved["summary"]] == [("full", None)] + [
        (m, t) for t in TOLS for m in ("compressed", "scratch")]
    assert all(r["n_seeds"] == len(SEEDS) for r in saved["summary"])
    assert [p["tol"] for p in saved["paired"]] == list(TOLS)
    for p in saved["paired"]:
        assert {"tol", "diff_mean", "diff_ci95"} <= set(p) and len(p["diff_ci95"]) == 2
    assert (out / "accuracy_vs_state.png").read_bytes()[:4] == b"\x89PNG"
    assert set(saved["timing"]) == {str(s) for s in SEEDS}


def test_summary_statistics_match_numpy_and_scipy(swept):
    _, results, _ = swept
    runs = results["runs"]
    for row in results["summary"]:
        keys = [f"full-seed{s}" if row["tol"] is None else f"{row['method']}-tol{row['tol']:g}-seed{s}" for s in SEEDS]
        acc = np.array([runs[k]["test_accuracy"] for k in keys])
        assert row["acc_mean"] == pytest.approx(acc.mean(), abs=1e-15)
        assert row["acc_std"] == pytest.approx(acc.std(ddof=1), abs=1e-15)
        assert row["state_mean"] == pytest.approx(np.mean([runs[k]["total_state"] for k in keys]))
    for p in results["paired"]:
        comp = [runs[f"compressed-tol{p['tol']:g}-seed{s}"]["test_accuracy"] for s in SEEDS]
        scratch = [runs[f"scratch-tol{p['tol']:g}-seed{s}"]["test_accuracy"] for s in SEEDS]
        assert p["diff_mean"] == pytest.approx(np.mean(comp) - np.mean(scratch), abs=1e-14)
        if np.ptp(np.subtract(comp, scratch)) > 0:
            ci = scipy_stats.ttest_rel(comp, scratch).confidence_interval(0.95)
            assert p["diff_ci95"] == pytest.approx([ci.low, ci.high], abs=1e-12)


def test_speedups_are_ratios_to_the_full_run_of_the_same_seed(swept):
    _, results, _ = swept
    runs, timing = results["runs"], results["timing"]
    row = next(r for r in results["summary"] if r["method"] == "compressed" and r["tol"] == TOLS[0])
    wall = [runs[f"full-seed{s}"]["train_time_s"] / runs[f"compressed-tol{TOLS[0]:g}-seed{s}"]["train_time_s"]
            for s in SEEDS]
    step = [timing[str(s)][f"full-seed{s}"] / timing[str(s)][f"compressed-tol{TOLS[0]:g}-seed{s}"] for s in SEEDS]
    assert row["wall_speedup_mean"] == pytest.approx(np.mean(wall))
    assert row["step_speedup_mean"] == pytest.approx(np.mean(step))
    full = next(r for r in results["summary"] if r["method"] == "full")
    assert full["wall_speedup_mean"] == pytest.approx(1.0) and full["step_speedup_mean"] == pytest.approx(1.0)


def test_an_interrupted_sweep_resumes_from_the_runs_in_out(swept, tmp_path, monkeypatch):
    import shutil

    out, first, _ = swept
    copy = tmp_path / "resume"
    shutil.copytree(out, copy)
    key = f"compressed-tol{TOLS[1]:g}-seed1"
    (copy / "runs" / f"{key}.json").unlink()
    (copy / "runs" / "timing-seed1.json").unlink()
    calls = []
    real = sweep_module.train_run
    monkeypatch.setattr(sweep_module, "train_run", lambda *a, **k: calls.append(k.get("label")) or real(*a, **k))
    lines = []
    again = run_sweep(tiny_sweep(copy), data=toy_data(), log=lines.append)
    assert calls == [key] and len(lines) == 1
    assert again["runs"][key]["test_accuracy"] == first["runs"][key]["test_accuracy"]  # seeded: the same run
    for k, r in first["runs"].items():
        assert again["runs"][k]["test_accuracy"] == r["test_accuracy"]
    assert set(again["timing"]["1"]) == set(first["timing"]["1"])


def test_a_sweep_of_another_configuration_is_refused_in_the_same_out(swept):
    out, _, _ = swept
    other = tiny_sweep(out)
    other.base.lr = 5e-3
    with pytest.raises(ConfigError, match="another configuration"):
        run_sweep(other, data=toy_data())


def test_sweep_options_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="between 0 and 1"):
        run_sweep(tiny_sweep(tmp_path / "a", tols=(0.1, 1.5)), data=toy_data())
    with pytest.raises(ConfigError, match="repeat"):
        run_sweep(tiny_sweep(tmp_path / "b", seeds=(0, 0)), data=toy_data())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_models_the_library_lacks_are_refused_with_the_available_choices():
    assert layer_class("lru").__name__ == "LRU"
    import adapters.torch as at

    for name, cls in (("s5", "S5"), ("s4d", "S4D")):
        if getattr(at, cls, None) is None:
            with pytest.raises(ConfigError, match=f"no {cls} layer.*lru"):
                layer_class(name)
    with pytest.raises(ConfigError, match="lru"):
        layer_class("selective")
    with pytest.raises(ConfigError, match="unknown model"):
        layer_class("transformer")


def test_sweep_command_prints_the_table_and_writes_results(tmp_path, capsys):
    from adapters.torch.experiment.cli import main

    out = tmp_path / "cli"
    code = main(["sweep", "--quick", "--steps", "24", "--seeds", "0,1", "--tols", "0.2", "--no-progress",
                 "--out", str(out), "--data-dir", str(tmp_path / "cache")])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "compressed - scratch" in stdout and "mean +- std" in stdout and "interleaved" in stdout
    saved = json.loads((out / "results.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["tols"] == [0.2] and saved["steps"] == 24


def test_more_cuts_than_fit_in_the_window_is_a_one_line_error(tmp_path, capsys):
    """--quick asks for 2 cuts in the first 10% of the steps; 12 steps leave room for one."""
    from adapters.torch.experiment.cli import main

    code = main(["sweep", "--quick", "--steps", "12", "--seeds", "0,1", "--tols", "0.2", "--no-progress",
                 "--out", str(tmp_path / "cli"), "--data-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "2 cuts do not fit in the first 1 step(s)" in err and "--schedule K@F" in err


# --------------------------------------------------------------------------------------------------- stats
@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (957, 1000), (9712, 10000), (1, 1)])
def test_wilson_interval_matches_scipy(k, n):
    ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


@pytest.mark.parametrize("b, c", [(0, 0), (7, 17), (17, 7), (40, 41), (0, 9), (120, 80)])
def test_mcnemar_exact_test_matches_scipy_binomtest(b, c):
    expected = 1.0 if b + c == 0 else scipy_stats.binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_test(b, c) == pytest.approx(expected, rel=1e-12)


def test_paired_t_interval_matches_scipy_ttest_rel():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.9, 0.02, 5), rng.normal(0.9, 0.02, 5)
    mean, ci = paired_t_interval(a - b)
    ref = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    assert mean == pytest.approx(np.mean(a - b)) and ci == pytest.approx([ref.low, ref.high], abs=1e-14)
    assert paired_t_interval([0.01]) == (0.01, None)


def test_one_test_set_comparison_counts_the_discordant_examples():
    a = np.array([1, 1, 1, 0, 0, 1, 1, 0, 1, 1], bool)
    b = np.array([1, 0, 0, 0, 1, 1, 1, 0, 0, 1], bool)
    c = compare_on_one_test_set(a, b)
    assert (c["only_a"], c["only_b"]) == (3, 1) and c["diff"] == pytest.approx(0.2)
    assert c["p_value"] == pytest.approx(scipy_stats.binomtest(1, 4, 0.5).pvalue)
    assert c["diff_ci95"][0] < c["diff"] < c["diff_ci95"][1] and not c["significant"]
    with pytest.raises(ValueError, match="equal-length"):
        compare_on_one_test_set(a, b[:5])


@pytest.mark.parametrize("kind", ["lru", "s4d", "s5"])
def test_each_layers_recurrence_gets_the_ssm_learning_rate_and_no_weight_decay(kind):
    # The LRU, S4D and S5 papers train the eigenvalues and steps at a smaller learning rate without weight
    # decay; every other parameter of the layer stays in the groups a cut re-warms.
    from adapters.torch.experiment.loop import param_groups
    from adapters.torch.experiment.models import SSMClassifier

    recurrence = {"lru": {"nu_log", "theta", "gamma_log"}, "s4d": {"log_A_real", "A_imag", "log_dt"},
                  "s5": {"Lambda_re_log", "Lambda_im", "log_dt"}}[kind]
    config = ExperimentConfig(model=kind, lr=3e-3, ssm_lr=1e-4, weight_decay=0.05)
    model = SSMClassifier(3, 4, d_model=8, d_state=4, n_layers=2, layer_cls=layer_class(kind))
    groups = {g["name"]: g for g in param_groups(model, config)}
    names = {id(p): n.rsplit(".", 1)[-1] for n, p in model.named_parameters()}
    recurrent = groups["lru_recurrent"]
    assert {names[id(p)] for p in recurrent["params"]} == recurrence
    assert recurrent["lr"] == 1e-4 and recurrent["weight_decay"] == 0.0
    others = [names[id(p)] for g in ("lru", "lru_no_decay") for p in groups.get(g, {"params": []})["params"]]
    assert others and not set(others) & recurrence
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
