"""The default certificate of compress_: the measured output change on the inputs a layer really sees."""

import copy
import logging

import pytest

torch = pytest.importorskip("torch")
at = pytest.importorskip("adapters.torch")
from adapters.torch.cut import progress  # noqa: E402


def _model(seed=0, d_model=4, d_state=24):
    torch.manual_seed(seed)
    return torch.nn.Sequential(at.LRU(d_model, d_state, r_min=0.5, r_max=0.95, dtype=torch.float64),
                               at.LRU(d_model, d_state, r_min=0.5, r_max=0.95, dtype=torch.float64))


def _direct_change(old_layer, new_layer, u):
    with torch.no_grad():
        y0, y1 = old_layer(u), new_layer(u)
    return float((y1 - y0).norm() / y0.norm()), float(u.norm() / y0.norm())


def test_default_output_change_equals_a_direct_measurement_on_the_last_batch():
    model = _model()
    x = torch.randn(3, 50, 4, dtype=torch.float64)
    with torch.no_grad():
        model(x)
        u1 = model[0](x)  # what the second layer saw
    before = copy.deepcopy(model)
    report = at.compress_(model, tol=0.05, optimizer=None)
    for i, u in enumerate((x, u1)):
        entry = report[str(i)]
        assert entry.compressed and entry.output_inputs == "last batch"
        change, scale = _direct_change(before[i], model[i], u)
        assert entry.output_change == pytest.approx(change, rel=1e-9)
        assert entry.output_bound == pytest.approx(entry.error_bound * scale, rel=1e-9)
        assert 0 < entry.output_change <= entry.output_bound
    # Nothing expensive happened, and printing the report does not make it happen.
    text = str(report)
    assert all(e._gain is None and e._pending is not None for e in report)
    assert "out change" in text and "gain" not in text.splitlines()[0] and "report.certify_hinf()" in text
    assert f"{report['0'].output_change:.3g}" in text
    # On request: the H-infinity figures; the measured change is at most what the a-posteriori error allows.
    report.certify_hinf(progress=False)
    for i, u in enumerate((x, u1)):
        entry = report[str(i)]
        assert entry.hinf_method == "search" and entry.hsv_lower * (1 - 1e-6) <= entry.error <= entry.error_bound
        _, scale = _direct_change(before[i], model[i], u)
        assert entry.output_change <= entry.error * scale * (1 + 1e-9)
    assert "err/gain" in str(report)


def test_last_batch_keeps_whole_sequences_within_the_token_budget():
    layer = at.LRU(4, 8)
    u = torch.randn(7, 2, 300, 4)
    layer(u)
    assert torch.equal(layer._last_input, u.reshape(14, 300, 4)[:3])  # 14 sequences flattened, 1024 // 300 kept
    assert layer._last_input.untyped_storage().data_ptr() != u.untyped_storage().data_ptr()  # a copy
    layer(torch.randn(5000, 4))
    assert tuple(layer._last_input.shape) == (1, 5000, 4)  # at least one sequence


def test_calibration_inputs_are_used_for_the_output_change_of_lti_layers():
    model = _model(seed=1)
    model(torch.randn(2, 30, 4, dtype=torch.float64))  # a last batch that must not be used
    calib = torch.randn(2, 40, 4, dtype=torch.float64)
    before = copy.deepcopy(model)
    report = at.compress_(model, rank=6, optimizer=None, calibration_inputs=calib)
    with torch.no_grad():
        inputs = (calib, before[0](calib))
    for i, u in enumerate(inputs):
        entry = report[str(i)]
        assert entry.output_inputs == "calibration_inputs"
        assert entry.output_change == pytest.approx(_direct_change(before[i], model[i], u)[0], rel=1e-9)


