"""``compress_selective_``: the state selection of every selective layer of a model, in place and atomic.

:func:`compress_selective_` calls its steps in this order: :func:`check_options`,
:func:`find_selective_layers`; each layer's inputs recorded and :func:`analyse_layer` (scores, ranking, the
size the layer needs); :func:`common_sizes` (one size per configuration); :func:`plan_layer` (kept states,
the cut measured, the report entry); then :func:`cut_layers_`, the only step that changes anything, undone
on any failure.
"""

from __future__ import annotations

import copy

from dataclasses import dataclass

import torch
from torch import nn

from ...optim import check_optimizer_owns, mark_rebased_
from ..plan import _REQUIRED, _check_optimizer_argument, _check_tol
from ..report import warn_if_gated
from .analysis import RANKINGS, _capture_inputs, _score_pass, _tail_pass
from .apply import _apply_cut, _Undo
from .kinds import _kind_of, _selective_layers
from .measure import _measure
from .report import SelectiveCompressionReport, SelectiveLayerReport

__all__ = ["compress_selective_"]


def compress_selective_(model: nn.Module, *, calibration_inputs, tol: float | None = None, rank: int | None = None,
                        optimizer=_REQUIRED, min_shrink: float = 0.05,
                        held_out_inputs=None, optimizer_state: str = "slice",
                        ranking: str = "output_energy") -> SelectiveCompressionReport:
    """Cut the state size of every selective layer of ``model`` by state selection, in place, atomically.

    Finds :class:`SelectiveSSM` blocks and Hugging Face ``MambaMixer``, ``FalconMambaMixer`` and ``Mamba2Mixer``
    modules (``MambaForCausalLM``, ``FalconMambaForCausalLM``, ``Mamba2ForCausalLM`` and their base models),
    ranks their states on calibration data and keeps the best ones, the same in every channel (:mod:`adapters.torch.cut.selective`).

    Parameters
    ----------
    model : nn.Module
        A model containing selective layers (or one such layer).
    calibration_inputs : Tensor, dict, or iterable of them
        Model inputs (``model(batch)``, or ``model(**batch)`` for a dict such as ``{"input_ids": ...}``), run
        under ``no_grad``; each layer's own inputs are recorded on the way.
    tol : float in (0, 1), optional
        Largest relative change of each layer's state path on the calibration inputs,
        ``||out - out_cut|| / ||out - out_0||`` (``out_0``: the layer's output without any state, the skip
        ``D x`` only): each layer keeps the fewest states within it.
    rank : int, optional
        New state size of every layer. Give exactly one of ``tol`` and ``rank``.
    optimizer : torch.optim.Optimizer or None
        Required, as in :func:`adapters.torch.compress_`: the optimizer training ``model``, or ``None`` if no
        optimizer holds state for it. Parameters keep their objects (resized in place), so its parameter groups
        stay valid; the per-parameter state of resized parameters is sliced to the kept states (or reset, see
        ``optimizer_state``). Another optimizer that still holds state of the old shapes raises
        :class:`adapters.torch.StaleOptimizerStateError` at its next ``step()``.
    min_shrink : float in [0, 1)
        A layer is cut only if it shrinks by at least this fraction.
    held_out_inputs : Tensor, dict, or iterable of them, optional
        Model inputs not used for calibration: the reported ``error`` is then measured on them.
    optimizer_state : {"slice", "reset"}
        ``"slice"`` (default): the kept states' moments are kept (a selection does not change the basis);
        ``"reset"``: the state of resized parameters is dropped.
    ranking : {"output_energy", "gramian", "averaged_hsv"}
        State score (:func:`selective_state_scores`); ``"output_energy"`` measures best.

    Returns
    -------
    SelectiveCompressionReport

    Raises
    ------
    TypeError
        ``optimizer=`` not given (pass the optimizer, or ``None``).
    ValueError
        Bad options, no selective layer in ``model``, an optimizer that does not own the layers' parameters.

    Warns
    -----
    UserWarning
        A layer the rule would cut was held back by the ``min_shrink`` gate (its report's ``note`` says so).

    Notes
    -----
    *One size per configuration.* Hugging Face mixers take their state size from the model's ``config``
    (``config.state_size``), one number for every layer. All layers that share a configuration are therefore
    cut to one size ``r``: the largest of the sizes each layer needs by the ``tol`` rule (each layer keeps its
    own best ``r`` states, so each stays within ``tol``), and ``config.state_size`` is set to ``r``. Then
    ``save_pretrained`` and a plain ``from_pretrained`` give back the compressed model. :class:`SelectiveSSM`
    blocks have no configuration and are cut each to its own size (their checkpoints resize on load).

    *Atomic.* All analysis runs before anything changes; if the swap fails, parameters, gradients,
    attributes, configurations and optimizer state are restored exactly.
    """
    _check_optimizer_argument(optimizer, "compress_selective_")
    check_options(tol=tol, rank=rank, min_shrink=min_shrink, optimizer_state=optimizer_state, ranking=ranking)
    layers, kinds = find_selective_layers(model, optimizer)

    # 1. Analysis, nothing changes.
    calib = _capture_inputs(model, layers, calibration_inputs)
    held = _capture_inputs(model, layers, held_out_inputs) if held_out_inputs is not None else None
    analyses = [analyse_layer(model, name, layer, kind, calib[name], ranking=ranking, tol=tol, rank=rank)
                for (name, layer), kind in zip(layers, kinds)]
    sizes = common_sizes(analyses)
    plans, reports = [], []
    for a in analyses:
        plan, report = plan_layer(a, sizes[a.group], calib, held, ranking=ranking, min_shrink=min_shrink)
        plans.append(plan)
        reports.append(report)

    # 2. Swap, undone on any failure.
    cut_layers_(model, analyses, plans, optimizer, optimizer_state)
    report = SelectiveCompressionReport(reports)
    warn_if_gated(report.layers, min_shrink)
    return report


