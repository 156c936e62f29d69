"""Exception types of :mod:`lti_reduce`.

Every error raised for bad user input is a :class:`ValueError` subclass, so
``except ValueError`` catches all of them; the message names the offending
value, the rule it broke and how to fix it.
"""

from __future__ import annotations

__all__ = ["LTIInputError", "OrderCappedWarning", "UnstableSystemError"]


class LTIInputError(ValueError):
    """Bad input to an :mod:`lti_reduce` function: shapes, dtypes, NaN/Inf, options."""


class UnstableSystemError(LTIInputError):
    """The state matrix is not Schur stable (spectral radius ``rho(A) >= 1``).

    Discrete-time Gramians ``P = A P A^H + B B^H`` exist only for ``rho(A) < 1``;
    the message reports the spectral radius that was found.
    """


class OrderCappedWarning(UserWarning):
    """The requested order exceeds the numerical order of a continuous-time model and was lowered.

    States whose Hankel singular value is at round-off level (``sigma_i <= n eps sigma_1``) are
    uncontrollable or unobservable to working precision; in continuous time keeping them would put
    eigenvalues at ``s = 0`` into the reduced model (not stable). The result's ``rank`` is the
    numerical order (SLICOT ``AB09AD`` returns it as ``NR``) and ``requested_rank`` what was asked.
    """
