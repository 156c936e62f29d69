"""Sparse and operator state matrices at the top level go to the low-rank path (:mod:`lti_reduce.lowrank`).

Reference: the dense computation of the same (small) model, and ``lowrank`` called directly.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spl

import lti_reduce as lr
from lti_reduce import lowrank


def _heat(n=120):
    A = sp.diags([np.ones(n - 1), np.full(n, -2.0), np.ones(n - 1)], [-1, 0, 1]) * (n + 1) ** 2
    B = np.zeros((n, 1))
    B[0] = (n + 1) ** 2
    return A.tocsc(), B, np.ones((1, n)) / (n + 1)


def _discrete(n=100):
    A = sp.diags([np.full(n - 1, 0.25), np.full(n, 0.5), np.full(n - 1, 0.25)], [-1, 0, 1]).tocsc()
    rng = np.random.default_rng(0)
    return A, rng.standard_normal((n, 2)), rng.standard_normal((1, n))


def test_sparse_a_is_reduced_like_the_dense_model():
    A, B, C = _heat()
    res = lr.balanced_truncation(A, B, C, rank=5, time="continuous")
    dense = lr.balanced_truncation(A.toarray(), B, C, rank=5, time="continuous")
    np.testing.assert_allclose(res.hsv[:5], dense.hsv[:5], rtol=1e-6)
    w = 1j * np.logspace(0, 5, 30)
    G = [(res.C @ np.linalg.solve(s * np.eye(5) - res.A, res.B))[0, 0] for s in w]
    Gd = [(dense.C @ np.linalg.solve(s * np.eye(5) - dense.A, dense.B))[0, 0] for s in w]
    np.testing.assert_allclose(G, Gd, rtol=1e-5, atol=1e-8 * abs(Gd[0]))


def test_sparse_hankel_singular_values_match_the_dense_leading_ones():
    A, B, C = _discrete()
    hsv = lr.hankel_singular_values(A, B, C)
    dense = lr.hankel_singular_values(A.toarray(), B, C)
    k = int(np.sum(hsv > 1e-8 * hsv[0]))
    np.testing.assert_allclose(hsv[:k], dense[:k], rtol=1e-6, atol=1e-9 * dense[0])


def test_linear_operator_a_is_accepted():
    N = 8
    T = sp.diags([np.ones(N - 1), -2 * np.ones(N), np.ones(N - 1)], [-1, 0, 1]) * (N + 1) ** 2
    A = (sp.kron(T, sp.identity(N)) + sp.kron(sp.identity(N), T)).tocsc()
    rng = np.random.default_rng(1)
    B, C = rng.standard_normal((N * N, 2)), rng.standard_normal((1, N * N))
    res = lr.balanced_truncation(spl.aslinearoperator(A), B, C, rank=3, time="continuous")  # GMRES solves
    dense = lr.hankel_singular_values(A.toarray(), B, C, time="continuous")
    np.testing.assert_allclose(res.hsv[:3], dense[:3], rtol=1e-7)


def test_sparse_balance_then_max_error():
    A, B, C = _heat()
    bal = lr.balance(A, B, C, time="continuous")
    res = bal.reduce(max_error=1e-4)
    assert res.error_bound <= 1e-4 and 2 * bal.hsv[res.rank - 1:].sum() > 1e-4


@pytest.mark.parametrize("kw,needle", [(dict(method="spa"), "method='spa'"), (dict(projection="bfsr"), "projection"),
                                       (dict(unstable="split"), "unstable='split'")])
def test_sparse_a_with_a_dense_only_option_says_what_to_do(kw, needle):
    A, B, C = _discrete()
    with pytest.raises(lr.LTIInputError, match=needle):
        lr.balanced_truncation(A, B, C, rank=3, **kw)


def test_lowrank_with_an_eigenvalue_at_one_says_the_model_is_not_stable():
    n = 50
    A = sp.diags(np.r_[1.0, np.linspace(0.1, 0.9, n - 1)]).tocsc()
    with pytest.raises(lr.UnstableSystemError, match="eigenvalue 1 .*unit circle"):
        lowrank.balanced_truncation(A, np.ones((n, 1)), np.ones((1, n)), rank=3)
