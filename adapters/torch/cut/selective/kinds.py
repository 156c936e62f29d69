"""The kinds of selective layer the state selection knows, and how it finds them in a model.

A kind (:class:`_SelectiveKind`, one instance per layer class) tells the analysis how to run one class of
selective layer in a common form (:class:`_Scan`), what its output map is, and which parameter entries a cut
drops. This module knows :class:`~adapters.torch.SelectiveSSM`; an integration adds the kinds of its
framework's layers with :func:`register_kind` when it is imported
(:mod:`adapters.torch.integrations.hf.mamba`: Hugging Face ``MambaMixer``, ``FalconMambaMixer``,
``Mamba2Mixer``; :mod:`adapters.torch` imports it, and it does not import ``transformers``). The cut never
imports an integration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...layers.selective import SelectiveSSM

__all__: list[str] = []


@dataclass
class _Scan:
    """One batch through a selective layer in the common form the analysis uses (float64, detached).

    ``Ch`` scan channels (Mamba: ``d_inner``; Mamba2: ``num_heads * head_dim``), ``G`` groups of ``K = Ch / G``
    contiguous channels that share ``B`` and ``C`` (Mamba: ``G = 1``), ``N`` states per channel. State ``(g, n)``
    of the layer is state ``n`` of every channel of group ``g``: ``h[b,t,c,n] = exp(delta[b,t,c] A[c,n])
    h[b,t-1,c,n] + delta[b,t,c] B[b,t,g(c),n] x[b,t,c]`` and ``y[b,t,c] = sum_n C[b,t,g(c),n] h[b,t,c,n] +
    D[c] x[b,t,c]``; the layer's output is ``kind.output(layer, y, scan)``.
    """

    x: torch.Tensor        # (b, L, Ch)
    delta: torch.Tensor    # (b, L, Ch)
    A: torch.Tensor        # (Ch, N)
    B: torch.Tensor        # (b, L, G, N)
    C: torch.Tensor        # (b, L, G, N)
    D: torch.Tensor        # (Ch,)
    ctx: dict              # what the kind's output map needs (gates, norms)

    @property
    def groups(self) -> int:
        return self.B.shape[2]

    @property
    def group_of_channel(self) -> torch.Tensor:
        ch, g = self.x.shape[-1], self.groups
        return torch.arange(ch, device=self.x.device) // (ch // g)


class _SelectiveKind:
    """How the analysis sees one class of selective layer (interface; one instance per class)."""

    label = "selective"
    #: whether the kept set changes what the kept states compute (FalconMamba's B/C RMS norms)
    mask_changes_scan = False

    def matches(self, module) -> bool:
        raise NotImplementedError

    def state_shape(self, layer) -> tuple[int, int]:
        """``(G, N)``: groups and states per group."""
        raise NotImplementedError

    def scan(self, layer, u, attention_mask=None, keep_mask=None) -> _Scan:
        """The layer's scan quantities for its input ``u`` (b, L, d_model); ``keep_mask`` (G, N) bool."""
        raise NotImplementedError

    def output(self, layer, y, scan) -> torch.Tensor:
        """Layer output (b, L, d_model), float64, for the scan output ``y`` (b, L, Ch) (``D x`` included)."""
        raise NotImplementedError

    def output_jvp(self, layer, y, scan, d) -> torch.Tensor:
        """Linearized output change (b, L, d_model, M) for perturbations ``d`` (b, L, Ch, M) of ``y``, no bias."""
        raise NotImplementedError

    def output_sensitivity(self, layer, y, scan) -> torch.Tensor:
        """``||d out / d y[b,t,c]||^2`` per channel (b, L, Ch) (the projection term of a norm is left out)."""
        raise NotImplementedError

    def cut_spec(self, layer, keep):
        """For ``keep`` (G, r) sorted state indices: ``[(param_name, axis, index)]`` and ``[(obj, attr, value)]``."""
        raise NotImplementedError

    def configs(self, model, name, layer) -> list:
        """Configuration objects whose ``state_size`` must state the layer's size (none for plain modules)."""
        return []


