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
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .config import ConfigError
from .loop import seed_everything
from .sweep import _open_output
from .text_data import (
    TRAIN_FILES,
    VAL_FILES,
    TextCorpus,
    _windows,
    load_corpus,
    train_batches,
    val_windows,
)
from .text_report import RUNS, format_text_table, save_text_plot, summarize_text
from .timing import environment, loadavg

__all__ = ["TEXT_MODELS", "TRAIN_FILES", "VAL_FILES", "TextConfig", "TextCorpus", "build_text_model",
           "format_text_table", "load_corpus", "run_text_comparison", "run_text_sweep", "text_step_times"]

#: ``--model`` values of the text task.
TEXT_MODELS = ("mamba", "mamba2")

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
    from ..cut.selective import compress_selective_

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
    corpus = load_corpus()
    spec = {k: v for k, v in config.to_dict().items() if k not in ("seed", "out", "progress", "threads")}
    spec["sha256"] = corpus.sha256
    fingerprint = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    out, runs_dir = _open_output(config.out, fingerprint, {"config": config.to_dict()}, name="text.json",
                                 held_what="text runs of another configuration or corpus")
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
