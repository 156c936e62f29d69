"""Planning a cut: check the call, find the layers to cut, choose each layer's new order and kept states.

The order rules work in the core's units: the order of each layer's map as an LTI system, per channel
(``2 * state_dim`` for a real-output layer with complex modes). ``rank=`` caps every layer; ``tol=`` keeps
``1 - tol`` of each layer's HSV energy (:func:`_layer_order`) or, with ``scope="global"``, spreads one budget
over the layers (:func:`_global_orders`); ``selection=`` says which balanced states stay (:func:`_kept_states`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

import lti_reduce as lr

from ..layers.protocol import compressible_layers
from ..optim import check_optimizer_owns, check_rewarm_steps
from . import _guards
from .certify import check_certify

__all__: list[str] = []

_SELECTIONS = ("largest", "smallest", "random")
_SCOPES = ("layer", "global")


class _Required:
    def __repr__(self) -> str:
        return "<required>"


_REQUIRED = _Required()


def _check_tol(tol) -> None:
    if tol is None:
        return
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0.0 < float(tol) < 1.0:
        hint = (f" (a fraction, not a percentage: did you mean {float(tol) / 100:g}?)"
                if isinstance(tol, (int, float)) and not isinstance(tol, bool) and 1.0 <= float(tol) < 100.0 else "")
        raise ValueError(f"tol must be a float strictly between 0 and 1, the fraction of each layer's HSV energy a "
                         f"cut may drop, got {tol!r}{hint}.")


def _check_options(tol, rank, selection, scope, min_shrink, method="truncate", seed=None):
    if (tol is None) == (rank is None):
        raise ValueError(f"give exactly one of tol= (fraction of HSV energy that may be dropped, e.g. 0.01) and "
                         f"rank= (new state_dim per layer); got tol={tol!r}, rank={rank!r}.")
    _check_tol(tol)
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive integer (the new state_dim of each layer), got {rank!r}.")
    if selection not in _SELECTIONS:
        raise ValueError(f"selection must be one of {_SELECTIONS}, got {selection!r}.")
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}.")
    if scope == "global" and tol is None:
        raise ValueError("scope='global' distributes one energy budget over layers and needs tol=, not rank=.")
    if isinstance(min_shrink, bool) or not isinstance(min_shrink, (int, float)) or not 0.0 <= float(min_shrink) < 1.0:
        raise ValueError(f"min_shrink must be in [0, 1) (a layer is cut only if it shrinks by this fraction), got {min_shrink!r}.")
    if method not in ("truncate", "spa"):
        raise ValueError(f"method must be 'truncate' (balanced truncation) or 'spa' (singular perturbation), got {method!r}.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0):
        raise ValueError(f"seed must be None or a non-negative integer (it seeds selection='random'), got {seed!r}; "
                         "pass e.g. seed=0.")


def _check_optimizer_argument(optimizer, where: str):
    if optimizer is _REQUIRED:
        raise TypeError(
            f"{where} needs optimizer=: pass the optimizer that trains the model (a cut re-bases the SSM "
            "parameters, and their old moments must be reset), or optimizer=None if no optimizer holds state "
            "for them yet (one built afterwards, or a model that is not training).")
    if optimizer is not None and not (hasattr(optimizer, "param_groups") and hasattr(optimizer, "state")):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer (anything with param_groups and state) or "
                        f"None, got {type(optimizer).__name__}.")


def _check_hinf_method(method):
    if method not in ("search", "level-set"):
        raise ValueError(f"hinf_method must be 'search' (fast frequency search, the default) or 'level-set' "
                         f"(the H-infinity norm guaranteed to hinf_rtol, O(n^3)), got {method!r}.")


def check_call(model, optimizer, *, tol, rank, selection, scope, min_shrink, method, seed, rewarm_steps, certify,
               hinf_rtol, hinf_method) -> None:
    """Every check of :func:`adapters.torch.compress_`'s arguments, before anything is computed."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "compress_ was called under torch.inference_mode(): tensors made there can never be saved for "
            "backward, so the cut parameters could not train again. Call compress_ outside inference_mode "
            "(it runs under torch.no_grad() by itself).")
    _check_optimizer_argument(optimizer, "compress_")
    _guards.check_model(model)
    _check_options(tol, rank, selection, scope, min_shrink, method, seed)
    check_rewarm_steps(rewarm_steps)
    check_certify(certify)
    _check_hinf_method(hinf_method)
    if isinstance(hinf_rtol, bool) or not isinstance(hinf_rtol, (int, float)) or not 0.0 < float(hinf_rtol) < 1.0:
        raise ValueError(f"hinf_rtol must be a float in (0, 1) (relative accuracy of gain and error), got {hinf_rtol!r}.")


