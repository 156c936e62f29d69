"""Training-step time of one LRU layer for every scan mode, of S5 and S4D beside it, and of the six-layer model.

A training step is forward + backward + ``Adam.step()`` (``zero_grad`` included) on a mean-square loss.
All modes of one ``d_state`` are timed round-robin in the same process, so their ratios are comparable even
when the machine's speed drifts; each entry is the median over the repetitions.

Usage::

    python benchmarks/bench_lru_step.py            # d_state 16 .. 512, all modes, issue-4 model
    python benchmarks/bench_lru_step.py --quick    # d_state 16, 64, 256; fewer repetitions
    python benchmarks/bench_lru_step.py --modes chunked scan --sizes 64 256 --skip-model
    python benchmarks/bench_lru_step.py --skip-modes --skip-model --quick   # only LRU vs S5 vs S4D

The layer table times ``LRU`` (mode "auto"), ``S5`` (mode "auto", the same scan) and ``S4D`` (FFT
convolution, and its recurrence through the same scan) with the same ``d_model`` and ``d_state`` (complex
modes per layer for LRU/S5, per channel for S4D), round-robin, and prints each relative to ``LRU``.

Reference (issue 4, a plain torch LRU with an associative scan, this machine): 16 ms at d_state 16, 91 ms at
64, 354 ms at 256 (batch 16, length 784, d_model 64, CPU).

Timing on a shared machine: every number is wall-clock; the load average at start and end is printed
because other processes on a 2-core machine can stall an OpenMP barrier for a whole scheduler tick.
``--tune-malloc`` (glibc only) keeps freed memory in the process instead of returning it to the kernel; in
a VM where touching returned pages is slow this removes much of the run-to-run noise (it changes nothing
about the algorithms).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.torch.layers.lru import LRU  # noqa: E402
from adapters.torch.layers.s4d import S4D  # noqa: E402
from adapters.torch.layers.s5 import S5  # noqa: E402
from adapters.torch.scan import choose_mode  # noqa: E402

REFERENCE_MS = {16: 16.0, 64: 91.0, 256: 354.0}
ALL_MODES = ("scan", "chunked", "fft", "sequential")


def tune_glibc_malloc() -> bool:
    """Never trim the heap and keep allocations up to 32 MiB (glibc's cap) on it. False if not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return bool(libc.mallopt(m_trim_threshold, 1 << 40) and libc.mallopt(m_top_pad, 1 << 28)
                and libc.mallopt(m_mmap_threshold, 1 << 25))


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, u: torch.Tensor):
    """One step; returns a closure so all modes share the exact same work."""

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(u).square().mean()
        loss.backward()
        optimizer.step()

    return step


def synchronize(device) -> None:
    """Wait for queued kernels (accelerators run asynchronously; CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)


def bench_layer_modes(d_state: int, modes, *, batch: int, length: int, d_model: int, reps: int, warmup: int,
                      device) -> dict[str, float]:
    """ms/step of one LRU layer per mode (same parameters, same input), timed round-robin."""
    torch.manual_seed(0)
    template = LRU(d_model, d_state, r_min=0.0, r_max=0.999, device=device)
    u = torch.randn(batch, length, d_model, device=device)
    steps = {}
    for mode in modes:
        layer = LRU(d_model, d_state, mode=mode, device=device)
        layer.load_state_dict(template.state_dict())
        steps[mode] = training_step(layer, torch.optim.Adam(layer.parameters(), lr=1e-4), u)
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {mode: [] for mode in modes}
    for _ in range(reps):
        for mode, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[mode].append(time.perf_counter() - start)
    return {mode: median_ms(t) for mode, t in times.items()}


LAYERS = {
    "LRU": lambda m, n, device: LRU(m, n, r_min=0.0, r_max=0.999, device=device),
    "S5": lambda m, n, device: S5(m, n, device=device),
    "S4D-fft": lambda m, n, device: S4D(m, n, mode="fft", device=device),
    "S4D-scan": lambda m, n, device: S4D(m, n, mode="chunked" if device.type == "cpu" else "scan",
                                         device=device),
}


def bench_layers(d_state: int, *, batch: int, length: int, d_model: int, reps: int, warmup: int,
                 device) -> dict[str, float]:
    """ms/step of LRU, S5 and S4D of the same size (same input), timed round-robin."""
    torch.manual_seed(0)
    u = torch.randn(batch, length, d_model, device=device)
    steps = {}
    for name, build in LAYERS.items():
        layer = build(d_model, d_state, device)
        steps[name] = training_step(layer, torch.optim.Adam(layer.parameters(), lr=1e-4), u)
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: median_ms(t) for name, t in times.items()}


class ResidualLRUBlock(nn.Module):
    """``x + LRU(LayerNorm(x))``: the LRU and nothing else, so the step time is the layer's."""

    def __init__(self, d_model: int, d_state: int, **kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, **{k: v for k, v in kwargs.items() if k in ("device", "dtype")})
        self.lru = LRU(d_model, d_state, **kwargs)

    def forward(self, x):
        return x + self.lru(self.norm(x))


