"""Hugging Face integrations: in-training compression inside ``transformers.Trainer``.

Install the extra: ``pip install "lti-reduce[hf]"``. ``CompressionCallback`` (public path
``adapters.torch.hf``) imports ``transformers`` when it is first used; the submodules that read the
Hugging Face Mamba mixers (``mamba``, ``_compat``) do not import it, and the rest of
:mod:`adapters.torch` never does.
"""

__all__ = ["CompressionCallback"]


def __getattr__(name):
    if name == "CompressionCallback":
        from .callback import CompressionCallback

        return CompressionCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
