"""The swap of a state selection: parameters cut to the kept states, optimizer state sliced, all undoable.

:func:`_apply_cut` cuts one layer; every change goes through an :class:`_Undo`, whose ``restore()`` puts
parameters, gradients, attributes, configurations and optimizer state back exactly.
"""

from __future__ import annotations

import torch

from ...layers._params import resize_parameter_

__all__: list[str] = []


class _Undo:
    """Everything a cut changes (parameters, attributes, configurations, optimizer state), to undo it."""

    _MISSING = object()

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.attrs, self.states, self.swapped, self.replaced = [], {}, [], []
        self.groups = [list(g["params"]) for g in optimizer.param_groups] if optimizer is not None else None

    def attr(self, obj, name, value):
        self.attrs.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def restore(self):
        for obj, name, old in reversed(self.attrs):
            setattr(obj, name, old)
        for p, holder in reversed(self.swapped):
            torch.utils.swap_tensors(p, holder)
        for owner, leaf, p in reversed(self.replaced):
            if self.optimizer is not None:
                self.optimizer.state.pop(owner._parameters[leaf], None)
            owner._parameters[leaf] = p
        if self.groups is not None:
            for group, params in zip(self.optimizer.param_groups, self.groups):
                group["params"] = params
        for p, state in self.states.values():
            if state is self._MISSING:
                self.optimizer.state.pop(p, None)
            else:
                self.optimizer.state[p] = state


def _sliced_state(state, old_shape, axis, idx):
    """A per-parameter optimizer state with the kept entries, or ``None`` where it cannot be sliced.

    A selection keeps the basis, so every moment of the parameter's shape keeps the rows/columns of the kept
    states; scalars (step counts) are kept. A state tensor of another non-scalar shape (a factored moment)
    cannot be sliced consistently: the state is then dropped and re-initialized at the next step.
    """
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            if tuple(value.shape) != tuple(old_shape):
                return None
            out[key] = value.index_select(axis, idx.to(value.device)).clone()
        else:
            out[key] = value.clone() if isinstance(value, torch.Tensor) else value
    return out


def _apply_cut(kind, layer, keep, configs, optimizer, optimizer_state, undo):
    specs, attrs = kind.cut_spec(layer, keep)
    for pname, axis, idx in specs:
        p = layer.get_parameter(pname)
        if optimizer is not None and id(p) not in undo.states:
            undo.states[id(p)] = (p, optimizer.state.get(p, undo._MISSING))
        old_shape = p.shape
        q = resize_parameter_(layer, pname, p.index_select(axis, idx.to(p.device)), undo)
        if optimizer is not None:
            state = optimizer.state.get(p)
            optimizer.state.pop(p, None)
            if q is not p:  # a new object (see resize_parameter_): same group, same position
                for group in optimizer.param_groups:
                    group["params"] = [q if x is p else x for x in group["params"]]
            if state:
                new = _sliced_state(state, old_shape, axis, idx) if optimizer_state == "slice" else None
                if new is not None:
                    optimizer.state[q] = new
    for obj, name, value in attrs:
        undo.attr(obj, name, value)
    for config in configs:
        undo.attr(config, "state_size", keep.shape[1])

