"""Hankel singular values with finite gradients everywhere (for regularizers).

The balancing routes of :func:`lti_reduce.hankel_singular_values` factor the Gramians
with ``eigh`` or an SVD where they are ill-conditioned. Their backward passes divide by
differences of eigenvalues, so where small HSVs coincide (an S4D channel's HSVs fall to
round-off within a few states) the gradient is ``inf * 0 = nan``. Here

.. math:: \\sigma_i = \\sigma_i(L_o^H L_c), \\quad L_c L_c^H = P + \\delta_P I, \\;
          L_o L_o^H = Q + \\delta_Q I, \\quad \\delta_G = n \\, \\varepsilon_{64} \\operatorname{tr} G,

with the system and its Gramians in float64 (complex128): Cholesky and ``svdvals`` have backward passes without such
divisions. The shift is round-off of float64 Gramians: an HSV moves by at most about
``sqrt(delta_P ||Q|| + delta_Q ||P||)``, far below what float32 parameters resolve.
"""

from __future__ import annotations


def hankel_singular_values_for_gradients(system):
    """HSVs of a (batched) torch system, differentiable with finite gradients.

    Parameters
    ----------
    system : DiagonalSystem of torch tensors, batch shape ``(...)``
        A stable discrete-time system whose entries may require gradients (``to_system(differentiable=True)``
        of an LRU, S5 or S4D layer gives one).

    Returns
    -------
    torch.Tensor, shape (..., n)
        The Hankel singular values, descending, in the input's real dtype.
    """
    import torch

    from .gramians import gramians
    from .systems import DiagonalSystem

    def wide(x):
        return x.to(torch.complex128 if x.is_complex() else torch.float64)

    P, Q = gramians(DiagonalSystem(wide(system.lam), wide(system.B), wide(system.C), None,
                                   real_output=system.real_output))
    n = P.shape[-1]
    eye = torch.eye(n, dtype=P.dtype, device=P.device)
    eps = torch.finfo(torch.float64).eps

    def factor(G):
        trace = G.diagonal(dim1=-2, dim2=-1).real.sum(-1).clamp_min(torch.finfo(torch.float64).tiny)
        return torch.linalg.cholesky(G + (n * eps * trace)[..., None, None] * eye)

    return torch.linalg.svdvals(factor(Q).mH @ factor(P)).to(system.B.real.dtype)
