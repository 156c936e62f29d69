"""What the Lightning and Hugging Face callbacks share: one scheduled cut at an optimizer step.

A framework's trainer holds the model (perhaps inside a ``DistributedDataParallel`` wrapper), one or
more optimizers and their LR schedulers. A cut through :class:`~adapters.torch.CompressionSchedule`

* compresses the model in place and keeps the optimizer that trains the compressible layers consistent
  (:func:`~adapters.torch.compress_` rebinds its parameters and resets the state of re-based ones);
  ``param_groups`` keep their order and hyper-parameters, so every LR scheduler, which holds the
  optimizer and indexes its groups, stays valid without being touched;
* under DDP, agrees on the result across ranks and broadcasts it (:func:`~adapters.torch.compress_ddp_`
  on the unwrapped module), then re-initializes the trainer's own wrapper object in place, because a
  framework's training loop holds that object (Hugging Face's ``Trainer`` keeps it in a local variable
  of its loop, so a new wrapper could not be handed back);
* under FSDP2 (``fully_shard``), cuts with :func:`~adapters.torch.compress_fsdp_`, which re-shards the
  resized parameters in place: the model and optimizer objects the trainer holds stay valid;
* turns the report into flat ``{name: float}`` metrics for the trainer's logger.

Nothing here imports a training framework.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn

__all__: list[str] = []


def plain_optimizer(optimizer):
    """The ``torch.optim.Optimizer`` inside a framework's wrapper (accelerate, Lightning), or ``optimizer``."""
    seen = set()
    while optimizer is not None and id(optimizer) not in seen:
        seen.add(id(optimizer))
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            break
        optimizer = inner
    return optimizer


def _state_parameters(module: nn.Module) -> set[int]:
    """Ids of the parameters of every layer a cut may resize (protocol layers and selective blocks)."""
    from ..cut.selective.kinds import _selective_layers
    from ..layers.protocol import compressible_layers

    layers = compressible_layers(module) + _selective_layers(module)
    return {id(p) for _, layer in layers for p in layer.parameters()}


def check_compressible(module: nn.Module) -> None:
    """Raise a ``ValueError`` naming the model if it has nothing a cut could act on."""
    if not _state_parameters(module):
        raise ValueError(
            f"{type(module).__name__} has no compressible layer (nothing implements state_dim, to_system() and "
            "load_system_(), see adapters.torch.protocol, and no selective SSM block): a CompressionCallback on "
            "it would have nothing to cut. Build the model with such layers (e.g. adapters.torch.LRU), or remove "
            "the callback.")


def owning_optimizer(optimizers, module: nn.Module):
    """The one optimizer (unwrapped) that trains the compressible layers of ``module``, or ``None``.

    Raises ``ValueError`` if their parameters are spread over several optimizers: a cut updates one.
    """
    wanted = _state_parameters(module)
    owners = []
    for opt in optimizers:
        plain = plain_optimizer(opt)
        if plain is not None and any(id(p) in wanted for g in plain.param_groups for p in g["params"]):
            owners.append(plain)
    if len(owners) > 1:
        raise ValueError(
            f"the compressible layers' parameters are trained by {len(owners)} optimizers; a cut keeps exactly one "
            "optimizer consistent. Put every parameter of the compressible layers in one optimizer (other "
            "parameters may use others).")
    return owners[0] if owners else None


def is_fsdp2(module: nn.Module) -> bool:
    """Whether ``module`` is sharded by FSDP2 (``fully_shard`` applied to it or to a submodule)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def _is_ddp(module) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(module, DistributedDataParallel)


@contextlib.contextmanager
def _extra_compress_kwargs(schedule, extra: dict):
    """Pass ``extra`` (e.g. calibration inputs) to this one cut, keeping them out of the schedule's state."""
    if not extra:
        yield
        return
    saved = schedule.compress_kwargs
    schedule.compress_kwargs = {**saved, **extra}
    try:
        yield
    finally:
        schedule.compress_kwargs = saved


def calibration_batch(calibration_inputs, module: nn.Module):
    """``calibration_inputs`` (a tensor, a list of tensors, or ``callable(module) -> either``) on the module's device."""
    if calibration_inputs is None:
        return None
    value = calibration_inputs(module) if callable(calibration_inputs) else calibration_inputs
    device = next(module.parameters()).device
    move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
    return move(value) if isinstance(value, torch.Tensor) else [move(t) for t in value]


