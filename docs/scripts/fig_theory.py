"""Figures of the Theory page.

* ``real_output_hsv.png``: an LRU-like layer's HSV energy, for the map it computes
  (``y = Re(C x)``, order 2n) and for the complex map ``x -> C x``.
* ``diagonal_accuracy.png``: HSVs of the closed-form diagonal path against the dense path.
* ``weyl.png``: the Weyl certificate between a layer and a perturbed copy.

Run: ``python docs/scripts/fig_theory.py``
"""

from __future__ import annotations

import numpy as np

import lti_reduce as lr
from _common import plt, save, style


def lru_like(n, m, *, r_min, r_max, max_phase, seed):
    """``(lam, B, C)`` drawn like the LRU's initialization (ring-uniform moduli, gamma-normalized B)."""
    rng = np.random.default_rng(seed)
    radius = np.sqrt(rng.uniform(size=n) * (r_max**2 - r_min**2) + r_min**2)
    lam = radius * np.exp(1j * rng.uniform(0, max_phase, n))
    gamma = np.sqrt(1 - radius**2)
    B = gamma[:, None] * (rng.standard_normal((n, m)) + 1j * rng.standard_normal((n, m))) / np.sqrt(2 * m)
    C = (rng.standard_normal((m, n)) + 1j * rng.standard_normal((m, n))) / np.sqrt(n)
    return lam, B, C


def real_output_figure():
    lam, B, C = lru_like(32, 4, r_min=0.5, r_max=0.99, max_phase=2 * np.pi, seed=0)
    real_map = np.asarray(lr.hankel_singular_values(lr.DiagonalSystem(lam, B, C, real_output=True)))
    complex_map = np.asarray(lr.hankel_singular_values(lr.DiagonalSystem(lam, B, C, real_output=False)))
    modes = np.arange(0, lam.size + 1)
    # r complex modes of a real-output layer are 2r real states of the map it computes.
    kept_real = np.concatenate([[0], np.cumsum(real_map)[1::2]]) / real_map.sum()
    kept_complex = np.concatenate([[0], np.cumsum(complex_map)]) / complex_map.sum()
    tol = 0.1
    r_real, r_complex = (lr.rank_for_tol(real_map, tol) + 1) // 2, lr.rank_for_tol(complex_map, tol)
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.plot(modes, kept_real, "o-", ms=3, color="C0", label=r"map the layer computes, $y = \mathrm{Re}(Cx)$ (order 2n)")
    ax.plot(modes, kept_complex, "s-", ms=3, color="C1", label=r"complex map $x \mapsto Cx$ (order n)")
    ax.axhline(1 - tol, color="0.5", ls=":", lw=1)
    ax.annotate(f"tol = {tol}: {r_real} modes", (r_real, 1 - tol), (r_real + 2, 0.62),
                arrowprops={"arrowstyle": "->", "color": "C0"}, color="C0")
    ax.annotate(f"tol = {tol}: {r_complex} modes", (r_complex, 1 - tol), (r_complex + 3, 0.78),
                arrowprops={"arrowstyle": "->", "color": "C1"}, color="C1")
    ax.set_xlabel("kept complex modes r")
    ax.set_ylabel("fraction of HSV sum kept")
    ax.set_title("An LRU-like layer (n = 32 modes, 4 inputs/outputs): which HSVs?")
    ax.legend(loc="lower right")
    save(fig, "real_output_hsv.png")


