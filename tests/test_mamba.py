"""SelectiveSSM and compress_selective_: scans, averaged systems, the shared state selection, training on."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from adapters.torch import compress_
from adapters.torch.mamba import (
    SelectiveSSM,
    compress_selective_,
    leave_one_state_out,
    measure_selective_cut,
    selective_scan,
    selective_scan_reference,
    selective_state_scores,
)


def _scan_inputs(batch=2, length=29, d=3, n=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    return (make(batch, length, d), torch.rand(batch, length, d, generator=g, dtype=dtype) * 0.5,
            -torch.rand(d, n, generator=g, dtype=dtype) * 4, make(batch, length, n), make(batch, length, n), make(d))


@pytest.mark.parametrize("chunk_size", [None, 1, 4, 29, 64])
def test_chunked_scan_agrees_with_the_reference(chunk_size):
    args = [t.requires_grad_() for t in _scan_inputs()]
    ref = selective_scan_reference(*args)
    fast = selective_scan(*args, chunk_size=chunk_size)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ref, args, g), torch.autograd.grad(fast, args, g)):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


def test_chunked_scan_survives_decays_that_overflow_a_cumulative_product_trick():
    x, delta, A, B, C, D = _scan_inputs(length=64, dtype=torch.float32)
    A = A * 50  # delta * A down to -100 per step: exp(+sum) would overflow float32
    y = selective_scan(x, delta, A, B, C, D, chunk_size=16)
    assert bool(torch.isfinite(y).all())
    torch.testing.assert_close(y, selective_scan_reference(x, delta, A, B, C, D), rtol=1e-4, atol=1e-5)


def test_block_modes_agree():
    torch.manual_seed(0)
    block = SelectiveSSM(6, 8, d_conv=3)
    u = torch.randn(2, 17, 6)
    fast = block(u)
    block.mode = "sequential"
    torch.testing.assert_close(fast, block(u), rtol=1e-5, atol=1e-6)


def test_to_system_is_the_documented_average():
    torch.manual_seed(1)
    block = SelectiveSSM(4, 6, expand=1).double()
    u = torch.randn(3, 11, 4, dtype=torch.float64)
    system = block.to_system(calibration=u)
    x, _ = block._inner(u)
    delta, B, C = block._selective(x)
    A = -torch.exp(block.A_log)
    lam = torch.exp(delta.mean((0, 1))[:, None] * A)
    torch.testing.assert_close(system.lam, lam.detach())
    torch.testing.assert_close(system.B[..., 0], (delta[..., None] * B[:, :, None, :]).mean((0, 1)).detach())
    torch.testing.assert_close(system.C[:, 0, :], C.mean((0, 1)).detach().expand(4, -1))
    assert system.batch_shape == (4,) and system.n == 6 and not system.real_output


def test_to_system_without_calibration_explains_what_is_missing():
    with pytest.raises(ValueError, match="calibration"):
        SelectiveSSM(4, 6).to_system()


def test_cut_keeps_the_same_states_in_every_channel():
    torch.manual_seed(2)
    block = SelectiveSSM(4, 16)
    u = torch.randn(4, 20, 4)
    A_before = block.A_log.detach().clone()
    B_before, C_before = block.B_proj.weight.detach().clone(), block.C_proj.weight.detach().clone()
    report = compress_selective_(block, calibration_inputs=u, rank=5, optimizer=None)
    kept = report.layers[0].kept
    assert block.state_dim == 5 and len(kept) == 5
    torch.testing.assert_close(block.A_log.detach(), A_before[:, kept])  # every channel: the same columns
    torch.testing.assert_close(block.B_proj.weight.detach(), B_before[kept])
    torch.testing.assert_close(block.C_proj.weight.detach(), C_before[kept])
    scores = report.layers[0].scores
    assert min(scores[kept]) >= max(s for i, s in enumerate(scores) if i not in kept)


def test_the_cut_is_exact_surgery_on_the_kept_states():
    torch.manual_seed(3)
    block = SelectiveSSM(4, 12).double()
    u = torch.randn(2, 15, 4, dtype=torch.float64)
    keep = [0, 2, 7, 11]
    block.calibrate_(u)
    block._state_mask = torch.zeros(12, dtype=torch.float64)
    block._state_mask[keep] = 1
    masked = block(u)
    block._state_mask = None
    block.select_states_(keep)
    torch.testing.assert_close(block(u), masked)


def _masked_forward(block, u, keep):
    mask = torch.zeros(block.state_dim, dtype=u.dtype)
    mask[list(keep)] = 1
    block._state_mask = mask
    try:
        return block(u)
    finally:
        block._state_mask = None


def test_reported_error_is_the_measured_held_out_output_change():
    torch.manual_seed(4)
    block = SelectiveSSM(4, 16).double()
    held = torch.randn(4, 32, 4, dtype=torch.float64)
    before = block(held).detach()
    report = compress_selective_(block, calibration_inputs=torch.randn(4, 32, 4, dtype=torch.float64), tol=0.2,
                                 held_out_inputs=held, optimizer=None)
    layer = report.layers[0]
    assert layer.compressed and layer.error_data == "held_out" and layer.method == "state_selection"
    after = block(held).detach()
    expected = float((before - after).norm() / before.norm())
    assert layer.error == pytest.approx(expected, rel=1e-9)
    assert layer.measurement.relative_output_change == pytest.approx(expected, rel=1e-9)
    assert "out change" in str(report) and "held_out" in str(report) and "select rows" in str(report)


def test_without_held_out_inputs_the_error_is_measured_on_the_calibration_inputs():
    torch.manual_seed(4)
    block = SelectiveSSM(4, 16).double()
    calib = torch.randn(4, 32, 4, dtype=torch.float64)
    before = block(calib).detach()
    layer = compress_selective_(block, calibration_inputs=calib, rank=5, optimizer=None).layers[0]
    assert layer.error_data == "calibration"
    assert layer.error == pytest.approx(float((before - block(calib).detach()).norm() / before.norm()), rel=1e-9)


def test_tol_keeps_the_fewest_states_within_the_state_path_change():
    torch.manual_seed(9)
    block = SelectiveSSM(4, 16).double()
    with torch.no_grad():
        block.B_proj.weight.mul_(torch.logspace(0, -2, 16, dtype=torch.float64)[:, None])  # unequal states
    u = torch.randn(6, 24, 4, dtype=torch.float64)
    tol = 0.1
    reference = block.state_dict()
    layer = compress_selective_(block, calibration_inputs=u, tol=tol, min_shrink=0.0, optimizer=None).layers[0]
    fresh = SelectiveSSM(4, 16).double()
    fresh.load_state_dict(reference)
    full, none = fresh(u).detach(), _masked_forward(fresh, u, [])

    def change(keep):  # brute force: the block's own forward with the other states removed
        return float((full - _masked_forward(fresh, u, keep)).norm() / (full - none).norm())

    order = sorted(range(16), key=lambda n: -layer.scores[n])
    assert layer.calibration_change == pytest.approx(change(layer.kept), rel=1e-9)
    assert change(order[:layer.after]) <= tol < change(order[:layer.after - 1])


def test_output_energy_score_equals_leave_one_state_out_on_the_same_inputs():
    torch.manual_seed(10)
    block = SelectiveSSM(4, 8).double()
    u = torch.randn(3, 20, 4, dtype=torch.float64)
    full = block(u).detach()
    brute = torch.tensor([float((full - _masked_forward(block, u, [k for k in range(8) if k != n])).norm()
                                / full.norm()) for n in range(8)], dtype=torch.float64)
    torch.testing.assert_close(leave_one_state_out(block, u)[0], brute, rtol=1e-9, atol=1e-14)
    energy = selective_state_scores(block, u)[0]
    torch.testing.assert_close(energy.sqrt() / full.norm(), brute, rtol=1e-9, atol=1e-14)


def test_the_old_averaged_score_is_still_available():
    torch.manual_seed(11)
    block = SelectiveSSM(4, 6).double()
    u = torch.randn(2, 12, 4, dtype=torch.float64)
    system = block.to_system(calibration=u)
    hsv = (system.B[..., 0] * system.C[:, 0, :]).abs() / (1 - system.lam ** 2)
    torch.testing.assert_close(selective_state_scores(block, u, ranking="averaged_hsv")[0], hsv.sum(0))


def test_measurement_changes_nothing():
    torch.manual_seed(5)
    block = SelectiveSSM(4, 8)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    m = measure_selective_cut(block, [0, 1], torch.randn(2, 10, 4))
    assert 0 < m.relative_output_change and m.sequences == 2
    assert block.state_dim == 8 and block._state_mask is None
    for k, v in block.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("optimizer_state", ["slice", "reset"])
def test_training_works_after_the_cut(optimizer_state):
    torch.manual_seed(6)
    model = torch.nn.Sequential(SelectiveSSM(4, 16), torch.nn.Linear(4, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    u = torch.randn(8, 24, 4)
    target = u.roll(2, dims=1)

    def step():
        loss = (model(u) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(3):
        step()
    params = [p for g in opt.param_groups for p in g["params"]]
    a_log = model[0].A_log
    old_moment = opt.state[a_log]["exp_avg"].clone()
    old_step = opt.state[a_log]["step"].clone()
    report = compress_selective_(model, calibration_inputs=u, rank=6, optimizer=opt, optimizer_state=optimizer_state)
    kept = report.layers[0].kept
    assert model[0].A_log is a_log and [p for g in opt.param_groups for p in g["params"]] == params
    state = opt.state.get(a_log, {})
    if optimizer_state == "slice":
        torch.testing.assert_close(state["exp_avg"], old_moment[:, kept])
        assert torch.equal(state["step"], old_step)
    else:
        assert not state
    losses = [step() for _ in range(15)]
    assert model[0].state_dim == 6
    assert losses[-1] < losses[0]


def test_training_continues_while_the_previous_steps_loss_is_alive():
    """Regression: assigning ``param.data`` of a new shape kept the parameter's cached gradient accumulator,
    which the last step's ``loss`` (still referenced) kept alive: the next backward raised "invalid gradient"."""
    torch.manual_seed(12)
    block = SelectiveSSM(4, 16)
    opt = torch.optim.Adam(block.parameters(), lr=1e-2)
    u = torch.randn(4, 12, 4)
    loss = block(u).pow(2).mean()
    loss.backward()
    opt.step()
    compress_selective_(block, calibration_inputs=u, rank=5, optimizer=opt)  # ``loss`` is still referenced
    opt.zero_grad()
    loss = block(u).pow(2).mean()
    loss.backward()
    opt.step()
    assert block.A_log.grad.shape == (block.d_inner, 5)


