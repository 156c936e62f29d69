"""ResizableStateMixin / resize_state_from_checkpoint_: only the state axis is resized, in place."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from adapters.torch import ResizableStateMixin, resize_state_from_checkpoint_  # noqa: E402


class Diagonal(ResizableStateMixin, nn.Module):
    state_parameters = {"lam": 0, "B": 0, "C": -1}

    def __init__(self, d_model, n):
        super().__init__()
        self.lam = nn.Parameter(torch.rand(n))
        self.B = nn.Parameter(torch.randn(n, d_model))
        self.C = nn.Parameter(torch.randn(d_model, n))
        self.D = nn.Parameter(torch.randn(d_model))


def test_a_smaller_checkpoint_resizes_the_state_parameters_in_place_and_loads_their_values():
    small, fresh = Diagonal(3, 2), Diagonal(3, 8)
    objects = {k: id(v) for k, v in fresh.named_parameters()}
    fresh.load_state_dict(small.state_dict())
    for name, p in fresh.named_parameters():
        assert id(p) == objects[name] and torch.equal(p, small.get_parameter(name)), name


def test_nested_modules_use_their_prefix():
    small = nn.Sequential(nn.Linear(3, 3), Diagonal(3, 5))
    fresh = nn.Sequential(nn.Linear(3, 3), Diagonal(3, 9))
    fresh.load_state_dict(small.state_dict())
    assert fresh[1].C.shape == (3, 5)


@pytest.mark.parametrize("bad", ["d_model", "inconsistent"])
def test_inconsistent_checkpoints_are_left_to_the_default_loader(bad):
    sd = Diagonal(3, 2).state_dict()
    if bad == "d_model":
        sd = Diagonal(4, 2).state_dict()
    else:
        sd["C"] = torch.randn(3, 5)  # C says 5 states, lam and B say 2
    fresh = Diagonal(3, 8)
    with pytest.raises(RuntimeError, match="size mismatch"):
        fresh.load_state_dict(sd)


def test_function_returns_the_new_size_or_none():
    layer = Diagonal(3, 8)
    sd = Diagonal(3, 4).state_dict()
    assert resize_state_from_checkpoint_(layer, sd, "", {"lam": 0, "B": 0, "C": -1}) == 4
    assert resize_state_from_checkpoint_(layer, sd, "", {"lam": 0, "B": 0, "C": -1}) is None  # already equal
    assert layer.B.shape == (4, 3) and layer.D.shape == (3,)
    with pytest.raises(TypeError, match="state axis"):
        resize_state_from_checkpoint_(layer, sd, "", ["lam", "B"])


@pytest.mark.parametrize("name", ["LRU", "S5", "S4D"])
def test_a_checkpoint_of_another_width_is_refused_with_the_reason_first(name):
    """Another d_model is not a cut: the first error line says so (PyTorch's own lines follow)."""
    import adapters.torch as at

    cls = getattr(at, name)
    fresh = cls(4, 8)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(RuntimeError) as info:
        fresh.load_state_dict(cls(5, 3).state_dict())
    first = str(info.value).splitlines()[1]
    assert "has size 5 where this" in first and "has 4" in first and "not the state axis" in first
    assert "Build the layer with the checkpoint's options" in first
    fresh.load_state_dict(cls(4, 3).state_dict())  # a cut checkpoint of the same width still loads
    assert fresh.state_dim == 3 and set(before) == set(fresh.state_dict())


@pytest.mark.parametrize("layer", ["mixin", "S5", "S4D"])
def test_an_optimizer_still_holding_moments_of_the_old_size_is_refused_at_its_next_step(layer):
    """Loading a smaller checkpoint marks the resized parameters, as a cut does: a stale Adam moment is named."""
    from adapters.torch import S4D, S5, StaleOptimizerStateError

    torch.manual_seed(0)
    make = {"mixin": lambda n: Diagonal(3, n), "S5": lambda n: S5(3, n), "S4D": lambda n: S4D(3, n)}[layer]
    small, fresh = make(2), make(8)
    optimizer = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    u = torch.randn(1, 5, 3)
    output = (lambda: fresh.C @ (fresh.B @ u[0, 0])) if layer == "mixin" else (lambda: fresh(u))
    output().square().sum().backward()
    optimizer.step()  # Adam's moments now have the full-size shapes
    fresh.load_state_dict(small.state_dict())
    optimizer.zero_grad()
    output().square().sum().backward()
    with pytest.raises(StaleOptimizerStateError, match="old shape"):
        optimizer.step()
    for p in fresh.parameters():  # the fix the message names: drop the stale moments
        optimizer.state.pop(p, None)
    optimizer.step()
    assert fresh.get_parameter("C" if layer == "mixin" else "C_re").shape[-1] == 2
