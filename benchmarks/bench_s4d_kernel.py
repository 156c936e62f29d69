"""S4D's convolution kernel with real exponentials against the previous complex-``exp`` kernel, side by side.

``S4D.kernel`` evaluates ``Abar^l = exp(l log Abar)`` as ``e^(l Re log Abar) (cos + i sin)(l Im log Abar)`` in
real tensors; the previous version called ``torch.exp`` on complex tensors, which some CPU builds evaluate one
element at a time. Both are timed in the same process, interleaved over ``--repeats`` rounds (the order of the
two alternates from round to round), on the same model and inputs:

* ``kernel``: ``layer.kernel(L)`` of one ``S4D(512, 32)`` (forward only, no autograd); ``kernel fwd+bwd``: the
  same with autograd and the backward pass of ``(K * G).sum()`` for a fixed random ``G``;
* ``step``: one training step (forward + backward + AdamW) of 6 x ``S4D(512, 32)`` at batch 16 x length 1024,
  the S4D model of ``bench_compress.py``;
* ``cut``: ``report = compress_(model, tol=0.05, optimizer=opt)`` + ``print(report)`` on a fresh copy of that
  model after 2 training steps (the copy is made outside the timed region), as in ``bench_compress.py``; one
  untimed cut of each version comes first (the first cut in a process pays one-time costs);
* ``step: in kernel``, ``cut: in kernel``: the wall time of those spent inside ``S4D.kernel`` calls (their
  forward; a step's backward through the kernel is not in it), a direct measure of what the change saves.

The previous kernel is an inline copy below (``previous_kernel``); it is swapped in for the ``old`` runs only.
Reported: medians [s] of wall time and of the process's CPU time (with one thread, CPU time leaves out the
time the process waited for a core on a shared machine), the ratio new / old of the medians and the median of
the per-round ratios (``paired``; below 1: the new kernel is faster), and the largest difference of the two
kernels relative to the largest kernel entry.

    python benchmarks/bench_s4d_kernel.py [--quick] [--repeats 3] [--threads 1] [--tune-malloc]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import os
import statistics
import sys
import time
from pathlib import Path

# numpy's OpenBLAS (used by the core's modal form) reads its thread count at import:
# match it to --threads (default 1) before anything imports numpy.
_threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
if _threads != "0":
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _threads

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import adapters.torch as at  # noqa: E402
from adapters.torch.layers.s4d import S4D  # noqa: E402
from bench_lru_step import tune_glibc_malloc  # noqa: E402  (this folder)

BATCH = 16


def previous_kernel(self, length: int) -> torch.Tensor:
    """``S4D.kernel`` as it was before: the same blocked product, with ``torch.exp`` of complex tensors."""
    _, log_lam, Bbar = self.discretize()
    weight = torch.complex(self.C_re, self.C_im) * Bbar  # (H, n)
    T = max(1, math.isqrt(max(length - 1, 0)) + 1)
    blocks = -(-length // T)
    real = log_lam.real.dtype
    inner = torch.exp(log_lam.unsqueeze(-1) * torch.arange(T, device=log_lam.device, dtype=real))  # (H, n, T)
    outer = weight.unsqueeze(-2) * torch.exp(
        log_lam.unsqueeze(-2) * (T * torch.arange(blocks, device=log_lam.device, dtype=real)).unsqueeze(-1))
    left = torch.cat([outer.real, -outer.imag], dim=-1)  # (H, A, 2n)
    right = torch.cat([inner.real, inner.imag], dim=-2)  # (H, 2n, T)
    return 2 * torch.matmul(left, right).flatten(-2)[..., :length]


CURRENT_KERNEL = S4D.kernel
IN_KERNEL = [0.0]  # wall time spent inside S4D.kernel calls (their forward) since the last reset


@contextlib.contextmanager
def kernel_version(which: str):
    """Run the block with ``S4D.kernel`` set to the ``"new"`` (current) or ``"old"`` (previous) version, timed."""
    kernel = CURRENT_KERNEL if which == "new" else previous_kernel

    def counted(self, length):
        t = time.perf_counter()
        try:
            return kernel(self, length)
        finally:
            IN_KERNEL[0] += time.perf_counter() - t

    S4D.kernel = counted
    try:
        yield
    finally:
        S4D.kernel = CURRENT_KERNEL


def in_kernel(fn):
    """``fn()``'s result and the wall time [s] its ``S4D.kernel`` calls took."""
    IN_KERNEL[0] = 0.0
    result = fn()
    return result, IN_KERNEL[0]


