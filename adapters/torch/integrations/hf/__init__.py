"""Hugging Face integrations: in-training compression inside ``transformers.Trainer``.

Install the extra: ``pip install "lti-reduce[hf]"``. Importing this package imports ``transformers``;
the rest of :mod:`adapters.torch` does not.
"""

from .callback import CompressionCallback  # noqa: F401
