"""Training-step time of selective SSMs at d_state 128 and at the size a tol=0.05 cut reaches.

Two models, each trained briefly at state size 128, then cut with
:func:`adapters.torch.mamba.compress_selective_` (``tol=0.05``: each layer keeps the fewest states whose
removal changes its state path's output by at most 5% on calibration data):

* ``SelectiveSSM``: 2 blocks (d_model 32, d_inner 64) classifying MNIST-1D (batch 16, length 40), the
  library's chunked scan;
* ``MambaForCausalLM`` (transformers, pure-torch path: the mixer's sequential scan): hidden 32,
  2 layers, a copy task (batch 8, length 32).

Besides the uncut model (128) and the cut one (``r``), copies cut to 64, 32, 16 and 4 states (``rank=``) show how
the step time scales with the state. All copies of a model are timed interleaved in one run (one
forward + backward + Adam step each, in turn, ``--repeats`` rounds after two warm-up rounds); reported are
median milliseconds per step and the ratio to the 128-state model.

``--models text_default,text_mamba,text_mamba2`` times text-task models instead: ``text_default`` is the
default of ``lti-reduce sweep --task text`` (Mamba2, d_model 16, heads of 8, 256-byte windows, ``chunk_size``
64), ``text_mamba`` Mamba d_model 32 on 64-byte windows, ``text_mamba2`` Mamba2 d_model 64 (heads of 16) on
128-byte windows with ``chunk_size`` 128; batch 8, standard-library bytes. ``--profile`` prints the operators
that take a step's time at 128 states and at the smallest size.
transformers' Mamba takes ``mambapy``'s parallel scan on a CPU where that package is installed (``use_mambapy``),
else a Python loop over time steps whose backward materializes a ``(batch, d_inner, length, d_state)`` zero tensor
per step (``SelectBackward``): quadratic in the length and linear in the state.

Usage: ``python benchmarks/bench_mamba.py [--quick] [--repeats 15] [--threads 1] [--models ...] [--profile]``
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import numpy as np
import torch
from torch import nn

from adapters.torch.mamba import SelectiveSSM, compress_selective_

STATE = 128


class Classifier(nn.Module):
    def __init__(self, d_model=32, d_state=STATE, layers=2, classes=10):
        super().__init__()
        self.encoder = nn.Linear(1, d_model)
        self.blocks = nn.ModuleList(SelectiveSSM(d_model, d_state) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(layers))
        self.head = nn.Linear(d_model, classes)

    def forward(self, x):
        h = self.encoder(x)
        for block, norm in zip(self.blocks, self.norms):
            h = h + block(norm(h))
        return self.head(h.mean(1))


def selective_ssm_setup(seed):
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    x = torch.as_tensor(np.asarray(data["x"]), dtype=torch.float32)[..., None]
    y = torch.as_tensor(data["y"])
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)

    def batch():
        idx = torch.randint(0, x.shape[0], (16,), generator=g)
        return x[idx], y[idx]

    def loss_fn(model, b):
        return nn.functional.cross_entropy(model(b[0]), b[1])

    return Classifier(), batch, loss_fn, x[:64], x[64:128]


def hf_mamba_setup(seed):
    import transformers

    vocab = 16
    torch.manual_seed(seed)
    model = transformers.MambaForCausalLM(transformers.MambaConfig(
        vocab_size=vocab, hidden_size=32, state_size=STATE, num_hidden_layers=2, expand=2, conv_kernel=4,
        time_step_rank=4))
    g = torch.Generator().manual_seed(seed)

    def tokens(n, gen):
        prefix = torch.randint(1, vocab, (n, 16), generator=gen)
        return torch.cat([prefix, prefix], dim=1)

    def batch():
        return tokens(8, g)

    def loss_fn(model, ids):
        return model(ids, labels=ids).loss

    return model, batch, loss_fn, tokens(32, torch.Generator().manual_seed(99)), tokens(32, torch.Generator().manual_seed(98))


def text_setup(model_name, d_model, seq_len, batch_size=8, head_dim=16):
    """A text-task model (:func:`adapters.torch.experiment.text.build_text_model`) on its standard-library bytes."""
    from adapters.torch.experiment.text import TextConfig, _loss, _windows, build_text_model, load_corpus

    def setup(seed):
        config = TextConfig(model=model_name, d_model=d_model, seq_len=seq_len, batch_size=batch_size,
                            head_dim=head_dim, d_state=STATE)
        corpus = load_corpus()
        model = build_text_model(config, seed=seed)
        g = torch.Generator().manual_seed(seed)
        last = corpus.train.numel() - seq_len - 1

        def windows(n, gen):
            return _windows(corpus.train, torch.randint(0, last, (n,), generator=gen), seq_len + 1)

        def batch():
            return windows(batch_size, g)

        calib = windows(16, torch.Generator().manual_seed(99))[:, :-1]
        held = windows(16, torch.Generator().manual_seed(98))[:, :-1]
        return model, batch, _loss, calib, held

    return setup


SETUPS = {"selective": ("SelectiveSSM", selective_ssm_setup), "hf_mamba": ("MambaForCausalLM", hf_mamba_setup),
          "text_mamba": ("Mamba text (d 32, T 64)", text_setup("mamba", 32, 64)),
          "text_mamba2": ("Mamba2 text (d 64, T 128)", text_setup("mamba2", 64, 128)),
          "text_default": ("Mamba2 text default (d 16, T 256)", text_setup("mamba2", 16, 256, head_dim=8))}


def profile_step(name, model, batch, loss_fn, rows=8):
    """The operators that take a training step's time (torch.profiler, self CPU time)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    b = batch()
    for _ in range(2):
        loss = loss_fn(model, b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.profiler.profile() as prof:
        loss = loss_fn(model, b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    print(f"--- profile: {name}\n{table}", flush=True)
    return table


def bench(name, setup, train_steps, repeats, seed=0, profile=False):
    model, batch, loss_fn, calib, held = setup(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(train_steps):
        loss = loss_fn(model, batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
    cut = copy.deepcopy(model)
    report = compress_selective_(cut, calibration_inputs=calib, tol=0.05, held_out_inputs=held, optimizer=None)
    r = max(x.after for x in report)
    variants = {STATE: model, r: cut}
    for size in (64, 32, 16, 4):
        if size not in variants:
            m = copy.deepcopy(model)
            compress_selective_(m, calibration_inputs=calib, rank=size, min_shrink=0.0, optimizer=None)
            variants[size] = m
    opts = {k: torch.optim.Adam(m.parameters(), lr=3e-3) for k, m in variants.items()}
    times = {k: [] for k in variants}
    for rnd in range(repeats + 2):
        b = batch()
        for k, m in variants.items():  # interleaved: every size sees the same machine state in turn
            start = time.perf_counter()
            loss = loss_fn(m, b)
            opts[k].zero_grad()
            loss.backward()
            opts[k].step()
            if rnd >= 2:
                times[k].append(time.perf_counter() - start)
    if profile:
        for k in (STATE, min(variants)):
            profile_step(f"{name}, d_state {k}", copy.deepcopy(variants[k]), batch, loss_fn)
    base = statistics.median(times[STATE])
    rows = [{"model": name, "state": k, "cut_by_tol": k == r, "ms_per_step": round(1e3 * statistics.median(v), 2),
             "ratio_to_128": round(statistics.median(v) / base, 3)} for k, v in sorted(times.items(), reverse=True)]
    cut_info = [{"layer": x.name, "state": f"{x.before}->{x.after}", "path_change_calibration": round(x.calibration_change, 4),
                 "held_out_output_change": round(x.error, 5)} for x in report]
    return rows, cut_info


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 training steps, 3 rounds (a smoke run)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="selective,hf_mamba",
                        help=f"comma-separated, of {', '.join(SETUPS)} (text_*: the text task's models)")
    parser.add_argument("--profile", action="store_true", help="print the top operators of one step at 128 and "
                        "at the smallest size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_steps, repeats = (3, 3) if args.quick else (args.train_steps, args.repeats)
    out = {"config": {"train_steps": train_steps, "repeats": repeats, "threads": args.threads, "tol": 0.05}}
    print(f"{'model':<18} {'state':>6} {'ms/step':>9} {'vs 128':>7}")
    for key in args.models.split(","):
        name, setup = SETUPS[key]
        rows, cut = bench(name, setup, train_steps, repeats, profile=args.profile)
        out[name] = {"steps": rows, "cut": cut}
        for row in rows:
            mark = " (tol=0.05 cut)" if row["cut_by_tol"] else ""
            print(f"{name:<18} {row['state']:>6} {row['ms_per_step']:>9.2f} {row['ratio_to_128']:>7.3f}{mark}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