def find_layers(model, optimizer, calibration_inputs):
    """The layers a cut reduces: ``(layers, selective, frozen)``, each a list of ``(name, layer)``.

    ``layers`` are the trainable LTI layers (named as the user's model names them), ``selective`` the
    selective layers (cut by state selection), ``frozen`` the LTI layers with no trainable parameter (not cut).
    Raises when there is nothing to cut, when selective layers come without ``calibration_inputs=``, and when
    the optimizer does not own the layers' parameters.
    """
    from .selective.kinds import _selective_layers

    selective = _selective_layers(model)
    selective_ids = {id(m) for _, m in selective}
    layers = [(n, m) for n, m in compressible_layers(model)
              if id(m) not in selective_ids and not any(n.startswith(s + ".") for s, _ in selective if s)]
    if not layers and not selective:
        raise ValueError(f"{type(model).__name__} has no compressible layer: nothing implements state_dim, "
                         "to_system() and load_system_() (see adapters.torch.layers.protocol), and it has no selective "
                         "layer (adapters.torch.SelectiveSSM).")
    if selective and calibration_inputs is None:
        names = ", ".join(repr(n) for n, _ in selective[:4]) + (" ..." if len(selective) > 4 else "")
        raise ValueError(f"{type(model).__name__} has selective layers ({names}) whose Delta, B and C depend on "
                         "the input; they are cut by state selection on averaged systems, which needs "
                         "calibration_inputs= (a few batches of model inputs).")
    _guards.check_layers(layers + selective)
    layers, frozen = _guards.split_frozen(layers)
    layers = [(_guards.user_name(n), m) for n, m in layers]
    if optimizer is not None:
        check_optimizer_owns(optimizer, [(f"{n}.{pn}" if n else pn, p) for n, layer in layers + selective
                                         for pn, p in layer.named_parameters()], "the compressible layers")
    return layers, selective, frozen


def plan_orders(layers, balanced, hsvs, *, tol, rank, scope) -> list[int]:
    """Each layer's new order, in the core's units (the order of its map, per channel), before the gate.

    ``rank=``: ``ceil(rank * units)`` (units: orders per state, e.g. 2 for a real-output layer of complex
    modes), at most the layer's order; ``tol=`` per layer (:func:`_layer_order`) or over all layers
    (:func:`_global_orders`).
    """
    if rank is not None:
        return [min(b.n, int(math.ceil(rank * (b.n / layer.state_dim)))) for b, (_, layer) in zip(balanced, layers)]
    if scope == "global":
        return _global_orders(hsvs, float(tol))
    return [_layer_order(h, float(tol)) for h in hsvs]  # a layer of channels: one order from their total energy


def plan_kept_states(balanced, new_orders, selection, seed) -> list:
    """Which balanced states each layer keeps: ``None`` (the leading ones) or sorted indices (the ablations)."""
    rng = np.random.default_rng(seed)
    return [_kept_states(new_order, b.n, selection, rng) for b, new_order in zip(balanced, new_orders)]


def _global_orders(hsvs: list[np.ndarray], tol: float) -> list[int]:
    """Layer-adaptive orders from one budget on normalized energy (LAST, arXiv 2411.02824).

    Each layer's HSVs are normalized to sum 1; the globally smallest normalized
    values are dropped while their total stays within ``tol * n_layers`` (the mean
    dropped fraction is ``tol``), never a layer's leading state. A layer of independent
    channels takes part through its worst channel (the largest normalized tail).
    """
    entries = []
    for li, h in enumerate(hsvs):
        h2 = np.atleast_2d(h)
        total = h2.sum(-1, keepdims=True)
        e = np.where(total > 0, h2 / np.where(total > 0, total, 1.0), 0.0).max(0)
        entries.extend((float(e[i]), li, i) for i in range(1, e.shape[-1]))
    entries.sort()
    budget, spent = tol * len(hsvs), 0.0
    dropped = [0] * len(hsvs)
    for value, li, _ in entries:
        if spent + value > budget:
            break
        spent += value
        dropped[li] += 1
    return [h.shape[-1] - d for h, d in zip(hsvs, dropped)]


def _layer_order(hsv: np.ndarray, tol: float) -> int:
    """The order that keeps ``1 - tol`` of a layer's HSV energy; for channels, of their total energy.

    A layer of independent channels (``hsv`` of shape (channels, n)) stores one number of states for all
    of them, so it is cut to one order ``r``: the smallest whose dropped HSVs, summed over every channel,
    stay within ``tol`` of the sum of all its channels' HSVs,
    ``sum_c sum_{i > r} sigma_i^(c) <= tol * sum_c sum_i sigma_i^(c)``, which is
    :func:`lti_reduce.rank_for_tol` of the summed profile ``sum_c sigma_i^(c)`` (descending, as each is).
    A few slow channels then no longer hold the whole layer at full size; each channel's own error
    stays within its own bound ``2 sum_{i > r} sigma_i^(c)``, which the report gives (the largest).
    """
    h = np.asarray(hsv, dtype=np.float64)
    if h.ndim > 1:
        h = h.reshape(-1, h.shape[-1]).sum(0)
    return int(lr.rank_for_tol(h, tol))


def _kept_states(order_new: int, order: int, selection: str, rng) -> list[int] | None:
    if selection == "largest":
        return None
    if selection == "smallest":
        return list(range(order - order_new, order))
    return sorted(rng.choice(order, size=order_new, replace=False).tolist())
