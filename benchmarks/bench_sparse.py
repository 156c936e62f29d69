"""Balanced truncation of large sparse models: ``lti_reduce.lowrank`` on Penzl's 2-D heat equation.

Model (Penzl 2000): the heat equation on the unit square with Dirichlet boundary, 5-point Laplacian on an
``N x N`` grid (``n = N^2``, mesh width ``h = 1/(N+1)``), 3 inputs (heat sources on the lower-left, lower-right
and upper halves) and 3 outputs (mean temperatures there):

* continuous time: ``x' = L x + B u``, ``y = C x``;
* discrete time: explicit Euler with step ``dt = h^2 / 8``: ``A_d = I + dt L``, ``B_d = dt B``, ``C_d = C``.
  The eigenvalues of ``dt L`` lie in ``(-1, 0)``, so ``A_d`` is sparse with spectrum in ``(0, 1)`` and spectral
  radius ``1 - dt * 2 pi^2 (1 + O(h^2))`` (``1 - 2.5e-5`` at ``n = 10^5``): the hard case for Smith iterations.

What is measured, each run in a fresh process (peak resident memory of that process, ``VmHWM``):

* ``lowrank-c`` / ``lowrank-d``: ``lti_reduce.lowrank.balanced_truncation(..., rank=10)`` (both Gramian factors by
  low-rank ADI to the relative residual 1e-10, the balancing SVD, the reduced model);
* ``pymor-c``: pyMOR's ``ADILyapunovSolver`` (low-rank ADI, projection shifts, ``adi_tol=1e-10``) for both
  continuous Gramians plus the SVD of ``Zo^T Zc`` (pyMOR has no low-rank solver for the discrete equation).
  Skipped when pyMOR is not importable.

Runs are interleaved (``lowrank-c, pymor-c, lowrank-d`` per repetition) and times reported as medians and as the
ratio pyMOR / lti_reduce on the same continuous model, because the machine is shared. Accuracy: at ``n = 2025``
the HSVs against the dense square-root path of ``lti_reduce`` (continuous ones through the HSV-preserving
bilinear map), and at ``n <= 10^4`` the reduced model's error on a frequency grid (sparse solves with the full
model) against the a-priori bound.

    python benchmarks/bench_sparse.py                 # n = 10^4 and 10^5, 3 repetitions
    python benchmarks/bench_sparse.py --large         # also n = 10^6 (one SuperLU factorization: ~30 s, ~2 GB)
    python benchmarks/bench_sparse.py --sizes 100 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RANK = 10
ADI_TOL = 1e-10


def heat_2d(N: int):
    """``(L, B, C, h)``: 5-point Laplacian on the ``N x N`` interior grid of the unit square, 3 inputs/outputs."""
    h = 1.0 / (N + 1)
    T = sp.diags([np.ones(N - 1), -2 * np.ones(N), np.ones(N - 1)], [-1, 0, 1]) / h**2
    I = sp.identity(N)
    L = (sp.kron(T, I) + sp.kron(I, T)).tocsc()
    x = np.arange(1, N + 1) * h
    X, Y = (M.ravel() for M in np.meshgrid(x, x, indexing="ij"))
    regions = [(X < 0.5) & (Y < 0.5), (X > 0.5) & (Y < 0.5), Y > 0.5]
    B = np.stack([r.astype(float) for r in regions], axis=1)
    C = np.stack([r / r.sum() for r in regions]).astype(float)
    return L, B, C, h


def model(N: int, time_base: str):
    L, B, C, h = heat_2d(N)
    if time_base == "continuous":
        return L, B, C
    dt = h**2 / 8
    return (sp.identity(N * N) + dt * L).tocsc(), dt * B, C


# ------------------------------------------------------------------------------------------ one measured run


def _peak_mb() -> float:
    """Peak resident memory of this process: VmHWM (reset by exec, unlike ru_maxrss, which Linux carries over)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind: str, N: int, out: str) -> None:
    from lti_reduce import lowrank

    t0 = time.perf_counter()
    if kind.startswith("lowrank"):
        time_base = "continuous" if kind == "lowrank-c" else "discrete"
        A, B, C = model(N, time_base)
        t0 = time.perf_counter()
        res = lowrank.balanced_truncation(A, B, C, rank=RANK, time=time_base, adi_tol=ADI_TOL)
        res.A  # the reduced model is formed on access
        seconds = time.perf_counter() - t0
        info = dict(hsv=res.hsv.tolist(), steps=[res.controllability_factor.iterations,
                                                  res.observability_factor.iterations],
                    columns=[res.controllability_factor.Z.shape[1], res.observability_factor.Z.shape[1]],
                    factorizations=res._op.factorizations, bound=res.error_bound,
                    reduced=[res.A.tolist(), res.B.tolist(), res.C.tolist()])
    else:
        import scipy.linalg
        from pymor.core.logger import set_log_levels
        from pymor.operators.numpy import NumpyMatrixOperator
        from pymor.solvers.matrix_equations.adi import ADILyapunovSolver
        from pymor.solvers.matrix_equations.equations import LyapunovEquation

        set_log_levels({"pymor": "ERROR"})
        A, B, C = model(N, "continuous")
        t0 = time.perf_counter()
        op = NumpyMatrixOperator(A)
        solver = ADILyapunovSolver(adi_tol=ADI_TOL)
        Zc = LyapunovEquation(op, None, op.source.from_numpy(B), trans=False).solve_lr(solver)
        Zo = LyapunovEquation(op, None, op.source.from_numpy(C.T), trans=True).solve_lr(solver)
        Zc, Zo = Zc.to_numpy(), Zo.to_numpy()
        if Zc.shape[0] != N * N:  # older pyMOR: vectors as rows
            Zc, Zo = Zc.T, Zo.T
        hsv = scipy.linalg.svdvals(Zo.T @ Zc)
        seconds = time.perf_counter() - t0
        info = dict(hsv=hsv.tolist(), columns=[Zc.shape[1], Zo.shape[1]])
    info.update(kind=kind, N=N, seconds=seconds, peak_mb=_peak_mb())
    Path(out).write_text(json.dumps(info))


