"""``compress_``: the one entry point that cuts the state of live SSM layers, batched, atomic, optimizer-aware.

This module maps layers to systems and back; all numerics are in :mod:`lti_reduce`.
"""

from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
import torch
import torch.nn as nn

import lti_reduce as lr

from .cut import _guards
from .optim import (check_optimizer_owns, check_rewarm_steps, mark_rebased_, rebind_parameters_, reset_state_,
                    rewarm_)
from .protocol import compressible_layers
from .cut.certify import _measure_after, _measure_before, _PendingCertificates, check_certify
from .cut.compute import _group_key, _stack, _working, lr_hsv_numpy, lr_to_numpy
from .cut.progress import Progress
from .cut.certify import _difference  # noqa: F401  (monitor.py and tests import it from here)
from .cut.report import CompressionReport, LayerReport, _selective_entry, warn_if_gated

__all__ = ["compress_", "CompressionReport", "LayerReport"]

_SELECTIONS = ("largest", "smallest", "random")
_SCOPES = ("layer", "global")


class _Required:
    def __repr__(self) -> str:
        return "<required>"


_REQUIRED = _Required()


def _check_tol(tol) -> None:
    if tol is None:
        return
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0.0 < float(tol) < 1.0:
        hint = (f" (a fraction, not a percentage: did you mean {float(tol) / 100:g}?)"
                if isinstance(tol, (int, float)) and not isinstance(tol, bool) and 1.0 <= float(tol) < 100.0 else "")
        raise ValueError(f"tol must be a float strictly between 0 and 1, the fraction of each layer's HSV energy a "
                         f"cut may drop, got {tol!r}{hint}.")


def _check_options(tol, rank, selection, scope, min_shrink, method="truncate", seed=None):
    if (tol is None) == (rank is None):
        raise ValueError(f"give exactly one of tol= (fraction of HSV energy that may be dropped, e.g. 0.01) and "
                         f"rank= (new state_dim per layer); got tol={tol!r}, rank={rank!r}.")
    _check_tol(tol)
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive integer (the new state_dim of each layer), got {rank!r}.")
    if selection not in _SELECTIONS:
        raise ValueError(f"selection must be one of {_SELECTIONS}, got {selection!r}.")
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}.")
    if scope == "global" and tol is None:
        raise ValueError("scope='global' distributes one energy budget over layers and needs tol=, not rank=.")
    if isinstance(min_shrink, bool) or not isinstance(min_shrink, (int, float)) or not 0.0 <= float(min_shrink) < 1.0:
        raise ValueError(f"min_shrink must be in [0, 1) (a layer is cut only if it shrinks by this fraction), got {min_shrink!r}.")
    if method not in ("truncate", "spa"):
        raise ValueError(f"method must be 'truncate' (balanced truncation) or 'spa' (singular perturbation), got {method!r}.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0):
        raise ValueError(f"seed must be None or a non-negative integer (it seeds selection='random'), got {seed!r}; "
                         "pass e.g. seed=0.")


def _check_optimizer_argument(optimizer, where: str):
    if optimizer is _REQUIRED:
        raise TypeError(
            f"{where} needs optimizer=: pass the optimizer that trains the model (a cut re-bases the SSM "
            "parameters, and their old moments must be reset), or optimizer=None if no optimizer holds state "
            "for them yet (one built afterwards, or a model that is not training).")
    if optimizer is not None and not (hasattr(optimizer, "param_groups") and hasattr(optimizer, "state")):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer (anything with param_groups and state) or "
                        f"None, got {type(optimizer).__name__}.")


def _layer_system(name, layer):
    try:
        return layer.to_system()
    except lr.UnstableSystemError as exc:
        raise lr.UnstableSystemError(
            f"layer {name!r}: its eigenvalues left the unit disc, so its Gramians and HSVs do not exist ({exc}). "
            "This happens when training diverges or a parameterization does not constrain |lam| < 1; lower the "
            "learning rate or restore a checkpoint before compressing.") from exc
    except ValueError as exc:
        raise type(exc)(f"layer {name!r}: {exc}") from exc


