"""What the reference layers (LRU, S5, S4D) share: one base class and the checks of what they are given.

All three store a diagonal state as real parameters (eigenvalues through a parameterization that is
stable for every value, ``B`` and ``C`` as real/imaginary pairs), so they do the same things around
their own formulas:

* check their constructor options and their input the same way;
* keep the first sequences of their last input for the cut's output certificate;
* take a (reduced) modal system ``(lam, B, C, D)`` only after checking all of it (real output, shapes,
  finite, stable, elementwise ``D``), then write every state-shaped parameter in place
  (:func:`set_parameter_` keeps the ``nn.Parameter`` objects), so a rejected system changes nothing;
* load a checkpoint of another state size (:class:`~adapters.torch.ResizableStateMixin`).

A new diagonal layer subclasses :class:`DiagonalLayer`, names its state-shaped parameters in
``state_parameters`` and writes ``state_dim``, ``to_system``, ``load_system_`` and ``forward``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..scan import linear_recurrence
from ._params import set_parameter_
from .resizing import ResizableStateMixin

__all__: list[str] = []

#: Largest number of tokens (sequence steps summed over the kept sequences) a layer keeps of its last
#: input: whole sequences, at least one. Two forward passes on them cost a small fraction of a step.
_MAX_TOKENS = 1024


def remember_input_(layer, u: torch.Tensor) -> None:
    """Keep a detached copy of the first sequences of ``u`` on ``layer`` (for the output certificate).

    Parameters
    ----------
    layer : nn.Module
        A compressible layer, called from its ``forward``.
    u : Tensor, shape (..., L, d)
        The layer's input. The leading dimensions are flattened and the first
        ``max(1, 1024 // L)`` sequences kept (a copy, so the batch itself is not held).
    """
    if u.dim() < 2 or (hasattr(torch, "compiler") and torch.compiler.is_compiling()):
        return
    seq = u.detach().reshape(-1, u.shape[-2], u.shape[-1])
    keep = max(1, _MAX_TOKENS // max(1, u.shape[-2]))
    layer._last_input = seq[:keep].clone()


class DiagonalLayer(ResizableStateMixin, nn.Module):
    """Base of the reference diagonal layers: input checks, in-place loading, checkpoint resizing.

    Subclasses set ``self.d_model`` (and ``self.mode``) in ``__init__``, list their state-shaped
    parameters in ``state_parameters`` (name -> state axis, see
    :func:`~adapters.torch.resize_state_from_checkpoint_`) and implement the layer protocol
    (``state_dim``, ``to_system``, ``load_system_``) and ``forward``.
    """

    d_model: int
    mode: str

    def _check_input(self, u: torch.Tensor) -> None:
        """Refuse an input that is not (..., L, d_model); keep its first sequences for the certificate."""
        if u.dim() < 2 or u.shape[-1] != self.d_model:
            raise ValueError(f"{type(self).__name__} expects input of shape (..., L, {self.d_model}), "
                             f"got {tuple(u.shape)}")
        remember_input_(self, u)  # for compress_'s output certificate

    def _store_(self, values: dict[str, torch.Tensor], D: torch.Tensor) -> None:
        """Write new state-shaped parameters (any shapes) and the skip connection ``D``, in place.

        ``values`` are converted to the layer's real dtype and all checked finite before anything is
        written; ``D`` keeps its shape (its values are copied, so its optimizer state is kept).
        """
        real = self.D.dtype
        values = {name: value.to(real) for name, value in values.items()}
        if not all(bool(torch.isfinite(v).all()) for v in values.values()):
            layer = type(self).__name__
            raise ValueError(f"{layer}.load_system_: the system's modes give non-finite {layer} parameters in "
                             f"{real} (an eigenvalue too close to 0 or 1 for this dtype); nothing was changed")
        for name, value in values.items():
            set_parameter_(self, name, value.contiguous())
        self.D.copy_(D)

    def _system(self, differentiable: bool, parts):
        """``DiagonalSystem(*parts(), real_output=True)``: detached copies, or attached when ``differentiable``.

        ``parts`` computes ``(lam, B, C, D)`` from the parameters; it runs with gradients enabled only for a
        differentiable system (a regularizer's), so a compression's system builds no autograd graph.
        """
        from lti_reduce import DiagonalSystem  # the core is imported only when a system is needed

        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            lam, B, C, D = parts()
        if not differentiable:
            lam, B, C, D = (t.detach().clone() for t in (lam, B, C, D))
        return DiagonalSystem(lam, B, C, D, real_output=True)

    def _check_checkpoint(self, state_dict, prefix: str) -> None:
        """Refuse a checkpoint this layer cannot hold, before anything is resized (default: accept)."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        self._check_checkpoint(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, state_dim={self.state_dim}, mode={self.mode!r}"


# ------------------------------------------------------------------------------------------------ forward
def real_output_recurrence(u, lam, B_re, B_im, C_re, C_im, *, mode: str, chunk_size: int | None = None):
    """``y_k = Re(C x_k)`` with ``x_k = diag(lam) x_{k-1} + B u_k``, for a real input.

    Parameters
    ----------
    u : Tensor, shape (..., L, m)
        Real input.
    lam : Tensor, shape (n,)
        Complex eigenvalues.
    B_re, B_im : Tensor, shape (n, m)
        Real and imaginary parts of the input matrix.
    C_re, C_im : Tensor, shape (p, n)
        Real and imaginary parts of the output matrix.
    mode, chunk_size
        How :func:`adapters.torch.scan.linear_recurrence` runs the recurrence.

    Returns
    -------
    Tensor, shape (..., L, p)
        Real output.

    Notes
    -----
    ``B u`` and ``Re(C x) = C_re Re(x) - C_im Im(x)`` are each one real matrix product over
    interleaved ``(re, im)`` pairs, which view as complex without a copy.
    """
    n, m = B_re.shape
    weight_in = torch.stack([B_re, B_im], dim=1).reshape(2 * n, m)  # rows (re_1, im_1, re_2, ...)
    bu = torch.view_as_complex(torch.matmul(u, weight_in.mT).unflatten(-1, (n, 2)))
    x = linear_recurrence(lam, bu, mode=mode, chunk_size=chunk_size)
    weight_out = torch.stack([C_re, -C_im], dim=-1).reshape(C_re.shape[0], 2 * n)
    return torch.matmul(torch.view_as_real(x).flatten(-2), weight_out.mT)


# ------------------------------------------------------------------------------------------- constructors
def check_sizes(d_model, d_state) -> None:
    """``d_model`` and ``d_state`` must be positive integers."""
    if int(d_model) < 1 or int(d_state) < 1:
        raise ValueError(f"d_model and d_state must be positive integers, got {d_model} and {d_state}")


def check_option(name: str, value, choices) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_ring(r_min: float, r_max: float) -> None:
    """The ring of initial eigenvalue moduli must lie in the closed unit disc: ``0 <= r_min < r_max <= 1``."""
    if not 0.0 <= r_min < r_max <= 1.0:
        raise ValueError(f"need 0 <= r_min < r_max <= 1 for a stable layer, got r_min={r_min}, r_max={r_max}")


def check_timescales(dt_min: float, dt_max: float) -> None:
    """The range of initial time steps must be positive: ``0 < dt_min <= dt_max``."""
    if not 0.0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")


def ring_log_modulus(n: int, r_min: float, r_max: float, dtype: torch.dtype) -> torch.Tensor:
    """``log|lam|`` of ``n`` moduli drawn area-uniformly on the ring ``r_min <= |lam| <= r_max``, float64.

    Orvieto et al. 2023, section 3.2: ``|lam|^2`` uniform on ``[r_min^2, r_max^2]``. The result is at
    most ``-eps`` of ``dtype``, so ``r_max = 1`` still gives ``|lam| < 1`` after rounding to the layer's
    dtype. Draws ``n`` numbers from torch's generator.
    """
    u = torch.rand(n, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    log_modulus = 0.5 * torch.log(u * (r_max**2 - r_min**2) + r_min**2)
    return log_modulus.clamp(max=-torch.finfo(dtype).eps)


def log_timescales(count: int, dt_min: float, dt_max: float) -> torch.Tensor:
    """``log dt`` drawn uniformly in ``[log dt_min, log dt_max]``, shape (count,), float64."""
    return math.log(dt_min) + torch.rand(count, dtype=torch.float64) * (math.log(dt_max) - math.log(dt_min))


# ------------------------------------------------------------------------------------------ loading systems
def nearest_branch(angle: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``angle + 2 pi k`` with the integer ``k`` that puts it nearest to ``reference`` (elementwise)."""
    return angle + 2 * math.pi * torch.round((reference - angle) / (2 * math.pi))


def check_real_output(system, layer: str, output: str = "Re(C x)") -> None:
    """A layer computing ``y = Re(C x) + D u`` loads only systems with ``real_output=True``."""
    if not getattr(system, "real_output", False):
        raise ValueError(
            f"{layer}.load_system_ needs a system with real_output=True (the layer computes y = {output} + D u); "
            "got real_output=False. Build the system with real_output=True.")


def checked_modal(system, m: int, p: int, layer: str, device):
    """``lam`` (r,), ``B`` (r, m), ``C`` (p, r) of a real-output modal system, validated, in complex128."""
    check_real_output(system, layer)
    work = {"device": device, "dtype": torch.complex128}
    lam, B, C = (torch.as_tensor(getattr(system, k)).to(**work) for k in ("lam", "B", "C"))
    if lam.dim() != 1 or lam.shape[0] < 1:
        raise ValueError(f"system.lam must have shape (r,) with r >= 1, got {tuple(lam.shape)}")
    r = lam.shape[0]
    if tuple(B.shape) != (r, m) or tuple(C.shape) != (p, r):
        raise ValueError(f"system.B and system.C must have shapes ({r}, {m}) and ({p}, {r}) for r={r} modes, "
                         f"got {tuple(B.shape)} and {tuple(C.shape)}")
    check_finite_stable(lam, B, C, layer)
    return lam, B, C


def check_finite_stable(lam, B, C, layer: str) -> None:
    """``lam``, ``B``, ``C`` must be finite and every ``|lam| < 1 - 1e-12`` (the core's stability rule)."""
    for name, value in (("lam", lam), ("B", B), ("C", C)):
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"system.{name} contains NaN or Inf; refusing to load it into the {layer} layer")
    from lti_reduce.validate import check_stable_eigenvalues

    check_stable_eigenvalues(lam, "system.lam", f"{layer} represents only stable eigenvalues; load a stable "
                                                "system (the reduction of a stable layer is stable).")


def real_feedthrough(D, shape: tuple, layer: str) -> torch.Tensor:
    """``D`` as a real float64 CPU tensor (zeros of ``shape`` for ``None``); a nonzero imaginary part is refused."""
    if D is None:
        return torch.zeros(shape, dtype=torch.float64)
    D = torch.as_tensor(D).detach().cpu()
    if D.is_complex():
        if bool((D.imag != 0).any()):
            raise ValueError(f"system.D must be real for {layer} (its skip connection is real)")
        D = D.real
    return D.to(torch.float64)


def diagonal_feedthrough(system, m: int, dtype, layer: str) -> torch.Tensor:
    """The elementwise skip connection ``(m,)``, float64 on the CPU, from ``system.D`` ((m, m) diagonal, (m,) or None).

    An off-diagonal entry above ``64 eps`` of ``dtype`` (relative to the diagonal, at least 1) is refused:
    balanced truncation keeps ``D``, singular-perturbation approximation does not.
    """
    D = real_feedthrough(getattr(system, "D", None), (m,), layer)
    if tuple(D.shape) == (m,):
        return D
    if tuple(D.shape) != (m, m):
        raise ValueError(f"system.D must have shape ({m}, {m}) or ({m},), got {tuple(D.shape)}")
    diagonal = torch.diagonal(D)
    off = (D - torch.diag(diagonal)).abs().max().item()
    if off > 64 * torch.finfo(dtype).eps * max(1.0, diagonal.abs().max().item()):
        raise ValueError(
            f"system.D has off-diagonal entries up to {off:.3g}, but the {layer} skip connection is elementwise "
            "(D must be diagonal). Balanced truncation keeps D; singular-perturbation approximation changes it, "
            "so reduce with truncation for this layer.")
    return diagonal
