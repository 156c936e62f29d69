"""CD player (SLICOT, n = 120): the Home figure and the two Quickstart figures.

* ``home.png``: frequency response of the full model and an order-20 reduction, with the error
  and its a-priori bound.
* ``cdplayer_hsv.png``: Hankel singular values, with the orders ``tol`` picks.
* ``cdplayer_error_vs_bound.png``: ``sigma_{r+1} <= ||G - G_r||_inf <= 2 sum_{i>r} sigma_i`` over r.

Run: ``python docs/scripts/fig_cdplayer.py``
"""

from __future__ import annotations

import numpy as np

import lti_reduce as lr
from _common import error_system, load_slicot, plt, save, sigma_max_response, style

DT = 1e-3  # bilinear step; the bilinear map with this scaling keeps the HSVs of the continuous model
RANK = 20


def main():
    style()
    Ac, Bc, Cc, Dc = load_slicot("CDplayer.mat")
    full = lr.discretize(Ac, Bc, Cc, Dc, dt=DT, method="bilinear")
    res = lr.balanced_truncation(*full, rank=RANK)
    hsv = np.asarray(res.hsv)

    # --- home.png: frequency responses on the unit circle, labelled by continuous frequency.
    w = np.logspace(-1, 6, 700)                      # rad/s of the continuous model
    z = (1 + 0.5j * DT * w) / (1 - 0.5j * DT * w)    # bilinear image on the unit circle
    g = sigma_max_response(*full, z)
    gr = sigma_max_response(res.A, res.B, res.C, res.D, z)
    ge = sigma_max_response(*error_system(full, (res.A, res.B, res.C, res.D)), z)
    fig, ax = plt.subplots(figsize=(7.0, 3.4))
    ax.loglog(w, g, lw=2.2, color="0.6", label=f"full model, n = {full[0].shape[0]}")
    ax.loglog(w, gr, lw=1.0, ls="--", color="C0", label=f"balanced truncation, r = {RANK}")
    ax.loglog(w, ge, lw=1.0, color="C3", label=r"error $\sigma_{\max}(G - G_r)$")
    ax.axhline(float(res.error_bound), color="C3", ls=":", lw=1.2,
               label=r"a-priori bound $2\sum_{i>r}\sigma_i$")
    ax.set_xlabel("frequency [rad/s] (bilinear map, dt = 1 ms)")
    ax.set_ylabel(r"$\sigma_{\max}$")
    ax.set_title("SLICOT CD player, reduced in discrete time: 120 states to 20")
    ax.legend(loc="upper right")
    save(fig, "home.png")

    # --- cdplayer_hsv.png
    fig, ax = plt.subplots()
    k = np.arange(1, hsv.size + 1)
    ax.semilogy(k, hsv, "o", ms=3, color="C0")
    for tol, c in ((1e-2, "C1"), (1e-4, "C2"), (1e-6, "C3")):
        r = lr.rank_for_tol(hsv, tol)
        ax.axvline(r + 0.5, color=c, ls="--", lw=1, label=f"tol = {tol:g}: r = {r}")
    ax.set_xlabel("index i")
    ax.set_ylabel(r"Hankel singular value $\sigma_i$")
    ax.set_title("CD player: Hankel singular values (discrete time, bilinear)")
    ax.legend()
    save(fig, "cdplayer_hsv.png")

    # --- cdplayer_error_vs_bound.png: compute once, truncate many times.
    ranks = np.arange(2, 41, 2)
    bounds = np.asarray(res.error_bounds())[ranks]
    errors = []
    for r in ranks:
        red = res.reduce(rank=int(r))
        errors.append(float(lr.hinf_norm(*error_system(full, (red.A, red.B, red.C, red.D)))))
    fig, ax = plt.subplots()
    ax.semilogy(ranks, bounds, "v-", ms=4, color="C3", label=r"upper bound $2\sum_{i>r}\sigma_i$")
    ax.semilogy(ranks, errors, "o-", ms=4, color="C0", label=r"error $\|G - G_r\|_{\mathcal{H}_\infty}$")
    ax.semilogy(ranks, hsv[ranks], "^-", ms=4, color="C2", label=r"lower bound $\sigma_{r+1}$")
    ax.set_xlabel("reduced order r")
    ax.set_ylabel("norm")
    ax.set_title("CD player: error of balanced truncation against its bounds")
    ax.legend()
    save(fig, "cdplayer_error_vs_bound.png")
    assert all(h <= e * (1 + 1e-6) and e <= b for h, e, b in zip(hsv[ranks], errors, bounds)), "bounds violated"


if __name__ == "__main__":
    main()
