"""Training-loop glue on top of :func:`compress_`: when to cut, and undoing a bad cut.

CompreSSM (arXiv 2510.02823) cuts a few times during the first ~10% of training
and then trains the smaller model; its "pragmatic" mode checks validation after
each cut and reverts if accuracy dropped. Both objects here hold state across
steps, so both have ``state_dict()`` / ``load_state_dict()`` for checkpoints.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .compress import CompressionReport, compress_

__all__ = ["CompressionSchedule", "RollbackGuard"]


class CompressionSchedule:
    """When to cut: every ``interval`` steps inside a window of training steps.

    Parameters
    ----------
    total_steps : int
        Length of training.
    window : float in (0, 1]
        Fraction of training during which cuts happen (the paper: 0.1).
    num_cuts : int
        Number of cuts, evenly spaced in the window (the last at its end); or give
        ``steps`` explicitly.
    tol : float in (0, 1)
        Energy tolerance passed to :func:`compress_` at every cut.
    steps : sequence of int, optional
        Explicit cut steps (overrides ``window``/``num_cuts``).
    **compress_kwargs
        Passed to :func:`compress_` (``scope``, ``selection``, ``min_shrink``, ...).

    Examples
    --------
    >>> sched = CompressionSchedule(total_steps=1000, window=0.1, num_cuts=4, tol=0.05)
    >>> sched.steps
    [25, 50, 75, 100]
    """

    def __init__(self, total_steps: int, *, window: float = 0.1, num_cuts: int = 4, tol: float = 0.05,
                 steps=None, **compress_kwargs):
        if int(total_steps) < 1:
            raise ValueError(f"total_steps must be positive, got {total_steps!r}.")
        if steps is None:
            if not 0.0 < window <= 1.0:
                raise ValueError(f"window must be a fraction in (0, 1], got {window!r}.")
            if int(num_cuts) < 1:
                raise ValueError(f"num_cuts must be >= 1, got {num_cuts!r}.")
            end = max(1, int(round(window * total_steps)))
            steps = sorted({max(1, round(end * (k + 1) / num_cuts)) for k in range(int(num_cuts))})
        steps = sorted(int(s) for s in steps)
        if any(s < 1 or s > total_steps for s in steps):
            raise ValueError(f"cut steps must lie in 1..total_steps = 1..{total_steps}, got {steps}.")
        self.total_steps, self.steps, self.tol = int(total_steps), steps, tol
        self.compress_kwargs = compress_kwargs
        self.enabled = True
        self.history: list[dict] = []

    def should_cut(self, step: int) -> bool:
        """Whether a cut is due after optimizer step ``step`` (1-based)."""
        return self.enabled and int(step) in self.steps

    def step(self, step: int, model: nn.Module, optimizer=None) -> CompressionReport | None:
        """Cut if due at ``step``; returns the report, or ``None`` when no cut was due."""
        if not self.should_cut(step):
            return None
        report = compress_(model, tol=self.tol, optimizer=optimizer, **self.compress_kwargs)
        self.history.append({"step": int(step), "state_before": report.state_before,
                             "state_after": report.state_after})
        return report

    def state_dict(self) -> dict:
        return {"total_steps": self.total_steps, "steps": list(self.steps), "tol": self.tol,
                "enabled": self.enabled, "history": copy.deepcopy(self.history),
                "compress_kwargs": dict(self.compress_kwargs)}

    def load_state_dict(self, state: dict) -> None:
        self.total_steps, self.steps, self.tol = state["total_steps"], list(state["steps"]), state["tol"]
        self.enabled, self.history = state["enabled"], copy.deepcopy(state["history"])
        self.compress_kwargs = dict(state.get("compress_kwargs", {}))


class RollbackGuard:
    """Checkpoint before a cut; restore model and optimizer if validation drops too much.

    Parameters
    ----------
    model : nn.Module
    optimizer : torch.optim.Optimizer, optional
    max_drop : float
        Largest acceptable drop of the validation metric (higher is better), in the
        metric's units (e.g. 0.01 = one accuracy point on a 0..1 scale).
    stop_after_rollback : bool
        After a rollback, refuse further cuts (the paper's pragmatic mode).

    Examples
    --------
    A loop with a schedule::

        guard = RollbackGuard(model, optimizer, max_drop=0.01)
        if schedule.should_cut(step) and guard.allows_cut:
            guard.checkpoint(metric=evaluate(model))
            schedule.step(step, model, optimizer)
            if guard.check(metric=evaluate(model)):      # True if it rolled back
                schedule.enabled = False

    Notes
    -----
    The checkpoint is a deep copy of ``model.state_dict()`` and
    ``optimizer.state_dict()`` plus the parameter objects' identities; a rollback
    loads the state dicts back (compressible layers resize themselves) and rebinds
    the optimizer to the restored parameters.
    """

    def __init__(self, model: nn.Module, optimizer=None, *, max_drop: float = 0.01, stop_after_rollback: bool = True):
        if max_drop < 0:
            raise ValueError(f"max_drop must be >= 0, got {max_drop!r}.")
        self.model, self.optimizer = model, optimizer
        self.max_drop, self.stop_after_rollback = float(max_drop), stop_after_rollback
        self.rollbacks = 0
        self._saved = None

    @property
    def allows_cut(self) -> bool:
        return not (self.stop_after_rollback and self.rollbacks > 0)

    def checkpoint(self, metric: float) -> None:
        """Save model, optimizer and the pre-cut validation metric."""
        self._saved = {
            "metric": float(metric),
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None,
        }

    def check(self, metric: float) -> bool:
        """Compare the post-cut metric with the checkpoint; roll back if it fell by more than ``max_drop``."""
        if self._saved is None:
            raise RuntimeError("call checkpoint(metric) before check(metric).")
        rolled = float(metric) < self._saved["metric"] - self.max_drop
        if rolled:
            self.restore()
            self.rollbacks += 1
        self._saved = None
        return rolled

    def restore(self) -> None:
        """Load the checkpoint back into model and optimizer."""
        self.model.load_state_dict(self._saved["model"])
        if self.optimizer is not None:
            # Parameters may be new objects of new shapes: rebuild the groups in the
            # order the optimizer's state_dict expects, then load its state.
            params = list(self.model.parameters())
            saved = self._saved["optimizer"]
            sizes = [len(g["params"]) for g in saved["param_groups"]]
            if sum(sizes) != len(params):
                raise RuntimeError("cannot roll the optimizer back: the model's parameter count changed in a way "
                                   "the checkpoint does not describe (was the optimizer built over model.parameters()?).")
            start = 0
            for group, size in zip(self.optimizer.param_groups, sizes):
                group["params"] = params[start:start + size]
                start += size
            self.optimizer.state.clear()
            self.optimizer.load_state_dict(saved)

    def state_dict(self) -> dict:
        return {"max_drop": self.max_drop, "stop_after_rollback": self.stop_after_rollback,
                "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict) -> None:
        self.max_drop, self.stop_after_rollback = state["max_drop"], state["stop_after_rollback"]
        self.rollbacks = state["rollbacks"]
