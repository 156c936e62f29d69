"""Certifying a cut: what it did to each layer, measured cheaply, and the H-infinity figures on request.

The default certificate of :func:`adapters.torch.compress_` is a direct measurement: each cut layer is run
on the inputs it really sees (the last batch it processed, or the model's ``calibration_inputs=``) before
and after the cut, and the relative change of its output is reported beside the a-priori bound. It costs
two forward passes of the cut layers on a few sequences. The H-infinity gain and error (``certify="hinf"``
or :meth:`adapters.torch.CompressionReport.certify_hinf`) are the worst case over all inputs and cost
far more: :class:`_PendingCertificates` keeps the maps before and after the cut until they are asked for.

Layers remember their last input with :func:`adapters.torch.layers._base.remember_input_` (one line in
``forward``); a layer that does not is measured on ``calibration_inputs=`` only.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

import lti_reduce as lr

from ..layers._base import _MAX_TOKENS
from .compute import _layer_system, _stack, _working, group_indices, lr_to_numpy
from .progress import Progress

__all__: list[str] = []

logger = logging.getLogger("adapters.torch")

CERTIFY_VALUES = ("output", "hinf", "lazy", True, False)


def check_certify(certify) -> None:
    """Reject a ``certify=`` value that is not one of :data:`CERTIFY_VALUES`."""
    if not any(certify is v or (isinstance(v, str) and certify == v) for v in CERTIFY_VALUES):
        raise ValueError(
            f"certify must be 'output' (default: the relative change of each layer's output on its last "
            f"input batch or calibration_inputs=), 'hinf' or True (that plus the H-infinity gain and error, "
            f"computed now), 'lazy' (the H-infinity figures computed when first read) or False (nothing), "
            f"got {certify!r}.")


def calibration_layer_inputs(model, layers, calibration_inputs) -> dict:
    """Inputs each of ``layers`` receives when ``model`` runs on the first calibration batch.

    Returns ``{id(layer): tensor}`` (the first sequences, as :func:`remember_input_` keeps them);
    empty if the forward pass fails.
    """
    batch = calibration_inputs
    if not isinstance(batch, torch.Tensor):
        try:
            batch = next(iter(batch))
        except (TypeError, StopIteration):
            return {}
    captured: dict = {}

    def hook(module, args):
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 2:
            seq = args[0].detach().reshape(-1, args[0].shape[-2], args[0].shape[-1])
            captured[id(module)] = seq[: max(1, _MAX_TOKENS // max(1, seq.shape[-2]))].clone()

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    try:
        with torch.no_grad():
            model(batch)
    except Exception as exc:  # noqa: BLE001 - a certificate is not worth failing the cut for
        logger.warning("compress_: the model did not run on calibration_inputs (%s); the output change is not "
                       "measured", exc)
        return {}
    finally:
        for h in handles:
            h.remove()
    return captured


def layer_outputs(layers, inputs) -> list:
    """``layer(u)`` for each ``(layer, u)`` (``None`` where ``u`` is ``None`` or the layer fails), in eval mode."""
    out = []
    for layer, u in zip(layers, inputs):
        if u is None:
            out.append(None)
            continue
        training = layer.training
        try:
            layer.train(False)
            with torch.no_grad():  # forward itself: the layer's own map, no module hooks (FSDP's would reshard)
                y = layer.forward(u)
            out.append(y.detach() if isinstance(y, torch.Tensor) else None)
        except Exception:  # noqa: BLE001 - e.g. the input no longer fits the layer: no measurement, no failed cut
            out.append(None)
        finally:
            layer.train(training)
    return out


def relative_change(before, after) -> float | None:
    """``||after - before||_F / ||before||_F`` in float64 (``None`` if either is missing or shapes differ)."""
    if before is None or after is None or before.shape != after.shape:
        return None
    b, a = before.to(torch.float64), after.to(torch.float64)
    norm = float(torch.linalg.vector_norm(b))
    diff = float(torch.linalg.vector_norm(a - b))
    return diff / norm if norm > 0 else (0.0 if diff == 0 else float("inf"))


def output_bound(error_bound: float, u, y) -> float | None:
    """``error_bound * ||u||_F / ||y||_F``: the a-priori bound on the relative output change on ``u``.

    A causal LTI map started at rest satisfies ``||(G - G_r) u||_2 <= ||G - G_r||_inf ||u||_2`` on any
    finite sequence, per sequence and channel, hence over the batch.
    """
    if u is None or y is None or math.isnan(error_bound):  # no bound (selective layer)
        return None
    norm_y = float(torch.linalg.vector_norm(y.to(torch.float64)))
    norm_u = float(torch.linalg.vector_norm(u.to(torch.float64)))
    if norm_y == 0:
        return 0.0 if error_bound * norm_u == 0 else float("inf")
    return error_bound * norm_u / norm_y


def _difference(sys1, sys2):
    """``G1 - G2`` of two diagonal systems of the same kind: order ``n1 + n2``, still diagonal."""
    a, b = _working(sys1), _working(sys2)
    if a.lam.is_complex() != b.lam.is_complex():
        a = lr.DiagonalSystem(a.lam.to(torch.complex128), a.B.to(torch.complex128), a.C.to(torch.complex128),
                              a.D, real_output=a.real_output)
        b = lr.DiagonalSystem(b.lam.to(torch.complex128), b.B.to(torch.complex128), b.C.to(torch.complex128),
                              b.D, real_output=b.real_output)
    dtype = torch.promote_types(a.B.dtype, b.B.dtype)
    D = None
    if a.D is not None or b.D is not None:
        D = (0 if a.D is None else a.D) - (0 if b.D is None else b.D)
    return lr.DiagonalSystem(torch.cat([a.lam, b.lam], -1), torch.cat([a.B.to(dtype), b.B.to(dtype)], -2),
                             torch.cat([a.C.to(dtype), -b.C.to(dtype)], -1), D, real_output=a.real_output)


def _hinf(systems: list, rtol: float, method: str, bar=None) -> list[np.ndarray]:
    """``lti_reduce.hinf_norm`` of every system, one batched call per group of equal shapes (``bar``: progress)."""
    out = [None] * len(systems)
    for idx in group_indices(systems):
        norms = lr_to_numpy(lr.hinf_norm(_stack([systems[i] for i in idx]), rtol=rtol, method=method)).astype(np.float64)
        for j, i in enumerate(idx):
            out[i] = norms[j]
        if bar is not None:
            bar.update(len(idx))
    return out


class _PendingCertificates:
    """The a-posteriori norms of one :func:`compress_` call, computed when first read.

    Holds detached copies of every LTI layer's map before the cut and of every cut layer's map
    right after loading, so the figures are those of the cut, whatever the layers do afterwards.
    """

    def __init__(self, reports, maps_before, cut, maps_after, rtol, method, auto=True, progress=True):
        self.reports, self.maps_before, self.cut, self.maps_after = reports, maps_before, cut, maps_after
        self.rtol, self.method, self.auto, self.progress = rtol, method, auto, progress
        for rep in reports:
            rep._pending = self

    def resolve(self, progress=None):
        if self.reports is None:
            return
        bar = Progress(len(self.maps_before) + len(self.cut), "H-infinity certificates",
                       self.progress if progress is None else progress)
        try:
            gains = _hinf(self.maps_before, self.rtol, self.method, bar)
            errors = _hinf([_difference(self.maps_before[i], a) for i, a in zip(self.cut, self.maps_after)],
                           self.rtol, self.method, bar)
        finally:
            bar.close()
        for rep, g in zip(self.reports, gains):
            rep._gain, rep._error, rep.hinf_method = float(np.max(g)), 0.0, self.method
        for i, e in zip(self.cut, errors):
            self.reports[i]._error = float(np.max(e))
        for rep in self.reports:
            rep._pending = None
        self.reports = self.maps_before = self.maps_after = None


def _measure_before(model, cut_layers, calibration_inputs):
    """The cut layers' inputs (``calibration_inputs=`` or their last batch) and outputs before the cut."""
    if calibration_inputs is not None and cut_layers:
        captured = calibration_layer_inputs(model, cut_layers, calibration_inputs)
        inputs, source = [captured.get(id(m)) for m in cut_layers], "calibration_inputs"
    else:
        inputs, source = [getattr(m, "_last_input", None) for m in cut_layers], "last batch"
    return inputs, layer_outputs(cut_layers, inputs), source


