"""Former path of the Hugging Face mixers' state selection, now :mod:`adapters.torch.integrations.hf.mamba`."""

# for mamba.py until its split
from ..integrations.hf.mamba import HF_KINDS

__all__ = ["HF_KINDS"]
