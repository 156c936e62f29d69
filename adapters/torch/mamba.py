"""A selective (Mamba-style) state-space block, and the compression of its shared state size ``d_state``.

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (arXiv 2312.00752).

The block
---------
:class:`SelectiveSSM` is a pure-torch Mamba block (no CUDA kernels): ``in_proj`` to ``(x, z)``, a causal
depthwise convolution and SiLU on ``x``, then per channel ``d`` (``d_inner`` channels) and state ``n``
(``d_state`` states, shared by all channels)

.. math::

    \\Delta_t = \\operatorname{softplus}(W_\\Delta x_t + b_\\Delta),\\quad B_t = W_B x_t,\\quad C_t = W_C x_t,

    h_{t,d,n} = e^{\\Delta_{t,d} A_{d,n}}\\, h_{t-1,d,n} + \\Delta_{t,d} B_{t,n}\\, x_{t,d},\\qquad
    y_{t,d} = \\textstyle\\sum_n C_{t,n} h_{t,d,n} + D_d x_{t,d},

with ``A = -exp(A_log)`` real and negative (shape ``(d_inner, d_state)``), zero-order hold for ``A``
(``A_bar = exp(Delta A)``) and Mamba's simplified ``B_bar = Delta B``. The output is
``out_proj(y * silu(z))``.

Compressing the state size
--------------------------
:func:`compress_selective_` cuts the state size of every selective layer of a model: this block, and Hugging
Face transformers' ``MambaMixer``, ``FalconMambaMixer`` and ``Mamba2Mixer`` (:mod:`adapters.torch.hf.mamba`).

*Why a state selection and not balanced truncation.* ``Delta``, ``B`` and ``C`` depend on the input, so the
block is not an LTI system, and balanced truncation would mix states: a reduced state would be a combination
``W^T h`` of all states, different in every channel. The block cannot represent that: ``B_t`` and ``C_t`` come
from projections shared by all channels and ``Delta_t`` multiplies ``A`` elementwise, so a mixed basis would
have to be re-mixed at every step with an input-dependent matrix. What it *can* represent is keeping a subset
of its states, the same subset in every channel: drop rows of ``W_B`` and ``W_C`` and columns of ``A_log``.
This is exact surgery (``A`` is diagonal, so the kept states compute exactly what they computed before); the
only approximation is which states to drop.

*Ranking* (:func:`selective_state_scores`). Over calibration inputs the exact selective scan is run and each
state's own term in the output, ``c_{t,d,n} = C_{t,n} h_{t,d,n}``, is pushed through the layer's output map
``J`` (here ``y -> out_proj(y * silu(z))``, linear; for Mamba2 the gated RMS norm, linearized at the full
output). The score of state ``n`` is the energy ``sum_{b,t} ||J c_n||^2`` it puts into the layer's output
(``"output_energy"``, the default). For a linear output map this is exactly the squared output change of
removing that state alone on the calibration data, so it ranks states by the quantity a cut changes.
Alternatives, kept for comparison: ``"gramian"``, ``sqrt(P_nn Q_nn)`` with the empirical Gramian
diagonals of the time-varying system (state second moment ``P_nn = E sum_d h^2`` and output sensitivity
``Q_nn = E C_n^2 ||J_d||^2``; Lall, Marsden & Glavaski 2002), and ``"averaged_hsv"``, the per-state Hankel
singular values ``|B_avg C_avg| / (1 - lam^2)`` of the time-averaged LTI system (:meth:`SelectiveSSM.to_system`),
summed over channels. ``benchmarks/bench_selective_ranking.py`` measures each against the leave-one-state-out
output change on held-out data (:func:`leave_one_state_out`).

*How many states* (``tol``). Each layer keeps the fewest top-ranked states whose removal changes its state
path's output on the calibration inputs by at most ``tol``: ``||out - out_cut|| / ||out - out_0|| <= tol``,
with ``out_0`` the output without any state (the skip ``D x`` only). Layers sharing a Hugging Face
configuration keep one common size (:func:`compress_selective_`).

*What the report's error is.* A measurement, not a bound: ``error = ||out - out_cut||_F / ||out||_F`` of each
layer's output, computed exactly on held-out inputs when they are given (else on the calibration inputs).
No bound on the selective block is claimed: its ``Delta``, ``B``, ``C`` vary in time and are correlated.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

from ._params import resize_from_checkpoint_
from ._report_notes import warn_if_gated
from .compress import _REQUIRED, CompressionReport

__all__ = [
    "CutMeasurement",
    "SelectiveCompressionReport",
    "SelectiveLayerReport",
    "SelectiveSSM",
    "compress_selective_",
    "leave_one_state_out",
    "measure_selective_cut",
    "selective_scan",
    "selective_scan_reference",
    "selective_state_scores",
]

SCAN_MODES = ("auto", "chunked", "sequential")


# ----------------------------------------------------------------------------------------------------- scans
def selective_scan_reference(x, delta, A, B, C, D=None):
    """The selective scan as a plain loop over time: the reference the fast scan is tested against.

    Parameters
    ----------
    x, delta : Tensor, shape (batch, L, d)
        Input and (positive) step sizes per channel.
    A : Tensor, shape (d, N)
        Real diagonal state matrices (negative for a stable block).
    B, C : Tensor, shape (batch, L, N)
        Input-dependent input and output vectors, shared by the channels.
    D : Tensor, shape (d,), optional
        Skip connection.

    Returns
    -------
    Tensor, shape (batch, L, d)
        ``y_t = sum_n C_{t,n} h_{t,n} + D x_t`` with ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t``,
        ``h_0 = 0`` before the first step. Differentiable (autograd through the loop).
    """
    batch, length, d = x.shape
    h = x.new_zeros(batch, d, A.shape[-1])
    ys = []
    for t in range(length):
        dt = delta[:, t, :, None]
        h = torch.exp(dt * A) * h + dt * B[:, t, None, :] * x[:, t, :, None]
        ys.append((h * C[:, t, None, :]).sum(-1))
    y = torch.stack(ys, dim=1)
    return y if D is None else y + D * x


def _chunk_size(length: int) -> int:
    # T ~ sqrt(L) balances the T in-chunk steps against the L / T cross-chunk steps.
    return max(1, min(length, int(math.sqrt(length) + 0.5)))


@torch.no_grad()
def _states(log_a, v, chunk):
    """``h_t = exp(log_a_t) h_{t-1} + v_t`` along dim 1, ``h_0 = 0``; all shapes (batch, L, d, N).

    Chunked: time is cut into chunks of ``chunk`` steps; the recurrence runs inside all chunks at once
    (``chunk`` vectorized steps), the chunk-end states are carried across chunks (``L / chunk`` small
    steps), and the carry enters each chunk through ``exp(cumsum(log_a))``, whose exponent is never
    positive (no overflow, unlike the ``exp(S_t) cumsum(exp(-S_s) v_s)`` trick). ``O(L)`` work.
    """
    batch, length = v.shape[:2]
    rest = v.shape[2:]
    pad = (-length) % chunk
    if pad:
        log_a = torch.cat([log_a, log_a.new_zeros(batch, pad, *rest)], dim=1)
        v = torch.cat([v, v.new_zeros(batch, pad, *rest)], dim=1)
    n_chunks = v.shape[1] // chunk
    log_a = log_a.reshape(batch, n_chunks, chunk, *rest)
    v = v.reshape(batch, n_chunks, chunk, *rest)
    a = torch.exp(log_a)
    local = torch.empty_like(v)
    h = torch.zeros_like(v[:, :, 0])
    for t in range(chunk):
        h = a[:, :, t] * h + v[:, :, t]
        local[:, :, t] = h
    decay = torch.exp(torch.cumsum(log_a, dim=2))  # prod of a within the chunk up to t
    carry = torch.zeros_like(h[:, 0])
    carries = torch.empty_like(h)
    for c in range(n_chunks):
        carries[:, c] = carry
        carry = decay[:, c, -1] * carry + local[:, c, -1]
    out = local + decay * carries[:, :, None]
    return out.reshape(batch, n_chunks * chunk, *rest)[:, :length]


class _SelectiveRecurrence(torch.autograd.Function):
    """``y_t = sum_n C_{t,n} h_t`` with ``h_t = exp(log_a_t) h_{t-1} + v_t``; backward by the adjoint scan.

    The adjoint of the recurrence is the same recurrence backwards in time: ``g_t = C_t dy_t + a_{t+1}
    g_{t+1}``; then ``dv_t = g_t``, ``dlog_a_t = g_t a_t h_{t-1} = g_t (h_t - v_t)`` and
    ``dC_t = sum_d dy_{t,d} h_{t,d}``. Only ``h`` (and the inputs) are stored.
    """

    @staticmethod
    def forward(ctx, log_a, v, C, chunk):
        h = _states(log_a, v, chunk)
        ctx.save_for_backward(log_a, v, C, h)
        ctx.chunk = chunk
        return torch.einsum("bldn,bln->bld", h, C)

    @staticmethod
    def backward(ctx, gy):
        log_a, v, C, h = ctx.saved_tensors
        direct = gy[..., None] * C[:, :, None, :]
        # Reverse time: g'_k = direct'_k + a'_{k-1} g'_{k-1}, with a' the flipped multipliers shifted by one.
        flipped = log_a.flip(1)
        shifted = torch.cat([torch.zeros_like(flipped[:, :1]), flipped[:, :-1]], dim=1)
        g = _states(shifted, direct.flip(1), ctx.chunk).flip(1)
        grad_log_a = g * (h - v) if ctx.needs_input_grad[0] else None
        grad_c = torch.einsum("bld,bldn->bln", gy, h) if ctx.needs_input_grad[2] else None
        return grad_log_a, g, grad_c, None


def selective_scan(x, delta, A, B, C, D=None, *, mode: str = "auto", chunk_size: int | None = None):
    """The selective scan of :func:`selective_scan_reference`, computed fast.

    Parameters
    ----------
    x, delta, A, B, C, D
        As in :func:`selective_scan_reference`.
    mode : {"auto", "chunked", "sequential"}
        ``"chunked"`` (what ``"auto"`` picks): the chunked recurrence of ``_states`` inside an autograd
        function whose backward pass is the adjoint recurrence (``O(L)`` work, about ``2 sqrt(L)``
        vectorized steps each way, stores only the states). ``"sequential"``: the reference loop.
    chunk_size : int, optional
        Chunk length (default ``round(sqrt(L))``).

    Returns
    -------
    Tensor, shape (batch, L, d)
        Equal to the reference to round-off, on the inputs' device.
    """
    if mode not in SCAN_MODES:
        raise ValueError(f"mode must be one of {SCAN_MODES}, got {mode!r}")
    if mode == "sequential":
        return selective_scan_reference(x, delta, A, B, C, D)
    chunk = chunk_size or _chunk_size(x.shape[1])
    log_a = delta[..., None] * A  # (batch, L, d, N), <= 0 for A < 0
    v = (delta * x)[..., None] * B[:, :, None, :]
    y = _SelectiveRecurrence.apply(log_a, v, C, int(chunk))
    return y if D is None else y + D * x


# ----------------------------------------------------------------------------------------------------- block
class SelectiveSSM(nn.Module):
    """A Mamba block with input-dependent ``Delta, B, C`` and a shared, compressible state size.

    Parameters
    ----------
    d_model : int
        Input and output width.
    d_state : int
        States per channel ``N`` at construction (:attr:`state_dim` tracks the current number).
    expand : int
        ``d_inner = expand * d_model`` channels.
    d_conv : int
        Width of the causal depthwise convolution (1: none in time).
    dt_rank : int or "auto"
        Rank of the ``Delta`` projection (``ceil(d_model / 16)`` for "auto", as in Mamba).
    dt_min, dt_max : float
        Initial step sizes are log-uniform in ``[dt_min, dt_max]`` (through the ``dt_proj`` bias).
    mode, chunk_size
        Scan algorithm (see :func:`selective_scan`).
    device, dtype
        Factory arguments.

    Attributes
    ----------
    A_log : Parameter, shape (d_inner, N)
        ``A = -exp(A_log)``, initialized to ``A[d, n] = -(n + 1)`` (S4D-real).
    B_proj, C_proj : Linear(d_inner, N), no bias
        ``B_t = B_proj(x_t)``, ``C_t = C_proj(x_t)``; their weight rows are the state axis.
    dt_down, dt_proj : Linear
        ``Delta_t = softplus(dt_proj(dt_down(x_t)))``.
    D : Parameter, shape (d_inner,)
        Skip connection, ``y_t += D * x_t`` per channel.

    Examples
    --------
    >>> import torch
    >>> block = SelectiveSSM(d_model=8, d_state=16)
    >>> block(torch.randn(2, 20, 8)).shape
    torch.Size([2, 20, 8])
    >>> block.select_states_([0, 3, 5]).state_dim
    3
    """

    def __init__(self, d_model: int, d_state: int = 16, *, expand: int = 2, d_conv: int = 4, dt_rank="auto",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, mode: str = "auto", chunk_size: int | None = None,
                 device=None, dtype=None):
        super().__init__()
        if int(d_model) < 1 or int(d_state) < 1 or int(expand) < 1 or int(d_conv) < 1:
            raise ValueError(f"d_model, d_state, expand and d_conv must be positive integers, got {d_model}, "
                             f"{d_state}, {expand}, {d_conv}")
        if mode not in SCAN_MODES:
            raise ValueError(f"mode must be one of {SCAN_MODES}, got {mode!r}")
        if not 0.0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_inner, self.d_conv = int(d_model), int(expand) * int(d_model), int(d_conv)
        self.dt_rank = math.ceil(self.d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.mode, self.chunk_size = mode, chunk_size
        n, di = int(d_state), self.d_inner
        self.in_proj = nn.Linear(self.d_model, 2 * di, bias=False, **factory)
        self.conv = nn.Conv1d(di, di, self.d_conv, groups=di, padding=self.d_conv - 1, **factory)
        self.dt_down = nn.Linear(di, self.dt_rank, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, di, bias=True, **factory)
        self.B_proj = nn.Linear(di, n, bias=False, **factory)
        self.C_proj = nn.Linear(di, n, bias=False, **factory)
        self.out_proj = nn.Linear(di, self.d_model, bias=False, **factory)
        with torch.no_grad():
            dt = torch.exp(torch.rand(di, **factory) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        a = torch.arange(1, n + 1, **factory).repeat(di, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(di, **factory))
        self._collect = False
        self._stats: dict | None = None
        self._state_mask: torch.Tensor | None = None

    # --------------------------------------------------------------------------------------------- forward
    @property
    def state_dim(self) -> int:
        """Current number of states per channel ``N``."""
        return self.A_log.shape[-1]

    def _inner(self, u):
        """Post-convolution activations ``x`` (batch, L, d_inner) and the gate ``z``."""
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = self.conv(x.transpose(1, 2))[..., : u.shape[1]].transpose(1, 2)
        return F.silu(x), z

    def _selective(self, x):
        """``delta`` (batch, L, d_inner), ``B``, ``C`` (batch, L, N) for post-convolution activations ``x``."""
        delta = F.softplus(self.dt_proj(self.dt_down(x)))
        return delta, self.B_proj(x), self.C_proj(x)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``out_proj(ssm(x) * silu(z))`` for ``u`` of shape (batch, L, d_model)."""
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"SelectiveSSM expects input of shape (batch, L, {self.d_model}), got {tuple(u.shape)}")
        x, z = self._inner(u)
        delta, B, C = self._selective(x)
        if self._collect:
            self._accumulate(delta, B, C)
        if self._state_mask is not None:  # measurement only: zero output weight = state removed (A is diagonal)
            C = C * self._state_mask
        A = -torch.exp(self.A_log)
        y = selective_scan(x, delta, A, B, C, self.D, mode=self.mode, chunk_size=self.chunk_size)
        return self.out_proj(y * F.silu(z))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_inner={self.d_inner}, state_dim={self.state_dim}, mode={self.mode!r}"

    # ------------------------------------------------------------------------------------------ calibration
    @torch.no_grad()
    def _accumulate(self, delta, B, C):
        d64 = delta.detach().to(torch.float64)
        stats = self._stats or {"count": 0, "delta": 0.0, "delta_B": 0.0, "C": 0.0}
        stats["count"] += delta.shape[0] * delta.shape[1]
        stats["delta"] = stats["delta"] + d64.sum((0, 1))
        stats["delta_B"] = stats["delta_B"] + torch.einsum("bld,bln->dn", d64, B.detach().to(torch.float64))
        stats["C"] = stats["C"] + C.detach().to(torch.float64).sum((0, 1))
        self._stats = stats

    @torch.no_grad()
    def calibrate_(self, inputs) -> SelectiveSSM:
        """Average ``Delta``, ``Delta * B`` and ``C`` over ``inputs`` (this block's own inputs).

        Parameters
        ----------
        inputs : Tensor (batch, L, d_model), or an iterable of such tensors
            The statistics replace any earlier ones: ``mean_delta[d] = mean_{b,t} Delta[b,t,d]``,
            ``B_avg[d,n] = mean_{b,t} Delta[b,t,d] B[b,t,n]`` and ``C_avg[n] = mean_{b,t} C[b,t,n]``.
        """
        self._stats = None
        self._collect = True
        try:
            for batch in ([inputs] if isinstance(inputs, torch.Tensor) else inputs):
                self(batch)
        finally:
            self._collect = False
        return self

    def averaged_system_parts(self):
        """``lam`` (d_inner, N), ``B_avg`` (d_inner, N), ``C_avg`` (N,) in float64 from the calibration."""
        if self._stats is None or self._stats["count"] == 0:
            raise ValueError("SelectiveSSM has no calibration statistics: its Delta, B and C depend on the input. "
                             "Call layer.to_system(calibration=inputs) or layer.calibrate_(inputs) first.")
        count = self._stats["count"]
        mean_delta = self._stats["delta"] / count
        A = -torch.exp(self.A_log.detach().to(torch.float64))
        return torch.exp(mean_delta[:, None] * A), self._stats["delta_B"] / count, self._stats["C"] / count

    def to_system(self, calibration=None):
        """Per-channel averaged LTI systems as one batched :class:`lti_reduce.DiagonalSystem`.

        Channel ``d`` is the SISO system ``(lam[d], B_avg[d], C_avg, D[d])`` with
        ``lam[d, n] = exp(mean_delta[d] A[d, n])`` (:meth:`calibrate_`): the block with its input-dependent
        quantities replaced by their time averages. It describes the block only on average; the ranking of
        :func:`compress_selective_` does not use it by default (module docstring).

        Parameters
        ----------
        calibration : Tensor (batch, L, d_model) or iterable of them, optional
            This block's inputs to average over (:meth:`calibrate_`); ``None`` uses the last calibration.

        Returns
        -------
        lti_reduce.DiagonalSystem
            Batch ``(d_inner,)``: ``lam`` (d_inner, N) real in ``(0, 1)``, ``B`` (d_inner, N, 1),
            ``C`` (d_inner, 1, N) (the same ``C_avg`` in every channel), ``D`` (d_inner, 1, 1),
            ``real_output=False``; float64, detached, on the layer's device.

        Raises
        ------
        ValueError
            If there is no calibration to average over.
        """
        from lti_reduce import DiagonalSystem

        if calibration is not None:
            self.calibrate_(calibration)
        lam, B, C = self.averaged_system_parts()
        di = lam.shape[0]
        D = self.D.detach().to(torch.float64).reshape(di, 1, 1)
        return DiagonalSystem(lam, B[..., None], C.expand(di, -1)[:, None, :].contiguous(), D)

    # ---------------------------------------------------------------------------------------------- surgery
    _STATE_AXES = {"A_log": -1, "B_proj.weight": 0, "C_proj.weight": 0}

    def _state_parameters(self):
        return {"A_log": self.A_log, "B_proj.weight": self.B_proj.weight, "C_proj.weight": self.C_proj.weight}

    def _check_keep(self, keep) -> torch.Tensor:
        idx = torch.as_tensor(keep, dtype=torch.long).reshape(-1).cpu()
        n = self.state_dim
        if idx.numel() < 1 or bool(((idx < 0) | (idx >= n)).any()) or idx.unique().numel() != idx.numel():
            raise ValueError(f"keep must be distinct state indices in [0, {n}) with at least one entry, got "
                             f"{idx.tolist()}")
        return idx.sort().values

    @torch.no_grad()
    def select_states_(self, keep) -> SelectiveSSM:
        """Keep only the states ``keep`` (the same ones in every channel), in place.

        This is the block's counterpart of the protocol's ``load_system_``: the block cannot load a balanced
        (state-mixing) system, see the module docstring, so it is deliberately *not* named ``load_system_``
        and balanced truncation leaves it alone; :func:`compress_selective_` calls this.

        Parameters
        ----------
        keep : sequence of int
            Distinct indices in ``[0, state_dim)``; kept in increasing order.

        Notes
        -----
        ``A_log``, ``B_proj.weight`` and ``C_proj.weight`` keep their ``nn.Parameter`` objects; their data is
        replaced by the kept slices, so an optimizer or a user reference holding them stays valid (a
        ``DistributedDataParallel`` wrapper must be rebuilt, as :func:`adapters.torch.compress_ddp_` does). Per-parameter optimizer state of
        the old shape is not touched here (:func:`compress_selective_` slices it). Calibration statistics are
        sliced along.
        """
        idx = self._check_keep(keep)
        for name, p in self._state_parameters().items():
            _resize_parameter_(self, name, p.index_select(self._STATE_AXES[name] % p.dim(), idx.to(p.device)))
        self._sync_state_attributes()
        if self._stats is not None:
            dev = self._stats["C"].device  # a new dict: a snapshot of the old one stays valid
            self._stats = {**self._stats, "delta_B": self._stats["delta_B"][:, idx.to(dev)],
                           "C": self._stats["C"][idx.to(dev)]}
        return self

    def _sync_state_attributes(self):
        self.B_proj.out_features = self.B_proj.weight.shape[0]
        self.C_proj.out_features = self.C_proj.weight.shape[0]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Resize the state axis to a compressed checkpoint's before the usual copy, keeping the parameters."""
        key = prefix + "A_log"
        if key in state_dict and state_dict[key].dim() == 2 and (n := int(state_dict[key].shape[-1])) != self.state_dim:
            if all(prefix + k in state_dict and state_dict[prefix + k].shape[0] == n for k in ("B_proj.weight", "C_proj.weight")):
                resize_from_checkpoint_(self, state_dict, prefix, list(self._state_parameters()))
                self._sync_state_attributes()
                self._stats = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


