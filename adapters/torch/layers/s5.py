"""The S5 layer (simplified state-space layer) as a compressible layer.

Smith, Warrington, Linderman, "Simplified State Space Layers for Sequence Modeling", ICLR 2023
(arXiv 2208.04933).

One multi-input multi-output system per layer: a complex diagonal continuous-time state matrix
``Lambda``, a learnable timescale ``dt`` per state, zero-order-hold discretization and a parallel scan:

.. math::

    \\bar\\Lambda = e^{\\Lambda \\Delta}, \\qquad
    \\bar B = \\frac{\\bar\\Lambda - 1}{\\Lambda} B, \\qquad
    x_k = \\bar\\Lambda x_{k-1} + \\bar B u_k, \\qquad y_k = \\operatorname{Re}(C x_k) + D u_k .

The state is stored with conjugate symmetry: ``d_state = n`` complex modes carry a real state of size
``P = 2n`` (the paper's ``P``; its output ``2 Re(C x)`` is ``Re(C x)`` here, with the factor 2 inside ``C``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..scan import MODES
from ._base import (DiagonalLayer, check_option, check_ring, check_sizes, check_timescales, checked_modal,
                    diagonal_feedthrough, log_timescales, nearest_branch, real_output_recurrence, ring_log_modulus)

__all__ = ["S5", "hippo_n_eigendecomposition"]

_INITS = ("hippo", "ring")


def hippo_n_eigendecomposition(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of the normal part of HiPPO-LegS (the "HiPPO-N" matrix), in float64.

    Parameters
    ----------
    size : int
        Order ``N`` of the HiPPO-LegS matrix (even for a conjugate-symmetric half).

    Returns
    -------
    Lambda : Tensor, shape (N,), complex128
        Eigenvalues ``-1/2 + i w_j``, sorted by ``w_j`` ascending (the first ``N/2`` have ``w_j < 0``, the
        rest are their conjugates).
    V : Tensor, shape (N, N), complex128
        Unitary eigenvectors, ``S = V diag(Lambda) V^H``.

    Notes
    -----
    HiPPO-LegS is ``A_nk = -sqrt(2n+1) sqrt(2k+1)`` for ``n > k``, ``A_nn = -(n+1)``, ``0`` above the
    diagonal. With ``p_n = sqrt(n + 1/2)``, ``S = A + p p^T`` is ``-1/2 I`` plus a skew-symmetric matrix, hence
    normal: its eigenvalues are ``-1/2 + i w`` with ``w`` the eigenvalues of the Hermitian ``-i (S + I/2)``
    (Gu, Goel, Re 2022, arXiv 2111.00396; S5 section 4.1 and its code ``make_DPLR_HiPPO``).
    """
    idx = torch.arange(size, dtype=torch.float64)
    q = torch.sqrt(2 * idx + 1)
    A = -(torch.tril(q[:, None] * q[None, :]) - torch.diag(idx))
    p = torch.sqrt(idx + 0.5)
    S = A + p[:, None] * p[None, :]
    w, V = torch.linalg.eigh(-1j * (S + 0.5 * torch.eye(size, dtype=torch.float64)).to(torch.complex128))
    return torch.complex(torch.full_like(w, -0.5), w), V


