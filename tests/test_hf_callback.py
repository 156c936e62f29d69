"""adapters.torch.hf.CompressionCallback with the real transformers.Trainer, on CPU.

The model is a small ``PreTrainedModel`` made of :class:`adapters.torch.LRU` layers. The reference for
"the callback cuts at the right moment and keeps optimizer and LR scheduler right" is a hand-written
full-batch AdamW loop with the same linear LR schedule that calls :func:`adapters.torch.compress_` at the
same steps. Resuming is checked against an uninterrupted run; DDP with a real two-process gloo job
started by ``python -m torch.distributed.run --nproc_per_node 2`` (this file run as a script).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from launch import free_port

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (pip install 'lti-reduce[hf]')")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import PretrainedConfig, PreTrainedModel, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from adapters.torch import LRU, CompressionSchedule, compress_  # noqa: E402
from adapters.torch.hf import CompressionCallback  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
D_MODEL, D_STATE, LENGTH, N_EXAMPLES, LR = 3, 12, 16, 8, 1e-2


class TinyLRUConfig(PretrainedConfig):
    model_type = "tiny_lru_test"

    def __init__(self, d_model: int = D_MODEL, d_state: int = D_STATE, n_layers: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.d_model, self.d_state, self.n_layers = d_model, d_state, n_layers


class TinyLRUModel(PreTrainedModel):
    config_class = TinyLRUConfig
    base_model_prefix = "tiny"

    def __init__(self, config: TinyLRUConfig):
        super().__init__(config)
        self.layers = nn.ModuleList(LRU(config.d_model, config.d_state, r_min=0.3, r_max=0.95)
                                    for _ in range(config.n_layers))
        self.post_init()

    def _init_weights(self, module):
        pass  # the LRU initializes itself

    def forward(self, inputs, labels=None):
        x = inputs
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == 0 else layer(nn.functional.gelu(x))
        loss = None if labels is None else (x - labels).pow(2).mean()
        return {"loss": loss, "outputs": x}


def _model(seed: int = 0) -> TinyLRUModel:
    torch.manual_seed(seed)
    return TinyLRUModel(TinyLRUConfig())


def _dataset(seed: int = 0, n: int = N_EXAMPLES):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, LENGTH, D_MODEL, generator=g)
    return [{"inputs": u[i], "labels": u[i].roll(1, dims=0)} for i in range(n)]


def _args(out, **kwargs) -> TrainingArguments:
    options = dict(output_dir=str(out), per_device_train_batch_size=N_EXAMPLES, learning_rate=LR, weight_decay=0.0,
                   lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=0.0, optim="adamw_torch",
                   logging_steps=1000, save_strategy="no", report_to=[], use_cpu=True, seed=0,
                   dataloader_num_workers=0, disable_tqdm=True)
    if _HAS_SAMPLING_STRATEGY:
        options["train_sampling_strategy"] = "sequential"
    options.update(kwargs)
    return TrainingArguments(**options)


# transformers >= 5 orders the examples by an argument; before, a Trainer subclass does (see _in_order_trainer).
_HAS_SAMPLING_STRATEGY = "train_sampling_strategy" in {f.name for f in dataclasses.fields(TrainingArguments)}


def _in_order_trainer(**kwargs) -> Trainer:
    """A Trainer that feeds the examples in their order, as the hand-written reference loops do."""
    if _HAS_SAMPLING_STRATEGY:
        return Trainer(**kwargs)

    class InOrder(Trainer):
        def _get_train_sampler(self, *args, **kw):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    return InOrder(**kwargs)


def _state_sizes(model) -> list[int]:
    return [layer.state_dim for layer in model.layers]


def _manual_run(steps: int, cut_steps, tol: float):
    """The reference: full-batch AdamW with HF's linear schedule, compress_ after the cut steps."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (steps - s) / steps))
    data = _dataset()
    u = torch.stack([d["inputs"] for d in data])
    y = torch.stack([d["labels"] for d in data])
    for step in range(1, steps + 1):
        opt.zero_grad()
        model(u, y)["loss"].backward()
        opt.step()
        sched.step()
        if step in cut_steps:
            compress_(model, tol=tol, optimizer=opt)
    return model, opt