def scheduled_cut(schedule, step: int, wrapper: nn.Module, optimizer, *, calibration_inputs=None):
    """Cut ``wrapper``'s model if ``schedule`` is due at optimizer step ``step``; the report or ``None``.

    ``wrapper`` is what the training loop calls: the model itself, or a ``DistributedDataParallel``
    around it, which is then re-initialized in place around the compressed module (same object, new
    reducer and buckets, the old wrapper's settings). ``optimizer`` is the one that trains the
    compressible layers (or ``None``). On any failure the model, the optimizer and the schedule's
    history are as they were, and the error is raised.
    """
    if not schedule.should_cut(step):
        return None
    distributed = _is_ddp(wrapper)
    module = wrapper.module if distributed else wrapper
    extra = {}
    batch = calibration_batch(calibration_inputs, module)
    if batch is not None:
        extra["calibration_inputs"] = batch
    history = len(schedule.history)

    def cut(m, optimizer=None):
        with _extra_compress_kwargs(schedule, extra):
            return schedule.step(step, m, optimizer)

    try:
        if distributed:
            from .distributed import _ddp_settings, compress_ddp_

            settings = _ddp_settings(wrapper)
            _, report = compress_ddp_(module, optimizer=optimizer, compress_fn=cut)
            _reinit_ddp_(wrapper, module, settings)
        elif is_fsdp2(module):
            from .fsdp import compress_fsdp_

            # the cut runs on gathered plain tensors without the optimizer; compress_fsdp_ ramps the new shards
            rewarm = schedule.compress_kwargs.get("rewarm_steps", 20)
            report = compress_fsdp_(module, optimizer=optimizer, compress_fn=cut, rewarm_steps=rewarm)
        else:
            report = cut(module, optimizer=optimizer)
    except BaseException:
        del schedule.history[history:]
        raise
    return report


def _reinit_ddp_(wrapper, module: nn.Module, settings: dict) -> None:
    """Build ``wrapper``'s reducer and buckets again around the (resized) parameters of ``module``.

    DDP fixes its gradient buckets to the parameters' sizes at construction and must not see them
    change afterwards; running its constructor on the same object gives it new ones while every
    reference to the wrapper (a training loop's local variable, accelerate's list of prepared models)
    stays valid. The old reducer, and with it its gradient hooks, is released when it is replaced.
    """
    type(wrapper).__init__(wrapper, module, **settings)


def report_metrics(report, prefix: str = "compression") -> dict[str, float]:
    """Flat ``{name: float}`` metrics of one cut for a trainer's logger.

    Totals: ``{prefix}/state_size`` (total state after the cut), ``{prefix}/state_before``,
    ``{prefix}/layers_cut``; over the cut layers: ``{prefix}/energy_kept`` (smallest), and, where the
    report has them, ``{prefix}/error_bound``, ``{prefix}/output_change`` (the measured relative output
    change), ``{prefix}/error`` and ``{prefix}/gain`` (largest). Per layer ``L``:
    ``{prefix}/L/state_size`` and its ``energy_kept``, ``error_bound``, ``output_change``, ``error``,
    ``gain`` where present.
    """
    metrics: dict[str, float] = {f"{prefix}/state_size": float(report.state_after),
                                 f"{prefix}/state_before": float(report.state_before)}
    fields = ("energy_kept", "error_bound", "output_change", "error", "gain")
    cut = [layer for layer in report.layers if layer.compressed]
    metrics[f"{prefix}/layers_cut"] = float(len(cut))
    for layer in report.layers:
        name = layer.name or "model"
        metrics[f"{prefix}/{name}/state_size"] = float(layer.after)
        for key in fields:
            value = _number(getattr(layer, key, None))
            if value is not None:
                metrics[f"{prefix}/{name}/{key}"] = value
    for key, pick in (("energy_kept", min), ("error_bound", max), ("output_change", max), ("error", max),
                      ("gain", max)):
        values = [v for v in (_number(getattr(layer, key, None)) for layer in cut) if v is not None]
        if values:
            metrics[f"{prefix}/{key}"] = pick(values)
    return metrics


def _number(value) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None
