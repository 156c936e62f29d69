"""Hypothesis strategies that draw stable discrete-time systems ``x+ = A x + B u``, ``y = C x + D u``.

Hypothesis draws only the *shape* of a case (sizes, kind, spectral radius, batch shape) and a seed; the matrices
come from ``numpy.random.default_rng(seed)``. That keeps generation fast for n up to 30 and keeps shrinking
meaningful (smaller n, fewer inputs, simpler kind), while a failing example is still reproduced exactly from
the printed seed.

Kinds of ``A`` (``a_kind``):

``"gaussian"``  a Gaussian matrix scaled to spectral radius ``rho`` (mildly non-normal, spread eigenvalues);
``"modal"``     eigenvalues placed on purpose (a cluster of poles with modulus ``rho``, the rest spread), then an
                orthogonal similarity and a small strictly upper-triangular coupling (non-normal). Real
                systems get conjugate pairs as 2x2 rotation-scaling blocks.

Structure (``structure``):

``"generic"``        generic, hence minimal, ``(A, B, C)``;
``"uncontrollable"`` ``n2`` states the input cannot reach: ``A = [[A11, A12], [0, A22]]``, ``B = [B1; 0]``;
``"unobservable"``   ``n2`` states the output cannot see: ``A = [[A11, 0], [A21, A22]]``, ``C = [C1, 0]``;
``"both"``           both of the above stacked (an uncontrollable and an unobservable part);
``"rank_deficient_b"`` ``B`` of rank 1 (with ``m >= 2``), which is still controllable for generic ``A``.

Non-minimal structures are hidden by a random orthogonal change of state coordinates. ``System.minimal_order``
is an upper bound on the McMillan degree: at least ``n - minimal_order`` Hankel singular values are zero.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from hypothesis import strategies as st

__all__ = [
    "System",
    "build_system",
    "stable_systems",
    "batched_systems",
    "random_state_transformation",
]


class System:
    """One drawn system (or a batch of them, with leading dimensions ``batch``).

    A plain class with a short ``repr``: Hypothesis prints the recipe (seed and sizes), not 900 numbers.
    """

    def __init__(self, A, B, C, D, minimal_order: int, rho: float, description: dict):
        self.A, self.B, self.C, self.D = A, B, C, D
        self.minimal_order = minimal_order
        self.rho = rho
        self.description = description

    @property
    def n(self) -> int:
        return self.A.shape[-1]

    @property
    def m(self) -> int:
        return self.B.shape[-1]

    @property
    def p(self) -> int:
        return self.C.shape[-2]

    @property
    def batch(self) -> tuple:
        return self.A.shape[:-2]

    @property
    def is_complex(self) -> bool:
        return np.iscomplexobj(self.A)

    def matrices(self):
        return self.A, self.B, self.C, self.D

    def __getitem__(self, index) -> "System":
        """One member of a batch, e.g. ``sys[1, 0]``."""
        return System(self.A[index], self.B[index], self.C[index], self.D[index], self.minimal_order, self.rho,
                      self.description)

    def __repr__(self) -> str:
        return f"System({self.description})"

    def _repr_pretty_(self, printer, cycle):  # what Hypothesis shows for a falsifying example
        printer.text(repr(self))


# --------------------------------------------------------------------------------------------------------------
# construction from a seed
# --------------------------------------------------------------------------------------------------------------


def _normal(rng, shape, complex_: bool):
    x = rng.standard_normal(shape)
    if complex_:
        x = (x + 1j * rng.standard_normal(shape)) / np.sqrt(2)
    return x


def _orthogonal(rng, n, complex_: bool):
    q, r = np.linalg.qr(_normal(rng, (n, n), complex_))
    d = np.diagonal(r)
    return q * (d / np.abs(d))


def _spectral_radius(A) -> float:
    return float(np.max(np.abs(np.linalg.eigvals(A)))) if A.size else 0.0


def _gaussian_A(rng, n, rho, complex_):
    A = _normal(rng, (n, n), complex_)
    return A * (rho / _spectral_radius(A))


def _modal_A(rng, n, rho, complex_):
    """Eigenvalues placed on purpose: a third of them at modulus ``rho(0.98..1)`` (slow, lightly damped poles),
    the rest inside; angles stratified so that no two eigenvalues nearly coincide (with the non-normal
    coupling below, near-coincident eigenvalues would make Jordan-like clusters whose eigenvalues and Gramians
    no two codes agree on)."""
    if complex_:
        k = n
        n_slow = max(1, k // 3)
        moduli = np.concatenate([[rho], rho * rng.uniform(0.98, 1.0, n_slow - 1), rng.uniform(0.05, rho, k - n_slow)])
        angles = 2 * np.pi * (rng.permutation(k) + rng.uniform(0.2, 0.8, k)) / k
        T = np.diag(moduli * np.exp(1j * angles)).astype(complex)
    else:
        n_pairs = int(rng.integers(0, n // 2 + 1))
        n_real = n - 2 * n_pairs
        blocks = []
        if n_pairs:
            n_slow = max(1, n_pairs // 3)
            moduli = np.concatenate([[rho], rho * rng.uniform(0.98, 1.0, n_slow - 1),
                                     rng.uniform(0.05, rho, n_pairs - n_slow)])
            angles = np.pi * (rng.permutation(n_pairs) + rng.uniform(0.2, 0.8, n_pairs)) / n_pairs
            blocks += [r * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) for r, a in zip(moduli, angles)]
        if n_real:
            # stratified on [-rho, rho]; the outermost one sits at +-rho when there is no pair to carry rho
            grid = np.linspace(-rho, rho, n_real + 1)
            reals = grid[:-1] + (grid[1] - grid[0]) * rng.uniform(0.2, 0.8, n_real) if n_real > 1 else np.array([rho])
            if not n_pairs:
                reals[np.argmax(np.abs(reals))] = rho * np.sign(reals[np.argmax(np.abs(reals))])
            blocks += [np.array([[x]]) for x in reals]
        order = rng.permutation(len(blocks))
        T = scipy.linalg.block_diag(*[blocks[i] for i in order])
    # Non-normality: a strictly upper-(block-)triangular coupling leaves the eigenvalues unchanged. Scaled by
    # 1/sqrt(n) so that its norm stays O(1) for every n.
    coupling = (0.5 / np.sqrt(n)) * _normal(rng, (n, n), complex_)
    if complex_:
        T = T + np.triu(coupling, k=1)
    else:
        # entries above the 2x2 blocks only: mask out the within-block (i, i+1) positions of pairs
        sizes = [b.shape[0] for b in (blocks[i] for i in order)]
        block_id = np.repeat(np.arange(len(sizes)), sizes)
        T = T + coupling * (block_id[:, None] < block_id[None, :])
    Qo = _orthogonal(rng, n, complex_)
    return Qo @ T @ Qo.conj().T


def _stable_A(rng, n, rho, complex_, a_kind):
    if n == 0:
        return np.zeros((0, 0), dtype=complex if complex_ else float)
    if a_kind == "gaussian":
        return _gaussian_A(rng, n, rho, complex_)
    return _modal_A(rng, n, rho, complex_)


def build_system(seed: int, n: int, m: int, p: int, *, complex_: bool = False, rho: float = 0.9,
                 a_kind: str = "gaussian", structure: str = "generic", n_hidden: int = 0,
                 with_D: bool = True) -> System:
    """Deterministic system from a seed: the recipe Hypothesis draws (see the module docstring)."""
    rng = np.random.default_rng(seed)
    desc = dict(seed=seed, n=n, m=m, p=p, complex=complex_, rho=rho, a_kind=a_kind, structure=structure,
                n_hidden=n_hidden, with_D=with_D)

    def part(k, hidden=False):
        # Hidden parts get a smaller radius so their eigenvalues do not coincide with the main part's (a shared
        # eigenvalue plus the coupling block would make a Jordan-like, ill-conditioned cluster).
        return _stable_A(rng, k, rho * rng.uniform(0.5, 0.97) if hidden else rho, complex_, a_kind)

    if structure in ("uncontrollable", "unobservable", "both") and n_hidden >= 1:
        n_hidden = min(n_hidden, n - 1) if structure != "both" else min(n_hidden, (n - 1) // 2)
    else:
        n_hidden = 0
    desc["n_hidden"] = n_hidden

    if n_hidden == 0:
        A = part(n)
        B = _normal(rng, (n, m), complex_)
        C = _normal(rng, (p, n), complex_)
        if structure == "rank_deficient_b" and m >= 2:
            B = _normal(rng, (n, 1), complex_) @ _normal(rng, (1, m), complex_)
        minimal = n
    else:
        n1 = n - n_hidden * (2 if structure == "both" else 1)
        A = part(n1)
        B = _normal(rng, (n1, m), complex_)
        C = _normal(rng, (p, n1), complex_)
        if structure in ("uncontrollable", "both"):
            A2 = part(n_hidden, hidden=True)
            A = np.block([[A, 0.5 * _normal(rng, (A.shape[0], n_hidden), complex_)],
                          [np.zeros((n_hidden, A.shape[0])), A2]])
            B = np.vstack([B, np.zeros((n_hidden, m))])
            C = np.hstack([C, _normal(rng, (p, n_hidden), complex_)])
        if structure in ("unobservable", "both"):
            A3 = part(n_hidden, hidden=True)
            k = A.shape[0]
            A = np.block([[A, np.zeros((k, n_hidden))],
                          [0.5 * _normal(rng, (n_hidden, k), complex_), A3]])
            B = np.vstack([B, _normal(rng, (n_hidden, m), complex_)])
            C = np.hstack([C, np.zeros((p, n_hidden))])
        # Hide the block structure.
        T = _orthogonal(rng, n, complex_)
        A, B, C = T.conj().T @ A @ T, T.conj().T @ B, C @ T
        minimal = n1
    D = _normal(rng, (p, m), complex_) if with_D else np.zeros((p, m), dtype=A.dtype)
    dtype = complex if complex_ else float
    A, B, C, D = (np.ascontiguousarray(X, dtype=dtype) for X in (A, B, C, D))
    return System(A, B, C, D, minimal, rho, desc)


def random_state_transformation(seed: int, n: int, *, complex_: bool = False, cond: float = 10.0):
    """A random ``T`` with condition number ``cond``: ``U diag(s) V^H``, ``s`` log-spaced in ``[1, cond]``."""
    rng = np.random.default_rng(seed)
    s = np.geomspace(1.0, cond, n)
    rng.shuffle(s)
    return _orthogonal(rng, n, complex_) @ np.diag(s) @ _orthogonal(rng, n, complex_).conj().T


# --------------------------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------------------------

seeds = st.integers(min_value=0, max_value=2**32 - 1)


def spectral_radii(near_unit: bool | None = None):
    """``rho`` in ``[0.1, 0.95]`` or, near the unit circle, ``[0.99, 0.999]``; ``None`` mixes both."""
    ordinary = st.floats(0.1, 0.95)
    near = st.floats(0.99, 0.999)
    if near_unit is None:
        return st.one_of(ordinary, near)
    return near if near_unit else ordinary


@st.composite
def stable_systems(draw, *, n=(1, 30), m=(1, 4), p=(1, 4), complex_=None, near_unit=None,
                   structure=None, a_kind=None, with_D=None) -> System:
    """One stable system. Each keyword fixes that aspect (a value) or leaves it to Hypothesis (``None``);
    ``n``, ``m``, ``p`` are ``(low, high)`` ranges or fixed integers."""

    def size(spec):
        return spec if isinstance(spec, int) else draw(st.integers(*spec))

    nn, mm, pp = size(n), size(m), size(p)
    cplx = draw(st.booleans()) if complex_ is None else complex_
    rho = draw(spectral_radii(near_unit))
    kind = draw(st.sampled_from(["gaussian", "modal"])) if a_kind is None else a_kind
    if structure is None:
        struct = draw(st.sampled_from(["generic", "generic", "uncontrollable", "unobservable", "both",
                                       "rank_deficient_b"]))
    else:
        struct = structure if isinstance(structure, str) else draw(st.sampled_from(list(structure)))
    if struct in ("uncontrollable", "unobservable", "both"):
        # room for a minimal part of order >= 1 and one (or, for "both", two) hidden parts
        nn = max(nn, 3 if struct == "both" else 2)
        n_hidden = draw(st.integers(1, max(1, (nn - 1) // (2 if struct == "both" else 1))))
    else:
        n_hidden = 0
    D = draw(st.booleans()) if with_D is None else with_D
    return build_system(draw(seeds), nn, mm, pp, complex_=cplx, rho=rho, a_kind=kind, structure=struct,
                        n_hidden=n_hidden, with_D=D)


@st.composite
def batched_systems(draw, *, n=(1, 12), m=(1, 3), p=(1, 3), complex_=None, near_unit=None, structure="generic",
                    max_batch_dims: int = 2) -> System:
    """A batch of independent systems of one shape, stacked along 1..``max_batch_dims`` leading dimensions."""
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=max_batch_dims)))
    nn = n if isinstance(n, int) else draw(st.integers(*n))
    mm = m if isinstance(m, int) else draw(st.integers(*m))
    pp = p if isinstance(p, int) else draw(st.integers(*p))
    cplx = draw(st.booleans()) if complex_ is None else complex_
    rho = draw(spectral_radii(near_unit))
    kind = draw(st.sampled_from(["gaussian", "modal"]))
    base_seed = draw(seeds)
    members = [build_system(base_seed + k, nn, mm, pp, complex_=cplx, rho=rho, a_kind=kind, structure=structure,
                            n_hidden=max(1, nn // 3))
               for k in range(int(np.prod(batch)))]
    stack = [np.stack([getattr(s, name) for s in members]).reshape(batch + getattr(members[0], name).shape)
             for name in "ABCD"]
    desc = dict(members[0].description, seed=base_seed, batch=batch)
    return System(*stack, minimal_order=members[0].minimal_order, rho=rho, description=desc)
