"""The delay task: a memory benchmark where the state size matters (``lti-reduce train|sweep --task delay``).

Inputs are i.i.d. standard normal sequences ``u`` of length ``L``; the targets are the input
itself at several lags, ``y[t, k] = u[t - lag_k]`` (``0`` for ``t < lag_k``, the zero history
a causal system with zero initial state sees), with lags up to about ``L / 2``. A linear
time-invariant layer solves it exactly only if its state holds the last ``max(lags)`` inputs:
unlike MNIST-1D (length 40, a class per sequence), this task separates state sizes.

Scored by the coefficient of determination on the defined targets (``t >= lag_k``),

.. math:: R^2_k = 1 - \\frac{\\sum (\\hat y_{t,k} - y_{t,k})^2}{\\sum (y_{t,k} - \\bar y_k)^2},

averaged over the lags, and by the mean squared error over all targets. The data are generated
once, offline, from ``data_seed`` (the same seed gives the same tensors bit for bit, on every
machine: numpy's PCG64 with float64 draws cast to float32).

:func:`run_delay_sweep` is ``lti-reduce sweep --task delay`` (and, with one seed and one
tolerance, ``train --task delay``): for every seed the full model, and for every tolerance the
model compressed in training and one trained from scratch at the sizes it reached, with the
machinery of :mod:`adapters.torch.experiment.sweep` (resumable runs under ``OUT/runs/``, paired
per-seed differences with Student-t intervals, step times measured interleaved).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from ..data import SequenceDataset
from .config import ConfigError, ExperimentConfig, check_config, cut_steps, resolve_device, total_steps
from .loop import seed_everything, train_run
from .models import SSMClassifier, default_chunk_size, layer_class
from .stats import mean_std, paired_t_interval
from .sweep import _compact_cuts, _key, _open_output, _save_record, _seed_runs, _seed_timing, _torch_threads
from .tables import format_delay_table
from .timing import environment, loadavg

__all__ = ["DelayConfig", "DelaySweepConfig", "SSMSequenceRegressor", "build_regressor", "delay_scores",
           "delay_targets", "format_delay_table", "make_delay_data", "run_delay_sweep"]


@dataclass(frozen=True)
class DelayConfig:
    """The delay task's data.

    Attributes
    ----------
    seq_len : int
        Sequence length ``L``.
    lags : tuple of int
        Target lags, each in ``1 .. L - 1``; the default reaches ``L / 2``.
    n_train, n_test : int
        Number of training and test sequences.
    data_seed : int
        Seed of the generator (the data do not depend on the runs' seeds: every run of a sweep
        sees the same sequences, so per-seed differences are paired).
    """

    seq_len: int = 64
    lags: tuple[int, ...] = (8, 16, 24, 32)
    n_train: int = 2000
    n_test: int = 1000
    data_seed: int = 0

    def check(self) -> None:
        if not isinstance(self.seq_len, (int, np.integer)) or self.seq_len < 2:
            raise ConfigError(f"seq_len must be an integer >= 2, got {self.seq_len!r}.")
        bad = [g for g in self.lags if not isinstance(g, (int, np.integer)) or not 0 < g < self.seq_len]
        if not self.lags or bad:
            raise ConfigError(f"lags must be integers in 1..seq_len-1 = 1..{self.seq_len - 1}, got "
                              f"{list(self.lags)}; choose shorter lags or a longer seq_len.")
        for name in ("n_train", "n_test"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 2:
                raise ConfigError(f"{name} must be an integer >= 2, got {value!r}.")


def delay_targets(u: torch.Tensor, lags) -> torch.Tensor:
    """The input delayed by each lag: ``y[..., t, k] = u[..., t - lags[k], 0]``, zero for ``t < lags[k]``.

    Parameters
    ----------
    u : Tensor, shape (..., L, 1)
    lags : sequence of int, each in ``0 .. L``

    Returns
    -------
    Tensor, shape (..., L, len(lags)), the dtype of ``u``.
    """
    length = u.shape[-2]
    cols = []
    for lag in lags:
        lag = int(lag)
        shifted = torch.zeros_like(u[..., 0])
        if lag < length:
            shifted[..., lag:] = u[..., : length - lag, 0]
        cols.append(shifted)
    return torch.stack(cols, dim=-1)


def make_delay_data(task: DelayConfig = DelayConfig()) -> SequenceDataset:
    """The delay task's training and test sequences, a pure function of ``task``.

    Returns
    -------
    SequenceDataset
        ``x`` float32 of shape ``(N, L, 1)`` (i.i.d. standard normal), ``y`` float32 of shape
        ``(N, L, len(lags))`` from :func:`delay_targets`; name ``"delay"``.
    """
    task.check()
    rng = np.random.default_rng(task.data_seed)
    u = torch.from_numpy(rng.standard_normal((task.n_train + task.n_test, task.seq_len, 1)).astype(np.float32))
    y = delay_targets(u, task.lags)
    n = task.n_train
    return SequenceDataset(u[:n], y[:n], u[n:], y[n:], "delay")


def delay_scores(pred: torch.Tensor, y: torch.Tensor, lags) -> dict:
    """``R^2`` per lag (on ``t >= lag``), their mean, and the MSE over all targets.

    Parameters
    ----------
    pred, y : Tensor, shape (N, L, K)
    lags : sequence of int, length K

    Returns
    -------
    dict
        ``r2`` (mean over lags), ``r2_per_lag`` (list), ``mse`` (mean over all ``N L K`` entries).
    """
    pred, y = pred.double(), y.double()
    per_lag = []
    for k, lag in enumerate(lags):
        p, t = pred[:, int(lag):, k], y[:, int(lag):, k]
        sst = float(((t - t.mean()) ** 2).sum())
        per_lag.append(1.0 - float(((p - t) ** 2).sum()) / sst if sst > 0 else float("nan"))
    return {"r2": float(np.mean(per_lag)), "r2_per_lag": per_lag, "mse": float(((pred - y) ** 2).mean())}


class SSMSequenceRegressor(SSMClassifier):
    """The classifier's encoder and SSM blocks with a linear read-out at every step (no mean over time).

    Input ``(batch, L, in_features)``, output ``(batch, L, n_outputs)``; built as
    ``SSMSequenceRegressor(in_features, n_outputs, d_model=..., d_state=..., ...)`` with the
    arguments of :class:`~adapters.torch.experiment.models.SSMClassifier`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        for block in self.blocks:
            h = block(h)
        return self.decoder(self.norm(h))


