"""Applying a cut: load the reduced systems into the layers and keep the optimizer consistent, atomically.

Everything a load can change (every parameter, buffer and gradient of the cut layers, the optimizer's groups
and state) is snapshotted first (:class:`_Snapshot`); on any failure inside :func:`rollback_on_failure` it is
restored exactly and the error re-raised. The optimizer's bookkeeping (:mod:`adapters.torch.optim`) marks,
rebinds, resets and re-warms the parameters the cut changed, recorded in :class:`Changes`.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import torch

from ..optim import mark_rebased_, rebind_parameters_, reset_state_, rewarm_
from .compute import _accepts

__all__: list[str] = []


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


@contextlib.contextmanager
def rollback_on_failure(layers, optimizer):
    """Snapshot ``layers`` and ``optimizer``; on any exception inside the block restore both and re-raise."""
    snapshot = _Snapshot(layers, optimizer)
    try:
        yield
    except BaseException:
        snapshot.restore()
        raise


@dataclass
class Changes:
    """The parameters a cut changed, for the optimizer's bookkeeping once it succeeded.

    ``rebased``: ``(parameter, old shape)`` of parameters resized or rewritten in place (new basis);
    ``dropped``: ``(name, parameter)`` of parameters a layer replaced; ``fresh``: the parameter objects
    created in their place; ``sliced``: ``(parameter, old shape)`` of selective layers' parameters cut to
    their kept states (same basis, moments kept).
    """

    rebased: list = field(default_factory=list)
    dropped: list = field(default_factory=list)
    fresh: list = field(default_factory=list)
    sliced: list = field(default_factory=list)


def cut_selective_(model, selective, changes: Changes, *, calibration_inputs, tol, rank, optimizer, min_shrink):
    """State selection of the selective layers (:func:`adapters.torch.compress_selective_`), its changes recorded."""
    from .selective import compress_selective_

    old_sel = {(n, pn): p for n, m in selective for pn, p in m.named_parameters()}
    shapes = {key: tuple(p.shape) for key, p in old_sel.items()}
    with warnings.catch_warnings():  # the gate is reported once, by compress_, for every layer
        warnings.simplefilter("ignore", UserWarning)
        report = compress_selective_(model, calibration_inputs=calibration_inputs, tol=tol, rank=rank,
                                     optimizer=optimizer, min_shrink=min_shrink)
    new_sel = {(n, pn): p for n, m in selective for pn, p in m.named_parameters()}
    for key, p in old_sel.items():
        if new_sel.get(key) is not p:
            changes.dropped.append((f"{key[0]}.{key[1]}".lstrip("."), p))
            if new_sel.get(key) is not None:
                changes.fresh.append(new_sel[key])
        elif tuple(p.shape) != shapes[key]:
            # a selection keeps the basis: compress_selective_ sliced the moments, as when called alone
            changes.sliced.append((p, shapes[key]))
    return report


def load_systems_(todo, names, optimizer, changes: Changes) -> None:
    """``layer.load_system_(system)`` for each ``(layer, (system, budget))``; the optimizer rebound and reset.

    ``names``: ``{id(layer): name}``. Parameters a layer replaced are swapped in the optimizer's groups
    (:func:`adapters.torch.optim.rebind_parameters_`); the state of every re-based parameter is reset.
    """
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
                changes.dropped.append((f"{names[id(layer)]}.{pname}".lstrip("."), p))
            elif p.shape != values[pname].shape or not torch.equal(p.detach(), values[pname]):
                changes.rebased.append((p, tuple(values[pname].shape)))
        anchor = next(iter(old.values()), None)
        added = [(anchor, q) for pname, q in new.items() if pname not in old and anchor is not None]
        changes.fresh += [q for _, q in replaced.values() if q is not None] + [q for _, q in added]
        if optimizer is not None and (replaced or added):
            rebind_parameters_(optimizer, replaced, added)
    if optimizer is not None:
        reset_state_(optimizer, [p for p, _ in changes.rebased])


def finish_(changes: Changes, optimizer, rewarm_steps: int) -> int:
    """Once the cut succeeded: mark the changed parameters and start the re-warm ramp; returns its steps (or 0)."""
    mark_rebased_(changes.rebased + changes.sliced, changes.dropped)  # a restored model has its old shapes
    trained = [p for p, _ in changes.rebased] + changes.fresh
    if optimizer is not None and trained and rewarm_steps > 1:
        rewarm_(optimizer, trained, rewarm_steps)
        return rewarm_steps
    return 0
