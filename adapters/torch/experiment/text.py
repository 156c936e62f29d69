"""The text task: Hugging Face Mamba / Mamba2 byte-level language models, full, cut in training, and from scratch.

``lti-reduce train --task text`` and ``lti-reduce sweep --task text`` run CompreSSM's comparison on a causal
language model instead of a classifier. For every seed, three runs with the same initialization seed, the same
batches and the same optimizer:

1. ``full``: ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` (built from a configuration, nothing downloaded) at
   ``d_state`` states (default 128) for the whole run;
2. ``compressed``: the same model cut once, early (``cut_frac`` of the steps, default 10%), to ``rank`` states
   by state selection (:func:`adapters.torch.compress_selective_`, the optimizer's moments sliced to the kept
   states), then trained on at that size;
3. ``scratch``: a model built at the size (2) reached, trained from scratch for the whole run.

The corpus is text every Python installation carries (:func:`load_corpus`): the standard library's English
documentation (``pydoc_data/topics.py``) and a fixed list of its source files, split into training and
validation **by file**; the SHA-256 of each split's bytes is recorded with the results, so two results are
comparable exactly when their hashes agree (the files differ between Python versions). Validation loss is in
bits per byte, ``mean cross-entropy / ln 2``, on ``n_val`` fixed windows of the validation files (the same for
every run and seed).

Timing: the wall clock of each run's training loop (evaluations excluded), the wall-clock time at which each
run's validation loss first reaches the full model's final validation loss, and the step times of the three
trained models measured interleaved (:func:`text_step_times`), the only timing that compares state sizes on a
shared machine.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sysconfig
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .config import ConfigError
from .loop import seed_everything
from .stats import mean_std, paired_t_interval
from .timing import environment, loadavg

__all__ = ["TEXT_MODELS", "TRAIN_FILES", "VAL_FILES", "TextConfig", "TextCorpus", "build_text_model",
           "format_text_table", "load_corpus", "run_text_comparison", "run_text_sweep", "text_step_times"]

#: ``--model`` values of the text task.
TEXT_MODELS = ("mamba", "mamba2")

#: Standard-library files (relative to ``sysconfig.get_paths()["stdlib"]``) of the training split: the English
#: documentation of ``pydoc`` and modules present under these names in every CPython since 3.8.
TRAIN_FILES = ("pydoc_data/topics.py", "argparse.py", "dataclasses.py", "difflib.py", "inspect.py", "typing.py",
               "functools.py", "enum.py", "ast.py", "tokenize.py", "configparser.py", "shutil.py",
               "subprocess.py", "threading.py", "random.py", "pickle.py", "logging/__init__.py")
#: ... and of the validation split (other files: the model never trains on them).
VAL_FILES = ("textwrap.py", "fractions.py", "statistics.py", "heapq.py", "calendar.py", "csv.py")

RUNS = ("full", "compressed", "scratch")
_LN2 = math.log(2.0)


@dataclass
class TextConfig:
    """Everything that defines one text comparison; the defaults are ``lti-reduce sweep --task text``'s.

    Attributes
    ----------
    model : {"mamba", "mamba2"}
        ``MambaForCausalLM`` or ``Mamba2ForCausalLM`` (transformers), built from a configuration.
    d_model, d_state, n_layers
        Hidden size, initial state size (``config.state_size``) and number of blocks (``expand`` is 2).
    head_dim
        Mamba2's head size (``num_heads = 2 d_model / head_dim``, one group of ``B, C``).
    seq_len, batch_size, steps
        Bytes per training window (the context), windows per step, optimizer steps per run.
    lr, weight_decay, warmup_frac, grad_clip
        AdamW, linear warm-up over ``warmup_frac`` of the steps then cosine decay to 0, gradient clipping.
    rank, cut_frac, ranking, min_shrink
        The compressed run keeps ``rank`` states per layer, cut once after ``round(cut_frac * steps)`` steps,
        states ranked by ``ranking`` (:func:`adapters.torch.compress_selective_`) on ``calib_windows``
        training windows.
    n_val, eval_every
        Validation windows (of ``seq_len`` bytes, evenly spaced over the validation files) and the number of
        evaluations during each run (for the loss-against-time curve), the last one at the end.
    seed, threads, out, progress
        Seed of the initialization and the batch order; CPU threads (restored afterwards); output directory;
        progress lines.
    """

    model: str = "mamba2"
    d_model: int = 16
    d_state: int = 128
    n_layers: int = 2
    head_dim: int = 8
    seq_len: int = 256
    batch_size: int = 8
    steps: int = 300
    lr: float = 1e-2
    weight_decay: float = 0.1
    warmup_frac: float = 0.05
    grad_clip: float | None = 1.0
    rank: int = 4
    cut_frac: float = 0.1
    ranking: str = "output_energy"
    min_shrink: float = 0.05
    calib_windows: int = 16
    n_val: int = 64
    eval_every: int = 10
    seed: int = 0
    threads: int | None = 1
    out: str = "lti_reduce_text"
    progress: bool = True

    @classmethod
    def quick(cls, **overrides) -> "TextConfig":
        """Seconds on a CPU: d_model 16, d_state 16 cut to 4, 1 layer, 32-byte windows, 30 steps."""
        base = dict(d_model=16, d_state=16, n_layers=1, head_dim=8, seq_len=32, batch_size=4, steps=30, rank=4,
                    n_val=8, eval_every=3, calib_windows=4)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        return asdict(self)

    def cut_step(self) -> int:
        return max(1, int(round(self.cut_frac * self.steps)))

    def check(self) -> None:
        """Raise :class:`ConfigError` for any option that cannot work (before anything runs)."""
        if self.model not in TEXT_MODELS:
            raise ConfigError(f"the text task trains --model mamba or mamba2 (Hugging Face), got {self.model!r}.")
        for name in ("d_model", "d_state", "n_layers", "head_dim", "seq_len", "batch_size", "rank", "n_val",
                     "eval_every", "calib_windows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if self.steps < 2:
            raise ConfigError(f"steps must be at least 2, got {self.steps!r}.")
        if self.rank >= self.d_state:
            raise ConfigError(f"rank ({self.rank}) must be smaller than d_state ({self.d_state}): the compressed run "
                              "cuts to rank states; give a smaller --rank or a larger --d-state.")
        if not 0.0 < self.cut_frac < 1.0 or self.cut_step() >= self.steps:
            raise ConfigError(f"cut_frac must lie in (0, 1) and leave steps after the cut, got {self.cut_frac!r} of "
                              f"{self.steps} steps.")
        if self.model == "mamba2" and (2 * self.d_model) % self.head_dim:
            raise ConfigError(f"Mamba2 splits 2 * d_model = {2 * self.d_model} channels into heads of head_dim "
                              f"{self.head_dim}; choose a head_dim that divides it.")


# ------------------------------------------------------------------------------------------------- corpus
@dataclass
class TextCorpus:
    """Byte sequences of the two splits, the files they came from and their content hashes.

    ``train`` and ``val`` are ``uint8`` tensors of shape ``(n_bytes,)`` (the files concatenated in the order
    of :data:`TRAIN_FILES` / :data:`VAL_FILES`, each followed by a newline); ``sha256`` maps split to the
    hex digest of those bytes.
    """

    train: torch.Tensor
    val: torch.Tensor
    files: dict
    sha256: dict
    stdlib: str

    def describe(self) -> dict:
        return {"name": "stdlib-text", "stdlib": self.stdlib, "files": self.files, "sha256": self.sha256,
                "train_bytes": int(self.train.numel()), "val_bytes": int(self.val.numel())}


def load_corpus(stdlib: str | None = None) -> TextCorpus:
    """Read the training and validation files from the standard library (no download).

    Parameters
    ----------
    stdlib : str, optional
        Directory of the standard library (default ``sysconfig.get_paths()["stdlib"]``).

    Raises
    ------
    ConfigError
        A file of :data:`TRAIN_FILES` / :data:`VAL_FILES` is missing (a trimmed Python installation).
    """
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    splits, hashes = {}, {}
    for split, names in (("train", TRAIN_FILES), ("val", VAL_FILES)):
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise ConfigError(f"the text task reads standard-library files that this Python does not have under "
                              f"{root}: {missing}; use a full CPython installation (some distributions ship "
                              "pydoc_data separately, e.g. a python3-doc package).")
        data = b"".join((root / n).read_bytes() + b"\n" for n in names)
        hashes[split] = hashlib.sha256(data).hexdigest()
        splits[split] = torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()
    return TextCorpus(splits["train"], splits["val"], {"train": list(TRAIN_FILES), "val": list(VAL_FILES)}, hashes,
                      str(root))


def _windows(data: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """``(len(starts), length)`` int64 windows ``data[s : s + length]``."""
    idx = starts[:, None] + torch.arange(length)[None, :]
    return data[idx].long()


def val_windows(corpus: TextCorpus, config: TextConfig) -> torch.Tensor:
    """``n_val`` windows of ``seq_len + 1`` bytes, evenly spaced over the validation split (seed-independent)."""
    last = corpus.val.numel() - (config.seq_len + 1)
    starts = torch.linspace(0, last, config.n_val).long()
    return _windows(corpus.val, starts, config.seq_len + 1)


def train_batches(corpus: TextCorpus, config: TextConfig, seed: int):
    """The ``steps`` training batches of a seed: random windows of ``seq_len + 1`` bytes (same for every run)."""
    gen = torch.Generator().manual_seed(seed + 1)
    last = corpus.train.numel() - (config.seq_len + 1)
    for _ in range(config.steps):
        starts = torch.randint(0, last + 1, (config.batch_size,), generator=gen)
        yield _windows(corpus.train, starts, config.seq_len + 1)


# -------------------------------------------------------------------------------------------------- model
def build_text_model(config: TextConfig, d_state: int | None = None, *, seed: int | None = None):
    """``MambaForCausalLM`` or ``Mamba2ForCausalLM`` over 256 byte values, built from a configuration.

    Mamba uses transformers' pure-torch path on a CPU (``use_mambapy=True`` takes the parallel scan of the
    ``mambapy`` package where it is installed, else the sequential loop). Mamba2's ``chunk_size`` is
    ``min(seq_len, 64)``: its pure-torch path pads the sequence to a multiple of the chunk and does work over
    ``chunk x chunk`` blocks that does not depend on the state size; chunks of 64 computed the same logits
    (to 4e-7) about 2x faster than chunks of 256 on a CPU (``docs/tutorials/mamba-text.md``, Speed).
    """
    try:
        import transformers
    except ImportError as exc:
        raise ConfigError("the text task needs transformers: pip install 'lti-reduce[hf]'.") from exc
    n = int(d_state or config.d_state)
    common = dict(vocab_size=256, hidden_size=config.d_model, state_size=n, num_hidden_layers=config.n_layers,
                  expand=2, conv_kernel=4, use_cache=False, pad_token_id=0, bos_token_id=0, eos_token_id=0,
                  tie_word_embeddings=True)
    if seed is not None:
        torch.manual_seed(seed)
    if config.model == "mamba":
        cfg = transformers.MambaConfig(**common, use_mambapy=True)
        return transformers.MambaForCausalLM(cfg)
    cfg = transformers.Mamba2Config(**common, head_dim=config.head_dim, num_heads=2 * config.d_model // config.head_dim,
                                    n_groups=1, chunk_size=min(config.seq_len, 64))
    return transformers.Mamba2ForCausalLM(cfg)


def _loss(model, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy (nats) of ``batch`` of shape ``(b, seq_len + 1)``."""
    logits = model(input_ids=batch[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))


