"""A differentiable Hankel nuclear norm, the regularization baseline of CompreSSM.

``sum_i sigma_i`` (the nuclear norm of the Hankel operator) is a convex surrogate
of the McMillan degree; added to the loss it pushes energy into few states, so a
later cut loses less (Schwerdtner et al.; the CompreSSM paper compares against it).
Gradients flow through the core's closed-form diagonal Gramians, Cholesky factors
shifted by float64 round-off and ``svdvals`` (``torch.linalg``), whose backward passes do
not divide by gaps between HSVs, so they stay finite where small HSVs coincide (S4D
channels); it runs on the layers' device.
"""

from __future__ import annotations

import torch
import torch.nn as nn

import lti_reduce as lr

from lti_reduce._differentiable import hankel_singular_values_for_gradients

from .layers.protocol import compressible_layers

__all__ = ["hankel_nuclear_norm"]


def hankel_nuclear_norm(model: nn.Module, *, reduction: str = "sum") -> torch.Tensor:
    """Sum of the Hankel singular values of every compressible layer, differentiable.

    Parameters
    ----------
    model : nn.Module
        A model whose compressible layers support ``to_system(differentiable=True)``
        (``LRU``, ``S5`` and ``S4D`` do).
    reduction : {"sum", "mean"}
        Sum over layers, or their mean.

    Returns
    -------
    torch.Tensor
        A scalar in the layers' real dtype; add ``weight * hankel_nuclear_norm(model)`` to the loss.

    Raises
    ------
    ValueError
        No compressible layer, or one that cannot give a differentiable system.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}.")
    layers = compressible_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no compressible layer to regularize.")
    terms = []
    for name, layer in layers:
        try:
            system = layer.to_system(differentiable=True)
        except TypeError as exc:
            raise ValueError(f"layer {name!r} ({type(layer).__name__}) does not offer to_system(differentiable=True), "
                             "which the regularizer needs to backpropagate into its parameters.") from exc
        terms.append(hankel_singular_values_for_gradients(system).sum())
    total = torch.stack(terms).sum()
    return total / len(terms) if reduction == "mean" else total