def _measure_after(reports, cut, cut_layers, measured):
    """Each cut layer's ``output_change`` from its outputs after the cut; 0 for the layers not cut."""
    for rep in reports:
        rep.output_change = 0.0
    inputs, before, source = measured
    for i, u, y0, y1 in zip(cut, inputs, before, layer_outputs(cut_layers, inputs)):
        reports[i]._no_input = u is None
        change = relative_change(y0, y1)
        reports[i].output_change = change
        reports[i].output_inputs = source if change is not None else ""
        if change is not None:
            reports[i].output_bound = output_bound(reports[i].error_bound, u, y0)


def _layer_map(layer, system):
    """The layer's own map as a :class:`lti_reduce.DiagonalSystem`, in the core's time convention.

    A layer that computes ``x_k = lam x_{k-1} + B u_k``, ``y_k = (Re) C x_k + D u_k`` (``system_convention =
    "same_step"``, e.g. the LRU) reports the one-step-delayed system; its map is realized exactly by
    ``(lam, B, C diag(lam), D + (Re) C B)``. Other layers' systems are their maps.
    """
    if getattr(layer, "system_convention", None) != "same_step":
        return system
    CB = system.C @ system.B
    if system.real_output:
        CB = CB.real
    D = CB if system.D is None else system.D + CB
    return lr.DiagonalSystem(system.lam, system.B, system.C * system.lam.unsqueeze(-2), D,
                             real_output=system.real_output)


def record_before(model, layers, systems, cut, calibration_inputs, certify):
    """What the certificates compare against: every layer's map, and the cut layers' outputs, before the cut.

    Returns ``(maps_before, measured)``; ``measured`` (inputs, outputs, their source) is ``None`` when
    ``certify=False``.
    """
    maps_before = [_layer_map(layer, s) for (_, layer), s in zip(layers, systems)]
    cut_layers = [layers[i][1] for i in cut]
    measured = _measure_before(model, cut_layers, calibration_inputs) if certify is not False else None
    return maps_before, measured


def certify_(reports, layers, cut, before, *, certify, hinf_rtol, hinf_method, progress) -> None:
    """The certificates of a cut, on the loaded layers (``before``: what :func:`record_before` returned).

    Sets each report's measured ``output_change`` and stores the maps before and right after the cut for
    the H-infinity ``gain`` and ``error``, computed now (``certify="hinf"`` or ``True``), on first read
    (``"lazy"``) or on request (:meth:`adapters.torch.CompressionReport.certify_hinf`). Nothing with
    ``certify=False``.
    """
    if certify is False:
        return
    maps_before, measured = before
    _measure_after(reports, cut, [layers[i][1] for i in cut], measured)
    maps_after = [_layer_map(layers[i][1], _layer_system(layers[i][0], layers[i][1])) for i in cut]
    pending = _PendingCertificates(reports, maps_before, cut, maps_after, hinf_rtol, hinf_method,
                                   auto=certify == "lazy", progress=progress)
    if certify is True or certify == "hinf":
        pending.resolve()
