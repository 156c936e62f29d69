"""Timing that means something on a shared machine: step times of several models measured in turn.

On a machine shared with other jobs the wall clock of whole runs minutes apart drifts by
10-50% (and by more when the cores are oversubscribed); only ratios of step times measured
interleaved, in one process, within seconds of each other, compare state sizes.
"""

from __future__ import annotations

import copy
import os
import platform
import time

import numpy as np
import torch

from ..data import SequenceDataset
from .config import ExperimentConfig
from .loop import adamw, param_groups, sync, train_step

__all__ = ["environment", "interleaved_step_times", "loadavg"]


def loadavg():
    """The machine's 1/5/15-minute load averages, or ``None`` where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def environment(device: torch.device) -> dict:
    """Device, versions, core count, torch threads and load at the start (for ``results.json``)."""
    env = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "loadavg_start": loadavg()}
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
    device = device or next(next(iter(models.values())).parameters()).device
    bs = min(config.batch_size, len(data.y_train))
    gen = torch.Generator().manual_seed(config.seed + 2)
    batches = [torch.randperm(len(data.y_train), generator=gen)[:bs].to(device) for _ in range(steps_per_round)]
    work = {}
    for name, model in models.items():
        clone = copy.deepcopy(model).train()
        work[name] = (clone, adamw(param_groups(clone, config), config))

    def timed(clone, optimizer) -> float:
        sync(device)
        start = time.perf_counter()
        for idx in batches:
            train_step(clone, optimizer, data.x_train[idx], data.y_train[idx], config)
        sync(device)
        return 1000.0 * (time.perf_counter() - start) / len(batches)

    times: dict[str, list[float]] = {name: [] for name in work}
    names = list(work)
    for r in range(rounds + 1):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotated: no model always follows another
            ms = timed(*work[name])
            if r > 0:  # round 0 warms up
                times[name].append(ms)
    return {name: float(np.median(v)) for name, v in times.items()}