def _global_orders(hsvs: list[np.ndarray], tol: float) -> list[int]:
    """Layer-adaptive orders from one budget on normalized energy (LAST, arXiv 2411.02824).

    Each layer's HSVs are normalized to sum 1; the globally smallest normalized
    values are dropped while their total stays within ``tol * n_layers`` (the mean
    dropped fraction is ``tol``), never a layer's leading state. A layer of independent
    channels takes part through its worst channel (the largest normalized tail).
    """
    entries = []
    for li, h in enumerate(hsvs):
        h2 = np.atleast_2d(h)
        total = h2.sum(-1, keepdims=True)
        e = np.where(total > 0, h2 / np.where(total > 0, total, 1.0), 0.0).max(0)
        entries.extend((float(e[i]), li, i) for i in range(1, e.shape[-1]))
    entries.sort()
    budget, spent = tol * len(hsvs), 0.0
    dropped = [0] * len(hsvs)
    for value, li, _ in entries:
        if spent + value > budget:
            break
        spent += value
        dropped[li] += 1
    return [h.shape[-1] - d for h, d in zip(hsvs, dropped)]


def _layer_order(hsv: np.ndarray, tol: float) -> int:
    """The order that keeps ``1 - tol`` of a layer's HSV energy; for channels, of their total energy.

    A layer of independent channels (``hsv`` of shape (channels, n)) stores one number of states for all
    of them, so it is cut to one order ``r``: the smallest whose dropped HSVs, summed over every channel,
    stay within ``tol`` of the sum of all its channels' HSVs,
    ``sum_c sum_{i > r} sigma_i^(c) <= tol * sum_c sum_i sigma_i^(c)``, which is
    :func:`lti_reduce.rank_for_tol` of the summed profile ``sum_c sigma_i^(c)`` (descending, as each is).
    A few slow channels then no longer hold the whole layer at full size; each channel's own error
    stays within its own bound ``2 sum_{i > r} sigma_i^(c)``, which the report gives (the largest).
    """
    h = np.asarray(hsv, dtype=np.float64)
    if h.ndim > 1:
        h = h.reshape(-1, h.shape[-1]).sum(0)
    return int(lr.rank_for_tol(h, tol))


def _kept_states(order_new: int, order: int, selection: str, rng) -> list[int] | None:
    if selection == "largest":
        return None
    if selection == "smallest":
        return list(range(order - order_new, order))
    return sorted(rng.choice(order, size=order_new, replace=False).tolist())


def _reduce_channels(bal, order: int, keep, method: str):
    """Reduce every channel of a batched result to ``order``: one batched core call, one batched modal form.

    A real-output channel of order ``k`` with ``q`` real eigenvalues has ``(k + q) / 2`` modes, which may
    differ between channels: the shorter channels are filled with zero modes (``lam = 0, B = 0, C = 0``,
    nothing added to their maps; :func:`lti_reduce.modal_form` with ``pad=True``), so every channel keeps
    exactly ``order`` states. Returns ``([result], system)``: the batched core result and the modal system.
    """
    res = bal.reduce(rank=order, method=method) if keep is None else bal.reduce(states=keep, method=method)
    system, _ = lr.modal_form(res.A, res.B, res.C, res.D, pad=True)
    return [res], system


def _reduce_layer(bal, order: int, keep, method: str, max_modes):
    """Reduce to ``order`` and convert to modal form, with at most ``max_modes`` modes.

    A real-output reduced model of order ``k`` with ``q`` real eigenvalues has
    ``(k + q) / 2`` modes (a real eigenvalue takes a whole mode), so a requested
    ``state_dim`` may need a slightly lower order: it is lowered one state at a time.
    Returns ``(results, system)``: a list holding the core result (batched over the
    channels of a layer of independent channels) and the reduced modal system to load.
    """
    batched = bal.hsv.ndim > 1
    while True:
        if batched:
            results, system = _reduce_channels(bal, order, keep, method)
        else:
            res = bal.reduce(rank=order, method=method) if keep is None else bal.reduce(states=keep, method=method)
            results, system = [res], res.to_diagonal()
        if max_modes is None or system.n <= max_modes or order == 1:
            return results, system
        order -= 1
        if keep is not None:  # drop the kept state with the smallest HSV
            hsv = np.atleast_2d(lr_hsv_numpy(bal)).max(0)
            keep = sorted(sorted(keep, key=lambda i: -hsv[i])[:order])


