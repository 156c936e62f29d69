"""Array-backend plumbing: one namespace lookup per public call.

The core is written once against the array API (through ``array_api_compat``),
so numpy arrays and torch tensors (CPU or CUDA) go through the same code. torch
is never imported here: a torch tensor brings its own namespace.
"""

from __future__ import annotations

import numpy as np
import array_api_compat

__all__: list[str] = []


def namespace(*arrays):
    """Array namespace shared by ``arrays`` (``None`` entries are ignored)."""
    return array_api_compat.array_namespace(*[a for a in arrays if a is not None])


def is_numpy(x) -> bool:
    return array_api_compat.is_numpy_array(x)


def is_torch(x) -> bool:
    return array_api_compat.is_torch_array(x)


def as_array(x, name: str):
    """Return ``x`` as a numpy array or torch tensor; lists and scalars become numpy."""
    if is_torch(x) or is_numpy(x):
        return x
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name} must be an array (numpy or torch), got {type(x).__name__}") from exc


def is_complex(xp, x) -> bool:
    return xp.isdtype(x.dtype, "complex floating")


def working_dtype(xp, *arrays):
    """float64 or complex128: the precision every computation runs in."""
    if any(a is not None and is_complex(xp, a) for a in arrays):
        return xp.complex128
    return xp.float64


def result_dtype(xp, *arrays):
    """The dtype results are returned in: the promoted input dtype, never integer.

    float32/complex64 inputs (GPU training) are computed in float64 and returned in
    single precision; integer inputs give float64.
    """
    floats = [a.dtype for a in arrays if a is not None and xp.isdtype(a.dtype, ("real floating", "complex floating"))]
    cplx = any(a is not None and is_complex(xp, a) for a in arrays)
    single = bool(floats) and all(d in (xp.float32, xp.complex64) for d in floats)
    if cplx:
        return xp.complex64 if single else xp.complex128
    return xp.float32 if single else xp.float64


def real_dtype(xp, dtype):
    return {xp.complex64: xp.float32, xp.complex128: xp.float64}.get(dtype, dtype)


def mH(x):
    """Conjugate transpose of the last two axes."""
    return _conj(x.mT) if hasattr(x, "mT") else _conj(np.swapaxes(x, -1, -2))


def _conj(x):
    return x.conj() if (is_torch(x) and x.is_complex()) or (is_numpy(x) and np.iscomplexobj(x)) else x


def r_factor(xp, x):
    """Triangular factor R of ``x = Q R`` (Q is never formed)."""
    if is_torch(x):
        if x.requires_grad:  # torch differentiates QR only through the reduced Q (mode="r" has no backward)
            return xp.linalg.qr(x, mode="reduced")[1]
        return xp.linalg.qr(x, mode="r")[1]  # torch returns (Q, R) with an empty Q
    return np.linalg.qr(x, mode="r")


def to_numpy(x) -> np.ndarray:
    if is_torch(x):
        return x.detach().cpu().resolve_conj().numpy()
    return np.asarray(x)


def from_numpy_like(x: np.ndarray, like):
    """Convert a numpy result back to ``like``'s backend and device."""
    if is_torch(like):
        import torch  # only reached when the caller already uses torch

        x = np.asarray(x)
        return torch.from_numpy(np.ascontiguousarray(x).reshape(x.shape)).to(like.device)
    return x


def batch_size(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out
