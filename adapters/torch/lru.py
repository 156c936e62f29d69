"""The LRU's former import path: the layer lives in :mod:`adapters.torch.layers.lru`.

Kept for the modules that still import it from here; new code imports ``adapters.torch.LRU``.
"""

from .layers.lru import LRU

__all__ = ["LRU"]
