"""What a cut did to each layer, measured cheaply; progress for slow work.

The default certificate of :func:`adapters.torch.compress_` is a direct measurement: each cut layer is run
on the inputs it really sees (the last batch it processed, or the model's ``calibration_inputs=``) before
and after the cut, and the relative change of its output is reported beside the a-priori bound. It costs
two forward passes of the cut layers on a few sequences. The H-infinity gain and error (``certify="hinf"``
or :meth:`adapters.torch.CompressionReport.certify_hinf`) are the worst case over all inputs and cost
far more.

Layers remember their last input with :func:`adapters.torch.layers._base.remember_input_` (one line in
``forward``); a layer that does not is measured on ``calibration_inputs=`` only.
"""

from __future__ import annotations

import logging
import math
import sys
import time

import torch

from .layers._base import _MAX_TOKENS, remember_input_  # noqa: F401  (what the layers keep of their input)

__all__ = []  # private: compress_ and the layers use these

logger = logging.getLogger("adapters.torch")

#: Work that has run this long (seconds) starts showing progress.
_PROGRESS_AFTER_S = 2.0

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


class Progress:
    """Progress of ``total`` units of work: silent for the first :data:`_PROGRESS_AFTER_S` seconds.

    After that, a tqdm bar on a terminal (``sys.stderr.isatty()`` and tqdm importable), otherwise
    ``logging`` INFO lines on the ``"adapters.torch"`` logger (at most one per 2 s, and one at the end).
    ``enabled=False``: nothing at all.
    """

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.total, self.desc, self.enabled = int(total), desc, bool(enabled)
        self.done, self.start, self.bar, self.last_log = 0, time.perf_counter(), None, None

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.bar is None and self.last_log is None and now - self.start < _PROGRESS_AFTER_S:
            return
        if self.bar is not None:
            self.bar.update(n)
            return
        if self.last_log is None and _use_tqdm():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=self.desc, initial=self.done, leave=False)
            return
        if self.last_log is None or now - self.last_log >= _PROGRESS_AFTER_S or self.done >= self.total:
            self.last_log = now
            logger.info("%s: %d/%d (%.1f s)", self.desc, self.done, self.total, now - self.start)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _use_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())
