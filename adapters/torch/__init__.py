"""PyTorch adapter: compress live state-space layers inside a training loop.

``adapters`` is a namespace package (there is no ``adapters/__init__.py``), so this
module installs beside AdapterHub's distribution of the same top-level name.

Public API
----------
LRU
    Reference Linear Recurrent Unit layer (Orvieto et al. 2023), compressible.
S5, S4D
    S5 (Smith et al. 2023) and S4D (Gu et al. 2022) layers, compressible.
ResizableStateMixin, resize_state_from_checkpoint_, set_parameter_
    Checkpoint resizing for compressible layers (a compressed checkpoint loads into a fresh layer).
compress_, CompressionReport, LayerReport
    Balanced truncation of every compressible layer, batched and atomic, with the optimizer kept consistent.
CompressionSchedule, RollbackGuard
    When to cut during training, and undoing a cut that hurt validation.
HSVTimedSchedule
    A schedule that watches the layers' HSVs and cuts once the kept set has settled (or at a deadline).
hankel_nuclear_norm
    Differentiable sum of HSVs, a regularizer (the paper's baseline).
compress_ddp_
    compress_ inside DistributedDataParallel: unwrap, cut, broadcast from one rank, re-wrap.
compress_fsdp_
    compress_ on a model sharded with FSDP2 (fully_shard): gather, cut, agree, re-shard, optimizer rebound.
resize_averaged_model_
    After a cut, restart a weight average's (EMA, AveragedModel) cut layers from the model's values.
SelectiveSSM, compress_selective_, measure_selective_cut, selective_scan
    A pure-torch Mamba-style selective SSM block; state selection for it and Hugging Face Mamba/Mamba2 mixers.
CompressibleLayer, compressible_layers, is_compressible
    The layer protocol (``state_dim``, ``to_system()``, ``load_system_()``) and discovery.
"""

from .compress import CompressionReport, LayerReport, compress_
from .integrations.distributed import compress_ddp_
from .integrations.ema import resize_averaged_model_
from .integrations.fsdp import compress_fsdp_
from .layers import (
    LRU,
    S4D,
    S5,
    CompressibleLayer,
    ResizableStateMixin,
    compressible_layers,
    is_compressible,
    resize_state_from_checkpoint_,
    set_parameter_,
)
from .optim import StaleOptimizerStateError
from .cut.selective import (
    CutMeasurement,
    SelectiveCompressionReport,
    SelectiveLayerReport,
    compress_selective_,
    measure_selective_cut,
)
from .layers.selective import SelectiveSSM, selective_scan, selective_scan_reference

# The Hugging Face mixers' kinds register with the state selection when their module is imported (the cut
# never imports an integration); the module does not import transformers.
from .integrations.hf import mamba as _hf_mamba  # noqa: F401
from .regularizers import hankel_nuclear_norm
from .schedule import CompressionSchedule, RollbackGuard
from .monitor import HSVTimedSchedule

__all__ = [
    "LRU",
    "S4D",
    "S5",
    "ResizableStateMixin",
    "resize_state_from_checkpoint_",
    "set_parameter_",
    "SelectiveSSM",
    "CutMeasurement",
    "SelectiveCompressionReport",
    "SelectiveLayerReport",
    "compress_ddp_",
    "compress_fsdp_",
    "resize_averaged_model_",
    "compress_selective_",
    "measure_selective_cut",
    "selective_scan",
    "selective_scan_reference",
    "CompressibleLayer",
    "CompressionReport",
    "CompressionSchedule",
    "HSVTimedSchedule",
    "LayerReport",
    "RollbackGuard",
    "StaleOptimizerStateError",
    "compress_",
    "compressible_layers",
    "hankel_nuclear_norm",
    "is_compressible",
]