class _SelectiveSSMKind(_SelectiveKind):
    label = "SelectiveSSM"

    def matches(self, module):
        return isinstance(module, SelectiveSSM)

    def state_shape(self, layer):
        return 1, layer.state_dim

    def scan(self, layer, u, attention_mask=None, keep_mask=None):
        x, z = layer._inner(u)
        delta, B, C = layer._selective(x)
        dd = torch.float64
        return _Scan(x.to(dd), delta.to(dd), -torch.exp(layer.A_log.to(dd)), B.to(dd)[:, :, None], C.to(dd)[:, :, None],
                     layer.D.to(dd), {"gate": F.silu(z).to(dd)})

    def output(self, layer, y, scan):
        return F.linear(y * scan.ctx["gate"], layer.out_proj.weight.to(y.dtype))

    def output_jvp(self, layer, y, scan, d):
        return torch.einsum("blcm,blc,oc->blom", d, scan.ctx["gate"], layer.out_proj.weight.to(d.dtype))

    def output_sensitivity(self, layer, y, scan):
        w2 = layer.out_proj.weight.to(y.dtype).pow(2).sum(0)
        return scan.ctx["gate"].pow(2) * w2

    def cut_spec(self, layer, keep):
        idx = keep[0]
        attrs = [(layer.B_proj, "out_features", idx.numel()), (layer.C_proj, "out_features", idx.numel())]
        if layer._stats is not None:
            dev = layer._stats["C"].device
            attrs.append((layer, "_stats", {**layer._stats, "delta_B": layer._stats["delta_B"][:, idx.to(dev)],
                                            "C": layer._stats["C"][idx.to(dev)]}))
        return [("A_log", 1, idx), ("B_proj.weight", 0, idx), ("C_proj.weight", 0, idx)], attrs


_SELECTIVE_SSM_KIND = _SelectiveSSMKind()


_KINDS: list[_SelectiveKind] = [_SELECTIVE_SSM_KIND]


def register_kind(kind: _SelectiveKind) -> _SelectiveKind:
    """Add a kind of selective layer to those :func:`_selective_layers` finds; returns it.

    Called by an integration when it is imported. A kind of a class already registered (the same module and
    name: a reloaded module) replaces the earlier one in its place. Kinds are tried in the order they were
    first registered; a layer is of the first kind that matches it.
    """
    key = (type(kind).__module__, type(kind).__qualname__)
    for i, known in enumerate(_KINDS):
        if (type(known).__module__, type(known).__qualname__) == key:
            _KINDS[i] = kind
            return kind
    _KINDS.append(kind)
    return kind


def _kinds() -> list[_SelectiveKind]:
    """The kinds of selective layer known: :class:`SelectiveSSM`'s and the registered ones.

    A Hugging Face kind matches only once ``transformers`` has imported its mixer's module.
    """
    return list(_KINDS)


def _kind_of(module) -> _SelectiveKind | None:
    for kind in _kinds():
        if kind.matches(module):
            return kind
    return None


def _selective_layers(model: nn.Module):
    """Every selective layer of ``model``: :class:`SelectiveSSM`, and Hugging Face ``MambaMixer``,
    ``FalconMambaMixer`` and ``Mamba2Mixer`` modules. Returns ``[(qualified name, module)]``."""
    kinds = _kinds()
    return [(name, m) for name, m in model.named_modules() if any(k.matches(m) for k in kinds)]


def _layer_and_kind(layer):
    kind = _kind_of(layer)
    if kind is None:
        raise ValueError(f"{type(layer).__name__} is not a selective layer (SelectiveSSM, or a Hugging Face "
                         "MambaMixer, FalconMambaMixer or Mamba2Mixer).")
    return kind

