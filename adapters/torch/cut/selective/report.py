"""What :func:`adapters.torch.compress_selective_` returns: one entry per selective layer, and the table."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..report import CompressionReport, _selective_entry
from .measure import CutMeasurement

__all__ = ["SelectiveCompressionReport", "SelectiveLayerReport"]


@dataclass
class SelectiveLayerReport:
    """What :func:`compress_selective_` did to one selective layer.

    Attributes
    ----------
    name : str
        Qualified module name.
    kind : str
        ``"SelectiveSSM"``, ``"MambaMixer"``, ``"FalconMambaMixer"`` or ``"Mamba2Mixer"``.
    before, after : int
        States per channel (``d_state`` / ``config.state_size``) before and after.
    kept : list
        Indices (old numbering) of the kept states; for a ``Mamba2Mixer`` with several groups one list per group.
    scores : numpy.ndarray, shape (before,) or (G, before)
        The ranking's score of every state (:func:`selective_state_scores`).
    ranking : str
        The ranking that scored the states (``"output_energy"``, ``"gramian"`` or ``"averaged_hsv"``).
    energy_kept : float
        Share of the summed scores carried by the kept states.
    calibration_change : float
        ``||out - out_cut|| / ||out - out_0||`` (relative to the state path, see ``tol``) on the calibration
        inputs, as the ``tol`` rule saw it (exact for Mamba's linear output map, first order in the dropped
        terms for Mamba2's norm); 0 if not cut.
    error : float
        The measured relative output change ``||out - out_cut||_F / ||out||_F`` of the layer, computed exactly
        on held-out inputs when ``held_out_inputs`` was given, else on the calibration inputs (``error_data``
        says which). A measurement, not a bound. 0 if not cut.
    error_data : str
        ``"held_out"``, ``"calibration"`` or ``""`` (not cut).
    method : str
        ``"state_selection"``.
    compressed : bool
        Whether the layer was cut.
    note : str
        Why a layer was not cut (e.g. the ``min_shrink`` gate).
    measurement : CutMeasurement or None
        Details of ``error``.
    """

    name: str
    kind: str
    before: int
    after: int
    kept: list
    scores: np.ndarray = field(repr=False)
    ranking: str
    energy_kept: float
    calibration_change: float
    error: float
    error_data: str
    compressed: bool
    note: str = ""
    method: str = "state_selection"
    measurement: CutMeasurement | None = None


@dataclass
class SelectiveCompressionReport(CompressionReport):
    """Per-layer results of :func:`compress_selective_`; ``print(report)`` shows a table.

    The container behaviour (iteration, ``report[name]``, ``compressed``,
    ``state_before``/``state_after``) is that of :class:`CompressionReport`.
    """

    layers: list[SelectiveLayerReport]

    def __str__(self) -> str:
        """The table of :class:`CompressionReport` (one table for both entry points), with its legend."""
        return str(CompressionReport([_selective_entry(x) for x in self.layers]))
