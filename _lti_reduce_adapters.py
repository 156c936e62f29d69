"""Make ``import adapters.torch`` find lti_reduce's adapter beside AdapterHub's ``adapters``.

lti_reduce ships ``adapters.torch`` as a portion of a namespace package ``adapters``.
AdapterHub's distribution of the same top-level name is a *regular* package (it has an
``adapters/__init__.py``): once it is importable, Python binds ``adapters`` to it and
looks for ``adapters.torch`` only inside AdapterHub's folder, so the import fails.

This module adds one finder at the *end* of ``sys.meta_path`` (it is imported at start-up
by the ``lti_reduce_adapters.pth`` file that a regular install puts in site-packages).
Being last, it is asked only after every normal finder has failed, so it changes nothing
when there is no conflict, and it answers only for the name ``adapters.torch``: it returns
the package that lies beside this file. Submodules (``adapters.torch.layers``, ...) are then
found through that package's ``__path__`` as usual, and AdapterHub's own ``adapters``
keeps working. Import it by hand (``import _lti_reduce_adapters``) where ``.pth`` files are
not processed (``python -S``).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

_NAME = "adapters.torch"
_HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "adapters", "torch")


class AdaptersTorchFinder:
    """``sys.meta_path`` finder that resolves ``adapters.torch`` to lti_reduce's package."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != _NAME:
            return None
        init = os.path.join(_HERE, "__init__.py")
        if not os.path.isfile(init):
            return None
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[_HERE])


def install() -> None:
    """Append the finder to ``sys.meta_path`` once."""
    if not any(f is AdaptersTorchFinder for f in sys.meta_path):
        sys.meta_path.append(AdaptersTorchFinder)


install()