def build_issue4_model(n_layers: int = 6, d_model: int = 512, d_state: int = 384, **kwargs) -> nn.Sequential:
    """The model of issue 4's performance criterion: six residual LRU blocks, d_model 512, d_state 384."""
    return nn.Sequential(*[ResidualLRUBlock(d_model, d_state, **kwargs) for _ in range(n_layers)])


def bench_issue4_model(*, batch: int, length: int, reps: int, device) -> float:
    torch.manual_seed(0)
    model = build_issue4_model(device=device)
    u = torch.randn(batch, length, 512, device=device)
    step = training_step(model, torch.optim.Adam(model.parameters(), lr=1e-4), u)
    step()  # warm-up
    times = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return median_ms(times)


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="d_state 16, 64, 256 and fewer repetitions")
    parser.add_argument("--sizes", type=int, nargs="+", help="d_state values (default 16 32 64 128 256 512)")
    parser.add_argument("--modes", nargs="+", choices=ALL_MODES, default=list(ALL_MODES))
    parser.add_argument("--reps", type=int, help="timed steps per mode and size (default 5, --quick 3)")
    parser.add_argument("--sequential-max", type=int, default=64,
                        help="largest d_state timed with the (slow, reference) sequential mode")
    parser.add_argument("--skip-model", action="store_true", help="skip the six-layer issue-4 model")
    parser.add_argument("--skip-modes", action="store_true", help="skip the LRU scan-mode table")
    parser.add_argument("--skip-layers", action="store_true", help="skip the LRU vs S5 vs S4D table")
    parser.add_argument("--tune-malloc", action="store_true", help="glibc: keep freed memory (see docstring)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = args.sizes or ([16, 64, 256] if args.quick else [16, 32, 64, 128, 256, 512])
    reps = args.reps or (3 if args.quick else 5)
    batch, length, d_model = 16, 784, 64
    tuned = tune_glibc_malloc() if args.tune_malloc else False

    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"malloc tuned: {tuned}, load average at start: {load()}")
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if torch.get_num_threads() > 1 and busy > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {busy:.1f} on {os.cpu_count()} cores; multi-threaded steps stall at OpenMP "
              "barriers when other processes hold the cores (10-30x slower seen); --threads 1 is more stable")
    print(f"one LRU layer, batch {batch}, length {length}, d_model {d_model}; Adam step; median of {reps} steps; "
          f"'auto' resolves to {choose_mode((batch, length, 1), device)!r} here")
    modes = [m for m in ALL_MODES if m in args.modes] if not args.skip_modes else []
    if modes:
        header = f"{'d_state':>7} " + " ".join(f"{m + ' ms':>14}" for m in modes) + " " + " ".join(
            f"{m + '/scan':>15}" for m in modes if m != "scan") + f" {'reference ms':>13}"
        print(header)
        started = time.perf_counter()
        for n in sizes:
            timed = [m for m in modes if m != "sequential" or n <= args.sequential_max]
            result = bench_layer_modes(n, timed, batch=batch, length=length, d_model=d_model, reps=reps,
                                       warmup=1, device=device)
            cells = [f"{result[m]:14.1f}" if m in result else f"{'-':>14}" for m in modes]
            ratios = [f"{result[m] / result['scan']:15.2f}" if m in result and "scan" in result else f"{'-':>15}"
                      for m in modes if m != "scan"]
            ref = f"{REFERENCE_MS[n]:13.0f}" if n in REFERENCE_MS else f"{'-':>13}"
            print(f"{n:7d} " + " ".join(cells) + " " + " ".join(ratios) + " " + ref, flush=True)
        print(f"(layer table took {time.perf_counter() - started:.0f} s)")

    if not args.skip_layers:
        names = list(LAYERS)
        print(f"LRU vs S5 vs S4D, batch {batch}, length {length}, d_model {d_model}; Adam step; median of {reps} "
              f"steps; S4D-scan is S4D's recurrence through {LAYERS['S4D-scan'](1, 1, device).mode!r}")
        print(f"{'d_state':>7} " + " ".join(f"{n + ' ms':>12}" for n in names) + " "
              + " ".join(f"{n + '/LRU':>13}" for n in names[1:]))
        for n in sizes:
            result = bench_layers(n, batch=batch, length=length, d_model=d_model, reps=reps, warmup=1,
                                  device=device)
            print(f"{n:7d} " + " ".join(f"{result[k]:12.1f}" for k in names) + " "
                  + " ".join(f"{result[k] / result['LRU']:13.2f}" for k in names[1:]), flush=True)

    if not args.skip_model:
        ms = bench_issue4_model(batch=16, length=1024, reps=2 if args.quick else 3, device=device)
        print(f"issue-4 model (6 x [x + LRU(LayerNorm(x))], d_model 512, d_state 384, batch 16, length 1024, "
              f"mode 'auto'): {ms:.0f} ms per training step")
    print(f"load average at end: {load()}")


if __name__ == "__main__":
    main()
