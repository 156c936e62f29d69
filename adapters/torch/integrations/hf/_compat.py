"""The one place that reads Hugging Face ``transformers`` internals that change between releases.

The state selection of :mod:`adapters.torch.integrations.hf.mamba` recomputes each mixer's scan from its submodules and
attributes, and a cut resizes some of them. Those attributes are implementation details of ``transformers``:
they are not public API and have moved between releases. Every such read goes through this module, which
knows the variants of the releases tested (see :data:`TESTED_TRANSFORMERS`) and raises
:class:`UnsupportedTransformersError`, naming the installed version and what it could not find, when it meets
one it does not know, instead of an ``AttributeError`` deep inside a cut.

Known variants
--------------
FalconMamba's RMS norms (weightless, over the last axis) on ``dt``, ``B_t`` and ``C_t``:

``"function"`` (transformers 4.52 to 5.1x)
    a module-level ``rms_forward(x, variance_epsilon)`` with the mixer's ``rms_eps``; the fused kernels read the
    buffers ``b_c_rms`` (``N`` ones) and ``dt_rms`` (``d_inner`` ones).
``"module-eps"`` (transformers 5.1x to 5.24)
    submodules ``dt_layernorm``, ``b_layernorm``, ``c_layernorm`` of class ``FalconMambaWeightlessRMSNorm``
    keeping the epsilon as ``eps`` and a dummy buffer ``weight`` of ones.
``"module-variance_epsilon"`` (transformers 5.25)
    the same submodules, keeping the epsilon as ``variance_epsilon``.

Mamba2's gated RMS norm ``norm(y * silu(z))`` keeps its epsilon as ``variance_epsilon`` in every tested release;
what it averages over has two variants:

``"whole"`` (transformers 4.52 to 5.1x, ``MambaRMSNormGated``)
    the mean of squares over all ``d_inner`` channels at once;
``"grouped"`` (later releases, ``Mamba2RMSNormGated`` with ``group_size``)
    the mean over each group of ``group_size`` channels (``d_inner / group_size = n_groups`` groups).
"""

from __future__ import annotations

import sys

import torch

__all__ = ["TESTED_TRANSFORMERS", "UnsupportedTransformersError", "rms_eps", "falcon_norm_variant",
           "falcon_dt_norm", "falcon_state_norm_eps", "falcon_state_buffers", "mamba2_norm_groups", "require"]

#: The oldest and newest ``transformers`` releases the test suite runs against (``.ci/constraints-oldest.txt`` and
#: ``constraints.txt``). Older releases are refused by the ``hf`` extra: before 4.52 Mamba2's pure-torch path
#: assigned the groups' ``B_t``/``C_t`` to heads with ``repeat`` instead of ``repeat_interleave``.
TESTED_TRANSFORMERS = ("4.52.1", "5.25.0")


class UnsupportedTransformersError(RuntimeError):
    """The installed ``transformers`` keeps a mixer's internals in a way this version of the adapter does not know."""


def _version() -> str:
    module = sys.modules.get("transformers")
    return getattr(module, "__version__", "unknown") if module is not None else "not imported"


def _unsupported(what: str, obj) -> UnsupportedTransformersError:
    lo, hi = TESTED_TRANSFORMERS
    return UnsupportedTransformersError(
        f"adapters.torch does not know how transformers {_version()} keeps {what} in {type(obj).__name__}; "
        f"it is tested with transformers {lo} to {hi}. Install a tested release "
        f"(pip install 'transformers>={lo},<={hi}'), or report this with the transformers version.")


def require(obj, names, label: str) -> None:
    """Raise :class:`UnsupportedTransformersError` unless ``obj`` has every attribute in ``names``.

    Called when a mixer is matched, so an unknown release is refused before a cut changes anything.
    """
    missing = [n for n in names if not hasattr(obj, n)]
    if missing:
        raise _unsupported(f"the attribute(s) {', '.join(repr(n) for n in missing)} of a {label}", obj)


def rms_eps(norm) -> float:
    """The epsilon of an RMS-norm module: ``variance_epsilon`` (most releases) or ``eps``."""
    for name in ("variance_epsilon", "eps"):
        value = getattr(norm, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    raise _unsupported("the epsilon of an RMS norm", norm)


def falcon_norm_variant(mixer) -> str:
    """Which variant (module docstring) a ``FalconMambaMixer`` is: ``"function"``, ``"module-eps"`` or
    ``"module-variance_epsilon"``."""
    if all(hasattr(mixer, n) for n in ("dt_layernorm", "b_layernorm", "c_layernorm")):
        norm = mixer.b_layernorm
        if isinstance(getattr(norm, "variance_epsilon", None), (int, float)):
            return "module-variance_epsilon"
        if isinstance(getattr(norm, "eps", None), (int, float)):
            return "module-eps"
        raise _unsupported("the epsilon of the B/C RMS norms", norm)
    if isinstance(getattr(mixer, "rms_eps", None), (int, float)):
        return "function"
    raise _unsupported("the dt/B/C RMS norms", mixer)


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


def falcon_dt_norm(mixer, ts: torch.Tensor) -> torch.Tensor:
    """The mixer's RMS norm of ``dt`` (``(b, L, R)``), as the installed release computes it."""
    if falcon_norm_variant(mixer) == "function":
        return _rms(ts, float(mixer.rms_eps))
    return mixer.dt_layernorm(ts)


def falcon_state_norm_eps(mixer) -> tuple[float, float]:
    """The epsilons of the RMS norms of ``B_t`` and ``C_t`` (which run over the states)."""
    if falcon_norm_variant(mixer) == "function":
        return float(mixer.rms_eps), float(mixer.rms_eps)
    return rms_eps(mixer.b_layernorm), rms_eps(mixer.c_layernorm)


def falcon_state_buffers(mixer) -> list[tuple[object, str, torch.Tensor]]:
    """``[(owner, name, tensor)]``: the state-sized (``N``) buffers of ones that a cut must resize.

    They are not used by the pure-torch path; the fused kernels read them as the norms' weights.
    """
    if falcon_norm_variant(mixer) == "function":
        owners = [(mixer, "b_c_rms")]
    else:
        owners = [(mixer.b_layernorm, "weight"), (mixer.c_layernorm, "weight")]
    return [(owner, name, getattr(owner, name)) for owner, name in owners if getattr(owner, name, None) is not None]


def mamba2_norm_groups(mixer) -> int:
    """How many groups of channels a ``Mamba2Mixer``'s gated RMS norm averages over (module docstring)."""
    norm, d_inner = mixer.norm, int(mixer.intermediate_size)
    group_size = getattr(norm, "group_size", None)
    if group_size is None:
        return 1  # "whole": one mean over all d_inner channels
    if isinstance(group_size, int) and group_size > 0 and d_inner % group_size == 0:
        return d_inner // group_size
    raise _unsupported(f"the groups of the gated RMS norm (group_size={group_size!r}, d_inner={d_inner})", norm)
