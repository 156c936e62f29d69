"""Cuts timed by the model: watch the Hankel singular values and cut once the kept set has settled.

CompreSSM (arXiv 2510.02823) observes that the ranking of the HSVs settles early in training and
uses it to justify cutting at a fixed fraction of the steps. :class:`HSVTimedSchedule` uses it to
decide *when*: it looks at every compressible layer's HSVs now and then (one batched call of the
core per group of equal-shaped layers, values only), spaces its looks so that watching costs at
most a stated share of the training time, and cuts at the first look at which
:func:`kept_set_settled` holds. All numerics are the core's; this module only compares the
numbers it returns.

:func:`save_hsv_trajectory_plot` draws the watched HSVs with the cut marked.
"""

from __future__ import annotations

import copy
import time
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

from lti_reduce._watch import _diagonal_hankel_frobenius_norm, _diagonal_hsv_values

from .cut.certify import _difference
from .cut.compute import _stack, _working, group_indices
from .cut.plan import _layer_order
from .layers.protocol import compressible_layers
from .schedule import CompressionSchedule

__all__ = ["HSVTimedSchedule", "Settled", "kept_set_settled", "save_hsv_trajectory_plot"]

_RULES = ("either", "certified", "observed")


class Settled(NamedTuple):
    """The answer of :func:`kept_set_settled` for one layer.

    Attributes
    ----------
    certified : bool
        The Weyl path holds (the kept states provably stayed the leading ones between looks).
    observed : bool
        The observed path holds (kept order and energy at the cut still, within tolerances).
    order : int
        The order a cut keeps at the last look.
    """

    certified: bool
    observed: bool
    order: int


def _captured(h: np.ndarray, r: int) -> float:
    total = float(h.sum())
    return float(h[:r].sum()) / total if total > 0 else 1.0


