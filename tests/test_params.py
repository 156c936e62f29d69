"""In-place parameter resizing keeps the Parameter objects that optimizers and hooks hold."""

import torch
import torch.nn as nn

from adapters.torch.layers._params import resize_from_checkpoint_, set_parameter_


def test_set_parameter_keeps_the_object_and_its_optimizer_slot():
    lin = nn.Linear(4, 6)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    weight = lin.weight
    lin(torch.randn(2, 4)).sum().backward()
    set_parameter_(lin, "weight", weight.detach()[:3])
    assert lin.weight is weight and opt.param_groups[0]["params"][0] is weight
    assert weight.shape == (3, 4) and weight.grad is None and weight.requires_grad
    assert weight.untyped_storage().nbytes() == 3 * 4 * 4  # the old storage is not kept alive by a view


def test_set_parameter_resolves_dotted_names():
    seq = nn.Sequential(nn.Linear(2, 2))
    set_parameter_(seq, "0.bias", torch.zeros(5))
    assert seq[0].bias.shape == (5,)


def test_resize_from_checkpoint_resizes_only_same_rank_mismatches():
    lin = nn.Linear(4, 6)
    sd = {"p.weight": torch.ones(3, 4), "p.bias": torch.ones(2, 2)}
    assert resize_from_checkpoint_(lin, sd, "p.", ["weight", "bias"]) == ["weight"]
    assert lin.weight.shape == (3, 4) and lin.bias.shape == (6,)


def test_backward_works_after_a_resize_while_an_old_graph_is_still_alive():
    lin = nn.Linear(4, 6)
    loss = lin(torch.randn(2, 4)).sum()  # kept alive, as the previous step's loss in a training loop
    loss.backward()
    set_parameter_(lin, "weight", lin.weight.detach()[:3])
    set_parameter_(lin, "bias", lin.bias.detach()[:3])
    lin(torch.randn(2, 4)).square().sum().backward()
    assert lin.weight.grad.shape == (3, 4) and lin.bias.grad.shape == (3,)
    assert loss.grad_fn is not None