# ------------------------------------------------------------------------------------ selective layer kinds
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


def _kinds() -> list[_SelectiveKind]:
    """The kinds of selective layer known here; Hugging Face mixers only once transformers is imported."""
    kinds = [_SELECTIVE_SSM_KIND]
    if "transformers" in sys.modules:
        from .hf.mamba import HF_KINDS

        kinds.extend(HF_KINDS)
    return kinds


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


# ------------------------------------------------------------------------------------------------ analysis
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
    """One pass over calibration inputs: the three state scores and the output energy (module docstring)."""
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


def _layer_and_kind(layer):
    kind = _kind_of(layer)
    if kind is None:
        raise ValueError(f"{type(layer).__name__} is not a selective layer (SelectiveSSM, or a Hugging Face "
                         "MambaMixer, FalconMambaMixer or Mamba2Mixer).")
    return kind


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


def selective_state_scores(layer: nn.Module, inputs, *, ranking: str = "output_energy") -> torch.Tensor:
    """Importance of every state of a selective layer, from its own inputs (module docstring, "Ranking").

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


RANKINGS = ("output_energy", "gramian", "averaged_hsv")


# -------------------------------------------------------------------------------------------- compression
@dataclass
class SelectiveLayerReport:
    """What :func:`compress_selective_` did to one selective layer.

    Attributes
    ----------
    name : str
        Qualified module name.
    kind : str
        ``"SelectiveSSM"``, ``"MambaMixer"``, ``"FalconMambaMixer"`` or ``"Mamba2Mixer"``.
    before, after : int
        States per channel (``d_state`` / ``config.state_size``) before and after.
    kept : list
        Indices (old numbering) of the kept states; for a ``Mamba2Mixer`` with several groups one list per group.
    scores : numpy.ndarray, shape (before,) or (G, before)
        The ranking's score of every state (:func:`selective_state_scores`).
    ranking : str
        The ranking that scored the states (``"output_energy"``, ``"gramian"`` or ``"averaged_hsv"``).
    energy_kept : float
        Share of the summed scores carried by the kept states.
    calibration_change : float
        ``||out - out_cut|| / ||out - out_0||`` (relative to the state path, see ``tol``) on the calibration
        inputs, as the ``tol`` rule saw it (exact for Mamba's linear output map, first order in the dropped
        terms for Mamba2's norm); 0 if not cut.
    error : float
        The measured relative output change ``||out - out_cut||_F / ||out||_F`` of the layer, computed exactly
        on held-out inputs when ``held_out_inputs`` was given, else on the calibration inputs (``error_data``
        says which). A measurement, not a bound. 0 if not cut.
    error_data : str
        ``"held_out"``, ``"calibration"`` or ``""`` (not cut).
    method : str
        ``"state_selection"``.
    compressed : bool
        Whether the layer was cut.
    note : str
        Why a layer was not cut (e.g. the ``min_shrink`` gate).
    measurement : CutMeasurement or None
        Details of ``error``.
    """

    name: str
    kind: str
    before: int
    after: int
    kept: list
    scores: np.ndarray = field(repr=False)
    ranking: str
    energy_kept: float
    calibration_change: float
    error: float
    error_data: str
    compressed: bool
    note: str = ""
    method: str = "state_selection"
    measurement: CutMeasurement | None = None


@dataclass
class SelectiveCompressionReport(CompressionReport):
    """Per-layer results of :func:`compress_selective_`; ``print(report)`` shows a table.

    The container behaviour (iteration, ``report[name]``, ``compressed``,
    ``state_before``/``state_after``) is that of :class:`CompressionReport`.
    """

    layers: list[SelectiveLayerReport]

    def __str__(self) -> str:
        """The table of :class:`CompressionReport` (one table for both entry points), with its legend."""
        from .compress import _selective_entry

        return str(CompressionReport([_selective_entry(x) for x in self.layers]))


class _Undo:
    """Everything a cut changes (parameters, attributes, configurations, optimizer state), to undo it."""

    _MISSING = object()

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.attrs, self.states, self.swapped, self.replaced = [], {}, [], []
        self.groups = [list(g["params"]) for g in optimizer.param_groups] if optimizer is not None else None

    def attr(self, obj, name, value):
        self.attrs.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def restore(self):
        for obj, name, old in reversed(self.attrs):
            setattr(obj, name, old)
        for p, holder in reversed(self.swapped):
            torch.utils.swap_tensors(p, holder)
        for owner, leaf, p in reversed(self.replaced):
            if self.optimizer is not None:
                self.optimizer.state.pop(owner._parameters[leaf], None)
            owner._parameters[leaf] = p
        if self.groups is not None:
            for group, params in zip(self.optimizer.param_groups, self.groups):
                group["params"] = params
        for p, state in self.states.values():
            if state is self._MISSING:
                self.optimizer.state.pop(p, None)
            else:
                self.optimizer.state[p] = state


def _sliced_state(state, old_shape, axis, idx):
    """A per-parameter optimizer state with the kept entries, or ``None`` where it cannot be sliced.

    A selection keeps the basis, so every moment of the parameter's shape keeps the rows/columns of the kept
    states; scalars (step counts) are kept. A state tensor of another non-scalar shape (a factored moment)
    cannot be sliced consistently: the state is then dropped and re-initialized at the next step.
    """
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            if tuple(value.shape) != tuple(old_shape):
                return None
            out[key] = value.index_select(axis, idx.to(value.device)).clone()
        else:
            out[key] = value.clone() if isinstance(value, torch.Tensor) else value
    return out


def _resize_parameter_(module, name, value, undo=None) -> nn.Parameter:
    """Give ``module.<name>`` the data ``value`` of another shape; returns the parameter now in the module.

    Normally the ``nn.Parameter`` object is kept: ``torch.utils.swap_tensors`` moves the new data into it
    together with fresh autograd metadata, so optimizers and user references stay valid. (Assigning
    ``param.data`` alone would keep the parameter's cached gradient accumulator, which a still-referenced
    graph of an earlier step keeps alive; the next backward would then fail with "invalid gradient ...
    expected shape compatible with <old shape>".) Where torch refuses the swap because other owners hold
    the tensor (a ``DistributedDataParallel`` wrapper's reducer, a live graph that saved it), the module
    gets a new ``nn.Parameter`` instead, which those owners cannot keep stale; the caller rebinds the
    optimizer to it (``DistributedDataParallel`` must be rebuilt, as :func:`adapters.torch.compress_ddp_`
    does).
    """
    p = module.get_parameter(name)
    new = nn.Parameter(value.detach().to(device=p.device, dtype=p.dtype).clone().contiguous(),
                       requires_grad=p.requires_grad)
    new.__dict__.update(p.__dict__)
    try:
        torch.utils.swap_tensors(p, new)  # ``new`` now holds the old data, gradient and autograd metadata
    except RuntimeError:
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if undo is not None:
            undo.replaced.append((owner, leaf, p))
        owner._parameters[leaf] = new
        return new
    if undo is not None:
        undo.swapped.append((p, new))
    return p


def _apply_cut(kind, layer, keep, configs, optimizer, optimizer_state, undo):
    specs, attrs = kind.cut_spec(layer, keep)
    for pname, axis, idx in specs:
        p = layer.get_parameter(pname)
        if optimizer is not None and id(p) not in undo.states:
            undo.states[id(p)] = (p, optimizer.state.get(p, undo._MISSING))
        old_shape = p.shape
        q = _resize_parameter_(layer, pname, p.index_select(axis, idx.to(p.device)), undo)
        if optimizer is not None:
            state = optimizer.state.get(p)
            optimizer.state.pop(p, None)
            if q is not p:  # a new object (see _resize_parameter_): same group, same position
                for group in optimizer.param_groups:
                    group["params"] = [q if x is p else x for x in group["params"]]
            if state:
                new = _sliced_state(state, old_shape, axis, idx) if optimizer_state == "slice" else None
                if new is not None:
                    optimizer.state[q] = new
    for obj, name, value in attrs:
        undo.attr(obj, name, value)
    for config in configs:
        undo.attr(config, "state_size", keep.shape[1])


def compress_selective_(model: nn.Module, *, calibration_inputs, tol: float | None = None, rank: int | None = None,
                        optimizer=_REQUIRED, min_shrink: float = 0.05,
                        held_out_inputs=None, optimizer_state: str = "slice",
                        ranking: str = "output_energy") -> SelectiveCompressionReport:
    """Cut the state size of every selective layer of ``model`` by state selection, in place, atomically.

    Finds :class:`SelectiveSSM` blocks and Hugging Face ``MambaMixer``, ``FalconMambaMixer`` and ``Mamba2Mixer``
    modules (``MambaForCausalLM``, ``FalconMambaForCausalLM``, ``Mamba2ForCausalLM`` and their base models),
    ranks their states on calibration data and keeps the best ones, the same in every channel (module docstring).

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
    from .compress import _check_optimizer_argument, _check_tol
    from .optim import check_optimizer_owns, mark_rebased_

    _check_optimizer_argument(optimizer, "compress_selective_")
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

    # 1. Analysis, nothing changes.
    calib = _capture_inputs(model, layers, calibration_inputs)
    held = _capture_inputs(model, layers, held_out_inputs) if held_out_inputs is not None else None
    analyses = []
    for (name, layer), kind in zip(layers, kinds):
        G, N = kind.state_shape(layer)
        scores = _score_pass(kind, layer, calib[name])[ranking]
        order = torch.argsort(scores, dim=-1, descending=True, stable=True)
        if rank is not None:
            r, changes = min(N, rank), None
        else:
            changes = _tail_pass(kind, layer, calib[name], order)
            r = int(next(i for i in range(1, N + 1) if changes[i] <= tol or i == N))
        configs = kind.configs(model, name, layer)
        analyses.append({"name": name, "layer": layer, "kind": kind, "N": N, "scores": scores, "order": order,
                         "r": r, "changes": changes, "configs": configs,
                         "group": id(configs[-1]) if configs else id(layer)})
    common = {}
    for a in analyses:
        common[a["group"]] = max(common.get(a["group"], 0), a["r"])
    plans, reports = [], []
    for a in analyses:
        layer, kind, N, scores = a["layer"], a["kind"], a["N"], a["scores"]
        r = common[a["group"]]
        keep = a["order"][:, :r].sort(dim=-1).values
        total = float(scores.sum())
        energy = float(scores.gather(-1, keep).sum()) / total if total > 0 else 1.0
        note, plan, measurement, change = "", None, None, 0.0
        if r >= N:
            note = "nothing to cut"
        elif r > (1.0 - min_shrink) * N:
            note = f"gate: {N}->{r} shrinks by less than min_shrink={min_shrink:g}"
        else:
            plan = keep
            if a["changes"] is not None:
                change = float(a["changes"][r])
            else:
                change = _tail_pass(kind, layer, calib[a["name"]], a["order"], only=r)
            items, data = (held[a["name"]], "held_out") if held is not None else (calib[a["name"]], "calibration")
            measurement = _measure(kind, layer, keep, items, data)
        plans.append(plan)
        kept = keep if plan is not None else torch.arange(N).expand(keep.shape[0], N)
        kept_list = kept[0].tolist() if kept.shape[0] == 1 else kept.tolist()
        reports.append(SelectiveLayerReport(
            a["name"], kind.label, N, N if plan is None else r, kept_list,
            (scores[0] if scores.shape[0] == 1 else scores).numpy(), ranking, energy if plan is not None else 1.0,
            change, measurement.relative_output_change if measurement else 0.0,
            measurement.data if measurement else "", plan is not None, note, measurement=measurement))

    # 2. Swap, undone on any failure.
    undo = _Undo(optimizer)
    shapes = {}
    try:
        for a, keep in zip(analyses, plans):
            if keep is not None:
                for pname, _, _ in a["kind"].cut_spec(a["layer"], keep)[0]:
                    p = a["layer"].get_parameter(pname)
                    shapes[id(p)] = (p, tuple(p.shape))
                _apply_cut(a["kind"], a["layer"], keep, a["configs"], optimizer, optimizer_state, undo)
    except BaseException:
        undo.restore()
        raise
    # An optimizer other than ``optimizer`` that still holds the old shapes fails at its next step, by name.
    owners = {id(m): n for n, m in model.named_modules()}
    mark_rebased_([(p, shape) for p, shape in shapes.values()],
                  [(f"{owners.get(id(owner), '')}.{leaf}".lstrip("."), p) for owner, leaf, p in undo.replaced])
    report = SelectiveCompressionReport(reports)
    warn_if_gated(report.layers, min_shrink)
    return report
