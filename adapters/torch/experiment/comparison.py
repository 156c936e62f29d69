"""CompreSSM's three-run comparison on one seed (what ``lti-reduce train`` runs).

CompreSSM (arXiv 2510.02823) trains a state-space model at a large state size and, a few
times during the first ~10% of the steps, cuts each layer's low-energy balanced states
with :func:`adapters.torch.compress_`; the rest of training runs at the small size.
:func:`run_comparison` measures what that buys against the two obvious alternatives:

1. ``baseline``: the full-size model trained for the whole run;
2. ``compressed``: the same model (same seed, same initialization, same batches) with the
   cuts, :func:`adapters.torch.compress_` keeping the optimizer consistent;
3. ``scratch``: a model built directly at the per-layer sizes that (2) ended with,
   trained from scratch for the whole run.

Every accuracy comes with a 95% Wilson interval, and every difference between two runs with
McNemar's exact test on the shared test examples, so a reader sees which differences the test
set can decide. Timing covers the training loop (forward, backward, optimizer step, the
``compress_`` calls); the final evaluation and plotting are outside it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from ..data import SequenceDataset, load_dataset
from .config import RUN_TITLES, ConfigError, ExperimentConfig, check_config, cut_steps, resolve_device, total_steps
from ..cut.progress import _use_tqdm
from .loop import finished_run_line, predict, seed_everything, train_run
from .models import build_model
from .report import save_plots
from .stats import compare_on_one_test_set, wilson_interval
from .timing import environment, interleaved_step_times, loadavg

__all__ = ["prepare_data", "prepare_output", "run_comparison"]

# (A, B) pairs whose difference A - B ``results["comparisons"]`` reports.
_PAIRS = (("compressed", "baseline"), ("compressed", "scratch"), ("scratch", "baseline"))


def prepare_output(out) -> Path:
    """Create the output directory (its parent must exist); :class:`ConfigError` if that fails.

    Only the last component is created: a mistyped ``--out a/b/c`` does not scatter new
    directories.
    """
    out = Path(out)
    if not out.parent.is_dir():
        raise ConfigError(f"the parent directory of --out '{out}' does not exist ('{out.parent}'); create it first "
                          "or choose another --out.")
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output directory '{out}' ({exc.strerror}); choose another --out.") \
            from exc
    if not out.is_dir():
        raise ConfigError(f"--out '{out}' exists and is not a directory; choose another --out.")
    return out


def prepare_data(config: ExperimentConfig, data: SequenceDataset | None, device: torch.device) -> SequenceDataset:
    """Load ``config.dataset`` (unless ``data`` is given), cut it to ``n_train``/``n_test``, move it to ``device``."""
    if data is None:
        data = load_dataset(config.dataset, config.data_dir, mnist1d_test=config.mnist1d_test)
    if config.n_train is not None or config.n_test is not None:
        data = data.subset(config.n_train or len(data.y_train), config.n_test or len(data.y_test))
    return SequenceDataset(data.x_train.to(device), data.y_train.to(device), data.x_test.to(device),
                           data.y_test.to(device), data.name)


def describe_dataset(data: SequenceDataset) -> dict:
    return {"name": data.name, "n_train": len(data.y_train), "n_test": len(data.y_test), "seq_len": data.seq_len,
            "in_features": data.in_features, "n_classes": data.n_classes}


def accuracy_record(correct: torch.Tensor) -> dict:
    """``test_accuracy``, ``test_correct``, ``n_test`` and the 95% Wilson interval ``test_ci95``."""
    k, n = int(correct.sum()), int(correct.numel())
    return {"test_accuracy": k / n, "test_correct": k, "n_test": n, "test_ci95": list(wilson_interval(k, n))}


def run_comparison(config: ExperimentConfig, *, data: SequenceDataset | None = None) -> dict:
    """Train the baseline, the in-training-compressed and the from-scratch model; write results.

    Parameters
    ----------
    config : ExperimentConfig
    data : SequenceDataset, optional
        Your own data (see :func:`adapters.torch.data.from_tensors`); default: load
        ``config.dataset`` from ``config.data_dir``.

    Returns
    -------
    dict
        What ``results.json`` holds: ``config``, ``dataset`` (which split: name, sizes),
        ``environment``, ``runs`` (per run: ``test_accuracy`` with its 95% Wilson interval
        ``test_ci95``, ``state_dims``, ``total_state``, ``train_time_s``, ``phases``, ``cuts``,
        ...), ``comparisons`` (per pair such as ``"compressed-scratch"``: the accuracy
        difference, its 95% interval, McNemar's p-value and whether it is outside the noise),
        ``speedup`` (baseline time / run time), ``targets``, ``step_time_interleaved_ms`` and
        ``step_speedup_interleaved`` (each trained model's step time, timed in turn by
        :func:`~adapters.torch.experiment.timing.interleaved_step_times`), ``files``.

    Raises
    ------
    ConfigError
        Invalid options, an unavailable device, an output directory that cannot be made.
    adapters.torch.data.DatasetError
        The dataset cannot be loaded (message says why and what to do).
    """
    check_config(config)
    device = resolve_device(config.device)
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(int(config.threads))
    try:
        return _run_comparison(config, data, device)
    finally:
        torch.set_num_threads(threads)  # a process-wide setting: leave it as it was


def _run_comparison(config: ExperimentConfig, data: SequenceDataset | None, device: torch.device) -> dict:
    wall_start = time.perf_counter()
    out = prepare_output(config.out)
    data = prepare_data(config, data, device)
    steps = total_steps(config, len(data.y_train))
    if steps < 2:
        raise ConfigError(f"the run would have {steps} step(s); give more --epochs or --steps.")
    cuts = cut_steps(config, steps)

    results: dict = {"config": config.to_dict(), "dataset": describe_dataset(data), "environment": environment(device),
                     "steps": steps, "cut_steps": cuts, "runs": {}}
    models: dict[str, nn.Module] = {}
    correct: dict[str, torch.Tensor] = {}

    # progress: tqdm bars on a terminal (train_run); otherwise a line when each run starts and ends
    log = (lambda line: print(line, flush=True)) if config.progress and not _use_tqdm() else (lambda line: None)

    def one_run(name: str, d_state, run_cuts):
        seed_everything(config.seed)
        model = build_model(config, data, d_state, device=device).to(device)
        log(f"{RUN_TITLES[name]}: {steps} steps, state {sum(model.state_dims)}" +
            (f", cuts at steps {run_cuts}" if run_cuts else "") + " ...")
        record = train_run(model, data, config, steps=steps, cuts=run_cuts, label=RUN_TITLES[name], device=device)
        logits, pred = predict(model, data.x_test)
        correct[name] = (pred == data.y_test).cpu()
        record.update(accuracy_record(correct[name]))
        record.update({"test_loss": float(torch.nn.functional.cross_entropy(logits, data.y_test)),
                       "state_dims": model.state_dims, "total_state": sum(model.state_dims),
                       "parameters": sum(p.numel() for p in model.parameters())})
        results["runs"][name] = record
        models[name] = model
        log(finished_run_line(RUN_TITLES[name], record))
        return model

    if "baseline" in config.runs:
        one_run("baseline", None, [])
    if "compressed" in config.runs:
        compressed = one_run("compressed", None, cuts)
        if "scratch" in config.runs:
            one_run("scratch", compressed.state_dims, [])

    runs = results["runs"]
    results["comparisons"] = {f"{a}-{b}": compare_on_one_test_set(correct[a], correct[b])
                              for a, b in _PAIRS if a in correct and b in correct}
    if "baseline" in runs:
        base = runs["baseline"]["train_time_s"]
        results["speedup"] = {name: base / r["train_time_s"] for name, r in runs.items()}
        if len(models) > 1:
            step_ms = interleaved_step_times(models, data, config, device=device)
            results["step_time_interleaved_ms"] = step_ms
            results["step_speedup_interleaved"] = {name: step_ms["baseline"] / ms for name, ms in step_ms.items()}
    results["targets"] = _targets(results)
    results["files"] = {"results": str(out / "results.json")}
    results["files"].update(save_plots(results, out))
    results["environment"]["loadavg_end"] = loadavg()
    results["wall_time_s"] = time.perf_counter() - wall_start
    with open(out / "results.json", "w") as f:
        json.dump(results, f, indent=1)
    return results


def _speed_target(results: dict, wall_clock: float) -> dict:
    """Whether training (2) is at least 2x faster than (1), from the step times measured interleaved.

    The whole run's speed-up is estimated as ``N t_1 / (s t_1 + (N - s) t_2 + t_cut)``: ``N`` steps, ``s`` of
    them before the last cut (counted at full size, so the estimate is a lower bound when there are several
    cuts), ``t_1`` and ``t_2`` the interleaved step times of (1) and of (2) at its final size, ``t_cut`` the
    time spent in ``compress_``. The runs' own wall clocks, minutes apart on a shared machine, are kept as
    ``wall_clock_speedup`` but decide nothing. Without interleaved times the target is not decided.
    """
    step_ms = results.get("step_time_interleaved_ms") or {}
    if "baseline" not in step_ms or "compressed" not in step_ms:
        return {"speedup": wall_clock, "met": wall_clock >= 2.0, "decided": False, "wall_clock_speedup": wall_clock,
                "estimate": "wall clock only"}
    n, cut_steps = results["steps"], results.get("cut_steps") or [0]
    s = min(n, max(cut_steps))
    t1, t2 = step_ms["baseline"], step_ms["compressed"]
    t_cut = 1000.0 * results["runs"]["compressed"].get("compress_time_s", 0.0)
    estimate = n * t1 / (s * t1 + (n - s) * t2 + t_cut)
    return {"speedup": estimate, "met": estimate >= 2.0, "decided": True, "wall_clock_speedup": wall_clock,
            "estimate": "interleaved step times"}


def _targets(results: dict) -> dict:
    """The three checks of CompreSSM's claim; each says whether the test set can decide it.

    ``decided`` is ``False`` when McNemar's test finds the difference inside the noise (p >= 0.05):
    then ``met`` reflects only the sign or size of one noisy sample.
    """
    runs, comparisons = results["runs"], results["comparisons"]
    speedup = results.get("speedup", {})
    targets = {}
    if "compressed-baseline" in comparisons:
        c = comparisons["compressed-baseline"]
        gap = -100.0 * c["diff"]
        targets["compressed_within_1pt_of_baseline"] = {"gap_points": gap, "met": gap <= 1.0,
                                                        "gap_ci95_points": [-100 * c["diff_ci95"][1],
                                                                            -100 * c["diff_ci95"][0]],
                                                        "decided": (-100 * c["diff_ci95"][0] <= 1.0
                                                                    or -100 * c["diff_ci95"][1] > 1.0)}
    if "compressed" in runs and "baseline" in runs:
        targets["compressed_2x_faster_than_baseline"] = _speed_target(results, speedup["compressed"])
    if "compressed-scratch" in comparisons:
        c = comparisons["compressed-scratch"]
        targets["compressed_beats_scratch"] = {"gain_points": 100.0 * c["diff"], "met": c["diff"] > 0.0,
                                               "p_value": c["p_value"], "decided": c["significant"]}
    return targets
