"""The layer protocol's former import path: the protocol lives in :mod:`adapters.torch.layers.protocol`.

Kept so that ``from adapters.torch.protocol import compressible_layers`` goes on working; new code imports
from :mod:`adapters.torch` (the public names) or :mod:`adapters.torch.layers.protocol`.
"""

from .layers.protocol import CompressibleLayer, compressible_layers, is_compressible

__all__ = ["CompressibleLayer", "compressible_layers", "is_compressible"]
