"""A custom layer that keeps no input: the report says why its output change is missing, and how to get it."""

import pytest

torch = pytest.importorskip("torch")

import adapters.torch as at  # noqa: E402
from adapters.torch.layers import remember_input_  # noqa: E402


class _Plain(at.LRU):
    """An LRU whose forward does not keep its input (as a user's own layer would not)."""

    def forward(self, u):
        kept = getattr(self, "_last_input", None)
        y = super().forward(u)
        if kept is None:
            self.__dict__.pop("_last_input", None)
        else:
            self._last_input = kept
        return y


def _trained(cls, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(cls(3, 16, r_min=0.2, r_max=0.9))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    u = torch.randn(4, 20, 3)
    model(u).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()
    return model, opt, u


def test_a_layer_without_a_kept_input_is_named_with_the_fix():
    model, opt, u = _trained(_Plain)
    assert getattr(model[0], "_last_input", None) is None
    report = at.compress_(model, rank=4, optimizer=opt, progress=False)
    assert report["0"].output_change is None
    text = str(report)
    assert "out change not measured for '0': no input to measure on" in text
    assert "remember_input_" in text and "calibration_inputs=" in text


def test_calibration_inputs_or_remember_input_measure_it():
    model, opt, u = _trained(_Plain)
    report = at.compress_(model, rank=4, optimizer=opt, calibration_inputs=u, progress=False)
    assert report["0"].output_change is not None and "not measured" not in str(report)
    model, opt, u = _trained(_Plain, seed=1)
    remember_input_(model[0], u)
    report = at.compress_(model, rank=4, optimizer=opt, progress=False)
    assert report["0"].output_change is not None and report["0"].output_inputs == "last batch"
