"""Keeping an optimizer consistent after a cut re-based parameters.

After a cut, a layer's state-shaped parameters have new shapes and live in a new
(balanced) basis. Layers resize them in place (:mod:`adapters.torch._params`), so every
optimizer still holds the live ``nn.Parameter`` objects, in the same group and position
(group hyper-parameters and LR schedulers are untouched). What is stale is the
per-parameter state of the re-based parameters (Adam moments, momentum buffers,
per-parameter step counts): moments in the old basis are meaningless in the new one.

* The optimizer given to :func:`adapters.torch.compress_` has that state dropped
  (:func:`reset_state_`); it re-initializes it lazily at the next ``step()``. Parameters
  that were not re-based keep their state, and anything stored outside
  ``optimizer.state`` is kept as it is.
* Any other optimizer is caught at its next ``step()``: every re-based parameter is
  remembered (weakly) with its old shape, and a global optimizer step pre-hook
  (``torch.optim.optimizer.register_optimizer_step_pre_hook``, installed at the first
  cut) raises :class:`StaleOptimizerStateError` if an optimizer about to step holds state of
  an old shape for one of them, or steps a parameter object a layer replaced, instead of a
  shape error deep inside the update, a silent update with moments of the wrong basis or a
  layer that silently stops training. It costs one set test per parameter and step
  (0.07-0.16 ms for 1,000 parameters on the 2-core CI machine), and nothing before the first cut.

Layers that still replace parameter objects are handled by :func:`rebind_parameters_`.
"""

from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["StaleOptimizerStateError"]


class StaleOptimizerStateError(RuntimeError):
    """An optimizer holds state of a parameter's old shape (from before a cut)."""


_REBASED = WeakIdKeyDictionary()  # parameter -> set of shapes it had before cuts
_REPLACED = WeakIdKeyDictionary()  # parameter object a layer replaced by a new one -> its qualified name
_IDS: set[int] = set()  # ids of both (a superset once objects are freed; the dictionaries decide)
_HOOK = None


def reset_state_(optimizer: torch.optim.Optimizer, params) -> None:
    """Drop ``optimizer``'s per-parameter state of every parameter in ``params`` (re-based by a cut)."""
    for p in params:
        optimizer.state.pop(p, None)


def mark_rebased_(params_and_old_shapes, replaced=()) -> None:
    """Remember re-based parameters and their old shapes, so stale optimizer state is caught at ``step()``.

    ``replaced``: ``(name, old parameter)`` of parameter objects a layer replaced by new ones (layers that do
    not resize in place); an optimizer that still steps them trains tensors the model no longer uses.
    """
    global _HOOK
    items = [(p, tuple(shape)) for p, shape in params_and_old_shapes if tuple(shape) != tuple(p.shape)]
    replaced = list(replaced)
    if not items and not replaced:
        return
    for p, shape in items:
        _REBASED.setdefault(p, set()).add(shape)
        _IDS.add(id(p))
    for name, p in replaced:
        _REPLACED[p] = name
        _IDS.add(id(p))
    if _HOOK is None:
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        _HOOK = register_optimizer_step_pre_hook(_check_stale_state)


def _check_stale_state(optimizer, args, kwargs) -> None:
    if not _IDS:
        return
    for gi, group in enumerate(optimizer.param_groups):
        if _IDS.isdisjoint(map(id, group["params"])):  # the common case, at C speed
            continue
        for pi, p in enumerate(group["params"]):
            if id(p) not in _IDS:  # ids are confirmed by the weak dictionaries
                continue
            if p in _REPLACED:
                raise StaleOptimizerStateError(
                    f"{type(optimizer).__name__}: param_groups[{gi}]['params'][{pi}] is the parameter {_REPLACED[p]!r} "
                    "that a cut replaced by a new object; stepping it trains a tensor the model no longer uses. "
                    "Pass this optimizer to compress_ (optimizer=opt), which points it at the new parameters, or "
                    "build the optimizer again over model.parameters().")
            old = _REBASED.get(p)
            if old is None:
                continue
            state = optimizer.state.get(p)
            if not state:
                continue
            stale = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.dim() > 0
                     and tuple(v.shape) != tuple(p.shape) and tuple(v.shape) in old]
            if stale:
                raise StaleOptimizerStateError(
                    f"{type(optimizer).__name__}: param_groups[{gi}]['params'][{pi}] (shape {tuple(p.shape)}) was "
                    f"resized by a cut, but this optimizer still holds its state {stale} of the old shape "
                    f"{tuple(state[stale[0]].shape)}, in the old basis. Pass this optimizer to compress_ "
                    "(optimizer=opt; CompressionSchedule.step(step, model, opt)), which resets exactly those "
                    "moments, or drop them: for p in model.parameters(): opt.state.pop(p, None).")


def check_optimizer_owns(optimizer: torch.optim.Optimizer, params, what: str) -> None:
    """Raise if some of ``params`` are not in ``optimizer.param_groups``."""
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in params if id(p) not in owned]
    if missing:
        shown = ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else "")
        raise ValueError(f"the optimizer does not own the parameters of {what} ({shown}); pass the optimizer "
                         "that trains this model (built over model.parameters()), or optimizer=None.")


def rebind_parameters_(optimizer: torch.optim.Optimizer, replaced: dict[int, tuple[torch.nn.Parameter, torch.nn.Parameter | None]],
                       added: list[tuple[torch.nn.Parameter, torch.nn.Parameter]]) -> None:
    """Point ``optimizer`` at new parameter objects and reset their state.

    Parameters
    ----------
    replaced : dict id(old) -> (old, new or None)
        ``new is None`` removes the old parameter from its group.
    added : list of (anchor, new)
        New parameters with no predecessor, appended to the group of ``anchor``.
    """
    for group in optimizer.param_groups:
        params = []
        for p in group["params"]:
            if id(p) in replaced:
                old, new = replaced[id(p)]
                optimizer.state.pop(old, None)
                if new is not None:
                    params.append(new)
            else:
                params.append(p)
        anchors = {id(p) for p in group["params"]}
        params.extend(new for anchor, new in added if id(anchor) in anchors)
        group["params"] = params
