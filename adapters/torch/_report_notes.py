"""What a compression report says besides its numbers: why a layer was not cut, and what a column holds.

Shared by :func:`adapters.torch.compress_` and :func:`adapters.torch.compress_selective_`, so both entry points
print one table with the same labels and both say when the ``min_shrink`` gate held a requested cut back.
"""

from __future__ import annotations

import warnings

__all__ = ["gate_lines", "selective_legend", "warn_if_gated"]

_GATE = "gate:"


def _gated(layers) -> list:
    return [x for x in layers if str(getattr(x, "note", "")).startswith(_GATE)]


def gate_lines(layers, min_shrink=None) -> list[str]:
    """One line naming the layers the ``min_shrink`` gate held back and how to cut them anyway (or none)."""
    gated = _gated(layers)
    if not gated:
        return []
    names = ", ".join(repr(x.name or "<model>") for x in gated[:4]) + (" ..." if len(gated) > 4 else "")
    where = f"min_shrink={min_shrink:g}" if min_shrink is not None else "min_shrink"
    return [f"not cut: {len(gated)} layer(s) ({names}) would shrink by less than {where}; the request left them "
            f"as they were. Pass a larger tol= (or rank=), or min_shrink=0.0 to cut whatever the rule allows."]


def warn_if_gated(layers, min_shrink, stacklevel: int = 3) -> None:
    """A :class:`UserWarning` when the ``min_shrink`` gate held back a cut the rule asked for.

    ``stacklevel`` counts from this function: 3 points at the caller of the entry point that calls it.
    """
    lines = gate_lines(layers, min_shrink)
    if lines:
        warnings.warn(lines[0], UserWarning, stacklevel=stacklevel)


def selective_legend(layers) -> list[str]:
    """What the table's columns hold for state-selection rows (a score share and a measured change)."""
    details = [getattr(x, "detail", None) or x for x in layers if getattr(x, "method", "") == "state_selection"]
    if not details:
        return []
    rankings = sorted({getattr(d, "ranking", "") for d in details} - {""})
    data = sorted({getattr(d, "error_data", "") for d in details} - {""})
    where = "/".join(data) + " inputs" if data else "its inputs (not measured: nothing was cut)"
    return [f"select rows: 'energy kept' is the share of the {'/'.join(rankings) or 'ranking'} score the kept "
            "states carry (a score, not Hankel energy); 'out change' is the measured relative output change "
            f"||y - y_cut|| / ||y|| of the layer on {where} (a measurement; an input-dependent layer has no "
            "gain and no bound)."]