@torch.no_grad()
def val_bits_per_byte(model, windows: torch.Tensor, batch_size: int = 16) -> float:
    """Mean cross-entropy of ``model`` on ``windows`` in bits per byte (eval mode)."""
    was = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        total += float(_loss(model, chunk)) * len(chunk)
    model.train(was)
    return total / len(windows) / _LN2


def _optimizer(model, config: TextConfig):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), fused=True)
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), foreach=True)
    warmup = max(1, int(round(config.warmup_frac * config.steps)))

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, config.steps - warmup))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _step(model, opt, batch, config: TextConfig) -> torch.Tensor:
    loss = _loss(model, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    opt.step()
    return loss.detach()


def train_text_run(model, corpus: TextCorpus, config: TextConfig, *, seed: int, cut: bool, label: str = "",
                   log=None) -> dict:
    """Train ``model`` in place for ``config.steps`` steps, cutting to ``config.rank`` states if ``cut``.

    Returns
    -------
    dict
        ``train_time_s`` (training loop only, evaluations excluded), ``curve`` (``[step, train seconds so
        far, val bits/byte]`` at each evaluation), ``val_bpb`` (final), ``train_bpb`` (mean of the last 5% of
        steps), ``cut`` (step, seconds, sizes, the report's table), ``d_state`` (final).
    """
    from ..mamba import compress_selective_

    val = val_windows(corpus, config)
    opt, sched = _optimizer(model, config)
    cut_at = config.cut_step() if cut else None
    every = max(1, config.steps // config.eval_every)
    losses, curve, cut_record = [], [], None
    elapsed = 0.0
    model.train()
    for step, batch in enumerate(train_batches(corpus, config, seed)):
        if step == cut_at:
            gen = torch.Generator().manual_seed(seed + 3)
            last = corpus.train.numel() - config.seq_len
            calib = _windows(corpus.train, torch.randint(0, last, (config.calib_windows,), generator=gen),
                             config.seq_len)
            t0 = time.perf_counter()
            report = compress_selective_(model, calibration_inputs=calib, rank=config.rank, optimizer=opt,
                                         min_shrink=config.min_shrink, ranking=config.ranking)
            took = time.perf_counter() - t0
            elapsed += took
            cut_record = {"step": step, "time_s": took, "before": report.state_before, "after": report.state_after,
                          "table": str(report)}
            if log:
                log(f"{label}: cut at step {step}: state {report.state_before} -> {report.state_after} ({took:.1f}s)")
        t0 = time.perf_counter()
        losses.append(_step(model, opt, batch, config))
        sched.step()
        elapsed += time.perf_counter() - t0
        if (step + 1) % every == 0 or step + 1 == config.steps:
            bpb = val_bits_per_byte(model, val)
            curve.append([step + 1, elapsed, bpb])
            if log and config.progress:
                log(f"{label}: step {step + 1}/{config.steps} val {bpb:.4f} bits/byte, {elapsed:.0f}s")
    train_losses = [float(v) for v in torch.stack(losses)]
    if not all(math.isfinite(v) for v in train_losses):
        raise FloatingPointError(f"{label}: the training loss became NaN/Inf; lower the learning rate (--lr).")
    tail = max(1, config.steps // 20)
    return {"train_time_s": elapsed, "curve": curve, "val_bpb": curve[-1][2],
            "train_bpb": float(np.mean(train_losses[-tail:])) / _LN2, "cut": cut_record,
            "d_state": int(model.config.state_size), "steps": config.steps,
            "train_loss": train_losses[:: max(1, config.steps // 100)]}


def time_to_reach(curve, target: float) -> float | None:
    """Training seconds at the first evaluation with validation loss <= ``target`` (``None``: never)."""
    return next((t for _, t, bpb in curve if bpb <= target), None)


def text_step_times(models: dict, corpus: TextCorpus, config: TextConfig, *, rounds: int = 4,
                    steps_per_round: int = 3) -> dict:
    """Training-step time of each model, measured interleaved (ms, median over rounds; see
    :func:`adapters.torch.experiment.interleaved_step_times`, whose protocol this is for language models)."""
    batches = list(train_batches(corpus, replace(config, steps=steps_per_round), seed=10_000))
    work = {}
    for name, model in models.items():
        clone = copy.deepcopy(model).train()
        work[name] = (clone, _optimizer(clone, config)[0])
    times = {name: [] for name in work}
    names = list(work)
    for r in range(rounds + 1):
        for name in names[r % len(names):] + names[:r % len(names)]:
            clone, opt = work[name]
            start = time.perf_counter()
            for batch in batches:
                _step(clone, opt, batch, config)
            if r > 0:  # round 0 warms up
                times[name].append(1000.0 * (time.perf_counter() - start) / len(batches))
    return {name: float(np.median(v)) for name, v in times.items()}


# ----------------------------------------------------------------------------------------------- the runs
def _prepare_out(out) -> Path:
    from .comparison import prepare_output

    return prepare_output(out)


def _seed_runs(config: TextConfig, corpus: TextCorpus, seed: int, runs_dir: Path, log) -> tuple[dict, dict]:
    """The three runs of one seed (each cached in ``runs_dir``) and their interleaved step times."""
    records, models = {}, {}
    for method in RUNS:
        key = f"{method}-seed{seed}"
        path = runs_dir / f"{key}.json"
        d_state = records["compressed"]["d_state"] if method == "scratch" else None
        if path.is_file():
            records[method] = json.loads(path.read_text())
            model = build_text_model(config, records[method]["d_state"], seed=seed)
            model.load_state_dict(torch.load(runs_dir / f"{key}.pt"))
        else:
            seed_everything(seed)
            model = build_text_model(config, d_state, seed=seed)
            record = train_text_run(model, corpus, config, seed=seed, cut=method == "compressed", label=key, log=log)
            record.update({"method": method, "seed": seed, "loadavg_end": loadavg()})
            torch.save(model.state_dict(), runs_dir / f"{key}.pt")
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, path)
            records[method] = record
            log(f"{key}: val {record['val_bpb']:.4f} bits/byte, d_state {record['d_state']}, "
                f"{record['train_time_s']:.0f}s")
        models[method] = model
    timing_path = runs_dir / f"timing-seed{seed}.json"
    if timing_path.is_file():
        timing = json.loads(timing_path.read_text())
    else:
        timing = text_step_times(models, corpus, config)
        timing_path.write_text(json.dumps(timing))
    return records, timing


def summarize_text(per_seed: dict) -> dict:
    """Summary rows (mean +- std over seeds) and paired differences from ``{seed: (records, timing)}``.

    Returns
    -------
    dict
        ``summary``: per run ``val_bpb_mean``, ``val_bpb_std``, ``d_state``, ``step_ms_mean``,
        ``step_speedup_mean`` (full's interleaved step time over this run's, per seed, averaged),
        ``time_to_full_s`` (per seed: seconds to reach that seed's full model's final validation loss, ``None``
        where never reached), ``train_time_s_mean``; ``paired``: for (compressed, scratch), (compressed, full),
        (scratch, full) the per-seed differences in bits/byte, their mean and 95% t-interval and the relative
        difference to full in percent.
    """
    seeds = sorted(per_seed)
    summary = []
    for method in RUNS:
        vals = [per_seed[s][0][method]["val_bpb"] for s in seeds]
        mean, std = mean_std(vals)
        speed = [per_seed[s][1]["full"] / per_seed[s][1][method] for s in seeds]
        reach = [time_to_reach(per_seed[s][0][method]["curve"], per_seed[s][0]["full"]["val_bpb"]) for s in seeds]
        summary.append({"method": method, "d_state": per_seed[seeds[0]][0][method]["d_state"], "val_bpb": vals,
                        "val_bpb_mean": mean, "val_bpb_std": std,
                        "step_ms_mean": float(np.mean([per_seed[s][1][method] for s in seeds])),
                        "step_speedup_mean": float(np.mean(speed)), "step_speedups": speed,
                        "time_to_full_s": reach,
                        "train_time_s_mean": float(np.mean([per_seed[s][0][method]["train_time_s"] for s in seeds]))})
    paired = []
    full = np.array([per_seed[s][0]["full"]["val_bpb"] for s in seeds])
    for a, b in (("compressed", "scratch"), ("compressed", "full"), ("scratch", "full")):
        diffs = [per_seed[s][0][a]["val_bpb"] - per_seed[s][0][b]["val_bpb"] for s in seeds]
        mean, ci = paired_t_interval(diffs)
        paired.append({"a": a, "b": b, "diffs": diffs, "mean": mean, "ci95": ci,
                       "relative_to_full_pct": 100.0 * mean / float(full.mean())})
    return {"summary": summary, "paired": paired}


def _verdict(ci) -> str:
    if ci is None:
        return "one seed: no interval"
    if ci[0] > 0:
        return "first is WORSE (higher loss)"
    if ci[1] < 0:
        return "first is better (lower loss)"
    return "inside the noise"


def format_text_table(results: dict) -> str:
    """The text comparison as text: per run, bits/byte mean +- std, speed, time to the full model's loss."""
    cfg, ds = results["config"], results["dataset"]
    seeds = results["seeds"]
    lines = [f"text: byte-level causal LM on the standard library's text ({ds['train_bytes']} train / "
             f"{ds['val_bytes']} validation bytes, sha256 {ds['sha256']['train'][:12]} / {ds['sha256']['val'][:12]}), "
             f"{cfg['model']} {cfg['n_layers']} layers x d_model {cfg['d_model']}, d_state {cfg['d_state']} -> "
             f"{cfg['rank']} at step {results['cut_step']}, {cfg['steps']} steps of {cfg['batch_size']} x "
             f"{cfg['seq_len']} bytes, {cfg['n_val']} validation windows, seeds {', '.join(map(str, seeds))}"]
    head = (f"{'run':<11} {'d_state':>7} {'val bits/byte (mean +- std)':>28} {'step speed-up':>13} "
            f"{'reaches full final loss after (s, per seed)':>44}")
    lines += [head, "-" * len(head)]
    for r in results["summary"]:
        std = "" if r["val_bpb_std"] is None else f" +- {r['val_bpb_std']:.4f}"
        reach = ", ".join("never" if t is None else f"{t:.3g}" for t in r["time_to_full_s"])
        lines.append(f"{r['method']:<11} {r['d_state']:>7} {r['val_bpb_mean']:>17.4f}{std:<11} "
                     f"{r['step_speedup_mean']:>12.2f}x {reach:>44}")
    lines.append("")
    lines.append("paired per-seed differences in bits/byte (mean, 95% t-interval over seeds; % of full's loss):")
    for p in results["paired"]:
        ci = "" if p["ci95"] is None else f" [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}]"
        lines.append(f"  {p['a']} - {p['b']}: {p['mean']:+.4f}{ci} ({p['relative_to_full_pct']:+.2f}%; "
                     f"{_verdict(p['ci95'])})")
    lines.append("")
    lines.append("step speed-up: the full model's training-step time over the run's, the three trained models timed "
                 "interleaved, one thread. Times to reach the full model's final validation loss count the "
                 "training loop only (evaluations excluded), at the evaluation points.")
    return "\n".join(lines)


def save_text_plot(results: dict, path: Path) -> str | None:
    """Validation bits/byte against training wall-clock time, the three runs of every seed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colors = {"full": "0.3", "compressed": "tab:red", "scratch": "tab:green"}
    sizes = {r["method"]: r["d_state"] for r in results["summary"]}
    labels = {"full": f"full (d_state {sizes['full']})",
              "compressed": f"compressed in training ({sizes['full']} -> {sizes['compressed']})",
              "scratch": f"from scratch at {sizes['scratch']}"}
    for i, (seed, runs) in enumerate(sorted(results["runs"].items())):
        for method in RUNS:
            curve = np.array(runs[method]["curve"])
            ax.plot(curve[:, 1], curve[:, 2], color=colors[method], lw=1, alpha=0.8,
                    label=labels[method] if i == 0 else None)
    ax.set_xlabel("training wall-clock time (s; evaluations excluded)")
    ax.set_ylabel("validation loss (bits per byte)")
    ax.set_title(f"{results['config']['model']}: {len(results['seeds'])} seed(s), one line per seed and run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return str(path)


def run_text_sweep(config: TextConfig, seeds=(0, 1, 2), *, log=None) -> dict:
    """Run (or resume) the three runs for every seed into ``config.out``; return what ``results.json`` holds.

    Every run is saved under ``OUT/runs/`` as it ends, so an interrupted sweep restarts from the runs there;
    ``OUT/text.json`` records the configuration, and another configuration refuses to mix into it.

    Raises
    ------
    ConfigError
        Invalid options, missing standard-library files, or ``out`` holds another configuration.
    """
    config.check()
    seeds = tuple(int(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"give distinct seeds (three or more for intervals), got {list(seeds)}.")
    log = log or (lambda line: print(line, flush=True))
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(int(config.threads))
    try:
        return _run(config, seeds, log)
    finally:
        torch.set_num_threads(threads)


def _run(config: TextConfig, seeds, log) -> dict:
    import transformers

    wall = time.perf_counter()
    out = _prepare_out(config.out)
    runs_dir = out / "runs"
    runs_dir.mkdir(exist_ok=True)
    corpus = load_corpus()
    spec = {k: v for k, v in config.to_dict().items() if k not in ("seed", "out", "progress", "threads")}
    spec["sha256"] = corpus.sha256
    fingerprint = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    stamp = out / "text.json"
    if stamp.is_file():
        held = json.loads(stamp.read_text()).get("fingerprint")
        if held != fingerprint:
            raise ConfigError(f"'{out}' holds text runs of another configuration or corpus (fingerprint {held}, this "
                              f"one {fingerprint}); choose another --out, or delete '{out}' to start over.")
    else:
        stamp.write_text(json.dumps({"fingerprint": fingerprint, "config": config.to_dict()}, indent=1))
    per_seed = {s: _seed_runs(config, corpus, s, runs_dir, log) for s in seeds}
    env = environment(torch.device("cpu"))
    env["transformers"] = transformers.__version__
    try:
        import mambapy  # noqa: F401

        env["mambapy"] = True
    except ImportError:
        env["mambapy"] = False
    results = {"config": config.to_dict(), "fingerprint": fingerprint, "seeds": list(seeds),
               "dataset": corpus.describe(), "environment": env, "cut_step": config.cut_step()}
    results.update(summarize_text(per_seed))
    results["runs"] = {str(s): per_seed[s][0] for s in seeds}
    results["timing"] = {str(s): per_seed[s][1] for s in seeds}
    results["files"] = {"results": str(out / "results.json")}
    plot = save_text_plot(results, out / "val_loss_vs_time.png")
    if plot:
        results["files"]["plot"] = plot
    results["wall_time_s"] = time.perf_counter() - wall
    with open(out / "results.json", "w") as f:
        json.dump(results, f, indent=1)
    return results


def run_text_comparison(config: TextConfig, *, log=None) -> dict:
    """One seed's three runs (``lti-reduce train --task text``): :func:`run_text_sweep` with ``seeds=(seed,)``."""
    return run_text_sweep(config, seeds=(config.seed,), log=log)
