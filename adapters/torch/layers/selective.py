"""A selective (Mamba-style) state-space block with a shared state size ``d_state``, and its scans.

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

The block's ``Delta``, ``B`` and ``C`` depend on the input, so it is not an LTI system: it is cut by keeping a
subset of its states (:meth:`SelectiveSSM.select_states_`), chosen by the state selection of
:mod:`adapters.torch.cut.selective` (:func:`adapters.torch.compress_selective_`), which also explains why.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._params import resize_from_checkpoint_, resize_parameter_

__all__ = ["SCAN_MODES", "SelectiveSSM", "selective_scan", "selective_scan_reference"]

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
        :func:`adapters.torch.compress_selective_` does not use it by default
        (:mod:`adapters.torch.cut.selective`).

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
        (state-mixing) system (see :mod:`adapters.torch.cut.selective`), so it is deliberately *not* named
        ``load_system_`` and balanced truncation leaves it alone; :func:`adapters.torch.compress_selective_`
        calls this.

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
            resize_parameter_(self, name, p.index_select(self._STATE_AXES[name] % p.dim(), idx.to(p.device)))
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

