"""Continuous-time reduction of the SLICOT benchmark models: ``lti_reduce`` vs SLICOT with ``dico='C'``.

The CD player (n = 120) and ISS (n = 270) models, **not discretized**. Side by side in one run, interleaved
(ours, SLICOT, ours, SLICOT, ...), on the same matrices:

=================================================  =================================================
ours                                               SLICOT (slycot, in-process)
=================================================  =================================================
``lr.balanced_truncation(..., time="continuous")`` ``ab09ad(dico='C', job='B', equil='N', nr=r)``
  with the reduced matrices formed (``res.A``)
``... method="spa"``                               ``ab09nd(dico='C', job='B', equil='N', alpha=0, nr=r)``
``lr.hinf_norm(..., time="continuous")``           ``ab13dd(dico='C', jobe='I', equil='N', jobd='D')``
=================================================  =================================================

Columns: median times, the median over interleaved pairs of the ratio ours/SLICOT, and the agreement: for
balanced truncation the largest HSV difference relative to ``sigma_1`` and the relative sup-norm difference of
the two reduced models' frequency responses on the imaginary axis (log grid over the poles' range, two decades
beyond, plus the poles' own frequencies); for SPA the same response difference; for the norm the relative
difference. Inputs are padded with zero columns to ``2 n`` for ``ab09ad``/``ab09nd`` (slycot 0.7.1's integer
workspace, see ``tests/reference.py``); zero inputs change neither the HSVs nor the other inputs' responses.

A second table: random continuous systems of order 20 .. 400, balanced truncation and the norm, as ratios.
The models are read from ``../shared/data/slicot`` when present, else from :mod:`lti_reduce.datasets`.

Run:  ``python benchmarks/bench_continuous.py``  (a few minutes),  ``--quick`` (CD player, one repeat).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

_parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
_parser.add_argument("--quick", action="store_true", help="CD player only, one repeat: a smoke test")
_parser.add_argument("--repeats", type=int, default=None, help="interleaved timed pairs per case (default 7)")
_parser.add_argument("--threads", type=int, default=1, help="BLAS threads for numpy and SLICOT alike (default 1)")
ARGS = _parser.parse_args() if __name__ == "__main__" else _parser.parse_args([])
if ARGS.threads > 0:
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = str(ARGS.threads)

import warnings

import numpy as np
import scipy.io
import scipy.linalg
import scipy.sparse

import lti_reduce as lr

SLICOT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "slicot"
MODELS = {"CDplayer": 20, "iss": 10}  # orders with a clear HSV gap


def load(name):
    path = SLICOT_DATA / f"{name}.mat"
    if not path.exists():  # the copies shipped with the package
        from lti_reduce import datasets

        return {"CDplayer": datasets.cd_player, "iss": datasets.iss}[name]()
    data = scipy.io.loadmat(path)
    dense = lambda X: np.asarray(X.toarray() if scipy.sparse.issparse(X) else X, dtype=float)
    return tuple(dense(data[k]) for k in "ABCD")


def slicot_bt(A, B, C, D, r):
    from slycot import ab09ad

    n, m = B.shape
    Bp = np.hstack([B, np.zeros((n, 2 * n))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nr, Ar, Br, Cr, hsv = ab09ad("C", "B", "N", n, Bp.shape[1], C.shape[0], A.copy(), Bp, C.copy(), nr=r, tol=0.0)
    return (Ar[:nr, :nr], Br[:nr, :m], Cr[:, :nr], D), hsv


def slicot_spa(A, B, C, D, r):
    from slycot import ab09nd

    n, m = B.shape
    Bp, Dp = np.hstack([B, np.zeros((n, 2 * n))]), np.hstack([D, np.zeros((D.shape[0], 2 * n))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nr, Ar, Br, Cr, Dr, _, hsv = ab09nd("C", "B", "N", n, Bp.shape[1], C.shape[0], A.copy(), Bp, C.copy(), Dp,
                                            alpha=0.0, nr=r, tol1=0.0, tol2=0.0)
    return (Ar[:nr, :nr], Br[:nr, :m], Cr[:, :nr], Dr[:, :m]), hsv


def slicot_hinf(A, B, C, D):
    from slycot import ab13dd

    n = A.shape[0]
    return float(ab13dd("C", "I", "N", "D", n, B.shape[1], C.shape[0], A.copy(), np.eye(n), B.copy(), C.copy(),
                        D.copy(), 1e-10)[0])


def ours_bt(A, B, C, D, r, method="truncate"):
    res = lr.balanced_truncation(A, B, C, D, rank=r, time="continuous", method=method)
    return (res.A, res.B, res.C, res.D), res.hsv


def response(A, B, C, D, points):
    T, Z = scipy.linalg.schur(A.astype(complex), output="complex")
    ZhB, CZ, eye = Z.conj().T @ B, C @ Z, np.eye(A.shape[0])
    return np.stack([CZ @ scipy.linalg.solve_triangular(s * eye - T, ZhB) + D for s in points])


def axis(A, num=400):
    lam = np.linalg.eigvals(A)
    mag = np.abs(lam)
    w = np.concatenate([np.logspace(np.log10(mag.min()) - 2, np.log10(mag.max()) + 2, num), np.abs(lam.imag)])
    return 1j * np.concatenate([[0.0], np.unique(w)])


def rel_sup(G1, G2):
    return float(np.linalg.norm(G1 - G2, ord=2, axis=(-2, -1)).max() / np.linalg.norm(G2, ord=2, axis=(-2, -1)).max())


def timed_pairs(f_ours, f_ref, repeats):
    t_o, t_r, ratios = [], [], []
    f_ours(), f_ref()  # warm-up
    for _ in range(repeats):
        t0 = time.perf_counter()
        f_ours()
        t1 = time.perf_counter()
        f_ref()
        t2 = time.perf_counter()
        t_o.append(t1 - t0)
        t_r.append(t2 - t1)
        ratios.append((t1 - t0) / (t2 - t1))
    return float(np.median(t_o)), float(np.median(t_r)), float(np.median(ratios))


def random_continuous(n, seed=0, m=4, p=4):
    """Gaussian ``A / sqrt(n)`` shifted so that its rightmost eigenvalue is at ``-0.1``; Gaussian ``B, C, D``."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n)) / np.sqrt(n)
    A -= (np.max(np.linalg.eigvals(A).real) + 0.1) * np.eye(n)
    return A, rng.standard_normal((n, m)), rng.standard_normal((p, n)), rng.standard_normal((p, m))