class Spy(TrainerCallback):
    def __init__(self):
        self.begin, self.steps, self.substeps = None, [], []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.begin = (state.global_step, _state_sizes(model))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.steps.append((state.global_step, _state_sizes(model)))

    def on_substep_end(self, args, state, control, model=None, **kwargs):
        self.substeps.append((state.global_step, _state_sizes(model)))


# ------------------------------------------------------------------------------------------------ behaviour


def test_training_with_the_callback_equals_a_hand_written_loop_that_cuts_at_the_same_steps(tmp_path):
    schedule = CompressionSchedule(total_steps=6, steps=[2, 4], tol=0.05)
    model = _model()
    trainer = _in_order_trainer(model=model, args=_args(tmp_path, max_steps=6), train_dataset=_dataset())
    callback = CompressionCallback(schedule, trainer=trainer)
    trainer.add_callback(callback)
    trainer.train()

    reference, ref_opt = _manual_run(6, {2, 4}, 0.05)
    assert _state_sizes(model) == _state_sizes(reference) != [D_STATE, D_STATE]
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    # Optimizer and LR scheduler: the same objects, groups over the live parameters, the linear decay intact.
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    assert trainer.lr_scheduler.optimizer in (trainer.optimizer, opt)
    assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], abs=1e-15)
    assert [c["step"] for c in callback.cuts] == [h["step"] for h in schedule.history]


def test_the_report_goes_through_trainer_log(tmp_path):
    schedule = CompressionSchedule(total_steps=4, steps=[3], tol=0.05)
    model = _model()
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=4), train_dataset=_dataset())
    logged = []

    class Listener(TrainerCallback):  # what every reporting integration receives
        def on_log(self, args, state, control, logs=None, **kwargs):
            logged.append((state.global_step, dict(logs)))

    trainer.add_callback(Listener())
    trainer.add_callback(CompressionCallback(schedule, trainer=trainer))
    trainer.train()
    cut_logs = [(s, logs) for s, logs in logged if "compression/state_size" in logs]
    assert len(cut_logs) == 1 and cut_logs[0][0] == 3
    logs = cut_logs[0][1]
    assert logs["compression/state_size"] == sum(_state_sizes(model)) < 2 * D_STATE
    assert logs["compression/state_before"] == 2 * D_STATE
    for i, layer in enumerate(model.layers):
        assert logs[f"compression/layers.{i}/state_size"] == layer.state_dim
        assert 1 - 0.05 <= logs[f"compression/layers.{i}/energy_kept"] <= 1.0
    assert logs["compression/error_bound"] > 0
    assert any(entry.get("compression/state_size") == logs["compression/state_size"]
               for entry in trainer.state.log_history)


def test_without_the_trainer_it_cuts_and_records_the_metrics_in_the_log_history(tmp_path):
    schedule = CompressionSchedule(total_steps=3, steps=[2], tol=0.05)
    model = _model()
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=3), train_dataset=_dataset(),
                      callbacks=[CompressionCallback(schedule)])
    trainer.train()
    assert _state_sizes(model) != [D_STATE, D_STATE]
    (entry,) = [e for e in trainer.state.log_history if "compression/state_size" in e]
    assert entry["step"] == 2 and entry["compression/state_size"] == sum(_state_sizes(model))


def test_cut_happens_after_the_last_accumulated_micro_batch(tmp_path):
    schedule = CompressionSchedule(total_steps=3, steps=[2], tol=0.05)
    model, spy = _model(), Spy()
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=3, per_device_train_batch_size=2,
                                              gradient_accumulation_steps=4),
                      train_dataset=_dataset(), callbacks=[spy])
    trainer.add_callback(CompressionCallback(schedule, trainer=trainer))
    trainer.train()
    # 4 micro-batches per step: the 3 substeps of step 2 (global_step still 1) see the full model.
    assert [s for s, _ in spy.substeps] == [0] * 3 + [1] * 3 + [2] * 3
    assert all(sizes == [D_STATE, D_STATE] for s, sizes in spy.substeps if s < 2)
    assert spy.steps[0][1] == [D_STATE, D_STATE]
    # The spy runs before the compression callback in on_step_end; from step 3 on it sees the cut model.
    assert spy.steps[2][1] != [D_STATE, D_STATE] and all(sizes == spy.steps[2][1] for s, sizes in spy.substeps if s == 2)


