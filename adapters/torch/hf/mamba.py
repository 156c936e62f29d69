"""Former path of the Hugging Face mixers' state selection, now :mod:`adapters.torch.integrations.hf.mamba`.

Kept for the modules that still import it from here.
"""

from ..integrations.hf.mamba import HF_KINDS

__all__ = ["HF_KINDS"]