def kept_set_settled(hsvs, bounds, tol: float, patience: int, *, rank_slack: int = 0,
                     energy_slack: float | None = None) -> Settled:
    """Whether the states a ``tol`` cut keeps in one layer have settled at the last of a sequence of looks.

    Parameters
    ----------
    hsvs : sequence of arrays, each of shape (..., n)
        The layer's HSVs at looks ``0 .. j``, sorted descending per system; leading dimensions hold
        channels that a cut reduces to one order (as :func:`adapters.torch.compress_` does).
    bounds : sequence, one per interval between looks
        ``bounds[k - 1] = eps_k``: an array of shape (...) with, per system, an upper bound of
        ``max_i |sigma_i^{(k)} - sigma_i^{(k-1)}|`` valid for the states' identities (the Hankel
        norm of ``G_k - G_{k-1}``, :func:`lti_reduce.hsv_perturbation_bound`, or any upper bound of
        it), or ``None`` where it was not computed (the certified path then fails for that interval).
    tol : float in (0, 1)
        The cut's tolerance: the layer keeps ``r`` states with ``sum_{i > r} sigma_i <= tol sum_i sigma_i``
        of its HSV profile summed over channels.
    patience : int >= 1
        How many of the latest intervals between looks must pass.
    rank_slack : int >= 0
        Observed path: how far the kept order may wander from the last look's.
    energy_slack : float, optional
        Observed path: how far the energy captured by the last look's ``r`` leading states may move
        between two looks (default ``tol / 10``).

    Returns
    -------
    Settled
        ``certified``, ``observed`` (bools; both ``False`` while ``j < patience``) and ``order`` ``r``.

    Notes
    -----
    Let ``r_k`` be the order a cut keeps at look ``k`` and ``r = r_j``. Over every interval
    ``k = j - patience + 1 .. j``:

    *Certified path* (a proof about the states kept, not about later steps): ``r_{k-1} = r_k = r``
    and, for every system, ``sigma^{(k-1)}_r - sigma^{(k-1)}_{r+1} > 2 eps_k``. With
    ``|sigma_i^{(k)} - sigma_i^{(k-1)}| <= eps_k`` for every ``i`` (Weyl's inequality for the
    Hankel operators), the ``r`` leading HSVs at look ``k`` are then the continuations of those at
    look ``k - 1``: no state crossed the cut. ``r = n`` (nothing to cut) passes.

    *Observed path* (a heuristic: what the looks saw, not what happened between them):
    ``|r_k - r| <= rank_slack`` and ``|e_k(r) - e_{k-1}(r)| <= energy_slack`` with
    ``e_k(r) = sum_{i <= r} sigma_i^{(k)} / sum_i sigma_i^{(k)}`` of the summed profile, the
    energy a cut to ``r`` states captures. It does not compare the HSVs' movement with the gap at
    the cut: in a layer of lightly damped modes whose frequencies move, the leading HSVs move by
    more than the (small) gaps near the cut while the cut's order and captured energy stay put.
    """
    if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1:
        raise ValueError(f"patience must be an integer >= 1, got {patience!r}.")
    if isinstance(rank_slack, bool) or not isinstance(rank_slack, (int, np.integer)) or rank_slack < 0:
        raise ValueError(f"rank_slack must be an integer >= 0, got {rank_slack!r}.")
    energy_slack = tol / 10.0 if energy_slack is None else float(energy_slack)
    if not energy_slack >= 0.0:
        raise ValueError(f"energy_slack must be >= 0 (a change in the captured energy share), got {energy_slack!r}.")
    if len(bounds) != len(hsvs) - 1:
        raise ValueError(f"need one bound per interval between looks: {len(hsvs)} looks and {len(bounds)} bounds.")
    hs = [np.asarray(h, dtype=float) for h in hsvs]
    orders = [_layer_order(h, tol) for h in hs]
    r = orders[-1]
    if len(hs) <= patience:
        return Settled(False, False, r)
    profiles = [h.reshape(-1, h.shape[-1]).sum(0) for h in hs]
    n = hs[-1].shape[-1]
    certified = observed = True
    for k in range(len(hs) - patience, len(hs)):
        prev = hs[k - 1].reshape(-1, n)
        if r < n:
            eps = bounds[k - 1]
            certified &= orders[k - 1] == r == orders[k] and eps is not None and bool(
                np.all(prev[:, r - 1] - prev[:, r] > 2.0 * np.asarray(eps, dtype=float).reshape(-1)))
        observed &= abs(orders[k] - r) <= rank_slack and abs(orders[k - 1] - r) <= rank_slack
        observed &= abs(_captured(profiles[k], r) - _captured(profiles[k - 1], r)) <= energy_slack
    return Settled(bool(certified), bool(observed), int(r))


def _could_certify(prev: np.ndarray, cur: np.ndarray, tol: float) -> bool:
    """Whether the certified path can pass for this interval: same order, and the observed movement
    (a lower bound of any valid ``eps``) below half of every channel's gap at the cut."""
    r = _layer_order(prev, tol)
    if r != _layer_order(cur, tol):
        return False
    n = prev.shape[-1]
    if r >= n:
        return True
    p, c = prev.reshape(-1, n), cur.reshape(-1, n)
    return bool(np.all(np.abs(c - p).max(-1) < 0.5 * (p[:, r - 1] - p[:, r])))