def run_child(kind: str, N: int, tmp: Path) -> dict | None:
    out = tmp / f"{kind}-{N}.json"
    cmd = [sys.executable, __file__, "--child", kind, str(N), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  {kind} n={N * N}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.read_text())


# ------------------------------------------------------------------------------------------ accuracy checks


def transfer_sparse(A, B, C, points):
    """``C (sI - A)^{-1} B`` at each point by a sparse LU per point."""
    import scipy.sparse.linalg as spla

    eye = sp.identity(A.shape[0], format="csc")
    return np.stack([C @ spla.splu((s * eye - A).tocsc().astype(complex)).solve(B.astype(complex)) for s in points])


def error_vs_bound(r: dict, time_base: str) -> tuple[float, float]:
    A, B, C = model(r["N"], time_base)
    Ar, Br, Cr = (np.array(M) for M in r["reduced"])
    if time_base == "continuous":
        pts = 1j * np.concatenate([[0.0], np.logspace(0, 6, 120)])
    else:
        pts = np.exp(1j * np.concatenate([[0.0], np.logspace(-7, np.log10(np.pi), 120)]))
    G = transfer_sparse(A, B, C, pts)
    Gr = np.stack([Cr @ np.linalg.solve(s * np.eye(Ar.shape[0]) - Ar, Br) for s in pts])
    return float(np.linalg.norm(G - Gr, ord=2, axis=(1, 2)).max()), r["bound"]


