"""compress_ on LRU models: the cut against one training step, and the cost of the certificates.

1. Model: 6 LRU layers, d_model 512, d_state 384 (the CompreSSM sCIFAR configuration), float32, CPU.
   Baseline: one training step (forward + backward + Adam) at batch 16, length 1024. Target: compress_
   (the cut, ``certify=False``) costs less than one step (ratio < 1).
2. Certificates: the per-layer ``gain`` and a-posteriori ``error`` (H-infinity norms, ``certify=True``, the
   default) against the cut without them (``certify=False``), on 2 x LRU(32, n) (the main job's layers have
   n = 256), measured interleaved (without, search, level-set, without, ...) on fresh copies of one model.
   Baseline: the cut alone. Target: the default ``hinf_method="search"`` adds less than the cut costs
   (ratio < 2); ``"level-set"`` (the guaranteed norm) is shown beside it, with the largest relative
   difference of the two methods' figures.

    python benchmarks/bench_compress.py [--quick] [--skip-step] [--sizes 64 128 256] [--no-level-set]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

# numpy's OpenBLAS (used by the core's modal form) reads its thread count at import:
# match it to --threads (default 1) before anything imports numpy.
_threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
if _threads != "0":
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _threads

import torch  # noqa: E402

import adapters.torch as at  # noqa: E402


def make_model(d_model, d_state, layers):
    torch.manual_seed(0)
    return torch.nn.Sequential(*[at.LRU(d_model, d_state, r_min=0.5, r_max=0.999) for _ in range(layers)])


def time_train_step(model, batch, length, d_model, repeats):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, length, d_model)
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def time_compress(d_model, d_state, layers, tol, repeats, certify=False):
    times, report = [], None
    for _ in range(repeats):
        model = make_model(d_model, d_state, layers)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        t = time.perf_counter()
        report = at.compress_(model, tol=tol, optimizer=opt, certify=certify)
        times.append(time.perf_counter() - t)
    return statistics.median(times), report


def certificate_cost(d_model, d_state, layers, tol, repeats, level_set=True):
    """Interleaved medians of compress_ without certificates, with "search" and with "level-set" ones."""
    base = make_model(d_model, d_state, layers)
    runs = [(False, "search"), (True, "search")] + ([(True, "level-set")] if level_set else [])
    times = {run: [] for run in runs}
    reports = {}
    for _ in range(repeats):
        for certify, method in runs:
            model = copy.deepcopy(base)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            t = time.perf_counter()
            r = at.compress_(model, tol=tol, optimizer=opt, certify=certify, hinf_method=method)
            times[(certify, method)].append(time.perf_counter() - t)
            reports[(certify, method)] = r
    med = {run: statistics.median(v) for run, v in times.items()}
    return med, reports


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller length and fewer repeats")
    ap.add_argument("--skip-step", action="store_true", help="only the certificate measurement")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="d_state of the certificate runs")
    ap.add_argument("--no-level-set", action="store_true", help="skip the (slow) level-set certificates")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both contenders (default 1: steady on a shared 2-core machine; 0 = torch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else 3
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU")
    if not args.skip_step:
        d_model, d_state, layers, batch = 512, 384, 6, 16
        length = 256 if args.quick else 1024
        t_step = time_train_step(make_model(d_model, d_state, layers), batch, length, d_model, repeats)
        rows = []
        for tol in (1e-2, 5e-2, 1e-1):
            t_cmp, report = time_compress(d_model, d_state, layers, tol, repeats)
            rows.append((tol, t_cmp, report))
        print(f"\n1. {layers} x LRU(d_model={d_model}, d_state={d_state}); train step: batch {batch}, length {length}")
        print(f"{'tol':>6} {'compress_ [s]':>14} {'train step [s]':>15} {'ratio':>7} {'state after':>12}")
        for tol, t_cmp, report in rows:
            print(f"{tol:>6g} {t_cmp:>14.3f} {t_step:>15.3f} {t_cmp / t_step:>7.2f} {report.state_after:>12}")
        print("target: ratio < 1 (compress_ with certify=False cheaper than one training step)")
    print("\n2. certificates (gain, error): 2 x LRU(d_model=32, n), tol=0.05, interleaved medians [s]")
    print(f"{'n':>5} {'cut only':>9} {'+ search':>9} {'ratio':>6} {'+ level-set':>12} {'ratio':>6} "
          f"{'state after':>12} {'max err/gain':>13} {'max bound/gain':>15} {'search vs level-set':>20}")
    for n in args.sizes:
        med, reps = certificate_cost(32, n, 2, 0.05, repeats, level_set=not args.no_level_set)
        cut, srch = med[(False, "search")], med[(True, "search")]
        rs = reps[(True, "search")]
        lvl = med.get((True, "level-set"))
        if lvl is None:
            lvl_txt, ratio_l, diff = f"{'-':>12}", f"{'-':>6}", f"{'-':>20}"
        else:
            rl = reps[(True, "level-set")]
            d = max(max(abs(a.gain - b.gain) / b.gain, abs(a.error - b.error) / max(b.error, 1e-300))
                    for a, b in zip(rs, rl) if b.compressed)
            lvl_txt, ratio_l, diff = f"{lvl:>12.3f}", f"{lvl / cut:>6.1f}", f"{d:>20.1e}"
        print(f"{n:>5} {cut:>9.3f} {srch:>9.3f} {srch / cut:>6.2f} {lvl_txt} {ratio_l} {rs.state_after:>12} "
              f"{max(x.relative_error for x in rs):>13.3g} {max(x.relative_error_bound for x in rs):>15.3g} {diff}")
    print("ratio: (cut + certificates) / cut; target for search: < 2 (the certificates cost less than the cut)")


if __name__ == "__main__":
    main()
