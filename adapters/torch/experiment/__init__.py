"""The experiment behind ``lti-reduce train`` and ``lti-reduce sweep``: CompreSSM's claim, measured.

One idea per module:

``config``
    :class:`ExperimentConfig` (every option), its checks, the run's steps and cut steps, the device.
``models``
    The deep SSM classifier (:class:`SSMClassifier`, built from the library's layers).
``loop``
    The training loop of one run (:func:`train_run`): AdamW groups, warm-up/cosine schedule with a
    re-warm-up after each cut, the cuts, evaluation.
``timing``
    Step times of several models measured interleaved, the only timing valid on a shared machine.
``stats``
    Wilson intervals, McNemar's test, paired t-intervals.
``comparison`` and ``report``
    One seed's three-way comparison (``lti-reduce train``), its table and plots.
``sweep``
    Tolerances x seeds, summary and paired rows, resumable (``lti-reduce sweep``).
``text``
    The text task (``--task text``): Hugging Face Mamba / Mamba2 byte-level language models on the
    standard library's text, full / cut in training / from scratch, over seeds.
``cli``
    The two subcommands, registered with the ``lti-reduce`` command through the
    ``lti_reduce.commands`` entry-point group.
"""

from .comparison import run_comparison
from .config import RUNS, ConfigError, ExperimentConfig, cut_steps, resolve_device, total_steps
from .loop import evaluate, train_run
from .models import LRUBlock, LRUClassifier, SSMBlock, SSMClassifier, build_model, default_chunk_size
from .report import format_table, save_plots
from .sweep import PAPER_SETTINGS, SweepConfig, format_sweep_table, run_sweep, save_sweep_plot, summarize
from .timing import interleaved_step_times

__all__ = ["ConfigError", "ExperimentConfig", "LRUBlock", "LRUClassifier", "PAPER_SETTINGS", "RUNS", "SSMBlock",
           "SSMClassifier", "SweepConfig", "build_model", "cut_steps", "default_chunk_size", "evaluate",
           "format_sweep_table", "format_table", "interleaved_step_times", "resolve_device", "run_comparison",
           "run_sweep", "save_plots", "save_sweep_plot", "summarize", "total_steps", "train_run"]
