"""Former path of the in-place parameter resizing, now :mod:`adapters.torch.layers._params`.

Kept for the modules that still import it from here.
"""

from .layers._params import resize_from_checkpoint_, set_parameter_  # noqa: F401

__all__: list[str] = []
