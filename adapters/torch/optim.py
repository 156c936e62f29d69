"""Keeping an optimizer consistent after layers replaced their parameters.

After a cut, a layer's parameters have new shapes and live in a new (balanced)
basis. For every parameter object that was replaced:

* its slot in ``optimizer.param_groups`` points at the new object (same group,
  same position, so group hyper-parameters and LR schedulers are untouched);
* its per-parameter state (Adam moments, momentum buffers, per-parameter step
  counts) is dropped: moments in the old basis are meaningless in the new one,
  and the optimizer re-initializes the state lazily at the next ``step()``.

Parameters that were not replaced keep their state, and anything stored outside
``optimizer.state`` (global step counters, ``param_groups`` hyper-parameters) is
kept as it is.
"""

from __future__ import annotations

import torch

__all__: list[str] = []


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
