"""Cuts timed by the model: watch the Hankel singular values and cut once the kept set has settled.

CompreSSM (arXiv 2510.02823) observes that the ranking of the HSVs settles early in training and
uses it to justify cutting at a fixed fraction of the steps. :class:`HSVTimedSchedule` uses it to
decide *when*: every ``every`` optimizer steps it reads each compressible layer's system, computes
its HSVs and the Weyl bound on how far they can have moved since the last look
(:func:`lti_reduce.hsv_perturbation_bound`, one batched call per group of equal-shaped layers), and
cuts at the first look at which :func:`kept_set_settled` holds. All numerics are the core's; this
module only compares the numbers it returns.

:func:`save_hsv_trajectory_plot` draws the watched HSVs with the cut marked.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn

import lti_reduce as lr

from .compress import _difference, _stack, _working
from .protocol import compressible_layers
from .schedule import CompressionSchedule

__all__ = ["HSVTimedSchedule", "kept_set_settled", "save_hsv_trajectory_plot"]


def kept_set_settled(hsvs, bounds, tol: float, patience: int, *, certificate: str = "weyl") -> np.ndarray:
    """Whether the states a ``tol`` cut keeps have settled at the last of a sequence of looks.

    Parameters
    ----------
    hsvs : sequence of arrays, each of shape (..., n)
        HSVs at looks ``0 .. j`` (sorted descending, as :func:`lti_reduce.hankel_singular_values`
        returns them); a leading batch shape holds independent channels or layers.
    bounds : sequence of arrays, each of shape (...)
        ``bounds[k - 1] = eps_k``, the Weyl bound between looks ``k - 1`` and ``k``
        (``HSVPerturbation.bound``: the Hankel norm of ``G_k - G_{k-1}``), ``k = 1 .. j``.
    tol : float in (0, 1)
        The cut's tolerance; ``r = lti_reduce.rank_for_tol(hsv, tol)`` states are kept.
    patience : int >= 1
        How many of the latest intervals between looks must pass the test.
    certificate : {"weyl", "observed"}
        What the gap at the cut is compared with: ``"weyl"`` (default) twice the Weyl bound
        ``eps_k``, a certificate; ``"observed"`` twice the observed movement
        ``max_i |sigma_i^{(k)} - sigma_i^{(k-1)}|`` of the sorted HSVs (never above ``eps_k``), a
        heuristic: sorted values cannot show two states that swapped places and back between looks.

    Returns
    -------
    numpy.ndarray of bool, shape (...)
        Per system: settled at look ``j``. ``False`` everywhere while ``j < patience``.

    Notes
    -----
    A system is settled at look ``j`` when, with ``r = rank_for_tol(sigma^{(j)}, tol)``, for every
    ``k = j - patience + 1 .. j``:

    1. *the kept count has not moved*: ``rank_for_tol(sigma^{(k-1)}, tol) = r`` (and at ``k = j``);
    2. *no HSV crossed the cut* (Weyl): ``sigma^{(k-1)}_r - sigma^{(k-1)}_{r+1} > 2 eps_k``, which
       with ``|sigma_i^{(k)} - sigma_i^{(k-1)}| <= eps_k`` for every ``i`` certifies that the ``r``
       leading HSVs at look ``k`` are the images of those at look ``k - 1``
       (:class:`lti_reduce.bounds.HSVPerturbation`). ``r = n`` (nothing to cut) passes.

    With ``certificate="observed"``, ``eps_k`` in 2. is replaced by the observed movement.

    The certificate covers the changes that happened between looks (training moves the system
    continuously, and the bound is over the whole interval's net change); it predicts nothing about
    later steps.
    """
    if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1:
        raise ValueError(f"patience must be an integer >= 1, got {patience!r}.")
    if certificate not in ("weyl", "observed"):
        raise ValueError(f"certificate must be 'weyl' (the Weyl bound) or 'observed' (the HSVs' observed "
                         f"movement), got {certificate!r}.")
    if len(bounds) != len(hsvs) - 1:
        raise ValueError(f"need one bound per interval between looks: {len(hsvs)} looks and {len(bounds)} bounds.")
    last = np.asarray(hsvs[-1], dtype=float)
    if len(hsvs) <= patience:
        return np.zeros(last.shape[:-1], dtype=bool)
    n = last.shape[-1]
    r = np.asarray(lr.rank_for_tol(last, tol))
    settled = np.ones(last.shape[:-1], dtype=bool)
    j = len(hsvs) - 1
    for k in range(j - patience + 1, j + 1):
        prev = np.asarray(hsvs[k - 1], dtype=float)
        settled &= np.asarray(lr.rank_for_tol(prev, tol)) == r
        rr = np.minimum(r, n - 1)[..., None]
        gap = (np.take_along_axis(prev, rr - 1, -1) - np.take_along_axis(prev, rr, -1))[..., 0]
        if certificate == "weyl":
            moved = np.asarray(bounds[k - 1], dtype=float)
        else:
            moved = np.abs(np.asarray(hsvs[k], dtype=float) - prev).max(-1)
        settled &= (r >= n) | (gap > 2.0 * moved)
    return settled


class HSVTimedSchedule(CompressionSchedule):
    """One cut, at the first step at which every layer's kept set has settled (or at a deadline).

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
        Look every ``every`` optimizer steps (steps ``every, 2 every, ...``).
    patience : int
        The kept set must pass :func:`kept_set_settled` over the last ``patience`` intervals
        between looks; the earliest possible cut is at step ``(patience + 1) * every``... once
        ``min_step`` is reached.
    min_step : int
        No cut before this step (e.g. the end of the learning-rate warm-up).
    deadline : float in (0, 1] or int
        Cut at this step (a fraction of ``total_steps``, or a step) if the set has not settled by then.
    certificate : {"weyl", "observed"}
        The test of :func:`kept_set_settled`.
    **compress_kwargs
        As for :class:`~adapters.torch.CompressionSchedule` (``min_shrink``, ``rewarm_steps``, ...).

    Attributes
    ----------
    trace : list of dict
        One entry per look: ``step``, ``hsv`` (list per layer of arrays ``(..., n)``), ``bound`` (per
        layer, ``None`` at the first look), ``kept`` (per layer, the order a cut would keep, the
        largest over channels) and ``settled`` (bool).
    cut_step : int or None
        The step at which the cut was decided; ``reason`` is ``"settled"`` or ``"deadline"``.
    watch_time_s : float
        Wall clock spent looking (the monitor's whole cost).

    Notes
    -----
    Each look costs, per group of equal-shaped layers, one batched
    :func:`lti_reduce.hankel_singular_values` of the layers' systems and one
    :func:`lti_reduce.hankel_norm` of their differences from the last look (order ``2 n``): the
    Weyl bound of :func:`lti_reduce.hsv_perturbation_bound` without recomputing the last look's
    HSVs. After a resume from a checkpoint the watching starts
    again (the previous look's system is not saved).
    """

    def __init__(self, model: nn.Module, total_steps: int, *, tol: float = 0.05, every: int = 10,
                 patience: int = 3, min_step: int = 1, deadline: float | int = 0.5, certificate: str = "weyl",
                 **compress_kwargs):
        if "rank" in compress_kwargs or "steps" in compress_kwargs:
            raise ValueError("HSVTimedSchedule cuts by tol at the step it chooses; rank= and steps= do not apply "
                             "(use CompressionSchedule for fixed steps).")
        for name, value in (("every", every), ("patience", patience), ("min_step", min_step)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if isinstance(deadline, float):
            if not 0.0 < deadline <= 1.0:
                raise ValueError(f"deadline must be a fraction in (0, 1] or a step, got {deadline!r}.")
            last = max(1, int(round(deadline * total_steps)))
        else:
            last = int(deadline)
        if certificate not in ("weyl", "observed"):
            raise ValueError(f"certificate must be 'weyl' or 'observed', got {certificate!r}.")
        super().__init__(total_steps, tol=tol, steps=[last], **compress_kwargs)
        self.certificate = certificate
        if not compressible_layers(model):
            raise ValueError(f"HSVTimedSchedule: {type(model).__name__} has no compressible layer to watch.")
        self.model = model
        self.every, self.patience, self.min_step, self.deadline = int(every), int(patience), int(min_step), last
        self.trace: list[dict] = []
        self.cut_step: int | None = None
        self.reason: str | None = None
        self.watch_time_s = 0.0
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
    def observe(self, step: int) -> bool:
        """Look at the model's HSVs now (step ``step``); return whether every layer has settled."""
        import time

        start = time.perf_counter()
        layers = compressible_layers(self.model)
        systems = [_working(layer.to_system()) for _, layer in layers]
        if self._systems is not None and [tuple(s.lam.shape) for s in systems] != \
                [tuple(s.lam.shape) for s in self._systems]:
            self._systems, self._hsvs, self._bounds = None, [], []  # the state sizes changed: start again
        groups: dict = {}
        for i, s in enumerate(systems):
            groups.setdefault((tuple(s.lam.shape), s.lam.dtype, s.real_output), []).append(i)
        hsv, bound = [None] * len(systems), [None] * len(systems)
        for idx in groups.values():
            cur = _stack([systems[i] for i in idx])
            h = lr.hankel_singular_values(cur)
            b = None
            if self._systems is not None:
                b = lr.hankel_norm(_difference(_stack([self._systems[i] for i in idx]), cur))
            for j, i in enumerate(idx):
                hsv[i] = h[j].cpu().numpy()
                bound[i] = None if b is None else b[j].cpu().numpy()
        if self._systems is not None:
            self._bounds.append(bound)
        self._systems = systems
        self._hsvs.append(hsv)
        self._hsvs, self._bounds = self._hsvs[-(self.patience + 1):], self._bounds[-self.patience:]
        settled = all(bool(np.all(kept_set_settled([h[i] for h in self._hsvs], [b[i] for b in self._bounds],
                                                    self.tol, self.patience, certificate=self.certificate)))
                      for i in range(len(systems)))
        kept = [int(np.max(lr.rank_for_tol(h, self.tol))) for h in hsv]
        self.trace.append({"step": int(step), "hsv": hsv, "bound": bound, "kept": kept, "settled": settled})
        self.watch_time_s += time.perf_counter() - start
        return settled

    def should_cut(self, step: int) -> bool:
        """Whether to cut after optimizer step ``step``: looks every ``every`` steps until the one cut.

        Called more than once at the same step, it looks once and repeats its answer.
        """
        step = int(step)
        if self._decided is not None and self._decided[0] == step:
            return self._decided[1]
        due = False
        if self.enabled and self.cut_step is None and not self.history:
            if step % self.every == 0:
                settled = self.observe(step)
                if settled and step >= self.min_step:
                    due, self.reason = True, "settled"
            if not due and step >= self.deadline:
                due, self.reason = True, "deadline"
        elif self.cut_step == step and not self.history:
            due = True
        if due:
            self.cut_step = step
        self._decided = (step, due)
        return due

    def state_dict(self) -> dict:
        """The schedule's state (options, history, the decided cut); the trace and last look are not saved."""
        state = super().state_dict()
        state.update({"every": self.every, "patience": self.patience, "min_step": self.min_step,
                      "certificate": self.certificate,
                      "deadline": self.deadline, "cut_step": self.cut_step, "reason": self.reason})
        state["steps"] = list(self._fixed_steps)
        return state

    def load_state_dict(self, state: dict) -> None:
        state = copy.deepcopy(state)
        super().load_state_dict(state)
        self._fixed_steps = list(state["steps"])
        self.every, self.patience, self.min_step = state["every"], state["patience"], state["min_step"]
        self.certificate = state.get("certificate", "weyl")
        self.deadline, self.cut_step, self.reason = state["deadline"], state["cut_step"], state["reason"]
        self._systems, self._hsvs, self._bounds, self._decided = None, [], [], None


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