class HSVTimedSchedule(CompressionSchedule):
    """One cut, at the first look at which every layer's kept set has settled (or at a deadline).

    A drop-in :class:`~adapters.torch.CompressionSchedule` (``should_cut(step)``,
    ``step(step, model, optimizer)``, ``state_dict``): the training loops and the Lightning and
    Hugging Face callbacks that take a schedule take this one unchanged.

    Parameters
    ----------
    model : nn.Module
        The model to watch (the module itself, not a ``DistributedDataParallel`` wrapper).
    total_steps : int
        Optimizer steps in the whole run (as :class:`CompressionSchedule`); the deadline is a fraction of it.
    tol : float in (0, 1)
        The cut's tolerance, also the one whose kept set is watched (default 0.05).
    every : int
        Looks happen at steps that are multiples of ``every`` (the densest spacing).
    budget : float in (0, 1) or None
        The most the watching may cost, as a share of the whole run's training time (default
        0.02). The schedule times its own looks and the training between them (wall clock between
        calls of :meth:`should_cut`) and, since it stops looking at the deadline, spends the run's
        budget on the steps before it: a due look is skipped while
        ``watched + last look > budget * trained * total_steps / deadline``, i.e. while it would
        exceed the budget of a run going on at the step rate measured so far. The first look,
        whose cost is not known before it, comes at the first multiple of ``every``, so in a run
        of a few seconds it alone can exceed the budget; a cut that makes the steps faster raises
        the final share a little. The looks, and so the cut step, depend on the machine's speed;
        ``None`` looks at every multiple of ``every``, reproducibly.
    patience : int
        The kept set must pass :func:`kept_set_settled` over the last ``patience`` intervals
        between looks.
    min_step : int
        No cut before this step (e.g. the end of the learning-rate warm-up); looks start earlier.
    deadline : float in (0, 1] or int
        Cut at this step (a fraction of ``total_steps``, or a step) if the set has not settled by then.
    rule : {"either", "certified", "observed"}
        Which path of :func:`kept_set_settled` decides: either one (default), or only that one.
    rank_slack, energy_slack
        The observed path's tolerances (:func:`kept_set_settled`).
    **compress_kwargs
        As for :class:`~adapters.torch.CompressionSchedule` (``min_shrink``, ``rewarm_steps``, ...).

    Attributes
    ----------
    trace : list of dict
        One entry per look: ``step``, ``hsv`` (per layer, an array ``(..., n)``), ``bound`` (per
        layer, array or ``None``), ``kept`` (per layer, the order a cut would keep),
        ``certified``, ``observed`` (bools), ``cost_s`` (the look's wall clock).
    cut_step : int or None
        The step at which the cut was decided; ``reason`` is ``"certified"``, ``"observed"`` or ``"deadline"``.
    watch_time_s, train_time_s : float
        Wall clock spent looking, and between looks (the training's time as this schedule sees it).

    Notes
    -----
    A look costs, per group of equal-shaped layers, one batched values-only HSV computation
    (closed-form Gramians, a factor of ``P`` and an eigenvalue-only solve) and, when the kept
    order of some layer has not moved since the last look and its observed movement is below half
    its gap at the cut (otherwise the certified path fails whatever the bound), the bound ``eps_k``: the Frobenius (Hilbert-Schmidt) norm of the Hankel operator of
    ``G_k - G_{k-1}``, ``sqrt(trace(P Q))`` from the closed-form Gramians, an upper bound of
    the Hankel norm that :func:`lti_reduce.hsv_perturbation_bound` uses (no factorization). After a
    resume from a checkpoint the watching starts again (the previous look is not saved).
    """

    def __init__(self, model: nn.Module, total_steps: int, *, tol: float = 0.05, every: int = 10,
                 budget: float | None = 0.02, patience: int = 3, min_step: int = 1, deadline: float | int = 0.5,
                 rule: str = "either", rank_slack: int = 0, energy_slack: float | None = None,
                 **compress_kwargs):
        if "rank" in compress_kwargs or "steps" in compress_kwargs:
            raise ValueError("HSVTimedSchedule cuts by tol at the step it chooses; rank= and steps= do not apply "
                             "(use CompressionSchedule for fixed steps).")
        for name, value in (("every", every), ("patience", patience), ("min_step", min_step)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if budget is not None and not (isinstance(budget, (int, float)) and 0.0 < float(budget) < 1.0):
            raise ValueError(f"budget must be a share of the training time in (0, 1) (e.g. 0.02), or None to "
                             f"look at every multiple of every=, got {budget!r}.")
        if isinstance(deadline, float):
            if not 0.0 < deadline <= 1.0:
                raise ValueError(f"deadline must be a fraction in (0, 1] or a step, got {deadline!r}.")
            last = max(1, int(round(deadline * total_steps)))
        else:
            last = int(deadline)
        if rule not in _RULES:
            raise ValueError(f"rule must be one of {_RULES} (which path of kept_set_settled decides), got {rule!r}.")
        super().__init__(total_steps, tol=tol, steps=[last], **compress_kwargs)
        if not compressible_layers(model):
            raise ValueError(f"HSVTimedSchedule: {type(model).__name__} has no compressible layer to watch.")
        kept_set_settled([np.ones(2)] * 2, [None], self.tol, 1, rank_slack=rank_slack,
                         energy_slack=energy_slack)  # checks the two slacks now, not at the first look
        self.model = model
        self.every, self.patience, self.min_step, self.deadline = int(every), int(patience), int(min_step), last
        self.budget = None if budget is None else float(budget)
        self.rule, self.rank_slack, self.energy_slack = rule, int(rank_slack), energy_slack
        self.trace: list[dict] = []
        self.cut_step: int | None = None
        self.reason: str | None = None
        self.watch_time_s = 0.0
        self.train_time_s = 0.0
        self._clock: float | None = None
        self._last_cost = 0.0
        self._systems = None
        self._hsvs: list = []
        self._bounds: list = []
        self._decided: tuple[int, bool] | None = None

    @property
    def steps(self) -> list[int]:
        """The cut step once decided (``[]`` before), for code that reads a schedule's steps."""
        return [] if self.cut_step is None else [self.cut_step]

    @steps.setter
    def steps(self, value) -> None:  # CompressionSchedule.__init__ assigns its validated steps
        self._fixed_steps = list(value)

    @torch.no_grad()
    def observe(self, step: int) -> tuple[bool, bool]:
        """Look at the model's HSVs now (step ``step``); return ``(certified, observed)`` for all layers."""
        start = time.perf_counter()
        systems = [_working(layer.to_system()) for _, layer in compressible_layers(self.model)]
        if self._systems is not None and [tuple(s.lam.shape) for s in systems] != \
                [tuple(s.lam.shape) for s in self._systems]:
            self._systems, self._hsvs, self._bounds = None, [], []  # the state sizes changed: start again
        groups = group_indices(systems)
        hsv = [None] * len(systems)
        for idx in groups:
            h = _diagonal_hsv_values(_stack([systems[i] for i in idx])).cpu().numpy()
            for j, i in enumerate(idx):
                hsv[i] = h[j]
        kept = [_layer_order(h, self.tol) for h in hsv]
        bound = [None] * len(systems)
        if self._systems is not None:
            could = [_could_certify(self._hsvs[-1][i], hsv[i], self.tol) for i in range(len(systems))]
            for idx in groups:
                if any(could[i] for i in idx):  # else the certified path fails anyway: skip the bound
                    b = _diagonal_hankel_frobenius_norm(_difference(_stack([self._systems[i] for i in idx]),
                                                                    _stack([systems[i] for i in idx])))
                    for j, i in enumerate(idx):
                        bound[i] = b[j].cpu().numpy()
            self._bounds.append(bound)
        self._systems = systems
        self._hsvs.append(hsv)
        self._hsvs, self._bounds = self._hsvs[-(self.patience + 1):], self._bounds[-self.patience:]
        answers = [kept_set_settled([h[i] for h in self._hsvs], [b[i] for b in self._bounds], self.tol,
                                    self.patience, rank_slack=self.rank_slack, energy_slack=self.energy_slack)
                   for i in range(len(systems))]
        certified = all(a.certified for a in answers)
        observed = all(a.observed for a in answers)
        cost = time.perf_counter() - start
        self.trace.append({"step": int(step), "hsv": hsv, "bound": bound, "kept": kept, "certified": certified,
                           "observed": observed, "cost_s": cost})
        self.watch_time_s += cost
        self._last_cost = cost
        return certified, observed

    def _look_due(self, step: int) -> bool:
        if step % self.every:
            return False
        if self.budget is None or not self.trace:
            return True
        run_share = self.total_steps / max(1, self.deadline)  # the run's budget, spent before the deadline
        return self.watch_time_s + self._last_cost <= self.budget * self.train_time_s * run_share

    def should_cut(self, step: int) -> bool:
        """Whether to cut after optimizer step ``step``: looks when due (``every``, ``budget``) until the one cut.

        Called more than once at the same step, it looks once and repeats its answer.
        """
        step = int(step)
        now = time.perf_counter()
        if self._decided is not None and self._decided[0] == step:
            return self._decided[1]
        if self._clock is not None:
            self.train_time_s += now - self._clock
        due = False
        if self.enabled and self.cut_step is None and not self.history:
            if self._look_due(step):
                certified, observed = self.observe(step)
                if step >= self.min_step:
                    if certified and self.rule in ("either", "certified"):
                        due, self.reason = True, "certified"
                    elif observed and self.rule in ("either", "observed"):
                        due, self.reason = True, "observed"
            if not due and step >= self.deadline:
                due, self.reason = True, "deadline"
        elif self.cut_step == step and not self.history:
            due = True
        if due:
            self.cut_step = step
        self._decided = (step, due)
        self._clock = time.perf_counter()
        return due

    def state_dict(self) -> dict:
        """The schedule's state (options, history, the decided cut); the trace and last look are not saved."""
        state = super().state_dict()
        state.update({"every": self.every, "budget": self.budget, "patience": self.patience,
                      "min_step": self.min_step, "rule": self.rule, "rank_slack": self.rank_slack,
                      "energy_slack": self.energy_slack, "deadline": self.deadline, "cut_step": self.cut_step,
                      "reason": self.reason})
        state["steps"] = list(self._fixed_steps)
        return state

    def load_state_dict(self, state: dict) -> None:
        state = copy.deepcopy(state)
        super().load_state_dict(state)
        self._fixed_steps = list(state["steps"])
        self.every, self.patience, self.min_step = state["every"], state["patience"], state["min_step"]
        self.budget, self.rule = state.get("budget"), state.get("rule", "either")
        self.rank_slack, self.energy_slack = state.get("rank_slack", 0), state.get("energy_slack")
        self.deadline, self.cut_step, self.reason = state["deadline"], state["cut_step"], state["reason"]
        self._systems, self._hsvs, self._bounds, self._decided, self._clock = None, [], [], None, None


def save_hsv_trajectory_plot(trace: list[dict], path, *, cut_step: int | None = None,
                             fixed_step: int | None = None, top: int | None = None, title: str = "") -> str | None:
    """Plot the watched HSVs over the steps, one panel per layer, with the cut marked.

    Each layer's ``top`` leading HSVs (default all; for a layer of channels, the channel-wise
    maximum) are drawn on a log scale, the ones the cut keeps in blue and the others in gray; a solid line marks ``cut_step`` and a dashed one ``fixed_step`` (e.g. the
    fixed 10% schedule's cut). Returns the path written, or ``None`` without matplotlib.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    if not trace:
        return None
    n_layers = len(trace[0]["hsv"])
    fig = Figure(figsize=(4.2 * n_layers, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, n_layers, squeeze=False)[0])
    steps = [t["step"] for t in trace]
    for i, ax in enumerate(axes):
        h = np.stack([np.asarray(t["hsv"][i]).reshape(-1, np.asarray(t["hsv"][i]).shape[-1]).max(0)
                      for t in trace])
        for j in range(h.shape[1] if top is None else min(top, h.shape[1])):
            ax.plot(steps, np.maximum(h[:, j], 1e-12), lw=1, color="tab:blue" if j < trace[-1]["kept"][i]
                    else "tab:gray")
        if cut_step is not None:
            ax.axvline(cut_step, color="tab:red", lw=1.5, label=f"cut (step {cut_step})")
        if fixed_step is not None:
            ax.axvline(fixed_step, color="k", lw=1, ls="--", label=f"fixed 10% (step {fixed_step})")
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("Hankel singular value")
        ax.set_title(f"layer {i}: blue kept, gray dropped", fontsize=9)
        ax.grid(alpha=0.3)
        if i == 0 and (cut_step is not None or fixed_step is not None):
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)
    return str(path)
