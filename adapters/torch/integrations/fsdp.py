"""Compressing a model sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``): gather, cut, agree, re-shard.

``fully_shard`` replaces every parameter by a ``DTensor`` sharded on dim 0 across the ranks and keeps, per
parameter, the metadata of that sharding (sizes, padding, all-gather buffers) in an ``FSDPParam``. A cut
changes the sizes of the compressible layers' parameters, so :func:`compress_fsdp_`

1. gathers the full values of every compressible layer's parameters (``DTensor.full_tensor()``, one
   all-gather per parameter; the other layers stay sharded) and puts them into the layers as plain tensors;
2. runs :func:`adapters.torch.compress_` on every rank on those full values;
3. agrees across ranks: a failure on any rank, or ranks that reached different shapes (a ``tol=`` threshold
   that round-off flipped), restores every rank and raises the same error everywhere; otherwise the new full
   values are broadcast from rank ``src``, whose decision every rank adopts;
4. re-shards every changed parameter with FSDP's own initialization of its sharding
   (``FSDPParam._init_sharded_param``: new sizes, padding, a new sharded ``DTensor`` parameter registered on
   the layer) and drops the all-gather buffers of the old sizes; unchanged parameters keep their sharded
   tensors and optimizer state;
5. points the optimizer at the new sharded parameters (same param groups and positions, so LR schedulers stay
   valid), with their state reset (moments of the old basis are meaningless) and the re-warm-up ramp of
   :func:`adapters.torch.compress_` over them.

The model object, its FSDP modules and hooks, and the optimizer object are kept, so a framework that holds
them (Lightning's ``FSDPStrategy``, accelerate's prepared model) keeps working. The optimizer state of the
layers that were not cut is untouched. ``model.state_dict()`` afterwards holds the new sharded shapes, and a
full state dict (``torch.distributed.checkpoint.state_dict.get_model_state_dict(..., full_state_dict=True)``)
loads into a freshly built, unsharded model: compressible layers resize themselves when loading.

Scope
-----
FSDP2 (or HSDP) over a mesh that spans every rank of the default process group, with the default ``Shard(0)``
placement of the compressible layers' parameters; tensor or pipeline parallelism over them is refused. FSDP1
(``FullyShardedDataParallel``, one ``FlatParameter`` per unit) is refused: its flat parameter cannot change
size. Selective (Mamba-style) layers are refused: their cut calibrates by running the model, which under FSDP
is a collective forward of the whole model; cut them before sharding. Step 4 uses FSDP2's private
initialization of a parameter's sharding (present in torch 2.6 to 2.13); CUDA-specific parts (streams, NCCL,
CPU offload with pinned memory) are not exercised by the 2-process gloo test on CPU.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..cut.plan import _REQUIRED

__all__ = ["compress_fsdp_"]


def _fsdp_params(model: nn.Module) -> dict:
    """``(id(owner module), parameter name) -> (FSDPParam, FSDPParamGroup)`` of every FSDP2 unit in ``model``."""
    from torch.distributed.fsdp import FSDPModule

    out = {}
    for module in model.modules():
        if not isinstance(module, FSDPModule):
            continue
        group = module._get_fsdp_state()._fsdp_param_group
        for fp in group.fsdp_params if group is not None else ():
            out[(id(fp._module_info.module), fp._module_info.param_name)] = (fp, group)
    return out


def _check_fsdp1(model: nn.Module) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel

    if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
        raise TypeError("compress_fsdp_ supports FSDP2 (torch.distributed.fsdp.fully_shard); this model is wrapped in "
                        "FSDP1's FullyShardedDataParallel, whose flat parameters cannot change size. Shard it with "
                        "fully_shard instead, or cut before wrapping.")


def _entries(layers, table):
    """``(layer name, owner module, parameter name, sharded parameter, FSDPParam or None)`` of every parameter."""
    out = []
    for name, layer in layers:
        for pname, p in layer.named_parameters():
            owner_name, _, leaf = pname.rpartition(".")
            owner = layer.get_submodule(owner_name) if owner_name else layer
            fp, _ = table.get((id(owner), leaf), (None, None))
            out.append((f"{name}.{pname}".lstrip("."), owner, leaf, p, fp))
    return out


def _reshard_(fp, group, full: torch.Tensor) -> nn.Parameter:
    """Give ``fp`` (an ``FSDPParam``) the full value ``full`` of any shape; returns its new sharded parameter."""
    param = nn.Parameter(full.to(fp.device).contiguous(), requires_grad=fp.sharded_param.requires_grad)
    fp._init_sharded_param(param, fp.device, None, group.mesh_info)
    if fp.post_forward_mesh_info is not None:
        fp._init_sharded_post_forward_param_metadata(param)
    fp.init_dtype_attrs(group.mp_policy)
    fp._init_extensions()
    fp.all_gather_outputs = []  # buffers of the old size
    if hasattr(fp, "_unsharded_param"):
        del fp._unsharded_param
    return fp.sharded_param


def compress_fsdp_(model: nn.Module, *, optimizer=_REQUIRED, src: int = 0, compress_fn=None, **compress_kwargs):
    """Cut the compressible layers of a model sharded with ``fully_shard``, in place, on every rank.

    Call it on every rank at the same point of training (after ``optimizer.step()``), with the same
    arguments: it is a collective.

    Parameters
    ----------
    model : nn.Module
        The root of a model sharded with FSDP2's ``fully_shard`` (the compressible layers' parameters are
        ``DTensor``s). Without an initialized process group, a plain module is compressed by
        :func:`adapters.torch.compress_`.
    optimizer : torch.optim.Optimizer or None, required keyword
        The optimizer over ``model.parameters()`` (the sharded parameters), or ``None`` said explicitly.
        Its param groups are pointed at the new sharded parameters of the cut layers, whose state is reset.
    src : int
        Global rank whose result every rank adopts.
    compress_fn : callable, optional
        ``compress_fn(module, optimizer=None, **compress_kwargs) -> report``; default
        :func:`adapters.torch.compress_`.
    **compress_kwargs
        Passed to ``compress_fn`` (``rank=``, ``tol=``, ``rewarm_steps=``, ...). ``rank=`` is the safe choice
        across ranks.

    Returns
    -------
    CompressionReport
        This rank's report (equal on every rank up to round-off in the figures).

    Raises
    ------
    TypeError
        An FSDP1 model, or ``optimizer=`` not given.
    ValueError
        Selective layers, a layer not sharded by FSDP2, an optimizer that does not own the layers'
        parameters (raised before anything changes).
    RuntimeError
        The compression failed on some rank, or ranks reached different shapes; every rank is then restored
        to its state before the call.

    Examples
    --------
    ::

        mesh = init_device_mesh("cuda", (world_size,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ...
        report = at.compress_fsdp_(model, optimizer=optimizer, rank=16)   # every rank, same step
    """
    from ..compress import compress_
    from ..cut.plan import _check_optimizer_argument
    from .distributed import _distributed

    _check_optimizer_argument(optimizer, "compress_fsdp_")
    compress_fn = compress_fn or compress_
    if not _distributed():
        return compress_fn(model, optimizer=optimizer, **compress_kwargs)
    rewarm_steps = compress_kwargs.pop("rewarm_steps", 20)
    table, entries = _check_sharded_model(model, optimizer, rewarm_steps)
    full, new, report = _cut_full_values(model, entries, src, compress_fn, compress_kwargs)
    _reshard_changed_(entries, table, full, new, optimizer, rewarm_steps, report)
    return report


def _check_sharded_model(model: nn.Module, optimizer, rewarm_steps) -> tuple[dict, list]:
    """Every check of :func:`compress_fsdp_` before anything changes; returns ``(table, entries)``.

    ``table`` is :func:`_fsdp_params` of ``model``, ``entries`` is :func:`_entries` of its compressible layers.
    Frees the unsharded parameters a forward left behind (the root keeps them).
    """
    from ..cut import _guards
    from ..cut.selective.kinds import _selective_layers
    from ..optim import check_optimizer_owns, check_rewarm_steps
    from ..layers.protocol import compressible_layers

    _check_fsdp1(model)
    with _guards.inside_fsdp_cut():
        _guards.check_model(model, "compress_fsdp_")
    check_rewarm_steps(rewarm_steps)
    if _selective_layers(model):
        raise ValueError("compress_fsdp_ cuts LTI layers (LRU, S5, S4D, the layer protocol); this model has selective "
                         "(Mamba-style) layers, whose cut calibrates by running the model. Cut them before sharding, "
                         "or train them with DDP and compress_ddp_.")
    for module in model.modules():  # free unsharded parameters left from a forward (the root keeps them)
        if hasattr(module, "reshard") and hasattr(module, "_get_fsdp_state"):
            module.reshard()
    layers = compressible_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no compressible layer (see adapters.torch.protocol).")
    table = _fsdp_params(model)
    entries = _entries(layers, table)
    unsharded = [name for name, _, _, p, fp in entries if fp is None or not _guards._is_dtensor(p)]
    if unsharded:
        raise ValueError(f"compress_fsdp_: the parameters {unsharded[:4]} are not sharded by fully_shard; shard the "
                         "whole model (fully_shard on the root at least) or use compress_ on an unsharded model.")
    world = torch.distributed.get_world_size()
    other = sorted({p.device_mesh.size() for *_, p, _ in entries} - {world})
    if other:
        raise ValueError(f"compress_fsdp_: the compressible layers are sharded over a mesh of {other[0]} rank(s) in a "
                         f"job of {world}; it supports FSDP/HSDP meshes that span every rank (the ranks then hold one "
                         "model). Tensor or pipeline parallelism over these layers is not supported.")
    if any(fp.fsdp_placement.dim != 0 for *_, fp in entries):
        raise ValueError("compress_fsdp_ supports fully_shard's default placement Shard(0) for the compressible "
                         "layers' parameters (no shard_placement_fn for them).")
    if optimizer is not None:
        check_optimizer_owns(optimizer, [(name, p) for name, _, _, p, _ in entries], "the compressible layers")
    _guards.check_no_pending_gradients(model, "compress_fsdp_")
    return table, entries


def _cut_full_values(model: nn.Module, entries, src: int, compress_fn, compress_kwargs) -> tuple[list, list, object]:
    """Steps 1-3: full values in place of the shards, the cut on every rank, ``src``'s values adopted.

    Returns ``(full, new, report)``: each entry's full value before the cut, its parameter after it (``src``'s
    values on every rank) and this rank's report. On a failure on any rank, or shapes that differ between ranks,
    every rank puts its sharded parameters back and raises ``RuntimeError``.
    """
    from ..cut import _guards
    from .distributed import _all_agree, _broadcast_

    # 1. Full values in place of the shards (a collective per parameter, in the same order on every rank).
    originals = [(owner, leaf, p) for _, owner, leaf, p, _ in entries]
    full = [p.detach().full_tensor() for _, _, _, p, _ in entries]
    for (owner, leaf, p), value in zip(originals, full):
        owner._parameters[leaf] = nn.Parameter(value.clone(), requires_grad=p.requires_grad)

    def restore():
        for owner, leaf, p in originals:
            owner._parameters[leaf] = p

    # 2-3. Cut everywhere, agree, adopt src's values.
    report, error = None, None
    try:
        with _guards.inside_fsdp_cut():
            report = compress_fn(model, optimizer=None, **compress_kwargs)
    except Exception as exc:  # agreed on below, so no rank is left waiting in a collective
        error = exc
    failures = _all_agree(None if error is None else f"{type(error).__name__}: {error}", None)
    if any(f is not None for f in failures):
        restore()
        shown = "; ".join(f"rank {r}: {f}" for r, f in enumerate(failures) if f is not None)
        raise RuntimeError(f"compress_fsdp_: the compression failed on some rank ({shown}); every rank was restored "
                           "to its state before the call.") from error
    new = [owner._parameters[leaf] for owner, leaf, _ in originals]
    signature = [(tuple(t.shape), str(t.dtype)) for t in new]
    signatures = _all_agree(signature, None)
    if any(s != signatures[src] for s in signatures):
        restore()
        differing = [r for r, s in enumerate(signatures) if s != signatures[src]]
        raise RuntimeError(f"compress_fsdp_: ranks {differing} reached different parameter shapes than rank {src} (a "
                           "tol= threshold decided differently). Every rank was restored. Pass rank= for sizes that "
                           "cannot differ.")
    _broadcast_([(None, t) for t in new], src, None)
    return full, new, report


def _reshard_changed_(entries, table, full, new, optimizer, rewarm_steps, report) -> None:
    """Steps 4-5: re-shard every parameter the cut changed; the optimizer follows (state reset, re-warm-up)."""
    from ..optim import mark_rebased_, rebind_parameters_, rewarm_

    replaced, trained, dropped = {}, [], []
    for (name, owner, leaf, old, fp), before, value in zip(entries, full, new):
        if value.shape == before.shape and torch.equal(value.detach(), before):
            owner._parameters[leaf] = old  # unchanged: keep the shard and its optimizer state
            continue
        sharded = _reshard_(fp, table[(id(owner), leaf)][1], value.detach())
        replaced[id(old)] = (old, sharded)
        trained.append(sharded)
        dropped.append((name, old))
    if optimizer is not None and replaced:
        rebind_parameters_(optimizer, replaced, [])
        if rewarm_steps > 1:
            rewarm_(optimizer, trained, rewarm_steps)
            report.rewarm_steps = rewarm_steps
    mark_rebased_([], dropped)  # an optimizer not passed here that still steps the old shards is caught
