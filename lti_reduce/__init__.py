"""lti_reduce: discrete-time balanced truncation, batched, on numpy or torch.

Public API
----------
gramians, gramian_factors
    Discrete Gramians ``P = A P A^H + B B^H``, ``Q = A^H Q A + C^H C`` and square-root factors.
hankel_singular_values, hankel_norm
    HSVs ``sqrt(eig(P Q))`` and the largest one.
balanced_truncation, BalancedTruncationResult
    Square-root balanced truncation / singular perturbation approximation.
hinf_norm
    A-posteriori H-infinity norm on the unit circle.
rank_for_tol
    The CompreSSM energy rule from a tolerance to a reduced order.
DiagonalSystem, modal_form
    Diagonal (SSM-layer) systems, real-output maps, and back to modal form.
hsv_perturbation_bound
    Weyl certificate: how far HSVs can move between two systems.
discretize
    Continuous to discrete time (bilinear / zero-order hold).
UnstableSystemError, LTIInputError
    Input errors (``ValueError`` subclasses).
OrderCappedWarning
    A continuous-time order above the model's numerical order was lowered to it.
SplitReductionResult, SplitConditioningWarning
    Unstable models (``unstable="split"``): the unstable part kept, the stable part reduced.

Every function above that takes a system also takes a python-control or scipy.signal system
object (:mod:`lti_reduce.interop`) and continuous-time models (``time="continuous"``, or an
object with ``dt = 0``; :mod:`lti_reduce.continuous`).

Submodules imported on purpose: :mod:`lti_reduce.lowrank` (large sparse models: low-rank ADI Gramian
factors and balanced truncation from them) and :mod:`lti_reduce.datasets` (the SLICOT CD player and ISS
benchmark models, shipped with the package).
"""

from .balancing import BalancedTruncationResult, balance, balanced_truncation, hankel_singular_values
from .bounds import HSVPerturbation, hankel_norm, hinf_norm, hsv_perturbation_bound
from .discretize import discretize
from .energy import rank_for_tol
from .errors import LTIInputError, OrderCappedWarning, UnstableSystemError
from .gramians import gramian_factors, gramians
from .modal import ModalConditioningWarning, modal_form
from .stable_split import SplitConditioningWarning, SplitReductionResult
from .systems import DiagonalSystem

__all__ = [
    "BalancedTruncationResult",
    "DiagonalSystem",
    "HSVPerturbation",
    "LTIInputError",
    "ModalConditioningWarning",
    "OrderCappedWarning",
    "SplitConditioningWarning",
    "SplitReductionResult",
    "UnstableSystemError",
    "balance",
    "balanced_truncation",
    "discretize",
    "gramian_factors",
    "gramians",
    "hankel_norm",
    "hankel_singular_values",
    "hinf_norm",
    "hsv_perturbation_bound",
    "modal_form",
    "rank_for_tol",
]

__version__ = "0.1.0"
