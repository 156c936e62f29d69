"""``compress_`` and ``compress_selective_`` on selective layers: one optimizer behaviour, one set of errors, one table.

A selection keeps the basis of the kept states, so both entry points slice the Adam moments to the kept states
(checked against the moments taken before the cut); a forgotten ``optimizer=`` is an immediate ``TypeError`` in
both; an optimizer left out of the call fails at its next ``step()`` with ``StaleOptimizerStateError`` in both;
and a cut the ``min_shrink`` gate holds back is reported (a warning and a line in the table), never silent.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from adapters.torch import SelectiveSSM, StaleOptimizerStateError, compress_
from adapters.torch.mamba import compress_selective_


def _compress(entry, model, u, **kwargs):
    if entry == "compress_":
        return compress_(model, calibration_inputs=u, **kwargs)
    return compress_selective_(model, calibration_inputs=u, **kwargs)


def _trained(seed=0, steps=3):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(SelectiveSSM(4, 12), SelectiveSSM(4, 12))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    u = torch.randn(6, 16, 4)
    for _ in range(steps):
        loss = (model(u) - u.roll(1, dims=1)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt, u


def _step(model, opt, u):
    loss = model(u).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


ENTRIES = ["compress_", "compress_selective_"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_forgotten_optimizer_is_an_immediate_type_error(entry):
    model, opt, u = _trained()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match="needs optimizer="):
        _compress(entry, model, u, rank=5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing changed


@pytest.mark.parametrize("entry", ENTRIES)
def test_an_optimizer_left_out_of_the_cut_fails_at_its_next_step_by_name(entry):
    model, opt, u = _trained(seed=1)
    _compress(entry, model, u, rank=5, optimizer=None)
    with pytest.raises(StaleOptimizerStateError, match="resized by a cut"):
        _step(model, opt, u)


@pytest.mark.parametrize("entry", ENTRIES)
def test_both_entry_points_slice_the_moments_to_the_kept_states(entry):
    model, opt, u = _trained(seed=2)
    a_log = model[0].A_log
    moments = {k: opt.state[a_log][k].clone() for k in ("exp_avg", "exp_avg_sq", "step")}
    report = _compress(entry, model, u, rank=5, optimizer=opt)
    kept = report["0"].kept if entry == "compress_selective_" else report["0"].detail.kept
    assert model[0].A_log is a_log and a_log.shape == (model[0].d_inner, 5)
    torch.testing.assert_close(opt.state[a_log]["exp_avg"], moments["exp_avg"][:, kept], rtol=0, atol=0)
    torch.testing.assert_close(opt.state[a_log]["exp_avg_sq"], moments["exp_avg_sq"][:, kept], rtol=0, atol=0)
    assert torch.equal(opt.state[a_log]["step"], moments["step"])
    _step(model, opt, u)  # and training goes on


def test_both_entry_points_leave_the_same_model_and_optimizer():
    model, opt, u = _trained(seed=3)
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-2)
    twin_opt.load_state_dict(opt.state_dict())
    compress_(model, calibration_inputs=u, tol=0.2, optimizer=opt, min_shrink=0.0, rewarm_steps=0)
    compress_selective_(twin, calibration_inputs=u, tol=0.2, optimizer=twin_opt, min_shrink=0.0)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), name
        for key, value in opt.state[p].items():
            assert torch.equal(value, twin_opt.state[q][key]), (name, key)


@pytest.mark.parametrize("entry", ENTRIES)
def test_one_table_labels_the_selective_columns(entry):
    model, opt, u = _trained(seed=4)
    text = str(_compress(entry, model, u, rank=5, optimizer=opt))
    header = text.splitlines()[0]
    assert header.split()[:4] == ["layer", "method", "state", "energy"]  # the same table in both
    assert "share of the output_energy score" in text and "measured relative output change" in text
    assert "12->5" in text


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_cut_held_back_by_min_shrink_is_reported(entry):
    model, opt, u = _trained(seed=5)
    with pytest.warns(UserWarning, match="min_shrink=0.5"):
        report = _compress(entry, model, u, rank=8, optimizer=opt, min_shrink=0.5)  # 12 -> 8 shrinks by 1/3
    assert not report.compressed and model[0].state_dim == 12
    assert all(x.note.startswith("gate:") for x in report)
    assert "not cut: 2 layer(s)" in str(report) and "min_shrink=0.0" in str(report)