def _layer_map(layer, system):
    """The layer's own map as a :class:`lti_reduce.DiagonalSystem`, in the core's time convention.

    A layer that computes ``x_k = lam x_{k-1} + B u_k``, ``y_k = (Re) C x_k + D u_k`` (``system_convention =
    "same_step"``, e.g. the LRU) reports the one-step-delayed system; its map is realized exactly by
    ``(lam, B, C diag(lam), D + (Re) C B)``. Other layers' systems are their maps.
    """
    if getattr(layer, "system_convention", None) != "same_step":
        return system
    CB = system.C @ system.B
    if system.real_output:
        CB = CB.real
    D = CB if system.D is None else system.D + CB
    return lr.DiagonalSystem(system.lam, system.B, system.C * system.lam.unsqueeze(-2), D,
                             real_output=system.real_output)


def _check_hinf_method(method):
    if method not in ("search", "level-set"):
        raise ValueError(f"hinf_method must be 'search' (fast frequency search, the default) or 'level-set' "
                         f"(the H-infinity norm guaranteed to hinf_rtol, O(n^3)), got {method!r}.")


def _accepts(fn, keyword: str) -> bool:
    try:
        return keyword in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class _Snapshot:
    """Everything a layer or optimizer swap can change, to undo it exactly."""

    def __init__(self, layers, optimizer):
        self.layers = []
        for layer in layers:
            for module in layer.modules():
                state = dict(module.__dict__)
                state["_parameters"] = dict(module._parameters)
                state["_buffers"] = dict(module._buffers)
                state["_modules"] = dict(module._modules)
                tensors = [t for t in list(module._parameters.values()) + list(module._buffers.values())
                           if t is not None]
                self.layers.append((module, state, [(t, t.data.clone(), t.grad) for t in tensors]))
        self.optimizer = optimizer
        if optimizer is not None:
            self.groups = [list(g["params"]) for g in optimizer.param_groups]
            self.state = dict(optimizer.state)

    def restore(self):
        for module, state, tensors in self.layers:
            module.__dict__.clear()
            module.__dict__.update(state)
            for t, data, grad in tensors:
                t.data = data
                t.grad = grad
        if self.optimizer is not None:
            for group, params in zip(self.optimizer.param_groups, self.groups):
                group["params"] = params
            self.optimizer.state.clear()
            self.optimizer.state.update(self.state)


