"""The experiment's configuration: every option of ``lti-reduce train`` and its checks.

:class:`ExperimentConfig` defines one three-way comparison (full size, compressed in training,
from scratch at the compressed size); :func:`cut_steps` and :func:`total_steps` turn it into
the steps of a run, and :func:`resolve_device` into a device.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..scan import MODES
from ..schedule import CompressionSchedule

__all__ = ["ConfigError", "ExperimentConfig", "MODELS", "RUNS", "RUN_TITLES", "check_config", "cut_steps",
           "resolve_device", "total_steps"]

RUNS = ("baseline", "compressed", "scratch")
RUN_TITLES = {"baseline": "(1) baseline, full size", "compressed": "(2) compressed in training",
              "scratch": "(3) from scratch at (2)'s size"}

#: Layer names ``--model`` accepts; :func:`adapters.torch.experiment.models.layer_class` says which exist.
MODELS = ("lru", "s5", "s4d", "selective")


class ConfigError(ValueError):
    """An experiment option that cannot work (the message says which and what to use instead)."""


@dataclass
class ExperimentConfig:
    """Everything that defines one comparison; the defaults are ``lti-reduce train``'s.

    Attributes
    ----------
    dataset, data_dir, out
        Dataset name (:data:`adapters.torch.data.DATASETS`), its directory (the cache for
        ``mnist1d``), and the output directory for ``results.json`` and the plots.
    mnist1d_test
        Test examples of MNIST-1D (default 10000): the generator is called once with
        ``num_samples = 4000 + mnist1d_test`` (seed 42), giving 4000 training sequences and this
        many test sequences, so that accuracies carry about 0.17 points of binomial noise instead
        of 0.55 on the published 1000. ``None``: the published 4000/1000 split.
    model
        The layer of every block: ``"lru"`` (:class:`adapters.torch.LRU`); other names of
        :data:`MODELS` only where the library has that layer.
    d_model, d_state, n_layers, dropout
        Width, initial state size (complex modes per layer), number of blocks, dropout.
    r_min, r_max, max_phase
        LRU eigenvalue initialization (moduli on a ring, phases in ``[0, max_phase)``).
    mode, chunk_size
        LRU recurrence algorithm (see :mod:`adapters.torch.scan`; ``None``: ``"chunked"`` on a
        CPU, the fastest there for short sequences, and the layer's ``"auto"`` elsewhere) and
        the chunk length of ``"chunked"`` (``None``: :func:`~adapters.torch.experiment.models.default_chunk_size`).
    epochs, steps
        Length of every run (``steps`` wins when given).
    batch_size, lr, ssm_lr, weight_decay, warmup_frac, grad_clip
        AdamW; ``ssm_lr`` (no weight decay) for each layer's recurrence: the LRU's ``nu_log, theta,
        gamma_log``, S4D's ``log_A_real, A_imag, log_dt``, S5's ``Lambda_re_log, Lambda_im, log_dt``;
        linear warm-up over ``warmup_frac`` of the steps, then cosine decay to 0.
    tol
        Fraction of each layer's HSV sum that one cut may drop (``compress_(tol=)``).
    cuts, n_cuts, cut_window
        Explicit steps at which (2) cuts; if ``cuts`` is ``None``, ``n_cuts`` steps spread
        evenly over the first ``cut_window`` fraction of the run. Default: one cut at 10% of the
        steps. Four cuts there, each dropping ``tol`` of the energy left (CompreSSM's kind of
        schedule), end much smaller and below the same size trained from scratch at ``tol`` >= 0.2;
        measured with ``lti-reduce sweep`` (MNIST-1D, 40 epochs, seeds 0-2, paired by seed),
        compressed minus scratch at tol 0.2 / 0.3: four cuts -1.7 [-7.7, +4.3] / -4.6 [-16.8, +7.5]
        points, one cut +0.2 [-0.9, +1.4] / +1.9 [+0.3, +3.5].
    min_shrink
        A layer is cut only if it shrinks by at least this fraction.
    rewarm_steps
        After a cut, the learning rate of the replaced (LRU) parameters ramps up again over
        this many steps (their Adam moments restart; see
        :func:`adapters.torch.experiment.loop.lr_lambdas`).
    equalize_modes
        After each cut, rescale every kept mode's state so that its stored ``B`` row and ``C``
        column have equal norms (map-exact; see
        :func:`adapters.torch.experiment.loop.equalize_mode_scales_`).
    seed, device, threads
        Random seed; ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda[:N]"``; CPU threads
        (``None``: torch's default; the previous value is restored afterwards).
    progress, runs, n_train, n_test
        tqdm bars (shown only when stderr is a terminal); which of ``baseline, compressed, scratch`` to run; use only the first
        ``n_train``/``n_test`` examples.
    """

    dataset: str = "mnist1d"
    data_dir: str | None = None
    out: str = "lti_reduce_run"
    mnist1d_test: int | None = 10000
    model: str = "lru"
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
    n_cuts: int = 1
    cut_window: float = 0.1
    min_shrink: float = 0.05
    rewarm_steps: int = 20
    equalize_modes: bool = True
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
        extra threads only wait for each other. The published 1000-example test split.
        """
        base = dict(d_model=16, d_state=32, n_layers=2, epochs=1, steps=40, batch_size=50, lr=5e-3, tol=0.1,
                    cuts=(5, 10), n_train=1000, n_test=500, dropout=0.0, threads=1, rewarm_steps=3,
                    mnist1d_test=None)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cuts"] = None if self.cuts is None else list(self.cuts)
        d["runs"] = list(self.runs)
        return d


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
    default run).
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
    window = max(1, int(round(config.cut_window * steps)))
    if config.n_cuts > window:
        raise ConfigError(f"{config.n_cuts} cuts do not fit in the first {window} step(s) ({config.cut_window:g} of "
                          f"{steps} steps): give fewer cuts or a wider window (--schedule K@F), more steps, or the "
                          "steps themselves (--cuts).")
    schedule = CompressionSchedule(steps, window=config.cut_window, num_cuts=config.n_cuts, tol=config.tol)
    return [c for c in schedule.steps if c < steps]


def check_config(config: ExperimentConfig) -> None:
    """Raise :class:`ConfigError` for any option that cannot work (before anything runs)."""
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
    if config.mnist1d_test is not None and (not isinstance(config.mnist1d_test, (int, np.integer))
                                            or config.mnist1d_test < 10):
        raise ConfigError(f"mnist1d_test must be an integer >= 10 (test examples to generate) or None for the "
                          f"published 1000, got {config.mnist1d_test!r}.")
    from .models import layer_class

    layer_class(config.model)  # raises ConfigError for a layer the library does not have
