"""The selective (Mamba-style) block and its state selection, at their former import path.

The block and its scans live in :mod:`adapters.torch.layers.selective`, the state selection (our block's and
the Hugging Face mixers') in :mod:`adapters.torch.cut.selective`. New code imports the public names from
:mod:`adapters.torch`.
"""

from .cut.selective import (
    RANKINGS,  # noqa: F401  (benchmarks import it from here)
    CutMeasurement,
    SelectiveCompressionReport,
    SelectiveLayerReport,
    compress_selective_,
    leave_one_state_out,
    measure_selective_cut,
    selective_state_scores,
)
from .layers.selective import SelectiveSSM, selective_scan, selective_scan_reference

__all__ = [
    "CutMeasurement",
    "SelectiveCompressionReport",
    "SelectiveLayerReport",
    "SelectiveSSM",
    "compress_selective_",
    "leave_one_state_out",
    "measure_selective_cut",
    "selective_scan",
    "selective_scan_reference",
    "selective_state_scores",
]
