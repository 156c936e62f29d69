"""The training loop of every run: AdamW groups, the learning-rate schedule, the cuts, evaluation."""

from __future__ import annotations

import math
import random
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data import SequenceDataset
from ..layers.protocol import compressible_layers
from ..schedule import CompressionSchedule
from .config import ExperimentConfig

__all__ = ["adamw", "equalize_mode_scales_", "evaluate", "lr_lambdas", "param_groups", "predict", "seed_everything", "sync", "train_run",
           "train_step"]

# The recurrence parameters of an LRU: a lower learning rate and no weight decay (Orvieto et al. 2023).
# The recurrence of each layer (its eigenvalues and steps): the LRU's nu_log, theta, gamma_log; S4D's
# log_A_real, A_imag, log_dt; S5's Lambda_re_log, Lambda_im, log_dt (the papers' "SSM" learning rate, no decay).
_RECURRENT = ("nu_log", "theta", "gamma_log", "log_A_real", "A_imag", "Lambda_re_log", "Lambda_im", "log_dt")


def param_groups(model: nn.Module, config: ExperimentConfig) -> list[dict]:
    """AdamW groups: weight decay on matrices only; the SSM layers' parameters in groups of their own.

    The ``"lru*"`` groups hold the parameters of the compressible layers, which a cut
    re-bases; their learning rate is warmed up again after every cut (see :func:`lr_lambdas`).
    The recurrence of each layer (the LRU's ``nu_log, theta, gamma_log``; S4D's ``log_A_real, A_imag,
    log_dt``; S5's ``Lambda_re_log, Lambda_im, log_dt``) gets ``ssm_lr`` and no weight decay, as in the
    LRU, S4D and S5 papers' recipes.
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


def adamw(groups: list[dict], config: ExperimentConfig) -> torch.optim.AdamW:
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


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               config: ExperimentConfig) -> torch.Tensor:
    """One AdamW update on the batch ``(x, y)`` (gradient clipping); returns the loss.

    The loss is the cross-entropy for class labels (integer ``y``) and the mean squared error
    for real targets (floating ``y``, the delay task's ``(B, L, K)`` sequences).
    """
    out = model(x)
    loss = F.mse_loss(out, y) if y.is_floating_point() else F.cross_entropy(out, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip, foreach=True)
    optimizer.step()
    return loss


def lr_lambdas(groups: list[dict], steps: int, config: ExperimentConfig, cuts) -> list:
    """Per-group learning-rate factors: warm-up, cosine decay, and a re-warm-up after each cut.

    A cut re-bases the LRU's parameters and ``compress_`` drops their Adam moments (they
    belong to the old basis). With fresh moments Adam's first update moves every element by
    the full learning rate in the sign of its gradient; at the peak rate that undoes part of
    what was learned (measured: loss 1.97 -> 2.46 in one step on MNIST-1D). Ramping the
    rate of the re-based parameters up again over ``rewarm_steps`` avoids that (1.97 -> 1.94).
    """
    warmup = max(1, int(round(config.warmup_frac * steps)))
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


@torch.no_grad()
def equalize_mode_scales_(model: nn.Module) -> int:
    """Rescale every LRU mode's state so that its stored ``B`` row and ``C`` column have equal norms.

    ``x_i -> s_i x_i`` with ``s_i = sqrt(|C_i| / |b_i|)`` (``b_i`` the stored row ``B_re + i B_im``,
    ``C_i`` the column ``C_re + i C_im``) multiplies the row by ``s_i`` and divides the column by it:
    the layer's map is unchanged up to rounding (each mode is a separate first-order system). After a
    cut the balanced realization gives near-unit modes stored rows about ``1/gamma`` times larger
    than their columns; weight decay then shrinks the pair toward equal norms anyway, and Adam's
    per-element steps are far too small for the large factor and far too large for the small one.
    Measured on MNIST-1D (2 x LRU 256, 20 epochs, 10000 test examples, seeds 0-2, paired by seed):
    +2.9 points of final accuracy of the compressed model at tol 0.2 (per seed +4.3, +1.8, +2.5; 95%
    t-interval [-0.3, +6.1]) and +0.3 at tol 0.05 ([-2.4, +3.1]).

    Parameters are changed in place (the ``nn.Parameter`` objects stay). Returns the number of
    layers rescaled.
    """
    from ..layers.lru import LRU

    count = 0
    for module in model.modules():
        if not isinstance(module, LRU):
            continue
        b = torch.complex(module.B_re.double(), module.B_im.double())
        c = torch.complex(module.C_re.double(), module.C_im.double())
        row, col = b.abs().square().sum(-1).sqrt(), c.abs().square().sum(0).sqrt()
        ok = (row > 0) & (col > 0)
        scale = torch.where(ok, (col / row.clamp(min=torch.finfo(torch.float64).tiny)).sqrt(), torch.ones_like(row))
        module.B_re.copy_((module.B_re.double() * scale[:, None]).to(module.B_re.dtype))
        module.B_im.copy_((module.B_im.double() * scale[:, None]).to(module.B_im.dtype))
        module.C_re.copy_((module.C_re.double() / scale[None, :]).to(module.C_re.dtype))
        module.C_im.copy_((module.C_im.double() / scale[None, :]).to(module.C_im.dtype))
        count += 1
    return count


def finished_run_line(label: str, record: dict) -> str:
    """One log line for a finished classification run: its test accuracy, final total state and training time."""
    return (f"{label}: test accuracy {100 * record['test_accuracy']:.2f}%, state {record['total_state']}, "
            f"{record['train_time_s']:.0f}s")


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (so that wall-clock times mean something on a GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, predicted classes)`` of ``model`` on ``x`` in eval mode, shapes ``(N, K)`` and ``(N,)``."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return logits, logits.argmax(-1)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` on ``(x, y)`` in eval mode."""
    logits, pred = predict(model, x, batch_size=batch_size)
    return float((pred == y).float().mean()), float(F.cross_entropy(logits, y))