class S5(DiagonalLayer):
    """S5: ``x_k = exp(Lambda dt) x_{k-1} + Bbar u_k``, ``y_k = Re(C x_k) + D * u_k``, one MIMO system.

    Parameters
    ----------
    d_model : int
        Input and output width ``H``.
    d_state : int
        Number of complex modes ``n`` at construction (a real state of size ``P = 2n``); :attr:`state_dim`
        tracks the current number.
    init : {"hippo", "ring"}
        ``"hippo"`` (the paper's): ``Lambda`` from the normal part of HiPPO-LegS of size ``2n / blocks``,
        repeated on ``blocks`` diagonal blocks, the eigenvalues with negative imaginary part kept (one per
        conjugate pair); ``B = V^{-1} B_0`` and ``C = C_0 V`` for Gaussian ``B_0, C_0`` and the eigenvectors
        ``V``. ``"ring"`` (the LRU's): discrete eigenvalues area-uniform on the ring
        ``r_min <= |lam| <= r_max`` with phases in ``[0, max_phase)``, ``Lambda = log(lam) / dt``, and
        ``Bbar`` normalized by ``sqrt(1 - |lam|^2)``.
    blocks : int
        Number of HiPPO blocks for ``init="hippo"``; must divide ``d_state``.
    dt_min, dt_max : float
        ``log dt`` is drawn uniformly in ``[log dt_min, log dt_max]``, one timescale per state.
    r_min, r_max, max_phase : float
        The ring of ``init="ring"``, ``0 <= r_min < r_max <= 1``.
    mode : {"auto", "scan", "chunked", "fft", "sequential"}
        How the recurrence is computed (see :mod:`adapters.torch.scan`); all agree to round-off.
    chunk_size : int, optional
        Chunk length of ``mode="chunked"``.
    device, dtype
        Factory arguments; ``dtype`` is the real dtype (float32 or float64).

    Attributes
    ----------
    Lambda_re_log, Lambda_im : Parameter, shape (n,)
        ``Lambda = -exp(Lambda_re_log) + i Lambda_im``: ``Re Lambda < 0`` for every value, so
        ``|exp(Lambda dt)| < 1`` always (the paper clips ``Re Lambda`` instead).
    log_dt : Parameter, shape (n,)
        ``dt = exp(log_dt)``, one timescale per state.
    B_re, B_im : Parameter, shape (n, d_model)
        Continuous-time input matrix ``B``.
    C_re, C_im : Parameter, shape (d_model, n)
        Output matrix ``C``.
    D : Parameter, shape (d_model,)
        Elementwise skip connection (the paper's ``D``).

    Notes
    -----
    *Parameters after a cut.* A reduced system comes back in discrete modal form ``(lam_j, Bbar_j, C_j)``:
    its modes are mixtures of the old ones and have no timescale of their own. :meth:`load_system_` gives
    each new mode ``j`` the timescale ``dt_j`` of the *nearest* current discrete eigenvalue
    (``argmin_i |lam_j - lam_old_i|``) and stores

    .. math::

        \\Lambda_j = \\frac{\\log|\\lambda_j| + i(\\arg\\lambda_j + 2\\pi k_j)}{\\Delta_j}, \\qquad
        B_j = \\frac{\\Lambda_j}{e^{\\Lambda_j \\Delta_j} - 1}\\,\\bar B_j,

    with the branch ``k_j`` that puts ``Im Lambda_j dt_j`` nearest to that old mode's. Then
    ``exp(Lambda_j dt_j) = lam_j`` and ``(exp(Lambda_j dt_j) - 1) / Lambda_j * B_j = Bbar_j`` exactly (up to
    round-off): the layer computes the reduced map, and ``Re Lambda_j = log|lam_j| / dt_j < 0``, so the new
    parameters are as valid as trained ones. A kept mode that barely moved keeps its timescale and branch,
    so it keeps its learning dynamics (``d lam / d Lambda = dt lam``); loading the layer's own system
    reproduces its parameters. ``exp(z) - 1`` is evaluated with ``expm1`` (no cancellation for small
    ``Lambda dt``). ``D`` is kept (truncation does not change it).

    *Time convention.* As for :class:`adapters.torch.LRU`: the input reaches the output in the same step,
    and :meth:`to_system` returns ``(lam, Bbar, C, D)`` read in the core's convention, the same map up to a
    one-step delay of its strictly proper part, which leaves every H-infinity error unchanged.

    *Checkpoints.* ``load_state_dict`` resizes the state-shaped parameters to a checkpoint's state size
    (:class:`adapters.torch.ResizableStateMixin`), so a compressed checkpoint loads into a freshly built
    layer.

    Examples
    --------
    >>> import torch
    >>> layer = S5(d_model=8, d_state=16)
    >>> layer(torch.randn(2, 50, 8)).shape
    torch.Size([2, 50, 8])
    >>> layer.state_dim
    16
    """

    state_parameters = {"Lambda_re_log": 0, "Lambda_im": 0, "log_dt": 0, "B_re": 0, "B_im": 0, "C_re": -1,
                        "C_im": -1}

    def __init__(
        self,
        d_model: int,
        d_state: int,
        *,
        init: str = "hippo",
        blocks: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 2 * math.pi,
        mode: str = "auto",
        chunk_size: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_sizes(d_model, d_state)
        check_option("init", init, _INITS)
        if int(blocks) < 1 or int(d_state) % int(blocks):
            raise ValueError(f"blocks must be a positive divisor of d_state={d_state}, got {blocks}")
        check_timescales(dt_min, dt_max)
        check_ring(r_min, r_max)
        check_option("mode", mode, MODES)
        self.d_model, self.mode, self.chunk_size = int(d_model), mode, chunk_size
        real = dtype if dtype is not None else torch.get_default_dtype()
        n, m = int(d_state), self.d_model
        f64, c128 = torch.float64, torch.complex128

        log_dt = log_timescales(n, dt_min, dt_max)
        dt = torch.exp(log_dt)
        if init == "hippo":
            size = 2 * n // int(blocks)
            lam_c, V = hippo_n_eigendecomposition(size)
            lam_c, V = lam_c[: size // 2], V[:, : size // 2]  # one eigenvalue per conjugate pair
            Lambda = lam_c.repeat(int(blocks))
            Vb = torch.block_diag(*[V] * int(blocks))  # (2n, n), orthonormal columns
            B0 = torch.randn(2 * n, m, dtype=f64) / math.sqrt(m)
            C0 = torch.complex(torch.randn(m, 2 * n, dtype=f64), torch.randn(m, 2 * n, dtype=f64)) / math.sqrt(4 * n)
            B = Vb.conj().T @ B0.to(c128)
            C = C0 @ Vb
        else:
            log_modulus = ring_log_modulus(n, r_min, r_max, real)
            phase = max_phase * torch.rand(n, dtype=f64)
            Lambda = torch.complex(log_modulus, phase) / dt
            gamma = torch.sqrt(-torch.expm1(2 * log_modulus))
            Bbar = torch.complex(torch.randn(n, m, dtype=f64), torch.randn(n, m, dtype=f64)) / math.sqrt(2 * m)
            B = Bbar * (gamma * Lambda / torch.expm1(Lambda * dt)).unsqueeze(-1)
            C = torch.complex(torch.randn(m, n, dtype=f64), torch.randn(m, n, dtype=f64)) / math.sqrt(n)
        factory = {"device": device, "dtype": real}
        self.Lambda_re_log = nn.Parameter(torch.log(-Lambda.real).to(**factory))
        self.Lambda_im = nn.Parameter(Lambda.imag.to(**factory))
        self.log_dt = nn.Parameter(log_dt.to(**factory))
        self.B_re = nn.Parameter(B.real.contiguous().to(**factory))
        self.B_im = nn.Parameter(B.imag.contiguous().to(**factory))
        self.C_re = nn.Parameter(C.real.contiguous().to(**factory))
        self.C_im = nn.Parameter(C.imag.contiguous().to(**factory))
        self.D = nn.Parameter(torch.randn(m, **factory))

    # ----------------------------------------------------------------------------------------------- protocol
    @property
    def state_dim(self) -> int:
        """Current number of complex modes ``n``."""
        return self.Lambda_re_log.shape[0]

    @property
    def Lambda(self) -> torch.Tensor:
        """Continuous-time eigenvalues ``-exp(Lambda_re_log) + i Lambda_im``, shape (n,), differentiable."""
        return torch.complex(-torch.exp(self.Lambda_re_log), self.Lambda_im)

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-order hold: ``lam = exp(Lambda dt)`` (n,) and ``Bbar = (lam - 1) / Lambda * B`` (n, d_model).

        Differentiable; ``lam - 1`` is computed as ``expm1(Lambda dt)``.
        """
        Lambda = self.Lambda
        z = Lambda * torch.exp(self.log_dt)
        factor = (torch.expm1(z) / Lambda).unsqueeze(-1)
        return torch.exp(z), factor * torch.complex(self.B_re, self.B_im)

    def to_system(self, differentiable: bool = False):
        """The layer's discrete linear core as ``DiagonalSystem(lam, Bbar, C, D, real_output=True)``.

        Parameters
        ----------
        differentiable : bool
            ``False`` (default): detached copies, for compression. ``True``: tensors attached to the
            parameters (for regularizers such as :func:`adapters.torch.hankel_nuclear_norm`).

        Returns
        -------
        lti_reduce.DiagonalSystem
            ``lam = exp(Lambda dt)`` (n,), ``Bbar`` (n, d_model), ``C`` (d_model, n) complex,
            ``D = diag(self.D)`` (d_model, d_model) real; the map the layer computes (see the class Notes
            on the time convention), on the layer's device, complex64 for a float32 layer.

        Raises
        ------
        lti_reduce.UnstableSystemError
            If some ``|lam|`` rounded to 1 in the layer's dtype (``Re Lambda dt`` below round-off).
        """
        return self._system(differentiable, lambda: (*self.discretize(), torch.complex(self.C_re, self.C_im),
                                                     torch.diag(self.D)))

    @torch.no_grad()
    def load_system_(self, system) -> "S5":
        """Replace the layer's core by the discrete ``system`` (usually a reduced one), in place.

        Parameters
        ----------
        system : DiagonalSystem-like
            ``lam`` (r,), ``B`` (r, d_model), ``C`` (d_model, r), ``D`` (d_model, d_model) diagonal,
            (d_model,) or ``None`` (no feedthrough), ``real_output=True``; tensors or arrays, any device
            and dtype.

        Returns
        -------
        S5
            ``self``, with ``state_dim == r``, computing ``y = Re(C x) + D u`` of ``system``.

        Raises
        ------
        ValueError
            ``real_output`` is not true, shapes do not fit, a value is not finite, some ``|lam| >= 1``, or
            ``D`` is not diagonal (the skip connection is elementwise; reduce by truncation, not SPA).

        Notes
        -----
        The timescales and continuous eigenvalues are chosen as in the class Notes. The parameters are
        resized in place (:func:`adapters.torch.set_parameter_`): the ``nn.Parameter`` objects,
        and whatever holds them, are kept; their gradients are dropped. All checks run before anything
        changes, so a rejected system leaves the layer untouched. An eigenvalue exactly 0 is stored with
        the smallest normal modulus of the layer's dtype.
        """
        lam, B, C = checked_modal(system, self.d_model, self.d_model, "S5", self.B_re.device)
        D = diagonal_feedthrough(system, self.d_model, self.B_re.dtype, "S5")
        real = self.B_re.dtype
        old_lam, _ = self.discretize()
        old_dt = torch.exp(self.log_dt).to(torch.float64)
        old_angle = (self.Lambda_im.to(torch.float64) * old_dt)
        nearest = (lam[:, None] - old_lam.to(torch.complex128)[None, :]).abs().argmin(dim=1)
        dt = old_dt[nearest]
        log_modulus = torch.log(lam.abs().clamp(min=torch.finfo(real).tiny))
        angle = nearest_branch(torch.angle(lam), old_angle[nearest])
        Lambda = torch.complex(log_modulus, angle) / dt
        B_cont = B * (Lambda / torch.expm1(Lambda * dt)).unsqueeze(-1)
        self._store_({
            "Lambda_re_log": torch.log(-Lambda.real), "Lambda_im": Lambda.imag, "log_dt": torch.log(dt),
            "B_re": B_cont.real, "B_im": B_cont.imag, "C_re": C.real, "C_im": C.imag,
        }, D)
        return self

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``y = Re(C x) + D * u`` for ``u`` of shape (..., L, d_model); returns (..., L, d_model)."""
        self._check_input(u)
        with torch.autocast(device_type=u.device.type, enabled=False):
            u = u.to(self.B_re.dtype)
            lam, Bbar = self.discretize()
            y = real_output_recurrence(u, lam, Bbar.real, Bbar.imag, self.C_re, self.C_im, mode=self.mode,
                                       chunk_size=self.chunk_size)
            return y + self.D * u