def test_resume_from_a_checkpoint_taken_after_a_cut_continues_the_same_run(tmp_path):
    make_schedule = lambda: CompressionSchedule(total_steps=8, steps=[3, 6], tol=0.05)  # noqa: E731

    full = _model()
    trainer = Trainer(model=full, args=_args(tmp_path / "full", max_steps=8), train_dataset=_dataset())
    full_callback = CompressionCallback(make_schedule(), trainer=trainer)
    trainer.add_callback(full_callback)
    trainer.train()

    first = _model()
    args = _args(tmp_path / "run", max_steps=8, save_strategy="steps", save_steps=4)
    trainer = Trainer(model=first, args=args, train_dataset=_dataset())
    trainer.add_callback(CompressionCallback(make_schedule(), trainer=trainer))
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-4"
    saved = json.loads((checkpoint / "compression_callback.json").read_text())
    assert [h["step"] for h in saved["schedule"]["history"]] == [3]

    fresh, spy = _model(seed=123), Spy()  # other initial weights: everything must come from the checkpoint
    trainer = Trainer(model=fresh, args=args, train_dataset=_dataset(), callbacks=[spy])
    callback = CompressionCallback(make_schedule(), trainer=trainer)
    trainer.add_callback(callback)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert spy.begin == (4, _sizes_after_first_cut(full_callback))  # the checkpoint's (cut) sizes, loaded
    assert callback.schedule.history == full_callback.schedule.history
    assert [c["step"] for c in callback.cuts] == [3, 6]
    for key, value in full.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


def _sizes_after_first_cut(callback) -> list[int]:
    first = callback.cuts[0]
    return [int(first[f"compression/layers.{i}/state_size"]) for i in range(2)]


# ----------------------------------------------------------------------------------------------- bad input


def test_a_model_without_compressible_layers_is_refused(tmp_path):
    class Plain(TinyLRUModel):
        def __init__(self, config):
            super().__init__(config)
            self.layers = nn.ModuleList([nn.Linear(D_MODEL, D_MODEL)])

    trainer = Trainer(model=Plain(TinyLRUConfig()), args=_args(tmp_path, max_steps=2), train_dataset=_dataset(),
                      callbacks=[CompressionCallback(CompressionSchedule(total_steps=2, steps=[1]))])
    with pytest.raises(ValueError, match="no compressible layer"):
        trainer.train()


def test_schedule_must_be_a_compression_schedule():
    with pytest.raises(TypeError, match="CompressionSchedule"):
        CompressionCallback({"tol": 0.05})


# -------------------------------------------------------------------------------------------- DDP (2 ranks)

DDP_STEPS, DDP_CUT = 5, 2


class _GradientCheck(TrainerCallback):
    """Before every optimizer step: the (all-reduced) gradients are equal on both ranks, the data are not."""

    def __init__(self):
        self.checked, self.losses = 0, []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(2)]
        torch.distributed.all_gather(gathered, flat)
        assert torch.equal(gathered[0], gathered[1]), f"step {state.global_step + 1}: gradients differ across ranks"
        self.checked += 1


