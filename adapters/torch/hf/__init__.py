"""Hugging Face integrations: in-training compression inside ``transformers.Trainer``.

The public import path; the code lives in :mod:`adapters.torch.integrations.hf`. Install the extra:
``pip install "lti-reduce[hf]"``. Importing this package imports ``transformers``; the rest of
:mod:`adapters.torch` does not.
"""

from ..integrations.hf.callback import CompressionCallback

__all__ = ["CompressionCallback"]
