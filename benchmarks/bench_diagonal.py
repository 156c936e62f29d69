"""Diagonal (SSM-layer) balanced truncation: a whole model's layers in one batched call.

(a) One reduction of 6 LRU-like layers, ``n = 384`` complex modes, ``m = p = 512`` (the CompreSSM paper's sCIFAR
    configuration), complex128 and complex64:

    * ours:      ``lr.balanced_truncation(lr.DiagonalSystem(lam, B, C, D, real_output=True), tol=tol)`` on all
                 layers at once, then ``res[i].to_diagonal()`` per layer (the modal form a layer stores);
    * published: a per-layer numpy loop of the published CompreSSM algorithm (``compressm_layer`` below): closed-form
                 complex Gramians of the map ``x -> C x``, HSVs from ``np.linalg.eig(P @ Q)``, the balancing
                 transform from ``scipy.linalg.sqrtm``, truncation, and ``np.linalg.eig`` re-diagonalization.

    Target: ours >= 10x faster. The two do not compute the same thing: ours reduces the map the layer computes,
    ``y = Re(C x) + D u`` (a real system of order 2n), the published code the complex map ``x -> C x``; the ranks
    each chooses for the same ``tol`` are printed.

(b) The diagonal fast path vs the dense path on the same systems: ``lr.balanced_truncation`` on the
    ``DiagonalSystem`` vs on ``DiagonalSystem.to_dense()`` (the real 2n realization), same rank, reduced matrices
    formed. Target: the diagonal path >= 20x faster. The HSV difference between the two is printed.

(c) The diagonal path (as in (a)) on torch CPU tensors, complex128 and complex64.

(d) ``--breakdown``: where the time of (a) goes, complex128, per stage summed over the layers: ours (the batched
    balancing, the per-layer reduced models, the dense ``eig`` of each reduced model alone, the rest of the modal
    form) and the published algorithm (Gramians, ``eig(P Q)``, ``sqrtm``, SVD, balancing transform, ``eig`` of the
    reduced model).

Times are medians of ``--repeats`` runs (interleaved in (a) and (b)), measured with ``time.perf_counter``.

Run:  ``python benchmarks/bench_diagonal.py``  (several minutes on 2 cores),  ``--quick`` (2 small layers; seconds).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

_parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
_parser.add_argument("--quick", action="store_true", help="2 layers, n = m = p = 64, one repeat: a smoke test")
_parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median); default 3")
_parser.add_argument("--tol", type=float, default=0.05,
                     help="fraction of the HSV sum that may be discarded (the paper's tau); default 0.05")
_parser.add_argument("--threads", type=int, default=1,
                     help="BLAS (and torch) threads, the same for every contender (default 1: steadier on a shared "
                          "machine; 0 keeps the environment's setting)")
_parser.add_argument("--skip-dense", action="store_true", help="skip (b), the slow dense path")
_parser.add_argument("--skip-torch", action="store_true", help="skip (c)")
_parser.add_argument("--breakdown", action="store_true", help="also print (d), the per-stage times of (a)")
ARGS = _parser.parse_args() if __name__ == "__main__" else _parser.parse_args([])

# numpy's OpenBLAS reads these at load time: set before the first import.
if ARGS.threads > 0:
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402

import lti_reduce as lr  # noqa: E402

SPEEDUP_VS_PUBLISHED = 10.0
SPEEDUP_VS_DENSE = 20.0


# ---------------------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------------------


def lru_layers(seed: int, layers: int, n: int, m: int, p: int, dtype=np.complex128):
    """LRU-initialized layers: ``|lam|`` in [0.5, 0.999] (``|lam|^2`` uniform), uniform phases, gamma-normalized B.

    ``B ~ CN(0, 1/m) * sqrt(1 - |lam|^2)`` (row-wise), ``C ~ CN(0, 1/n)``, real ``D``. Returns ``lam, B, C, D``
    with leading dimension ``layers``.
    """
    rng = np.random.default_rng(seed)
    radius = np.sqrt(rng.uniform(0.5**2, 0.999**2, (layers, n)))
    lam = radius * np.exp(2j * np.pi * rng.uniform(0.0, 1.0, (layers, n)))
    cn = lambda *shape: (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2)  # noqa: E731
    B = cn(layers, n, m) / np.sqrt(m) * np.sqrt(1.0 - radius**2)[..., None]
    C = cn(layers, p, n) / np.sqrt(n)
    D = rng.standard_normal((layers, p, m))
    real = np.float32 if dtype == np.complex64 else np.float64
    return lam.astype(dtype), B.astype(dtype), C.astype(dtype), D.astype(real)


# ---------------------------------------------------------------------------------------------------------------
# contenders
# ---------------------------------------------------------------------------------------------------------------


def ours(lam, B, C, D, tol):
    """One batched reduction of all layers, then each layer back to modal form."""
    res = lr.balanced_truncation(lr.DiagonalSystem(lam, B, C, D, real_output=True), tol=tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lr.ModalConditioningWarning)
        modal = [res[i].to_diagonal() for i in range(int(lam.shape[0]))]
    return res, modal


def compressm_layer(lam, B, C, tol):
    """The published CompreSSM reduction of one layer, in the input's precision.

    Closed-form Gramians of ``x -> C x`` (complex, order n), HSVs ``sqrt(eig(P Q))``, the energy rule for the rank,
    ``T = sqrtm(P) U S^{-1/4}`` from the SVD ``sqrtm(P) Q sqrtm(P) = U S V^H`` (``S = sigma^2``), truncation of
    ``(T^{-1} diag(lam) T, T^{-1} B, C T)`` and ``eig`` of the reduced state matrix for the new ``lam``.
    """
    P = (B @ B.conj().T) / (1 - lam[:, None] * lam.conj()[None, :])
    Q = (C.conj().T @ C) / (1 - lam.conj()[:, None] * lam[None, :])
    hsv = np.sort(np.sqrt(np.abs(np.linalg.eig(P @ Q)[0])))[::-1]
    energy = np.cumsum(hsv)
    rank = int(np.searchsorted(energy, (1.0 - tol) * energy[-1]) + 1)
    root = scipy.linalg.sqrtm(P)
    U, S, _ = np.linalg.svd(root @ Q @ root)
    T = (root @ U) * S ** -0.25
    T_inv = np.linalg.inv(T)
    A_bal = T_inv @ (lam[:, None] * T)
    B_bal, C_bal = T_inv @ B, C @ T
    lam_r, V = np.linalg.eig(A_bal[:rank, :rank])
    return lam_r, np.linalg.solve(V, B_bal[:rank]), C_bal[:, :rank] @ V, hsv


def published(lam, B, C, tol):
    return [compressm_layer(lam[i], B[i], C[i], tol) for i in range(lam.shape[0])]


def breakdown(lam, B, C, D, tol, repeats):
    """Per-stage times of ``ours`` and ``published`` (medians of ``repeats``, summed over the layers)."""
    stages = {}

    def clock(name, fn):
        t0 = time.perf_counter()
        out = fn()
        stages.setdefault(name, []).append(time.perf_counter() - t0)
        return out

    layers = int(lam.shape[0])
    for rep in range(repeats):
        res = clock("ours: balance all layers (Gramians, Cholesky, L^H Q L, eigh or SVD)",
                    lambda: lr.balanced_truncation(lr.DiagonalSystem(lam, B, C, D, real_output=True), tol=tol))
        for i in range(layers):
            sub = res[i]
            red = clock("ours: reduced models (projections, W^H A V, W^H B, C V)", lambda: (sub.A, sub.B, sub.C))
            clock("ours: modal form, its dense eig alone", lambda: np.linalg.eig(red[0]))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", lr.ModalConditioningWarning)
                clock("ours: modal form, total", lambda: lr.modal_form(sub.A, sub.B, sub.C, sub.D))
        for i in range(layers):
            l, b, c = lam[i], B[i], C[i]
            P, Q = clock("published: Gramians", lambda: (
                (b @ b.conj().T) / (1 - l[:, None] * l.conj()[None, :]),
                (c.conj().T @ c) / (1 - l.conj()[:, None] * l[None, :])))
            hsv = clock("published: eig(P Q)", lambda: np.sort(np.sqrt(np.abs(np.linalg.eig(P @ Q)[0])))[::-1])
            energy = np.cumsum(hsv)
            rank = int(np.searchsorted(energy, (1.0 - tol) * energy[-1]) + 1)
            root = clock("published: sqrtm(P)", lambda: scipy.linalg.sqrtm(P))
            U, S, _ = clock("published: svd", lambda: np.linalg.svd(root @ Q @ root))

            def transform():
                T = (root @ U) * S ** -0.25
                T_inv = np.linalg.inv(T)
                return T_inv @ (l[:, None] * T), T_inv @ b, c @ T

            A_bal, B_bal, _ = clock("published: balancing transform", transform)

            def rediag():
                lam_r, V = np.linalg.eig(A_bal[:rank, :rank])
                return np.linalg.solve(V, B_bal[:rank])

            clock("published: eig of the reduced model", rediag)
    return {k: float(np.median(np.asarray(v).reshape(repeats, -1).sum(axis=1))) for k, v in stages.items()}


def dense_path(lam, B, C, D, rank):
    A_d, B_d, C_d, D_d = lr.DiagonalSystem(lam, B, C, D, real_output=True).to_dense()
    res = lr.balanced_truncation(A_d, B_d, C_d, D_d, rank=rank)
    res.A  # formed lazily: include it
    return res


def diagonal_path(lam, B, C, D, rank):
    res = lr.balanced_truncation(lr.DiagonalSystem(lam, B, C, D, real_output=True), rank=rank)
    res.A
    return res


# ---------------------------------------------------------------------------------------------------------------
# timing and tables
# ---------------------------------------------------------------------------------------------------------------


def interleaved(fns, repeats):
    """Median time of each function, run in turn ``repeats`` times; also the last results."""
    times = [[] for _ in fns]
    results = [None] * len(fns)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            results[k] = fn()
            times[k].append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times], results


def table(title, header, rows):
    print()
    print(title)
    line = "".join(f"{h:>{w}}" for h, w in header)
    print(line)
    print("-" * len(line))
    for row in rows:
        print("".join(f"{v:>{w}}" for v, (_, w) in zip(row, header)))


def main() -> int:
    repeats = ARGS.repeats or (1 if ARGS.quick else 3)
    layers, n, m, p = (2, 64, 64, 64) if ARGS.quick else (6, 384, 512, 512)
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "library default")
    print(f"{layers} LRU-like layers, n = {n} complex modes, m = p = {m}, tol = {ARGS.tol}; median of {repeats}; "
          f"BLAS threads: {threads}")

    # (a) ours vs the published per-layer algorithm
    rows, speedups = [], {}
    for dtype in (np.complex128, np.complex64):
        lam, B, C, D = lru_layers(0, layers, n, m, p, dtype)
        (t_ours, t_pub), (ours_out, pub_out) = interleaved(
            [lambda: ours(lam, B, C, D, ARGS.tol), lambda: published(lam, B, C, ARGS.tol)], repeats)
        res, modal = ours_out
        speedups[dtype] = t_pub / t_ours
        modes = "/".join(str(md.n) for md in modal)
        pub_modes = "/".join(str(len(o[0])) for o in pub_out)
        rows.append((np.dtype(dtype).name, f"{t_ours:.2f}", f"{t_pub:.2f}", f"{t_pub / t_ours:.2f}",
                     "" if t_pub / t_ours >= SPEEDUP_VS_PUBLISHED else "*", f"{res.rank}", modes, pub_modes))
    table(f"(a) one batched reduction + modal form vs a per-layer loop of the published algorithm "
          f"(target speed-up >= {SPEEDUP_VS_PUBLISHED:g})",
          [("dtype", 11), ("t_ours [s]", 12), ("t_published [s]", 17), ("speed-up", 10), ("", 2),
           ("ours: real order r", 20), ("ours: modes/layer", 26), ("published: modes/layer", 26)], rows)
    print("(ours: real order r of y = Re(Cx) + Du, max over the batch, then one mode per conjugate pair or real "
          "eigenvalue; published: complex modes of x -> Cx. * marks a missed target.)")

    # (b) the diagonal fast path vs the dense path
    if not ARGS.skip_dense:
        lam, B, C, D = lru_layers(0, layers, n, m, p, np.complex128)
        rank = lr.balanced_truncation(lr.DiagonalSystem(lam, B, C, D, real_output=True), tol=ARGS.tol).rank
        (t_diag, t_dense), (res_diag, res_dense) = interleaved(
            [lambda: diagonal_path(lam, B, C, D, rank), lambda: dense_path(lam, B, C, D, rank)], repeats)
        hsv_d, hsv_ref = np.asarray(res_diag.hsv), np.asarray(res_dense.hsv)
        err = float(np.max(np.abs(hsv_d - hsv_ref) / hsv_ref[..., :1]))
        big = hsv_ref >= 1e-4 * hsv_ref[..., :1]
        err_big = float(np.max(np.abs(hsv_d - hsv_ref)[big] / np.broadcast_to(hsv_ref[..., :1], big.shape)[big]))
        table(f"(b) diagonal path vs dense path on to_dense(), {layers} layers batched, real order {2 * n} -> {rank} "
              f"(target speed-up >= {SPEEDUP_VS_DENSE:g})",
              [("t_diagonal [s]", 15), ("t_dense [s]", 13), ("speed-up", 10), ("", 2), ("hsv err/s1", 12),
               ("same, hsv >= 1e-4 s1", 22)],
              [(f"{t_diag:.2f}", f"{t_dense:.2f}", f"{t_dense / t_diag:.1f}",
                "" if t_dense / t_diag >= SPEEDUP_VS_DENSE else "*", f"{err:.1e}", f"{err_big:.1e}")])
        print(f"(HSV error: max |hsv_diagonal - hsv_dense| / sigma_1 over the batch; both paths are accurate to "
              f"O(order * eps) = {2 * n * np.finfo(float).eps:.1e}.)")

    # (d) where the time goes
    if ARGS.breakdown:
        lam, B, C, D = lru_layers(0, layers, n, m, p, np.complex128)
        times = breakdown(lam, B, C, D, ARGS.tol, repeats)
        table(f"(d) where the time of (a) goes, complex128, summed over {layers} layers (the modal form's total includes "
              "its eig)", [("stage", 70), ("t [s]", 9)], [(k, f"{v:.2f}") for k, v in times.items()])

    # (c) torch CPU
    if not ARGS.skip_torch:
        try:
            import torch
        except ImportError:
            print("\n(c) skipped: torch is not installed")
            return 0
        if ARGS.threads > 0:
            torch.set_num_threads(ARGS.threads)
        rows = []
        for dtype in (np.complex128, np.complex64):
            lam, B, C, D = (torch.from_numpy(X) for X in lru_layers(0, layers, n, m, p, dtype))
            lam_np, B_np, C_np, D_np = lru_layers(0, layers, n, m, p, dtype)
            (t_torch, t_numpy), _ = interleaved(
                [lambda: ours(lam, B, C, D, ARGS.tol), lambda: ours(lam_np, B_np, C_np, D_np, ARGS.tol)], repeats)
            rows.append((np.dtype(dtype).name, f"{t_torch:.2f}", f"{t_numpy:.2f}", f"{t_torch / t_numpy:.2f}"))
        table(f"(c) the diagonal path of (a) on torch CPU tensors (torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads) vs numpy",
              [("dtype", 11), ("t_torch [s]", 13), ("t_numpy [s]", 13), ("torch/numpy", 13)], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
