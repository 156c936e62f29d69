"""compress_ inside real training stacks: DDP misuse, frozen layers, EMA, L-BFGS, gradient accumulation,
meta-device models and torch.compile. Each test is one behaviour; each fails on the code before it."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

import adapters.torch as at  # noqa: E402
from adapters.torch import LRU  # noqa: E402


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(LRU(4, 12, r_min=0.5, r_max=0.95), torch.nn.Linear(4, 4), LRU(4, 12, r_min=0.5, r_max=0.95))


def _loss(model, seed=1):
    u = torch.randn(3, 10, 4, generator=torch.Generator().manual_seed(seed))
    return (model(u) - u).pow(2).mean()


def _train(model, opt, steps=2):
    for i in range(steps):
        opt.zero_grad()
        _loss(model, i).backward()
        opt.step()


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ DDP misuse
@pytest.fixture
def one_process_group():
    dist = torch.distributed
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_compress_on_a_ddp_wrapper_refuses_and_names_compress_ddp(one_process_group):
    model = torch.nn.parallel.DistributedDataParallel(_model())
    opt = torch.optim.Adam(model.parameters())
    _train(model, opt)
    before = _state(model)
    with pytest.raises(TypeError, match="compress_ddp_"):
        at.compress_(model, rank=4, optimizer=opt)
    assert _same(before, _state(model))


def test_the_old_ddp_wrapper_says_to_use_the_new_one(one_process_group):
    old = torch.nn.parallel.DistributedDataParallel(_model())
    opt = torch.optim.Adam(old.parameters())
    _train(old, opt)
    new, _ = at.compress_ddp_(old, optimizer=opt, rank=4)
    with pytest.raises(RuntimeError, match="replaced by compress_ddp_.*Use the wrapper it returned"):
        old(torch.randn(2, 5, 4))
    _train(new, opt)  # the new wrapper trains


def test_compress_on_an_fsdp2_sharded_model_names_compress_fsdp_and_that_cuts_it(one_process_group):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = _model()
    reference = _model()
    fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
    opt = torch.optim.Adam(model.parameters())
    u = torch.randn(2, 6, 4)
    with pytest.raises(TypeError, match="compress_fsdp_"):
        at.compress_(model, rank=4, optimizer=opt)
    model(u)  # the root keeps its parameters unsharded after a forward
    with pytest.raises(TypeError, match="compress_fsdp_"):
        at.compress_(model, rank=4, optimizer=opt)
    report = at.compress_fsdp_(model, optimizer=opt, rank=4)
    at.compress_(reference, rank=4, optimizer=None)
    assert [x.after for x in report] == [reference[0].state_dim, reference[2].state_dim]
    assert {id(p) for p in model.parameters()} == {id(p) for g in opt.param_groups for p in g["params"]}
    torch.testing.assert_close(model(u), reference(u))
    _train(model, opt)


# -------------------------------------------------------------------------------------------- frozen layers
def test_frozen_layers_are_skipped_and_reported_with_an_optimizer_over_trainable_parameters():
    model = _model()
    model[0].requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    _train(model, opt)
    frozen = {k: v.clone() for k, v in model[0].state_dict().items()}
    report = at.compress_(model, rank=4, optimizer=opt)
    assert report["2"].compressed and model[2].state_dim <= 4
    assert not report["0"].compressed and "frozen" in report["0"].note
    assert _same(frozen, model[0].state_dict())
    _train(model, opt)


def test_a_trainable_layer_missing_from_the_optimizer_gets_a_message_about_trainable_parameters():
    model = _model()
    opt = torch.optim.Adam(model[1].parameters())
    with pytest.raises(ValueError, match="trainable parameters.*requires_grad=False"):
        at.compress_(model, rank=4, optimizer=opt)


# ---------------------------------------------------------------------------------------------------- EMA
def test_an_averaged_model_follows_the_cut():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    model = _model()
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.5))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for i in range(3):
        _train(model, opt, 1)
        ema.update_parameters(model)
    linear_avg = ema.module[1].weight.detach().clone()
    assert not torch.equal(linear_avg, model[1].weight)  # a real average, not a copy
    report = at.compress_(model, rank=4, optimizer=opt)
    assert at.resize_averaged_model_(ema, model, report) == ["0", "2"]
    for name, p in model[0].named_parameters():  # restarted at the cut model's values
        assert torch.equal(ema.module[0].get_parameter(name), p), name
    assert torch.equal(ema.module[1].weight, linear_avg)  # other layers keep their average
    _train(model, opt, 1)
    ema.update_parameters(model)  # raised a shape error before
    expected = 0.5 * linear_avg + 0.5 * model[1].weight.detach()
    torch.testing.assert_close(ema.module[1].weight.detach(), expected)
    u = torch.randn(2, 6, 4)
    assert ema(u).shape == model(u).shape


def test_swapped_averaged_model_arguments_are_refused_and_change_nothing():
    from torch.optim.swa_utils import AveragedModel

    model = _model()
    ema = AveragedModel(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, opt, 1)
    ema.update_parameters(model)
    report = at.compress_(model, rank=4, optimizer=opt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match="swapped"):
        at.resize_averaged_model_(model, ema, report)
    plain_average = copy.deepcopy(ema.module)  # an average kept as a plain copy of the model: sizes decide
    with pytest.raises(ValueError, match="state_dim .* but the report cut it to"):
        at.resize_averaged_model_(model, plain_average, report)
    assert _same(before, model.state_dict())


# ------------------------------------------------------------------------------------------------- L-BFGS
def test_lbfgs_restarts_its_history_at_a_cut_and_keeps_training():
    model = _model()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3)
    u = torch.randn(3, 10, 4, generator=torch.Generator().manual_seed(0))

    def closure():
        opt.zero_grad()
        loss = (model(u) - u).pow(2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    at.compress_(model, rank=4, optimizer=opt)
    loss = opt.step(closure)  # raised "(n) must match (m)" before
    assert torch.isfinite(loss)
    assert opt.state[opt._params[0]]["d"].numel() == sum(p.numel() for p in model.parameters())


class _FlatMomentum(torch.optim.Optimizer):
    """Momentum kept as one flat buffer over all parameters (an L-BFGS-like layout)."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        state = self.state[params[0]]
        state["buf"] = flat if "buf" not in state else 0.9 * state["buf"] + flat
        offset = 0
        for p in params:
            p.add_(state["buf"][offset:offset + p.numel()].view_as(p), alpha=-self.param_groups[0]["lr"])
            offset += p.numel()


