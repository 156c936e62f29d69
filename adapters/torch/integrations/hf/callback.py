"""In-training compression inside Hugging Face's ``transformers.Trainer``: :class:`CompressionCallback`.

Examples
--------
::

    from adapters.torch import CompressionSchedule
    from adapters.torch.hf import CompressionCallback

    schedule = CompressionSchedule(total_steps=args.max_steps, window=0.1, num_cuts=4, tol=0.05)
    trainer = Trainer(model=model, args=args, train_dataset=train_set)
    trainer.add_callback(CompressionCallback(schedule, trainer=trainer))
    trainer.train()                                   # cuts after the scheduled optimizer steps
    trainer.train(resume_from_checkpoint=True)        # resumes, also from a checkpoint after a cut
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch

try:
    from transformers import TrainerCallback
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without the extra
    raise ModuleNotFoundError(
        "adapters.torch.hf needs Hugging Face transformers (and accelerate for its Trainer); install them with "
        "pip install \"lti-reduce[hf]\".") from exc

from .._callbacks import check_compressible, owning_optimizer, report_metrics, scheduled_cut

__all__ = ["CompressionCallback"]

logger = logging.getLogger(__name__)

STATE_FILE = "compression_callback.json"


class CompressionCallback(TrainerCallback):
    """Cut the model's SSM states at a :class:`~adapters.torch.CompressionSchedule`'s optimizer steps.

    Parameters
    ----------
    schedule : CompressionSchedule
        Cut steps (counted in optimizer steps, ``state.global_step``, 1-based), tolerance and options
        of :func:`~adapters.torch.compress_`.
    trainer : transformers.Trainer, optional
        The ``Trainer`` this callback is added to (``trainer.add_callback(CompressionCallback(schedule,
        trainer=trainer))``). Needed under DDP (the callback must reach the ``Trainer``'s
        ``DistributedDataParallel`` wrapper, which ``Trainer`` hands to no callback) and for logging
        through ``trainer.log`` (every reporting integration then receives the cut's metrics). Without
        it, one process is supported and the metrics go to ``state.log_history`` only.
    calibration_inputs : Tensor, list of Tensors, or callable, optional
        Model inputs for layers whose cut needs data (selective SSM blocks, HF Mamba mixers); a callable
        is called as ``calibration_inputs(model)`` at every cut. Moved to the model's device. Under DDP
        every rank must pass the same inputs when the schedule cuts by ``tol``.
    prefix : str
        Prefix of the logged metric names.

    Attributes
    ----------
    schedule : CompressionSchedule
    cuts : list of dict
        One entry per cut done: ``{"step": ..., **metrics}``.

    Notes
    -----
    *When.* In ``on_step_end``: after the optimizer step, the LR scheduler step and ``zero_grad`` that
    make ``state.global_step`` equal a cut step. With ``gradient_accumulation_steps=k`` that is after
    the ``k``-th micro-batch, so no accumulated gradient is lost. Checkpoints and evaluations that the
    ``Trainer`` does at that step see the cut model.

    *Optimizer and LR scheduler.* The ``Trainer``'s optimizer (unwrapped from accelerate's
    ``AcceleratedOptimizer``) is updated in place by the cut: parameters rebound in their groups, state
    of re-based parameters reset (a selective layer's sliced to its kept states), step counts and hyper-parameters kept. The LR scheduler holds the same
    optimizer and groups, so its schedule continues unchanged.

    *Logging.* ``compression/state_size`` (total state after the cut), ``compression/state_before``,
    ``compression/layers_cut``, ``compression/energy_kept`` (smallest over the cut layers),
    ``compression/error_bound`` (largest a-priori bound), ``compression/error`` and
    ``compression/gain`` when the report carries them, and the same per layer
    (``compression/<layer name>/...``).

    *Checkpoints and resuming.* The ``Trainer`` saves the compressed weights as plain tensors;
    compressible layers resize themselves when they load a checkpoint of another state size, so
    ``trainer.train(resume_from_checkpoint=...)`` on a freshly built (full-size) model loads them before
    it builds the optimizer and restores its state. This callback writes its own state (the schedule's,
    and its list of cuts) as ``compression_callback.json`` into each checkpoint folder
    (``<output_dir>/checkpoint-<step>``) and reads it back when training resumes at that step; cuts
    due after the checkpoint's step happen as scheduled.

    *Distributed.* Under DDP (``torchrun``), with ``trainer=`` given: the cut runs on every rank, the
    ranks agree on the result and receive rank 0's (:func:`adapters.torch.compress_ddp_`), and the
    ``Trainer``'s ``DistributedDataParallel`` wrapper is rebuilt in place around the compressed model.
    Under FSDP2 (``fsdp_config={"version": 2}``) the cut goes through :func:`adapters.torch.compress_fsdp_`
    (full values gathered, cut, rank 0's result adopted, parameters re-sharded in place, the optimizer
    rebound). FSDP1 and DeepSpeed keep flat parameters a cut cannot resize; they are refused.
    """

    def __init__(self, schedule, *, trainer=None, calibration_inputs=None, prefix: str = "compression"):
        if not hasattr(schedule, "should_cut") or not hasattr(schedule, "step"):
            raise TypeError(f"schedule must be an adapters.torch.CompressionSchedule (with should_cut(step) and "
                            f"step(step, model, optimizer)), got {type(schedule).__name__}.")
        self.schedule = schedule
        self.trainer = trainer
        self.calibration_inputs = calibration_inputs
        self.prefix = str(prefix)
        self.cuts: list[dict] = []

    # --------------------------------------------------------------------------------------------- hooks
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        check_compressible(model)
        if self.trainer is not None and getattr(self.trainer, "is_deepspeed_enabled", False):
            raise ValueError("CompressionCallback does not support DeepSpeed: it partitions parameters in flat buffers "
                             "a cut cannot resize. Train with DDP (torchrun), FSDP2 or one device.")
        if self.trainer is not None and getattr(self.trainer, "is_fsdp_enabled", False) and _fsdp_version(self.trainer) != 2:
            raise ValueError("CompressionCallback supports FSDP2 (fully_shard) only: FSDP1 keeps flat parameters a cut "
                             "cannot resize. Set TrainingArguments(fsdp_config={'version': 2}) (the default of recent "
                             "transformers), or train with DDP (torchrun).")
        if self.trainer is None and _world_size() > 1:
            raise ValueError(
                f"CompressionCallback runs in a distributed job ({_world_size()} processes) but has no trainer: it "
                "must rebuild the Trainer's DistributedDataParallel wrapper after a cut, which Trainer hands to no "
                "callback. Create it with trainer.add_callback(CompressionCallback(schedule, trainer=trainer)).")
        if state.global_step > 0:
            self._restore(args, state)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step
        if not self.schedule.should_cut(step):
            return
        wrapper = self.trainer.model_wrapped if self.trainer is not None else model
        report = scheduled_cut(self.schedule, step, wrapper, owning_optimizer([optimizer], model),
                               calibration_inputs=self.calibration_inputs)
        metrics = report_metrics(report, self.prefix)
        self.cuts.append({"step": int(step), **metrics})
        if self.trainer is not None:
            self.trainer.log(dict(metrics))
        else:
            state.log_history.append({**metrics, "step": int(step)})

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = _checkpoint_folder(args, state)
        if not os.path.isdir(folder):
            logger.warning("CompressionCallback: no checkpoint folder %s to save its state in; a run resumed from "
                           "this step will not know its past cuts (the model's weights are saved as usual).", folder)
            return
        with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(self.state_dict(), f, default=_plain, indent=1)

    # ------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"schedule": self.schedule.state_dict(), "cuts": [dict(c) for c in self.cuts]}

    def load_state_dict(self, state: dict) -> None:
        self.schedule.load_state_dict(state["schedule"])
        self.cuts = [dict(c) for c in state.get("cuts", [])]

    def _restore(self, args, state) -> None:
        candidates = [_checkpoint_folder(args, state)]
        if isinstance(getattr(args, "resume_from_checkpoint", None), str):
            candidates.insert(0, args.resume_from_checkpoint)
        for folder in candidates:
            path = os.path.join(folder, STATE_FILE)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    self.load_state_dict(json.load(f))
                return
        if any(s <= state.global_step for s in self.schedule.steps):
            logger.warning(
                "CompressionCallback: resuming at step %d without %s in %s; cuts at steps <= %d are not redone (the "
                "checkpoint's weights already hold them), but the schedule's history of them is empty.",
                state.global_step, STATE_FILE, " or ".join(candidates), state.global_step)


def _fsdp_version(trainer) -> int | None:
    plugin = getattr(getattr(getattr(trainer, "accelerator", None), "state", None), "fsdp_plugin", None)
    return getattr(plugin, "fsdp_version", None)


def _checkpoint_folder(args, state) -> str:
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"CompressionCallback state holds a {type(value).__name__}, which JSON cannot store")