def timed(fn) -> tuple[float, float]:
    """Wall time and this process's CPU time of ``fn()`` [s] (one thread: CPU time leaves out waits for a core)."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="S4D(64, 8), length 128, 2 layers, one round (smoke run)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both versions (default 1: steady on a shared machine; 0 = torch's default)")
    ap.add_argument("--tune-malloc", action="store_true",
                    help="glibc: keep freed memory in the process (less page-fault noise in some VMs)")
    args = ap.parse_args()
    tuned = args.tune_malloc and tune_glibc_malloc()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    d_model, d_state, length, layers = (64, 8, 128, 2) if args.quick else (512, 32, 1024, 6)
    repeats = 1 if args.quick else args.repeats
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU, {repeats} interleaved rounds, "
          f"{layers} x S4D({d_model}, {d_state}), batch {BATCH}, length {length}, tol 0.05, "
          f"malloc {'tuned' if tuned else 'default'}, load {os.getloadavg()[0]:.2f}")

    torch.manual_seed(0)
    models = {"new": torch.nn.Sequential(*[S4D(d_model, d_state) for _ in range(layers)])}
    models["old"] = copy.deepcopy(models["new"])
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in models.items()}
    gens = {k: torch.Generator().manual_seed(0) for k in models}

    def step(which):
        x = torch.randn(BATCH, length, d_model, generator=gens[which])
        loss = models[which](x).pow(2).mean()
        opts[which].zero_grad()
        loss.backward()
        opts[which].step()

    for which in ("new", "old"):  # the same 2 steps on the same batches: both models stay identical
        with kernel_version(which):
            for _ in range(2):
                step(which)

    layer = models["new"][0]
    with torch.no_grad():
        with kernel_version("new"):
            K_new = layer.kernel(length)
        with kernel_version("old"):
            K_old = layer.kernel(length)
    difference = float((K_new - K_old).abs().max() / K_old.abs().max())

    def cut(which):
        """``compress_`` + ``print(report)`` of a copy of the model (the copy made before the clock starts)."""
        twin = copy.deepcopy(models[which])
        twin_opt = torch.optim.AdamW(twin.parameters(), lr=1e-3)
        twin_opt.load_state_dict(opts[which].state_dict())
        text = io.StringIO()

        def run():
            report = at.compress_(twin, tol=0.05, optimizer=twin_opt)
            with contextlib.redirect_stdout(text):
                print(report)

        return timed(run)

    for which in ("new", "old"):  # one untimed cut each: the first cut in a process pays one-time costs
        with kernel_version(which):
            cut(which)
    cotangent = torch.randn(d_model, length, generator=torch.Generator().manual_seed(1))
    parts = ("kernel", "kernel fwd+bwd", "step", "step: in kernel", "cut", "cut: in kernel")
    times = {(part, which): [] for part in parts for which in ("new", "old")}
    for r in range(repeats):
        for which in (("new", "old") if r % 2 == 0 else ("old", "new")):
            with kernel_version(which):
                with torch.no_grad():
                    calls = [timed(lambda: layer.kernel(length)) for _ in range(5)]
                    times["kernel", which].append(tuple(statistics.median(c[i] for c in calls) for i in (0, 1)))
                calls = [timed(lambda: (layer.kernel(length) * cotangent).sum().backward()) for _ in range(5)]
                times["kernel fwd+bwd", which].append(tuple(statistics.median(c[i] for c in calls) for i in (0, 1)))
                layer.zero_grad(set_to_none=True)  # the step starts from no gradients either way
                elapsed, inside = in_kernel(lambda w=which: timed(lambda: step(w)))
                times["step", which].append(elapsed)
                times["step: in kernel", which].append((inside, inside))
                elapsed, inside = in_kernel(lambda w=which: cut(w))
                times["cut", which].append(elapsed)
                times["cut: in kernel", which].append((inside, inside))

    head = (f"{'part':<16} {'clock':<5} {'new [s]':>9} {'old [s]':>9} {'new/old':>8} {'paired':>7}   "
            f"per round new/old [s] (round order alternates)")
    print(head)
    print("-" * len(head))
    for part in parts:
        for i, clock in enumerate(("wall", "cpu") if "in kernel" not in part else ("wall",)):
            new, old = ([t[i] for t in times[part, which]] for which in ("new", "old"))
            rounds = " ".join(f"{a:.3g}/{b:.3g}" for a, b in zip(new, old))
            paired = statistics.median(a / b for a, b in zip(new, old))
            new, old = statistics.median(new), statistics.median(old)
            print(f"{part:<16} {clock:<5} {new:>9.4f} {old:>9.4f} {new / old:>8.2f} {paired:>7.2f}   {rounds}")
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    print(f"max |K_new - K_old| / max |K_old| = {difference:.2e} (float32 layer, one S4D({d_model}, {d_state}))")
    print("kernel, kernel fwd+bwd: median of 5 calls per round; step: forward + backward + AdamW; "
          "cut: compress_(model, tol=0.05, optimizer=opt) + print(report); "
          "in kernel: the part of step / cut inside S4D.kernel calls (forward only)")


if __name__ == "__main__":
    main()
