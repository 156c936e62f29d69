"""Step 2 of the cut: the layers' systems, grouped and stacked for batched core calls, and their reductions.

All numerics are in :mod:`lti_reduce`; this module maps layers to systems and groups equal-shaped ones so each
group costs one batched core call on its own device.
"""

from __future__ import annotations

import numpy as np
import torch

import lti_reduce as lr

__all__: list[str] = []


def _group_key(system):
    t = lambda x: None if x is None else (tuple(x.shape), x.dtype, x.device)  # noqa: E731
    return (type(system), system.real_output, t(system.lam), t(system.B), t(system.C), t(system.D))


def _stack(systems):
    first = systems[0]
    stack = lambda attr: torch.stack([getattr(s, attr) for s in systems])  # noqa: E731
    return lr.DiagonalSystem(stack("lam"), stack("B"), stack("C"), None if first.D is None else stack("D"),
                             real_output=first.real_output)


def _working(system):
    """A float64 / complex128 copy of a diagonal system (for a-posteriori norms)."""
    def w(x):
        if x is None:
            return None
        return x.to(torch.complex128) if x.is_complex() else x.to(torch.float64)

    return lr.DiagonalSystem(w(system.lam), w(system.B), w(system.C), w(system.D), real_output=system.real_output)


def lr_to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def lr_hsv_numpy(bal) -> np.ndarray:
    return lr_to_numpy(bal.hsv).astype(np.float64)
