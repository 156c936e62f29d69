"""Benchmark models for model reduction, shipped with the package.

Two continuous-time models of the SLICOT model-reduction benchmark collection
(Y. Chahlaoui and P. Van Dooren, "A collection of benchmark examples for model reduction of
linear time invariant dynamical systems", SLICOT Working Note 2002-2, 2002):

=====================  ===  ======  =======  =====================
loader                 n    inputs  outputs  slowest pole (max Re)
=====================  ===  ======  =======  =====================
:func:`cd_player`      120  2       2        -0.0243
:func:`iss`            270  3       3        -0.0031
=====================  ===  ======  =======  =====================

Both return ``(A, B, C, D)`` of ``x' = A x + B u, y = C x + D u`` as float64 numpy arrays
(``A`` also as a ``scipy.sparse`` matrix with ``sparse=True``). They are continuous time:
discretize them (:func:`lti_reduce.discretize`) for the discrete-time functions of the core,
or pass ``A`` as a sparse matrix to :mod:`lti_reduce.lowrank`. :func:`source` returns the
text of the data's README (provenance and the archive layout).

Examples
--------
>>> from lti_reduce import datasets
>>> A, B, C, D = datasets.cd_player()
>>> A.shape, B.shape, C.shape, D.shape
((120, 120), (120, 2), (2, 120), (2, 2))
"""

from __future__ import annotations

from importlib import resources

import numpy as np

__all__ = ["cd_player", "iss", "source"]


def _load(name: str, sparse: bool):
    import scipy.sparse

    with resources.files(__name__).joinpath("data", f"{name}.npz").open("rb") as f:
        with np.load(f) as z:
            A = scipy.sparse.csc_matrix((z["A_data"], z["A_indices"], z["A_indptr"]), shape=tuple(z["A_shape"]))
            B, C, D = (np.array(z[k], dtype=np.float64) for k in "BCD")
    return (A if sparse else A.toarray()), B, C, D


def cd_player(*, sparse: bool = False):
    """The CD player model: swing arm and lens of a portable CD player (continuous time).

    120 states, 2 inputs, 2 outputs; a modal-form model with 60 complex pole pairs (damping
    ratios 0.01 to 0.55), slowest pole at ``Re s = -0.0243``. Its Hankel singular values fall by about
    sixteen orders of magnitude, which makes it the classic first test of a reduction method.

    Parameters
    ----------
    sparse : bool
        Return ``A`` as a ``scipy.sparse.csc_matrix`` (240 nonzeros) instead of a dense array.

    Returns
    -------
    A : array, shape (120, 120)
        Hurwitz state matrix (every eigenvalue has ``Re < 0``).
    B : array, shape (120, 2)
    C : array, shape (2, 120)
    D : array, shape (2, 2)
        Zero.

    References
    ----------
    Y. Chahlaoui and P. Van Dooren, "A collection of benchmark examples for model reduction of
    linear time invariant dynamical systems", SLICOT Working Note 2002-2 (2002), section "CD player";
    the model is from W. Draijer, M. Steinbuch and O. Bosgra, "Adaptive control of the radial
    servo system of a compact disc player", Automatica 28 (1992).

    Examples
    --------
    >>> import numpy as np
    >>> from lti_reduce import datasets
    >>> A, B, C, D = datasets.cd_player()
    >>> round(float(np.linalg.eigvals(A).real.max()), 4)
    -0.0243
    """
    return _load("cd_player", sparse)


def iss(*, sparse: bool = False):
    """The International Space Station model, component 1r (continuous time).

    270 states, 3 inputs, 3 outputs; a structural model in modal form with 135 complex pole
    pairs of damping ratio 0.005, slowest pole at ``Re s = -0.0031``. Its Hankel singular values decay slowly (many
    resonances of similar weight).

    Parameters
    ----------
    sparse : bool
        Return ``A`` as a ``scipy.sparse.csc_matrix`` (405 nonzeros) instead of a dense array.

    Returns
    -------
    A : array, shape (270, 270)
        Hurwitz state matrix.
    B : array, shape (270, 3)
    C : array, shape (3, 270)
    D : array, shape (3, 3)
        Zero.

    References
    ----------
    Y. Chahlaoui and P. Van Dooren, "A collection of benchmark examples for model reduction of
    linear time invariant dynamical systems", SLICOT Working Note 2002-2 (2002), section
    "International Space Station"; the model is from S. Gugercin, A. C. Antoulas and N. Bedrossian,
    "Approximation of the International Space Station 1R and 12A models", Proc. 40th IEEE CDC (2001).

    Examples
    --------
    >>> import numpy as np
    >>> from lti_reduce import datasets
    >>> A, B, C, D = datasets.iss(sparse=True)
    >>> A.shape, A.nnz
    ((270, 270), 405)
    """
    return _load("iss", sparse)


def source() -> str:
    """The README of the shipped data: its source, the archive layout, and the original README's text."""
    return resources.files(__name__).joinpath("data", "README.md").read_text(encoding="utf-8")
