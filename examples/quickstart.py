"""Reduce the SLICOT CD player model (n = 120) in discrete time and check the bound.

Run: python examples/quickstart.py
"""

import numpy as np

import lti_reduce as lr
from lti_reduce import datasets


def main():
    Ac, Bc, Cc, Dc = datasets.cd_player()          # continuous time, shipped with the package
    Ad, Bd, Cd, Dd = lr.discretize(Ac, Bc, Cc, Dc, dt=1e-3, method="bilinear")
    res = lr.balanced_truncation(Ad, Bd, Cd, Dd, tol=1e-3)
    n, r = Ad.shape[0], res.rank
    err = lr.hinf_norm(np.block([[Ad, np.zeros((n, r))], [np.zeros((r, n)), res.A]]),
                       np.vstack([Bd, res.B]), np.hstack([Cd, -res.C]), Dd - res.D)
    print(f"CD player (bilinear, dt = 1e-3): n = {n} -> r = {r} (tol = 1e-3 of the HSV sum)")
    print(f"  sigma_1 = {res.hsv[0]:.4e}, sigma_(r+1) = {res.hsv[r]:.4e}")
    print(f"  sigma_(r+1) <= ||G - G_r||_inf = {err:.4e} <= a-priori bound {res.error_bound:.4e}: "
          f"{bool(res.hsv[r] <= err <= res.error_bound)}")

    res_c = lr.balanced_truncation(Ac, Bc, Cc, Dc, rank=r, time="continuous")   # the same model, no discretization
    # The bilinear map keeps the HSVs, so the continuous-time bound is the same number.
    print(f"  continuous time, r = {r}: error bound {res_c.error_bound:.4e}")


if __name__ == "__main__":
    main()