def dense_hsv(N: int, time_base: str):
    import lti_reduce as lr

    A, B, C = model(N, time_base)
    A = A.toarray()
    if time_base == "continuous":  # the bilinear map keeps the HSVs
        h = 1.0 / (N + 1)  # step at the geometric mean of the extreme eigenvalue magnitudes 2 pi^2 and 8 / h^2
        A, B, C, _ = lr.discretize(A, B, C, dt=2.0 / np.sqrt(2 * np.pi**2 * 8 / h**2))
    return np.asarray(lr.hankel_singular_values(A, B, C))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[100, 316], help="grid sizes N (n = N^2)")
    ap.add_argument("--large", action="store_true", help="also N = 1000 (n = 10^6)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dense-check", type=int, default=45, help="N of the HSV check against the dense path (0: none)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    import importlib.util
    import tempfile

    have_pymor = importlib.util.find_spec("pymor") is not None
    sizes = args.sizes + ([1000] if args.large else [])
    kinds = ["lowrank-c"] + (["pymor-c"] if have_pymor else []) + ["lowrank-d"]
    print(f"# bench_sparse: 2-D heat equation, rank {RANK}, adi_tol {ADI_TOL:g}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, cpus {os.cpu_count()}, pyMOR "
          f"{'present' if have_pymor else 'absent (skipped)'}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_sparse_"))

    if args.dense_check:
        Nd = args.dense_check
        print(f"\n## HSVs against the dense path, n = {Nd * Nd}")
        for kind, tb in (("lowrank-c", "continuous"), ("lowrank-d", "discrete")):
            r = run_child(kind, Nd, tmp)
            dense = dense_hsv(Nd, tb)
            hsv = np.array(r["hsv"])
            dev = np.max(np.abs(hsv - dense[: hsv.size])) / dense[0]
            err, bound = error_vs_bound(r, tb)
            print(f"{tb:10s}: {hsv.size} HSVs, max |sigma_i - sigma_i(dense)| / sigma_1 = {dev:.1e}; "
                  f"next dense HSV {dense[hsv.size] / dense[0]:.1e} sigma_1; error {err:.3e} <= bound {bound:.3e}: "
                  f"{err <= bound}")

    print("\n## Timings (median over repetitions, interleaved), peak memory of the process")
    print("| n | method | time [s] | peak [MB] | ADI steps (P, Q) | factor columns | LU | HSVs vs pyMOR |")
    print("|---|---|---|---|---|---|---|---|")
    for N in sizes:
        runs = {k: [] for k in kinds}
        for _ in range(args.repeats if N < 1000 else 1):
            for k in kinds:
                r = run_child(k, N, tmp)
                if r:
                    runs[k].append(r)
        med = {k: float(np.median([r["seconds"] for r in v])) for k, v in runs.items() if v}
        for k, v in runs.items():
            if not v:
                continue
            r = v[-1]
            agree = ""
            if k == "lowrank-c" and runs.get("pymor-c"):
                a, b = np.array(r["hsv"]), np.array(runs["pymor-c"][-1]["hsv"])
                m = min(a.size, b.size, 30)
                agree = f"{np.max(np.abs(a[:m] - b[:m])) / a[0]:.1e} (first {m})"
            print(f"| {N * N} | {k} | {med[k]:.2f} | {max(x['peak_mb'] for x in v):.0f} | "
                  f"{r.get('steps', '')} | {r['columns']} | {r.get('factorizations', '')} | {agree} |")
        if "pymor-c" in med:
            print(f"| {N * N} | ratio pyMOR / lowrank-c | {med['pymor-c'] / med['lowrank-c']:.2f} | | | | | |")
        if N <= 100:
            for k, tb in (("lowrank-c", "continuous"), ("lowrank-d", "discrete")):
                if runs[k]:
                    err, bound = error_vs_bound(runs[k][-1], tb)
                    print(f"|  | {k}: error {err:.3e} <= bound {bound:.3e}: {err <= bound} | | | | | | |")


if __name__ == "__main__":
    main()
