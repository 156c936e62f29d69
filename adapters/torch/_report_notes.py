"""The report's notes, at their old import path: they live in :mod:`adapters.torch.cut.report`."""

# for mamba.py until its split
from .cut.report import warn_if_gated

__all__ = ["warn_if_gated"]
