"""Training-loop glue on top of :func:`compress_`: when to cut, and undoing a bad cut.

CompreSSM (arXiv 2510.02823) cuts a few times during the first ~10% of training
and then trains the smaller model; its "pragmatic" mode checks validation after
each cut and reverts if accuracy dropped. Both objects here hold state across
steps, so both have ``state_dict()`` / ``load_state_dict()`` for checkpoints.
"""

from __future__ import annotations

import copy

import torch.nn as nn

from .cut.certify import check_certify
from .compress import compress_
from .cut.plan import _REQUIRED, _check_hinf_method, _check_optimizer_argument, _check_options
from .cut.report import CompressionReport
from .optim import check_rewarm_steps

__all__ = ["CompressionSchedule", "RollbackGuard"]


class CompressionSchedule:
    """When to cut: ``num_cuts`` cuts spread over the first ``window`` of training (or at given ``steps``).

    ``step(step, model, optimizer)`` calls :func:`compress_` at those steps and does nothing at the
    others.

    Parameters
    ----------
    total_steps : int
        Length of training.
    window : float in (0, 1]
        Fraction of training during which cuts happen (the paper: 0.1).
    num_cuts : int
        Number of cuts, evenly spaced in the window (the last at its end); or give
        ``steps`` explicitly. The default, one cut at the end of the window, ended at least
        as accurate as a model trained from scratch at the same size at every tolerance
        of ``lti-reduce sweep`` on MNIST-1D (3 seeds), where CompreSSM's four cuts, each
        dropping ``tol`` of the energy left, fell below it at ``tol >= 0.2``
        (``docs/figures/sweep/``).
    tol : float in (0, 1), optional
        Energy tolerance passed to :func:`compress_` at every cut (default 0.05 unless
        ``rank`` is given).
    rank : int, optional
        A fixed ``state_dim`` per layer instead of ``tol``.
    steps : sequence of int, optional
        Explicit cut steps (overrides ``window``/``num_cuts``).
    **compress_kwargs
        Passed to :func:`compress_` (``scope``, ``selection``, ``min_shrink``,
        ``calibration_inputs``, ``certify``, ``rewarm_steps``, ...). ``certify`` defaults to ``"output"``, as in
        :func:`compress_`: each report gives the measured output change, and its ``gain`` and ``error``
        (of the maps stored at the cut) on request (:meth:`CompressionReport.certify_hinf`).

    Attributes
    ----------
    steps : list of int
        The cut steps, ascending.
    enabled : bool
        ``False`` stops all further cuts (what :class:`RollbackGuard` does after a rollback with
        ``schedule=``); saved and restored by :meth:`state_dict` / :meth:`load_state_dict`.
    history : list of dict
        One entry per cut made: ``{"step", "state_before", "state_after"}``.

    Raises
    ------
    ValueError
        Any bad option, at construction (the same checks :func:`compress_` makes), and a
        model without compressible layers at the first :meth:`step` that sees it.

    Examples
    --------
    >>> sched = CompressionSchedule(total_steps=1000, window=0.1, num_cuts=4, tol=0.05)
    >>> sched.steps
    [25, 50, 75, 100]
    """

    def __init__(self, total_steps: int, *, window: float = 0.1, num_cuts: int = 1, tol: float | None = None,
                 rank: int | None = None, steps=None, **compress_kwargs):
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}.")
        if "optimizer" in compress_kwargs or "model" in compress_kwargs:
            raise ValueError("pass the model and the optimizer to step(step, model, optimizer), not to the schedule.")
        if tol is None and rank is None:
            tol = 0.05
        _check_options(tol, rank, compress_kwargs.get("selection", "largest"), compress_kwargs.get("scope", "layer"),
                       compress_kwargs.get("min_shrink", 0.05), compress_kwargs.get("method", "truncate"),
                       compress_kwargs.get("seed"))
        known = {"selection", "scope", "min_shrink", "method", "seed", "calibration_inputs", "certify", "hinf_rtol",
                 "hinf_method", "rewarm_steps"}
        unknown = sorted(set(compress_kwargs) - known)
        if unknown:
            raise ValueError(f"unknown compress_ options {unknown}; known: {sorted(known)}.")
        if steps is None:
            if isinstance(window, bool) or not isinstance(window, (int, float)) or not 0.0 < window <= 1.0:
                raise ValueError(f"window must be a fraction in (0, 1], got {window!r}.")
            if isinstance(num_cuts, bool) or not isinstance(num_cuts, int) or num_cuts < 1:
                raise ValueError(f"num_cuts must be a positive integer, got {num_cuts!r}.")
            end = max(1, int(round(window * total_steps)))
            if num_cuts > end:
                raise ValueError(f"num_cuts={num_cuts} cuts do not fit in the window of {end} step(s) "
                                 f"(window={window:g} of total_steps={total_steps}): give at most {end} cuts, a "
                                 "larger window, or explicit steps=[...].")
            steps = sorted({max(1, round(end * (k + 1) / num_cuts)) for k in range(int(num_cuts))})
        try:
            steps = sorted(int(s) for s in steps)
        except (TypeError, ValueError):
            raise ValueError(f"steps must be a sequence of integers, got {steps!r}.") from None
        if not steps or any(s < 1 or s > total_steps for s in steps):
            raise ValueError(f"cut steps must be a non-empty list in 1..total_steps = 1..{total_steps}, got {steps}.")
        self.total_steps, self.steps, self.tol, self.rank = int(total_steps), steps, tol, rank
        rtol = compress_kwargs.get("hinf_rtol", 1e-6)
        if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0.0 < float(rtol) < 1.0:
            raise ValueError(f"hinf_rtol must be a float in (0, 1), got {rtol!r}.")
        if "hinf_method" in compress_kwargs:
            _check_hinf_method(compress_kwargs["hinf_method"])
        if "rewarm_steps" in compress_kwargs:
            check_rewarm_steps(compress_kwargs["rewarm_steps"])
        compress_kwargs.setdefault("certify", "output")
        check_certify(compress_kwargs["certify"])
        self.compress_kwargs = compress_kwargs
        self.enabled = True
        self.history: list[dict] = []
        self._checked: int | None = None

    def should_cut(self, step: int) -> bool:
        """Whether a cut is due after optimizer step ``step`` (1-based)."""
        return self.enabled and int(step) in self.steps

    def _check_model(self, model: nn.Module) -> None:
        if self._checked == id(model):
            return
        from .cut.selective.kinds import _selective_layers
        from .layers.protocol import compressible_layers

        if not compressible_layers(model) and not _selective_layers(model):
            raise ValueError(f"CompressionSchedule: {type(model).__name__} has no compressible layer (nothing "
                             "implements state_dim, to_system() and load_system_(), see adapters.torch.layers.protocol, "
                             "and no selective layer), so no cut could happen; schedule a model with SSM layers.")
        if _selective_layers(model) and self.compress_kwargs.get("calibration_inputs") is None:
            raise ValueError("CompressionSchedule: the model has selective layers (SelectiveSSM), which need "
                             "calibration_inputs= (give it to the schedule: CompressionSchedule(..., "
                             "calibration_inputs=batch)).")
        self._checked = id(model)

    def step(self, step: int, model: nn.Module, optimizer=_REQUIRED) -> CompressionReport | None:
        """Cut if due at ``step``; returns the report, or ``None`` when no cut was due.

        ``optimizer`` is required (``None`` said explicitly), for the reason given in :func:`compress_`.
        The model is checked at the first call that sees it, cut due or not.
        """
        _check_optimizer_argument(optimizer, "CompressionSchedule.step(step, model, optimizer)")
        self._check_model(model)
        if not self.should_cut(step):
            return None
        report = compress_(model, tol=self.tol, rank=self.rank, optimizer=optimizer, **self.compress_kwargs)
        self.history.append({"step": int(step), "state_before": report.state_before,
                             "state_after": report.state_after})
        return report

    def state_dict(self) -> dict:
        """The schedule's state for a checkpoint: steps, options, ``enabled`` and the cut history.

        ``calibration_inputs`` (tensors) are left out; :meth:`load_state_dict` keeps the ones the
        schedule was built with.
        """
        return {"total_steps": self.total_steps, "steps": list(self.steps), "tol": self.tol, "rank": self.rank,
                "enabled": self.enabled, "history": copy.deepcopy(self.history),
                "compress_kwargs": {k: v for k, v in self.compress_kwargs.items() if k != "calibration_inputs"}}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved (e.g. when resuming training from a checkpoint)."""
        self.total_steps, self.steps, self.tol = state["total_steps"], list(state["steps"]), state["tol"]
        self.rank = state.get("rank")
        self.enabled, self.history = state["enabled"], copy.deepcopy(state["history"])
        calibration = self.compress_kwargs.get("calibration_inputs")
        self.compress_kwargs = dict(state.get("compress_kwargs", {}))
        if calibration is not None:
            self.compress_kwargs["calibration_inputs"] = calibration


class RollbackGuard:
    """Checkpoint before a cut; restore model and optimizer if validation drops too much.

    Parameters
    ----------
    model : nn.Module
        The model whose ``state_dict`` is checkpointed before each cut.
    optimizer : torch.optim.Optimizer, optional
        Its optimizer, checkpointed and restored with it (``None``: the model only).
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
    ``optimizer.state_dict()`` plus the name of the parameter in every group slot; a
    rollback loads the state dicts back (compressible layers resize themselves in place)
    and puts every parameter back into its own group slot by name, so groups in any order
    keep their hyper-parameters and every parameter its own moments.
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
        """Whether another cut may be tried (``False`` after a rollback when ``stop_after_rollback``)."""
        return not (self.stop_after_rollback and self.rollbacks > 0)

    def checkpoint(self, metric: float) -> None:
        """Save model, optimizer and the pre-cut validation metric."""
        self._saved = {
            "metric": float(metric),
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None,
            # Which parameter (by name) sits in which group slot, to rebuild groups by identity.
            "groups": None if self.optimizer is None else self._group_names(),
        }

    def _group_names(self) -> list[list[str | None]]:
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [[names.get(id(p)) for p in g["params"]] for g in self.optimizer.param_groups]

    def check(self, metric: float) -> bool:
        """Compare the post-cut metric with the checkpoint; roll back if it fell by more than ``max_drop``.

        Returns ``True`` when it rolled back (model and optimizer restored), ``False`` otherwise; either
        way the checkpoint is consumed. Raises ``RuntimeError`` without a :meth:`checkpoint` before it.
        """
        if self._saved is None:
            raise RuntimeError("call checkpoint(metric) before check(metric).")
        rolled = float(metric) < self._saved["metric"] - self.max_drop
        if rolled:
            self.restore()
            self.rollbacks += 1
        self._saved = None
        return rolled

    def restore(self) -> None:
        """Load the checkpoint back into model and optimizer.

        The model's layers resize their parameters in place while loading, so the optimizer's groups
        still hold the same objects. Each group slot is nevertheless rebuilt *by parameter name* from the
        checkpoint (a layer that replaced a parameter object is handled too), so every parameter returns
        to its own group with its own lr and weight decay, and ``optimizer.load_state_dict`` then gives
        every parameter its own moments.
        """
        if self._saved is None:
            raise RuntimeError("call checkpoint(metric) before restore().")
        self.model.load_state_dict(self._saved["model"])
        if self.optimizer is not None:
            params = dict(self.model.named_parameters())
            saved_groups = self._saved["groups"]
            groups = self.optimizer.param_groups
            if [len(n) for n in saved_groups] != [len(g["params"]) for g in groups]:
                raise RuntimeError(f"cannot roll the optimizer back: its groups hold {[len(g['params']) for g in groups]} "
                                   f"parameters, the checkpoint's {[len(n) for n in saved_groups]} (parameters were "
                                   "added or removed after checkpoint()).")
            missing = [n for names in saved_groups for n in names if n is not None and n not in params]
            if missing:
                raise RuntimeError(f"cannot roll the optimizer back: parameters {missing[:4]} of the checkpoint are "
                                   "not in the model any more.")
            for group, names in zip(groups, saved_groups):  # unnamed tensors keep their slot
                group["params"] = [p if n is None else params[n] for n, p in zip(names, group["params"])]
            self.optimizer.state.clear()
            self.optimizer.load_state_dict(self._saved["optimizer"])

    def state_dict(self) -> dict:
        """Options and the rollback count, for a checkpoint (the pre-cut snapshot is not included)."""
        return {"max_drop": self.max_drop, "stop_after_rollback": self.stop_after_rollback,
                "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.max_drop, self.stop_after_rollback = state["max_drop"], state["stop_after_rollback"]
        self.rollbacks = state["rollbacks"]
