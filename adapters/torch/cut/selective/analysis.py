"""The state selection's analysis: a selective layer's inputs, its states' scores and the change of a cut.

Every function here runs the exact selective scan of one layer on its own recorded inputs, in float64 and
without gradients, in the common form of :mod:`.kinds` (see :mod:`adapters.torch.cut.selective` for the
scores and the ``tol`` rule). Nothing here changes a layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from ...layers.selective import _chunk_size, _states
from .kinds import _layer_and_kind

__all__ = ["RANKINGS", "selective_state_scores"]

RANKINGS = ("output_energy", "gramian", "averaged_hsv")


def _batches(inputs):
    return [inputs] if isinstance(inputs, (torch.Tensor, Mapping)) else list(inputs)


def _as_items(inputs):
    """Layer inputs as a list of ``(u, attention_mask or None)``."""
    items = []
    for batch in _batches(inputs):
        if isinstance(batch, tuple):
            items.append((batch[0], batch[1] if len(batch) > 1 else None))
        else:
            items.append((batch, None))
    return items


def _chunks(items, layer, kind):
    """Split layer inputs into pieces of few sequences, so the (b, L, Ch, N) state tensors stay small."""
    _, n = kind.state_shape(layer)
    for u, mask in items:
        per_seq = max(1, u.shape[1] * u.shape[2] * n * 16)  # Ch ~ 2-4 d_model, float64
        step = max(1, int(4e7 // per_seq))
        for i in range(0, u.shape[0], step):
            yield u[i:i + step], None if mask is None else mask[i:i + step]


@torch.no_grad()
def _capture_inputs(model, layers, inputs):
    """Run ``model`` on ``inputs`` (tensors or dicts of keyword arguments); return each layer's inputs."""
    captured = {name: [] for name, _ in layers}

    def hook(module, args, kwargs, name):
        u = args[0] if args else kwargs["hidden_states"]
        captured[name].append((u.detach(), kwargs.get("attention_mask")))

    handles = [layer.register_forward_pre_hook(lambda m, a, k, name=name: hook(m, a, k, name), with_kwargs=True)
               for name, layer in layers]
    try:
        for batch in _batches(inputs):
            model(**batch) if isinstance(batch, Mapping) else model(batch)
    finally:
        for h in handles:
            h.remove()
    return captured


def _contributions(scan, chunk=None):
    """States ``h`` and per-state output terms ``c[b,t,c,n] = C[b,t,g(c),n] h[b,t,c,n]``, both (b, L, Ch, N)."""
    grp = scan.group_of_channel
    log_a = scan.delta[..., None] * scan.A
    v = (scan.delta * scan.x)[..., None] * scan.B[:, :, grp, :]
    h = _states(log_a, v, chunk or _chunk_size(scan.x.shape[1]))
    return h, scan.C[:, :, grp, :] * h


def _group_channels(scan, g):
    k = scan.x.shape[-1] // scan.groups
    return slice(g * k, (g + 1) * k)


@torch.no_grad()
def _score_pass(kind, layer, items):
    """One pass over calibration inputs: the three state scores and the output energy (:mod:`adapters.torch.cut.selective`)."""
    G, N = kind.state_shape(layer)
    acc = {"energy": torch.zeros(G, N, dtype=torch.float64), "P": torch.zeros(G, N, dtype=torch.float64),
           "Q": torch.zeros(G, N, dtype=torch.float64), "out": 0.0, "count": 0}
    sums = None
    for u, mask in _chunks(items, layer, kind):
        scan = kind.scan(layer, u, mask)
        h, c = _contributions(scan)
        y = c.sum(-1) + scan.D * scan.x
        out = kind.output(layer, y, scan)
        acc["out"] += float(out.pow(2).sum())
        sens = kind.output_sensitivity(layer, y, scan)
        grp = scan.group_of_channel
        for g in range(G):
            sl = _group_channels(scan, g)
            d = torch.zeros_like(c)
            d[:, :, sl] = c[:, :, sl]
            acc["energy"][g] += kind.output_jvp(layer, y, scan, d).pow(2).sum((0, 1, 2)).cpu()
            acc["P"][g] += h[:, :, sl].pow(2).sum((0, 1, 2)).cpu()
            acc["Q"][g] += (scan.C[:, :, g].pow(2) * sens[:, :, sl].sum(-1, keepdim=True)).sum((0, 1)).cpu()
        part = {"delta": scan.delta.sum((0, 1)), "delta_B": torch.einsum("blc,blcn->cn", scan.delta, scan.B[:, :, grp]),
                "C": scan.C.sum((0, 1))}
        sums = part if sums is None else {k: sums[k] + part[k] for k in sums}
        acc["count"] += u.shape[0] * u.shape[1]
        A = scan.A
    cnt = max(acc["count"], 1)
    lam = torch.exp(sums["delta"][:, None] / cnt * A)
    B_avg, C_avg = sums["delta_B"] / cnt, sums["C"] / cnt
    grp = scan.group_of_channel
    hsv = (B_avg * C_avg[grp]).abs() / (1.0 - lam * lam)
    averaged = torch.stack([hsv[_group_channels(scan, g)].sum(0) for g in range(G)]).cpu()
    return {"output_energy": acc["energy"], "gramian": torch.sqrt(acc["P"] * acc["Q"]) / cnt,
            "averaged_hsv": averaged, "out_energy": acc["out"]}