def main():
    repeats = ARGS.repeats or (1 if ARGS.quick else 7)
    names = ["CDplayer"] if ARGS.quick else list(MODELS)
    print(f"continuous time, {repeats} interleaved pairs per case, BLAS threads: {ARGS.threads or 'environment'}")
    print(f"{'model':9s} {'task':6s} {'t_ours [s]':>10s} {'t_slicot [s]':>12s} {'ours/slicot':>11s}  agreement")
    for name in names:
        mats = load(name)
        if mats is None:
            print(f"{name}: {SLICOT_DATA / (name + '.mat')} not found, skipped")
            continue
        run_model(name, *mats, MODELS[name], repeats)
    sizes = (20, 64) if ARGS.quick else (20, 50, 100, 200, 400)
    print()
    print("random continuous systems (m = p = 4), BT to order 16 vs ab09ad(dico='C'), hinf_norm vs "
          "ab13dd(dico='C', tol=1e-10); median ratio of interleaved pairs (8x the pairs up to n = 50)")
    print(f"{'n':>5s} {'BT ours/slicot':>15s} {'Hinf ours/slicot':>17s} {'Hinf |diff|/norm':>17s}")
    for n in sizes:
        A, B, C, D = random_continuous(n)
        r = min(16, n - 1)
        reps = repeats * (8 if n <= 50 else 1)
        bt = timed_pairs(lambda: ours_bt(A, B, C, D, r), lambda: slicot_bt(A, B, C, D, r), reps)[2]
        h = timed_pairs(lambda: lr.hinf_norm(A, B, C, D, time="continuous"), lambda: slicot_hinf(A, B, C, D), reps)[2]
        diff = abs(float(lr.hinf_norm(A, B, C, D, time="continuous")) - slicot_hinf(A, B, C, D)) / slicot_hinf(A, B, C, D)
        print(f"{n:5d} {bt:15.2f} {h:17.2f} {diff:17.1e}")


def run_model(name, A, B, C, D, r, repeats):
    """The three rows of one model."""
    pts = axis(A)
    (red_o, hsv_o), (red_s, hsv_s) = ours_bt(A, B, C, D, r), slicot_bt(A, B, C, D, r)
    t = timed_pairs(lambda: ours_bt(A, B, C, D, r), lambda: slicot_bt(A, B, C, D, r), repeats)
    agree = (f"max|hsv - hsv_slicot|/sigma_1 = {np.abs(hsv_o - hsv_s).max() / hsv_s[0]:.1e}, "
             f"reduced responses {rel_sup(response(*red_o, pts), response(*red_s, pts)):.1e}")
    print(f"{name:9s} {'BT':6s} {t[0]:10.4f} {t[1]:12.4f} {t[2]:11.2f}  {agree}")
    (red_o, _), (red_s, _) = ours_bt(A, B, C, D, r, "spa"), slicot_spa(A, B, C, D, r)
    t = timed_pairs(lambda: ours_bt(A, B, C, D, r, "spa"), lambda: slicot_spa(A, B, C, D, r), repeats)
    print(f"{name:9s} {'SPA':6s} {t[0]:10.4f} {t[1]:12.4f} {t[2]:11.2f}  "
          f"reduced responses {rel_sup(response(*red_o, pts), response(*red_s, pts)):.1e}")
    h_o, h_s = float(lr.hinf_norm(A, B, C, D, time="continuous")), slicot_hinf(A, B, C, D)
    t = timed_pairs(lambda: lr.hinf_norm(A, B, C, D, time="continuous"), lambda: slicot_hinf(A, B, C, D),
                    max(1, repeats // 2))
    print(f"{name:9s} {'Hinf':6s} {t[0]:10.4f} {t[1]:12.4f} {t[2]:11.2f}  "
          f"|ours - slicot| / slicot = {abs(h_o - h_s) / h_s:.1e} (norm {h_s:.6g})")


if __name__ == "__main__":
    main()
