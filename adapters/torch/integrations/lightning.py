"""In-training compression inside PyTorch Lightning's ``Trainer``: :class:`CompressionCallback`.

Install the extra: ``pip install "lti-reduce[lightning]"``. This module imports ``lightning``; the rest of
:mod:`adapters.torch` does not.

Examples
--------
::

    from adapters.torch import CompressionSchedule
    from adapters.torch.lightning import CompressionCallback

    schedule = CompressionSchedule(total_steps=2000, window=0.1, num_cuts=4, tol=0.05)
    trainer = lightning.Trainer(max_steps=2000, callbacks=[CompressionCallback(schedule)])
    trainer.fit(module, train_loader)                  # cuts after optimizer steps 50, 100, 150, 200
    trainer.fit(module, train_loader, ckpt_path=path)  # resumes, also from a checkpoint after a cut
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.utilities.rank_zero import rank_zero_info
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without the extra
    raise ModuleNotFoundError(
        "adapters.torch.lightning needs PyTorch Lightning 2.x (the 'lightning' package, not the older "
        "'pytorch_lightning'); install it with pip install \"lti-reduce[lightning]\".") from exc

from ._callbacks import check_compressible, owning_optimizer, report_metrics, scheduled_cut
from ..schedule import CompressionSchedule

__all__ = ["CompressionCallback"]



def _unsupported(strategy) -> str | None:
    """Why ``strategy`` cannot carry a cut, or ``None`` if it can."""
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    names = [cls.__name__ for cls in type(strategy).__mro__]
    if any(n.startswith("FSDP") for n in names):
        return ("FSDPStrategy wraps the model in FSDP1 (FullyShardedDataParallel), whose flat parameters cannot change "
                "size. Use strategy=ModelParallelStrategy() and apply torch.distributed.fsdp.fully_shard (FSDP2) in "
                "configure_model: the callback then cuts through adapters.torch.compress_fsdp_")
    if any(n.startswith("DeepSpeed") for n in names):
        return "DeepSpeed partitions parameters in flat buffers a cut cannot resize; train with 'ddp' or FSDP2"
    if isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) or "ModelParallelStrategy" in names:
        return None
    return f"{type(strategy).__name__} is not one of the strategies a cut is tested under (single device, DDP, FSDP2)"


class CompressionCallback(Callback):
    """Cut the model's SSM states at a :class:`~adapters.torch.CompressionSchedule`'s optimizer steps.

    The Lightning counterpart of :func:`adapters.torch.compress_` in a hand-written loop, shaped like
    Lightning's ``ModelPruning`` callback: the schedule says when and how much, the callback acts at the
    right moment of the ``Trainer``'s loop, keeps its optimizer consistent and logs what it did.

    Parameters
    ----------
    schedule : CompressionSchedule
        Cut steps (counted in optimizer steps, i.e. ``trainer.global_step``, 1-based), tolerance and
        options of :func:`~adapters.torch.compress_`. Its state is saved in the ``Trainer``'s checkpoints.
    calibration_inputs : Tensor, list of Tensors, or callable, optional
        Model inputs for layers whose cut needs data (selective SSM blocks); a callable is called as
        ``calibration_inputs(pl_module)`` at every cut. Moved to the model's device. Under DDP every rank
        must pass the same inputs when the schedule cuts by ``tol``.
    prefix : str
        Prefix of the logged metric names.
    verbose : bool
        Print every cut's report (on rank zero).

    Attributes
    ----------
    schedule : CompressionSchedule
    cuts : list of dict
        One entry per cut done: ``{"step": ..., **metrics}`` (see Notes).

    Notes
    -----
    *When.* After the optimizer step that makes ``trainer.global_step`` equal a cut step
    (``on_train_batch_end``). With ``accumulate_grad_batches=k`` that is the last of the ``k`` batches
    of that step, so no accumulated gradient is lost; the batches of a step that the ``Trainer``
    counts without stepping do not trigger a cut.

    *Optimizer and LR schedulers.* The optimizer that trains the compressible layers is updated in place
    by the cut (parameters rebound in their groups, state of re-based parameters reset, a selective layer's sliced to its kept states, step counts and
    hyper-parameters kept). ``trainer.optimizers`` and every LR scheduler keep referring to the same
    optimizer and parameter groups, so learning-rate schedules continue unchanged. The compressible
    layers' parameters must all be in one optimizer (others may hold other parameters).

    *Logging.* Each cut's metrics are written to every logger of the ``Trainer`` at the cut's step
    (``logger.log_metrics``, whether or not the step is a ``log_every_n_steps`` step) and put in
    ``trainer.callback_metrics`` (through ``pl_module.log``, not sent to the loggers a second time):
    ``compression/state_size`` (total state after the cut), ``compression/state_before``,
    ``compression/layers_cut``, ``compression/energy_kept`` (smallest over the cut layers),
    ``compression/error_bound`` (largest a-priori bound), ``compression/error`` and
    ``compression/gain`` when the report carries them, and the same per layer
    (``compression/<layer name>/...``).

    *Checkpoints.* A checkpoint holds the compressed weights as plain tensors (compressible layers resize
    themselves when they load a checkpoint of another state size) and this callback's state (the
    schedule's, and its list of cuts). ``trainer.fit(module, ckpt_path=...)`` on a freshly built module
    therefore loads the compressed weights, resizing the layers, before ``configure_optimizers`` builds
    the optimizer and its state is restored; cuts due after the checkpoint's step happen as scheduled.
    Lightning runs checkpoint callbacks after all others, so a checkpoint taken at a cut step already
    holds the cut model.

    *Distributed.* Under Lightning's ``"ddp"``/``"ddp_spawn"`` strategies the cut runs on every rank,
    the ranks agree on the result and receive rank 0's (:func:`adapters.torch.compress_ddp_`), and the
    strategy's ``DistributedDataParallel`` wrapper is rebuilt in place around the compressed module.
    Under ``ModelParallelStrategy`` with FSDP2 (``fully_shard`` applied in ``configure_model``) the cut goes
    through :func:`adapters.torch.compress_fsdp_`: full values gathered, cut, rank 0's result adopted,
    parameters re-sharded in place and the optimizer rebound. Its checkpoints are sharded (distributed
    checkpoint) at the cut sizes: resume into a model built at those sizes, or save a full state dict
    (``get_model_state_dict(..., full_state_dict=True)``), which loads into a fresh full-size model.
    ``FSDPStrategy`` (FSDP1) and DeepSpeed keep flat parameters a cut cannot resize; they are refused at ``setup``.

    Examples
    --------
    ::

        schedule = CompressionSchedule(total_steps=1000, steps=[50, 100], tol=0.05)
        trainer = lightning.Trainer(max_steps=1000, callbacks=[CompressionCallback(schedule)])
        trainer.fit(model, loader)
        print(trainer.callbacks[0].cuts[-1]["compression/state_size"])
    """

    def __init__(self, schedule: CompressionSchedule, *, calibration_inputs=None, prefix: str = "compression",
                 verbose: bool = False):
        if not hasattr(schedule, "should_cut") or not hasattr(schedule, "step"):
            raise TypeError(f"schedule must be an adapters.torch.CompressionSchedule (with should_cut(step) and "
                            f"step(step, model, optimizer)), got {type(schedule).__name__}.")
        self.schedule = schedule
        self.calibration_inputs = calibration_inputs
        self.prefix = str(prefix)
        self.verbose = bool(verbose)
        self.cuts: list[dict] = []
        self._last_step: int | None = None

    # --------------------------------------------------------------------------------------------- hooks
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        reason = _unsupported(trainer.strategy)
        if reason is not None:
            raise ValueError(
                "CompressionCallback supports Lightning's single-device, DDP and ModelParallelStrategy (FSDP2, "
                f"fully_shard) strategies, got {type(trainer.strategy).__name__}: {reason}.")
        check_compressible(pl_module)

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # After a resume, global_step is the checkpoint's: its step (and any cut at it) is done.
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return  # no optimizer step since the last batch (gradient accumulation)
        self._last_step = step
        if not self.schedule.should_cut(step):
            return
        optimizer = owning_optimizer(trainer.optimizers, pl_module)
        report = scheduled_cut(self.schedule, step, trainer.strategy.model, optimizer,
                               calibration_inputs=self.calibration_inputs)
        self._log(trainer, pl_module, step, report)

    # ----------------------------------------------------------------------------------------- logging
    def _log(self, trainer, pl_module, step: int, report) -> None:
        metrics = report_metrics(report, self.prefix)
        self.cuts.append({"step": int(step), **metrics})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, logger=False, prog_bar=False)
        if self.verbose:
            rank_zero_info(f"CompressionCallback: cut at step {step}\n{report}")

    # ------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state_dict(), "cuts": [dict(c) for c in self.cuts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state_dict["schedule"])
        self.cuts = [dict(c) for c in state_dict.get("cuts", [])]
