"""Integrations: the cut inside other frameworks' training loops.

Each module imports its framework itself, when it is imported (or inside the function that needs it);
importing this package imports none of them. They use the cut (:func:`adapters.torch.compress_`, the
schedules) and the layers, never the other way round.

* ``lightning``: ``CompressionCallback`` for the PyTorch Lightning ``Trainer`` (public path
  ``adapters.torch.lightning``).
* ``hf``: ``CompressionCallback`` for Hugging Face ``transformers.Trainer``, and the state selection of
  the Hugging Face Mamba/Mamba2 mixers (public path ``adapters.torch.hf``).
* ``distributed``: :func:`adapters.torch.compress_ddp_`, the cut inside ``DistributedDataParallel``.
* ``fsdp``: :func:`adapters.torch.compress_fsdp_`, the cut on a model sharded with FSDP2 (``fully_shard``).
* ``ema``: :func:`adapters.torch.resize_averaged_model_`, weight averages (EMA, ``AveragedModel``) after a
  cut.
* ``_callbacks``: what the trainer callbacks share (the scheduled cut on the trainer's optimizer, metrics,
  checks).
"""
