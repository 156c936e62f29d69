"""Former path of the in-place parameter resizing, now :mod:`adapters.torch.layers._params`."""

# for mamba.py until its split
from .layers._params import resize_from_checkpoint_  # noqa: F401

__all__: list[str] = []