def _layer_record(x) -> dict:
    record = {"name": x.name, "before": x.before, "after": x.after, "hsv": np.asarray(x.hsv, dtype=float).tolist(),
              "energy_kept": float(x.energy_kept), "error_bound": float(x.error_bound),
              "compressed": bool(x.compressed)}
    for extra in ("gain", "error", "method"):  # in reports that carry them
        value = getattr(x, extra, None)
        if value is not None:
            record[extra] = value if isinstance(value, str) else float(value)
    return record


def _progress_bar(steps: int, label: str, progress: bool):
    """A tqdm bar over the steps on stderr, or ``None`` without tqdm (progress bars are optional)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=steps, desc=label, unit="step", leave=True, dynamic_ncols=True, file=sys.stderr,
                disable=None if progress else True)  # None: off unless a terminal


def _cut_(step: int, schedule, model: nn.Module, optimizer, scheduler, timed_cuts: list | None,
          equalize_modes: bool):
    """The schedule's cut after ``step`` updates; returns its report.

    ``timed_cuts``: the cut steps :func:`lr_lambdas` reads, for a schedule that decides during the run
    (``None`` for fixed steps). This step's learning rate was set before the cut was known, so the
    re-warm-up is applied to it now.
    """
    report = schedule.step(step, model, optimizer)
    if timed_cuts is not None:
        timed_cuts.append(step)
        for group, factor, base in zip(optimizer.param_groups, scheduler.lr_lambdas, scheduler.base_lrs):
            group["lr"] = base * factor(step)
    if equalize_modes:
        equalize_mode_scales_(model)
    return report


def train_run(model: nn.Module, data: SequenceDataset, config: ExperimentConfig, *, steps: int,
              cuts: list[int] = (), label: str = "", device: torch.device | None = None, schedule=None) -> dict:
    """Train ``model`` for ``steps`` AdamW steps, cutting with ``compress_`` at ``cuts``.

    Parameters
    ----------
    model : nn.Module
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
    schedule : CompressionSchedule, optional
        Instead of ``cuts``: a schedule that decides during the run (e.g.
        :class:`adapters.torch.monitor.HSVTimedSchedule`, built with ``rewarm_steps=0``); the
        re-warm-up of :func:`lr_lambdas` starts at each cut it makes.

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
    optimizer = adamw(param_groups(model, config), config)
    timed = schedule is not None
    cuts = [] if timed else list(cuts)  # a timed schedule's cuts are appended as they happen (lr_lambdas reads them)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambdas(optimizer.param_groups, steps, config, cuts))
    order = torch.Generator().manual_seed(config.seed + 1)  # batch order: identical for every run
    n = len(data.y_train)
    bs = min(config.batch_size, n)
    per_epoch = n // bs  # drop the last partial batch: every step has the same cost
    # rewarm_steps=0: this loop ramps the SSM groups' learning rate itself (lr_lambdas), as its results were measured
    if not timed:
        schedule = (CompressionSchedule(steps, steps=cuts, tol=config.tol, min_shrink=config.min_shrink,
                                        rewarm_steps=0) if cuts else None)
    losses: list[torch.Tensor] = []
    cut_records, phases = [], []
    dims = lambda: [layer.state_dim for _, layer in compressible_layers(model)]  # noqa: E731
    state_history = [[0, dims()]]
    compress_time = 0.0

    bar = _progress_bar(steps, label, config.progress)

    model.train()
    sync(device)
    start = phase_start = time.perf_counter()
    cpu_start = time.process_time()
    phase_step = 0
    perm = None
    for step in range(steps):
        if schedule is not None and schedule.should_cut(step):  # ``step`` updates are done
            sync(device)
            now = time.perf_counter()
            phases.append({"start_step": phase_step, "end_step": step, "state_dims": dims(),
                           "time_s": now - phase_start})
            report = _cut_(step, schedule, model, optimizer, scheduler, cuts if timed else None, config.equalize_modes)
            sync(device)
            took = time.perf_counter() - now
            compress_time += took
            cut_records.append({"step": step, "time_s": took, "state_before": report.state_before,
                                "state_after": report.state_after, "layers": [_layer_record(x) for x in report]})
            state_history.append([step, dims()])
            phase_start, phase_step = time.perf_counter(), step
            if bar is not None:
                bar.set_postfix_str(f"cut: state {report.state_before}->{report.state_after}")
        i = step % per_epoch
        if i == 0:
            perm = torch.randperm(n, generator=order).to(device)
        idx = perm[i * bs:(i + 1) * bs]
        loss = train_step(model, optimizer, data.x_train[idx], data.y_train[idx], config)
        scheduler.step()
        losses.append(loss.detach())
        if bar is not None:
            bar.update(1)
            if step % 20 == 0 or step == steps - 1:
                bar.set_postfix_str(f"loss {loss.item():.3f} state {sum(dims())}")
    sync(device)
    end = time.perf_counter()
    cpu_time = time.process_time() - cpu_start
    phases.append({"start_step": phase_step, "end_step": steps, "state_dims": dims(), "time_s": end - phase_start})
    if bar is not None:
        bar.close()
    losses_f = [float(v) for v in torch.stack(losses).cpu()]
    if not all(math.isfinite(v) for v in losses_f):
        raise FloatingPointError(f"{label}: the training loss became NaN/Inf; lower the learning rate (--lr).")
    return {"train_time_s": end - start, "cpu_time_s": cpu_time, "compress_time_s": compress_time,
            "steps": steps, "step_time_ms": 1000.0 * (end - start) / steps, "phases": phases, "cuts": cut_records,
            "loss": losses_f, "state_history": state_history,
            "final_train_loss": float(np.mean(losses_f[-max(1, steps // 20):]))}