def build_regressor(config: ExperimentConfig, data: SequenceDataset, d_state=None, *,
                    device: torch.device | str = "cpu") -> SSMSequenceRegressor:
    """The regressor of ``config`` for ``data`` (``d_state``: one size, or one per layer, overriding the config)."""
    from ..layers.lru import LRU

    cls = layer_class(config.model)
    kwargs = {}
    if cls is LRU:
        mode = config.mode or ("chunked" if torch.device(device).type == "cpu" else "auto")
        kwargs = dict(r_min=config.r_min, r_max=config.r_max, max_phase=config.max_phase, mode=mode,
                      chunk_size=config.chunk_size or default_chunk_size(data.seq_len))
    return SSMSequenceRegressor(data.in_features, int(data.y_train.shape[-1]), d_model=config.d_model,
                                d_state=config.d_state if d_state is None else d_state,
                                n_layers=config.n_layers if d_state is None or isinstance(d_state, int) else None,
                                dropout=config.dropout, layer_cls=cls, **kwargs)


@torch.no_grad()
def _predict(model, x: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    was = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was)
    return out


@dataclass
class DelaySweepConfig:
    """A delay sweep: the task, one :class:`ExperimentConfig` (all but ``seed`` and ``tol``), tolerances, seeds.

    The default: sequences of 64 steps, lags 8, 16, 24, 32, 2000 training / 1000 test
    sequences; two S4D blocks (d_model 16, 32 modes per channel), 600 steps of batch 32, one cut
    at 10% of the steps; tolerances 0.05 and 0.3; seeds 0-4; one CPU thread.

    ``watch`` adds, per tolerance and seed, a run whose one cut is timed by the model
    (:class:`adapters.torch.monitor.HSVTimedSchedule` with ``rule=watch``, looking at multiples of
    ``watch_every`` steps within ``watch_budget`` of the training time, ``watch_patience``
    intervals, no cut before the warm-up's end, at the latest at ``watch_deadline`` of the
    steps); ``None``: no such runs.
    """

    task: DelayConfig = field(default_factory=DelayConfig)
    # ssm_lr = lr: the S4D layers' eigenvalues and steps train at the base rate (the measured tables' recipe)
    base: ExperimentConfig = field(default_factory=lambda: ExperimentConfig(
        model="s4d", d_model=16, d_state=32, n_layers=2, steps=600, batch_size=32, lr=3e-3, ssm_lr=3e-3,
        weight_decay=0.0, threads=1, rewarm_steps=20, mnist1d_test=None, dataset="delay"))
    tols: tuple[float, ...] = (0.05, 0.3)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    timing_rounds: int = 4
    timing_steps: int = 5
    watch: str | None = "either"
    watch_every: int = 10
    watch_budget: float | None = 0.02
    watch_patience: int = 2
    watch_deadline: float = 0.5

    @classmethod
    def quick(cls, **overrides) -> "DelaySweepConfig":
        """Seconds on a CPU: length 16, lags 2..8, 200/100 sequences, 30 steps, one tolerance, one seed, looks every 5 steps."""
        base = ExperimentConfig(model="s4d", d_model=8, d_state=8, n_layers=1, steps=30, batch_size=20, lr=5e-3,
                                weight_decay=0.0, threads=1, rewarm_steps=2, mnist1d_test=None, dataset="delay",
                                n_cuts=1, cut_window=0.2)
        settings = dict(task=DelayConfig(seq_len=16, lags=(2, 4, 8), n_train=200, n_test=100), base=base,
                        tols=(0.1,), seeds=(0,), timing_rounds=1, timing_steps=2, watch_every=5, watch_patience=2,
                        watch_budget=None)
        settings.update(overrides)
        return cls(**settings)

    def check(self) -> None:
        self.task.check()
        if not self.tols or any(not 0.0 < t < 1.0 for t in self.tols):
            raise ConfigError(f"tolerances must lie strictly between 0 and 1, got {list(self.tols)}.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or len(set(self.tols)) != len(self.tols):
            raise ConfigError(f"give distinct seeds and tolerances, got {list(self.seeds)} and {list(self.tols)}.")
        check_config(replace(self.base, tol=self.tols[0]))

    def fingerprint(self) -> str:
        """A hash of what defines the runs' results (task and model settings; not out, seeds, tolerances)."""
        spec = {k: v for k, v in self.base.to_dict().items()
                if k not in ("out", "progress", "seed", "tol", "runs", "device", "threads")}
        spec["task"] = asdict(self.task)
        return hashlib.sha1(json.dumps(spec, sort_keys=True, default=list).encode()).hexdigest()[:12]


def run_delay_sweep(sweep: DelaySweepConfig, *, log=None) -> dict:
    """Run (or resume) a delay sweep into ``sweep.base.out``; return what ``results.json`` holds.

    Per seed: the full model; per tolerance the model compressed in training (cut at
    :func:`~adapters.torch.experiment.config.cut_steps`) and the model trained from scratch at
    the per-layer sizes it reached; all with the same initialization seed, batches and steps.
    Then the seed's trained models are timed interleaved
    (:func:`~adapters.torch.experiment.timing.interleaved_step_times`).

    Returns
    -------
    dict
        ``config``, ``task``, ``steps``, ``cut_steps``, ``environment``, ``runs`` (per run: ``r2``,
        ``r2_per_lag``, ``mse``, ``state_dims``, ``total_state``, ``train_time_s``, ...),
        ``timing`` (ms per step by run key, per seed), ``summary`` (per method and tolerance: mean
        and std over seeds of R^2, MSE and total state, mean step-time speed-up over the full
        model) and ``paired`` (per tolerance: compressed minus scratch and compressed minus full in
        R^2 and in MSE, per seed, with 95% t-intervals).

    Raises
    ------
    ConfigError
        Invalid options, or ``out`` holds a sweep of another configuration.
    """
    sweep.check()
    log = log or (lambda line: print(line, flush=True))
    device = resolve_device(sweep.base.device)
    with _torch_threads(sweep.base.threads):
        return _run(sweep, device, log)


def _run(sweep: DelaySweepConfig, device, log) -> dict:
    wall_start = time.perf_counter()
    base = sweep.base
    fingerprint = sweep.fingerprint()
    out, runs_dir = _open_output(base.out, fingerprint, {"config": base.to_dict(), "task": asdict(sweep.task)})
    data = make_delay_data(sweep.task)
    data = SequenceDataset(data.x_train.to(device), data.y_train.to(device), data.x_test.to(device),
                           data.y_test.to(device), data.name)
    steps = total_steps(base, len(data.y_train))
    cuts = cut_steps(replace(base, tol=sweep.tols[0]), steps)

    def run(method, tol, seed, d_state=None) -> dict:
        key = _key(method, tol, seed)
        path = runs_dir / f"{key}.json"
        if path.is_file():
            return json.loads(path.read_text())
        config = replace(base, seed=seed, tol=tol if tol is not None else base.tol)
        seed_everything(seed)
        model = build_regressor(config, data, d_state, device=device).to(device)
        schedule = _timed_schedule(sweep, model, config, steps) if method.startswith("timed") else None
        record = train_run(model, data, config, steps=steps, cuts=cuts if method == "compressed" else [],
                           label=key, device=device, schedule=schedule)
        if schedule is not None:
            record.update(_watch_record(schedule))
            _save_watch_plot(schedule, out / f"hsv_trajectories-{key}.png", key, cuts)
        record.update(delay_scores(_predict(model, data.x_test), data.y_test, sweep.task.lags))
        record.update({"method": method, "tol": tol, "seed": seed, "state_dims": model.state_dims,
                       "total_state": sum(model.state_dims), "loss": record["loss"][:: max(1, steps // 200)],
                       "cuts": _compact_cuts(record["cuts"]), "loadavg_end": loadavg()})
        torch.save(model.state_dict(), runs_dir / f"{key}.pt")
        _save_record(path, record)
        log(f"{key}: R^2 {record['r2']:.4f}, MSE {record['mse']:.4g}, state {record['total_state']}, "
            f"{record['train_time_s']:.0f}s")
        return record

    records, timing = _seed_runs(sweep, run, lambda seed, done: _seed_timing(sweep, data, device, runs_dir, seed, done,
                                                                            build=build_regressor))
    if sweep.watch:
        for seed in sweep.seeds:
            for tol in sweep.tols:
                records[_key(f"timed-{sweep.watch}", tol, seed)] = run(f"timed-{sweep.watch}", tol, seed)

    results = {"config": base.to_dict(), "task": asdict(sweep.task), "fingerprint": fingerprint,
               "tols": list(sweep.tols), "seeds": list(sweep.seeds), "environment": environment(device),
               "steps": steps, "cut_steps": cuts}
    results.update(summarize_delay(list(records.values()), timing, sweep.tols,
                                   timed=f"timed-{sweep.watch}" if sweep.watch else None))
    results["runs"], results["timing"] = records, timing
    results["files"] = {"results": str(out / "results.json")}
    results["wall_time_s"] = time.perf_counter() - wall_start
    with open(out / "results.json", "w") as f:
        json.dump(results, f, indent=1)
    return results


def _timed_schedule(sweep: DelaySweepConfig, model, config: ExperimentConfig, steps: int):
    """The schedule of a model-timed run: one cut, when the model's HSVs say (``sweep.watch`` rule)."""
    from ..monitor import HSVTimedSchedule

    return HSVTimedSchedule(model, steps, tol=config.tol, every=sweep.watch_every, budget=sweep.watch_budget,
                            patience=sweep.watch_patience, deadline=sweep.watch_deadline,
                            min_step=max(1, int(round(config.warmup_frac * steps))), rule=sweep.watch,
                            min_shrink=config.min_shrink, rewarm_steps=0)


def _watch_record(schedule) -> dict:
    """What a model-timed run records of its watching: the cut's step and reason, its cost, and every look."""
    return {"cut_step": schedule.cut_step, "cut_reason": schedule.reason, "watch_time_s": schedule.watch_time_s,
            "watch_looks": len(schedule.trace),
            "watch": [{"step": t["step"], "kept": t["kept"], "certified": t["certified"], "observed": t["observed"],
                       "cost_s": t["cost_s"],
                       "bound_max": [None if b is None else float(np.max(b)) for b in t["bound"]],
                       "hsv_top": [np.asarray(h).reshape(-1, np.asarray(h).shape[-1]).max(0)[:16].tolist()
                                   for h in t["hsv"]]} for t in schedule.trace]}


def _save_watch_plot(schedule, path, key: str, cuts: list) -> None:
    """The HSV trajectories the model-timed run watched, its cut and the fixed cut's step marked."""
    from ..monitor import save_hsv_trajectory_plot

    save_hsv_trajectory_plot(schedule.trace, path, cut_step=schedule.cut_step, fixed_step=cuts[0] if cuts else None,
                             title=f"{key}: cut {schedule.reason} at step {schedule.cut_step}")


def summarize_delay(records: list[dict], timing: dict, tols, *, timed: str | None = None) -> dict:
    """``summary`` and ``paired`` rows (see :func:`run_delay_sweep`); std over seeds with ``ddof=1``.

    With ``timed`` (the method name of the model-timed runs), their rows carry the cut step
    (mean, min, max) and the monitor's share of the training time, and the paired rows their
    difference from the fixed-step cut (``timed_vs_fixed_r2``, ``timed_vs_fixed_mse``).
    """
    by = {(r["method"], r["tol"], r["seed"]): r for r in records}
    seeds = sorted({r["seed"] for r in records})
    summary = []
    methods = ("compressed", "scratch") + ((timed,) if timed else ())
    for method, tol in [("full", None)] + [(m, t) for t in tols for m in methods]:
        rows = [(s, by[(method, tol, s)]) for s in seeds if (method, tol, s) in by]
        if not rows:
            continue
        step = [timing[str(s)][_key("full", None, s)] / timing[str(s)][_key(method, tol, s)]
                for s, _ in rows if _key(method, tol, s) in timing.get(str(s), {})
                and _key("full", None, s) in timing.get(str(s), {})]
        r2 = mean_std([r["r2"] for _, r in rows])
        mse = mean_std([r["mse"] for _, r in rows])
        state = mean_std([r["total_state"] for _, r in rows])
        summary.append({"method": method, "tol": tol, "n_seeds": len(rows), "r2_mean": r2[0], "r2_std": r2[1],
                        "mse_mean": mse[0], "mse_std": mse[1], "state_mean": state[0], "state_std": state[1],
                        "state_min": min(r["total_state"] for _, r in rows),
                        "state_max": max(r["total_state"] for _, r in rows),
                        "step_speedup_mean": float(np.mean(step)) if step else None,
                        "step_speedup_per_seed": step})
        if method == timed:
            summary[-1].update({"cut_steps": [r["cut_step"] for _, r in rows],
                                "cut_reasons": [r["cut_reason"] for _, r in rows],
                                "watch_share": [r["watch_time_s"] / r["train_time_s"] for _, r in rows]})
    paired = []
    for tol in tols:
        row = {"tol": tol}
        pairs = [("compressed", "scratch", "vs_scratch"), ("compressed", "full", "vs_full")]
        if timed:
            pairs.append((timed, "compressed", "timed_vs_fixed"))
        for this, other, name in pairs:
            o_tol = None if other == "full" else tol
            both = [s for s in seeds if (this, tol, s) in by and (other, o_tol, s) in by]
            for metric in ("r2", "mse"):
                diffs = [by[(this, tol, s)][metric] - by[(other, o_tol, s)][metric] for s in both]
                if diffs:
                    mean, ci = paired_t_interval(diffs)
                    row[f"{name}_{metric}"] = {"mean": mean, "ci95": ci, "diffs": diffs, "n_seeds": len(diffs)}
        paired.append(row)
    return {"summary": summary, "paired": paired}


def delay_command(args, overrides: dict, *, train: bool) -> int:
    """``lti-reduce train|sweep --task delay``: build the sweep from the parsed options, run it, print the table.

    ``train`` runs one seed (``--seed``) at one tolerance (``--tol``): the full, compressed and
    from-scratch models of that seed. The dataset options (``--dataset``, ``--data-dir``,
    ``--mnist1d-test``) do not apply and are refused when given.
    """
    from lti_reduce._cli import UserError

    from .cli import run_and_print

    if args.dataset != "mnist1d" or args.data_dir is not None or "mnist1d_test" in overrides:
        raise UserError("--task delay generates its own data: drop --dataset, --data-dir and --mnist1d-test.")
    sweep = DelaySweepConfig.quick() if args.quick else DelaySweepConfig()
    drop = {"dataset", "data_dir", "mnist1d_test", "seed", "tol"}
    base = replace(sweep.base, **{k: v for k, v in overrides.items() if k not in drop})
    if train:
        seeds = (overrides.get("seed", sweep.base.seed if not args.quick else sweep.seeds[0]),)
        tols = (overrides.get("tol", sweep.tols[0]),)
    else:
        seeds, tols = args.seeds or sweep.seeds, args.tols or sweep.tols
    sweep = replace(sweep, base=base, seeds=seeds, tols=tols)
    return run_and_print(lambda: run_delay_sweep(sweep), format_delay_table, base.out)