def check_options(*, tol, rank, min_shrink, optimizer_state, ranking) -> None:
    """Raise a ``ValueError`` naming the first bad option of :func:`compress_selective_`."""
    if (tol is None) == (rank is None):
        raise ValueError(f"give exactly one of tol= and rank=, got tol={tol!r}, rank={rank!r}.")

    _check_tol(tol)
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive integer (the new state size), got {rank!r}.")
    if not 0.0 <= float(min_shrink) < 1.0:
        raise ValueError(f"min_shrink must be in [0, 1), got {min_shrink!r}.")
    if optimizer_state not in ("slice", "reset"):
        raise ValueError(f"optimizer_state must be 'slice' or 'reset', got {optimizer_state!r}.")
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}.")


def find_selective_layers(model: nn.Module, optimizer) -> tuple[list, list]:
    """``[(name, layer)]`` of the selective layers of ``model`` and their kinds; raises if there is none, or if
    ``optimizer`` (unless ``None``) does not own the parameters a cut resizes."""
    layers = _selective_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} contains no selective layer to compress (SelectiveSSM, or "
                         "a Hugging Face MambaMixer, FalconMambaMixer or Mamba2Mixer).")
    kinds = [_kind_of(layer) for _, layer in layers]
    if optimizer is not None:
        owned = []
        for (name, layer), kind in zip(layers, kinds):
            G, N = kind.state_shape(layer)
            for pname, _, _ in kind.cut_spec(layer, torch.arange(N).expand(G, N))[0]:
                owned.append((f"{name}.{pname}" if name else pname, layer.get_parameter(pname)))
        check_optimizer_owns(optimizer, owned, "the selective layers")
    return layers, kinds


@dataclass
class _Analysis:
    """One layer's analysis: its states' scores and ranking, the size it needs, and its configurations.

    ``order`` (G, N): state indices, best first; ``changes`` (N + 1,): the ``tol`` rule's change for every
    size (``None`` for ``rank=``); ``group``: layers of one group (one configuration) keep one common size.
    """

    name: str
    layer: nn.Module
    kind: object
    N: int
    scores: torch.Tensor
    order: torch.Tensor
    r: int
    changes: torch.Tensor | None
    configs: list
    group: int


