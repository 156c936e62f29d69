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

Compressing ``d_state``
-----------------------
``Delta``, ``B`` and ``C`` depend on the input, so the block is not an LTI system. Over a calibration batch
(``x`` = the post-convolution activations of the block's input, ``b`` sequences of length ``L``) we average
exactly these quantities:

* ``mean_delta[d] = mean_{b,t} Delta[b,t,d]``: the step size, **per channel**;
* ``B_avg[d,n] = mean_{b,t} Delta[b,t,d] * B[b,t,n]``: the discretized input matrix ``B_bar`` actually
  applied, **over time and batch** (per channel, because ``Delta`` is);
* ``C_avg[n] = mean_{b,t} C[b,t,n]``: **over time and batch**, shared by all channels;

and call ``lam[d,n] = exp(mean_delta[d] * A[d,n])`` the averaged dynamics. Channel ``d`` is then the
single-input single-output LTI system ``(lam[d], B_avg[d, :, None], C_avg[None, :], D[d])`` from ``x_d`` to
``y_d``: :meth:`SelectiveSSM.to_system` returns all channels as one batched real
:class:`lti_reduce.DiagonalSystem` of shape ``(d_inner, d_state)``. (Same time convention as the LRU: the
layer feeds ``x_t`` through in the same step; the core's system is that map delayed by one step in its
strictly proper part, which has the same H-infinity norm and Hankel singular values.)

*Why a state selection and not balanced truncation.* Balanced truncation mixes states: a reduced state is a
combination ``W^T h`` of all ``d_state`` states, different in every channel. The block cannot represent that:
its ``B_t`` and ``C_t`` are computed from the input by projections shared by all channels, and ``Delta_t``
multiplies ``A`` elementwise, so a mixed basis would have to be re-mixed at every time step with an
input-dependent matrix. What the block *can* represent is keeping a subset of its states, the same subset in
every channel: drop rows of ``W_B`` and ``W_C`` and columns of ``A_log``. This is exact surgery (the kept
states compute exactly what they computed before, because ``A`` is diagonal), so the only approximation is
which states to drop.

*Ranking.* In the diagonal (modal) basis the Hankel singular value of state ``n`` of channel ``d`` taken
alone is ``h[d,n] = |B_avg[d,n] C_avg[n]| / (1 - lam[d,n]^2)`` (``sqrt(P_nn Q_nn)`` of the averaged system;
it equals the true HSVs when the modes are decoupled). States are ranked by their energy summed over
channels, ``score[n] = sum_d h[d,n]``, and ``tol`` keeps the smallest set carrying ``1 - tol`` of the total
(:func:`lti_reduce.rank_for_tol`, the CompreSSM rule).

*Bounds, and what they are worth.* For the averaged channel system, dropping modes changes its transfer
function by exactly the dropped modes, so ``sum_{n dropped} |B_avg C_avg| / (1 - lam)`` bounds the change in
H-infinity norm (equality when the residues share a sign): this is ``averaged_bound``. The balanced HSVs of the
averaged system (through :func:`lti_reduce.hankel_singular_values`) give ``hsv_lower``: no order-``r``
approximation of the averaged system, selection or not, changes it by less than ``sigma_{r+1}``. Neither
bounds the change of the *selective* block: its ``Delta``, ``B``, ``C`` vary in time and are correlated (that
is the point of selectivity). :func:`measure_selective_cut` measures the real change on held-out inputs next
to the averaged bound; treat the bound as a heuristic ranking signal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .compress import CompressionReport, _Snapshot

__all__ = [
    "SelectiveSSM",
    "selective_scan",
    "selective_scan_reference",
    "compress_selective_",
    "measure_selective_cut",
    "SelectiveCompressionReport",
    "SelectiveLayerReport",
    "CutMeasurement",
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
    def calibrate_(self, inputs) -> "SelectiveSSM":
        """Average ``Delta``, ``Delta * B`` and ``C`` over ``inputs`` (this block's own inputs).

        Parameters
        ----------
        inputs : Tensor (batch, L, d_model), or an iterable of such tensors
            The statistics (module docstring) replace any earlier ones.
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
    def select_states_(self, keep) -> "SelectiveSSM":
        """Keep only the states ``keep`` (the same ones in every channel), in place.

        This is the block's counterpart of the protocol's ``load_system_``: the block cannot load a balanced
        (state-mixing) system, see the module docstring, so it is deliberately *not* named ``load_system_``
        and :func:`adapters.torch.compress_` (balanced truncation) leaves it alone; use
        :func:`compress_selective_`.

        Parameters
        ----------
        keep : sequence of int
            Distinct indices in ``[0, state_dim)``; kept in increasing order.

        Notes
        -----
        ``A_log``, ``B_proj.weight`` and ``C_proj.weight`` are replaced by new ``Parameter`` objects
        (``requires_grad`` kept); whoever holds an optimizer must rebind it (``compress_selective_`` does).
        Calibration statistics are sliced along.
        """
        idx = self._check_keep(keep)
        for name, p in self._state_parameters().items():
            new = nn.Parameter(p.index_select(self._STATE_AXES[name] % p.dim(), idx.to(p.device)).clone(),
                               requires_grad=p.requires_grad)
            self._set_state_parameter(name, new)
        if self._stats is not None:
            dev = self._stats["C"].device  # a new dict: a snapshot of the old one stays valid
            self._stats = {**self._stats, "delta_B": self._stats["delta_B"][:, idx.to(dev)],
                           "C": self._stats["C"][idx.to(dev)]}
        return self

    def _set_state_parameter(self, name, value):
        if name == "A_log":
            self.A_log = value
        else:
            linear = getattr(self, name.split(".")[0])
            linear.weight = value
            linear.out_features = value.shape[0]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Resize the state axis to a compressed checkpoint's before the usual copy (children load after)."""
        key = prefix + "A_log"
        if key in state_dict and state_dict[key].dim() == 2 and (n := int(state_dict[key].shape[-1])) != self.state_dim:
            if all(prefix + k in state_dict and state_dict[prefix + k].shape[0] == n for k in ("B_proj.weight", "C_proj.weight")):
                for name, p in self._state_parameters().items():
                    shape = list(p.shape)
                    shape[self._STATE_AXES[name]] = n
                    self._set_state_parameter(name, nn.Parameter(p.new_zeros(shape), requires_grad=p.requires_grad))
                self._stats = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


# ----------------------------------------------------------------------------------------------- analysis
def _mode_hsv(lam, B_avg, C_avg):
    """Diagonal-basis HSV of every state of every channel: ``|B C| / (1 - lam^2)``, shape (d_inner, N)."""
    return (B_avg * C_avg).abs() / (1.0 - lam * lam)


def _averaged_bound(lam, B_avg, C_avg, dropped):
    """Per channel ``sum_{n dropped} |B C| / (1 - lam)``: H-infinity bound of the averaged system's change."""
    if dropped.numel() == 0:
        return torch.zeros(lam.shape[0], dtype=lam.dtype, device=lam.device)
    d = dropped.to(lam.device)
    return ((B_avg[:, d] * C_avg[d]).abs() / (1.0 - lam[:, d])).sum(-1)


@dataclass
class CutMeasurement:
    """Real change of a block's output when states are dropped, next to the averaged bound.

    Attributes
    ----------
    measured_gain : numpy.ndarray, shape (d_inner,)
        Per channel, the largest over held-out sequences of ``||y_d - y_d,cut||_2 / ||x_d||_2`` (the SSM's
        own input ``x_d`` and output ``y_d``): what an H-infinity norm would bound for an LTI channel.
    averaged_bound : numpy.ndarray, shape (d_inner,)
        The averaged system's bound per channel (module docstring).
    ratio_max, ratio_median : float
        ``measured_gain / averaged_bound`` over channels with a nonzero bound (``nan`` if none).
    fraction_within_bound : float
        Share of channels whose measured gain is at most the averaged bound.
    relative_output_change : float
        ``||out - out_cut|| / ||out||`` of the whole block on the held-out inputs.
    """

    measured_gain: np.ndarray = field(repr=False)
    averaged_bound: np.ndarray = field(repr=False)
    ratio_max: float
    ratio_median: float
    fraction_within_bound: float
    relative_output_change: float


@torch.no_grad()
def measure_selective_cut(layer: SelectiveSSM, keep, inputs) -> CutMeasurement:
    """How much dropping all states but ``keep`` changes ``layer`` on held-out ``inputs``; nothing is changed.

    Parameters
    ----------
    layer : SelectiveSSM
        A calibrated block (its averaged bound comes from the last calibration).
    keep : sequence of int
        States to keep (as for :meth:`SelectiveSSM.select_states_`).
    inputs : Tensor, shape (batch, L, d_model)
        Held-out inputs of this block (not the calibration batch).

    Returns
    -------
    CutMeasurement

    Notes
    -----
    The cut is simulated by zeroing the output weight ``C_t`` of the dropped states, which computes exactly
    what the block computes after :meth:`~SelectiveSSM.select_states_` (``A`` is diagonal, so the kept
    states do not see the dropped ones). The averaged bound is a heuristic for the selective block: report
    the measurement, do not rely on the inequality.
    """
    idx = layer._check_keep(keep)
    dropped = torch.tensor(sorted(set(range(layer.state_dim)) - set(idx.tolist())), dtype=torch.long)
    lam, B_avg, C_avg = layer.averaged_system_parts()
    bound = _averaged_bound(lam, B_avg, C_avg, dropped).cpu().numpy()
    x, z = layer._inner(inputs)
    delta, B, C = layer._selective(x)
    A = -torch.exp(layer.A_log)
    mask = torch.zeros(layer.state_dim, dtype=C.dtype, device=C.device)
    mask[idx.to(C.device)] = 1
    y_full = selective_scan(x, delta, A, B, C, None, mode=layer.mode, chunk_size=layer.chunk_size)
    y_cut = selective_scan(x, delta, A, B, C * mask, None, mode=layer.mode, chunk_size=layer.chunk_size)
    gain = ((y_full - y_cut).double().norm(dim=1) / x.double().norm(dim=1).clamp_min(1e-300)).amax(0)
    gain = gain.cpu().numpy()
    out_full = layer.out_proj((y_full + layer.D * x) * F.silu(z))
    out_cut = layer.out_proj((y_cut + layer.D * x) * F.silu(z))
    rel = float((out_full - out_cut).double().norm() / out_full.double().norm().clamp_min(1e-300))
    positive = bound > 0
    ratio = gain[positive] / bound[positive]
    return CutMeasurement(gain, bound, float(ratio.max()) if ratio.size else float("nan"),
                          float(np.median(ratio)) if ratio.size else float("nan"),
                          float(np.mean(gain <= bound * (1 + 1e-9) + 1e-300)), rel)


# -------------------------------------------------------------------------------------------- compression
@dataclass
class SelectiveLayerReport:
    """What :func:`compress_selective_` did to one block.

    Attributes
    ----------
    name : str
    before, after : int
        ``state_dim`` before and after.
    kept : list of int
        Indices (in the old numbering) of the kept states.
    scores : numpy.ndarray, shape (before,)
        ``sum_d h[d, n]``: each state's diagonal-basis HSV energy summed over channels.
    energy_kept : float
        Share of the summed scores carried by the kept states.
    averaged_bound : float
        Largest over channels of the averaged system's H-infinity change (module docstring; 0 if not cut).
    hsv_lower : float
        Largest over channels of ``sigma_{after+1}`` of the averaged system: no order-``after`` approximation
        of it does better (0 if not cut).
    compressed : bool
    note : str
    measurement : CutMeasurement or None
        Filled when ``held_out_inputs`` was given.
    """

    name: str
    before: int
    after: int
    kept: list
    scores: np.ndarray = field(repr=False)
    energy_kept: float
    averaged_bound: float
    hsv_lower: float
    compressed: bool
    note: str = ""
    measurement: CutMeasurement | None = None


@dataclass
class SelectiveCompressionReport(CompressionReport):
    """Per-block results of :func:`compress_selective_`; ``print(report)`` shows a table.

    The container behaviour (iteration, ``report[name]``, ``compressed``,
    ``state_before``/``state_after``) is that of :class:`CompressionReport`.
    """

    layers: list[SelectiveLayerReport]

    def __str__(self) -> str:
        head = (f"{'layer':<20} {'state':>9} {'energy kept':>12} {'avg bound':>10} {'hsv lower':>10} "
                f"{'measured':>10} {'meas/bound':>10}  note")
        rows = [head, "-" * len(head)]
        for x in self.layers:
            state = f"{x.before}->{x.after}" if x.compressed else f"{x.before}"
            m = x.measurement
            meas = f"{float(m.measured_gain.max()):>10.3e} {m.ratio_max:>10.3g}" if m is not None else f"{'':>10} {'':>10}"
            rows.append(f"{x.name or '<model>':<20} {state:>9} {x.energy_kept:>12.6f} {x.averaged_bound:>10.3e} "
                        f"{x.hsv_lower:>10.3e} {meas}  {x.note}")
        return "\n".join(rows)


def _selective_layers(model: nn.Module):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SelectiveSSM)]


