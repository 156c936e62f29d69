"""Selective copying with a SelectiveSSM model: d_state 64 throughout vs compressed during training.

The selective copying task (Gu & Dao 2023, section 4.1.1): ``K`` data tokens sit at random positions among
noise tokens, followed by ``K`` marker tokens; at the marker positions the model must output the data tokens
in order. An LTI model cannot solve it (the positions vary), a selective one can.

Two runs from the same initialization and data: ``full`` keeps ``d_state = 64``; ``compressed`` cuts the
state with :func:`adapters.torch.mamba.compress_selective_` (``tol``, calibrated on a training batch,
measured on a held-out batch) at the given fractions of training, as CompreSSM does. Reported: token accuracy
on held-out sequences, final ``d_state`` per block, mean step time before and after the cuts, and the
measured output change next to the averaged bound at each cut.

Usage: ``python benchmarks/bench_mamba.py [--quick] [--steps N] [--threads T]`` (under 3 minutes on 2 CPU
cores without ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from adapters.torch.mamba import SelectiveSSM, compress_selective_

BLANK, MARKER = 0, 1


def selective_copying(batch, length, k, vocab, generator):
    """Tokens (batch, length) and targets (batch, k): ``k`` data tokens in ``length - k`` slots, then markers."""
    tokens = torch.full((batch, length), BLANK, dtype=torch.long)
    data = torch.randint(2, 2 + vocab, (batch, k), generator=generator)
    slots = torch.rand(batch, length - k, generator=generator).argsort(dim=1)[:, :k].sort(dim=1).values
    tokens.scatter_(1, slots, data)
    tokens[:, length - k:] = MARKER
    return tokens, data


class Model(nn.Module):
    def __init__(self, vocab, d_model, d_state, layers):
        super().__init__()
        self.embed = nn.Embedding(vocab + 2, d_model)
        self.blocks = nn.ModuleList(SelectiveSSM(d_model, d_state) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(layers))
        self.head = nn.Linear(d_model, vocab + 2)

    def forward(self, tokens):
        h = self.embed(tokens)
        for block, norm in zip(self.blocks, self.norms):
            h = h + block(norm(h))
        return self.head(h)


def run(args, cut_at):
    torch.manual_seed(0)
    data = torch.Generator().manual_seed(1)
    model = Model(args.vocab, args.d_model, args.d_state, args.layers)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    test_tokens, test_targets = selective_copying(128, args.length, args.k, args.vocab, torch.Generator().manual_seed(2))
    cut_steps = sorted({int(f * args.steps) for f in cut_at})
    times_before, times_after, cuts = [], [], []
    for step in range(args.steps):
        if step in cut_steps:
            calib, _ = selective_copying(args.batch, args.length, args.k, args.vocab, data)
            held, _ = selective_copying(args.batch, args.length, args.k, args.vocab, data)
            report = compress_selective_(model, calibration_inputs=calib, tol=args.tol, optimizer=opt,
                                         held_out_inputs=held)
            cuts.append({"step": step, "layers": [
                {"name": x.name, "state": f"{x.before}->{x.after}", "energy_kept": round(x.energy_kept, 4),
                 "averaged_bound": x.averaged_bound,
                 "measured_gain_max": None if x.measurement is None else float(x.measurement.measured_gain.max()),
                 "ratio_median": None if x.measurement is None else x.measurement.ratio_median,
                 "within_bound": None if x.measurement is None else x.measurement.fraction_within_bound,
                 "relative_output_change": None if x.measurement is None else x.measurement.relative_output_change}
                for x in report]})
        tokens, targets = selective_copying(args.batch, args.length, args.k, args.vocab, data)
        start = time.perf_counter()
        logits = model(tokens)[:, -args.k:]
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        (times_after if cuts else times_before).append(time.perf_counter() - start)
    with torch.no_grad():
        accuracy = (model(test_tokens)[:, -args.k:].argmax(-1) == test_targets).float().mean().item()
    mean = lambda xs: round(1e3 * sum(xs[1:] or xs) / len(xs[1:] or xs), 2) if xs else None  # noqa: E731  (skip warm-up)
    return {"accuracy": round(accuracy, 4), "final_loss": round(loss.item(), 4),
            "d_state": [b.state_dim for b in model.blocks], "step_ms_before_cut": mean(times_before),
            "step_ms_after_cut": mean(times_after), "cuts": cuts}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (about 20 s)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tol", type=float, default=0.05)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.steps = args.steps or (20 if args.quick else 150)
    args.vocab, args.k, args.length, args.batch = 4, 4, 32, 32
    args.d_model, args.d_state, args.layers, args.lr = 16, 64, 2, 3e-3
    config = {k: getattr(args, k) for k in ("steps", "tol", "vocab", "k", "length", "batch", "d_model", "d_state",
                                              "layers", "lr", "threads")}
    results = {"config": config, "full": run(args, []), "compressed": run(args, [0.05, 0.1, 0.15])}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
