"""Hugging Face transformers' Mamba, FalconMamba and Mamba2 mixers, as selective layers to compress.

:func:`adapters.torch.compress_selective_` (and :func:`adapters.torch.compress_`) find these mixers in
``MambaForCausalLM`` / ``MambaModel``, ``FalconMambaForCausalLM`` / ``FalconMambaModel`` and
``Mamba2ForCausalLM`` / ``Mamba2Model`` through the kinds this module registers with the state selection
(:func:`adapters.torch.cut.selective.kinds.register_kind`) when it is imported; :mod:`adapters.torch` imports
it. It does not import ``transformers``: a kind matches a mixer only once ``transformers`` has imported the
mixer's module (a model holding such mixers cannot exist before). Nothing here patches transformers: a cut
model is an ordinary transformers model whose ``config.state_size`` states its new size.

What each mixer computes (transformers' pure-torch path) and how a state is cut
-----------------------------------------------------------------------------
``MambaMixer`` (Gu & Dao 2023, arXiv 2312.00752): ``in_proj`` gives ``(x, z)``; a causal depthwise
convolution and the activation act on ``x`` (``d_inner`` channels); ``x_proj`` gives ``(dt, B_t, C_t)``
(rows ``[R | N | N]``); ``Delta_t = softplus(dt_proj(dt))``; per channel ``d`` and state ``n``
``h = exp(Delta A[d, n]) h + Delta B_t[n] x_d``, ``y_d = sum_n C_t[n] h[d, n] + D_d x_d``; output
``out_proj(y * silu(z))``. State ``n`` is cut by dropping column ``n`` of ``A_log`` and rows ``R + n`` and
``R + N + n`` of ``x_proj.weight``; the kept states compute exactly what they computed before.

``FalconMambaMixer`` (Zuo et al. 2024, arXiv 2410.05355) is the same with RMS norms (no weights) on
``dt``, ``B_t`` and ``C_t``. The norms of ``B_t`` and ``C_t`` run over the states, so after a cut they run
over the kept states: the kept states are rescaled by an input-dependent factor, the cut is not exact
surgery, and its measured change (``error`` in the report) includes that rescaling.

``Mamba2Mixer`` (Dao & Gu 2024, arXiv 2405.21060): ``num_heads`` heads of ``head_dim`` channels, a scalar
``A`` per head, ``n_groups`` groups of heads sharing ``B_t`` and ``C_t`` (``N`` states each). ``in_proj``
gives ``[z | x B C | dt]``; the depthwise convolution runs over the ``conv_dim = d_inner + 2 G N`` channels of
``x B C``, so ``B_t`` and ``C_t`` pass through the convolution too; the output is
``out_proj(RMSNormGated(y, z))`` with the norm taken per group. State ``(g, n)`` is cut by dropping its ``B``
and ``C`` channels from ``in_proj`` (rows and bias), from ``conv1d.weight`` and ``conv1d.bias``: again exact
surgery for the kept states. Each group keeps its own best states, the same number in every group.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from ...cut.selective.kinds import _Scan, _SelectiveKind, register_kind
from . import _compat

__all__ = ["HF_KINDS"]


def _class(module_name: str, class_name: str):
    module = sys.modules.get(module_name)
    return getattr(module, class_name, None) if module is not None else None


def _padding_mask(h, attention_mask):
    if attention_mask is None:
        return h
    return (h * attention_mask[:, :, None]).to(h.dtype)


def _configs(model, name, layer) -> list:
    """Distinct configuration objects with a ``state_size`` on the path from ``layer`` up to ``model``."""
    found = []
    candidates = [getattr(layer, "config", None)]
    parts = name.split(".") if name else []
    for i in range(len(parts) - 1, -1, -1):
        candidates.append(getattr(model.get_submodule(".".join(parts[:i])), "config", None))
    for cfg in candidates:
        if cfg is not None and hasattr(cfg, "state_size") and hasattr(cfg, "to_dict") and all(cfg is not f for f in found):
            found.append(cfg)
    return found  # innermost first, the model's own configuration last


class _MambaMixerKind(_SelectiveKind):
    label = "MambaMixer"
    module_name, class_name = "transformers.models.mamba.modeling_mamba", "MambaMixer"
    #: the attributes the scan and the cut read (checked when a mixer is matched: see ``_compat``)
    required = ("A_log", "D", "time_step_rank", "ssm_state_size", "in_proj", "conv1d", "act", "x_proj", "dt_proj",
                "out_proj")

    def matches(self, module):
        cls = _class(self.module_name, self.class_name)
        if cls is None or not isinstance(module, cls):
            return False
        _compat.require(module, self.required, self.label)
        return True

    def state_shape(self, layer):
        return 1, layer.A_log.shape[-1]

    def _bc(self, layer, B, C, keep_mask):
        return B, C

    def _dt(self, layer, ts):
        return ts

    def scan(self, layer, u, attention_mask=None, keep_mask=None):
        length, n, rank = u.shape[1], layer.A_log.shape[-1], layer.time_step_rank
        u = _padding_mask(u, attention_mask)
        xs, gate = layer.in_proj(u).transpose(1, 2).chunk(2, dim=1)
        weight = layer.conv1d.weight
        xs = F.conv1d(xs.to(weight.dtype), weight, layer.conv1d.bias, padding=weight.shape[-1] - 1,
                      groups=weight.shape[0])[..., :length]
        xs = _padding_mask(layer.act(xs).transpose(1, 2), attention_mask)  # (b, L, d_inner)
        ts, B, C = torch.split(layer.x_proj(xs), [rank, n, n], dim=-1)
        ts = self._dt(layer, ts)
        B, C = self._bc(layer, B, C, keep_mask)
        dd = torch.float64
        delta = F.softplus(ts.to(dd) @ layer.dt_proj.weight.to(dd).T + layer.dt_proj.bias.to(dd))
        return _Scan(xs.to(dd), delta, -torch.exp(layer.A_log.to(dd)), B.to(dd)[:, :, None], C.to(dd)[:, :, None],
                     layer.D.to(dd), {"gate": F.silu(gate.transpose(1, 2).to(dd))})

    def output(self, layer, y, scan):
        bias = layer.out_proj.bias
        return F.linear(y * scan.ctx["gate"], layer.out_proj.weight.to(y.dtype),
                        None if bias is None else bias.to(y.dtype))

    def output_jvp(self, layer, y, scan, d):
        return torch.einsum("blcm,blc,oc->blom", d, scan.ctx["gate"], layer.out_proj.weight.to(d.dtype))

    def output_sensitivity(self, layer, y, scan):
        return scan.ctx["gate"].pow(2) * layer.out_proj.weight.to(y.dtype).pow(2).sum(0)

    def cut_spec(self, layer, keep):
        idx = keep[0]
        n, rank, r = layer.A_log.shape[-1], layer.time_step_rank, keep.shape[1]
        rows = torch.cat([torch.arange(rank), rank + idx, rank + n + idx])
        attrs = [(layer, "ssm_state_size", r), (layer.x_proj, "out_features", rank + 2 * r)]
        return [("A_log", 1, idx), ("x_proj.weight", 0, rows)], attrs

    def configs(self, model, name, layer):
        return _configs(model, name, layer)


class _FalconMambaMixerKind(_MambaMixerKind):
    label = "FalconMambaMixer"
    module_name, class_name = "transformers.models.falcon_mamba.modeling_falcon_mamba", "FalconMambaMixer"
    mask_changes_scan = True

    def matches(self, module):
        if not super().matches(module):
            return False
        _compat.falcon_norm_variant(module)  # an unknown release of the norms is refused here
        return True

    def _dt(self, layer, ts):
        return _compat.falcon_dt_norm(layer, ts)

    def _bc(self, layer, B, C, keep_mask):
        eps_b, eps_c = _compat.falcon_state_norm_eps(layer)
        kept = slice(None) if keep_mask is None else keep_mask[0].to(B.device)

        def norm(v, eps):  # the mixer's RMS norm, over the kept states only (what the cut mixer computes)
            vf = v.float()
            return (vf * torch.rsqrt(vf[..., kept].pow(2).mean(-1, keepdim=True) + eps)).type_as(v)

        return norm(B, eps_b), norm(C, eps_c)

    def cut_spec(self, layer, keep):
        specs, attrs = super().cut_spec(layer, keep)
        r = keep.shape[1]
        for owner, name, buf in _compat.falcon_state_buffers(layer):
            attrs.append((owner, name, buf.new_ones(r)))
        return specs, attrs


class _Mamba2MixerKind(_SelectiveKind):
    label = "Mamba2Mixer"
    module_name, class_name = "transformers.models.mamba2.modeling_mamba2", "Mamba2Mixer"
    required = ("A_log", "D", "dt_bias", "time_step_limit", "ssm_state_size", "n_groups", "num_heads", "head_dim",
                "intermediate_size", "conv_dim", "in_proj", "conv1d", "act", "norm", "out_proj")

    def matches(self, module):
        cls = _class(self.module_name, self.class_name)
        if cls is None or not isinstance(module, cls):
            return False
        _compat.require(module, self.required, self.label)
        _compat.rms_eps(module.norm)
        return True

    def state_shape(self, layer):
        return layer.n_groups, layer.ssm_state_size

    def scan(self, layer, u, attention_mask=None, keep_mask=None):
        b, length = u.shape[:2]
        di, heads, p, g, n = (layer.intermediate_size, layer.num_heads, layer.head_dim, layer.n_groups,
                              layer.ssm_state_size)
        u = _padding_mask(u, attention_mask)
        gate, xbc, dt = layer.in_proj(u).split([di, layer.conv_dim, heads], dim=-1)
        weight = layer.conv1d.weight
        xbc = F.conv1d(xbc.transpose(1, 2).to(weight.dtype), weight, layer.conv1d.bias,
                       padding=weight.shape[-1] - 1, groups=weight.shape[0])[..., :length]
        xbc = _padding_mask(layer.act(xbc).transpose(1, 2), attention_mask)
        x, B, C = torch.split(xbc, [di, g * n, g * n], dim=-1)
        dd = torch.float64
        dt = F.softplus(dt.to(dd) + layer.dt_bias.to(dd))
        lo, hi = layer.time_step_limit
        dt = torch.clamp(dt, min=lo, max=hi)
        A = -torch.exp(layer.A_log.to(dd))
        return _Scan(x.to(dd), dt.repeat_interleave(p, dim=-1), A.repeat_interleave(p)[:, None].expand(-1, n),
                     B.to(dd).view(b, length, g, n), C.to(dd).view(b, length, g, n), layer.D.to(dd).repeat_interleave(p),
                     {"gate": F.silu(gate.to(dd)), "groups": _compat.mamba2_norm_groups(layer)})

    def _normed(self, layer, y, scan):
        g = scan.ctx["groups"]  # the gated norm's groups (one in older releases: see _compat)
        v = y * scan.ctx["gate"]
        vg = v.view(*v.shape[:-1], g, -1)
        r = torch.sqrt(vg.pow(2).mean(-1, keepdim=True) + _compat.rms_eps(layer.norm))
        return vg, r

    def output(self, layer, y, scan):
        vg, r = self._normed(layer, y, scan)
        normed = (vg / r).reshape(y.shape) * layer.norm.weight.to(y.dtype)
        bias = layer.out_proj.bias
        return F.linear(normed, layer.out_proj.weight.to(y.dtype), None if bias is None else bias.to(y.dtype))

    def output_jvp(self, layer, y, scan, d):
        vg, r = self._normed(layer, y, scan)                     # (b, L, G, K), (b, L, G, 1)
        k = vg.shape[-1]
        dv = (d * scan.ctx["gate"][..., None]).view(*vg.shape, d.shape[-1])  # (b, L, G, K, M)
        proj = (vg[..., None] * dv).sum(-2, keepdim=True)        # (b, L, G, 1, M)
        jd = dv / r[..., None] - vg[..., None] * proj / (k * r[..., None] ** 3)
        jd = jd.reshape(d.shape) * layer.norm.weight.to(d.dtype)[:, None]
        return torch.einsum("blcm,oc->blom", jd, layer.out_proj.weight.to(d.dtype))

    def output_sensitivity(self, layer, y, scan):
        vg, r = self._normed(layer, y, scan)
        scale = (scan.ctx["gate"].view(vg.shape) / r).reshape(y.shape)
        return (scale * layer.norm.weight.to(y.dtype)).pow(2) * layer.out_proj.weight.to(y.dtype).pow(2).sum(0)

    def cut_spec(self, layer, keep):
        di, heads, g, n = layer.intermediate_size, layer.num_heads, layer.n_groups, layer.ssm_state_size
        r = keep.shape[1]
        states = (torch.arange(g)[:, None] * n + keep).reshape(-1)
        xbc = torch.cat([torch.arange(di), di + states, di + g * n + states])
        rows = torch.cat([torch.arange(di), di + xbc, di + layer.conv_dim + torch.arange(heads)])
        specs = [("in_proj.weight", 0, rows), ("conv1d.weight", 0, xbc)]
        if layer.in_proj.bias is not None:
            specs.append(("in_proj.bias", 0, rows))
        if layer.conv1d.bias is not None:
            specs.append(("conv1d.bias", 0, xbc))
        conv_dim = di + 2 * g * r
        attrs = [(layer, "ssm_state_size", r), (layer, "conv_dim", conv_dim), (layer.conv1d, "in_channels", conv_dim),
                 (layer.conv1d, "out_channels", conv_dim), (layer.conv1d, "groups", conv_dim),
                 (layer.in_proj, "out_features", rows.numel())]
        return specs, attrs

    def configs(self, model, name, layer):
        return _configs(model, name, layer)


HF_KINDS = [_MambaMixerKind(), _FalconMambaMixerKind(), _Mamba2MixerKind()]
for _kind in HF_KINDS:
    register_kind(_kind)
