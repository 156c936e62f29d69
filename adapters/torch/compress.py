"""``compress_``: the one entry point that cuts the state of live SSM layers, batched, atomic, optimizer-aware.

It runs the steps of :mod:`adapters.torch.cut` in order: plan (check the call, find the layers, choose the
orders), compute (balance and reduce every layer before anything changes), apply (load atomically, the
optimizer kept consistent), certify (measure what the cut did). All numerics are in :mod:`lti_reduce`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .cut import _guards
from .cut.apply import Changes, cut_selective_, finish_, load_systems_, rollback_on_failure
from .cut.certify import certify_, record_before
from .cut.compute import balance_layers, reduce_layers
from .cut.plan import _REQUIRED, check_call, find_layers, plan_kept_states, plan_orders
from .cut.progress import Progress
from .cut.report import CompressionReport, LayerReport, _selective_entry, warn_if_gated

__all__ = ["compress_", "CompressionReport", "LayerReport"]


@torch.no_grad()
def compress_(model: nn.Module, *, tol: float | None = None, rank: int | None = None,
              optimizer: torch.optim.Optimizer | None = _REQUIRED, calibration_inputs=None,
              selection: str = "largest", scope: str = "layer", min_shrink: float = 0.05, method: str = "truncate",
              seed: int | None = None, certify: bool | str = "output", hinf_rtol: float = 1e-6,
              hinf_method: str = "search", rewarm_steps: int = 20, progress: bool = True) -> CompressionReport:
    """Cut low-energy states of every compressible layer of ``model``, in place.

    The one entry point for every layer kind the library knows:

    * *LTI layers* (the protocol of :mod:`adapters.torch.layers.protocol`: :class:`adapters.torch.LRU`, S5- and
      S4D-style layers, your own): each layer's linear core (``layer.to_system()``) is balanced with
      :func:`lti_reduce.balance` (one batched call per group of equal-shaped layers on the same device),
      cut to a new order, returned to modal form with
      :meth:`~lti_reduce.BalancedTruncationResult.to_diagonal` and written back with ``layer.load_system_``.
      A system with leading batch dimensions is a layer of independent channels (S4D: one SISO system per
      channel, sharing one state size): every channel is cut to one order, chosen from the channels'
      total HSV energy with ``tol`` (so a few slow channels do not hold the layer at full size), in one
      batched reduction and one batched modal form; each channel's error stays within its own bound
      ``2 sum_{i > r} sigma_i``, the largest of which the report gives.
    * *Selective layers* (:class:`adapters.torch.SelectiveSSM` and the mixers
      :func:`adapters.torch.cut.selective.kinds._selective_layers` finds): their ``Delta, B, C`` depend on the input, so
      they are cut by state selection on calibrated, averaged systems
      (:func:`adapters.torch.compress_selective_`); ``calibration_inputs=`` is then required.

    CompreSSM (arXiv 2510.02823) does this a few times early in training.

    Parameters
    ----------
    model : nn.Module
        Any model containing compressible layers (also ``torch.compile``-d: the report uses the model's own
        layer names). A layer whose parameters are all frozen (``requires_grad=False``) is not cut; the
        report lists it with the note ``"frozen"``.
    tol : float in (0, 1), optional
        Fraction of each layer's HSV sum that may be dropped (the paper's tau), or
        with ``scope="global"`` the mean fraction over LTI layers.
    rank : int, optional
        Largest new ``state_dim`` of every layer, in the layer's own units (complex modes for
        the LRU; a real-output layer of ``r`` modes is a real system of order ``2 r``). A
        real-output reduced model of order ``k`` with ``q`` real eigenvalues needs ``(k + q) / 2``
        modes, so the largest order that fits in ``rank`` modes is taken: a layer can end one or
        two modes below ``rank``. Give exactly one of ``tol`` and ``rank``.
    optimizer : torch.optim.Optimizer or None, required keyword
        The optimizer that trains ``model``, or ``None`` said explicitly. Parameters are resized in place
        (every optimizer, scheduler and hook keeps the live ``nn.Parameter`` objects); the per-parameter
        state (moments, momentum) of every parameter the cut re-based is reset, everything else (group
        hyper-parameters, the other parameters' state, step counts) is kept. A selective layer's cut keeps
        the basis of the kept states, so its moments are sliced to them, as by
        :func:`adapters.torch.compress_selective_`. The argument is required
        because an optimizer cannot be found from the model, and one whose moments still have the old
        shapes and basis cannot train the cut layers: forgetting it is a ``TypeError`` here, at the call,
        rather than a failure (or a frozen layer) far away. With ``optimizer=None``, an optimizer that
        still holds old-shaped state for a cut parameter raises a ``RuntimeError`` naming the fix at its
        next ``step()`` (see :mod:`adapters.torch.optim`).
    calibration_inputs : Tensor or iterable of Tensors, optional
        Model inputs for the selective layers' calibration (``model(batch)`` under ``no_grad``); required
        when the model has selective layers. When given, the LTI layers' ``output_change`` is measured on
        what they receive from its first batch instead of their last input batch.
    selection : {"largest", "smallest", "random"}
        Which balanced states to keep: the highest-HSV ones (balanced truncation), or
        the paper's ablations (LTI layers).
    scope : {"layer", "global"}
        ``tol`` per layer, or one budget on normalized energy across LTI layers
        (layer-adaptive orders, LAST arXiv 2411.02824).
    min_shrink : float in [0, 1)
        A layer is cut only if its ``state_dim`` shrinks by at least this fraction
        (the paper's 5% gate). A layer it holds back gets a ``note``, a line under the table and a
        ``UserWarning``: a requested cut never does nothing silently.
    method : {"truncate", "spa"}
        Balanced truncation or singular perturbation (SPA changes ``D``; layers with
        an elementwise ``D`` such as the LRU reject it).
    seed : int >= 0, optional
        Seed for ``selection="random"``.
    certify : {"output", "hinf", True, "lazy", False}
        What the report certifies. ``"output"`` (default): each cut layer's ``output_change``, the
        relative change of its output on the inputs it really sees (its last input batch, kept by the
        layer's ``forward``, or ``calibration_inputs=``), measured directly by running the layer before
        and after the cut on a few sequences (two forward passes of the cut layers), beside the
        a-priori bound; the maps before and right after the cut are stored (detached copies), so
        :meth:`CompressionReport.certify_hinf` gives the H-infinity ``gain`` and ``error`` later on
        request; printing the report computes nothing. ``"hinf"`` or ``True``: that, and the
        H-infinity ``gain`` and a-posteriori ``error`` computed before returning. ``"lazy"``: they are
        computed when the report's figures are first read (``report.layers[i].error``, the table,
        ``to_dict``). ``False``: nothing measured or stored (``None``). Any other value is an error.
    hinf_rtol : float
        Relative accuracy of the reported ``gain`` and ``error`` (:func:`lti_reduce.hinf_norm`).
    hinf_method : {"search", "level-set"}
        How :func:`lti_reduce.hinf_norm` computes ``gain`` and ``error``. ``"search"`` (default): a
        frequency search on the diagonal maps, ``O(T n m p)`` with ``T`` a few hundred angles; each value
        is the layer's ``sigma_max`` at some frequency, a lower bound on the norm that equals it to
        ``hinf_rtol`` unless a peak lies outside every polished bracket (see
        :func:`lti_reduce.hinf_norm`). ``"level-set"``: the norm to ``hinf_rtol``, guaranteed, at
        ``O(n^3)`` per iteration on dense realizations of order ``2 n`` and ``2 (n + r)``, which at ``n``
        in the hundreds costs tens of times the cut.
    rewarm_steps : int >= 0
        With an optimizer: over its next ``rewarm_steps`` steps, the updates of the parameters the cut
        re-based are scaled by ``k / rewarm_steps`` at the ``k``-th step, which is a learning rate ramped
        up from ``lr / rewarm_steps`` for those parameters alone (default 20; 0 or 1: no ramp). Their
        optimizer state is reset by the cut, and Adam's first steps from zero moments move every element
        by about the full learning rate: without the ramp the loss typically jumps by one to two orders
        of magnitude for a few steps after a cut. The ramp is kept in the optimizer's param groups, so
        ``optimizer.state_dict()`` saves it and a resumed run continues it; it ends after its steps, when
        :class:`RollbackGuard` rolls the cut back, or when the next cut starts its own.
    progress : bool
        Work that runs longer than about 2 s (the cut of many layers, H-infinity certificates) shows
        progress: a tqdm bar on a terminal, ``logging`` INFO lines on the ``"adapters.torch"`` logger
        otherwise; ``False``: silent.

    Returns
    -------
    CompressionReport
        Per layer: the method, state size before/after, HSVs, energy kept, ``output_change`` (measured),
        the a-priori ``error_bound`` and ``sigma_{r+1}`` (``hsv_lower``), and on request ``gain`` (the
        map's H-infinity norm before the cut) and ``error`` (the H-infinity norm of the map's change,
        measured on the loaded layer). The printed table gives ``error_bound / sigma_1`` (an upper bound
        on the worst-case relative change) and, when computed, ``error`` and ``error_bound`` relative
        to ``gain``.

    Raises
    ------
    TypeError
        ``optimizer=`` not given; a ``DistributedDataParallel`` wrapper (use :func:`compress_ddp_`) or layers
        sharded by FSDP2 (use :func:`compress_fsdp_`).
    ValueError
        Bad options, a model with no compressible layer, selective layers without
        ``calibration_inputs=``, an optimizer that does not own the trainable parameters of the compressible
        layers or keeps state flattened across its parameters (``torch.optim.LBFGS`` is supported: its
        history restarts), layers on the ``meta`` device.
    RuntimeError
        Called under ``torch.inference_mode()``: tensors made there can never be saved for backward, so
        the cut parameters could not train; or while gradients are being accumulated (a parameter holds a
        gradient computed since the optimizer last stepped it): the cut would drop only the resized
        parameters' gradients and the next step would mix micro-batches.
    lti_reduce.UnstableSystemError
        A layer whose eigenvalues left the unit disc (its name is in the message).

    Notes
    -----
    Atomic: every reduction is computed before any layer changes; if anything fails
    (in the core, in a selective layer's cut, in ``load_system_``, in the optimizer update or in the
    a-posteriori norms) every layer's parameters, buffers and gradients and the optimizer are restored
    exactly, and the error is re-raised. The reduction runs on each layer's device in float64 and is
    returned in the layer's precision.

    Cost: the default certificate costs two forward passes of the cut layers on at most 1024 tokens
    of their input. The H-infinity ``gain`` and ``error`` cost far more than the cut for layers of a
    few hundred modes on the CPU (``benchmarks/bench_compress.py`` measures both against a training
    step); ``hinf_method="level-set"`` costs 50-90 times the cut.

    Examples
    --------
    >>> import torch, adapters.torch as at
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(at.LRU(8, 32), at.LRU(8, 32))
    >>> opt = torch.optim.Adam(model.parameters())
    >>> report = at.compress_(model, rank=8, optimizer=opt)
    >>> [layer.state_dim <= 8 for layer in model], [x.before for x in report]
    ([True, True], [32, 32])
    >>> all(opt.state[p] == {} or p.shape == opt.state[p]["exp_avg"].shape for p in model.parameters())
    True
    """
    check_call(model, optimizer, tol=tol, rank=rank, selection=selection, scope=scope, min_shrink=min_shrink,
               method=method, seed=seed, rewarm_steps=rewarm_steps, certify=certify, hinf_rtol=hinf_rtol,
               hinf_method=hinf_method)
    layers, selective, frozen = find_layers(model, optimizer, calibration_inputs)

    # Plan and compute: every reduced system before anything changes.
    bar = Progress(2 * len(layers), "compress_", progress)
    systems, balanced, hsvs = balance_layers(layers, bar)
    new_orders = plan_orders(layers, balanced, hsvs, tol=tol, rank=rank, scope=scope)
    keeps = plan_kept_states(balanced, new_orders, selection, seed)
    plans, reports = reduce_layers(layers, balanced, hsvs, new_orders, keeps, min_shrink=min_shrink, method=method,
                                   rank=rank, bar=bar)
    bar.close()
    cut = [i for i, (s, _) in enumerate(plans) if s is not None]
    before = record_before(model, layers, systems, cut, calibration_inputs, certify)

    def certify_cut():
        certify_(reports, layers, cut, before, certify=certify, hinf_rtol=hinf_rtol, hinf_method=hinf_method,
                 progress=progress)

    # Apply and certify, undoing everything on any failure.
    todo = [(layers[i][1], plans[i]) for i in cut]
    selective_report, ramp = None, 0
    if todo or selective:
        _guards.check_no_pending_gradients(model)
        changes = Changes()
        with rollback_on_failure([layer for layer, _ in todo] + [m for _, m in selective], optimizer):
            if selective:
                selective_report = cut_selective_(model, selective, changes, calibration_inputs=calibration_inputs,
                                                  tol=tol, rank=rank, optimizer=optimizer, min_shrink=min_shrink)
            load_systems_(todo, {id(layer): name for name, layer in layers}, optimizer, changes)
            certify_cut()
        ramp = finish_(changes, optimizer, rewarm_steps)  # only once the call succeeded
    else:
        certify_cut()

    if selective_report is not None:
        reports.extend(_selective_entry(x) for x in selective_report.layers)
    for x in reports:
        x.name = _guards.user_name(x.name)
    reports.extend(_guards.frozen_entries(frozen))
    warn_if_gated(reports, min_shrink, stacklevel=4)  # 4: past torch.no_grad's wrapper
    return CompressionReport(reports, rewarm_steps=ramp)
