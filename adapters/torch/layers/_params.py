"""Resizing parameters in place, keeping their ``nn.Parameter`` objects.

A cut changes the shape of a layer's state-shaped parameters. Replacing the
``nn.Parameter`` objects would leave every optimizer, hook, ``DistributedDataParallel``
bucket or user reference that holds the old ones silently pointing at dead tensors.
Resizing keeps the objects: anything that holds them still holds the live tensors,
and an optimizer's per-parameter state whose shape no longer matches is detectable.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__: list[str] = []


def set_parameter_(module: nn.Module, name: str, value: torch.Tensor) -> nn.Parameter:
    """Give the parameter ``module.<name>`` the data ``value`` (any shape), in place.

    The ``nn.Parameter`` object, its ``requires_grad`` and its identity are kept; its
    ``.grad`` is dropped when the shape changes (a gradient of the old shape means nothing).
    ``name`` may be dotted (``"x_proj.weight"``). Returns the parameter.
    """
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    param = getattr(owner, leaf)
    if not isinstance(param, nn.Parameter):
        raise TypeError(f"{type(module).__name__}.{name} is not an nn.Parameter (got {type(param).__name__})")
    value = value.detach().to(device=param.device, dtype=param.dtype)
    if value.untyped_storage().data_ptr() == param.untyped_storage().data_ptr():
        value = value.clone()  # a view would keep the old, larger storage alive
    if value.shape != param.shape:
        param.grad = None
        _forget_grad_accumulator(param)
    param.data = value.contiguous()
    return param


def _forget_grad_accumulator(param: nn.Parameter) -> None:
    """Make autograd create a new gradient accumulator for ``param`` (at its new shape).

    A leaf's accumulator node is cached (weakly) on the tensor and reused by every graph while
    anything keeps it alive, e.g. the previous step's ``loss`` still referenced in a training loop.
    It records the shape the leaf had when it was made, so after an in-place resize the next
    backward would fail with "invalid gradient ... expected shape compatible with" the old shape.
    ``Tensor.data = x`` drops the cached accumulator when ``x`` has another dtype (not when only
    the shape changes), so the data is first set to an empty tensor of another dtype.
    """
    other = torch.float16 if param.dtype != torch.float16 else torch.float32
    if param.is_complex():
        other = torch.complex64 if param.dtype != torch.complex64 else torch.complex128
    param.data = torch.empty(0, dtype=other, device=param.device)


def resize_from_checkpoint_(module: nn.Module, state_dict, prefix: str, names) -> list[str]:
    """Resize ``module``'s parameters ``names`` to the shapes a checkpoint holds, before it is copied.

    For use in ``_load_from_state_dict``: every listed parameter present in ``state_dict`` with
    another shape (same number of dimensions) is resized in place to zeros of the checkpoint's
    shape, so the default loader then copies the values. Parameters absent from the checkpoint,
    or whose number of dimensions differs, are left to the default loader, which reports them.
    Returns the names that were resized.
    """
    resized = []
    for name in names:
        key = prefix + name
        if key not in state_dict:
            continue
        target = state_dict[key]
        param = module.get_parameter(name)
        if target.dim() == param.dim() and tuple(target.shape) != tuple(param.shape):
            set_parameter_(module, name, param.new_zeros(target.shape))
            resized.append(name)
    return resized


def resize_parameter_(module, name, value, undo=None) -> nn.Parameter:
    """Give ``module.<name>`` the data ``value`` of another shape; returns the parameter now in the module.

    Normally the ``nn.Parameter`` object is kept: ``torch.utils.swap_tensors`` moves the new data into it
    together with fresh autograd metadata, so optimizers and user references stay valid. (Assigning
    ``param.data`` alone would keep the parameter's cached gradient accumulator, which a still-referenced
    graph of an earlier step keeps alive; the next backward would then fail with "invalid gradient ...
    expected shape compatible with <old shape>".) Where torch refuses the swap because other owners hold
    the tensor (a ``DistributedDataParallel`` wrapper's reducer, a live graph that saved it), the module
    gets a new ``nn.Parameter`` instead, which those owners cannot keep stale; the caller rebinds the
    optimizer to it (``DistributedDataParallel`` must be rebuilt, as :func:`adapters.torch.compress_ddp_`
    does).
    """
    p = module.get_parameter(name)
    new = nn.Parameter(value.detach().to(device=p.device, dtype=p.dtype).clone().contiguous(),
                       requires_grad=p.requires_grad)
    new.__dict__.update(p.__dict__)
    try:
        torch.utils.swap_tensors(p, new)  # ``new`` now holds the old data, gradient and autograd metadata
    except RuntimeError:
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if undo is not None:
            undo.replaced.append((owner, leaf, p))
        owner._parameters[leaf] = new
        return new
    if undo is not None:
        undo.swapped.append((p, new))
    return p

