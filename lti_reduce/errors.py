"""Exception types of :mod:`lti_reduce`.

Every error raised for bad user input is a :class:`ValueError` subclass, so
``except ValueError`` catches all of them; the message names the offending
value, the rule it broke and how to fix it.
"""

from __future__ import annotations

__all__ = ["LTIInputError", "UnstableSystemError"]


class LTIInputError(ValueError):
    """Bad input to an :mod:`lti_reduce` function: shapes, dtypes, NaN/Inf, options."""


class UnstableSystemError(LTIInputError):
    """The state matrix is not Schur stable (spectral radius ``rho(A) >= 1``).

    Discrete-time Gramians ``P = A P A^H + B B^H`` exist only for ``rho(A) < 1``;
    the message reports the spectral radius that was found.
    """