def test_s4d_output_change_is_measured_too():
    torch.manual_seed(0)
    layer = at.S4D(3, 16, dtype=torch.float64)
    u = torch.randn(2, 64, 3, dtype=torch.float64)
    layer(u)
    before = copy.deepcopy(layer)
    report = at.compress_(torch.nn.Sequential(layer), rank=6, optimizer=None)
    entry = report.layers[0]
    change, scale = _direct_change(before, layer, u)
    assert entry.compressed and entry.output_change == pytest.approx(change, rel=1e-9)
    assert entry.output_change <= entry.error_bound * scale


def test_a_layer_that_saw_no_input_reports_none_and_says_how_to_get_one():
    report = at.compress_(_model(), rank=6, optimizer=None)
    assert all(e.output_change is None and e.output_inputs == "" for e in report)
    assert "-" in str(report).splitlines()[2]


def test_explicit_hinf_values_keep_the_old_behaviour_and_unknown_values_are_refused():
    model = _model(seed=2)
    eager = at.compress_(copy.deepcopy(model), rank=6, optimizer=None, certify=True)
    named = at.compress_(copy.deepcopy(model), rank=6, optimizer=None, certify="hinf")
    lazy = at.compress_(copy.deepcopy(model), rank=6, optimizer=None, certify="lazy")
    assert all(e._pending is None and e.gain is not None for e in eager)
    assert all(e._gain is None for e in lazy)
    str(lazy)  # certify="lazy" asked for the figures at the first read
    for a, b, c in zip(eager, named, lazy):
        assert a.gain == b.gain == c.gain and a.error == b.error == c.error
    off = at.compress_(copy.deepcopy(model), rank=6, optimizer=None, certify=False)
    assert all(e.output_change is None and e.gain is None for e in off)
    with pytest.raises(ValueError, match="certify=False"):
        off.certify_hinf()
    for bad in ("yes", "Output", 1.0, None):
        with pytest.raises(ValueError, match="certify must be 'output'"):
            at.compress_(copy.deepcopy(model), rank=6, optimizer=None, certify=bad)


def test_a_bound_at_or_above_the_gain_is_called_vacuous_not_shown_as_a_ratio():
    torch.manual_seed(0)
    model = torch.nn.Sequential(at.LRU(4, 16, r_min=0.9, dtype=torch.float64))
    report = at.compress_(model, rank=1, optimizer=None, certify="hinf", min_shrink=0.0)
    entry = report.layers[0]
    assert entry.error_bound >= entry.gain  # the case under test (66.7 against 10.0)
    row = str(report).splitlines()[2].split()
    assert row[-1] == "vacuous" and f"{entry.relative_error_bound:.3g}" not in row
    assert "guarantees nothing" in str(report)


def test_progress_is_silent_when_off_and_logs_when_not_on_a_terminal(monkeypatch, caplog, capsys):
    monkeypatch.setattr(progress, "_PROGRESS_AFTER_S", 0.0)
    monkeypatch.setattr(progress, "_use_tqdm", lambda: False)
    model = _model(seed=3)
    with caplog.at_level(logging.INFO, logger="adapters.torch"):
        report = at.compress_(copy.deepcopy(model), rank=6, optimizer=None, progress=False)
        report.certify_hinf(progress=False)
    assert caplog.records == [] and capsys.readouterr().err == ""
    with caplog.at_level(logging.INFO, logger="adapters.torch"):
        report = at.compress_(copy.deepcopy(model), rank=6, optimizer=None)
        report.certify_hinf()
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("compress_: 4/4") for m in messages)
    assert any(m.startswith("H-infinity certificates: 4/4") for m in messages)


def test_trainer_metrics_carry_the_measured_output_change_and_no_uncomputed_norm():
    from adapters.torch.integrations._callbacks import report_metrics

    model = _model(seed=4)
    model(torch.randn(2, 30, 4, dtype=torch.float64))
    report = at.compress_(model, rank=6, optimizer=None)
    metrics = report_metrics(report)
    assert metrics["compression/output_change"] == max(e.output_change for e in report if e.compressed)
    assert metrics["compression/0/output_change"] == report["0"].output_change
    assert "compression/gain" not in metrics and all(e._gain is None for e in report)