def diagonal_accuracy_figure():
    # One input and output and well-separated poles: HSVs fall to round-off, the hard case.
    lam, B, C = lru_like(32, 1, r_min=0.3, r_max=0.95, max_phase=np.pi, seed=1)
    system = lr.DiagonalSystem(lam, B, C, real_output=True)
    closed = np.asarray(lr.hankel_singular_values(system))
    dense = np.asarray(lr.hankel_singular_values(*system.to_dense()[:3]))
    import torch  # the torch path keeps the cheaper eigensolver route: its worst case is drawn too

    closed_torch = lr.hankel_singular_values(lr.DiagonalSystem(*(torch.as_tensor(x) for x in (lam, B, C)),
                                                               real_output=True)).numpy()
    order, eps = closed.size, np.finfo(np.float64).eps
    i = np.arange(1, order + 1)
    floor = 1e-19
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    ax.semilogy(i, np.maximum(dense / dense[0], floor), "o", ms=4, mfc="none", color="0.4",
                label=r"dense path $\sigma_i / \sigma_1$")
    ax.semilogy(i, np.maximum(np.abs(closed - dense) / dense[0], floor), "x", ms=4, color="C0",
                label=r"diagonal path, numpy: |difference| / $\sigma_1$ (0 drawn at the bottom)")
    ax.semilogy(i, np.maximum(closed_torch / dense[0], floor), ".", ms=4, color="C1",
                label=r"diagonal path, torch: $\sigma_i / \sigma_1$ (0 drawn at the bottom)")
    ax.semilogy(i, np.maximum(np.abs(closed_torch - dense) / dense[0], floor), "+", ms=4, color="C1",
                label=r"diagonal path, torch: |difference| / $\sigma_1$")
    ax.axhline(np.sqrt(order * eps), color="C3", ls="--", lw=1,
               label=r"$\sqrt{\mathrm{order}\cdot\varepsilon}$: torch-path worst case")
    ax.axhline(order * eps, color="C2", ls=":", lw=1, label=r"$\mathrm{order}\cdot\varepsilon$: dense-path accuracy")
    ax.set_ylim(floor / 3, 3)
    ax.set_xlabel("index i")
    ax.set_ylabel(r"relative to $\sigma_1$")
    ax.set_title(f"Diagonal path vs dense path (real-output layer, n = 32 modes, order {order})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2)
    save(fig, "diagonal_accuracy.png")


def weyl_figure():
    lam, B, C = lru_like(24, 4, r_min=0.6, r_max=0.98, max_phase=2 * np.pi, seed=2)
    rng = np.random.default_rng(3)
    s1 = lr.DiagonalSystem(lam, B, C, real_output=True)
    # "A few training steps": a small relative change of every parameter.
    step = 2e-3
    lam2 = lam * np.exp(step * (rng.standard_normal(lam.size) + 1j * rng.standard_normal(lam.size)))
    lam2 = np.where(np.abs(lam2) < 0.999, lam2, lam)
    B2 = B * (1 + step * rng.standard_normal(B.shape))
    C2 = C * (1 + step * rng.standard_normal(C.shape))
    s2 = lr.DiagonalSystem(lam2, B2, C2, real_output=True)
    hsv1 = np.asarray(lr.hankel_singular_values(s1))
    gaps = hsv1[:-1] - hsv1[1:]
    rank = int(np.argmax(gaps[4:30])) + 5   # a cut with a clear gap
    cert = lr.hsv_perturbation_bound(s1, s2, rank=rank)
    bound = float(cert.bound)
    h1, h2 = np.asarray(cert.hsv1), np.asarray(cert.hsv2)
    show = 16
    h1, h2 = h1[:show], h2[:show]
    i = np.arange(1, show + 1)
    fig, ax = plt.subplots()
    ax.errorbar(i, h1, yerr=bound, fmt="o", ms=3, color="C0", ecolor="C0", elinewidth=0.8, capsize=2,
                label=r"$\sigma_i(G_1) \pm \sigma_1(G_1 - G_2)$ (Weyl)")
    ax.plot(i, h2, "x", ms=4, color="C1", label=r"$\sigma_i(G_2)$ after the change")
    ax.axvline(rank + 0.5, color="C3", ls="--", lw=1,
               label=f"cut r = {rank}: gap {gaps[rank - 1]:.3g} > 2 x bound = {2 * bound:.3g}"
                     if bool(cert.certified) else f"cut r = {rank}: not certified")
    ax.set_xlabel("index i")
    ax.set_ylabel("Hankel singular value")
    ax.set_title("HSVs of a layer before and after a small change, with the Weyl certificate")
    ax.legend(loc="upper right")
    save(fig, "weyl.png")


def main():
    style()
    real_output_figure()
    diagonal_accuracy_figure()
    weyl_figure()


if __name__ == "__main__":
    main()
