"""Compressing a model trained with ``DistributedDataParallel``: unwrap, cut, agree, broadcast, re-wrap.

DDP registers its gradient hooks and buckets on the parameter objects it saw at construction, and its
documentation forbids adding, removing or resizing parameters afterwards. A cut resizes parameters in place
(the objects are kept), so :func:`compress_ddp_` frees the old wrapper's reducer (which holds gradient
accumulators of the old shapes) and builds a *new* DDP around the compressed module; the old wrapper must
not be used again.

Every rank ends with identical parameters
-----------------------------------------
Under DDP every rank holds bitwise-identical parameters and optimizer state (the all-reduced gradients are
identical, so are the updates). :func:`compress_ddp_`

1. runs the compression on every rank (so each rank's optimizer is fixed up locally by the compression
   function itself: rebinding, reset or sliced moments, exactly as on one device);
2. checks that all ranks reached the same structure (names, shapes and dtypes of parameters, buffers and
   optimizer state, all-gathered as small Python objects); if not (a ``tol=`` threshold that round-off flipped
   on one rank, different calibration data giving different sizes), every rank is restored to its state
   before the call and the same ``RuntimeError`` is raised everywhere (use ``rank=`` or identical
   calibration inputs);
3. broadcasts every parameter, buffer and tensor-valued optimizer state of the module from rank ``src``, in
   place. With identical inputs and deterministic kernels this is a no-op, but it makes the result
   independent of determinism (GPU solvers, differing calibration batches with ``rank=``): the decision is
   ``src``'s. The cost is one broadcast of the model and its optimizer state, once per cut;
4. wraps the module in a new ``DistributedDataParallel`` with the old wrapper's settings (or ``ddp_kwargs``).

A failure of the compression on any rank (an exception) is also agreed on: all ranks restore and raise.

Without ``torch.distributed``
-----------------------------
If ``torch.distributed`` is unavailable or not initialized, there is no DDP model (DDP needs a process
group): ``compress_ddp_`` accepts a plain module, compresses it and returns it unwrapped, so one training
script runs both single-process and under ``torchrun``.

FSDP
----
A model sharded with FSDP2 (``fully_shard``) is cut by :func:`adapters.torch.compress_fsdp_`, which gathers
the compressible layers' full values, cuts them on every rank, adopts rank ``src``'s result and re-shards the
resized parameters in place (:mod:`adapters.torch.integrations.fsdp`). FSDP1 (``FullyShardedDataParallel``) is refused.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..cut.plan import _REQUIRED

__all__ = ["compress_ddp_"]


def _ddp_class():
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _ddp_settings(ddp) -> dict:
    """Constructor arguments that rebuild a wrapper like ``ddp`` (what it stored of them)."""
    kwargs = {
        "device_ids": getattr(ddp, "device_ids", None),
        "output_device": getattr(ddp, "output_device", None),
        "dim": getattr(ddp, "dim", 0),
        "process_group": getattr(ddp, "process_group", None),
        "find_unused_parameters": getattr(ddp, "find_unused_parameters", False),
        "gradient_as_bucket_view": getattr(ddp, "gradient_as_bucket_view", False),
        "static_graph": getattr(ddp, "static_graph", False),
    }
    broadcast = getattr(ddp, "forward_sync_buffers", getattr(ddp, "broadcast_buffers", None))
    if broadcast is not None:
        kwargs["broadcast_buffers"] = bool(broadcast)
    if not getattr(ddp, "bucket_bytes_cap_default", True) and getattr(ddp, "bucket_bytes_cap", None):
        kwargs["bucket_cap_mb"] = ddp.bucket_bytes_cap / (1024 * 1024)
    if getattr(ddp, "mixed_precision", None) is not None:
        kwargs["mixed_precision"] = ddp.mixed_precision
    return kwargs


def _state_tensors(module: nn.Module, optimizer) -> list[tuple[str, torch.Tensor]]:
    """Every tensor that must agree across ranks, in a rank-independent order, with a name."""
    out = [(f"module.{k}", v) for k, v in module.state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor)]
    if optimizer is not None:
        names = {id(p): n for n, p in module.named_parameters()}
        for gi, group in enumerate(optimizer.param_groups):
            for pi, p in enumerate(group["params"]):
                for key, value in sorted(optimizer.state.get(p, {}).items(), key=lambda kv: str(kv[0])):
                    if isinstance(value, torch.Tensor):
                        out.append((f"optimizer[{gi}][{pi}:{names.get(id(p), '?')}].{key}", value))
    return out


def _signature(tensors) -> list[tuple]:
    return [(name, tuple(t.shape), str(t.dtype)) for name, t in tensors]


def _release_reducer(ddp) -> None:
    """Free the old wrapper's reducer, which keeps every parameter's gradient accumulator alive.

    Parameters are resized in place; an accumulator created before the cut remembers the old shape, and
    autograd reuses a live accumulator for every later graph ("invalid gradient ... expected shape
    compatible with" the old shape). Once the reducer (and the logger that references it) is gone, the
    new wrapper and every later backward create accumulators of the new shapes. The old wrapper cannot
    be used after this (it could not before either: its buckets have the old sizes).
    """
    import gc

    remove = getattr(ddp, "_remove_autograd_hooks", None)
    if callable(remove):
        remove()
    for attr in ("reducer", "logger"):
        if attr in ddp.__dict__:
            delattr(ddp, attr)
    ddp.forward = _replaced_wrapper_forward  # an instance attribute: nn.Module.__call__ runs it
    gc.collect()


def _replaced_wrapper_forward(*args, **kwargs):
    raise RuntimeError(
        "this DistributedDataParallel wrapper was replaced by compress_ddp_, which returned a new one around the "
        "compressed module (the old one's gradient buckets have the old sizes). Use the wrapper it returned: "
        "model, report = compress_ddp_(model, optimizer=opt, ...), and call the new model from then on.")


def _broadcast_(tensors, src: int, group) -> None:
    for _, t in tensors:
        data = t.detach()
        # NCCL has no complex types; a real view shares storage, so the broadcast lands in place.
        torch.distributed.broadcast(torch.view_as_real(data) if data.is_complex() else data, src=src, group=group)


def _all_agree(value, group) -> list:
    gathered = [None] * torch.distributed.get_world_size(group)
    torch.distributed.all_gather_object(gathered, value, group=group)
    return gathered


def compress_ddp_(ddp_model, *, optimizer=_REQUIRED, ddp_kwargs: dict | None = None,
                  src: int = 0, compress_fn=None, **compress_kwargs):
    """Compress the module inside a ``DistributedDataParallel`` wrapper and wrap it again.

    Call it on every rank at the same point of training, with the same arguments (a collective).

    Parameters
    ----------
    ddp_model : DistributedDataParallel or nn.Module
        The wrapped model (a plain module when ``torch.distributed`` is not initialized, or to compress an
        unwrapped module in a distributed job: it is then synchronized but not wrapped).
    optimizer : torch.optim.Optimizer or None, required keyword
        The optimizer over ``ddp_model.parameters()`` (or ``None`` said explicitly, as for
        :func:`adapters.torch.compress_`); updated in place by the compression function, then its state for
        the module's parameters is broadcast from ``src``.
    ddp_kwargs : dict, optional
        Constructor arguments of the new wrapper. Default: the old wrapper's settings (``device_ids``,
        ``output_device``, ``dim``, ``process_group``, ``broadcast_buffers``, ``find_unused_parameters``,
        ``gradient_as_bucket_view``, ``static_graph``, ``bucket_cap_mb``, ``mixed_precision``). When given,
        it replaces them entirely.
    src : int
        Rank (in the wrapper's process group) whose result every rank adopts.
    compress_fn : callable, optional
        ``compress_fn(module, optimizer=..., **compress_kwargs) -> report``; default
        :func:`adapters.torch.compress_`. :func:`adapters.torch.compress_selective_` works too (pass
        ``calibration_inputs=``; with ``rank=`` the ranks may even calibrate on different data: ``src``
        decides).
    **compress_kwargs
        Passed to ``compress_fn`` (``tol=``, ``rank=``, ``selection=``, ...).

    Returns
    -------
    (new_ddp_model, report)
        A new ``DistributedDataParallel`` around the same (now compressed) module, and the compression
        report of this rank (equal on every rank up to the broadcast values).

    Raises
    ------
    RuntimeError
        If ranks reached different parameter or optimizer-state shapes, or the compression raised on some
        rank; every rank is then restored to its state before the call. On the rank(s) that raised, the
        original exception is chained.

    Notes
    -----
    The module is restored from a snapshot on failure, so a copy of the compressible layers' tensors and
    of the optimizer's state references is held during the call. See the module docstring for the design.
    """
    from ..compress import compress_
    from ..cut.apply import _Snapshot
    from ..cut.plan import _check_optimizer_argument

    _check_optimizer_argument(optimizer, "compress_ddp_")
    compress_fn = compress_fn or compress_
    ddp_class = _ddp_class() if torch.distributed.is_available() else None
    wrapped = ddp_class is not None and isinstance(ddp_model, ddp_class)
    module = ddp_model.module if wrapped else ddp_model
    if not _distributed():
        if wrapped:
            raise RuntimeError("got a DistributedDataParallel model but torch.distributed is not initialized; "
                               "compress inside the process group (before destroy_process_group()).")
        return module, compress_fn(module, optimizer=optimizer, **compress_kwargs)

    settings = _ddp_settings(ddp_model) if wrapped else {}
    group = settings.get("process_group")
    group_src = torch.distributed.get_global_rank(group, src) if group is not None else src
    snapshot = _Snapshot([module], optimizer)
    report, error = None, None
    try:
        report = compress_fn(module, optimizer=optimizer, **compress_kwargs)
    except Exception as exc:  # agreed on below, so no rank is left waiting in a collective
        error = exc
    failures = _all_agree(None if error is None else f"{type(error).__name__}: {error}", group)
    if any(f is not None for f in failures):
        snapshot.restore()
        shown = "; ".join(f"rank {r}: {f}" for r, f in enumerate(failures) if f is not None)
        raise RuntimeError(f"compress_ddp_: the compression failed on some rank ({shown}); every rank was "
                           "restored to its state before the call.") from error
    tensors = _state_tensors(module, optimizer)
    signatures = _all_agree(_signature(tensors), group)
    if any(s != signatures[src] for s in signatures):
        snapshot.restore()
        differing = [r for r, s in enumerate(signatures) if s != signatures[src]]
        raise RuntimeError(
            f"compress_ddp_: ranks {differing} reached different parameter or optimizer-state shapes than rank "
            f"{src} (a tol= threshold decided differently, or calibration data differ). Every rank was restored. "
            "Pass rank= for sizes that cannot differ, or identical calibration inputs on every rank.")
    _broadcast_(tensors, group_src, group)
    if not wrapped:
        return module, report
    _release_reducer(ddp_model)
    kwargs = settings if ddp_kwargs is None else dict(ddp_kwargs)
    return ddp_class(module, **kwargs), report