def _batches(inputs):
    return [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)


@torch.no_grad()
def _run_collecting(model, layers, inputs, capture=False):
    """Forward ``inputs`` through ``model``; calibrate every block (or capture each block's inputs)."""
    captured = {name: [] for name, _ in layers}
    handles = []
    for name, layer in layers:
        if capture:
            handles.append(layer.register_forward_pre_hook(lambda mod, args, name=name: captured[name].append(args[0])))
        else:
            layer._stats, layer._collect = None, True
    try:
        for batch in _batches(inputs):
            model(batch)
    finally:
        for h in handles:
            h.remove()
        for _, layer in layers:
            layer._collect = False
    return {name: torch.cat(xs) for name, xs in captured.items()} if capture else None


def _slice_optimizer_state(optimizer, old, new, axis, idx):
    """Keep the moments of kept states: a selection does not change the basis, unlike balancing."""
    state = optimizer.state.get(old)
    if not state:
        return None
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.shape == old.shape:
            out[key] = value.index_select(axis % value.dim(), idx.to(value.device)).clone()
        else:
            out[key] = value.clone() if isinstance(value, torch.Tensor) else value
    return out


def compress_selective_(model: nn.Module, *, calibration_inputs, tol: float | None = None, rank: int | None = None,
                        optimizer: torch.optim.Optimizer | None = None, min_shrink: float = 0.05,
                        held_out_inputs=None, optimizer_state: str = "slice") -> SelectiveCompressionReport:
    """Cut the shared state size of every :class:`SelectiveSSM` in ``model``, in place, atomically.

    Parameters
    ----------
    model : nn.Module
        A model containing :class:`SelectiveSSM` blocks (or one such block).
    calibration_inputs : Tensor or iterable of Tensors
        Model inputs; ``model(batch)`` is run under ``no_grad`` and every block averages ``Delta``,
        ``Delta * B`` and ``C`` over its own inputs (module docstring).
    tol : float in (0, 1), optional
        Fraction of the summed diagonal-basis HSV energy that may be dropped, per block.
    rank : int, optional
        New ``state_dim`` of every block. Give exactly one of ``tol`` and ``rank``.
    optimizer : torch.optim.Optimizer, optional
        Rebound to the new parameters through :func:`adapters.torch.optim.rebind_parameters_`.
    min_shrink : float in [0, 1)
        A block is cut only if it shrinks by at least this fraction.
    held_out_inputs : Tensor or iterable of Tensors, optional
        Model inputs not used for calibration: each cut block's real output change is measured
        (:func:`measure_selective_cut`, before the cut) and stored in the report.
    optimizer_state : {"slice", "reset"}
        ``"slice"`` (default): the kept states' moments are kept (a selection does not change the basis);
        ``"reset"``: state of replaced parameters is dropped, as after balanced truncation.

    Returns
    -------
    SelectiveCompressionReport

    Raises
    ------
    ValueError
        Bad options, no :class:`SelectiveSSM` in ``model``, an optimizer that does not own its parameters.

    Notes
    -----
    All analysis (calibration, scores, bounds, measurements) runs before anything changes; if the swap fails
    the blocks and the optimizer are restored exactly.
    """
    import lti_reduce as lr

    from .optim import check_optimizer_owns, rebind_parameters_

    if (tol is None) == (rank is None):
        raise ValueError(f"give exactly one of tol= and rank=, got tol={tol!r}, rank={rank!r}.")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0.0 < float(tol) < 1.0):
        raise ValueError(f"tol must be a float strictly between 0 and 1, got {tol!r}.")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive integer (the new d_state), got {rank!r}.")
    if not 0.0 <= float(min_shrink) < 1.0:
        raise ValueError(f"min_shrink must be in [0, 1), got {min_shrink!r}.")
    if optimizer_state not in ("slice", "reset"):
        raise ValueError(f"optimizer_state must be 'slice' or 'reset', got {optimizer_state!r}.")
    layers = _selective_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} contains no SelectiveSSM block to compress.")
    if optimizer is not None:
        check_optimizer_owns(optimizer, [(f"{n}.{pn}" if n else pn, p) for n, layer in layers
                                         for pn, p in layer._state_parameters().items()], "the SelectiveSSM blocks")

    # 1. Analysis, nothing changes.
    _run_collecting(model, layers, calibration_inputs)
    held = _run_collecting(model, layers, held_out_inputs, capture=True) if held_out_inputs is not None else None
    plans, reports = [], []
    for name, layer in layers:
        lam, B_avg, C_avg = layer.averaged_system_parts()
        scores = _mode_hsv(lam, B_avg, C_avg).sum(0)
        order = torch.argsort(scores, descending=True, stable=True)
        n = layer.state_dim
        sorted_scores = scores[order].cpu().numpy()
        r = min(n, rank) if rank is not None else int(lr.rank_for_tol(sorted_scores, float(tol)))
        keep = order[:r].sort().values.cpu()
        total = float(sorted_scores.sum())
        energy = float(sorted_scores[:r].sum()) / total if total > 0 else 1.0
        note, plan = "", None
        bound = lower = 0.0
        measurement = None
        if r >= n:
            note = "nothing to cut"
        elif r > (1.0 - min_shrink) * n:
            note = f"gate: {n}->{r} shrinks by less than min_shrink={min_shrink:g}"
        else:
            plan = keep
            dropped = order[r:].cpu()
            bound = float(_averaged_bound(lam, B_avg, C_avg, dropped).max())
            hsv = lr.hankel_singular_values(layer.to_system())
            lower = float(hsv[..., r].max())
            if held is not None:
                measurement = measure_selective_cut(layer, keep, held[name])
        plans.append(plan)
        reports.append(SelectiveLayerReport(name, n, n if plan is None else r, keep.tolist() if plan is not None
                                            else list(range(n)), scores.cpu().numpy(), energy if plan is not None
                                            else 1.0, bound, lower, plan is not None, note, measurement))

    # 2. Swap, undone on any failure.
    todo = [(layer, keep) for (_, layer), keep in zip(layers, plans) if keep is not None]
    if todo:
        snapshot = _Snapshot([layer for layer, _ in todo], optimizer)
        try:
            replaced, sliced = {}, []
            for layer, keep in todo:
                old = layer._state_parameters()
                layer.select_states_(keep)
                new = layer._state_parameters()
                for pname, p in old.items():
                    replaced[id(p)] = (p, new[pname])
                    if optimizer is not None and optimizer_state == "slice":
                        sliced.append((new[pname], _slice_optimizer_state(optimizer, p, new[pname],
                                                                          layer._STATE_AXES[pname], keep)))
            if optimizer is not None:
                rebind_parameters_(optimizer, replaced, [])
                for p, state in sliced:
                    if state is not None:
                        optimizer.state[p] = state
        except BaseException:
            snapshot.restore()
            raise
    return SelectiveCompressionReport(reports)
