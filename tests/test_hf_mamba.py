"""Hugging Face Mamba, FalconMamba and Mamba2 models: found, cut by state selection, trained on, saved, reloaded.

Tiny models are built from configurations (nothing is downloaded) and trained on sequences the tests make.
References: the mixers' own forward passes (transformers' pure-torch path), the cut model's own logits, and a
reloaded copy built by a plain ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from adapters.torch.cut.selective.analysis import _contributions
from adapters.torch.cut.selective.kinds import _kind_of, _selective_layers
from adapters.torch.cut.selective.measure import _masked_output
from adapters.torch.mamba import compress_selective_, leave_one_state_out, selective_state_scores

VOCAB = 24


def _config(kind, state=16, layers=2):
    common = {"vocab_size": VOCAB, "hidden_size": 16, "state_size": state, "num_hidden_layers": layers,
              "conv_kernel": 3, "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0}
    if kind == "mamba":
        return transformers.MambaConfig(**common, expand=2, time_step_rank=4)
    if kind == "falcon_mamba":
        return transformers.FalconMambaConfig(**common, expand=2, time_step_rank=4)
    return transformers.Mamba2Config(**common, expand=2, num_heads=4, head_dim=8, n_groups=2, chunk_size=8)


def _model(kind, state=16, layers=2, seed=0):
    torch.manual_seed(seed)
    classes = {"mamba": transformers.MambaForCausalLM, "falcon_mamba": transformers.FalconMambaForCausalLM,
               "mamba2": transformers.Mamba2ForCausalLM}
    return classes[kind](_config(kind, state, layers))


def _tokens(batch, length, seed):
    """Sequences with structure: a random prefix repeated (a copy task a recurrent model can learn)."""
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(1, VOCAB, (batch, length // 2), generator=g)
    return torch.cat([prefix, prefix], dim=1)[:, :length]


def _train(model, opt, steps, seed):
    losses = []
    for i in range(steps):
        ids = _tokens(8, 24, seed + i)
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _mixer_inputs(model, mixer, ids):
    captured = []
    handle = mixer.register_forward_pre_hook(lambda m, a, k: captured.append(a[0] if a else k["hidden_states"]),
                                             with_kwargs=True)
    try:
        with torch.no_grad():
            model(ids, use_cache=False)
    finally:
        handle.remove()
    return captured[0]


KINDS = ["mamba", "falcon_mamba", "mamba2"]


@pytest.mark.parametrize("kind", KINDS)
def test_selective_layers_finds_every_mixer(kind):
    model = _model(kind)
    names = [name for name, _ in _selective_layers(model)]
    assert names == ["backbone.layers.0.mixer", "backbone.layers.1.mixer"]
    assert [name for name, _ in _selective_layers(model.backbone)] == ["layers.0.mixer", "layers.1.mixer"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_analysis_computes_what_the_mixer_computes(kind):
    model = _model(kind).eval()
    mixer = model.backbone.layers[1].mixer
    u = _mixer_inputs(model, mixer, _tokens(3, 13, 1))
    scan = _kind_of(mixer).scan(mixer, u)
    _, c = _contributions(scan)
    out = _kind_of(mixer).output(mixer, c.sum(-1) + scan.D * scan.x, scan)
    with torch.no_grad():
        reference = mixer(u)
    torch.testing.assert_close(out, reference.double(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_the_cut_mixer_computes_the_simulated_cut(kind):
    """What the analysis predicts for a kept set is what the resized mixer computes."""
    model = _model(kind).eval()
    ids = _tokens(4, 16, 2)
    mixer = model.backbone.layers[0].mixer
    u = _mixer_inputs(model, mixer, ids)
    report = compress_selective_(model, calibration_inputs=ids, rank=5, optimizer=None)
    keep = report["backbone.layers.0.mixer"].kept
    fresh = _model(kind).eval()  # same seed: the model before the cut
    fresh_mixer = fresh.backbone.layers[0].mixer
    kind_ = _kind_of(fresh_mixer)
    _, predicted, _ = _masked_output(kind_, fresh_mixer, u, None, _keep_mask(kind_, fresh_mixer, keep))
    with torch.no_grad():
        actual = mixer(u)
    torch.testing.assert_close(actual.double(), predicted, rtol=1e-4, atol=1e-5)
    assert mixer.ssm_state_size == 5 and model.config.state_size == 5


def _keep_mask(kind, layer, keep):
    from adapters.torch.cut.selective.measure import _check_keep
    from adapters.torch.cut.selective.measure import _keep_mask as mask

    return mask(kind, layer, _check_keep(kind, layer, keep))


def test_mamba2_cut_slices_in_proj_and_the_convolution_consistently():
    model = _model("mamba2")
    mixer = model.backbone.layers[0].mixer
    di, g, n, heads = mixer.intermediate_size, mixer.n_groups, mixer.ssm_state_size, mixer.num_heads
    w_in, w_conv, b_conv = (mixer.in_proj.weight.detach().clone(), mixer.conv1d.weight.detach().clone(),
                            mixer.conv1d.bias.detach().clone())
    report = compress_selective_(model, calibration_inputs=_tokens(4, 16, 3), rank=3, optimizer=None)
    kept = report["backbone.layers.0.mixer"].kept  # one row per group
    assert len(kept) == g and all(len(row) == 3 for row in kept)
    b_rows = [gi * n + k for gi, row in enumerate(kept) for k in row]
    xbc = list(range(di)) + [di + i for i in b_rows] + [di + g * n + i for i in b_rows]
    rows = list(range(di)) + [di + i for i in xbc] + [di + di + 2 * g * n + h for h in range(heads)]
    assert torch.equal(mixer.in_proj.weight.detach(), w_in[rows])
    assert torch.equal(mixer.conv1d.weight.detach(), w_conv[xbc]) and torch.equal(mixer.conv1d.bias.detach(), b_conv[xbc])
    assert mixer.conv_dim == di + 2 * g * 3 == mixer.conv1d.groups == mixer.conv1d.out_channels


@pytest.mark.parametrize("kind", KINDS)
def test_train_compress_train_save_reload_generate(kind, tmp_path):
    model = _model(kind)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    _train(model, opt, 6, seed=10)
    params = [p for group in opt.param_groups for p in group["params"]]
    mixer = model.backbone.layers[0].mixer
    a_log = mixer.A_log
    moment = opt.state[a_log]["exp_avg"].clone()
    report = compress_selective_(model, calibration_inputs=_tokens(8, 24, 100), tol=0.2, optimizer=opt,
                                 held_out_inputs=_tokens(8, 24, 200))
    assert report.compressed
    after = {x.after for x in report}
    assert len(after) == 1 and model.config.state_size == after.pop() < 16  # one size: the config stays true
    for x in report:
        assert x.calibration_change <= 0.2 + 1e-12 and x.error_data == "held_out" and x.error > 0
    # parameters kept their objects, the optimizer's state was sliced to the kept states
    assert [p for group in opt.param_groups for p in group["params"]] == params and mixer.A_log is a_log
    if kind != "mamba2":
        kept = report["backbone.layers.0.mixer"].kept
        torch.testing.assert_close(opt.state[a_log]["exp_avg"], moment[:, kept])
    losses = _train(model, opt, 4, seed=300)
    assert all(torch.isfinite(torch.tensor(losses)))
    model.eval()
    ids = _tokens(2, 12, 400)
    with torch.no_grad():
        logits = model(ids).logits
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model) and reloaded.config.state_size == model.config.state_size
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, logits)
    prompt = ids[:, :6]
    cached = reloaded.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False)
    uncached = reloaded.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False,
                                 use_cache=False)
    assert cached.shape == (2, 11) and torch.equal(cached, uncached)


def test_layers_sharing_a_config_are_cut_to_the_largest_size_any_needs():
    model = _model("mamba", state=16)
    with torch.no_grad():  # layer 1 needs fewer states than layer 0 for the same tol
        model.backbone.layers[1].mixer.x_proj.weight[4 + 16:].mul_(
            torch.logspace(0, -3, 16)[:, None])
    ids = _tokens(6, 20, 5)
    alone = [compress_selective_(_model("mamba").backbone.layers[i].mixer, calibration_inputs=_mixer_inputs(
        model, model.backbone.layers[i].mixer, ids), tol=0.1, min_shrink=0.0, optimizer=None).layers[0].after
        for i in range(2)]
    report = compress_selective_(model, calibration_inputs=ids, tol=0.1, min_shrink=0.0, optimizer=None)
    assert [x.after for x in report] == [max(alone)] * 2 == [model.config.state_size] * 2
    assert all(x.calibration_change <= 0.1 for x in report)


def test_a_base_model_is_cut_and_its_config_updated():
    model = _model("mamba2").backbone
    compress_selective_(model, calibration_inputs=_tokens(4, 16, 6), rank=4, optimizer=None)
    assert model.config.state_size == 4 and all(b.mixer.ssm_state_size == 4 for b in model.layers)
    model(_tokens(2, 9, 7)).last_hidden_state.sum().backward()


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_the_callers_config_object_is_left_as_it_was(kind):
    # model.config is the object the model was built from; a model built from it after the cut must be
    # full size, while the cut model (and every module sharing its configuration) states its new size.
    model = _model(kind)
    config = model.config
    compress_selective_(model, calibration_inputs=_tokens(4, 16, 9), rank=4, optimizer=None)
    assert config.state_size == 16 and model.config is not config
    assert model.config.state_size == 4 and model.backbone.config is model.config
    fresh = type(model)(config)
    assert all(b.mixer.ssm_state_size == 16 for b in fresh.backbone.layers)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_a_failed_swap_restores_model_config_and_optimizer(kind, monkeypatch):
    model = _model(kind)
    config = model.config
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train(model, opt, 2, seed=20)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    states = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    import adapters.torch.cut.selective.apply as mamba_module

    real, calls = mamba_module._sliced_state, []

    def boom(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # in the second layer: the first one is already cut
            raise RuntimeError("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(mamba_module, "_sliced_state", boom)
    with pytest.raises(RuntimeError, match="injected"):
        compress_selective_(model, calibration_inputs=_tokens(4, 16, 8), rank=4, optimizer=opt)
    assert model.config.state_size == 16
    assert model.config is config and model.backbone.config is config  # the caller's object, not a copy
    assert all(b.mixer.ssm_state_size == 16 for b in model.backbone.layers)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for p, s in opt.state.items():
        assert all(torch.equal(v, states[id(p)][k]) for k, v in s.items())
    _train(model, opt, 1, seed=21)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_leave_one_state_out_matches_the_mixer_with_that_state_silenced(kind):
    """Reference: transformers' own forward with the state's ``C_t`` forced to zero through its weights."""
    model = _model(kind).eval()
    mixer = model.backbone.layers[0].mixer
    u = _mixer_inputs(model, mixer, _tokens(3, 12, 9))
    loo = leave_one_state_out(mixer, u)
    g, n = loo.shape
    with torch.no_grad():
        full = mixer(u).double()
        for gi, ni in [(0, 0), (g - 1, n - 1), (0, n // 2)]:
            saved = {k: v.clone() for k, v in mixer.state_dict().items()}
            if kind == "mamba":  # C_t = rows R + N + n of x_proj (no bias)
                mixer.x_proj.weight[mixer.time_step_rank + n + ni] = 0
            else:  # C channel (g, n) of x B C: zero weight and bias before the convolution and in it: silu(0) = 0
                channel = mixer.intermediate_size + g * n + gi * n + ni
                mixer.in_proj.weight[mixer.intermediate_size + channel] = 0
                mixer.conv1d.weight[channel] = 0
                mixer.conv1d.bias[channel] = 0
            cut = mixer(u).double()
            mixer.load_state_dict(saved)
            expected = float((full - cut).norm() / full.norm())
            assert float(loo[gi, ni]) == pytest.approx(expected, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_output_energy_scores_rank_like_leave_one_out(kind):
    model = _model(kind).eval()
    mixer = model.backbone.layers[0].mixer
    u = _mixer_inputs(model, mixer, _tokens(4, 16, 11))
    scores = selective_state_scores(mixer, u).flatten()
    loo = leave_one_state_out(mixer, u).flatten()
    # on the same inputs the score is the squared leave-one-out change, to first order in the dropped term
    full = torch.linalg.vector_norm(_full_output(mixer, u))
    torch.testing.assert_close(scores.sqrt() / full, loo, rtol=0.05 if kind == "mamba2" else 1e-9, atol=1e-12)


def _full_output(mixer, u):
    kind = _kind_of(mixer)
    scan = kind.scan(mixer, u)
    _, c = _contributions(scan)
    return kind.output(mixer, c.sum(-1) + scan.D * scan.x, scan)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("kind", KINDS)
def test_cut_and_training_on_cuda(kind):
    model = _model(kind).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ids = _tokens(4, 16, 30).cuda()
    model(ids, labels=ids).loss.backward()
    opt.step()
    report = compress_selective_(model, calibration_inputs=ids, rank=6, optimizer=opt, held_out_inputs=ids)
    assert report.compressed and model.config.state_size == 6
    mixer = model.backbone.layers[0].mixer
    assert mixer.A_log.is_cuda and opt.state[mixer.A_log]["exp_avg"].is_cuda
    opt.zero_grad()
    model(ids, labels=ids).loss.backward()
    opt.step()
    prompt = ids[:2, :6]
    assert model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=3).shape == (2, 9)