@torch.no_grad()
def compress_(model: nn.Module, *, tol: float | None = None, rank: int | None = None,
              optimizer: torch.optim.Optimizer | None = _REQUIRED, calibration_inputs=None,
              selection: str = "largest", scope: str = "layer", min_shrink: float = 0.05, method: str = "truncate",
              seed: int | None = None, certify: bool | str = "output", hinf_rtol: float = 1e-6,
              hinf_method: str = "search", rewarm_steps: int = 20, progress: bool = True) -> CompressionReport:
    """Cut low-energy states of every compressible layer of ``model``, in place.

    The one entry point for every layer kind the library knows:

    * *LTI layers* (the protocol of :mod:`adapters.torch.protocol`: :class:`adapters.torch.LRU`, S5- and
      S4D-style layers, your own): each layer's linear core (``layer.to_system()``) is balanced with
      :func:`lti_reduce.balance` (one batched call per group of equal-shaped layers on the same device),
      cut to a new order, returned to modal form with
      :meth:`~lti_reduce.BalancedTruncationResult.to_diagonal` and written back with ``layer.load_system_``.
      A system with leading batch dimensions is a layer of independent channels (S4D: one SISO system per
      channel, sharing one state size): every channel is cut to one order, chosen from the channels'
      total HSV energy with ``tol`` (so a few slow channels do not hold the layer at full size), in one
      batched reduction and one batched modal form; each channel's error stays within its own bound
      ``2 sum_{i > r} sigma_i``, the largest of which the report gives.
    * *Selective layers* (:class:`adapters.torch.SelectiveSSM` and the mixers
      :func:`adapters.torch.mamba._selective_layers` finds): their ``Delta, B, C`` depend on the input, so
      they are cut by state selection on calibrated, averaged systems
      (:func:`adapters.torch.compress_selective_`); ``calibration_inputs=`` is then required.

    CompreSSM (arXiv 2510.02823) does this a few times early in training.

    Parameters
    ----------
    model : nn.Module
        Any model containing compressible layers (also ``torch.compile``-d: the report uses the model's own
        layer names). A layer whose parameters are all frozen (``requires_grad=False``) is not cut; the
        report lists it with the note ``"frozen"``.
    tol : float in (0, 1), optional
        Fraction of each layer's HSV sum that may be dropped (the paper's tau), or
        with ``scope="global"`` the mean fraction over LTI layers.
    rank : int, optional
        Largest new ``state_dim`` of every layer, in the layer's own units (complex modes for
        the LRU; a real-output layer of ``r`` modes is a real system of order ``2 r``). A
        real-output reduced model of order ``k`` with ``q`` real eigenvalues needs ``(k + q) / 2``
        modes, so the largest order that fits in ``rank`` modes is taken: a layer can end one or
        two modes below ``rank``. Give exactly one of ``tol`` and ``rank``.
    optimizer : torch.optim.Optimizer or None, required keyword
        The optimizer that trains ``model``, or ``None`` said explicitly. Parameters are resized in place
        (every optimizer, scheduler and hook keeps the live ``nn.Parameter`` objects); the per-parameter
        state (moments, momentum) of every parameter the cut re-based is reset, everything else (group
        hyper-parameters, the other parameters' state, step counts) is kept. A selective layer's cut keeps
        the basis of the kept states, so its moments are sliced to them, as by
        :func:`adapters.torch.compress_selective_`. The argument is required
        because an optimizer cannot be found from the model, and one whose moments still have the old
        shapes and basis cannot train the cut layers: forgetting it is a ``TypeError`` here, at the call,
        rather than a failure (or a frozen layer) far away. With ``optimizer=None``, an optimizer that
        still holds old-shaped state for a cut parameter raises a ``RuntimeError`` naming the fix at its
        next ``step()`` (see :mod:`adapters.torch.optim`).
    calibration_inputs : Tensor or iterable of Tensors, optional
        Model inputs for the selective layers' calibration (``model(batch)`` under ``no_grad``); required
        when the model has selective layers. When given, the LTI layers' ``output_change`` is measured on
        what they receive from its first batch instead of their last input batch.
    selection : {"largest", "smallest", "random"}
        Which balanced states to keep: the highest-HSV ones (balanced truncation), or
        the paper's ablations (LTI layers).
    scope : {"layer", "global"}
        ``tol`` per layer, or one budget on normalized energy across LTI layers
        (layer-adaptive orders, LAST arXiv 2411.02824).
    min_shrink : float in [0, 1)
        A layer is cut only if its ``state_dim`` shrinks by at least this fraction
        (the paper's 5% gate). A layer it holds back gets a ``note``, a line under the table and a
        ``UserWarning``: a requested cut never does nothing silently.
    method : {"truncate", "spa"}
        Balanced truncation or singular perturbation (SPA changes ``D``; layers with
        an elementwise ``D`` such as the LRU reject it).
    seed : int >= 0, optional
        Seed for ``selection="random"``.
    certify : {"output", "hinf", True, "lazy", False}
        What the report certifies. ``"output"`` (default): each cut layer's ``output_change``, the
        relative change of its output on the inputs it really sees (its last input batch, kept by the
        layer's ``forward``, or ``calibration_inputs=``), measured directly by running the layer before
        and after the cut on a few sequences (two forward passes of the cut layers), beside the
        a-priori bound; the maps before and right after the cut are stored (detached copies), so
        :meth:`CompressionReport.certify_hinf` gives the H-infinity ``gain`` and ``error`` later on
        request; printing the report computes nothing. ``"hinf"`` or ``True``: that, and the
        H-infinity ``gain`` and a-posteriori ``error`` computed before returning. ``"lazy"``: they are
        computed when the report's figures are first read (``report.layers[i].error``, the table,
        ``to_dict``). ``False``: nothing measured or stored (``None``). Any other value is an error.
    hinf_rtol : float
        Relative accuracy of the reported ``gain`` and ``error`` (:func:`lti_reduce.hinf_norm`).
    hinf_method : {"search", "level-set"}
        How :func:`lti_reduce.hinf_norm` computes ``gain`` and ``error``. ``"search"`` (default): a
        frequency search on the diagonal maps, ``O(T n m p)`` with ``T`` a few hundred angles; each value
        is the layer's ``sigma_max`` at some frequency, a lower bound on the norm that equals it to
        ``hinf_rtol`` unless a peak lies outside every polished bracket (see
        :func:`lti_reduce.hinf_norm`). ``"level-set"``: the norm to ``hinf_rtol``, guaranteed, at
        ``O(n^3)`` per iteration on dense realizations of order ``2 n`` and ``2 (n + r)``, which at ``n``
        in the hundreds costs tens of times the cut.
    rewarm_steps : int >= 0
        With an optimizer: over its next ``rewarm_steps`` steps, the updates of the parameters the cut
        re-based are scaled by ``k / rewarm_steps`` at the ``k``-th step, which is a learning rate ramped
        up from ``lr / rewarm_steps`` for those parameters alone (default 20; 0 or 1: no ramp). Their
        optimizer state is reset by the cut, and Adam's first steps from zero moments move every element
        by about the full learning rate: without the ramp the loss typically jumps by one to two orders
        of magnitude for a few steps after a cut. The ramp is kept in the optimizer's param groups, so
        ``optimizer.state_dict()`` saves it and a resumed run continues it; it ends after its steps, when
        :class:`RollbackGuard` rolls the cut back, or when the next cut starts its own.
    progress : bool
        Work that runs longer than about 2 s (the cut of many layers, H-infinity certificates) shows
        progress: a tqdm bar on a terminal, ``logging`` INFO lines on the ``"adapters.torch"`` logger
        otherwise; ``False``: silent.

    Returns
    -------
    CompressionReport
        Per layer: the method, state size before/after, HSVs, energy kept, ``output_change`` (measured),
        the a-priori ``error_bound`` and ``sigma_{r+1}`` (``hsv_lower``), and on request ``gain`` (the
        map's H-infinity norm before the cut) and ``error`` (the H-infinity norm of the map's change,
        measured on the loaded layer). The printed table gives ``error_bound / sigma_1`` (an upper bound
        on the worst-case relative change) and, when computed, ``error`` and ``error_bound`` relative
        to ``gain``.

    Raises
    ------
    TypeError
        ``optimizer=`` not given; a ``DistributedDataParallel`` wrapper (use :func:`compress_ddp_`) or layers
        sharded by FSDP2 (use :func:`compress_fsdp_`).
    ValueError
        Bad options, a model with no compressible layer, selective layers without
        ``calibration_inputs=``, an optimizer that does not own the trainable parameters of the compressible
        layers or keeps state flattened across its parameters (``torch.optim.LBFGS`` is supported: its
        history restarts), layers on the ``meta`` device.
    RuntimeError
        Called under ``torch.inference_mode()``: tensors made there can never be saved for backward, so
        the cut parameters could not train; or while gradients are being accumulated (a parameter holds a
        gradient computed since the optimizer last stepped it): the cut would drop only the resized
        parameters' gradients and the next step would mix micro-batches.
    lti_reduce.UnstableSystemError
        A layer whose eigenvalues left the unit disc (its name is in the message).

    Notes
    -----
    Atomic: every reduction is computed before any layer changes; if anything fails
    (in the core, in a selective layer's cut, in ``load_system_``, in the optimizer update or in the
    a-posteriori norms) every layer's parameters, buffers and gradients and the optimizer are restored
    exactly, and the error is re-raised. The reduction runs on each layer's device in float64 and is
    returned in the layer's precision.

    Cost: the default certificate costs two forward passes of the cut layers on at most 1024 tokens
    of their input. The H-infinity ``gain`` and ``error`` cost far more than the cut for layers of a
    few hundred modes on the CPU (``benchmarks/bench_compress.py`` measures both against a training
    step); ``hinf_method="level-set"`` costs 50-90 times the cut.

    Examples
    --------
    >>> import torch, adapters.torch as at
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(at.LRU(8, 32), at.LRU(8, 32))
    >>> opt = torch.optim.Adam(model.parameters())
    >>> report = at.compress_(model, rank=8, optimizer=opt)
    >>> [layer.state_dim <= 8 for layer in model], [x.before for x in report]
    ([True, True], [32, 32])
    >>> all(opt.state[p] == {} or p.shape == opt.state[p]["exp_avg"].shape for p in model.parameters())
    True
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "compress_ was called under torch.inference_mode(): tensors made there can never be saved for "
            "backward, so the cut parameters could not train again. Call compress_ outside inference_mode "
            "(it runs under torch.no_grad() by itself).")
    _check_optimizer_argument(optimizer, "compress_")
    _guards.check_model(model)
    _check_options(tol, rank, selection, scope, min_shrink, method, seed)
    check_rewarm_steps(rewarm_steps)
    check_certify(certify)
    _check_hinf_method(hinf_method)
    if isinstance(hinf_rtol, bool) or not isinstance(hinf_rtol, (int, float)) or not 0.0 < float(hinf_rtol) < 1.0:
        raise ValueError(f"hinf_rtol must be a float in (0, 1) (relative accuracy of gain and error), got {hinf_rtol!r}.")
    from .mamba import _selective_layers, compress_selective_

    selective = _selective_layers(model)
    selective_ids = {id(m) for _, m in selective}
    layers = [(n, m) for n, m in compressible_layers(model)
              if id(m) not in selective_ids and not any(n.startswith(s + ".") for s, _ in selective if s)]
    if not layers and not selective:
        raise ValueError(f"{type(model).__name__} has no compressible layer: nothing implements state_dim, "
                         "to_system() and load_system_() (see adapters.torch.protocol), and it has no selective "
                         "layer (adapters.torch.SelectiveSSM).")
    if selective and calibration_inputs is None:
        names = ", ".join(repr(n) for n, _ in selective[:4]) + (" ..." if len(selective) > 4 else "")
        raise ValueError(f"{type(model).__name__} has selective layers ({names}) whose Delta, B and C depend on "
                         "the input; they are cut by state selection on averaged systems, which needs "
                         "calibration_inputs= (a few batches of model inputs).")
    _guards.check_layers(layers + selective)
    layers, frozen = _guards.split_frozen(layers)
    layers = [(_guards.user_name(n), m) for n, m in layers]
    if optimizer is not None:
        check_optimizer_owns(optimizer, [(f"{n}.{pn}" if n else pn, p) for n, layer in layers + selective
                                         for pn, p in layer.named_parameters()], "the compressible layers")
    rng = np.random.default_rng(seed)

    # 1. Systems, grouped for batched core calls; the maps' gains.
    systems = [_layer_system(name, layer) for name, layer in layers]
    groups: dict = {}
    for i, s in enumerate(systems):
        groups.setdefault(_group_key(s), []).append(i)
    balanced = [None] * len(layers)
    bar = Progress(2 * len(layers), "compress_", progress)
    for idx in groups.values():
        # working precision: the reduced models (and their modal forms) are computed from float64 matrices
        bal = lr.balance(_working(_stack([systems[i] for i in idx])))
        for j, i in enumerate(idx):
            balanced[i] = bal[j]
        bar.update(len(idx))
    hsvs = [lr_hsv_numpy(b) for b in balanced]

    # 2. Orders (in units of the core: the order of each layer's map, per channel).
    orders = [b.n for b in balanced]
    units = [b.n / layer.state_dim for b, (_, layer) in zip(balanced, layers)]
    if rank is not None:
        new_orders = [min(o, int(math.ceil(rank * u))) for o, u in zip(orders, units)]
    elif scope == "global":
        new_orders = _global_orders(hsvs, float(tol))
    else:  # the layer's rule; a layer of channels: one order from the channels' total energy
        new_orders = [_layer_order(h, float(tol)) for h in hsvs]

    # 3. Reduced layer systems (all computed before anything changes).
    plans, reports = [], []
    for (name, layer), bal, h, order, new_order, unit in zip(layers, balanced, hsvs, orders, new_orders, units):
        h2 = np.atleast_2d(h)
        before, totals = layer.state_dim, h2.sum(-1)
        keep = _kept_states(new_order, order, selection, rng)
        note, new_system, after, bound, kept, lower, budget = "", None, before, 0.0, 1.0, 0.0, 0.0
        # Fewest modes an order-k map can need (k / units, e.g. k/2 complex modes for a
        # real-output layer): if even that fails the gate, skip the reduction itself.
        fewest = math.ceil(new_order / unit)
        if new_order >= order:
            note = "nothing to cut"
        elif fewest > (1.0 - min_shrink) * before:
            note = f"gate: {before}->{fewest} (at least) shrinks by less than min_shrink={min_shrink:g}"
        else:
            results, new_system = _reduce_layer(bal, new_order, keep, method, rank)
            if new_system is None:
                note = "channels' reduced models need different numbers of modes; not cut"
            else:
                after = new_system.n
                res = results[0]  # every channel of a layer is cut to the same order k (batched over channels)
                k = res.rank
                kept_idx = list(range(k)) if res.states is None else list(res.states)
                energy = h2[:, kept_idx].sum(-1) / np.where(totals > 0, totals, 1.0)
                kept = float(np.where(totals > 0, energy, 1.0).min())  # the worst channel's
                bound = float(np.max(lr_to_numpy(res.error_bound)))
                # sigma_{k+1}: no order-k map is closer (whichever states were kept)
                lower = float(h2[:, k].max()) if k < order else 0.0
                new_order = k
                if _accepts(layer.load_system_, "real_mode_change"):
                    # The real-mode fix may cost 2^-7 of the cut's own least error (sigma_{r+1}).
                    budget = 2.0**-7 * max(lower, 2.0**-20 * float(h2[:, 0].max()))
                if after > (1.0 - min_shrink) * before:
                    note = f"gate: {before}->{after} shrinks by less than min_shrink={min_shrink:g}"
                    new_system, after, bound, kept, lower, budget = None, before, 0.0, 1.0, 0.0, 0.0
        plans.append((new_system, budget))
        bar.update()
        reports.append(LayerReport(name, before, after, order, order if new_system is None else new_order, h,
                                   kept, bound + budget, new_system is not None, note, hsv_lower=lower,
                                   channels=int(np.prod(h.shape[:-1])) if h.ndim > 1 else 1))
    maps_before = [_layer_map(layer, s) for (_, layer), s in zip(layers, systems)]
    cut = [i for i, (s, _) in enumerate(plans) if s is not None]
    bar.close()
    measured = _measure_before(model, [layers[i][1] for i in cut], calibration_inputs) if certify is not False else None

    # 4. Swap, undoing everything on any failure.
    todo = [(layers[i][1], plans[i]) for i in cut]
    selective_report, ramp = None, 0
    if todo or selective:
        _guards.check_no_pending_gradients(model)
        snapshot = _Snapshot([layer for layer, _ in todo] + [m for _, m in selective], optimizer)
        try:
            # fresh: parameter objects a layer created in place of others; sliced: selective, moments kept
            rebased, dropped, fresh, sliced = [], [], [], []
            if selective:
                old_sel = {(n, pn): p for n, m in selective for pn, p in m.named_parameters()}
                shapes = {key: tuple(p.shape) for key, p in old_sel.items()}
                with warnings.catch_warnings():  # the gate is reported once, below, for every layer
                    warnings.simplefilter("ignore", UserWarning)
                    selective_report = compress_selective_(model, calibration_inputs=calibration_inputs, tol=tol,
                                                           rank=rank, optimizer=optimizer, min_shrink=min_shrink)
                new_sel = {(n, pn): p for n, m in selective for pn, p in m.named_parameters()}
                for key, p in old_sel.items():
                    if new_sel.get(key) is not p:
                        dropped.append((f"{key[0]}.{key[1]}".lstrip("."), p))
                        if new_sel.get(key) is not None:
                            fresh.append(new_sel[key])
                    elif tuple(p.shape) != shapes[key]:
                        # a selection keeps the basis: compress_selective_ sliced the moments, as when called alone
                        sliced.append((p, shapes[key]))
            names = {id(layer): name for name, layer in layers}
            for layer, (system, budget) in todo:
                old = dict(layer.named_parameters())
                values = {pname: p.detach().clone() for pname, p in old.items()}
                if _accepts(layer.load_system_, "real_mode_change"):
                    layer.load_system_(system, real_mode_change=budget)
                else:
                    layer.load_system_(system)
                new = dict(layer.named_parameters())
                replaced = {}
                for pname, p in old.items():
                    q = new.get(pname)
                    if q is not p:
                        replaced[id(p)] = (p, q)
                        dropped.append((f"{names[id(layer)]}.{pname}".lstrip("."), p))
                    elif p.shape != values[pname].shape or not torch.equal(p.detach(), values[pname]):
                        rebased.append((p, tuple(values[pname].shape)))
                anchor = next(iter(old.values()), None)
                added = [(anchor, q) for pname, q in new.items() if pname not in old and anchor is not None]
                fresh += [q for _, q in replaced.values() if q is not None] + [q for _, q in added]
                if optimizer is not None and (replaced or added):
                    rebind_parameters_(optimizer, replaced, added)
            if optimizer is not None:
                reset_state_(optimizer, [p for p, _ in rebased])
            # 5. Certificates, on the loaded layers: the measured output change; the maps are stored for
            # the H-infinity norms (computed now, on first read or on request).
            if certify is not False:
                _measure_after(reports, cut, [layers[i][1] for i in cut], measured)
                maps_after = [_layer_map(layers[i][1], _layer_system(layers[i][0], layers[i][1])) for i in cut]
                pending = _PendingCertificates(reports, maps_before, cut, maps_after, hinf_rtol, hinf_method,
                                               auto=certify == "lazy", progress=progress)
                if certify is True or certify == "hinf":
                    pending.resolve()
        except BaseException:
            snapshot.restore()
            raise
        mark_rebased_(rebased + sliced, dropped)  # only once the call succeeded: a restored model has its old shapes
        trained = [p for p, _ in rebased] + fresh
        if optimizer is not None and trained and rewarm_steps > 1:
            rewarm_(optimizer, trained, rewarm_steps)
            ramp = rewarm_steps
    elif certify is not False:
        _measure_after(reports, [], [], measured)
        pending = _PendingCertificates(reports, maps_before, [], [], hinf_rtol, hinf_method,
                                       auto=certify == "lazy", progress=progress)
        if certify is True or certify == "hinf":
            pending.resolve()
    if selective_report is not None:
        reports.extend(_selective_entry(x) for x in selective_report.layers)
    for x in reports:
        x.name = _guards.user_name(x.name)
    reports.extend(_guards.frozen_entries(frozen))
    warn_if_gated(reports, min_shrink, stacklevel=4)  # 4: past torch.no_grad's wrapper
    return CompressionReport(reports, rewarm_steps=ramp)
