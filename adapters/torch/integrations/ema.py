"""Keeping a weight average (EMA, SWA) consistent with a model after a cut: :func:`resize_averaged_model_`.

An exponential moving average kept with ``torch.optim.swa_utils.AveragedModel`` (or any copy of the model
updated from it) holds every parameter at the model's shapes. A cut resizes the compressible layers'
parameters and re-expresses them in a new (balanced, then modal) basis, so the average's old values of
those layers are neither the right shape nor in the right basis: averaging them with the cut model's values
would mix two bases. :func:`resize_averaged_model_` restarts the average of every cut layer from the cut
model's values (resized in place, the parameter objects kept) and leaves every other parameter's average as
it is. The average of a cut layer then covers the steps after the cut only.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..cut._guards import user_name
from ..layers._params import set_parameter_

__all__ = ["resize_averaged_model_"]


def _inner(module: nn.Module) -> nn.Module:
    """The user's model inside ``AveragedModel``, ``DistributedDataParallel`` and ``torch.compile`` wrappers."""
    seen = set()
    while id(module) not in seen:
        seen.add(id(module))
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif hasattr(module, "n_averaged") and isinstance(getattr(module, "module", None), nn.Module):
            module = module.module  # AveragedModel
        elif type(module).__name__ == "DistributedDataParallel":
            module = module.module
    return module


def _find(module: nn.Module, name: str) -> nn.Module:
    names = {user_name(n): m for n, m in module.named_modules()}
    if name not in names:
        raise KeyError(f"the averaged model has no layer {name!r} (its layers: {list(names)[:6]} ...); it must be an "
                       "average of the model that was cut.")
    return names[name]


@torch.no_grad()
def resize_averaged_model_(averaged: nn.Module, model: nn.Module, report) -> list[str]:
    """Restart the average of every layer ``report`` says was cut from ``model``'s values, in place.

    Parameters
    ----------
    averaged : nn.Module
        The average: a ``torch.optim.swa_utils.AveragedModel`` of ``model`` (EMA or SWA), or a plain copy of
        the model kept as an average.
    model : nn.Module
        The model that was cut (plain, compiled or DDP-wrapped).
    report : CompressionReport
        What :func:`adapters.torch.compress_` (or ``compress_ddp_``, ``CompressionSchedule.step``) returned.

    Returns
    -------
    list of str
        Names of the layers whose average was restarted.

    Raises
    ------
    KeyError
        ``averaged`` has no layer of a name in the report. Nothing is changed then.
    TypeError, ValueError
        The arguments look swapped (``model`` is the ``AveragedModel``, or its cut layers do not have the sizes
        the report gives). Nothing is changed then.

    Notes
    -----
    After a cut the state-shaped parameters of a cut layer are ``W^H (.) V`` projections of the old ones (then
    re-diagonalized), so no average over the steps before the cut exists in the new basis; the average of
    those layers restarts at the cut: ``avg <- theta_cut``, and then ``avg <- decay avg + (1 - decay) theta``
    as before. Parameter objects are resized in place (:func:`adapters.torch.set_parameter_`), so an
    optimizer or reference that holds them stays valid. ``AveragedModel.n_averaged`` is kept.

    Examples
    --------
    >>> import torch, adapters.torch as at
    >>> from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(at.LRU(4, 16), torch.nn.Linear(4, 4))
    >>> ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.99))
    >>> report = at.compress_(model, rank=6, optimizer=None)
    >>> at.resize_averaged_model_(ema, model, report)
    ['0']
    >>> ema.update_parameters(model)  # shapes agree again
    >>> ema.module[0].state_dim
    6
    """
    if hasattr(model, "n_averaged") and not hasattr(averaged, "n_averaged"):
        raise TypeError("resize_averaged_model_(averaged, model, report): the second argument is an AveragedModel and "
                        "the first is not; the arguments look swapped. Call resize_averaged_model_(ema, model, report).")
    source, target = _inner(model), _inner(averaged)
    cut = [x for x in report if x.compressed]
    pairs = [(_find(source, x.name), _find(target, x.name), x.name) for x in cut]  # every lookup before any change
    for (src, _, name), x in zip(pairs, cut):
        size = getattr(src, "state_dim", None)
        if isinstance(size, int) and size != x.after:
            raise ValueError(f"resize_averaged_model_: layer {name!r} of `model` has state_dim {size}, but the report "
                             f"cut it to {x.after}: `model` must be the model that was cut (are the first two "
                             "arguments swapped? the call is resize_averaged_model_(averaged, model, report)). "
                             "Nothing was changed.")
    for src, dst, _ in pairs:
        for pname, p in src.named_parameters():
            set_parameter_(dst, pname, p.detach().clone())
        for bname, b in src.named_buffers():
            owner_name, _, leaf = bname.rpartition(".")
            owner = dst.get_submodule(owner_name) if owner_name else dst
            if getattr(owner, leaf, None) is not None:
                setattr(owner, leaf, b.detach().clone().to(getattr(owner, leaf).device))
        for s, d in zip(src.modules(), dst.modules()):  # sizes a layer keeps as attributes (out_features, ...)
            for key, value in s.__dict__.items():
                if type(value) is int and type(d.__dict__.get(key)) is int:
                    d.__dict__[key] = value
    return [name for _, _, name in pairs]
