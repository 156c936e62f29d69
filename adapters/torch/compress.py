"""``compress_``: balanced truncation of live SSM layers, batched, atomic, optimizer-aware.

This module maps layers to systems and back; all numerics are in :mod:`lti_reduce`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

import lti_reduce as lr

from .optim import check_optimizer_owns, rebind_parameters_
from .protocol import compressible_layers

__all__ = ["compress_", "CompressionReport", "LayerReport"]

_SELECTIONS = ("largest", "smallest", "random")
_SCOPES = ("layer", "global")


@dataclass
class LayerReport:
    """What happened to one layer in one :func:`compress_` call.

    Attributes
    ----------
    name : str
        Qualified module name.
    before, after : int
        ``state_dim`` before and after (equal if the layer was not cut).
    order_before, order_after : int
        Order of the layer's map as an LTI system (``2 * state_dim`` for a real-output
        layer with complex modes) before the cut and of the kept balanced part.
    hsv : numpy.ndarray
        Hankel singular values of the layer's map before the cut, descending.
    energy_kept : float
        Fraction of the HSV sum carried by the kept states.
    error_bound : float
        A-priori bound ``2 * sum(discarded HSVs)`` on the H-infinity norm of the change
        of the layer's linear map (0 if not cut).
    compressed : bool
        Whether the layer was cut.
    note : str
        Why a layer was not cut (e.g. the ``min_shrink`` gate).
    """

    name: str
    before: int
    after: int
    order_before: int
    order_after: int
    hsv: np.ndarray = field(repr=False)
    energy_kept: float
    error_bound: float
    compressed: bool
    note: str = ""


@dataclass
class CompressionReport:
    """Per-layer results of a :func:`compress_` call; ``print(report)`` shows a table."""

    layers: list[LayerReport]

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> LayerReport:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r} in this report; layers: {[x.name for x in self.layers]}")

    @property
    def compressed(self) -> bool:
        """Whether any layer was cut."""
        return any(x.compressed for x in self.layers)

    @property
    def state_before(self) -> int:
        return sum(x.before for x in self.layers)

    @property
    def state_after(self) -> int:
        return sum(x.after for x in self.layers)

    def to_dict(self) -> dict:
        """A JSON-serializable summary (HSVs as lists)."""
        def plain(v):
            if isinstance(v, np.ndarray):
                return v.tolist()
            if hasattr(v, "__dataclass_fields__"):
                return {k: plain(w) for k, w in v.__dict__.items()}
            return v

        return {"layers": [plain(x) for x in self.layers],
                "state_before": self.state_before, "state_after": self.state_after}

    def __str__(self) -> str:
        head = f"{'layer':<28} {'state':>11} {'energy kept':>12} {'error bound':>12}  note"
        rows = [head, "-" * len(head)]
        for x in self.layers:
            state = f"{x.before}->{x.after}" if x.compressed else f"{x.before}"
            rows.append(f"{x.name or '<model>':<28} {state:>11} {x.energy_kept:>12.6f} {x.error_bound:>12.4e}  {x.note}")
        rows.append(f"{'total':<28} {f'{self.state_before}->{self.state_after}':>11}")
        return "\n".join(rows)


def _check_options(tol, rank, selection, scope, min_shrink):
    if (tol is None) == (rank is None):
        raise ValueError(f"give exactly one of tol= (fraction of HSV energy that may be dropped, e.g. 0.01) and "
                         f"rank= (new state_dim per layer); got tol={tol!r}, rank={rank!r}.")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0.0 < float(tol) < 1.0):
        raise ValueError(f"tol must be a float strictly between 0 and 1, got {tol!r}.")
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


def _group_key(system):
    t = lambda x: None if x is None else (tuple(x.shape), x.dtype, x.device)  # noqa: E731
    return (type(system), system.real_output, t(system.lam), t(system.B), t(system.C), t(system.D))


def _stack(systems):
    first = systems[0]
    stack = lambda attr: torch.stack([getattr(s, attr) for s in systems])  # noqa: E731
    return lr.DiagonalSystem(stack("lam"), stack("B"), stack("C"), None if first.D is None else stack("D"),
                             real_output=first.real_output)


def _global_orders(hsvs: list[np.ndarray], tol: float) -> list[int]:
    """Layer-adaptive orders from one budget on normalized energy (LAST, arXiv 2411.02824).

    Each layer's HSVs are normalized to sum 1; the globally smallest normalized
    values are dropped while their total stays within ``tol * n_layers`` (the mean
    dropped fraction is ``tol``), never a layer's leading state.
    """
    entries = []
    for li, h in enumerate(hsvs):
        total = float(h.sum())
        e = h / total if total > 0 else np.zeros_like(h)
        entries.extend((float(e[i]), li, i) for i in range(1, len(h)))
    entries.sort()
    budget, spent = tol * len(hsvs), 0.0
    dropped = [0] * len(hsvs)
    for value, li, _ in entries:
        if spent + value > budget:
            break
        spent += value
        dropped[li] += 1
    return [len(h) - d for h, d in zip(hsvs, dropped)]


def _kept_states(order_new: int, order: int, selection: str, rng) -> list[int] | None:
    if selection == "largest":
        return None
    if selection == "smallest":
        return list(range(order - order_new, order))
    return sorted(rng.choice(order, size=order_new, replace=False).tolist())


def _reduce_layer(bal, order: int, keep, method: str, max_modes):
    """Reduce to ``order`` and convert to modal form, with at most ``max_modes`` modes.

    A real-output reduced model of order ``k`` with ``q`` real eigenvalues has
    ``(k + q) / 2`` modes (a real eigenvalue takes a whole mode), so a requested
    ``state_dim`` may need a slightly lower order: it is lowered one state at a time.
    """
    while True:
        res = bal.reduce(rank=order, method=method) if keep is None else bal.reduce(states=keep, method=method)
        system = res.to_diagonal()
        if max_modes is None or system.n <= max_modes or order == 1:
            return res, system
        order -= 1
        if keep is not None:  # drop the kept state with the smallest HSV
            hsv = lr_hsv_numpy(bal)
            keep = sorted(sorted(keep, key=lambda i: -hsv[i])[:order])


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
                tensors = [(t, t.data) for t in list(module._parameters.values()) + list(module._buffers.values())
                           if t is not None]
                self.layers.append((module, state, [(t, d.clone()) for t, d in tensors]))
        self.optimizer = optimizer
        if optimizer is not None:
            self.groups = [list(g["params"]) for g in optimizer.param_groups]
            self.state = dict(optimizer.state)

    def restore(self):
        for module, state, tensors in self.layers:
            module.__dict__.clear()
            module.__dict__.update(state)
            for t, data in tensors:
                t.data = data
        if self.optimizer is not None:
            for group, params in zip(self.optimizer.param_groups, self.groups):
                group["params"] = params
            self.optimizer.state.clear()
            self.optimizer.state.update(self.state)


@torch.no_grad()
def compress_(model: nn.Module, *, tol: float | None = None, rank: int | None = None,
              optimizer: torch.optim.Optimizer | None = None, selection: str = "largest", scope: str = "layer",
              min_shrink: float = 0.05, method: str = "truncate", seed: int | None = None) -> CompressionReport:
    """Cut low-energy states of every compressible layer of ``model``, in place.

    Each layer's linear core (``layer.to_system()``) is balanced with
    :func:`lti_reduce.balance` (one batched call per group of equal-shaped layers on
    the same device), cut to a new order, returned to modal form with
    :meth:`~lti_reduce.BalancedTruncationResult.to_diagonal` and written back with
    ``layer.load_system_``. CompreSSM (arXiv 2510.02823) does this a few times early
    in training.

    Parameters
    ----------
    model : nn.Module
        Any model containing layers that implement the protocol of
        :mod:`adapters.torch.protocol` (e.g. :class:`adapters.torch.LRU`).
    tol : float in (0, 1), optional
        Fraction of each layer's HSV sum that may be dropped (the paper's tau), or
        with ``scope="global"`` the mean fraction over layers.
    rank : int, optional
        New ``state_dim`` of every layer, in the layer's own units (complex modes for
        the LRU; a real-output layer of ``r`` modes is a real system of order ``2 r``).
        Give exactly one of ``tol`` and ``rank``.
    optimizer : torch.optim.Optimizer, optional
        Updated in place: replaced parameters are swapped in its ``param_groups``
        and their per-parameter state (moments, momentum) is reset; everything else
        is kept (see :mod:`adapters.torch.optim`).
    selection : {"largest", "smallest", "random"}
        Which balanced states to keep: the highest-HSV ones (balanced truncation), or
        the paper's ablations.
    scope : {"layer", "global"}
        ``tol`` per layer, or one budget on normalized energy across layers
        (layer-adaptive orders, LAST arXiv 2411.02824).
    min_shrink : float in [0, 1)
        A layer is cut only if its ``state_dim`` shrinks by at least this fraction
        (the paper's 5% gate).
    method : {"truncate", "spa"}
        Balanced truncation or singular perturbation (SPA changes ``D``; layers with
        an elementwise ``D`` such as the LRU reject it).
    seed : int, optional
        Seed for ``selection="random"``.

    Returns
    -------
    CompressionReport
        Per layer: state size before/after, HSVs, energy kept, a-priori error bound.

    Raises
    ------
    ValueError
        Bad options, a model with no compressible layer, an optimizer that does not
        own the model's parameters.
    lti_reduce.UnstableSystemError
        A layer whose eigenvalues left the unit disc (its name is in the message).

    Notes
    -----
    Atomic: every reduction is computed before any layer changes; if anything fails
    (in the core, in ``load_system_``, in the optimizer update) the model's
    parameters, buffers and the optimizer are restored exactly, and the error is
    re-raised. The reduction runs on each layer's device in float64 and is returned
    in the layer's precision.

    Examples
    --------
    >>> import torch, adapters.torch as at
    >>> model = torch.nn.Sequential(at.LRU(8, 32), at.LRU(8, 32))
    >>> opt = torch.optim.Adam(model.parameters())
    >>> report = at.compress_(model, rank=8, optimizer=opt)
    >>> [layer.state_dim for layer in model]
    [8, 8]
    """
    _check_options(tol, rank, selection, scope, min_shrink)
    layers = compressible_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no compressible layer: nothing implements state_dim, "
                         "to_system() and load_system_() (see adapters.torch.protocol).")
    if optimizer is not None:
        check_optimizer_owns(optimizer, [(f"{n}.{pn}" if n else pn, p) for n, layer in layers
                                         for pn, p in layer.named_parameters()], "the compressible layers")
    rng = np.random.default_rng(seed)

    # 1. Systems, grouped for batched core calls.
    systems = [_layer_system(name, layer) for name, layer in layers]
    groups: dict = {}
    for i, s in enumerate(systems):
        groups.setdefault(_group_key(s), []).append(i)
    balanced = [None] * len(layers)
    for idx in groups.values():
        bal = lr.balance(_stack([systems[i] for i in idx]))
        for j, i in enumerate(idx):
            balanced[i] = bal[j]
    hsvs = [lr_hsv_numpy(b) for b in balanced]

    # 2. Orders (in units of the core: the order of each layer's map).
    orders = [b.n for b in balanced]
    units = [b.n / layer.state_dim for b, (_, layer) in zip(balanced, layers)]
    if rank is not None:
        new_orders = [min(o, int(math.ceil(rank * u))) for o, u in zip(orders, units)]
    elif scope == "global":
        new_orders = _global_orders(hsvs, float(tol))
    else:
        new_orders = [lr.rank_for_tol(h, float(tol)) for h in hsvs]

    # 3. Reduced layer systems (all computed before anything changes).
    plans, reports = [], []
    for (name, layer), bal, h, order, new_order, unit in zip(layers, balanced, hsvs, orders, new_orders, units):
        before, total = layer.state_dim, float(h.sum())
        keep = _kept_states(new_order, order, selection, rng)
        note, new_system, after, bound, kept = "", None, before, 0.0, 1.0
        # Fewest modes an order-k map can need (k / units, e.g. k/2 complex modes for a
        # real-output layer): if even that fails the gate, skip the reduction itself.
        fewest = math.ceil(new_order / unit)
        if new_order >= order:
            note = "nothing to cut"
        elif fewest > (1.0 - min_shrink) * before:
            note = f"gate: {before}->{fewest} (at least) shrinks by less than min_shrink={min_shrink:g}"
        else:
            res, new_system = _reduce_layer(bal, new_order, keep, method, rank)
            new_order, keep = res.rank, (None if res.states is None else list(res.states))
            after = new_system.n
            kept_idx = range(new_order) if keep is None else keep
            kept = float(sum(h[i] for i in kept_idx)) / total if total > 0 else 1.0
            bound = float(lr_to_numpy(res.error_bound))
            if after > (1.0 - min_shrink) * before:
                note = f"gate: {before}->{after} shrinks by less than min_shrink={min_shrink:g}"
                new_system, after, bound, kept = None, before, 0.0, 1.0
        plans.append(new_system)
        reports.append(LayerReport(name, before, after, order, order if new_system is None else new_order, h,
                                   kept, bound, new_system is not None, note))

    # 4. Swap, undoing everything on any failure.
    todo = [(name, layer, s) for (name, layer), s in zip(layers, plans) if s is not None]
    if todo:
        snapshot = _Snapshot([layer for _, layer, _ in todo], optimizer)
        try:
            replaced, added = {}, []
            for name, layer, system in todo:
                old = dict(layer.named_parameters())
                values = {pname: p.detach().clone() for pname, p in old.items()}
                layer.load_system_(system)
                new = dict(layer.named_parameters())
                for pname, p in old.items():
                    q = new.get(pname)
                    if q is not p:
                        replaced[id(p)] = (p, q)
                    elif p.shape != values[pname].shape or not torch.equal(p.detach(), values[pname]):
                        replaced[id(p)] = (p, p)  # resized or re-based in place: its moments are reset
                anchor = next(iter(old.values()), None)
                added.extend((anchor, q) for pname, q in new.items() if pname not in old and anchor is not None)
            if optimizer is not None:
                rebind_parameters_(optimizer, replaced, added)
        except BaseException:
            snapshot.restore()
            raise
    return CompressionReport(reports)


def lr_to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def lr_hsv_numpy(bal) -> np.ndarray:
    return lr_to_numpy(bal.hsv).astype(np.float64)