@torch.no_grad()
def _tail_pass(kind, layer, items, order, only: int | None = None):
    """Relative change of the state path's output on ``items`` when only the first ``r`` states of ``order``
    (G, N) are kept in every group, for every ``r`` in ``0..N`` (shape (N + 1,)).

    ``||out - out_r|| / ||out - out_0||``, with ``out_0`` the output without any state (the skip ``D x`` only);
    ``out - out_r`` is linearized in the dropped terms, which is exact for Mamba's linear output map.
    ``only=r``: the change at that one ``r`` (a float), at the cost of one output derivative instead of ``N``."""
    G, N = kind.state_shape(layer)
    if only is not None:
        return float(_tail_pass_at(kind, layer, items, order, int(only)))
    err2 = torch.zeros(N + 1, dtype=torch.float64)
    out2 = 0.0
    for scan, c, y, energy in _state_path_chunks(kind, layer, items):
        out2 += energy
        total = 0.0
        for g in range(G):
            sl = _group_channels(scan, g)
            d = torch.zeros_like(c)
            cs = c[:, :, sl][..., order[g].to(c.device)]
            d[:, :, sl] = cs.flip(-1).cumsum(-1).flip(-1)  # [..., r] = sum of states order[r:]
            total = total + kind.output_jvp(layer, y, scan, d)
        err2[:N] += total.pow(2).sum((0, 1, 2)).cpu()
    return torch.sqrt(err2 / max(out2, 1e-300))


def _state_path_chunks(kind, layer, items):
    """Per chunk of ``items``: the scan, its per-state contributions ``c``, the scan output ``y`` and
    ``||out - out_0||^2`` (``out_0``: the output of the skip ``D x`` alone), shared by the two tail passes."""
    for u, mask in _chunks(items, layer, kind):
        scan = kind.scan(layer, u, mask)
        _, c = _contributions(scan)
        skip = scan.D * scan.x
        y = c.sum(-1) + skip
        yield scan, c, y, float((kind.output(layer, y, scan) - kind.output(layer, skip, scan)).pow(2).sum())


@torch.no_grad()
def _tail_pass_at(kind, layer, items, order, r):
    """:func:`_tail_pass` at one ``r``: the same sums with only the tail ``order[r:]`` (one derivative)."""
    G, N = kind.state_shape(layer)
    if r >= N:
        return 0.0
    err2, out2 = 0.0, 0.0
    for scan, c, y, energy in _state_path_chunks(kind, layer, items):
        out2 += energy
        total = 0.0
        for g in range(G):
            sl = _group_channels(scan, g)
            d = torch.zeros_like(c[..., :1])
            d[:, :, sl, 0] = c[:, :, sl][..., order[g][r:].to(c.device)].sum(-1)
            total = total + kind.output_jvp(layer, y, scan, d)
        err2 += float(total.pow(2).sum())
    return math.sqrt(err2 / max(out2, 1e-300))



def selective_state_scores(layer: nn.Module, inputs, *, ranking: str = "output_energy") -> torch.Tensor:
    """Importance of every state of a selective layer, from its own inputs (:mod:`adapters.torch.cut.selective`, "Ranking").

    Parameters
    ----------
    layer : SelectiveSSM, or a Hugging Face ``MambaMixer`` / ``FalconMambaMixer`` / ``Mamba2Mixer``
        The selective layer (see :mod:`adapters.torch.hf` for the Hugging Face mixers).
    inputs : Tensor, shape (batch, L, d_model), or a list of them
        The layer's own inputs (calibration data).
    ranking : {"output_energy", "gramian", "averaged_hsv"}
        ``"output_energy"``: ``sum_{b,t} ||J c_{g,n}||^2``, the energy that state ``(g, n)``'s own term
        ``c = C_t h_t`` puts into the layer's output through the output map ``J`` (exact for Mamba's linear
        output map, linearized at the full output for Mamba2's gated RMS norm); ``"gramian"``:
        ``sqrt(P_nn Q_nn)`` from the empirical state second moment ``P_nn = E sum_c h^2`` and output
        sensitivity ``Q_nn = E C_n^2 ||J_c||^2`` (Lall, Marsden & Glavaski 2002); ``"averaged_hsv"``: the
        Hankel singular values of the time-averaged LTI system, summed over channels.

    Returns
    -------
    Tensor, shape (G, N), float64
        ``G = 1`` except for a ``Mamba2Mixer`` with several groups.
    """
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    kind = _layer_and_kind(layer)
    return _score_pass(kind, layer, _as_items(inputs))[ranking]

