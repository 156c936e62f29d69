"""In-training compression inside the PyTorch Lightning ``Trainer``: :class:`CompressionCallback`.

The public import path; the callback lives in :mod:`adapters.torch.integrations.lightning`. Install the
extra: ``pip install "lti-reduce[lightning]"``. Importing this module imports ``lightning``; the rest of
:mod:`adapters.torch` does not.
"""

from .integrations.lightning import CompressionCallback

__all__ = ["CompressionCallback"]
