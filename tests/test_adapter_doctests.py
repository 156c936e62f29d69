"""The docstring examples of every ``adapters.torch`` module run and print what they show."""

import doctest
import importlib
import pkgutil

import pytest

pytest.importorskip("torch")

import adapters.torch as at  # noqa: E402

_MODULES = ["adapters.torch"] + sorted(f"adapters.torch.{m.name}" for m in pkgutil.iter_modules(at.__path__)
                                       if not m.ispkg and m.name not in ("lightning",))


@pytest.mark.parametrize("name", _MODULES)
def test_doctests_of_adapter_module(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples in {name} failed (output above)"


def test_the_adapter_modules_carry_examples():
    counts = {n: doctest.DocTestFinder().find(importlib.import_module(n)) for n in ("adapters.torch.compress",
                                                                                   "adapters.torch.schedule")}
    assert all(sum(len(t.examples) for t in tests) > 0 for tests in counts.values())
