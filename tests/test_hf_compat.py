"""The one place that reads Hugging Face internals (``adapters.torch.integrations.hf._compat``), against each variant it knows.

The FalconMamba norm variants of older and newer ``transformers`` releases are rebuilt here as small modules
with exactly the attributes those releases have (see the module docstring of ``_compat``); the installed
release is exercised for real by ``test_hf_mamba.py``. Reference: the RMS norm written out,
``x / sqrt(mean(x**2) + eps)``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from adapters.torch.integrations.hf import _compat  # noqa: E402
from adapters.torch.integrations.hf._compat import UnsupportedTransformersError  # noqa: E402

N, DI, EPS = 6, 10, 1e-3


def _rms(x, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class _Weightless(torch.nn.Module):
    """``FalconMambaWeightlessRMSNorm`` of transformers 5.1x-5.24 (``eps``) or 5.25 (``variance_epsilon``)."""

    def __init__(self, size, eps, attr):
        super().__init__()
        setattr(self, attr, eps)
        self._attr = attr
        self.register_buffer("weight", torch.ones(size), persistent=False)

    def forward(self, x):
        return _rms(x.float(), getattr(self, self._attr)).type_as(x)


def _mixer(variant):
    m = torch.nn.Module()
    if variant == "function":  # transformers 4.52 to 5.1x: rms_forward(x, rms_eps), kernel buffers
        m.rms_eps = EPS
        m.register_buffer("b_c_rms", torch.ones(N), persistent=False)
        m.register_buffer("dt_rms", torch.ones(DI), persistent=False)
    else:
        attr = {"module-eps": "eps", "module-variance_epsilon": "variance_epsilon"}[variant]
        m.dt_layernorm = _Weightless(DI, EPS, attr)
        m.b_layernorm = _Weightless(N, 2 * EPS, attr)
        m.c_layernorm = _Weightless(N, 3 * EPS, attr)
    return m


VARIANTS = ["function", "module-eps", "module-variance_epsilon"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_falcon_variant_is_recognised_and_normed_as_the_release_computes(variant):
    m = _mixer(variant)
    assert _compat.falcon_norm_variant(m) == variant
    ts = torch.randn(2, 5, DI, dtype=torch.float64)
    torch.testing.assert_close(_compat.falcon_dt_norm(m, ts), _rms(ts, EPS), rtol=1e-6, atol=1e-7)
    expected = (EPS, EPS) if variant == "function" else (2 * EPS, 3 * EPS)
    assert _compat.falcon_state_norm_eps(m) == pytest.approx(expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_falcon_variant_names_the_state_sized_buffers_a_cut_resizes(variant):
    m = _mixer(variant)
    found = _compat.falcon_state_buffers(m)
    expected = [(m, "b_c_rms")] if variant == "function" else [(m.b_layernorm, "weight"), (m.c_layernorm, "weight")]
    assert [(owner, name) for owner, name, _ in found] == expected
    assert all(buf.shape == (N,) for _, _, buf in found)


def test_an_unknown_norm_layout_names_the_installed_release_and_the_tested_range():
    m = torch.nn.Module()  # neither rms_eps nor *_layernorm: a release this adapter does not know
    with pytest.raises(UnsupportedTransformersError) as err:
        _compat.falcon_norm_variant(m)
    message = str(err.value)
    assert f"transformers {transformers.__version__}" in message
    assert _compat.TESTED_TRANSFORMERS[0] in message and _compat.TESTED_TRANSFORMERS[1] in message


def test_a_norm_module_without_a_known_epsilon_is_refused():
    norm = torch.nn.Module()
    norm.epsilon = 1e-5  # a name no tested release uses
    with pytest.raises(UnsupportedTransformersError, match="epsilon of an RMS norm"):
        _compat.rms_eps(norm)
    norm.variance_epsilon = 1e-5
    assert _compat.rms_eps(norm) == 1e-5


def test_require_names_every_missing_attribute():
    m = torch.nn.Module()
    m.A_log = torch.nn.Parameter(torch.zeros(2, 3))
    with pytest.raises(UnsupportedTransformersError, match="'D', 'time_step_rank' of a MambaMixer"):
        _compat.require(m, ("A_log", "D", "time_step_rank"), "MambaMixer")
    _compat.require(m, ("A_log",), "MambaMixer")  # present: no error


def test_compress_refuses_a_mixer_of_an_unknown_release_before_changing_anything():
    """A real model whose mixer lacks an attribute the scan reads (as a future release might): a clear error at
    matching time, and the model and its configuration are unchanged."""
    import adapters.torch as at

    config = transformers.MambaConfig(vocab_size=16, hidden_size=8, state_size=8, num_hidden_layers=1,
                                      conv_kernel=3, expand=2, time_step_rank=2)
    torch.manual_seed(0)
    model = transformers.MambaForCausalLM(config)
    mixer = model.backbone.layers[0].mixer
    del mixer.time_step_rank
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(UnsupportedTransformersError, match="'time_step_rank' of a MambaMixer"):
        at.compress_(model, rank=4, optimizer=opt)
    assert model.config.state_size == 8
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
