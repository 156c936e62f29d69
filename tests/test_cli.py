"""The ``lti-reduce`` command line.

``reduce`` matches the library call, user errors are one line with a fix, ``train --quick`` writes its results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

import lti_reduce as lr
from lti_reduce._cli import main

SLICOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "slicot"
REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(capsys, *argv):
    """The core's ``main``, or for train/sweep the adapter's (the core's with its commands registered).

    The installed metadata of a development checkout may predate the ``lti_reduce.commands`` entry
    points, so the adapter's commands are passed explicitly here; the discovery itself is tested below.
    """
    argv = [str(a) for a in argv]
    if argv and argv[0] in ("train", "sweep"):
        from adapters.torch.experiment.cli import main as adapter_main

        code = adapter_main(argv)
    else:
        code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def frequency_response(A, B, C, D, n_freq=64):
    """``G(e^{iw}) = C (e^{iw} I - A)^{-1} B + D`` on ``n_freq`` points of the upper unit circle."""
    eye = np.eye(A.shape[0])
    return np.stack([C @ np.linalg.solve(np.exp(1j * w) * eye - A, B) + D
                     for w in np.linspace(0.0, np.pi, n_freq)])


def assert_one_line_error(code, err, *needles):
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lti-reduce: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture
def stable_npz(tmp_path):
    rng = np.random.default_rng(0)
    A = np.diag(rng.uniform(-0.9, 0.9, 8)) + 0.02 * rng.standard_normal((8, 8))
    path = tmp_path / "sys.npz"
    np.savez(path, A=A, B=rng.standard_normal((8, 2)), C=rng.standard_normal((3, 8)), D=rng.standard_normal((3, 2)))
    return path


def slicot_mat(name: str, tmp_path) -> Path:
    """The original MATLAB file of ``CDplayer`` or ``iss`` in the shared data folder, else one written from the
    copy the library ships (``lti_reduce.datasets``, checked equal to the original in ``test_datasets.py``)."""
    path = SLICOT / f"{name}.mat"
    if path.is_file():
        return path
    from lti_reduce import datasets

    A, B, C, D = {"CDplayer": datasets.cd_player, "iss": datasets.iss}[name](sparse=True)
    path = tmp_path / f"{name}.mat"
    scipy.io.savemat(path, {"A": A, "B": B, "C": C, "D": D})
    return path


# --------------------------------------------------------------------------------------------------- reduce
def test_reduce_cdplayer_with_dt_matches_the_library_call(capsys, tmp_path):
    out = tmp_path / "cd_r12.npz"
    plot = tmp_path / "cd.png"
    path = slicot_mat("CDplayer", tmp_path)
    code, stdout, _ = run_cli(capsys, "reduce", path, "--rank", 12, "--dt", 0.01, "--out", out, "--plot", plot)
    assert code == 0
    mat = scipy.io.loadmat(path)
    A = mat["A"].toarray() if hasattr(mat["A"], "toarray") else mat["A"]
    ref = lr.balanced_truncation(*lr.discretize(A, mat["B"], mat["C"], mat["D"], dt=0.01), rank=12)
    got = np.load(out)
    np.testing.assert_allclose(got["hsv"], ref.hsv, rtol=1e-10, atol=1e-12 * float(ref.hsv[0]))
    assert float(got["error_bound"]) == pytest.approx(float(ref.error_bound), rel=1e-10)
    G_cli = frequency_response(got["A"], got["B"], got["C"], got["D"])
    G_lib = frequency_response(ref.A, ref.B, ref.C, ref.D)
    assert np.abs(G_cli - G_lib).max() <= 1e-8 * np.abs(G_lib).max()
    assert "Hankel singular values (120" in stdout
    assert "error bound" in stdout and f"{float(ref.error_bound):.6e}" in stdout
    assert plot.read_bytes()[:8] == PNG_MAGIC and plot.stat().st_size > 1000


def test_reduce_iss_zoh_with_tol_matches_the_library_call(capsys, tmp_path):
    out = tmp_path / "iss.npz"
    path = slicot_mat("iss", tmp_path)
    code, _, _ = run_cli(capsys, "reduce", path, "--tol", 0.05, "--dt", 0.05, "--discretize", "zoh", "--out", out)
    assert code == 0
    mat = scipy.io.loadmat(path)
    A, B, C, D = (mat[k].toarray() if hasattr(mat[k], "toarray") else mat[k] for k in "ABCD")
    ref = lr.balanced_truncation(*lr.discretize(A, B, C, D, dt=0.05, method="zoh"), tol=0.05)
    got = np.load(out)
    assert int(got["rank"]) == ref.rank
    np.testing.assert_allclose(got["hsv"], ref.hsv, rtol=1e-9, atol=1e-12 * float(ref.hsv[0]))
    G_cli = frequency_response(got["A"], got["B"], got["C"], got["D"])
    G_lib = frequency_response(ref.A, ref.B, ref.C, ref.D)
    assert np.abs(G_cli - G_lib).max() <= 1e-8 * np.abs(G_lib).max()


def test_reduce_npz_spa_matches_the_library_call(capsys, tmp_path, stable_npz):
    out = tmp_path / "red.npz"
    code, stdout, _ = run_cli(capsys, "reduce", stable_npz, "--rank", 3, "--method", "spa", "--out", out)
    assert code == 0
    f = np.load(stable_npz)
    ref = lr.balanced_truncation(f["A"], f["B"], f["C"], f["D"], rank=3, method="spa")
    got = np.load(out)
    assert got["A"].shape == (3, 3) and str(got["method"]) == "spa"
    np.testing.assert_allclose(frequency_response(got["A"], got["B"], got["C"], got["D"]),
                               frequency_response(ref.A, ref.B, ref.C, ref.D), rtol=1e-9, atol=1e-12)
    assert "reduced order r = 3 of 8" in stdout


def test_reduce_default_output_is_written_to_the_working_directory(capsys, tmp_path, stable_npz, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, _ = run_cli(capsys, "reduce", stable_npz, "--rank", 2)
    assert code == 0
    assert (tmp_path / "sys_r2.npz").is_file()


# --------------------------------------------------------------------------------------------------- user errors
def _garbled(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not a matrix file \x00\x01\x02" * 10)
    return path


def _mat_without_b(tmp_path):
    path = tmp_path / "noB.mat"
    scipy.io.savemat(path, {"A": -np.eye(3), "C": np.ones((1, 3))})
    return path


def _npz_without_c(tmp_path):
    path = tmp_path / "noC.npz"
    np.savez(path, A=0.5 * np.eye(3), B=np.ones((3, 1)))
    return path


def _unstable(tmp_path):
    path = tmp_path / "unstable.npz"
    np.savez(path, A=np.diag([1.5, 0.2]), B=np.ones((2, 1)), C=np.ones((1, 2)))
    return path


@pytest.mark.parametrize("make, extra, needles", [
    (lambda t: t / "missing.npz", ["--rank", "2"], ["does not exist"]),
    (lambda t: _garbled(t, "bad.npz"), ["--rank", "2"], ["cannot read", ".npz"]),
    (lambda t: _garbled(t, "bad.mat"), ["--rank", "2"], ["cannot read", ".mat"]),
    (_mat_without_b, ["--rank", "1"], ["no matrix B", "found: A, C"]),
    (_npz_without_c, ["--rank", "1"], ["no matrix C"]),
    (lambda t: _garbled(t, "model.txt"), ["--rank", "2"], ["unknown extension"]),
    (_unstable, ["--rank", "1"], ["not Schur stable", "--dt"]),
    (_unstable, ["--rank", "5"], ["--rank 5 exceeds", "order n = 2"]),
    (_unstable, ["--tol", "1.5"], ["--tol", "between 0 and 1"]),
    (_unstable, [], ["--rank", "--tol", "required"]),
    (_unstable, ["--rank", "1", "--dt", "-1"], ["--dt", "positive"]),
])
def test_reduce_user_errors_are_one_line_with_a_fix(capsys, tmp_path, make, extra, needles):
    code, _, err = run_cli(capsys, "reduce", make(tmp_path), *extra)
    assert_one_line_error(code, err, *needles)


def test_continuous_model_without_dt_is_an_error_that_suggests_dt(capsys, tmp_path):
    code, _, err = run_cli(capsys, "reduce", slicot_mat("CDplayer", tmp_path), "--rank", 10)
    assert_one_line_error(code, err, "Schur stable", "--dt")


def test_process_exit_status_and_stderr_for_a_user_error(tmp_path):
    """The real process (not just main()): non-zero status, one line on stderr, no traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "lti_reduce._cli", "reduce", str(tmp_path / "nope.mat"), "--rank",
                           "3"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert_one_line_error(proc.returncode, proc.stderr, "does not exist")
    assert proc.stdout == ""


def test_reduce_needs_neither_torch_nor_matplotlib(tmp_path, stable_npz):
    code = ("import sys; from lti_reduce._cli import main; "
            f"rc = main(['reduce', {str(stable_npz)!r}, '--rank', '2', '--out', {str(tmp_path / 'r.npz')!r}]); "
            "print(rc, 'torch' in sys.modules, 'matplotlib' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "0 False False", proc.stdout + proc.stderr


def test_top_level_help_describes_every_command_without_importing_torch():
    code = ("import sys, contextlib, io; from lti_reduce._cli import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "print(buf.getvalue()); print('torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    out = proc.stdout
    assert out.strip().splitlines()[-1] == "False", out + proc.stderr
    flat = " ".join(out.split())
    assert "reduce a state-space model" in flat
    if "train" in flat:  # the adapter's commands are installed: each has its own one-line help
        assert "the main job" in flat and "over tolerances and seeds" in flat and "(from " not in flat


# --------------------------------------------------------------------------------------------------- train
def test_train_on_an_unavailable_device_is_a_one_line_error(capsys, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    code, _, err = run_cli(capsys, "train", "--quick", "--device", "cuda", "--out", tmp_path / "run")
    assert_one_line_error(code, err, "cuda", "--device cpu")


@pytest.mark.parametrize("extra, needles", [
    (["--dataset", "smnist", "--data-dir", "/nonexistent/mnist"], ["does not exist", "--data-dir"]),
    (["--dataset", "scifar"], ["--data-dir"]),
    (["--cuts", "5,100000"], ["cut steps", "1..39"]),
    (["--schedule", "4"], ["K@F"]),
    (["--device", "tpu"], ["unknown device", "--device cpu"]),
])
def test_train_user_errors_are_one_line_with_a_fix(capsys, tmp_path, extra, needles):
    pytest.importorskip("torch")
    code, _, err = run_cli(capsys, "train", "--quick", "--no-progress", "--out", tmp_path / "run", *extra)
    assert_one_line_error(code, err, *needles)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``lti-reduce train --quick`` run shared by the checks below."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("quick")
    cache = tmp_path_factory.getbasetemp() / "mnist1d-cache"
    import io
    from contextlib import redirect_stderr, redirect_stdout

    stdout, stderr = io.StringIO(), io.StringIO()
    from adapters.torch.experiment.cli import main as adapter_main

    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = adapter_main(["train", "--quick", "--out", str(out), "--data-dir", str(cache), "--seed", "3"])
    return code, stdout.getvalue(), stderr.getvalue(), out


def test_train_quick_prints_the_comparison_table(quick_run):
    code, stdout, _, _ = quick_run
    assert code == 0
    for title in ("(1) baseline", "(2) compressed in training", "(3) from scratch"):
        assert title in stdout
    assert "test acc" in stdout and "speedup" in stdout and "phases of (2)" in stdout


def test_train_logs_each_run_as_it_starts_and_ends_when_stderr_is_not_a_terminal(quick_run):
    # No tqdm bar off a terminal: a line per run start and end, flushed, before the final table.
    code, stdout, _, _ = quick_run
    assert code == 0
    table = stdout.index("test set: ")
    for title in ("(1) baseline, full size", "(2) compressed in training", "(3) from scratch at (2)'s size"):
        start, end = stdout.index(f"{title}: "), stdout.index(f"{title}: test accuracy ")
        assert start < end < table
        assert " steps, state " in stdout[start:stdout.index("\n", start)]


def test_train_quick_writes_sane_results_json(quick_run):
    _, _, _, out = quick_run
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert set(runs) == {"baseline", "compressed", "scratch"}
    config = results["config"]
    assert config["seed"] == 3 and results["dataset"]["name"] == "mnist1d"
    for r in runs.values():
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert r["train_time_s"] > 0 and len(r["loss"]) == results["steps"]
        assert len(r["state_dims"]) == config["n_layers"]
    assert runs["baseline"]["state_dims"] == [config["d_state"]] * config["n_layers"]
    assert runs["compressed"]["total_state"] < runs["baseline"]["total_state"]
    assert runs["scratch"]["state_dims"] == runs["compressed"]["state_dims"]
    assert [c["step"] for c in runs["compressed"]["cuts"]] == results["cut_steps"] == config["cuts"]
    assert results["speedup"]["baseline"] == pytest.approx(1.0)
    assert set(results["targets"]) == {"compressed_within_1pt_of_baseline", "compressed_beats_scratch",
                                       "compressed_2x_faster_than_baseline"}


def test_train_quick_writes_png_plots(quick_run):
    _, _, _, out = quick_run
    for name in ("hsv_spectra.png", "state_size.png", "accuracy_vs_state.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, name


def test_train_help_states_the_real_defaults(capsys):
    pytest.importorskip("torch")
    from adapters.torch.experiment import ExperimentConfig
    from adapters.torch.experiment.cli import main as adapter_main

    with pytest.raises(SystemExit):
        adapter_main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    config = ExperimentConfig()
    for phrase in (f"(default {config.epochs})", f"complex modes (default {config.d_state})",
                   f"model width (default {config.d_model})", f"LRU blocks (default {config.n_layers})",
                   f"batch size (default {config.batch_size})", f"learning rate (default {config.lr:g})",
                   f"(default {config.tol:g})", f"default {config.n_cuts}@{config.cut_window:g}"):
        assert phrase in text, phrase


def test_train_quick_states_intervals_and_the_noise(quick_run):
    _, stdout, _, out = quick_run
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["n_test"] == 500 and "500 examples" in stdout
    scipy_stats = pytest.importorskip("scipy.stats")
    for r in results["runs"].values():
        k, n = r["test_correct"], r["n_test"]
        assert r["test_accuracy"] == k / n
        ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert r["test_ci95"] == pytest.approx([ci.low, ci.high], abs=1e-12)
    comparisons = results["comparisons"]
    assert set(comparisons) == {"compressed-baseline", "compressed-scratch", "scratch-baseline"}
    for c in comparisons.values():
        n_disc = c["only_a"] + c["only_b"]
        expected = scipy_stats.binomtest(c["only_a"], n_disc, 0.5).pvalue if n_disc else 1.0
        assert c["p_value"] == pytest.approx(expected, rel=1e-9)
        assert c["significant"] == (c["p_value"] < 0.05)
    assert "McNemar" in stdout and "95% CI" in stdout
    assert ("inside the noise" in stdout) or ("outside the noise" in stdout)


# --------------------------------------------------------------------------------------------------- commands
def test_the_core_cli_never_imports_the_adapter():
    import ast

    tree = ast.parse((REPO / "lti_reduce" / "_cli.py").read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.split(".")[0] == "adapters"], imported
    assert "import_module" not in (REPO / "lti_reduce" / "_cli.py").read_text()


def test_pyproject_registers_train_and_sweep_as_entry_points():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    group = project["entry-points"]["lti_reduce.commands"]
    assert group == {"train": "adapters.torch.experiment.cli:register_train",
                     "sweep": "adapters.torch.experiment.cli:register_sweep"}
    import importlib

    for value in group.values():
        module, name = value.split(":")
        assert callable(getattr(importlib.import_module(module), name))


def _fake_entry_points(monkeypatch, points):
    import importlib.metadata as md

    def entry_points(group=None, **kwargs):
        return [md.EntryPoint(name, value, group) for name, value in points.items()] if group == "lti_reduce.commands" \
            else []

    monkeypatch.setattr(md, "entry_points", entry_points)


def test_an_entry_point_command_is_discovered_and_run(capsys, monkeypatch, tmp_path):
    pytest.importorskip("torch")
    _fake_entry_points(monkeypatch, {"train": "adapters.torch.experiment.cli:register_train",
                                     "sweep": "adapters.torch.experiment.cli:register_sweep"})
    code = main(["train", "--quick", "--no-progress", "--device", "tpu", "--out", str(tmp_path / "run")])
    _, err = capsys.readouterr()
    assert_one_line_error(code, err, "unknown device", "--device cpu")
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "sweep" in capsys.readouterr().out


def test_reduce_does_not_load_command_entry_points(capsys, monkeypatch, stable_npz, tmp_path):
    _fake_entry_points(monkeypatch, {"broken": "no_such_module_for_lti_reduce:register"})
    code, out, _ = run_cli(capsys, "reduce", stable_npz, "--rank", 2, "--out", tmp_path / "r.npz")
    assert code == 0 and (tmp_path / "r.npz").is_file()
    code = main(["broken"])
    _, err = capsys.readouterr()
    assert_one_line_error(code, err, "cannot be loaded", "no_such_module_for_lti_reduce")


def test_train_without_a_registered_adapter_says_how_to_get_it(capsys, monkeypatch):
    _fake_entry_points(monkeypatch, {})
    code = main(["train", "--quick"])
    _, err = capsys.readouterr()
    assert_one_line_error(code, err, "PyTorch adapter", "pip install -e '.[torch]'", "python -m adapters.torch.experiment")


@pytest.mark.parametrize("option", ["--out", "--plot"])
def test_reduce_refuses_to_create_missing_parent_directories(capsys, tmp_path, stable_npz, option):
    target = tmp_path / "no" / "such" / ("r.npz" if option == "--out" else "hsv.png")
    extra = [option, target] + (["--out", tmp_path / "r.npz"] if option == "--plot" else [])
    code, out, err = run_cli(capsys, "reduce", stable_npz, "--rank", 2, *extra)
    assert_one_line_error(code, err, option, "does not exist", "create it first")
    assert not (tmp_path / "no").exists()
    assert out == ""  # refused before any work


def test_reduce_of_an_unstable_model_names_the_cli_options_that_fix_it(capsys, tmp_path):
    path = tmp_path / "hurwitz.npz"
    np.savez(path, A=np.diag([-1.0, -2.0, -3.0]), B=np.ones((3, 1)), C=np.ones((1, 3)))
    code, _, err = run_cli(capsys, "reduce", path, "--rank", 2)
    assert_one_line_error(code, err, "spectral radius 3", "--unstable split", "--dt DT")
    assert 'unstable="split"' not in err and "time=" not in err and "did not converge" not in err


def test_reduce_unstable_split_keeps_the_unstable_part_and_matches_the_library(capsys, tmp_path):
    A, B, C = np.diag([1.5, 0.5, 0.2, -0.4]), np.ones((4, 1)), np.arange(1.0, 5.0)[None]
    path = tmp_path / "unstable.npz"
    np.savez(path, A=A, B=B, C=C)
    code, out, err = run_cli(capsys, "reduce", path, "--rank", 3, "--unstable", "split", "--out", tmp_path / "r.npz")
    assert code == 0, err
    ref = lr.balanced_truncation(A, B, C, rank=3, unstable="split")
    saved = np.load(tmp_path / "r.npz")
    np.testing.assert_allclose(saved["A"], ref.A, atol=1e-12)
    assert "1 unstable state(s) (HSV inf) kept exactly" in out and "stable part's Hankel norm" in out
    assert 1.5 == pytest.approx(max(abs(np.linalg.eigvals(saved["A"]))), rel=1e-12)


def test_reduce_of_a_model_without_states_is_a_clear_error(capsys, tmp_path):
    path = tmp_path / "empty.npz"
    np.savez(path, A=np.zeros((0, 0)), B=np.zeros((0, 1)), C=np.zeros((1, 0)))
    code, _, err = run_cli(capsys, "reduce", path, "--rank", 1)
    assert_one_line_error(code, err, "no states", "nothing to reduce")


def test_train_out_with_a_missing_parent_is_refused(capsys, tmp_path):
    pytest.importorskip("torch")
    code, _, err = run_cli(capsys, "train", "--quick", "--no-progress", "--out", tmp_path / "a" / "b" / "run")
    assert_one_line_error(code, err, "--out", "does not exist")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("command", ["reduce", "train", "sweep"])
def test_the_cli_reference_page_names_every_option(command, capsys):
    """docs/cli.md mentions each option that ``lti-reduce COMMAND --help`` lists."""
    import re

    if command == "reduce":
        with pytest.raises(SystemExit):
            main(["reduce", "--help"])
    else:
        pytest.importorskip("torch")
        from adapters.torch.experiment.cli import main as adapter_main

        with pytest.raises(SystemExit):
            adapter_main([command, "--help"])
    options = set(re.findall(r"^\s+(--[a-z0-9][a-z0-9-]*)", capsys.readouterr().out, re.M)) - {"--help"}
    assert options, "no option found in the help text"
    page = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    section = page.split(f"## `lti-reduce {command}`", 1)[1].split("\n## ", 1)[0]
    if command == "sweep":  # "the training options of `train`"
        section += page.split("## `lti-reduce train`", 1)[1].split("\n## ", 1)[0]
    missing = sorted(o for o in options if not re.search(re.escape(o) + r"(?![a-z0-9-])", section))
    assert not missing, f"docs/cli.md does not describe {missing} of 'lti-reduce {command}'"


@pytest.mark.parametrize("decided,met,word", [(True, True, "holds"), (True, False, "does not hold"),
                                              (False, True, "not decided"), (False, False, "not decided")])
def test_train_target_lines_say_holds_does_not_hold_or_not_decided(quick_run, decided, met, word):
    """A noisy difference is 'not decided', never 'holds'/'does not hold' next to the wrong sign."""
    from adapters.torch.experiment.report import format_table

    results = json.loads((quick_run[3] / "results.json").read_text())
    x = results["targets"]["compressed_beats_scratch"]
    x.update(decided=decided, met=met, gain_points=-1.2 if not met else 0.8)
    line = next(ln for ln in format_table(results).splitlines() if "(2) better than (3)" in ln)
    verdict = line.split(":", 1)[1].split(";")[0].strip()
    assert verdict.startswith(word)
    assert ("does not hold" in verdict) == (word == "does not hold")
    assert ("inside the noise" in verdict) == (not decided)


# --------------------------------------------------------------------------------------- max error, time base
def test_reduce_max_error_gives_the_smallest_order_meeting_the_bound(capsys, tmp_path, stable_npz):
    out = tmp_path / "red.npz"
    code, stdout, _ = run_cli(capsys, "reduce", stable_npz, "--max-error", "0.5", "--out", out)
    assert code == 0
    f = np.load(stable_npz)
    ref = lr.balanced_truncation(f["A"], f["B"], f["C"], f["D"], max_error=0.5)
    got = np.load(out)
    assert int(got["rank"]) == ref.rank and float(got["error_bound"]) <= 0.5
    assert f"reduced order r = {ref.rank} of 8" in stdout


def test_reduce_max_error_and_rank_are_exclusive(capsys, stable_npz):
    code, _, err = run_cli(capsys, "reduce", stable_npz, "--max-error", "0.5", "--rank", "2")
    assert code == 2 and "not allowed with" in err


def test_reduce_time_continuous_matches_the_library_and_writes_dt_zero(capsys, tmp_path):
    rng = np.random.default_rng(4)
    A = -np.diag(rng.uniform(0.5, 5.0, 8)) + 0.05 * rng.standard_normal((8, 8))
    B, C = rng.standard_normal((8, 2)), rng.standard_normal((1, 8))
    src, out = tmp_path / "c.npz", tmp_path / "r.npz"
    np.savez(src, A=A, B=B, C=C)
    code, stdout, _ = run_cli(capsys, "reduce", src, "--time", "continuous", "--rank", "3", "--out", out)
    assert code == 0 and "continuous time" in stdout
    ref = lr.balanced_truncation(A, B, C, rank=3, time="continuous")
    got = np.load(out)
    assert str(got["time"]) == "continuous" and float(got["dt"]) == 0.0
    np.testing.assert_allclose(np.linalg.eigvals(got["A"]).real.max(), np.linalg.eigvals(ref.A).real.max(), rtol=1e-8)
    np.testing.assert_allclose(got["B"].T @ got["B"], ref.B.T @ ref.B, rtol=1e-8)


def test_reduce_keeps_the_files_sampling_time(capsys, tmp_path, stable_npz):
    f = dict(np.load(stable_npz))
    src, out = tmp_path / "d.npz", tmp_path / "r.npz"
    np.savez(src, dt=0.01, **f)
    code, stdout, _ = run_cli(capsys, "reduce", src, "--rank", "3", "--out", out)
    assert code == 0 and "dt = 0.01" in stdout
    assert float(np.load(out)["dt"]) == 0.01 and str(np.load(out)["time"]) == "discrete"


def test_reduce_plot_without_matplotlib_fails_before_writing(capsys, tmp_path, stable_npz, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    out = tmp_path / "r.npz"
    code, stdout, err = run_cli(capsys, "reduce", stable_npz, "--rank", "2", "--out", out, "--plot", tmp_path / "p.png")
    assert_one_line_error(code, err, "--plot needs matplotlib")
    assert not out.exists() and stdout == ""


@pytest.mark.parametrize("extra,needle", [(["--time", "discrete", "--dt", "0.1"], "drop one of them"),
                                          (["--time", "continuous"], "discrete-time model (dt = 0.01")])
def test_reduce_conflicting_time_bases_are_one_line_errors(capsys, tmp_path, stable_npz, extra, needle):
    src = stable_npz
    if "--time" in extra and "continuous" in extra:
        src = tmp_path / "d.npz"
        np.savez(src, dt=0.01, **dict(np.load(stable_npz)))
    code, _, err = run_cli(capsys, "reduce", src, "--rank", "2", *extra)
    assert_one_line_error(code, err, needle)


def test_the_speed_target_is_judged_on_interleaved_step_times_not_wall_clocks():
    pytest.importorskip("torch")
    from adapters.torch.experiment.comparison import _speed_target

    results = {"steps": 1000, "cut_steps": [100], "runs": {"compressed": {"compress_time_s": 0.5}},
               "step_time_interleaved_ms": {"baseline": 30.0, "compressed": 20.0}}
    # a wall clock of 3.8x (the baseline ran on a busier machine) decides nothing
    t = _speed_target(results, wall_clock=3.8)
    expected = 1000 * 30.0 / (100 * 30.0 + 900 * 20.0 + 500.0)
    assert t["speedup"] == pytest.approx(expected) and t["met"] is False and t["decided"] is True
    assert t["wall_clock_speedup"] == 3.8
    results["step_time_interleaved_ms"]["compressed"] = 10.0
    assert _speed_target(results, wall_clock=1.2)["met"] is True  # 30000 / (3000 + 9000 + 500) = 2.4
    del results["step_time_interleaved_ms"]
    assert _speed_target(results, wall_clock=3.8)["decided"] is False
