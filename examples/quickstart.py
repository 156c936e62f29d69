"""Reduce the SLICOT CD player model (n = 120) in discrete time and check the bound.

Run: python examples/quickstart.py
"""

from pathlib import Path

import numpy as np
import scipy.io

import lti_reduce as lr


def cd_player():
    here = Path(__file__).resolve()
    for base in (here.parents[1] / "shared", here.parents[2] / "shared"):
        f = base / "data" / "slicot" / "CDplayer.mat"
        if f.exists():
            m = scipy.io.loadmat(f)
            dense = lambda x: x.toarray() if hasattr(x, "toarray") else np.asarray(x, dtype=float)  # noqa: E731
            return dense(m["A"]), dense(m["B"]), dense(m["C"]), dense(m.get("D", np.zeros((2, 2))))
    rng = np.random.default_rng(0)  # stand-in when the SLICOT data is not beside the repo
    A = -np.diag(rng.uniform(0.05, 50, 120)) + 0.1 * rng.standard_normal((120, 120))
    return A, rng.standard_normal((120, 2)), rng.standard_normal((2, 120)), np.zeros((2, 2))


def main():
    Ac, Bc, Cc, Dc = cd_player()
    Ad, Bd, Cd, Dd = lr.discretize(Ac, Bc, Cc, Dc, dt=1e-3, method="bilinear")
    res = lr.balanced_truncation(Ad, Bd, Cd, Dd, tol=1e-3)
    err = lr.hinf_norm(np.block([[Ad, np.zeros((Ad.shape[0], res.rank))], [np.zeros((res.rank, Ad.shape[0])), res.A]]),
                       np.vstack([Bd, res.B]), np.hstack([Cd, -res.C]), Dd - res.D)
    print(f"CD player: n = {Ad.shape[0]} -> r = {res.rank} (tol = 1e-3 of the HSV sum)")
    print(f"  sigma_1 = {res.hsv[0]:.4e}, sigma_(r+1) = {res.hsv[res.rank]:.4e}")
    print(f"  ||G - G_r||_inf = {err:.4e} <= a-priori bound {res.error_bound:.4e}: {bool(err <= res.error_bound)}")


if __name__ == "__main__":
    main()
