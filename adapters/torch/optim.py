"""Keeping an optimizer consistent after a cut re-based parameters.

After a cut, a layer's state-shaped parameters have new shapes and live in a new
(balanced) basis. Layers resize them in place (:mod:`adapters.torch.layers._params`), so every
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
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["StaleOptimizerStateError"]


class StaleOptimizerStateError(RuntimeError):
    """An optimizer holds state of a parameter's old shape (from before a cut)."""


_REBASED = WeakIdKeyDictionary()  # parameter -> set of shapes it had before cuts
_REPLACED = WeakIdKeyDictionary()  # parameter object a layer replaced by a new one -> its qualified name
_IDS: set[int] = set()  # ids of both (a superset once objects are freed; the dictionaries decide)
_HOOK = None


def reset_state_(optimizer: torch.optim.Optimizer, params) -> None:
    """Drop ``optimizer``'s per-parameter state of every parameter in ``params`` (re-based by a cut).

    ``torch.optim.LBFGS`` keeps one flat history over all its parameters (under the first one): a cut that
    re-bases any of them drops that whole history (its curvature pairs restart) and its cached total size.
    """
    params = list(params)
    for p in params:
        optimizer.state.pop(p, None)
    if params and isinstance(optimizer, torch.optim.LBFGS):
        for p in optimizer._params:
            optimizer.state.pop(p, None)
        optimizer._numel_cache = None


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
        _HOOK = register_optimizer_step_pre_hook(_check_stale_state)


def _check_stale_state(optimizer, args, kwargs) -> None:
    if not _IDS:
        return
    if isinstance(optimizer, torch.optim.LBFGS) and optimizer._numel_cache is not None and any(
            id(p) in _IDS and p in _REBASED for p in optimizer._params):
        if optimizer._numel_cache != sum(p.numel() for p in optimizer._params):
            raise StaleOptimizerStateError(
                "LBFGS: its parameters were resized by a cut, but its flat history still has the old total length "
                f"{optimizer._numel_cache}. Pass this optimizer to compress_ (optimizer=opt), which restarts its "
                "history, or build it again over model.parameters().")
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
    """Raise if some trainable ``params`` are not in ``optimizer.param_groups``, or its state cannot follow a cut.

    Parameters that do not require grad (frozen) need no optimizer. An optimizer that keeps state flattened
    across its parameters (a 1-D state tensor as long as all its parameters together, as L-BFGS does) can only
    follow a cut if it is ``torch.optim.LBFGS`` (:func:`reset_state_` restarts its history); any other is
    refused here, before anything changes.
    """
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in params if p.requires_grad and id(p) not in owned]
    if missing:
        shown = ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else "")
        raise ValueError(
            f"the optimizer does not own the trainable parameters of {what} ({shown}); pass the optimizer that "
            "trains them (every parameter of these layers that requires grad must be in its param_groups), or "
            "optimizer=None. A layer whose parameters are all frozen (requires_grad=False) is not cut and needs no "
            "optimizer.")
    _check_flat_state(optimizer)


def _check_flat_state(optimizer) -> None:
    if isinstance(optimizer, torch.optim.LBFGS):
        return
    total = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    for p, state in optimizer.state.items():
        flat = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.dim() == 1
                and v.numel() == total != p.numel()]
        if flat:
            raise ValueError(
                f"{type(optimizer).__name__} keeps state flattened across all its parameters ({flat} of length "
                f"{total}, L-BFGS style); a cut changes that length and the state's meaning, and this optimizer "
                "cannot be updated for it (torch.optim.LBFGS can: its history is restarted). Nothing was changed. "
                "Cut with optimizer=None and build the optimizer again over model.parameters() afterwards.")


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


# ------------------------------------------------------------------------------ re-warm-up after a cut
#
# A cut drops the re-based parameters' optimizer state. Adam (and its relatives) then start from zero
# moments, and their first updates move every element by about the full learning rate in the sign of
# its gradient, which undoes part of what was learned (the loss can jump by one to two orders of
# magnitude for a few steps). Ramping those parameters' steps up again avoids that: at the k-th step
# after the cut their update p_new - p_old is scaled by k / K, which is exactly a learning rate of
# (k / K) lr for those parameters alone (SGD, Adam, AdamW with its decoupled weight decay), whatever
# the groups, schedulers or wrappers; the moments are updated as usual.
#
# The ramp lives in the optimizer's param groups, under _RAMP ({"done", "steps", "index"}: the
# positions of the ramped parameters in the group), so optimizer.state_dict() / load_state_dict()
# save and resume it, and RollbackGuard's reload of the pre-cut state ends it. Two global step hooks
# (installed when this module is imported; a dictionary lookup per group and step when no ramp runs)
# copy the ramped parameters before a step and mix them back after it.

_RAMP = "lti_reduce_rewarm"
# id(optimizer.param_groups) -> [(group, [(parameter, its value before the step)])]. Keyed by the groups'
# list, not the optimizer: a wrapper that shares its inner optimizer's groups and fires the hooks too
# (wrapper pre, inner pre, inner post, wrapper post) then ramps the step once.
_BEFORE: dict[int, list] = {}


def _ramp_before(optimizer, args, kwargs) -> None:
    groups = getattr(optimizer, "param_groups", None)
    saved = [(g, [(g["params"][i], g["params"][i].detach().clone()) for i in g[_RAMP]["index"]])
             for g in groups or () if g.get(_RAMP)]
    if saved:
        _BEFORE[id(groups)] = saved


@torch.no_grad()
def _ramp_after(optimizer, args, kwargs) -> None:
    saved = _BEFORE.pop(id(getattr(optimizer, "param_groups", None)), None)
    for group, pairs in saved or ():
        ramp = group.get(_RAMP)
        if not ramp:
            continue
        done = ramp["done"] + 1
        factor = done / ramp["steps"]
        if factor < 1.0:
            for p, old in pairs:
                if p.shape == old.shape:
                    p.lerp_(old, 1.0 - factor)  # old + factor * (new - old)
            group[_RAMP] = {**ramp, "done": done}  # a new dict: state_dict() copies are not changed
        else:
            del group[_RAMP]


def rewarm_(optimizer: torch.optim.Optimizer, params, steps: int) -> None:
    """Ramp the updates of ``params`` up over the next ``steps`` steps of ``optimizer`` (see above).

    Replaces a ramp still running on ``optimizer``; ``steps <= 1`` or no ``params`` only cancels it.
    """
    cancel_rewarm_(optimizer)
    if int(steps) <= 1:
        return
    ids = {id(p) for p in params}
    for group in optimizer.param_groups:
        index = [i for i, p in enumerate(group["params"]) if id(p) in ids]
        if index:
            group[_RAMP] = {"done": 0, "steps": int(steps), "index": index}


def cancel_rewarm_(optimizer) -> None:
    """End a ramp started by :func:`rewarm_` on ``optimizer``."""
    for group in getattr(optimizer, "param_groups", ()):
        group.pop(_RAMP, None)


def rewarm_remaining(optimizer) -> int:
    """Steps left of the ramp on ``optimizer`` (0: none)."""
    return max((g[_RAMP]["steps"] - g[_RAMP]["done"] for g in optimizer.param_groups if g.get(_RAMP)), default=0)


_RAMP_HOOKS = (register_optimizer_step_pre_hook(_ramp_before), register_optimizer_step_post_hook(_ramp_after))


def check_rewarm_steps(steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"rewarm_steps must be an integer >= 0 (the optimizer steps over which the updates of the "
                         f"parameters a cut re-based ramp up again; 0 or 1: no ramp), got {steps!r}.")