def analyse_layer(model, name, layer, kind, items, *, ranking, tol, rank) -> _Analysis:
    """Score the states of one layer on its calibration inputs ``items`` and find the size it needs."""
    _, N = kind.state_shape(layer)
    scores = _score_pass(kind, layer, items)[ranking]
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    if rank is not None:
        r, changes = min(N, rank), None
    else:
        changes = _tail_pass(kind, layer, items, order)
        r = int(next(i for i in range(1, N + 1) if changes[i] <= tol or i == N))
    configs = kind.configs(model, name, layer)
    return _Analysis(name, layer, kind, N, scores, order, r, changes, configs,
                     id(configs[-1]) if configs else id(layer))


def common_sizes(analyses) -> dict[int, int]:
    """The size of every group: the largest size one of its layers needs (each then stays within ``tol``)."""
    common = {}
    for a in analyses:
        common[a.group] = max(common.get(a.group, 0), a.r)
    return common


def plan_layer(a: _Analysis, r: int, calib, held, *, ranking, min_shrink):
    """The kept states of one layer at size ``r`` (``None``: not cut) and its report entry, the cut measured."""
    layer, kind, N, scores = a.layer, a.kind, a.N, a.scores
    keep = a.order[:, :r].sort(dim=-1).values
    total = float(scores.sum())
    energy = float(scores.gather(-1, keep).sum()) / total if total > 0 else 1.0
    note, plan, measurement, change = "", None, None, 0.0
    if r >= N:
        note = "nothing to cut"
    elif r > (1.0 - min_shrink) * N:
        note = f"gate: {N}->{r} shrinks by less than min_shrink={min_shrink:g}"
    else:
        plan = keep
        if a.changes is not None:
            change = float(a.changes[r])
        else:
            change = _tail_pass(kind, layer, calib[a.name], a.order, only=r)
        items, data = (held[a.name], "held_out") if held is not None else (calib[a.name], "calibration")
        measurement = _measure(kind, layer, keep, items, data)
    kept = keep if plan is not None else torch.arange(N).expand(keep.shape[0], N)
    kept_list = kept[0].tolist() if kept.shape[0] == 1 else kept.tolist()
    report = SelectiveLayerReport(
        a.name, kind.label, N, N if plan is None else r, kept_list,
        (scores[0] if scores.shape[0] == 1 else scores).numpy(), ranking, energy if plan is not None else 1.0,
        change, measurement.relative_output_change if measurement else 0.0,
        measurement.data if measurement else "", plan is not None, note, measurement=measurement)
    return plan, report


def _own_configs_(model, analyses, undo) -> dict:
    """Give the model its own copies of the configurations a cut changes, so the caller's objects stay as they were.

    A Hugging Face model keeps the configuration it was built from (``model.config is cfg``); setting
    ``state_size`` on that object would also change every model the caller builds from ``cfg`` later. Every
    module attribute ``config`` that refers to a changed configuration is pointed at one copy of it (undone
    with the rest of the cut on failure). Returns ``id(original) -> copy``.
    """
    copies = {id(c): copy.deepcopy(c) for a in analyses for c in a.configs}
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and id(cfg) in copies:
            undo.attr(module, "config", copies[id(cfg)])
    return copies


def cut_layers_(model, analyses, plans, optimizer, optimizer_state) -> None:
    """Cut every planned layer (and ``optimizer``'s state) to its kept states; on any failure undo everything.

    Afterwards an optimizer other than ``optimizer`` that still holds the old shapes fails at its next step,
    naming the parameter.
    """
    undo = _Undo(optimizer)
    shapes = {}
    try:
        own = _own_configs_(model, [a for a, keep in zip(analyses, plans) if keep is not None], undo)
        for a, keep in zip(analyses, plans):
            if keep is not None:
                for pname, _, _ in a.kind.cut_spec(a.layer, keep)[0]:
                    p = a.layer.get_parameter(pname)
                    shapes[id(p)] = (p, tuple(p.shape))
                _apply_cut(a.kind, a.layer, keep, [own[id(c)] for c in a.configs], optimizer, optimizer_state, undo)
    except BaseException:
        undo.restore()
        raise
    owners = {id(m): n for n, m in model.named_modules()}
    mark_rebased_([(p, shape) for p, shape in shapes.values()],
                  [(f"{owners.get(id(owner), '')}.{leaf}".lstrip("."), p) for owner, leaf, p in undo.replaced])
