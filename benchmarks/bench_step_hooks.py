"""Cost per optimizer step of the global step hook that marks stepped gradients (gradient-accumulation check).

Run: ``python benchmarks/bench_step_hooks.py`` (one torch thread).

``adapters.torch`` installs a global optimizer step post-hook that sets one attribute on every gradient an
optimizer stepped (so a cut can tell gradients already used from gradients being accumulated). Measured: the
hook alone, and a whole ``torch.optim.SGD`` step (foreach) with and without it, interleaved, for models of
100, 1,000 and 10,000 parameters with gradients (small tensors: the per-parameter overhead dominates).
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from adapters.torch.cut import _guards

REPEATS = 41


def main() -> None:
    torch.set_num_threads(1)
    print("| parameters | hook alone (ms) | SGD step without (ms) | with (ms) | ratio with / without |")
    print("|---|---|---|---|---|")
    for n in (100, 1_000, 10_000):
        params = [torch.nn.Parameter(torch.randn(16)) for _ in range(n)]
        for p in params:
            p.grad = torch.randn(16)
        opt = torch.optim.SGD(params, lr=1e-3)
        hook, plain, marked = [], [], []
        for _ in range(REPEATS):
            t = time.perf_counter()
            _guards._mark_stepped(opt, (), {})
            hook.append(time.perf_counter() - t)
            _guards._MARK_HOOK.remove()
            t = time.perf_counter()
            opt.step()
            plain.append(time.perf_counter() - t)
            _guards._MARK_HOOK = register_optimizer_step_post_hook(_guards._mark_stepped)
            t = time.perf_counter()
            opt.step()
            marked.append(time.perf_counter() - t)
        ratio = statistics.median(m / p for m, p in zip(marked, plain))
        print(f"| {n:,} | {1e3 * statistics.median(hook):.3f} | {1e3 * statistics.median(plain):.3f} | "
              f"{1e3 * statistics.median(marked):.3f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
