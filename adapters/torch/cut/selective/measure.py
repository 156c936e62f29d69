"""Measured output change of a selective layer when states are dropped: exact, on the layer's own inputs.

:func:`measure_selective_cut` measures one kept set (what the report's ``error`` is);
:func:`leave_one_state_out` measures the removal of each state alone, the reference a ranking is judged by.
Nothing here changes a layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .analysis import _as_items, _chunks, _contributions, _group_channels
from .kinds import _layer_and_kind

__all__ = ["CutMeasurement", "leave_one_state_out", "measure_selective_cut"]


@torch.no_grad()
def _masked_output(kind, layer, u, mask, keep_mask):
    """Exact outputs of the layer: full, with only the states of ``keep_mask`` (G, N) bool, and with none."""
    full_scan = kind.scan(layer, u, mask)
    _, c = _contributions(full_scan)
    skip = full_scan.D * full_scan.x
    full = kind.output(layer, c.sum(-1) + skip, full_scan)
    none = kind.output(layer, skip, full_scan)
    scan = kind.scan(layer, u, mask, keep_mask) if kind.mask_changes_scan else full_scan
    if kind.mask_changes_scan:
        _, c = _contributions(scan)
    weights = keep_mask.to(c.device, c.dtype)[scan.group_of_channel]  # (Ch, N)
    cut = kind.output(layer, (c * weights).sum(-1) + scan.D * scan.x, scan)
    return full, cut, none


@dataclass
class CutMeasurement:
    """Measured change of a selective layer's output when states are dropped.

    Attributes
    ----------
    relative_output_change : float
        ``||out - out_cut||_F / ||out||_F`` of the layer's output over all measured sequences and steps
        (the layer's own inputs; ``out_cut`` computes exactly what the cut layer computes).
    state_path_change : float
        ``||out - out_cut||_F / ||out - out_0||_F``: the same change relative to what all the states put into the
        output (``out_0``: the layer without any state, the skip ``D x`` only); what ``tol`` limits.
    max_sequence_change : float
        The largest per-sequence ``||out - out_cut|| / ||out||``.
    data : str
        ``"held_out"`` (inputs not used to choose the states) or ``"calibration"``.
    sequences : int
        Number of sequences measured.
    """

    relative_output_change: float
    state_path_change: float
    max_sequence_change: float
    data: str
    sequences: int


def _keep_mask(kind, layer, keep) -> torch.Tensor:
    G, N = kind.state_shape(layer)
    mask = torch.zeros(G, N, dtype=torch.bool)
    mask[torch.arange(G)[:, None], keep] = True
    return mask


def _check_keep(kind, layer, keep) -> torch.Tensor:
    """``keep`` as a sorted (G, r) long tensor; a flat list is the same states in every group."""
    G, N = kind.state_shape(layer)
    idx = torch.as_tensor(keep, dtype=torch.long).cpu()
    if idx.dim() == 1:
        idx = idx[None].expand(G, -1)
    if idx.dim() != 2 or idx.shape[0] != G or idx.shape[1] < 1 or bool(((idx < 0) | (idx >= N)).any()) or any(
            row.unique().numel() != row.numel() for row in idx):
        raise ValueError(f"keep must be distinct state indices in [0, {N}) with at least one entry, the same number "
                         f"in each of the {G} group(s) (a flat list or shape ({G}, r)), got {idx.tolist()}")
    return idx.sort(dim=-1).values.contiguous()


@torch.no_grad()
def _measure(kind, layer, keep, items, data) -> CutMeasurement:
    keep_mask = _keep_mask(kind, layer, keep)
    num = den = path = 0.0
    worst, seqs = 0.0, 0
    for u, mask in _chunks(items, layer, kind):
        full, cut, none = _masked_output(kind, layer, u, mask, keep_mask)
        diff = (full - cut).pow(2).sum((1, 2))
        ref = full.pow(2).sum((1, 2))
        num, den = num + float(diff.sum()), den + float(ref.sum())
        path += float((full - none).pow(2).sum())
        worst = max(worst, float((diff / ref.clamp_min(1e-300)).sqrt().max()))
        seqs += u.shape[0]
    return CutMeasurement(math.sqrt(num / max(den, 1e-300)), math.sqrt(num / max(path, 1e-300)), worst, data, seqs)



def measure_selective_cut(layer: nn.Module, keep, inputs, *, data: str = "held_out") -> CutMeasurement:
    """How much keeping only the states ``keep`` changes ``layer``'s output on ``inputs``; nothing is changed.

    Parameters
    ----------
    layer : SelectiveSSM, or a Hugging Face ``MambaMixer`` / ``FalconMambaMixer`` / ``Mamba2Mixer``
        The selective layer (see :mod:`adapters.torch.hf` for the Hugging Face mixers).
    keep : sequence of int, or array of shape (G, r)
        States to keep (as for :meth:`SelectiveSSM.select_states_`); for a ``Mamba2Mixer`` with ``G`` groups
        either one list for every group or one row per group.
    inputs : Tensor, shape (batch, L, d_model), or a list of them
        The layer's own inputs (not the model's), preferably held out from the calibration.
    data : str
        Label stored in the result (``"held_out"`` or ``"calibration"``).

    Returns
    -------
    CutMeasurement

    Notes
    -----
    The cut is simulated by zeroing the output weight ``C_t`` of the dropped states, which is exactly what the
    layer computes after the cut (``A`` is diagonal, so the kept states never see the dropped ones); for a
    ``FalconMambaMixer`` the RMS norms of ``B_t`` and ``C_t`` are taken over the kept states, as after the cut.
    """
    kind = _layer_and_kind(layer)
    return _measure(kind, layer, _check_keep(kind, layer, keep), _as_items(inputs), data)


@torch.no_grad()
def leave_one_state_out(layer: nn.Module, inputs) -> torch.Tensor:
    """Measured relative output change of removing each state alone: the reference a ranking is judged by.

    Parameters
    ----------
    layer : SelectiveSSM, or a Hugging Face ``MambaMixer`` / ``FalconMambaMixer`` / ``Mamba2Mixer``
        The selective layer (see :mod:`adapters.torch.hf` for the Hugging Face mixers).
    inputs : Tensor, shape (batch, L, d_model), or a list of them
        The layer's own inputs (held-out data).

    Returns
    -------
    Tensor, shape (G, N), float64
        ``||out - out_{-(g,n)}||_F / ||out||_F`` over all of ``inputs``, with ``out_{-(g,n)}`` the exact
        output of the layer without state ``(g, n)`` (nonlinear output maps included).
    """
    kind = _layer_and_kind(layer)
    G, N = kind.state_shape(layer)
    num = torch.zeros(G, N, dtype=torch.float64)
    den = 0.0
    for u, mask in _chunks(_as_items(inputs), layer, kind):
        scan = kind.scan(layer, u, mask)
        _, c = _contributions(scan)
        y = c.sum(-1) + scan.D * scan.x
        full = kind.output(layer, y, scan)
        den += float(full.pow(2).sum())
        for g in range(G):
            for n in range(N):
                keep_mask = torch.ones(G, N, dtype=torch.bool)
                keep_mask[g, n] = False
                if kind.mask_changes_scan:
                    _, cut, _ = _masked_output(kind, layer, u, mask, keep_mask)
                else:
                    sl = _group_channels(scan, g)
                    y_cut = y.clone()
                    y_cut[:, :, sl] -= c[:, :, sl, n]
                    cut = kind.output(layer, y_cut, scan)
                num[g, n] += float((full - cut).pow(2).sum())
    return torch.sqrt(num / max(den, 1e-300))

