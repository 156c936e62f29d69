"""The ``train`` and ``sweep`` subcommands of ``lti-reduce``, registered from the adapter's side.

``pyproject.toml`` declares them in the ``lti_reduce.commands`` entry-point group, which the
core's command line reads; this module imports torch only when a command runs.
``python -m adapters.torch.experiment train|sweep ...`` runs them without the entry points.

``lti-reduce train [--dataset mnist1d|smnist|scifar] [--data-dir D] [--tol T] [--cuts STEPS | --schedule K@F]
[--seed S] [--epochs E | --steps N] [--device auto|cpu|cuda] [--out DIR] [--quick]``
    One seed of CompreSSM's comparison (:func:`adapters.torch.experiment.run_comparison`), each
    accuracy with its 95% interval and each difference tested against the noise.
``lti-reduce sweep [--tols T,...] [--seeds S,...] [--model lru] [--dataset ...] [--out DIR] [--quick]``
    Tolerances x seeds (:func:`adapters.torch.experiment.run_sweep`), resumable from ``--out``.
``lti-reduce train|sweep --task text [--model mamba|mamba2] [--rank R] [--seq-len T] ...``
    Hugging Face Mamba / Mamba2 byte-level language models on the standard library's text: full size,
    cut to ``--rank`` states early in training, and from scratch at that size
    (:mod:`adapters.torch.experiment.text`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lti_reduce._cli import UserError, _open_unit_float, _positive_float, _positive_int
from lti_reduce._cli import main as _core_main

__all__ = ["main", "register_sweep", "register_train"]

_DATASET_HELP = ("mnist1d (default; generated locally, no download), or sequential MNIST / CIFAR-10 read from "
                 "--data-dir with torchvision (never downloaded)")


def _step_list(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated step numbers like 50,100,150, got {text!r}") from None
    if not steps or min(steps) < 1:
        raise argparse.ArgumentTypeError(f"expected positive step numbers like 50,100,150, got {text!r}")
    return steps


def _schedule(text: str) -> tuple[int, float]:
    try:
        count, fraction = text.split("@")
        count, fraction = int(count), float(fraction)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K@F, e.g. 4@0.1 (4 cuts in the first 10% of steps), "
                                         f"got {text!r}") from None
    if count < 1 or not 0.0 < fraction <= 1.0:
        raise argparse.ArgumentTypeError(f"need K >= 1 and 0 < F <= 1 in K@F, got {text!r}")
    return count, fraction


def _tol_list(text: str) -> tuple[float, ...]:
    try:
        tols = tuple(_open_unit_float(t) for t in text.split(",") if t.strip())
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated tolerances in (0, 1) like 0.05,0.1, "
                                         f"got {text!r}") from None
    if not tols:
        raise argparse.ArgumentTypeError(f"expected tolerances like 0.05,0.1, got {text!r}")
    return tols


def _seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer seeds like 0,1,2, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"expected seeds like 0,1,2, got {text!r}")
    return seeds


def _test_size(text: str) -> int | None:
    value = _positive_int(text) if text != "0" else 0
    return None if value == 0 else value


def _common_options(p, defaults) -> None:
    p.add_argument("--dataset", choices=("mnist1d", "smnist", "scifar"), default="mnist1d", help=_DATASET_HELP)
    p.add_argument("--data-dir", metavar="DIR", help="for smnist/scifar: the directory with torchvision's files; for "
                   "mnist1d: where the generated data are cached (default ~/.cache/lti_reduce)")
    p.add_argument("--mnist1d-test", type=_test_size, metavar="N", default=argparse.SUPPRESS,
                   help=f"MNIST-1D test examples to generate besides the 4000 training ones (default "
                   f"{defaults.mnist1d_test}; 0: the published 4000/1000 split)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_positive_int, metavar="E", help=f"epochs per run (default {defaults.epochs})")
    length.add_argument("--steps", type=_positive_int, metavar="N", help="optimizer steps per run")
    p.add_argument("--d-state", type=_positive_int, metavar="N",
                   help=f"initial state size per layer, in complex modes (default {defaults.d_state})")
    p.add_argument("--d-model", type=_positive_int, metavar="H", help=f"model width (default {defaults.d_model})")
    p.add_argument("--layers", type=_positive_int, metavar="L",
                   help=f"number of LRU blocks (default {defaults.n_layers})")
    p.add_argument("--batch-size", type=_positive_int, metavar="B",
                   help=f"batch size (default {defaults.batch_size})")
    p.add_argument("--lr", type=_positive_float, metavar="LR", help=f"peak learning rate (default {defaults.lr:g})")
    p.add_argument("--rewarm-steps", type=int, metavar="K",
                   help=f"after a cut, ramp the SSM parameters' learning rate up over K steps (default "
                   f"{defaults.rewarm_steps})")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=_positive_int, metavar="N",
                   help="CPU threads for PyTorch (default: PyTorch's choice, usually the number of cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


_TASK_HELP = ("classify (default): an SSM classifier on --dataset; delay: recall the input at lags up to half the "
              "sequence length, scored by R^2 (adapters.torch.experiment.delay); text: a Hugging Face Mamba/Mamba2 "
              "byte-level language model on the standard library's text (no download), see "
              "'lti-reduce sweep --task text'")


def _text_options(p) -> None:
    p.add_argument("--task", choices=("classify", "delay", "text"), default="classify", help=_TASK_HELP)
    p.add_argument("--rank", type=_positive_int, metavar="R",
                   help="--task text: states per layer the compressed run keeps (default 4)")
    p.add_argument("--seq-len", type=_positive_int, metavar="T",
                   help="--task text: bytes per training window, the context (default 256)")
    p.add_argument("--head-dim", type=_positive_int, metavar="P",
                   help="--task text, Mamba2: channels per head, dividing 2 * --d-model (default 8)")


def _text_config(args):
    """The :class:`~adapters.torch.experiment.text.TextConfig` of ``--task text`` (classifier options refused)."""
    from .config import ConfigError
    from .text import TEXT_MODELS, TextConfig

    model = getattr(args, "model", None) or "mamba2"
    if model not in TEXT_MODELS:
        raise UserError(f"--task text trains --model mamba or mamba2 (Hugging Face), got --model {model}.")
    ignored = [flag for flag, value in (("--dataset", args.dataset != "mnist1d"), ("--data-dir", args.data_dir),
                                        ("--epochs", args.epochs), ("--tol", getattr(args, "tol", None)),
                                        ("--cuts", getattr(args, "cuts", None)),
                                        ("--schedule", getattr(args, "schedule", None)),
                                        ("--tols", getattr(args, "tols", None)),
                                        ("--rewarm-steps", args.rewarm_steps),
                                        ("--mnist1d-test", hasattr(args, "mnist1d_test"))) if value]
    if args.device not in ("auto", "cpu"):
        raise UserError(f"--task text runs on the CPU (transformers' pure-torch Mamba paths); got --device "
                        f"{args.device}. Use --device cpu or leave it out.")
    if ignored:
        raise UserError(f"{', '.join(ignored)} belong to the classification task; --task text cuts once, to --rank "
                        "states, after 10% of --steps.")
    fields = {"model": model, "steps": args.steps, "d_state": args.d_state, "d_model": args.d_model,
              "n_layers": args.layers, "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads,
              "rank": args.rank, "seq_len": args.seq_len, "head_dim": args.head_dim,
              "seed": getattr(args, "seed", None),
              "progress": not args.no_progress}
    fields = {k: v for k, v in fields.items() if v is not None}
    out = args.out if args.out not in ("lti_reduce_run", "lti_reduce_sweep") else "lti_reduce_text"
    config = TextConfig.quick(out=out, **fields) if args.quick else TextConfig(out=out, **fields)
    try:
        config.check()
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    return config


def run_and_print(run, format_table, out, *, errors: tuple = ()) -> int:
    """Run a command's experiment (``run()``), print its table, the files it wrote and its wall time.

    The experiment's errors for bad options (``ConfigError``, a diverged loss, and ``errors``) become a
    ``UserError``: the command line prints the message without a traceback.
    """
    from .config import ConfigError

    try:
        results = run()
    except (ConfigError, FloatingPointError, *errors) as exc:
        raise UserError(str(exc)) from None
    print(format_table(results))
    files = results.get("files", {})
    print(f"\nwrote {', '.join(Path(f).name for f in files.values())} to {Path(out)}")
    print(f"total wall time {results['wall_time_s']:.1f}s")
    return 0


def _cmd_text(args, seeds) -> int:
    from .text import format_text_table, run_text_sweep

    config = _text_config(args)
    return run_and_print(lambda: run_text_sweep(config, seeds=seeds if seeds else (config.seed,)), format_text_table,
                         config.out)


def _overrides(args) -> dict:
    overrides = {"dataset": args.dataset, "data_dir": args.data_dir, "out": args.out, "device": args.device,
                 "progress": not args.no_progress}
    optional = {"seed": getattr(args, "seed", None), "epochs": args.epochs, "steps": args.steps,
                "d_state": args.d_state, "d_model": args.d_model, "n_layers": args.layers,
                "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads,
                "rewarm_steps": args.rewarm_steps, "tol": getattr(args, "tol", None),
                "cuts": getattr(args, "cuts", None), "model": getattr(args, "model", None)}
    overrides.update({k: v for k, v in optional.items() if v is not None})
    if hasattr(args, "mnist1d_test"):
        overrides["mnist1d_test"] = args.mnist1d_test
    if args.epochs is not None:
        overrides["steps"] = None
    if getattr(args, "schedule", None) is not None:
        overrides["n_cuts"], overrides["cut_window"] = args.schedule
        overrides["cuts"] = None
    return overrides


# --------------------------------------------------------------------------------------------------- train
def register_train(sub) -> None:
    """Add the ``train`` subcommand to the ``lti-reduce`` subparsers ``sub``."""
    from .config import ExperimentConfig  # imports torch; done only when train is the command

    d = ExperimentConfig()
    tr = sub.add_parser("train", help="train an LRU classifier three ways: full size, compressed in training, "
                        "small from scratch",
                        description="CompreSSM's comparison on a sequence-classification task: (1) full-size LRU "
                        "baseline, (2) the same model cut by balanced truncation early in training (once, at 10% of the "
                        "steps, by default), "
                        "(3) a model trained from scratch at the sizes (2) reached. Prints a table with a 95% "
                        "interval on each accuracy and McNemar's test of each difference, and writes results.json "
                        "and PNG plots into --out. One seed is one sample: see 'lti-reduce sweep'.")
    _common_options(tr, d)
    tr.add_argument("--tol", type=_open_unit_float, metavar="T",
                    help=f"fraction of each layer's HSV energy one cut may drop (default {d.tol:g})")
    cuts = tr.add_mutually_exclusive_group()
    cuts.add_argument("--cuts", type=_step_list, metavar="STEPS", help="comma-separated steps at which (2) cuts, "
                      "e.g. 50,100,150")
    cuts.add_argument("--schedule", type=_schedule, metavar="K@F", help=f"K cuts spread evenly over the first "
                      f"fraction F of the steps (default {d.n_cuts}@{d.cut_window:g}; CompreSSM's is 4@0.1)")
    tr.add_argument("--seed", type=int, metavar="S", help=f"random seed (default {d.seed})")
    tr.add_argument("--model", choices=("mamba", "mamba2"), default=None,
                    help="--task text: MambaForCausalLM or Mamba2ForCausalLM (default mamba2)")
    _text_options(tr)
    tr.add_argument("--out", metavar="DIR", default="lti_reduce_run",
                    help="output directory, created if its parent exists (default ./lti_reduce_run)")
    tr.add_argument("--quick", action="store_true", help="a smoke test that runs in seconds: d_model 16, d_state 32, "
                    "2 layers, 40 steps on 1000 examples, cuts at steps 5 and 10, one thread, the published "
                    "1000-example test split (500 of it); --task text: d_model 16, d_state 16 cut to 4, 1 layer, "
                    "32-byte windows, 30 steps")
    tr.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    if args.task == "text":
        return _cmd_text(args, None)
    if args.model is not None:
        raise UserError("--model mamba/mamba2 trains the text task: add --task text.")
    from ..data import DatasetError
    from .comparison import run_comparison
    from .config import ExperimentConfig
    from .report import format_table

    if args.task == "delay":
        from .delay import delay_command
        return delay_command(args, _overrides(args), train=True)
    overrides = _overrides(args)
    config = ExperimentConfig.quick(**overrides) if args.quick else ExperimentConfig(**overrides)
    return run_and_print(lambda: run_comparison(config), format_table, config.out, errors=(DatasetError,))


# --------------------------------------------------------------------------------------------------- sweep
def register_sweep(sub) -> None:
    """Add the ``sweep`` subcommand to the ``lti-reduce`` subparsers ``sub``."""
    from .config import MODELS
    from .sweep import DEFAULT_TOLS, PAPER_SETTINGS, SweepConfig

    s = SweepConfig()
    d = s.base
    paper = "; ".join(f"{name}: tolerances {','.join(map(str, v['tols']))}, paper {v['reported']}"
                      for name, v in PAPER_SETTINGS.items())
    sw = sub.add_parser("sweep", help="accuracy vs state size over tolerances and seeds: full, compressed in training, "
                        "from scratch at that size",
                        description="CompreSSM's central comparison: for each seed the full-size model, and for each "
                        "tolerance the model compressed in training and one trained from scratch at the size it "
                        "reached, with the same steps. Prints mean +- std over seeds, paired per-seed differences "
                        "with 95% t-intervals and speed-ups, writes results.json and accuracy_vs_state.png into "
                        "--out, and resumes from the runs already there. The default (MNIST-1D, 2 x LRU 256, "
                        f"{s.base.epochs} epochs, tolerances {','.join(map(str, DEFAULT_TOLS))}, seeds 0,1,2, one "
                        "thread) is sized for at most 30 minutes on 2 quiet CPU cores. --dataset smnist/scifar take the paper's settings "
                        f"(arXiv 2510.02823, Table 1) and need a GPU: {paper}.")
    _common_options(sw, d)
    sw.add_argument("--model", choices=MODELS + ("mamba", "mamba2"), default=None,
                    help="the layer of every block (default lru; the others only where the library has them); "
                    "--task text: mamba or mamba2 (Hugging Face; default mamba2)")
    _text_options(sw)
    sw.add_argument("--tols", type=_tol_list, metavar="T,...",
                    help=f"tolerances (default {','.join(map(str, DEFAULT_TOLS))}; the paper's for smnist/scifar)")
    sw.add_argument("--seeds", type=_seed_list, metavar="S,...",
                    help=f"seeds (default {','.join(map(str, s.seeds))}; at least 3 for intervals)")
    sw.add_argument("--schedule", type=_schedule, metavar="K@F", help=f"K cuts spread evenly over the first fraction "
                    f"F of the steps (default {d.n_cuts}@{d.cut_window:g})")
    sw.add_argument("--out", metavar="DIR", default="lti_reduce_sweep",
                    help="output directory, created if its parent exists; a sweep resumes from the runs in it "
                    "(default ./lti_reduce_sweep)")
    sw.add_argument("--quick", action="store_true", help="about a minute: d_model 16, d_state 32, 150 steps on "
                    "1000 examples, tolerances 0.05,0.2, seeds 0,1,2, one thread; --task text: the tiny model of "
                    "'train --task text --quick' for seeds 0,1,2")
    sw.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args) -> int:
    from dataclasses import replace

    if args.task == "text":
        return _cmd_text(args, args.seeds or (0, 1, 2))
    if args.model in ("mamba", "mamba2"):
        raise UserError(f"--model {args.model} trains the text task: add --task text.")

    from ..data import DatasetError
    from .sweep import PAPER_SETTINGS, SweepConfig, format_sweep_table, run_sweep

    if args.task == "delay":
        from .delay import delay_command
        return delay_command(args, _overrides(args), train=False)
    sweep = SweepConfig.quick() if args.quick else SweepConfig()
    preset = None if args.quick else PAPER_SETTINGS.get(args.dataset)
    base = replace(sweep.base, **preset["config"]) if preset else sweep.base
    base = replace(base, **_overrides(args))
    tols = args.tols or (preset["tols"] if preset else sweep.tols)
    sweep = replace(sweep, base=base, tols=tols, seeds=args.seeds or sweep.seeds)
    return run_and_print(lambda: run_sweep(sweep), format_sweep_table, base.out, errors=(DatasetError,))


def main(argv=None) -> int:
    """``lti-reduce`` with this module's commands (for ``python -m adapters.torch.experiment``)."""
    return _core_main(argv, commands={"train": register_train, "sweep": register_sweep})