def _ddp_main(out: str) -> None:
    torch.set_num_threads(1)
    model = _model()
    args = _args(out, max_steps=DDP_STEPS, per_device_train_batch_size=2, ddp_backend="gloo")
    check = _GradientCheck()
    seen = []
    model.register_forward_pre_hook(lambda mod, inputs, kwargs: seen.append(kwargs["inputs"].sum().item()),
                                    with_kwargs=True)
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(n=4 * DDP_STEPS), callbacks=[check])
    callback = CompressionCallback(CompressionSchedule(total_steps=DDP_STEPS, steps=[DDP_CUT], tol=0.05),
                                   trainer=trainer)
    trainer.add_callback(callback)
    trainer.train()
    rank = torch.distributed.get_rank()
    torch.save({"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "cuts": callback.cuts,
                "checked": check.checked, "seen": seen, "world": torch.distributed.get_world_size(),
                "wrapper": type(trainer.model_wrapped).__name__},
               os.path.join(out, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    out = tmp_path_factory.mktemp("hf_ddp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), __file__, str(out)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"the Trainer DDP job failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.distributed
def test_ddp_every_rank_cuts_and_ends_with_identical_parameters(ddp_run):
    a, b = ddp_run
    assert a["world"] == b["world"] == 2 and a["wrapper"] == "DistributedDataParallel"
    assert a["seen"] != b["seen"], "both ranks saw the same data"
    assert a["state"]["layers.0.nu_log"].shape[0] < D_STATE
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key
    assert [c["step"] for c in a["cuts"]] == [c["step"] for c in b["cuts"]] == [DDP_CUT]


@pytest.mark.distributed
def test_ddp_gradients_stay_all_reduced_after_the_cut(ddp_run):
    for run in ddp_run:
        assert run["checked"] == DDP_STEPS


if __name__ == "__main__":
    _ddp_main(sys.argv[1])


# ------------------------------------------------------------------------------- HF Mamba (selective layers)

VOCAB = 24


def _mamba(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.MambaConfig(vocab_size=VOCAB, hidden_size=16, state_size=16, num_hidden_layers=2,
                                      conv_kernel=3, expand=2, time_step_rank=4, pad_token_id=0, bos_token_id=0,
                                      eos_token_id=0)
    return transformers.MambaForCausalLM(config)


def _tokens(n: int = N_EXAMPLES, length: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(1, VOCAB, (n, length // 2), generator=g)
    return torch.cat([prefix, prefix], dim=1)


def _mamba_sizes(model) -> list[int]:
    return [layer.mixer.ssm_state_size for layer in model.backbone.layers]


def test_hf_mamba_is_cut_by_the_callback_with_calibration_inputs_like_a_hand_written_loop(tmp_path):
    ids, calibration = _tokens(), _tokens(4, seed=1)
    steps, cut, tol = 5, 2, 0.2
    model = _mamba()
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=steps),
                      train_dataset=[{"input_ids": x, "labels": x} for x in ids])
    callback = CompressionCallback(CompressionSchedule(total_steps=steps, steps=[cut], tol=tol), trainer=trainer,
                                   calibration_inputs=calibration)
    trainer.add_callback(callback)
    trainer.train()

    reference = _mamba()
    opt = torch.optim.AdamW(reference.parameters(), lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (steps - s) / steps))
    for step in range(1, steps + 1):
        opt.zero_grad()
        reference(ids, labels=ids).loss.backward()
        opt.step()
        sched.step()
        if step == cut:
            compress_(reference, tol=tol, optimizer=opt, calibration_inputs=calibration)
    assert _mamba_sizes(model) == _mamba_sizes(reference) and max(_mamba_sizes(model)) < 16
    assert model.config.state_size == max(_mamba_sizes(model))
    assert callback.cuts[0]["compression/state_size"] == sum(_mamba_sizes(model))
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)


# ------------------------------------------------------------------------------------------------- FSDP
def _fsdp_trainer(version):
    from types import SimpleNamespace

    plugin = SimpleNamespace(fsdp_version=version)
    return SimpleNamespace(is_deepspeed_enabled=False, is_fsdp_enabled=True,
                           accelerator=SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)))


def test_fsdp1_is_refused_with_the_fsdp2_setting_and_fsdp2_is_accepted(tmp_path):
    from transformers import TrainerControl, TrainerState

    schedule = CompressionSchedule(total_steps=10, steps=[2], rank=4)
    with pytest.raises(ValueError, match=r"FSDP2.*fsdp_config=\{'version': 2\}"):
        CompressionCallback(schedule, trainer=_fsdp_trainer(1)).on_train_begin(
            _args(tmp_path), TrainerState(), TrainerControl(), model=_model())
    CompressionCallback(schedule, trainer=_fsdp_trainer(2)).on_train_begin(
        _args(tmp_path), TrainerState(), TrainerControl(), model=_model())