def test_an_optimizer_with_flat_state_is_refused_before_anything_changes():
    model = _model()
    opt = _FlatMomentum(model.parameters())
    _train(model, opt)
    before, buf = _state(model), opt.state[next(model.parameters())]["buf"].clone()
    with pytest.raises(ValueError, match="flattened across all its parameters"):
        at.compress_(model, rank=4, optimizer=opt)
    assert _same(before, _state(model))
    assert torch.equal(opt.state[next(model.parameters())]["buf"], buf)


# ---------------------------------------------------------------------------------- gradient accumulation
def test_a_cut_in_the_middle_of_gradient_accumulation_is_refused_and_changes_nothing():
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    _train(model, opt)
    opt.zero_grad()
    _loss(model, 5).backward()  # first micro-batch of the next step
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    before = _state(model)
    with pytest.raises(RuntimeError, match="gradients are being accumulated"):
        at.compress_(model, rank=4, optimizer=opt)
    assert _same(before, _state(model))
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())


def test_a_cut_right_after_the_optimizer_step_is_allowed_with_gradients_still_set():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for accumulate_in_place in (False, True):
        opt.zero_grad(set_to_none=not accumulate_in_place)
        _loss(model, 1).backward()
        _loss(model, 2).backward()
        opt.step()  # the gradients are used; a cut now mixes nothing
    assert at.compress_(model, rank=4, optimizer=opt).compressed
    opt.zero_grad(set_to_none=False)  # zeroed in place: nothing pending either
    assert at.compress_(model, rank=3, optimizer=opt).compressed


# --------------------------------------------------------------------------------------------- meta device
def test_a_model_on_the_meta_device_gets_a_message_saying_what_is_needed():
    with torch.device("meta"):
        model = torch.nn.Sequential(LRU(4, 12))
    with pytest.raises(ValueError, match="meta device.*to_empty"):
        at.compress_(model, rank=4, optimizer=None)


# ------------------------------------------------------------------------------------------- torch.compile
def test_a_compiled_model_reports_the_users_layer_names_and_runs_after_the_cut():
    model = _model()
    compiled = torch.compile(model, backend="eager")
    u = torch.randn(2, 6, 4)
    compiled(u)
    report = at.compress_(compiled, rank=4, optimizer=None)
    assert [x.name for x in report] == ["0", "2"]
    torch.testing.assert_close(compiled(u), model(u))
