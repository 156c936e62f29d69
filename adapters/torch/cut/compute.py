"""Computing a cut: the layers' systems, grouped and stacked for batched core calls, and their reductions.

All numerics are in :mod:`lti_reduce`; this module maps layers to systems and groups equal-shaped ones so each
group costs one batched core call on its own device.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch

import lti_reduce as lr

from .report import LayerReport

__all__: list[str] = []


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


def group_indices(systems) -> list[list[int]]:
    """Indices of ``systems`` grouped by kind, shapes, dtypes and device: one batched core call per group."""
    groups: dict = {}
    for i, s in enumerate(systems):
        groups.setdefault(_group_key(s), []).append(i)
    return list(groups.values())


def _stack(systems):
    first = systems[0]
    stack = lambda attr: torch.stack([getattr(s, attr) for s in systems])  # noqa: E731
    return lr.DiagonalSystem(stack("lam"), stack("B"), stack("C"), None if first.D is None else stack("D"),
                             real_output=first.real_output)


def _working(system):
    """A float64 / complex128 copy of a diagonal system (for a-posteriori norms)."""
    def w(x):
        if x is None:
            return None
        return x.to(torch.complex128) if x.is_complex() else x.to(torch.float64)

    return lr.DiagonalSystem(w(system.lam), w(system.B), w(system.C), w(system.D), real_output=system.real_output)


def balance_layers(layers, bar):
    """Each layer's system and its balanced realization, one batched :func:`lti_reduce.balance` per group.

    Returns ``(systems, balanced, hsvs)``: the layers' ``to_system()``, the balanced results (one per layer)
    and their HSVs as float64 arrays of shape ``(order,)`` or ``(channels, order)``.
    """
    systems = [_layer_system(name, layer) for name, layer in layers]
    balanced = [None] * len(layers)
    for idx in group_indices(systems):
        # working precision: the reduced models (and their modal forms) are computed from float64 matrices
        bal = lr.balance(_working(_stack([systems[i] for i in idx])))
        for j, i in enumerate(idx):
            balanced[i] = bal[j]
        bar.update(len(idx))
    return systems, balanced, [lr_hsv_numpy(b) for b in balanced]


def reduce_layers(layers, balanced, hsvs, new_orders, keeps, *, min_shrink, method, rank, bar):
    """Every layer's reduced system, all computed before anything changes.

    ``new_orders`` and ``keeps`` (the balanced states to keep, ``None``: the leading ones) are the plan's.

    Returns ``(plans, reports)``: per layer, ``(system to load or None, real-mode budget)`` and its
    :class:`LayerReport` (figures of the cut; the certificates come after loading).
    """
    plans, reports = [], []
    for (name, layer), bal, h, new_order, keep in zip(layers, balanced, hsvs, new_orders, keeps):
        system, budget, report = _reduce_one(name, layer, bal, h, new_order, keep, min_shrink=min_shrink,
                                             method=method, rank=rank)
        plans.append((system, budget))
        bar.update()
        reports.append(report)
    return plans, reports


def _reduce_one(name, layer, bal, h, new_order, keep, *, min_shrink, method, rank):
    """One layer's cut to ``new_order`` (core units), or the reason it is not cut: ``(system, budget, report)``."""
    order, unit, before = bal.n, bal.n / layer.state_dim, layer.state_dim
    h2 = np.atleast_2d(h)
    channels = int(np.prod(h.shape[:-1])) if h.ndim > 1 else 1

    def not_cut(note):
        return None, 0.0, LayerReport(name, before, before, order, order, h, 1.0, 0.0, False, note,
                                      hsv_lower=0.0, channels=channels)

    # Fewest modes an order-k map can need (k / units, e.g. k/2 complex modes for a
    # real-output layer): if even that fails the gate, skip the reduction itself.
    fewest = math.ceil(new_order / unit)
    if new_order >= order:
        return not_cut("nothing to cut")
    if fewest > (1.0 - min_shrink) * before:
        return not_cut(f"gate: {before}->{fewest} (at least) shrinks by less than min_shrink={min_shrink:g}")
    results, new_system = _reduce_layer(bal, new_order, keep, method, rank)
    if new_system is None:
        return not_cut("channels' reduced models need different numbers of modes; not cut")
    after = new_system.n
    if after > (1.0 - min_shrink) * before:
        return not_cut(f"gate: {before}->{after} shrinks by less than min_shrink={min_shrink:g}")
    res = results[0]  # every channel of a layer is cut to the same order k (batched over channels)
    k = res.rank
    totals = h2.sum(-1)
    kept_idx = list(range(k)) if res.states is None else list(res.states)
    energy = h2[:, kept_idx].sum(-1) / np.where(totals > 0, totals, 1.0)
    kept = float(np.where(totals > 0, energy, 1.0).min())  # the worst channel's
    bound = float(np.max(lr_to_numpy(res.error_bound)))
    # sigma_{k+1}: no order-k map is closer (whichever states were kept)
    lower = float(h2[:, k].max()) if k < order else 0.0
    budget = 0.0
    if _accepts(layer.load_system_, "real_mode_change"):
        # The real-mode fix may cost 2^-7 of the cut's own least error (sigma_{r+1}).
        budget = 2.0**-7 * max(lower, 2.0**-20 * float(h2[:, 0].max()))
    return new_system, budget, LayerReport(name, before, after, order, k, h, kept, bound + budget, True, "",
                                           hsv_lower=lower, channels=channels)


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


def _accepts(fn, keyword: str) -> bool:
    try:
        return keyword in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def lr_to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def lr_hsv_numpy(bal) -> np.ndarray:
    return lr_to_numpy(bal.hsv).astype(np.float64)
