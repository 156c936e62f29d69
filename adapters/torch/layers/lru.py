"""The Linear Recurrent Unit (LRU) as a compressible layer.

Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu, De, "Resurrecting Recurrent Neural Networks for Long
Sequences", ICML 2023 (arXiv 2303.06349).

The compressible-layer protocol
-------------------------------
A layer is compressible by :func:`adapters.torch.compress_` if it has

``state_dim`` (property)
    Its current size, in the units a user passes as ``rank`` (here: complex modes ``n``).
``to_system()``
    Its effective linear time-invariant core as an :class:`lti_reduce.DiagonalSystem`: detached tensors
    on the layer's device, in the layer's (complex) dtype.
``load_system_(system)``
    Writes a (reduced) system of the same kind back in place; parameters are resized in place (the
    ``nn.Parameter`` objects are kept), and optimizer state of the old shape must be reset by whoever holds
    the optimizer (``compress_`` does).

and, so that compressed checkpoints load into a freshly built model, resizes its parameters to the
checkpoint's shapes inside ``load_state_dict``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..scan import MODES
from ._base import (DiagonalLayer, check_option, check_ring, check_sizes, checked_modal, diagonal_feedthrough,
                    real_output_recurrence, ring_log_modulus)

__all__ = ["LRU"]


class LRU(DiagonalLayer):
    """Linear Recurrent Unit: ``x_k = diag(lam) x_{k-1} + gamma * B u_k``, ``y_k = Re(C x_k) + D * u_k``.

    Parameters
    ----------
    d_model : int
        Input and output width ``m = p``.
    d_state : int
        Number of complex modes ``n`` at construction (:attr:`state_dim` tracks the current number).
    r_min, r_max : float
        Eigenvalue moduli are drawn uniformly on the ring ``r_min <= |lam| <= r_max`` (area-uniform, as in
        the paper), ``0 <= r_min < r_max <= 1``.
    max_phase : float
        Eigenvalue phases are drawn uniformly in ``[0, max_phase)``.
    mode : {"auto", "scan", "chunked", "fft", "sequential"}
        How the recurrence is computed (see :mod:`adapters.torch.scan`); all agree to round-off.
    chunk_size : int, optional
        Chunk length of ``mode="chunked"``.
    device, dtype
        Factory arguments; ``dtype`` is the real dtype (float32 or float64); complex quantities use the
        matching complex dtype.

    Attributes
    ----------
    nu_log, theta : Parameter, shape (n,)
        ``lam = exp(-exp(nu_log) + i theta)``, so ``0 < |lam| < 1`` for every value of the parameters.
    gamma_log : Parameter, shape (n,)
        Input normalization ``gamma = exp(gamma_log)``, initialized to ``sqrt(1 - |lam|^2)`` (trainable, as
        in the paper's code).
    B_re, B_im : Parameter, shape (n, d_model)
        Stored input matrix; the effective one is ``diag(gamma) (B_re + i B_im)``.
    C_re, C_im : Parameter, shape (d_model, n)
        Output matrix ``C_re + i C_im``.
    D : Parameter, shape (d_model,)
        Elementwise skip connection.

    Notes
    -----
    *Eigenvalues.* The paper's code stores ``theta_log = log(theta)``, which cannot represent a real
    positive eigenvalue (``log 0 = -inf``) nor negative phases. A reduction can produce any eigenvalue with
    ``0 < |lam| < 1`` (real positive, real negative, either sign of phase), so ``theta`` is stored as is;
    ``nu_log = log(-log|lam|)`` covers every modulus in ``(0, 1)``.

    *Real parameter pairs.* ``B`` and ``C`` are stored as real/imaginary pairs rather than complex
    parameters: every optimizer, gradient clipping, weight decay, DDP bucketing, AMP grad scaling and
    ``torch.compile`` handle real tensors, while complex parameters have had gaps in several of them
    (foreach/fused optimizer kernels, DDP all-reduce, ``clip_grad_norm_``). For Adam-type optimizers real
    pairs are also exactly what ``view_as_real`` would give, so nothing is lost.

    *Precision.* The layer computes in its parameters' dtype with autocast disabled (complex half precision
    is not supported by the scan).

    Examples
    --------
    >>> import torch
    >>> layer = LRU(d_model=8, d_state=16)
    >>> layer(torch.randn(2, 50, 8)).shape
    torch.Size([2, 50, 8])
    >>> layer.state_dim
    16
    """

    #: :meth:`to_system` is the one-step-delayed system of the layer's map (see its Notes); ``compress_``
    #: measures ``gain`` on the map itself, ``(lam, B, C diag(lam), D + Re(C B))``.
    system_convention = "same_step"

    #: The state axis of each state-shaped parameter (checkpoints of another state size load, see
    #: :class:`adapters.torch.ResizableStateMixin`).
    state_parameters = {"nu_log": 0, "theta": 0, "gamma_log": 0, "B_re": 0, "B_im": 0, "C_re": -1, "C_im": -1}

    def __init__(
        self,
        d_model: int,
        d_state: int,
        *,
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
        check_ring(r_min, r_max)
        check_option("mode", mode, MODES)
        self.d_model = int(d_model)
        self.mode = mode
        self.chunk_size = chunk_size
        factory = {"device": device, "dtype": dtype if dtype is not None else torch.get_default_dtype()}
        n, m = int(d_state), self.d_model

        # Area-uniform moduli on the ring, uniform phases (the paper's initialization), drawn in float64.
        log_modulus = ring_log_modulus(n, r_min, r_max, factory["dtype"])
        u2 = torch.rand(n, dtype=torch.float64)
        nu_log = torch.log(-log_modulus)
        self.nu_log = nn.Parameter(nu_log.to(**factory))
        self.theta = nn.Parameter((max_phase * u2).to(**factory))
        self.gamma_log = nn.Parameter(_gamma_log(nu_log).to(**factory))
        self.B_re = nn.Parameter(torch.randn(n, m, **factory) / math.sqrt(2 * m))
        self.B_im = nn.Parameter(torch.randn(n, m, **factory) / math.sqrt(2 * m))
        self.C_re = nn.Parameter(torch.randn(m, n, **factory) / math.sqrt(n))
        self.C_im = nn.Parameter(torch.randn(m, n, **factory) / math.sqrt(n))
        self.D = nn.Parameter(torch.randn(m, **factory))

    # ----------------------------------------------------------------------------------------------- protocol
    @property
    def state_dim(self) -> int:
        """Current number of complex modes ``n``."""
        return self.nu_log.shape[0]

    @property
    def lam(self) -> torch.Tensor:
        """Eigenvalues ``exp(-exp(nu_log) + i theta)``, shape (n,), differentiable."""
        return torch.exp(torch.complex(-torch.exp(self.nu_log), self.theta))

    def effective_B(self) -> torch.Tensor:
        """``diag(gamma) (B_re + i B_im)``, shape (n, d_model), differentiable."""
        gamma = torch.exp(self.gamma_log).unsqueeze(-1)
        return torch.complex(gamma * self.B_re, gamma * self.B_im)

    def to_system(self, differentiable: bool = False):
        """The layer's linear core as ``DiagonalSystem(lam, B, C, D, real_output=True)``.

        Parameters
        ----------
        differentiable : bool
            ``False`` (default): detached copies, for compression. ``True``: tensors still attached to the
            parameters, for regularizers on the system (e.g. a Hankel nuclear norm).

        Returns
        -------
        lti_reduce.DiagonalSystem
            ``lam`` (n,) complex, ``B = diag(gamma)(B_re + i B_im)`` (n, d_model) complex, ``C = C_re + i C_im``
            (d_model, n) complex, ``D = diag(self.D)`` (d_model, d_model) real, ``real_output=True``; on the
            layer's device, complex64 for a float32 layer.

        Notes
        -----
        *Time convention.* The layer computes ``x_k = lam x_{k-1} + B u_k``, ``y_k = Re(C x_k) + D u_k``: the
        input reaches the output in the same step through ``C B``. The returned system, read in the core's
        convention ``x_{k+1} = lam x_k + B u_k``, ``y_k = Re(C x_k) + D u_k``, is the same map delayed by one
        step in its strictly proper part: ``G_layer(z) = z (G_sys(z) - D) + D``. Since ``|z| = 1`` on the
        unit circle, any reduction gives ``||G_layer - G_layer,r||_inf = ||G_sys - G_sys,r||_inf``, so the
        error bounds computed on this system hold for the layer's map exactly, and no division by ``lam``
        (which a conversion to the same-step form would need) is ever done. The Hankel singular values are
        those of this system (Markov parameters ``Re(C lam^(k-1) B)``).

        Raises
        ------
        lti_reduce.UnstableSystemError
            If some ``|lam|`` rounded to 1 in the layer's dtype (possible only for ``nu_log`` below about
            -16.6 in float32, -36.7 in float64).
        """
        return self._system(differentiable, lambda: (self.lam, self.effective_B(), torch.complex(self.C_re, self.C_im),
                                                     torch.diag(self.D)))

    @torch.no_grad()
    def load_system_(self, system, *, real_mode_change: float | None = None) -> "LRU":
        """Replace the layer's core by ``system`` (usually a reduced one), in place.

        Parameters
        ----------
        system : DiagonalSystem-like
            Attributes ``lam`` (r,), ``B`` (r, d_model), ``C`` (d_model, r), ``D`` (d_model, d_model) diagonal,
            (d_model,), or ``None`` (no feedthrough, sets ``D`` to zero), and ``real_output=True``. Tensors or
            arrays, any device and dtype; they are converted to the layer's.
        real_mode_change : float, optional
            Largest H-infinity norm of the change of the layer's map that making real modes trainable may
            cost, in total over the real modes (Notes). Default: ``2**-10`` times the sum over the real modes
            of their peak gains ``||M_k||_2 / (1 - |lam_k|)``. ``0`` loads real modes as they are (frozen).
            :func:`adapters.torch.compress_` passes a budget tied to the cut's own error.

        Returns
        -------
        LRU
            ``self``, whose ``state_dim`` is now ``r`` and whose map is ``y = Re(C x) + D u`` of ``system``
            (up to the real-mode change of the Notes).

        Raises
        ------
        ValueError
            ``real_output`` is not true, shapes do not fit ``d_model``, an eigenvalue is not finite or has
            ``|lam| >= 1`` (no LRU parameter represents it), ``D`` is not diagonal (e.g. after a
            singular-perturbation reduction: the LRU's skip connection is elementwise), or
            ``real_mode_change`` is negative or not finite.

        Notes
        -----
        *In place.* Every state-shaped parameter (``nu_log, theta, gamma_log, B_re, B_im, C_re, C_im``) gets
        the new shape in place (:func:`adapters.torch.set_parameter_`): the ``nn.Parameter`` objects
        and their ``requires_grad`` are kept, so an optimizer, a DDP bucket or a user reference still holds the
        live tensors; their gradients and any optimizer state of the old shape are stale (``compress_`` resets
        the moments of the optimizer it is given). ``D`` keeps its basis and its values are copied. All checks
        run before any parameter changes, so a rejected system leaves the layer untouched.

        *Conversions*, in float64: ``nu_log = log(-log|lam|)``, ``theta = angle(lam)`` in ``(-pi, pi]``,
        ``gamma_log`` reset to ``log sqrt(1 - |lam|^2)`` and ``B_re + i B_im = B / gamma``, so the effective
        ``B`` is exactly ``system.B``. An eigenvalue that is exactly 0 is stored as the smallest normal
        modulus of the layer's dtype.

        *Real modes are made trainable.* A slot computes ``Re(C_k x_k)``, a map that depends only on ``lam_k``
        and ``M_k = C_k B_k`` (p x m, complex): ``G_k(z) = (M_k / (z - lam_k) + conj(M_k) / (z - conj(lam_k)))
        / 2``. A real eigenvalue ``a`` with a real ``M_k`` (what a modal form gives) is a fixed point of the
        conjugation ``(lam, B, C) -> (conj lam, conj B, conj C)``, under which the loss is even: the gradients
        of ``theta``, ``B_im`` and ``C_im`` vanish there and the mode stays real for ever. Two steps move it
        off that point:

        1. *A map-exact shear.* With ``theta = 0`` (or ``pi``) the slot is the real 2-state system
           ``A = a I_2``, ``B2 = [Re B; Im B]``, ``C2 = [Re C, -Im C]``; any invertible ``T`` gives the same
           map with ``T B2, C2 T^-1``. After a phase rotation ``B -> e^{-i phi} B``, ``C -> e^{i phi} C``
           (exact for every slot) that makes ``B`` as real as possible, the shear ``T = [[1, 0], [1, 1]]``
           gives ``B' = Re B + i (Re B + Im B)``, ``C' = (Re C + Im C) + i Im C``: for a real mode
           (``Im B = Im C = 0``) that is ``B' = b (1 + i)``, ``C' = c``, so ``Im M' = c b = Re M``: ``theta``
           and ``C_im`` get gradients of the size a fresh mode's have, and the map is unchanged.
        2. *A small rotation* ``theta -> theta + eps_k`` (``lam' = a e^{i eps}``), so that ``B_im`` is
           observed too. With ``R = Re M'``, ``I = Im M'`` the slot's map changes by exactly

           ``G_eps(z) - G_0(z) = a [R (cos eps - 1)(z + a) - I sin(eps) (z - a)] / [(z - a)(z - lam')(z - conj lam')]``

           and since ``|z - a|, |z - lam'| >= 1 - |a|`` and ``|z + a| <= 1 + |a|`` on ``|z| = 1``,

           ``||G_eps - G_0||_inf <= |a| (||R||_2 (1 - cos eps)(1 + |a|) / (1 - |a|)^3 + ||I||_2 |sin eps| / (1 - |a|)^2)``.

           Each of the ``q`` real modes gets ``eps_k`` with this bound (with ``1 - cos eps <= eps^2 / 2``,
           ``|sin eps| <= eps``) equal to ``real_mode_change / q`` (and ``eps_k <= 1 - |a|``), so by the
           triangle inequality the whole map changes by at most ``real_mode_change`` in the H-infinity norm.
           The time convention of :meth:`to_system` multiplies the strictly proper part by ``z``, which keeps
           every H-infinity norm of a change; ``compress_`` measures its ``error`` on the loaded layer, so
           this change is inside it.

        The bound is for the exact rotation; a float32 layer stores ``theta`` rounded (near ``pi`` its
        spacing is ``2.4e-7``, and ``pi`` itself is not representable, which alone turns a negative real
        eigenvalue by ``8.7e-8``), and the ``error`` ``compress_`` measures on the loaded layer includes
        that rounding.

        A real mode is a slot with ``|sin theta| <= 8 eps`` whose ``B_k`` and ``C_k``, after the phase
        rotation, have imaginary parts below ``8 eps`` of their norms (``eps`` of the layer's dtype), i.e. a
        real ``M_k``; complex modes are loaded exactly. ``M_k`` has rank one, so all of this costs
        ``O(r (m + p))``.
        """
        new = _unfreeze_real_modes(self._parameters_for(system), real_mode_change)
        D = new.pop("D")  # same shape, same basis: values copied, Parameter and optimizer state kept
        self._store_(new, D)
        return self

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``y = Re(C x) + D * u`` for ``u`` of shape (..., L, d_model); returns (..., L, d_model)."""
        self._check_input(u)
        with torch.autocast(device_type=u.device.type, enabled=False):
            u = u.to(self.B_re.dtype)
            gamma = torch.exp(self.gamma_log).unsqueeze(-1)
            y = real_output_recurrence(u, self.lam, gamma * self.B_re, gamma * self.B_im, self.C_re, self.C_im,
                                       mode=self.mode, chunk_size=self.chunk_size)
            return y + self.D * u

    # ----------------------------------------------------------------------------------------------- loading
    def _check_checkpoint(self, state_dict, prefix):
        """Refuse a checkpoint whose eigenvalues, as this layer computes them, break the stability rule.

        ``|lam| = exp(-exp(nu_log))`` is below 1 for every finite ``nu_log``, but rounds to 1 in the
        layer's dtype once ``nu_log`` is below about -16.6 (float32) or -36.7 (float64); such a layer would
        load, then fail at its next ``to_system()`` (the rule ``|lam| < 1 - 1e-12`` of every core function).
        """
        key = prefix + "nu_log"
        nu_log = state_dict.get(key)
        if not isinstance(nu_log, torch.Tensor) or nu_log.numel() == 0 or not nu_log.is_floating_point():
            return
        from lti_reduce import UnstableSystemError
        from lti_reduce.validate import check_stable_eigenvalues

        dtype = self.nu_log.dtype
        modulus = torch.exp(-torch.exp(nu_log.detach().to(device="cpu", dtype=dtype)))
        try:
            check_stable_eigenvalues(modulus, "lam")
        except UnstableSystemError:
            low = dtype in (torch.float32, torch.float16, torch.bfloat16)
            floor = -16.0 if low else -27.0
            raise UnstableSystemError(
                f"checkpoint entry {key!r}: its smallest value {float(nu_log.min()):.6g} gives |lam| = "
                f"exp(-exp(nu_log)) = {float(modulus.max()):.17g} in {str(dtype).replace('torch.', '')}, which breaks "
                "the library's stability rule |lam| < 1 - 1e-12 (such a mode no longer decays, and to_system() and "
                f"compress_ would refuse the layer). Clamp it before loading: state_dict[{key!r}].clamp_(min={floor})"
                + (", or load into a float64 layer." if low else ".")) from None

    def _parameters_for(self, system) -> dict[str, torch.Tensor]:
        """Validated new parameter values for :meth:`load_system_` (nothing is modified here)."""
        real = self.B_re.dtype
        lam, B, C = checked_modal(system, self.d_model, self.d_model, "LRU", self.B_re.device)
        D = diagonal_feedthrough(system, self.d_model, real, "LRU")
        modulus = lam.abs().to(torch.float64).clamp(min=torch.finfo(real).tiny)
        log_modulus = torch.log(modulus)
        gamma_log = _gamma_log(torch.log(-log_modulus))
        b_stored = B / torch.exp(gamma_log).unsqueeze(-1)
        return {
            "nu_log": torch.log(-log_modulus).to(real),
            "theta": torch.angle(lam).to(real),
            "gamma_log": gamma_log.to(real),
            "B_re": b_stored.real.to(real).contiguous(),
            "B_im": b_stored.imag.to(real).contiguous(),
            "C_re": C.real.to(real).contiguous(),
            "C_im": C.imag.to(real).contiguous(),
            "D": D.to(real),
        }


def _gamma_log(nu_log: torch.Tensor) -> torch.Tensor:
    """``log sqrt(1 - |lam|^2)`` with ``|lam| = exp(-exp(nu_log))``, accurate for ``|lam|`` near 1."""
    return 0.5 * torch.log(-torch.expm1(-2 * torch.exp(nu_log)))


def _rank2_norm(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Spectral norms of ``U V^T`` for real ``U`` (..., p, 2), ``V`` (..., m, 2), without forming the product.

    The nonzero eigenvalues of ``(U V^T)^T (U V^T)`` are those of the 2 x 2 product ``(U^T U)(V^T V)``.
    """
    P = (U.mT @ U) @ (V.mT @ V)
    tr = P[..., 0, 0] + P[..., 1, 1]
    det = P[..., 0, 0] * P[..., 1, 1] - P[..., 0, 1] * P[..., 1, 0]
    return torch.sqrt((0.5 * (tr + torch.sqrt((tr * tr - 4 * det).clamp(min=0)))).clamp(min=0))


def _unfreeze_real_modes(new: dict, real_mode_change: float | None) -> dict:
    """Move the real modes of :meth:`LRU.load_system_`'s parameters off the conjugation-symmetric point.

    ``new`` holds the layer's parameter values (its real dtype) from ``LRU._parameters_for``; the result
    holds the same map up to the bounded change derived in the Notes of :meth:`LRU.load_system_`. Every
    mode's ``M_k = C_k B_k`` has rank one, so its norms come from the rows and columns (O(r (m + p))).
    """
    if real_mode_change is not None:
        bad = isinstance(real_mode_change, bool) or not isinstance(real_mode_change, (int, float))
        if bad or not math.isfinite(float(real_mode_change)) or float(real_mode_change) < 0:
            raise ValueError(f"real_mode_change must be a finite number >= 0 (an H-infinity budget for making "
                             f"real modes trainable; 0 leaves them as they are), got {real_mode_change!r}.")
        if float(real_mode_change) == 0.0:
            return new
    real = new["theta"].dtype
    f64 = {"dtype": torch.float64}
    theta = new["theta"].to(**f64)
    gamma = torch.exp(new["gamma_log"].to(**f64)).unsqueeze(-1)
    B = torch.complex(new["B_re"].to(**f64), new["B_im"].to(**f64)) * gamma  # (r, m), effective
    C = torch.complex(new["C_re"].to(**f64), new["C_im"].to(**f64)).mT  # (r, p): row k is C[:, k]
    # Remove each mode's free phase (x_k -> e^{i phi} x_k is exact): B as real as possible. A real M_k = c b^T
    # (c, b complex) is alpha c' (b' / alpha)^T with c', b' real, so then both B_k and C_k are real.
    phase = torch.exp(-0.5j * torch.angle((B * B).sum(-1)))  # (r,)
    Bp, Cp = B * phase.unsqueeze(-1), C / phase.unsqueeze(-1)
    tiny = 8 * torch.finfo(real).eps
    b_norm, c_norm = torch.linalg.vector_norm(Bp, dim=-1), torch.linalg.vector_norm(Cp, dim=-1)
    is_real = ((theta.sin().abs() <= tiny) & (b_norm > 0) & (c_norm > 0)
               & (torch.linalg.vector_norm(Bp.imag, dim=-1) <= tiny * b_norm)
               & (torch.linalg.vector_norm(Cp.imag, dim=-1) <= tiny * c_norm))
    q = int(is_real.sum())
    if q == 0:
        return new
    idx = torch.nonzero(is_real).squeeze(-1)
    a = torch.exp(-torch.exp(new["nu_log"].to(**f64)))[idx] * torch.cos(theta[idx]).sign()
    # 1. Exact: the shear T = [[1, 0], [1, 1]] of the slot's two real states.
    Bk, Ck = Bp[idx], Cp[idx]
    Bk = torch.complex(Bk.real, Bk.real + Bk.imag)
    Ck = torch.complex(Ck.real + Ck.imag, Ck.imag)
    # 2. A rotation eps_k per mode, with its H-infinity bound equal to the budget's share.
    # Re M = c_re b_re^T - c_im b_im^T and Im M = c_re b_im^T + c_im b_re^T have rank <= 2.
    cr, ci, br, bi = Ck.real, Ck.imag, Bk.real, Bk.imag
    R = _rank2_norm(torch.stack([cr, -ci], -1), torch.stack([br, bi], -1))
    I = _rank2_norm(torch.stack([cr, ci], -1), torch.stack([bi, br], -1))
    absa, gap = a.abs(), 1 - a.abs()
    if real_mode_change is None:
        real_mode_change = float((R / gap).sum()) * 2.0**-10
    share = float(real_mode_change) / q
    alpha = absa * R * (1 + absa) / (2 * gap**3)
    beta = absa * I / gap**2
    root = torch.sqrt(beta**2 + 4 * alpha * share)
    eps = torch.where(beta + root > 0, 2 * share / (beta + root).clamp(min=torch.finfo(torch.float64).tiny), gap)
    eps = torch.minimum(eps, gap)
    out = dict(new)
    theta = theta.clone()
    theta[idx] = theta[idx] + eps
    B, C = B.clone(), C.clone()
    B[idx], C[idx] = Bk, Ck
    B, C = B / gamma, C.mT
    out["theta"] = theta.to(real)
    out["B_re"], out["B_im"] = B.real.to(real).contiguous(), B.imag.to(real).contiguous()
    out["C_re"], out["C_im"] = C.real.to(real).contiguous(), C.imag.to(real).contiguous()
    return out
