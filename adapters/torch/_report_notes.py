"""The report's notes, at their old import path: they live in :mod:`adapters.torch.cut.report`."""

from .cut.report import gate_lines, selective_legend, warn_if_gated

__all__ = ["gate_lines", "selective_legend", "warn_if_gated"]
