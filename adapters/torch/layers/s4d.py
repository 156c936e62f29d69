"""The S4D layer (diagonal S4) as a compressible layer.

Gu, Gupta, Goel, Re, "On the Parameterization and Initialization of Diagonal State Space Models",
NeurIPS 2022 (arXiv 2206.11893).

``d_model`` independent single-input single-output channels, channel ``h`` with ``n`` complex modes
``A_h`` (stored with conjugate symmetry: the paper's state size is ``N = 2n``), one learnable step
``dt_h``, ``B = 1`` (absorbed into ``C``, as in the paper's S4D kernel) and a real skip ``D_h``:

.. math::

    \\bar A = e^{A\\,\\Delta}, \\quad \\bar B = \\frac{\\bar A - 1}{A} \\;\\text{(ZOH)}, \\qquad
    K_\\ell = 2 \\operatorname{Re} \\sum_j C_j \\bar B_j \\bar A_j^{\\ell}, \\qquad
    y = K * u + D u .

The convolution kernel ``K`` is applied with FFTs for training; :meth:`S4D.step` runs the same map as a
recurrence ``x_k = Abar x_{k-1} + Bbar u_k``, ``y_k = 2 Re(C x_k) + D u_k``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..scan import linear_recurrence
from ._base import (DiagonalLayer, check_finite_stable, check_option, check_real_output, check_sizes,
                    check_timescales, log_timescales, nearest_branch, real_feedthrough)

__all__ = ["S4D"]

_INITS = ("lin", "inv")
_DISCRETIZATIONS = ("zoh", "bilinear")
_MODES = ("fft", "scan", "chunked", "sequential")


class S4D(DiagonalLayer):
    """S4D: ``d_model`` diagonal SISO systems applied as causal convolutions, ``y = K * u + D u``.

    Parameters
    ----------
    d_model : int
        Number of channels ``H`` (input and output width).
    d_state : int
        Number of complex modes ``n`` per channel at construction (the paper's ``N = 2n``);
        :attr:`state_dim` tracks the current number, common to all channels.
    init : {"lin", "inv"}
        S4D-Lin ``A_j = -1/2 + i pi j`` or S4D-Inv ``A_j = -1/2 + i (N / pi) (N / (2j + 1) - 1)``,
        ``j = 0..n-1``, the same for every channel.
    discretization : {"zoh", "bilinear"}
        Zero-order hold ``Abar = exp(A dt)``, ``Bbar = (Abar - 1) / A``, or bilinear
        ``Abar = (1 + A dt / 2) / (1 - A dt / 2)``, ``Bbar = dt / (1 - A dt / 2)``.
    dt_min, dt_max : float
        ``log dt`` is drawn uniformly in ``[log dt_min, log dt_max]``, one step per channel.
    mode : {"fft", "scan", "chunked", "sequential"}
        ``"fft"``: the kernel ``K`` (``O(H n L)``) and an FFT convolution (training). The others run the
        recurrence over all ``H n`` modes with :func:`adapters.torch.scan.linear_recurrence`; all agree
        to round-off.
    device, dtype
        Factory arguments; ``dtype`` is the real dtype (float32 or float64).

    Attributes
    ----------
    log_A_real, A_imag : Parameter, shape (d_model, n)
        ``A = -exp(log_A_real) + i A_imag``: ``Re A < 0`` for every value (stable for both
        discretizations).
    C_re, C_im : Parameter, shape (d_model, n)
        ``C`` (the paper's ``C`` times ``B``; the output is ``2 Re(C x)``).
    log_dt : Parameter, shape (d_model,)
        ``dt = exp(log_dt)``, one step per channel.
    D : Parameter, shape (d_model,)
        Skip connection.

    Notes
    -----
    *The system.* :meth:`to_system` returns a *batched* real-output :class:`lti_reduce.DiagonalSystem`
    with batch dimension ``d_model`` (one SISO system per channel): ``lam = Abar`` (H, n),
    ``B = Bbar`` (H, n, 1), ``C = 2 C`` (H, 1, n), ``D`` (H, 1, 1). Each channel is a real system of
    order ``2n``; its Hankel singular values and error bounds are its own.

    *One state size for all channels.* The parameters are ``(d_model, n)`` tensors, so every channel
    keeps the same number of modes. :func:`adapters.torch.compress_` balances all channels in one
    batched call and cuts all to one real order ``r``: with ``tol``, the smallest order whose dropped
    HSVs, summed over all channels, stay within ``tol`` of the layer's total HSV sum (so a few slow
    channels do not keep the layer at full size); each channel's error stays within its own bound
    ``2 sum_{i > r} sigma_i^(h)``. The channels go back to modal form in one batched eigendecomposition.
    A real order ``r`` gives between ``r / 2`` and ``r`` modes (a real eigenvalue takes a whole mode), so
    channels may have different numbers of modes: the shorter ones come padded with zero modes
    (``lam = 0, B = 0, C = 0``, :func:`lti_reduce.modal_form` with ``pad=True``), or as a list of
    per-channel systems, and :meth:`load_system_` stores those places as *inert* modes (``C = 0``,
    ``A = -1/2``) that contribute exactly nothing to the map but are trainable (``dL/dC`` is not zero),
    so the map is exactly the reduced one.

    *Parameters after a cut.* Each channel keeps its step ``dt_h``. A new discrete mode ``(lam, b, c)``
    is stored as ``A = log(lam) / dt_h`` (ZOH; the branch of ``Im log`` nearest to the channel's nearest
    old mode, so loading the layer's own system reproduces its parameters) or
    ``A = (2 / dt_h) (lam - 1) / (lam + 1)`` (bilinear), and ``C = c b / (2 Bbar(A, dt_h))``: only the
    product ``c b`` matters in a SISO mode, and ``Bbar`` is never zero for ``|lam| < 1``. Then the
    layer's ``Abar`` and ``2 C Bbar`` equal the system's ``lam`` and ``c b`` up to round-off.

    *Time convention.* ``K_0 = 2 Re(sum C Bbar)``: the input reaches the output in the same step, as in
    :class:`adapters.torch.LRU`; the error bounds hold for the layer's map exactly (see
    :meth:`adapters.torch.LRU.to_system`).

    Examples
    --------
    >>> import torch
    >>> layer = S4D(d_model=8, d_state=16)
    >>> layer(torch.randn(2, 50, 8)).shape
    torch.Size([2, 50, 8])
    >>> layer.to_system().lam.shape
    torch.Size([8, 16])
    """

    state_parameters = {"log_A_real": -1, "A_imag": -1, "C_re": -1, "C_im": -1}

    def __init__(
        self,
        d_model: int,
        d_state: int,
        *,
        init: str = "lin",
        discretization: str = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        mode: str = "fft",
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_sizes(d_model, d_state)
        check_option("init", init, _INITS)
        check_option("discretization", discretization, _DISCRETIZATIONS)
        check_timescales(dt_min, dt_max)
        check_option("mode", mode, _MODES)
        self.d_model, self.discretization, self.mode = int(d_model), discretization, mode
        H, n = self.d_model, int(d_state)
        f64 = torch.float64
        j = torch.arange(n, dtype=f64)
        if init == "lin":
            imag = math.pi * j
        else:
            N = 2 * n
            imag = (N / math.pi) * (N / (2 * j + 1) - 1)
        factory = {"device": device, "dtype": dtype if dtype is not None else torch.get_default_dtype()}
        log_dt = log_timescales(H, dt_min, dt_max)
        C = torch.randn(H, n, dtype=torch.complex128)  # CN(0, 1), as the paper's code
        self.log_A_real = nn.Parameter(torch.full((H, n), math.log(0.5), dtype=f64).to(**factory))
        self.A_imag = nn.Parameter(imag.expand(H, n).contiguous().to(**factory))
        self.C_re = nn.Parameter(C.real.contiguous().to(**factory))
        self.C_im = nn.Parameter(C.imag.contiguous().to(**factory))
        self.log_dt = nn.Parameter(log_dt.to(**factory))
        self.D = nn.Parameter(torch.randn(H, **factory))

    # ----------------------------------------------------------------------------------------------- protocol
    @property
    def state_dim(self) -> int:
        """Current number of complex modes per channel ``n``."""
        return self.log_A_real.shape[-1]

    @property
    def A(self) -> torch.Tensor:
        """Continuous-time eigenvalues ``-exp(log_A_real) + i A_imag``, shape (d_model, n)."""
        return torch.complex(-torch.exp(self.log_A_real), self.A_imag)

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``Abar`` (H, n), ``log(Abar)`` (H, n) and ``Bbar`` (H, n) of the chosen discretization; differentiable."""
        A = self.A
        dt = torch.exp(self.log_dt).unsqueeze(-1)
        dtA = A * dt
        if self.discretization == "zoh":
            return torch.exp(dtA), dtA, torch.expm1(dtA) / A
        denominator = 1 - dtA / 2
        lam = (1 + dtA / 2) / denominator
        return lam, torch.log(lam), dt / denominator

    def kernel(self, length: int) -> torch.Tensor:
        """The convolution kernel ``K_l = 2 Re(sum_j C_j Bbar_j Abar_j^l)``, ``l < length``: shape (H, length).

        ``Abar^l`` is ``exp(l log Abar)`` (no accumulation of rounding over ``l``), evaluated in real arithmetic
        as ``exp(l Re log Abar) (cos(l Im log Abar) + i sin(l Im log Abar))`` (vectorized real kernels; a
        complex ``exp`` is scalar on some CPU builds); differentiable.

        With ``l = a T + b`` (``T ~ sqrt(length)``), ``K[a T + b] = 2 Re sum_j (w_j Abar_j^(a T)) Abar_j^b``
        is one real batched matrix product of ``(H, A, 2n)`` by ``(H, 2n, T)``: ``O(H n sqrt(L))``
        exponentials instead of ``O(H n L)``, and the ``O(H n L)`` multiply-adds run in BLAS.
        """
        _, log_lam, Bbar = self.discretize()
        weight = torch.complex(self.C_re, self.C_im) * Bbar  # (H, n)
        T = max(1, math.isqrt(max(length - 1, 0)) + 1)
        blocks = -(-length // T)
        rate, angle = log_lam.real, log_lam.imag  # (H, n) real
        steps = torch.arange(T, device=rate.device, dtype=rate.dtype)
        inner_re, inner_im = _exp_i(rate.unsqueeze(-1) * steps, angle.unsqueeze(-1) * steps)  # (H, n, T)
        starts = T * torch.arange(blocks, device=rate.device, dtype=rate.dtype).unsqueeze(-1)  # (A, 1)
        power_re, power_im = _exp_i(rate.unsqueeze(-2) * starts, angle.unsqueeze(-2) * starts)  # (H, A, n)
        w_re, w_im = weight.real.unsqueeze(-2), weight.imag.unsqueeze(-2)
        # outer = w Abar^(a T); Re(P Q) = Re P Re Q - Im P Im Q, as one real product over the doubled inner dimension
        outer_re, outer_im = w_re * power_re - w_im * power_im, w_re * power_im + w_im * power_re
        left = torch.cat([outer_re, -outer_im], dim=-1)  # (H, A, 2n)
        right = torch.cat([inner_re, inner_im], dim=-2)  # (H, 2n, T)
        return 2 * torch.matmul(left, right).flatten(-2)[..., :length]

    def to_system(self, differentiable: bool = False):
        """The layer's channels as one batched ``DiagonalSystem(lam, B, C, D, real_output=True)``.

        Parameters
        ----------
        differentiable : bool
            ``False`` (default): detached copies. ``True``: attached to the parameters.

        Returns
        -------
        lti_reduce.DiagonalSystem
            Batch shape ``(d_model,)``: ``lam = Abar`` (H, n), ``B = Bbar`` (H, n, 1), ``C = 2 C``
            (H, 1, n), ``D`` (H, 1, 1) real; complex64 for a float32 layer, on the layer's device.

        Raises
        ------
        lti_reduce.UnstableSystemError
            If some ``|Abar|`` rounded to 1 in the layer's dtype.
        """
        def parts():
            lam, _, Bbar = self.discretize()
            C = 2 * torch.complex(self.C_re, self.C_im)
            return lam, Bbar.unsqueeze(-1), C.unsqueeze(-2), self.D.reshape(-1, 1, 1)

        return self._system(differentiable, parts)

    @torch.no_grad()
    def load_system_(self, system) -> "S4D":
        """Replace every channel's system (usually by reduced ones), in place.

        Parameters
        ----------
        system : DiagonalSystem-like, or a sequence of ``d_model`` of them
            Batched: ``lam`` (H, r), ``B`` (H, r, 1), ``C`` (H, 1, r), ``D`` (H, 1, 1), (H,) or ``None``;
            ``real_output=True``. Or one system per channel, ``lam`` (r_h,), ``B`` (r_h, 1), ``C`` (1, r_h),
            ``D`` (1, 1) or ``None``, with possibly different ``r_h``: the channels are then filled up to
            ``max r_h`` modes with inert modes (class Notes). Tensors or arrays, any device and dtype.

        Returns
        -------
        S4D
            ``self``, with ``state_dim`` the (common) number of modes.

        Raises
        ------
        ValueError
            ``real_output`` not true, wrong shapes or number of channels, a non-finite value, some
            ``|lam| >= 1``, or a complex ``D``.

        Notes
        -----
        Each channel keeps ``dt_h``; see the class Notes for the conversion. Parameters are resized in
        place (the ``nn.Parameter`` objects are kept); everything is checked before anything changes.
        """
        lam, b, c, D = self._checked(system)
        real = self.log_A_real.dtype
        dt = torch.exp(self.log_dt).to(torch.float64).unsqueeze(-1)  # (H, 1)
        if self.discretization == "zoh":
            old_lam, _, _ = self.discretize()
            old_lam = old_lam.to(torch.complex128)
            nearest = (lam.unsqueeze(-1) - old_lam.unsqueeze(-2)).abs().argmin(dim=-1)  # (H, r)
            old_angle = torch.gather(self.A_imag.to(torch.float64) * dt, 1, nearest)
            log_modulus = torch.log(lam.abs().clamp(min=torch.finfo(real).tiny))
            A = torch.complex(log_modulus, nearest_branch(torch.angle(lam), old_angle)) / dt
            Bbar = torch.expm1(A * dt) / A
        else:
            A = (2 / dt) * (lam - 1) / (lam + 1)
            Bbar = dt / (1 - A * dt / 2)
        C = c * b / (2 * Bbar)
        self._store_({"log_A_real": torch.log(-A.real), "A_imag": A.imag, "C_re": C.real, "C_im": C.imag}, D)
        return self

    def _checked(self, system):
        """Validated ``lam, b, c`` (H, r) complex128 and ``D`` (H,) float64 of a batched or per-channel system."""
        H = self.d_model
        device = self.log_A_real.device
        if isinstance(system, Sequence) and not isinstance(system, (str, bytes)):
            if len(system) != H:
                raise ValueError(f"S4D.load_system_ got {len(system)} per-channel systems for d_model={H} "
                                 "channels; pass exactly one system per channel")
            parts = [self._one_channel(s, h, device) for h, s in enumerate(system)]
            r = max(p[0].shape[0] for p in parts)
            padded = []
            dt = torch.exp(self.log_dt.detach()).to(torch.float64).cpu()
            for h, (lam, b, c, d) in enumerate(parts):
                k = r - lam.shape[0]
                inert = torch.full((k,), math.exp(-0.5 * float(dt[h])), dtype=torch.complex128, device=device)
                if self.discretization == "bilinear":
                    x = -0.25 * float(dt[h])
                    inert = torch.full((k,), (1 + x) / (1 - x), dtype=torch.complex128, device=device)
                zeros = torch.zeros(k, dtype=torch.complex128, device=device)
                padded.append((torch.cat([lam, inert]), torch.cat([b, zeros]), torch.cat([c, zeros]), d))
            lam, b, c = (torch.stack([p[i] for p in padded]) for i in range(3))
            D = torch.stack([p[3] for p in padded])
            return lam, b, c, D
        check_real_output(system, "S4D", "2 Re(C x)")
        work = {"device": device, "dtype": torch.complex128}
        lam, B, C = (torch.as_tensor(getattr(system, k)).to(**work) for k in ("lam", "B", "C"))
        if lam.dim() != 2 or lam.shape[0] != H or lam.shape[1] < 1:
            raise ValueError(f"system.lam must have shape ({H}, r) (one row per channel, r >= 1), got "
                             f"{tuple(lam.shape)}; for channels with different numbers of modes pass a list of "
                             "per-channel systems")
        r = lam.shape[1]
        if tuple(B.shape) != (H, r, 1) or tuple(C.shape) != (H, 1, r):
            raise ValueError(f"system.B and system.C must have shapes ({H}, {r}, 1) and ({H}, 1, {r}) "
                             f"(SISO channels), got {tuple(B.shape)} and {tuple(C.shape)}")
        check_finite_stable(lam, B, C, "S4D")
        D = _channel_feedthrough(getattr(system, "D", None), (H,), "S4D")
        b, c = B[..., 0], C[:, 0, :]
        # Zero modes (modal_form(pad=True) fills shorter channels with them) become inert modes.
        zero = (lam == 0) & (b == 0) & (c == 0)
        if bool(zero.any()):
            lam = torch.where(zero, self._inert_lam().to(device).unsqueeze(-1), lam)
        return lam, b, c, D

    def _inert_lam(self) -> torch.Tensor:
        """Discrete eigenvalue (H,) of an inert mode ``A = -1/2`` under each channel's step, complex128."""
        dt = torch.exp(self.log_dt.detach()).to(torch.float64)
        if self.discretization == "bilinear":
            x = -0.25 * dt
            return ((1 + x) / (1 - x)).to(torch.complex128)
        return torch.exp(-0.5 * dt).to(torch.complex128)

    def _one_channel(self, system, h, device):
        if not getattr(system, "real_output", False):
            raise ValueError(f"channel {h}: S4D.load_system_ needs real_output=True systems")
        work = {"device": device, "dtype": torch.complex128}
        lam, B, C = (torch.as_tensor(getattr(system, k)).to(**work) for k in ("lam", "B", "C"))
        if lam.dim() != 1 or lam.shape[0] < 1:
            raise ValueError(f"channel {h}: system.lam must have shape (r,) with r >= 1, got {tuple(lam.shape)}")
        r = lam.shape[0]
        if tuple(B.shape) != (r, 1) or tuple(C.shape) != (1, r):
            raise ValueError(f"channel {h}: system.B and system.C must have shapes ({r}, 1) and (1, {r}) "
                             f"(a SISO channel), got {tuple(B.shape)} and {tuple(C.shape)}")
        check_finite_stable(lam, B, C, "S4D")
        return lam, B[:, 0], C[0], _channel_feedthrough(getattr(system, "D", None), (), "S4D")

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``y = K * u + D u`` for ``u`` of shape (..., L, d_model); returns (..., L, d_model)."""
        self._check_input(u)
        with torch.autocast(device_type=u.device.type, enabled=False):
            u = u.to(self.log_A_real.dtype)
            length = u.shape[-2]
            if self.mode == "fft":
                nfft = 1 << max(0, math.ceil(math.log2(max(2 * length - 1, 1))))
                K = torch.fft.rfft(self.kernel(length), n=nfft)  # (H, F)
                y = torch.fft.irfft(torch.fft.rfft(u.transpose(-1, -2), n=nfft) * K, n=nfft)[..., :length]
                return y.transpose(-1, -2) + self.D * u
            lam, _, Bbar = self.discretize()
            H, n = lam.shape
            bu = (u.unsqueeze(-1) * Bbar).flatten(-2)  # (..., L, H n)
            x = linear_recurrence(lam.flatten(), bu, mode=self.mode).unflatten(-1, (H, n))
            C = torch.complex(self.C_re, self.C_im)
            return 2 * (x * C).sum(-1).real + self.D * u

    def initial_state(self, *batch_shape: int) -> torch.Tensor:
        """Zero recurrent state of shape (*batch_shape, d_model, n), complex."""
        dtype = torch.complex(self.C_re[:1, :1], self.C_im[:1, :1]).dtype
        return torch.zeros(*batch_shape, self.d_model, self.state_dim, dtype=dtype, device=self.C_re.device)

    def step(self, u: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One recurrent step: ``x = Abar x + Bbar u``, ``y = 2 Re(C x) + D u``.

        Parameters
        ----------
        u : Tensor, shape (..., d_model)
            Input at this step.
        state : Tensor, shape (..., d_model, n)
            The state after the previous step (:meth:`initial_state` before the first).

        Returns
        -------
        y : Tensor, shape (..., d_model)
        state : Tensor, shape (..., d_model, n)
            The new state; feeding the steps of a sequence one by one gives :meth:`forward`'s output.
        """
        u = u.to(self.log_A_real.dtype)
        lam, _, Bbar = self.discretize()
        state = lam * state + Bbar * u.unsqueeze(-1)
        y = 2 * (state * torch.complex(self.C_re, self.C_im)).sum(-1).real + self.D * u
        return y, state

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, state_dim={self.state_dim}, discretization={self.discretization!r}, "
                f"mode={self.mode!r}")


def _exp_i(rate: torch.Tensor, angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Re`` and ``Im`` of ``exp(rate + i angle)`` for real tensors: ``e^rate cos(angle)``, ``e^rate sin(angle)``."""
    modulus = torch.exp(rate)
    return modulus * torch.cos(angle), modulus * torch.sin(angle)


def _channel_feedthrough(D, batch: tuple, layer: str) -> torch.Tensor:
    """``D`` of SISO channels as a real float64 tensor of shape ``batch`` (from (..., 1, 1), ``batch`` or None)."""
    D = real_feedthrough(D, batch, layer)
    if tuple(D.shape) == batch + (1, 1):
        return D.reshape(batch)
    if tuple(D.shape) == batch:
        return D
    raise ValueError(f"system.D must have shape {batch + (1, 1)} or {batch}, got {tuple(D.shape)}")
