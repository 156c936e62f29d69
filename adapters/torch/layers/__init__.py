"""Compressible state-space layers and the layer protocol.

Every layer here implements the protocol of :mod:`adapters.torch.layers.protocol` (``state_dim``,
``to_system()``, ``load_system_()``) and loads a checkpoint of another state size
(:mod:`adapters.torch.layers.resizing`). These modules import only :mod:`lti_reduce`, torch and the
adapter's kernels (:mod:`adapters.torch.scan`, :mod:`adapters.torch.optim`), never the cut or the
integrations.

* ``lru``: :class:`~adapters.torch.LRU`, the Linear Recurrent Unit (Orvieto et al. 2023).
* ``s5``: :class:`~adapters.torch.S5`, one MIMO diagonal system per layer (Smith et al. 2023).
* ``s4d``: :class:`~adapters.torch.S4D`, ``d_model`` diagonal SISO channels applied as convolutions
  (Gu et al. 2022).
* ``selective``: :class:`~adapters.torch.SelectiveSSM`, a selective (Mamba-style) block with input-dependent
  ``Delta, B, C``, and its scans; not LTI, so it is cut by state selection (:mod:`adapters.torch.cut.selective`).
* ``protocol``: :class:`~adapters.torch.CompressibleLayer`, :func:`~adapters.torch.compressible_layers`,
  :func:`~adapters.torch.is_compressible`.
* ``resizing``: :class:`~adapters.torch.ResizableStateMixin` and
  :func:`~adapters.torch.resize_state_from_checkpoint_`: a compressed checkpoint loads into a freshly
  built layer.
* ``_base``: what LRU, S5 and S4D share (input checks, in-place loading, the checks of a system to load).
"""

from ._base import remember_input_
from .lru import LRU
from .protocol import CompressibleLayer, compressible_layers, is_compressible
from .resizing import ResizableStateMixin, resize_state_from_checkpoint_, set_parameter_
from .s4d import S4D
from .s5 import S5
from .selective import SelectiveSSM

__all__ = [
    "LRU",
    "S4D",
    "S5",
    "SelectiveSSM",
    "CompressibleLayer",
    "ResizableStateMixin",
    "compressible_layers",
    "is_compressible",
    "remember_input_",
    "resize_state_from_checkpoint_",
    "set_parameter_",
]