def test_compressed_checkpoint_loads_into_a_fresh_block():
    torch.manual_seed(7)
    block = SelectiveSSM(4, 16)
    compress_selective_(block, calibration_inputs=torch.randn(2, 12, 4), rank=5, optimizer=None)
    fresh = SelectiveSSM(4, 16)
    a_log = fresh.A_log
    fresh.load_state_dict(block.state_dict())
    u = torch.randn(2, 12, 4)
    assert fresh.state_dim == 5 and fresh.A_log is a_log and fresh.B_proj.out_features == 5
    torch.testing.assert_close(fresh(u), block(u))


def test_a_failed_swap_leaves_model_and_optimizer_untouched(monkeypatch):
    torch.manual_seed(8)
    block = SelectiveSSM(4, 16)
    opt = torch.optim.Adam(block.parameters())
    block(torch.randn(2, 8, 4)).sum().backward()
    opt.step()
    before = {k: v.clone() for k, v in block.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in block.named_parameters()}
    params = {n: p for n, p in block.named_parameters()}
    moments = {n: opt.state[p]["exp_avg"].clone() for n, p in params.items()}
    import adapters.torch.cut.selective.apply as mamba_module

    calls = []
    real = mamba_module._sliced_state

    def boom(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # after the first parameter was already resized
            raise RuntimeError("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(mamba_module, "_sliced_state", boom)
    with pytest.raises(RuntimeError, match="injected"):
        compress_selective_(block, calibration_inputs=torch.randn(2, 8, 4), rank=4, optimizer=opt)
    assert block.state_dim == 16 and block.B_proj.out_features == 16
    for n, p in block.named_parameters():
        assert p is params[n] and torch.equal(p.grad, grads[n]) and torch.equal(opt.state[p]["exp_avg"], moments[n])
    for k, v in block.state_dict().items():
        assert torch.equal(v, before[k])


def test_compress_cuts_lti_and_selective_layers_each_by_its_method():
    from adapters.torch import LRU

    torch.manual_seed(0)
    model = torch.nn.Sequential(LRU(4, 8), SelectiveSSM(4, 8))
    report = compress_(model, rank=4, optimizer=None, calibration_inputs=torch.randn(2, 10, 4))
    assert model[0].state_dim == 4 and model[1].state_dim == 4
    assert [x.method for x in report] == ["balanced_truncation", "state_selection"]


def test_compress_needs_calibration_inputs_for_selective_layers():
    from adapters.torch import LRU

    model = torch.nn.Sequential(LRU(4, 8), SelectiveSSM(4, 8))
    with pytest.raises(ValueError, match="calibration_inputs"):
        compress_(model, rank=4, optimizer=None)
    assert model[0].state_dim == 8 and model[1].state_dim == 8


@pytest.mark.parametrize(("kwargs", "match"), [({"rank": 2, "tol": 0.1}, "exactly one"), ({"tol": 1.5}, "tol"),
                                                ({"rank": 0}, "rank"), ({"rank": 2, "optimizer_state": "x"}, "optimizer_state"),
                                                ({"rank": 2, "ranking": "x"}, "ranking")])
def test_bad_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compress_selective_(SelectiveSSM(4, 8), calibration_inputs=torch.randn(1, 4, 4), optimizer=None, **kwargs)


def test_a_model_without_selective_blocks_is_rejected():
    with pytest.raises(ValueError, match="no selective layer"):
        compress_selective_(torch.nn.Linear(2, 2), calibration_inputs=torch.randn(1, 2), rank=1, optimizer=None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_block_and_cut_run_on_cuda():
    block = SelectiveSSM(4, 16, device="cuda")
    u = torch.randn(2, 20, 4, device="cuda")
    opt = torch.optim.Adam(block.parameters())
    block(u).sum().backward()
    opt.step()
    report = compress_selective_(block, calibration_inputs=u, rank=6, held_out_inputs=u, optimizer=opt)
    assert block.A_log.is_cuda and block.state_dim == 6 and report.compressed
    assert opt.state[block.A_log]["exp_avg"].shape == (block.d_inner, 6) and opt.state[block.A_log]["exp_avg"].is_cuda
    block(u).sum().backward()
    opt.step()


def test_where_torch_refuses_the_swap_the_parameters_are_replaced_and_the_optimizer_follows(monkeypatch):
    """Other owners of a parameter's tensor (a DistributedDataParallel reducer) make swap_tensors refuse."""
    torch.manual_seed(13)
    block = SelectiveSSM(4, 16)
    opt = torch.optim.Adam(block.parameters(), lr=1e-2)
    u = torch.randn(4, 12, 4)
    loss = block(u).pow(2).mean()
    loss.backward()
    opt.step()
    old = block.A_log
    moment = opt.state[old]["exp_avg"].clone()

    def refuse(*args):
        raise RuntimeError("Expected use_count of t1 to be 1 or 2")

    monkeypatch.setattr(torch.utils, "swap_tensors", refuse)
    kept = compress_selective_(block, calibration_inputs=u, rank=5, optimizer=opt).layers[0].kept
    assert block.A_log is not old and old not in opt.state
    assert any(p is block.A_log for g in opt.param_groups for p in g["params"])
    assert not any(p is old for g in opt.param_groups for p in g["params"])
    torch.testing.assert_close(opt.state[block.A_log]["exp_avg"], moment[:, kept])
    opt.zero_grad()
    block(u).pow(2).mean().backward()  # ``loss`` of the earlier step is still alive
    opt.step()
    assert block.A_log.grad.shape == (block.d_inner, 5)


def test_importing_the_adapter_does_not_import_transformers():
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, adapters.torch, adapters.torch.mamba; assert 'transformers' not in sys.modules, 'imported'"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_change_at_one_size_equals_that_entry_of_the_whole_curve():
    """``compress_selective_(rank=)`` reports the change at its one size without the curve over all sizes."""
    from adapters.torch.cut.selective.analysis import _as_items, _score_pass, _tail_pass
    from adapters.torch.cut.selective.kinds import _kind_of

    torch.manual_seed(3)
    block = SelectiveSSM(4, 8)
    kind, items = _kind_of(block), _as_items(torch.randn(3, 10, 4))
    order = torch.argsort(_score_pass(kind, block, items)["output_energy"], dim=-1, descending=True, stable=True)
    curve = _tail_pass(kind, block, items, order)
    assert float(curve[0]) == pytest.approx(1.0) and float(curve[8]) == 0.0
    for r in range(9):
        assert _tail_pass(kind, block, items, order, only=r) == pytest.approx(float(curve[r]), rel=1e-12, abs=1e-15)
