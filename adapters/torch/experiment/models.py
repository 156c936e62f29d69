"""The experiment's models: a deep SSM sequence classifier built from the library's layers.

The architecture of the LRU paper (Orvieto et al. 2023, arXiv 2303.06349): a linear encoder,
pre-norm residual blocks ``x + dropout(GLU(W gelu(SSM(norm(x)))))``, a final norm, the mean
over time and a linear decoder.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data import SequenceDataset
from ..layers.lru import LRU
from .config import MODELS, ConfigError, ExperimentConfig

__all__ = ["LRUBlock", "LRUClassifier", "SSMBlock", "SSMClassifier", "build_model", "default_chunk_size",
           "layer_class"]

# ``--model`` name -> class name in ``adapters.torch`` (looked up there, so a layer exists once it is exported).
_CLASS_NAMES = {"lru": "LRU", "s5": "S5", "s4d": "S4D", "selective": "SelectiveSSM"}


def layer_class(name: str) -> type:
    """The layer class for ``--model name``; :class:`ConfigError` if the library has no such layer.

    Only linear time-invariant layers (with ``to_system()``) are accepted: the experiment cuts
    them with ``compress_(model, tol=...)``, which for a selective layer would also need
    calibration inputs.
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}.")
    import adapters.torch as at

    cls = getattr(at, _CLASS_NAMES[name], None)
    if cls is None:
        have = [m for m in MODELS if getattr(at, _CLASS_NAMES[m], None) is not None]
        raise ConfigError(f"this version of the library has no {_CLASS_NAMES[name]} layer (--model {name}); "
                          f"choose one of: {', '.join(have)}.")
    if name == "selective" or not hasattr(cls, "load_system_"):
        raise ConfigError(f"--model {name}: {cls.__name__} is a selective (input-dependent) layer, which the "
                          "experiment cannot cut by tolerance alone (compress_ needs calibration inputs for it); "
                          "choose --model lru.")
    return cls


class SSMBlock(nn.Module):
    """``x + dropout(GLU(W gelu(layer(norm(x)))))``: the LRU paper's residual block (pre-norm).

    Parameters
    ----------
    d_model, d_state : int
    dropout : float
    layer_cls : type
        The SSM layer, built as ``layer_cls(d_model, d_state, **layer_kwargs)``.
    """

    def __init__(self, d_model: int, d_state: int, *, dropout: float = 0.0, layer_cls: type = LRU, **layer_kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.layer = layer_cls(d_model, d_state, **layer_kwargs)
        self.mix = nn.Linear(d_model, 2 * d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.gelu(self.layer(self.norm(x)))
        return x + self.dropout(F.glu(self.mix(z), dim=-1))


class SSMClassifier(nn.Module):
    """Sequence classifier: linear encoder, SSM blocks, final norm, mean over time, linear decoder.

    Parameters
    ----------
    in_features, n_classes : int
    d_model : int
    d_state : int or sequence of int
        State size of every block, or one per block (a sequence sets ``n_layers``).
    n_layers : int
    dropout : float
    layer_cls : type
        The blocks' layer (default :class:`adapters.torch.LRU`).
    **layer_kwargs
        Passed to the layer (for the LRU: ``r_min``, ``r_max``, ``max_phase``, ``mode``, ``chunk_size``).

    Input ``(batch, L, in_features)``, output logits ``(batch, n_classes)``.
    """

    def __init__(self, in_features: int, n_classes: int, *, d_model: int, d_state, n_layers: int | None = None,
                 dropout: float = 0.0, layer_cls: type = LRU, **layer_kwargs):
        super().__init__()
        sizes = [int(d_state)] * int(n_layers or 1) if isinstance(d_state, (int, np.integer)) else list(d_state)
        if n_layers is not None and len(sizes) != n_layers:
            raise ConfigError(f"got {len(sizes)} state sizes for n_layers={n_layers}; give one per layer.")
        self.encoder = nn.Linear(in_features, d_model)
        self.blocks = nn.ModuleList(SSMBlock(d_model, n, dropout=dropout, layer_cls=layer_cls, **layer_kwargs)
                                    for n in sizes)
        self.norm = nn.LayerNorm(d_model)
        self.decoder = nn.Linear(d_model, n_classes)

    @property
    def state_dims(self) -> list[int]:
        """Current state size of each block's layer."""
        return [block.layer.state_dim for block in self.blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        for block in self.blocks:
            h = block(h)
        return self.decoder(self.norm(h).mean(dim=-2))


# The names of the first release (the classifier of LRU blocks).
LRUBlock = SSMBlock
LRUClassifier = SSMClassifier


def build_model(config: ExperimentConfig, data: SequenceDataset, d_state=None, *,
                device: torch.device | str = "cpu") -> SSMClassifier:
    """The classifier of ``config`` for ``data`` (``d_state`` overrides the configured size).

    ``device`` only picks the LRU's default ``mode``; the model is built on the CPU.
    """
    cls = layer_class(config.model)
    if cls is LRU:
        mode = config.mode or ("chunked" if torch.device(device).type == "cpu" else "auto")
        kwargs = dict(r_min=config.r_min, r_max=config.r_max, max_phase=config.max_phase, mode=mode,
                      chunk_size=config.chunk_size or default_chunk_size(data.seq_len))
    else:
        kwargs = {}
    return SSMClassifier(data.in_features, data.n_classes, d_model=config.d_model,
                         d_state=config.d_state if d_state is None else d_state,
                         n_layers=config.n_layers if d_state is None or isinstance(d_state, int) else None,
                         dropout=config.dropout, layer_cls=cls, **kwargs)


def default_chunk_size(length: int) -> int:
    """Chunk length of the LRU's ``"chunked"`` scan for sequences of ``length`` steps.

    A divisor of ``length`` (a ragged tail runs step by step) near ``sqrt(2 L)``, between
    4 and 32; long sequences get about the layer's own default (32). Measured on the 2-core
    CPU this was tuned on, L = 40 (MNIST-1D), batch 64, d_model 64, forward + backward of one
    layer at 8 / 32 / 64 / 256 modes: chunk 8: 4.3 / 5.1 / 12.8 / 26.4 ms; chunk 10:
    2.9 / 5.0 / 11.3 / 29.1 ms; chunk 32 (the layer's default): 3.4 / 7.3 / 10.3 / 35.0 ms;
    the associative scan (``mode="auto"`` at this length): 3.8 / 5.6 / 13.6 / 47.0 ms.
    """
    target = math.sqrt(2 * length)
    divisors = [d for d in range(4, 33) if length % d == 0]
    if not divisors:
        return min(32, max(1, length))
    return min(divisors, key=lambda d: (abs(d - target), -d))
