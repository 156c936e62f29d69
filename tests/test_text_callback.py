"""The Hugging Face ``Trainer`` runs the text task's cut through :class:`adapters.torch.hf.CompressionCallback`.

A tiny ``Mamba2ForCausalLM`` / ``MambaForCausalLM`` of the text task (``build_text_model``) trains on
standard-library bytes; the callback cuts it to ``rank`` states after the scheduled optimizer step. Checked: the
cut happened at that step to that size, the config tells the truth, the Trainer's Adam moments are the kept
states' moments (sliced, same shapes as the parameters), training continues with finite losses, and the saved
model reloads with ``from_pretrained`` to the same logits.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (pip install 'lti-reduce[hf]')")

from adapters.torch import CompressionSchedule  # noqa: E402
from adapters.torch.experiment.text import TextConfig, build_text_model, load_corpus, train_batches  # noqa: E402
from adapters.torch.hf import CompressionCallback  # noqa: E402


class _Windows(torch.utils.data.Dataset):
    def __init__(self, windows):
        self.windows = windows

    def __len__(self):
        return len(self.windows)

    def __getitem__(self, i):
        return {"input_ids": self.windows[i], "labels": self.windows[i]}


class _Moments(transformers.TrainerCallback):
    """Records, after every optimizer step, a cut weight of the first mixer and the Trainer's moment of it."""

    def __init__(self):
        self.seen = {}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        opt = getattr(optimizer, "optimizer", optimizer)
        mixer = model.backbone.layers[0].mixer
        w = mixer.x_proj.weight if hasattr(mixer, "x_proj") else mixer.in_proj.weight
        self.seen[state.global_step] = (w.detach().clone(), opt.state[w]["exp_avg"].clone())


@pytest.mark.parametrize("kind", ["mamba2", "mamba"])
def test_the_trainer_callback_runs_the_text_task_cut(kind, tmp_path):
    config = TextConfig(model=kind, d_model=8, d_state=8, rank=3, n_layers=1, head_dim=8, seq_len=12,
                        batch_size=2, steps=6)
    corpus = load_corpus()
    windows = torch.cat(list(train_batches(corpus, config, seed=0)))[:, :-1]
    model = build_text_model(config, seed=0)
    calibration = windows[:4]
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=config.steps,
                                          per_device_train_batch_size=2, learning_rate=3e-3, logging_steps=1,
                                          save_strategy="no", report_to=[], use_cpu=True, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Windows(windows))
    schedule = CompressionSchedule(config.steps, steps=[2], rank=config.rank, min_shrink=0.0)
    callback = CompressionCallback(schedule, trainer=trainer, calibration_inputs=calibration)
    before, after = _Moments(), _Moments()
    trainer.add_callback(before)  # callbacks run in the order added: before the cut, the cut, after it
    trainer.add_callback(callback)
    trainer.add_callback(after)
    trainer.train()

    assert [c["step"] for c in callback.cuts] == [2]
    assert model.config.state_size == config.rank == model.backbone.layers[0].mixer.ssm_state_size
    (w0, m0), (w1, m1) = before.seen[2], after.seen[2]
    assert w1.shape[0] == w0.shape[0] - 2 * (config.d_state - config.rank)  # B and C rows of the dropped states
    rows = [int((w0 == row).all(-1).nonzero()[0]) for row in w1]  # where each kept row was before the cut
    torch.testing.assert_close(m1, m0[rows], rtol=0, atol=0)  # the Trainer's moments were sliced to the kept states
    for step in range(3, config.steps + 1):
        w, m = after.seen[step]
        assert w.shape == m.shape == w1.shape
    losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    assert max(losses) == config.steps and all(torch.isfinite(torch.tensor(list(losses.values()))))

    model.eval()
    ids = windows[:2]
    with torch.no_grad():
        logits = model(ids).logits
    model.save_pretrained(tmp_path / "saved")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    assert reloaded.config.state_size == config.rank
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, logits)
