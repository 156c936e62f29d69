"""Checkpoint resizing for compressible layers: a compressed checkpoint loads into a freshly built layer.

After :func:`adapters.torch.compress_` a layer's state-shaped parameters (eigenvalues, ``B``, ``C``, ...)
are smaller than those of a layer built from the same constructor arguments. ``load_state_dict`` of a
full-size model would then fail with a size mismatch. A layer that declares *which axis of which
parameter is the state axis* can resize those parameters to the checkpoint's state size before the
values are copied; this module does that, in place (the ``nn.Parameter`` objects are kept, so an
optimizer built before loading still holds the live tensors).

Two ways to use it
------------------
:class:`ResizableStateMixin`
    Put it first among the base classes and name the state-shaped parameters in the class attribute
    ``state_parameters`` (a mapping ``name -> state axis``)::

        class MyLayer(ResizableStateMixin, nn.Module):
            state_parameters = {"log_rate": 0, "B": 0, "C": -1}

:func:`resize_state_from_checkpoint_`
    The same, as a function to call from your own ``_load_from_state_dict``.

Only the state axis is resized, and only when the checkpoint is consistent: every listed parameter
present in the checkpoint must have the layer's shape except along its state axis, and all of them must
agree on one state size. Anything else (a different ``d_model``, a missing entry, two different state
sizes) is left to PyTorch's default loader, which reports it as usual.

:func:`set_parameter_` gives a parameter new data of any shape, keeping the ``nn.Parameter`` object:
what a ``load_system_`` uses to resize its parameters after a cut.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from ..optim import mark_rebased_
from ._params import resize_from_checkpoint_, set_parameter_

__all__ = ["ResizableStateMixin", "resize_state_from_checkpoint_", "set_parameter_"]


def _state_axes(spec) -> dict[str, tuple[int, ...]]:
    if not isinstance(spec, Mapping):
        raise TypeError(
            "state_parameters must map each state-shaped parameter name to its state axis (an int, or a tuple "
            f"of ints), e.g. {{'B': 0, 'C': -1}}; got {type(spec).__name__}")
    axes = {}
    for name, axis in spec.items():
        axes[str(name)] = (int(axis),) if isinstance(axis, int) else tuple(int(a) for a in axis)
    return axes


def resize_state_from_checkpoint_(module: nn.Module, state_dict, prefix: str, state_parameters) -> int | None:
    """Resize ``module``'s state-shaped parameters to the state size a checkpoint holds, in place.

    Call it from ``_load_from_state_dict`` before ``super()._load_from_state_dict(...)``; the default
    loader then copies the checkpoint's values into the resized parameters.

    Parameters
    ----------
    module : nn.Module
        The layer being loaded.
    state_dict : Mapping[str, Tensor]
        The checkpoint (the full one PyTorch passes down, keys prefixed).
    prefix : str
        This module's key prefix in ``state_dict`` (as passed to ``_load_from_state_dict``).
    state_parameters : Mapping[str, int | tuple[int, ...]]
        Each state-shaped parameter (name relative to ``module``, dotted names allowed) and its state
        axis or axes; e.g. ``{"B": 0, "C": -1}`` for ``B`` of shape (n, m) and ``C`` of shape (p, n). Every
        listed axis holds the same state size ``n``.

    Returns
    -------
    int or None
        The new state size if the parameters were resized, else ``None`` (sizes already agree, the
        checkpoint lacks these entries, or it is inconsistent; the default loader then reports any
        mismatch).

    Notes
    -----
    The ``nn.Parameter`` objects are kept (only their data changes, see :func:`set_parameter_`), so
    hooks, ``DistributedDataParallel`` and an optimizer built earlier still hold them; per-parameter
    optimizer state of the old shape is meaningless, so build the optimizer (or load its state) after
    loading the model; an optimizer that still holds state of the old shapes raises
    :class:`~adapters.torch.StaleOptimizerStateError` at its next ``step()``. The resized parameters hold
    zeros until the default loader copies the values.
    """
    axes = _state_axes(state_parameters)
    sizes, present = set(), []
    for name, name_axes in axes.items():
        key = prefix + name
        if key not in state_dict:
            continue
        target, param = state_dict[key], module.get_parameter(name)
        if target.dim() != param.dim():
            return None
        sizes.update(int(target.shape[a]) for a in name_axes)
        present.append(name)
    if len(sizes) != 1:
        return None
    n = sizes.pop()
    if n < 1:
        return None
    for name in present:
        param = module.get_parameter(name)
        expected = list(param.shape)
        for a in axes[name]:
            expected[a] = n
        if list(state_dict[prefix + name].shape) != expected:
            return None  # another axis differs too (e.g. d_model): not a state resize
    old = [(module.get_parameter(name), tuple(module.get_parameter(name).shape)) for name in present]
    resized = resize_from_checkpoint_(module, state_dict, prefix, present)
    mark_rebased_(old)  # an optimizer still holding state of the old shapes is caught at its next step()
    return n if resized else None


def explain_checkpoint_mismatch(module: nn.Module, state_dict, prefix: str, state_parameters, error_msgs) -> None:
    """Put one line first in ``error_msgs`` when a checkpoint differs from ``module`` in a non-state axis.

    A compressed checkpoint differs only in the state axis, which the layers resize to; a checkpoint of a
    layer built with another width (``d_model``) also differs elsewhere, and PyTorch's size-mismatch
    lines then list the state axis too, as if that were the problem. The line names the axis that
    cannot be loaded and the fix.
    """
    axes = _state_axes(state_parameters)
    for name, param in module.named_parameters(recurse=False):
        key = prefix + name
        target = state_dict.get(key)
        if not isinstance(target, torch.Tensor) or target.dim() != param.dim() or target.shape == param.shape:
            continue
        state = {a % param.dim() for a in axes.get(name, ())}
        other = [(a, int(target.shape[a]), int(param.shape[a])) for a in range(param.dim())
                 if a not in state and target.shape[a] != param.shape[a]]
        if other:
            a, want, have = other[0]
            error_msgs.insert(0, f"{key}: the checkpoint's layer has size {want} where this {type(module).__name__} "
                                 f"has {have} (axis {a} of {name}, not the state axis): it was built with other "
                                 "options (e.g. d_model); a cut changes only the state size, which loading "
                                 "adapts to. Build the layer with the checkpoint's options.")
            return


class ResizableStateMixin:
    """Mixin for ``nn.Module`` layers: ``load_state_dict`` resizes the state-shaped parameters first.

    A compressed checkpoint has fewer states than a freshly built layer; with this mixin the fresh layer
    takes the checkpoint's state size (in place, keeping its ``nn.Parameter`` objects) and then loads the
    values as usual. Put it before ``nn.Module`` in the bases and set ``state_parameters``.

    Attributes
    ----------
    state_parameters : Mapping[str, int | tuple[int, ...]]
        Class attribute: each state-shaped parameter and its state axis (see
        :func:`resize_state_from_checkpoint_`). Parameters not listed (a skip connection ``D``, a
        per-channel step size) are loaded by the default loader unchanged.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from adapters.torch import ResizableStateMixin
    >>> class Diagonal(ResizableStateMixin, nn.Module):
    ...     state_parameters = {"lam": 0, "B": 0, "C": -1}
    ...     def __init__(self, d_model, n):
    ...         super().__init__()
    ...         self.lam = nn.Parameter(torch.rand(n))
    ...         self.B = nn.Parameter(torch.randn(n, d_model))
    ...         self.C = nn.Parameter(torch.randn(d_model, n))
    >>> small, fresh = Diagonal(3, 2), Diagonal(3, 8)
    >>> lam = fresh.lam
    >>> _ = fresh.load_state_dict(small.state_dict())
    >>> fresh.C.shape, fresh.lam is lam
    (torch.Size([3, 2]), True)
    """

    state_parameters: Mapping = {}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        resize_state_from_checkpoint_(self, state_dict, prefix, type(self).state_parameters)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        explain_checkpoint_mismatch(self, state_dict, prefix, type(self).state_parameters, error_msgs)
