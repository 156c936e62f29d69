"""The experiment's first import path, kept for existing code: see :mod:`adapters.torch.experiment`."""

from .experiment import *  # noqa: F401,F403
from .experiment import __all__  # noqa: F401
