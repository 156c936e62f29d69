"""What a cut costs a ``torch.compile``-d model: recompilation, with static and with dynamic parameter shapes.

Run: ``python benchmarks/bench_compile_cut.py [--backend inductor]`` (one torch thread; minutes on CPU).

Two copies of one model (two ``LRU(16, 64)`` layers with a GELU between, AdamW) are compiled in the same
process: ``static`` with torch's defaults (graphs specialized on parameter shapes), ``dynamic`` with
``torch._dynamo.config.force_parameter_static_shapes = False`` and ``torch.compile(dynamic=True)`` (shapes
symbolic). Printed: the first training step (compilation), the median steady step of each measured
interleaved (ratio dynamic / static), the first step after a cut to 32 modes, and the steady steps after it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch._dynamo

import adapters.torch as at

ROUNDS = 7


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="inductor")
    args = parser.parse_args()
    torch.set_num_threads(1)
    u = torch.randn(4, 128, 16, generator=torch.Generator().manual_seed(1))
    runs = {}
    for name in ("static", "dynamic"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(at.LRU(16, 64), torch.nn.GELU(), at.LRU(16, 64))
        runs[name] = {"model": model, "opt": torch.optim.AdamW(model.parameters(), lr=1e-3),
                      "compiled": torch.compile(model, backend=args.backend, dynamic=(name == "dynamic"))}

    def step(name):
        torch._dynamo.config.force_parameter_static_shapes = name == "static"  # read when a graph is traced
        r = runs[name]
        t = time.perf_counter()
        loss = r["compiled"](u).pow(2).mean()
        r["opt"].zero_grad()
        loss.backward()
        r["opt"].step()
        return time.perf_counter() - t

    def steady():
        times = {"static": [], "dynamic": []}
        for _ in range(ROUNDS):
            for name in times:
                times[name].append(step(name))
        ratios = [d / s for s, d in zip(times["static"], times["dynamic"])]
        return {k: statistics.median(v) for k, v in times.items()}, statistics.median(ratios)

    first = {name: step(name) for name in runs}
    before, ratio_before = steady()
    for name, r in runs.items():
        at.compress_(r["compiled"], rank=32, optimizer=r["opt"], certify=False)
    after_cut = {name: step(name) for name in runs}
    after, ratio_after = steady()
    print(f"backend {args.backend}, torch {torch.__version__}, 1 thread\n")
    print("| parameter shapes | first step (s) | steady step (ms) | first step after the cut (s) | steady after (ms) |")
    print("|---|---|---|---|---|")
    for name in runs:
        print(f"| {name} | {first[name]:.1f} | {1e3 * before[name]:.1f} | {after_cut[name]:.1f} | {1e3 * after[name]:.1f} |")
    print(f"\nsteady step, dynamic / static (median of {ROUNDS} interleaved pairs): {ratio_before:.2f} before the cut, "
          f"{ratio_after:.2f} after")


if __name__ == "__main__":
    main()
