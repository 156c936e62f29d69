"""The layer protocol that makes an SSM layer compressible, and its discovery.

A layer is compressible when it has

``state_dim`` : int
    Its current state size, in the layer's own units (complex modes for an LRU).
``to_system()`` -> :class:`lti_reduce.DiagonalSystem`
    Its linear time-invariant core, as detached tensors on the layer's device
    (``real_output=True`` when the layer computes ``y = Re(C x) + D u``).
``load_system_(system)``
    Writes a (reduced) ``DiagonalSystem`` back in place. It may replace parameter
    objects (``compress_`` then updates the optimizer) and must validate the system
    before it changes anything.

Optionally ``to_system(differentiable=True)`` returns a system whose tensors carry
gradients, for :func:`adapters.torch.hankel_nuclear_norm`.

Any ``nn.Module`` with these three names is found by :func:`compressible_layers`;
there is no base class to inherit.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch.nn as nn

__all__ = ["CompressibleLayer", "compressible_layers", "is_compressible"]


@runtime_checkable
class CompressibleLayer(Protocol):
    """Structural type of a compressible layer (see the module docstring)."""

    @property
    def state_dim(self) -> int: ...

    def to_system(self): ...

    def load_system_(self, system): ...


def is_compressible(module) -> bool:
    """Whether ``module`` implements the layer protocol."""
    return all(callable(getattr(type(module), name, None)) for name in ("to_system", "load_system_")) and hasattr(
        type(module), "state_dim")


def compressible_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, layer)`` for every compressible layer of ``model``, in ``named_modules`` order.

    A compressible layer nested inside another compressible layer is not listed
    separately (the outer layer owns its state).
    """
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if is_compressible(module) and not any(name.startswith(prefix + ".") for prefix, _ in found if prefix):
            found.append((name, module))
    return found
