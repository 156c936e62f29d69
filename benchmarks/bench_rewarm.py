"""Training right after a cut: the loss with and without ``compress_``'s re-warm-up of the cut parameters.

A cut resets the optimizer state of the parameters it re-bases; Adam's first steps from zero moments
then move every element by about the full learning rate. ``compress_(..., rewarm_steps=20)`` (the
default) ramps those parameters' updates up over 20 steps; ``rewarm_steps=0`` does not. Model: a
linear encoder, an LRU block, LayerNorm, an S5 block and a linear head (d_model 16, 48 modes each),
AdamW (lr 3e-3, weight decay 0.01) on a synthetic filtering task; one cut at ``tol=0.05`` after 100
steps, then 200 more steps. Same seeds, same batches for both arms; printed per seed and as the
median over seeds of the ratio (ramp / no ramp).

Run: ``python benchmarks/bench_rewarm.py [--seeds 0 1 2 3 4]``
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

import adapters.torch as at


class Net(nn.Module):
    def __init__(self, d_in=3, d=16, n=48):
        super().__init__()
        self.enc = nn.Linear(d_in, d)
        self.lru = at.LRU(d, n)
        self.norm = nn.LayerNorm(d)
        self.s5 = at.S5(d, n)
        self.head = nn.Linear(d, 1)

    def forward(self, x):
        h = self.enc(x)
        h = h + nn.functional.gelu(self.lru(h))
        h = self.norm(h)
        h = h + self.s5(h)
        return self.head(h).squeeze(-1)


def batch(gen, bs=32, length=100):
    """Inputs (bs, length, 3); target: a leaky integrator of two inputs plus the third delayed by 5."""
    x = torch.randn(bs, length, 3, generator=gen)
    y = torch.zeros(bs, length)
    s = torch.zeros(bs)
    for t in range(length):
        s = 0.9 * s + 0.3 * x[:, t, 0] - 0.2 * x[:, t, 1]
        y[:, t] = s + (x[:, t - 5, 2] if t >= 5 else 0.0)
    return x, y


def run(seed: int, rewarm_steps: int, before: int = 100, after: int = 200):
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(1000 + seed)
    losses, state = [], None
    for step in range(1, before + after + 1):
        x, y = batch(gen)
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == before:
            report = at.compress_(model, tol=0.05, optimizer=opt, rewarm_steps=rewarm_steps, certify=False)
            state = (report.state_before, report.state_after)
    return {"at_cut": losses[before - 1], "worst_30": max(losses[before:before + 30]),
            "mean_30": statistics.fmean(losses[before:before + 30]), "final": statistics.fmean(losses[-20:]),
            "state": state}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}; loss (MSE) at the cut, worst and mean of the 30 steps after it, "
          "mean of the last 20 steps")
    print(f"{'seed':>4} {'state':>9} {'arm':>10} {'at cut':>8} {'worst 30':>9} {'mean 30':>8} {'final':>8}")
    ratios = {"worst_30": [], "mean_30": [], "final": []}
    for seed in args.seeds:
        res = {k: run(seed, k) for k in (20, 0)}
        for k, name in ((0, "no ramp"), (20, "ramp 20")):
            r = res[k]
            st = f"{r['state'][0]}->{r['state'][1]}"
            print(f"{seed:>4} {st:>9} {name:>10} {r['at_cut']:8.4f} {r['worst_30']:9.4f} {r['mean_30']:8.4f} "
                  f"{r['final']:8.4f}")
        for key in ratios:
            ratios[key].append(res[20][key] / res[0][key])
    print("median over seeds of ramp / no ramp: " + ", ".join(
        f"{k} {statistics.median(v):.3f} (range {min(v):.3f}-{max(v):.3f})" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
