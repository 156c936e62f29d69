"""The layer protocol that makes an SSM layer compressible, and its discovery.

A layer is compressible when it has

``state_dim`` : int
    Its current state size, in the layer's own units (complex modes for an LRU).
``to_system()`` -> :class:`lti_reduce.DiagonalSystem`
    Its linear time-invariant core, as detached tensors on the layer's device
    (``real_output=True`` when the layer computes ``y = Re(C x) + D u``).
``load_system_(system)``
    Writes a (reduced) ``DiagonalSystem`` back in place, resizing parameters in place
    (:func:`adapters.torch.set_parameter_` keeps the ``nn.Parameter`` objects,
    so optimizers, schedulers and DDP keep live tensors; ``compress_`` resets the
    moments of every parameter whose shape or values changed). It must validate the
    system before it changes anything.

A system with leading batch dimensions stands for independent channels that share one
state size (S4D-style: one SISO system per channel); ``compress_`` cuts every channel to
one order and calls ``load_system_`` with the batched reduced system.

Optional:

* ``to_system(differentiable=True)`` returns a system whose tensors carry gradients, for
  :func:`adapters.torch.hankel_nuclear_norm`;
* ``load_system_(system, *, real_mode_change=...)``: a layer that moves real modes off
  the conjugation-symmetric point (where their gradients vanish, see
  :meth:`adapters.torch.LRU.load_system_`) takes an H-infinity budget for that change;
  ``compress_`` passes ``2**-7 * sigma_{r+1}`` and adds it to the reported bound;
* ``system_convention = "same_step"``: the layer computes ``x_k = lam x_{k-1} + B u_k``,
  ``y_k = C x_k + D u_k`` and ``to_system()`` returns the one-step-delayed system (as the
  LRU does); ``compress_`` then measures ``gain`` on the layer's own map.

Any ``nn.Module`` with these three names is found by :func:`compressible_layers`;
there is no base class to inherit.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch.nn as nn

__all__ = ["CompressibleLayer", "compressible_layers", "is_compressible"]


@runtime_checkable
class CompressibleLayer(Protocol):
    """Structural type of a compressible layer: any ``nn.Module`` with these three members.

    There is no base class to inherit; ``isinstance(layer, CompressibleLayer)`` checks the names.
    The module docstring (:mod:`adapters.torch.layers.protocol`) lists the optional extensions.

    Examples
    --------
    >>> import adapters.torch as at
    >>> isinstance(at.LRU(4, 8), at.CompressibleLayer)
    True
    """

    @property
    def state_dim(self) -> int:
        """Current state size ``n`` in the layer's own units (complex modes for an LRU)."""
        ...

    def to_system(self):
        """The layer's linear core as a :class:`lti_reduce.DiagonalSystem`.

        Returns
        -------
        lti_reduce.DiagonalSystem
            ``lam`` (..., n), ``B`` (..., n, m), ``C`` (..., p, n), ``D`` (..., p, m) or ``None``, detached,
            on the layer's device; ``real_output=True`` when the layer computes ``y = Re(C x) + D u``.
            Leading batch dimensions are independent channels sharing one state size.
        """
        ...

    def load_system_(self, system):
        """Write ``system`` (of any order ``r``) back into the layer, in place.

        Parameters
        ----------
        system : lti_reduce.DiagonalSystem
            Shapes as :meth:`to_system` returns them, with ``r`` modes instead of ``n``.

        Returns
        -------
        nn.Module
            The layer, now with ``state_dim == r``.

        Raises
        ------
        ValueError
            A system the layer cannot represent (wrong shapes, unstable, NaN); raised before anything
            changes.
        """
        ...


def is_compressible(module) -> bool:
    """Whether ``module`` implements the layer protocol (:class:`CompressibleLayer`).

    Parameters
    ----------
    module : object
        Usually an ``nn.Module``.

    Returns
    -------
    bool
        ``True`` when the module's class has ``state_dim`` and callable ``to_system`` and
        ``load_system_``.

    Examples
    --------
    >>> import torch, adapters.torch as at
    >>> at.is_compressible(at.LRU(4, 8)), at.is_compressible(torch.nn.Linear(4, 4))
    (True, False)
    """
    return all(callable(getattr(type(module), name, None)) for name in ("to_system", "load_system_")) and hasattr(
        type(module), "state_dim")


def compressible_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every compressible layer of ``model``, in ``named_modules`` order.

    A compressible layer nested inside another compressible layer is not listed
    separately (the outer layer owns its state). These are the LTI layers of the
    :class:`CompressibleLayer` protocol (LRU, S5, S4D, your own); selective layers
    (:class:`adapters.torch.SelectiveSSM`, Hugging Face Mamba mixers) are not listed, as their
    maps depend on the input: :func:`adapters.torch.compress_` cuts them by state selection
    on ``calibration_inputs=`` (:func:`adapters.torch.compress_selective_`).

    Parameters
    ----------
    model : nn.Module
        Any model; it is only read.

    Returns
    -------
    list of (str, nn.Module)
        ``(qualified name, layer)`` pairs; the name is ``""`` when ``model`` itself is a layer.

    Examples
    --------
    >>> import torch, adapters.torch as at
    >>> model = torch.nn.Sequential(at.LRU(4, 8), torch.nn.GELU(), at.LRU(4, 8))
    >>> [name for name, _ in at.compressible_layers(model)]
    ['0', '2']
    """
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if is_compressible(module) and not any(name.startswith(prefix + ".") for prefix, _ in found if prefix):
            found.append((name, module))
    return found
