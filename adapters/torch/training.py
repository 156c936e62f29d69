"""In-training compression, end to end: a deep LRU classifier and CompreSSM's three-run comparison.

CompreSSM (arXiv 2510.02823) trains a state-space model at a large state size and, a few
times during the first ~10% of the steps, cuts each layer's low-energy balanced states
with :func:`adapters.torch.compress_`; the rest of training runs at the small size.
:func:`run_comparison` measures what that buys against the two obvious alternatives:

1. ``baseline``: the full-size model trained for the whole run;
2. ``compressed``: the same model (same seed, same initialization, same batches) with the
   cuts, :func:`adapters.torch.compress_` keeping the optimizer consistent;
3. ``scratch``: a model built directly at the per-layer sizes that (2) ended with,
   trained from scratch for the whole run.

It reports test accuracy, final state size per layer, wall-clock training time (per run
and, for (2), per phase: before, during and after the cuts) and the speedup against
(1), writes ``results.json`` and PNG plots into the output directory, and shows tqdm
progress bars.

Timing covers the training loop (forward, backward, optimizer step, the ``compress_``
calls); the final test evaluation and plotting are outside it. Seeds are fixed, so two
runs with the same configuration on the same machine give the same numbers except
the times.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data import SequenceDataset, load_dataset
from .lru import LRU
from .protocol import compressible_layers
from .scan import MODES
from .schedule import CompressionSchedule

__all__ = ["ConfigError", "ExperimentConfig", "LRUBlock", "LRUClassifier", "RUNS", "build_model", "cut_steps",
           "default_chunk_size", "evaluate", "format_table", "interleaved_step_times", "resolve_device",
           "run_comparison", "save_plots", "train_run"]

RUNS = ("baseline", "compressed", "scratch")
RUN_TITLES = {"baseline": "(1) baseline, full size", "compressed": "(2) compressed in training",
              "scratch": "(3) from scratch at (2)'s size"}

# The recurrence parameters of an LRU: a lower learning rate and no weight decay (Orvieto et al. 2023).
_RECURRENT = ("nu_log", "theta", "gamma_log")


class ConfigError(ValueError):
    """An experiment option that cannot work (the message says which and what to use instead)."""


@dataclass
class ExperimentConfig:
    """Everything that defines one comparison; the defaults are the README's run.

    The defaults were tuned on a 2-core CPU so that the three runs together take about
    5 minutes (measured: 4-5 minutes on a quiet machine, up to about 11 on one shared with
    other jobs) and show the CompreSSM effect on MNIST-1D; see ``lti-reduce train --help``.

    Attributes
    ----------
    dataset, data_dir, out
        Dataset name (:data:`adapters.torch.data.DATASETS`), its directory (the cache for
        ``mnist1d``), and the output directory for ``results.json`` and the plots.
    d_model, d_state, n_layers, dropout
        Width, initial LRU state size (complex modes per layer), number of blocks, dropout.
    r_min, r_max, max_phase
        LRU eigenvalue initialization (moduli on a ring, phases in ``[0, max_phase)``).
    mode, chunk_size
        LRU recurrence algorithm (see :mod:`adapters.torch.scan`; ``None``: ``"chunked"`` on a
        CPU, the fastest there for short sequences, and the layer's ``"auto"`` elsewhere) and
        the chunk length of ``"chunked"`` (``None``: :func:`default_chunk_size`).
    epochs, steps
        Length of every run (``steps`` wins when given).
    batch_size, lr, ssm_lr, weight_decay, warmup_frac, grad_clip
        AdamW; ``ssm_lr`` for the LRU's ``nu_log, theta, gamma_log`` (no weight decay);
        linear warm-up over ``warmup_frac`` of the steps, then cosine decay to 0.
    tol
        Fraction of each layer's HSV sum that one cut may drop (``compress_(tol=)``).
    cuts, n_cuts, cut_window
        Explicit steps at which (2) cuts; if ``cuts`` is ``None``, ``n_cuts`` steps spread
        evenly over the first ``cut_window`` fraction of the run (the CompreSSM schedule).
    min_shrink
        A layer is cut only if it shrinks by at least this fraction.
    rewarm_steps
        After a cut, the learning rate of the replaced (LRU) parameters ramps up again over
        this many steps (their Adam moments restart; see :func:`_lr_lambdas`).
    seed, device, threads
        Random seed; ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda[:N]"``; CPU threads
        (``None``: torch's default; the previous value is restored afterwards).
    progress, runs, n_train, n_test
        tqdm bars; which of ``baseline, compressed, scratch`` to run; use only the first
        ``n_train``/``n_test`` examples.
    """

    dataset: str = "mnist1d"
    data_dir: str | None = None
    out: str = "lti_reduce_run"
    d_model: int = 32
    d_state: int = 256
    n_layers: int = 2
    dropout: float = 0.0
    r_min: float = 0.0
    r_max: float = 0.99
    max_phase: float = 2 * math.pi
    mode: str | None = None
    chunk_size: int | None = None
    epochs: int = 60
    steps: int | None = None
    batch_size: int = 64
    lr: float = 3e-3
    ssm_lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    grad_clip: float | None = 1.0
    tol: float = 0.05
    cuts: tuple[int, ...] | None = None
    n_cuts: int = 4
    cut_window: float = 0.1
    min_shrink: float = 0.05
    rewarm_steps: int = 20
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    runs: tuple[str, ...] = RUNS
    n_train: int | None = None
    n_test: int | None = None

    @classmethod
    def quick(cls, **overrides) -> "ExperimentConfig":
        """A smoke-test configuration that runs all three models in seconds on a CPU.

        One CPU thread: tensors this small gain nothing from more, and on a busy machine
        extra threads only wait for each other.
        """
        base = dict(d_model=16, d_state=32, n_layers=2, epochs=1, steps=40, batch_size=50, lr=5e-3, tol=0.1,
                    cuts=(5, 10), n_train=1000, n_test=500, dropout=0.0, threads=1,
                    rewarm_steps=3)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cuts"] = None if self.cuts is None else list(self.cuts)
        d["runs"] = list(self.runs)
        return d


# --------------------------------------------------------------------------------------------------- model
class LRUBlock(nn.Module):
    """``x + dropout(GLU(W gelu(LRU(norm(x)))))``: the LRU paper's residual block (pre-norm)."""

    def __init__(self, d_model: int, d_state: int, *, dropout: float = 0.0, **lru_kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.lru = LRU(d_model, d_state, **lru_kwargs)
        self.mix = nn.Linear(d_model, 2 * d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.gelu(self.lru(self.norm(x)))
        return x + self.dropout(F.glu(self.mix(z), dim=-1))


class LRUClassifier(nn.Module):
    """Sequence classifier: linear encoder, LRU blocks, final norm, mean over time, linear decoder.

    Parameters
    ----------
    in_features, n_classes : int
    d_model : int
    d_state : int or sequence of int
        State size of every block, or one per block (a sequence sets ``n_layers``).
    n_layers : int
    dropout : float
    **lru_kwargs
        Passed to :class:`adapters.torch.LRU` (``r_min``, ``r_max``, ``max_phase``, ``mode``).

    Input ``(batch, L, in_features)``, output logits ``(batch, n_classes)``.
    """

    def __init__(self, in_features: int, n_classes: int, *, d_model: int, d_state, n_layers: int | None = None,
                 dropout: float = 0.0, **lru_kwargs):
        super().__init__()
        sizes = [int(d_state)] * int(n_layers or 1) if isinstance(d_state, (int, np.integer)) else list(d_state)
        if n_layers is not None and len(sizes) != n_layers:
            raise ConfigError(f"got {len(sizes)} state sizes for n_layers={n_layers}; give one per layer.")
        self.encoder = nn.Linear(in_features, d_model)
        self.blocks = nn.ModuleList(LRUBlock(d_model, n, dropout=dropout, **lru_kwargs) for n in sizes)
        self.norm = nn.LayerNorm(d_model)
        self.decoder = nn.Linear(d_model, n_classes)

    @property
    def state_dims(self) -> list[int]:
        """Current state size of each block's LRU."""
        return [block.lru.state_dim for block in self.blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        for block in self.blocks:
            h = block(h)
        return self.decoder(self.norm(h).mean(dim=-2))


def build_model(config: ExperimentConfig, data: SequenceDataset, d_state=None, *,
                device: torch.device | str = "cpu") -> LRUClassifier:
    """The classifier of ``config`` for ``data`` (``d_state`` overrides the configured size).

    ``device`` only picks the LRU's default ``mode``; the model is built on the CPU.
    """
    mode = config.mode or ("chunked" if torch.device(device).type == "cpu" else "auto")
    return LRUClassifier(data.in_features, data.n_classes, d_model=config.d_model,
                         d_state=config.d_state if d_state is None else d_state,
                         n_layers=config.n_layers if d_state is None or isinstance(d_state, int) else None,
                         dropout=config.dropout, r_min=config.r_min, r_max=config.r_max,
                         max_phase=config.max_phase, mode=mode,
                         chunk_size=config.chunk_size or default_chunk_size(data.seq_len))


def default_chunk_size(length: int) -> int:
    """Chunk length of the LRU's ``"chunked"`` scan for sequences of ``length`` steps.

    A divisor of ``length`` (a ragged tail runs step by step) near ``sqrt(2 L)``, between
    4 and 32; long sequences get about the layer's own default (32). Measured on the 2-core
    CPU this was tuned on, L = 40 (MNIST-1D), batch 64, d_model 64, forward + backward of one
    layer at 8 / 32 / 64 / 256 modes: chunk 8: 4.3 / 5.1 / 12.8 / 26.4 ms; chunk 10:
    2.9 / 5.0 / 11.3 / 29.1 ms; chunk 32 (the layer's default): 3.4 / 7.3 / 10.3 / 35.0 ms;
    the associative scan (``mode="auto"`` at this length): 3.8 / 5.6 / 13.6 / 47.0 ms.
    """
    target = math.sqrt(2 * length)
    divisors = [d for d in range(4, 33) if length % d == 0]
    if not divisors:
        return min(32, max(1, length))
    return min(divisors, key=lambda d: (abs(d - target), -d))


def _param_groups(model: nn.Module, config: ExperimentConfig) -> list[dict]:
    """AdamW groups: weight decay on matrices only; the LRU's parameters in groups of their own.

    The ``"lru*"`` groups hold the parameters of the compressible layers, which a cut
    replaces; their learning rate is warmed up again after every cut (see :func:`_lr_lambdas`).
    ``nu_log, theta, gamma_log`` (the LRU's recurrence) get ``ssm_lr`` and no weight decay.
    """
    groups = {"decay": [], "no_decay": [], "lru": [], "lru_no_decay": [], "lru_recurrent": []}
    lru_params = {id(p) for _, layer in compressible_layers(model) for p in layer.parameters()}
    for name, p in model.named_parameters():
        prefix = "lru" if id(p) in lru_params else ""
        if name.rsplit(".", 1)[-1] in _RECURRENT and prefix:
            groups["lru_recurrent"].append(p)
        elif p.dim() >= 2:
            groups[prefix or "decay"].append(p)
        else:
            groups[f"{prefix}_no_decay" if prefix else "no_decay"].append(p)
    settings = {"decay": {"weight_decay": config.weight_decay}, "no_decay": {"weight_decay": 0.0},
                "lru": {"weight_decay": config.weight_decay}, "lru_no_decay": {"weight_decay": 0.0},
                "lru_recurrent": {"weight_decay": 0.0, "lr": config.ssm_lr}}
    return [{"params": params, "name": name, **settings[name]} for name, params in groups.items() if params]


def _adamw(groups: list[dict], config: ExperimentConfig) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this torch has it for the parameters' device.

    The fused kernel (CPU since torch 2.4) updates all parameters in one pass: 0.4 ms a step
    instead of 1.4 ms for the per-tensor loop at 105 modes on the 2-core CPU, a cost that is
    the same for every state size and so hides part of what a smaller state saves. Older
    torch takes the multi-tensor (``foreach``) loop; the update rule is the same.
    """
    try:
        return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), foreach=True)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                config: ExperimentConfig) -> torch.Tensor:
    """One AdamW update on the batch ``(x, y)`` (cross-entropy, gradient clipping); returns the loss."""
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip, foreach=True)
    optimizer.step()
    return loss


def _lr_lambdas(groups: list[dict], steps: int, config: ExperimentConfig, cuts) -> list:
    """Per-group learning-rate factors: warm-up, cosine decay, and a re-warm-up after each cut.

    A cut replaces the LRU's parameters and ``compress_`` drops their Adam moments (they
    belong to the old basis). With fresh moments Adam's first update moves every element by
    the full learning rate in the sign of its gradient; at the peak rate that undoes part of
    what was learned (measured: loss 1.97 -> 2.46 in one step on MNIST-1D). Ramping the
    rate of the replaced parameters up again over ``rewarm_steps`` avoids that (1.97 -> 1.94).
    """
    warmup = max(1, int(round(config.warmup_frac * steps)))
    cuts = sorted(cuts)
    rewarm = max(0, int(config.rewarm_steps))

    def warmup_cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    def after_cut(step: int) -> float:
        factor = warmup_cosine(step)
        last = max((c for c in cuts if c <= step), default=None)
        if last is not None and rewarm:
            factor *= min(1.0, (step - last + 1) / rewarm)
        return factor

    return [after_cut if g["name"].startswith("lru") else warmup_cosine for g in groups]


# --------------------------------------------------------------------------------------------------- setup
def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; an unavailable device raises :class:`ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"unknown device {name!r}; use --device cpu, cuda, cuda:N or auto.") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} is not available (this PyTorch {torch.__version__} sees no CUDA GPU); "
                              "use --device cpu (or auto).")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s); "
                              f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}.")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"device {name!r} is not available; use --device cpu.")
    elif device.type != "cpu":
        raise ConfigError(f"device {name!r} is not supported here; use --device cpu, cuda or auto.")
    return device


def total_steps(config: ExperimentConfig, n_train: int) -> int:
    """Optimizer steps of every run: ``steps``, or ``epochs * ceil(n_train / batch_size)``.

    Every step takes a full batch (each shuffled pass drops its last partial batch), so
    ``epochs`` counts slightly more than that many passes over the data (60.97 for the
    default run); the README's measured results use exactly this count.
    """
    if config.steps is not None:
        return int(config.steps)
    return int(config.epochs) * max(1, math.ceil(n_train / config.batch_size))


def cut_steps(config: ExperimentConfig, steps: int) -> list[int]:
    """Steps at which the compressed run cuts (after that many optimizer updates).

    The CompreSSM schedule of :class:`adapters.torch.CompressionSchedule`: ``n_cuts``
    cuts spread evenly over the first ``cut_window * steps`` steps (the last one at the
    window's end), unless ``cuts`` lists them explicitly.
    """
    if config.cuts is not None:
        cuts = sorted({int(c) for c in config.cuts})
        bad = [c for c in cuts if not 0 < c < steps]
        if bad:
            raise ConfigError(f"cut steps must lie in 1..{steps - 1} (the run has {steps} steps), got {bad}; "
                              "choose earlier cuts or more steps.")
        return cuts
    if config.n_cuts == 0:
        return []
    schedule = CompressionSchedule(steps, window=config.cut_window, num_cuts=config.n_cuts, tol=config.tol)
    return [c for c in schedule.steps if c < steps]


def _check_config(config: ExperimentConfig) -> None:
    positive = {"d_model": config.d_model, "d_state": config.d_state, "n_layers": config.n_layers,
                "batch_size": config.batch_size, "epochs": config.epochs}
    for name, value in positive.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    if config.steps is not None and (not isinstance(config.steps, (int, np.integer)) or config.steps < 2):
        raise ConfigError(f"steps must be an integer >= 2, got {config.steps!r}.")
    if not 0.0 < config.tol < 1.0:
        raise ConfigError(f"tol must lie strictly between 0 and 1 (fraction of HSV energy one cut may drop, e.g. "
                          f"0.05), got {config.tol!r}.")
    if not 0.0 < config.cut_window <= 1.0 or config.n_cuts < 0:
        raise ConfigError(f"need 0 < cut_window <= 1 and n_cuts >= 0, got {config.cut_window!r}, {config.n_cuts!r}.")
    unknown = [r for r in config.runs if r not in RUNS]
    if unknown or not config.runs:
        raise ConfigError(f"runs must be a non-empty subset of {', '.join(RUNS)}, got {list(config.runs)}.")
    if "scratch" in config.runs and "compressed" not in config.runs:
        raise ConfigError("the scratch run is built at the sizes the compressed run reaches; include 'compressed'.")
    if config.mode is not None and config.mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES} or None, got {config.mode!r}.")
    if config.threads is not None and config.threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {config.threads!r}.")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------------- training
@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` on ``(x, y)`` in eval mode."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(y), batch_size):
        logits = model(x[i:i + batch_size])
        loss += float(F.cross_entropy(logits, y[i:i + batch_size], reduction="sum"))
        correct += int((logits.argmax(-1) == y[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / len(y), loss / len(y)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_run(model: LRUClassifier, data: SequenceDataset, config: ExperimentConfig, *, steps: int,
              cuts: list[int] = (), label: str = "", device: torch.device | None = None) -> dict:
    """Train ``model`` for ``steps`` AdamW steps, cutting with ``compress_`` at ``cuts``.

    Parameters
    ----------
    model : LRUClassifier
        Trained in place (and compressed in place at the cuts).
    data : SequenceDataset
        Already on ``device``.
    config : ExperimentConfig
        Optimizer, batch size, seed (for the batch order), ``tol`` and ``min_shrink``.
    steps : int
    cuts : list of int
        After this many optimizer updates, a :class:`adapters.torch.CompressionSchedule`
        calls ``compress_(model, tol=config.tol, optimizer=..., min_shrink=config.min_shrink)``.
    label : str
        Progress-bar label.

    Returns
    -------
    dict
        ``train_time_s`` (wall clock of the loop, cuts included), ``cpu_time_s``,
        ``compress_time_s``, ``phases`` (wall clock between cuts, with the state sizes
        trained at), ``cuts`` (per cut: step, seconds, per-layer report with HSVs),
        ``loss`` (training loss per step), ``state_history`` (``[step, sizes]`` after each
        change), ``final_train_loss``.
    """
    device = device or next(model.parameters()).device
    optimizer = _adamw(_param_groups(model, config), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambdas(optimizer.param_groups, steps, config, cuts))
    order = torch.Generator().manual_seed(config.seed + 1)  # batch order: identical for every run
    n = len(data.y_train)
    bs = min(config.batch_size, n)
    per_epoch = n // bs  # drop the last partial batch: every step has the same cost
    schedule = CompressionSchedule(steps, steps=cuts, tol=config.tol, min_shrink=config.min_shrink) if cuts else None
    losses: list[float] = []
    cut_records, phases = [], []
    state_history = [[0, model.state_dims]]
    compress_time = 0.0

    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are optional
        tqdm = None
    bar = tqdm(total=steps, desc=label, unit="step", leave=True, dynamic_ncols=True, file=sys.stderr,
               disable=not config.progress) if tqdm is not None else None

    model.train()
    _sync(device)
    start = phase_start = time.perf_counter()
    cpu_start = time.process_time()
    phase_step = 0
    perm = None
    for step in range(steps):
        if schedule is not None and schedule.should_cut(step):  # ``step`` updates are done
            _sync(device)
            now = time.perf_counter()
            phases.append({"start_step": phase_step, "end_step": step, "state_dims": model.state_dims,
                           "time_s": now - phase_start})
            report = schedule.step(step, model, optimizer)
            _sync(device)
            took = time.perf_counter() - now
            compress_time += took
            cut_records.append({"step": step, "time_s": took, "state_before": report.state_before,
                                "state_after": report.state_after,
                                "layers": [{"name": x.name, "before": x.before, "after": x.after,
                                            "hsv": [float(v) for v in x.hsv], "energy_kept": float(x.energy_kept),
                                            "error_bound": float(x.error_bound), "compressed": bool(x.compressed)}
                                           for x in report]})
            state_history.append([step, model.state_dims])
            phase_start, phase_step = time.perf_counter(), step
            if bar is not None:
                bar.set_postfix_str(f"cut: state {report.state_before}->{report.state_after}")
        i = step % per_epoch
        if i == 0:
            perm = torch.randperm(n, generator=order).to(device)
        idx = perm[i * bs:(i + 1) * bs]
        loss = _train_step(model, optimizer, data.x_train[idx], data.y_train[idx], config)
        scheduler.step()
        losses.append(loss.detach())
        if bar is not None:
            bar.update(1)
            if step % 20 == 0 or step == steps - 1:
                bar.set_postfix_str(f"loss {loss.item():.3f} state {sum(model.state_dims)}")
    _sync(device)
    end = time.perf_counter()
    cpu_time = time.process_time() - cpu_start
    phases.append({"start_step": phase_step, "end_step": steps, "state_dims": model.state_dims,
                   "time_s": end - phase_start})
    if bar is not None:
        bar.close()
    losses_f = [float(v) for v in torch.stack(losses).cpu()]
    if not all(math.isfinite(v) for v in losses_f):
        raise FloatingPointError(f"{label}: the training loss became NaN/Inf; lower the learning rate (--lr).")
    return {"train_time_s": end - start, "cpu_time_s": cpu_time, "compress_time_s": compress_time,
            "steps": steps, "step_time_ms": 1000.0 * (end - start) / steps, "phases": phases, "cuts": cut_records,
            "loss": losses_f, "state_history": state_history,
            "final_train_loss": float(np.mean(losses_f[-max(1, steps // 20):]))}


# --------------------------------------------------------------------------------------------------- comparison
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
        What ``results.json`` holds: ``config``, ``dataset``, ``environment``, ``runs``
        (per run: ``test_accuracy``, ``state_dims``, ``total_state``, ``train_time_s``,
        ``phases``, ``cuts``, ...), ``speedup`` (baseline time / run time), ``targets``
        (the three checks of the README), ``step_time_interleaved_ms`` and
        ``step_speedup_interleaved`` (each trained model's step time, timed in turn by
        :func:`interleaved_step_times`; with the baseline and another run), ``files``.

    Raises
    ------
    ConfigError
        Invalid options, an unavailable device.
    adapters.torch.data.DatasetError
        The dataset cannot be loaded (message says why and what to do).
    """
    _check_config(config)
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
    out = Path(config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output directory '{out}' ({exc.strerror}); "
                          "choose another --out.") from exc

    if data is None:
        data = load_dataset(config.dataset, config.data_dir)
    if config.n_train is not None or config.n_test is not None:
        data = data.subset(config.n_train or len(data.y_train), config.n_test or len(data.y_test))
    data = SequenceDataset(data.x_train.to(device), data.y_train.to(device), data.x_test.to(device),
                           data.y_test.to(device), data.name)
    steps = total_steps(config, len(data.y_train))
    if steps < 2:
        raise ConfigError(f"the run would have {steps} step(s); give more --epochs or --steps.")
    cuts = cut_steps(config, steps)

    results: dict = {
        "config": config.to_dict(),
        "dataset": {"name": data.name, "n_train": len(data.y_train), "n_test": len(data.y_test),
                    "seq_len": data.seq_len, "in_features": data.in_features, "n_classes": data.n_classes},
        "environment": _environment(device),
        "steps": steps,
        "cut_steps": cuts,
        "runs": {},
    }

    def one_run(name: str, d_state, run_cuts):
        _seed_everything(config.seed)
        model = build_model(config, data, d_state, device=device).to(device)
        record = train_run(model, data, config, steps=steps, cuts=run_cuts, label=RUN_TITLES[name], device=device)
        acc, loss = evaluate(model, data.x_test, data.y_test)
        record.update({"test_accuracy": acc, "test_loss": loss, "state_dims": model.state_dims,
                       "total_state": sum(model.state_dims),
                       "parameters": sum(p.numel() for p in model.parameters())})
        results["runs"][name] = record
        models[name] = model
        return model

    models: dict[str, nn.Module] = {}
    if "baseline" in config.runs:
        one_run("baseline", None, [])
    if "compressed" in config.runs:
        compressed = one_run("compressed", None, cuts)
        if "scratch" in config.runs:
            one_run("scratch", compressed.state_dims, [])

    runs = results["runs"]
    if "baseline" in runs:
        base = runs["baseline"]["train_time_s"]
        results["speedup"] = {name: base / r["train_time_s"] for name, r in runs.items()}
        if len(models) > 1:
            step_ms = interleaved_step_times(models, data, config, device=device)
            results["step_time_interleaved_ms"] = step_ms
            results["step_speedup_interleaved"] = {name: step_ms["baseline"] / ms for name, ms in step_ms.items()}
    results["targets"] = _targets(runs, results.get("speedup", {}))
    results["files"] = {"results": str(out / "results.json")}
    results["files"].update(save_plots(results, out))
    results["environment"]["loadavg_end"] = _loadavg()
    results["wall_time_s"] = time.perf_counter() - wall_start
    with open(out / "results.json", "w") as f:
        json.dump(results, f, indent=1)
    return results


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _environment(device: torch.device) -> dict:
    env = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "loadavg_start": _loadavg()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def interleaved_step_times(models: dict, data: SequenceDataset, config: ExperimentConfig, *, rounds: int = 6,
                           steps_per_round: int = 10, device: torch.device | None = None) -> dict:
    """Training-step time of each model at its final size, measured interleaved (ms, median over rounds).

    Each round times ``steps_per_round`` AdamW steps of every model in turn (the order rotates
    from round to round), on copies (the trained models are not touched) and the same batches,
    so all models see the same machine state. On a shared machine the wall clock of whole runs
    minutes apart drifts by 10-50%; this ratio of step times does not, and it isolates what the
    state size costs from when each run happened to be scheduled.

    Parameters
    ----------
    models : dict of str to nn.Module
        The trained models by run name.
    data : SequenceDataset
        Batches come from its training split.
    config : ExperimentConfig
        Batch size, optimizer settings, gradient clipping and seed.
    rounds, steps_per_round : int
        After one untimed warm-up round.

    Returns
    -------
    dict of str to float
        Median milliseconds per step, by run name.
    """
    import copy

    device = device or next(next(iter(models.values())).parameters()).device
    bs = min(config.batch_size, len(data.y_train))
    gen = torch.Generator().manual_seed(config.seed + 2)
    batches = [torch.randperm(len(data.y_train), generator=gen)[:bs].to(device) for _ in range(steps_per_round)]
    work = {}
    for name, model in models.items():
        clone = copy.deepcopy(model).train()
        work[name] = (clone, _adamw(_param_groups(clone, config), config))

    def timed(clone, optimizer) -> float:
        _sync(device)
        start = time.perf_counter()
        for idx in batches:
            _train_step(clone, optimizer, data.x_train[idx], data.y_train[idx], config)
        _sync(device)
        return 1000.0 * (time.perf_counter() - start) / len(batches)

    times: dict[str, list[float]] = {name: [] for name in work}
    names = list(work)
    for r in range(rounds + 1):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotated: no model always follows another
            ms = timed(*work[name])
            if r > 0:  # round 0 warms up
                times[name].append(ms)
    return {name: float(np.median(v)) for name, v in times.items()}


def _targets(runs: dict, speedup: dict) -> dict:
    targets = {}
    if "baseline" in runs and "compressed" in runs:
        gap = 100.0 * (runs["baseline"]["test_accuracy"] - runs["compressed"]["test_accuracy"])
        targets["compressed_within_1pt_of_baseline"] = {"gap_points": gap, "met": gap <= 1.0}
        targets["compressed_2x_faster_than_baseline"] = {"speedup": speedup["compressed"],
                                                         "met": speedup["compressed"] >= 2.0}
    if "compressed" in runs and "scratch" in runs:
        gain = 100.0 * (runs["compressed"]["test_accuracy"] - runs["scratch"]["test_accuracy"])
        targets["compressed_beats_scratch"] = {"gain_points": gain, "met": gain > 0.0}
    return targets


# --------------------------------------------------------------------------------------------------- reporting
def _sizes(dims: list[int]) -> str:
    return ",".join(map(str, dims)) if len(set(dims)) > 1 else f"{dims[0]} x{len(dims)}"


def format_table(results: dict) -> str:
    """The comparison as a text table (what ``lti-reduce train`` prints)."""
    runs, speedup = results["runs"], results.get("speedup", {})
    head = f"{'run':<32} {'test acc':>8}  {'state per layer':<20} {'total':>6} {'train time':>11} {'speedup':>8}"
    lines = [head, "-" * len(head)]
    for name, r in runs.items():
        s = f"{speedup[name]:.2f}x" if name in speedup else "-"
        lines.append(f"{RUN_TITLES[name]:<32} {100 * r['test_accuracy']:>7.2f}%  {_sizes(r['state_dims']):<20} "
                     f"{r['total_state']:>6} {r['train_time_s']:>10.1f}s {s:>8}")
    if "compressed" in runs:
        r = runs["compressed"]
        lines.append("")
        lines.append(f"phases of (2) ({results['steps']} steps, cuts at steps {results['cut_steps']}):")
        for p in r["phases"]:
            lines.append(f"  steps {p['start_step']:>6}-{p['end_step']:<6} state {_sizes(p['state_dims']):<20} "
                         f"{p['time_s']:>8.1f}s")
        lines.append(f"  compress_ calls: {len(r['cuts'])}, {r['compress_time_s']:.2f}s in total (included above)")
    if results.get("step_time_interleaved_ms"):
        ms, ratio = results["step_time_interleaved_ms"], results["step_speedup_interleaved"]
        lines.append("")
        lines.append("step time at the final size, the runs' models timed in turn (steadier than whole runs on a "
                     "shared machine):")
        lines.append("  " + ", ".join(f"{RUN_TITLES[name].split(' ')[0]} {ms[name]:.1f} ms ({ratio[name]:.2f}x)"
                                      for name in ms))
    if results.get("targets"):
        lines.append("")
        t = results["targets"]
        notes = []
        if "compressed_within_1pt_of_baseline" in t:
            x = t["compressed_within_1pt_of_baseline"]
            notes.append(f"(2) vs (1): {-x['gap_points']:+.2f} points [{'met' if x['met'] else 'MISSED'}: within 1]")
        if "compressed_beats_scratch" in t:
            x = t["compressed_beats_scratch"]
            notes.append(f"(2) vs (3): {x['gain_points']:+.2f} points [{'met' if x['met'] else 'MISSED'}: (2) better]")
        if "compressed_2x_faster_than_baseline" in t:
            x = t["compressed_2x_faster_than_baseline"]
            notes.append(f"speedup of (2): {x['speedup']:.2f}x [{'met' if x['met'] else 'MISSED'}: >= 2x]")
        lines.extend(notes)
    return "\n".join(lines)


def save_plots(results: dict, out: Path) -> dict:
    """Write ``hsv_spectra.png``, ``state_size.png`` and ``accuracy_vs_state.png``; return their paths.

    Uses matplotlib's object-oriented API with the Agg canvas (no display, no global
    backend change). Returns ``{}`` if matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return {}
    out = Path(out)
    files = {}
    runs = results["runs"]
    colors = {"baseline": "tab:blue", "compressed": "tab:red", "scratch": "tab:green"}

    def save(fig, name):
        FigureCanvasAgg(fig)
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
        files[name.removesuffix(".png")] = str(out / name)

    cuts = runs.get("compressed", {}).get("cuts", [])
    if cuts:
        n_layers = len(cuts[0]["layers"])
        cols = min(n_layers, 4)
        rows = math.ceil(n_layers / cols)
        fig = Figure(figsize=(3.6 * cols, 3.0 * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        cmap = __import__("matplotlib").colormaps["viridis"]
        for li in range(n_layers):
            ax = axes[li]
            for ci, cut in enumerate(cuts):
                layer = cut["layers"][li]
                h = np.asarray(layer["hsv"])
                h = h / h[0] if len(h) and h[0] > 0 else h
                color = cmap(ci / max(1, len(cuts) - 1))
                ax.semilogy(np.arange(1, len(h) + 1), np.maximum(h, 1e-16), color=color,
                            label=f"step {cut['step']}: {layer['before']}->{layer['after']}")
                if layer["compressed"]:
                    ax.axvline(2 * layer["after"], color=color, lw=0.8, ls="--")
            ax.set_title(cuts[0]["layers"][li]["name"], fontsize=9)
            ax.set_xlabel("balanced state (real order)")
            ax.set_ylabel("HSV / max HSV")
            ax.legend(fontsize=7, loc="upper right")
        for ax in axes[n_layers:]:
            ax.set_visible(False)
        fig.suptitle(f"Hankel singular values at each cut (tol={results['config']['tol']:g}; dashed: kept order)")
        save(fig, "hsv_spectra.png")

    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax_state, ax_loss = fig.subplots(1, 2)
    for name, r in runs.items():
        history = r["state_history"] + [[r["steps"], r["state_dims"]]]
        steps_ = [h[0] for h in history]
        totals = [sum(h[1]) for h in history]
        ax_state.step(steps_, totals, where="post", color=colors[name], label=RUN_TITLES[name])
        loss = np.asarray(r["loss"])
        k = max(1, len(loss) // 100)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        # Wall-clock axis: spread each phase's time evenly over its steps.
        t = np.zeros(len(loss))
        for p in r["phases"]:
            a, b = p["start_step"], p["end_step"]
            if b > a:
                offset = t[a - 1] if a > 0 else 0.0
                t[a:b] = offset + p["time_s"] * (np.arange(1, b - a + 1) / (b - a))
        ax_loss.plot(t[k - 1:], smooth, color=colors[name], label=RUN_TITLES[name])
    for c in results.get("cut_steps", []):
        ax_state.axvline(c, color="0.8", lw=0.8, zorder=0)
    ax_state.set_yscale("log")
    ax_state.set_xlabel("training step")
    ax_state.set_ylabel("total state size (complex modes)")
    ax_state.set_title("state size over training")
    ax_state.legend(fontsize=8)
    ax_loss.set_xlabel("wall-clock training time (s)")
    ax_loss.set_ylabel("training loss (moving average)")
    ax_loss.set_title("loss against time")
    ax_loss.legend(fontsize=8)
    save(fig, "state_size.png")

    fig = Figure(figsize=(5.5, 4.0), layout="constrained")
    ax = fig.subplots()
    for name, r in runs.items():
        ax.scatter([r["total_state"]], [100 * r["test_accuracy"]], color=colors[name], s=60, label=RUN_TITLES[name],
                   marker="o" if name != "scratch" else "s", zorder=3)
        ax.annotate(f"{100 * r['test_accuracy']:.1f}%, {r['train_time_s']:.0f}s", (r["total_state"],
                    100 * r["test_accuracy"]), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("total state size (complex modes, all layers)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{results['dataset']['name']}: accuracy vs state size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, "accuracy_vs_state.png")
    return files
