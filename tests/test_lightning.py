"""adapters.torch.lightning.CompressionCallback with the real Lightning Trainer, on CPU.

The reference for "the callback cuts at the right moment and keeps the optimizer and LR scheduler right"
is a hand-written loop that calls :func:`adapters.torch.compress_` at the same optimizer steps: the
Trainer's run must end with the same parameters. Resuming is checked against an uninterrupted run, and
DDP with a real two-process gloo job that Lightning starts itself (``strategy="ddp"``; this file is then
run as a script: ``python tests/test_lightning.py OUTDIR``).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from adapters.torch import LRU, CompressionSchedule, compress_  # noqa: E402
from adapters.torch.lightning import CompressionCallback  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
D_MODEL, D_STATE, LENGTH, BATCH = 3, 12, 16, 4


def _data(n_batches: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n_batches * BATCH, LENGTH, D_MODEL, generator=g)
    return torch.utils.data.TensorDataset(u, u.roll(1, dims=1))


def _loader(dataset):
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=False)


def _lr_lambda(step: int) -> float:
    return 1.0 / (1.0 + 0.1 * step)


class Net(pl.LightningModule):
    def __init__(self, seed: int = 0, lr: float = 1e-2):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(LRU(D_MODEL, D_STATE, r_min=0.3, r_max=0.95), nn.GELU(),
                                 LRU(D_MODEL, D_STATE, r_min=0.3, r_max=0.95))
        self.lr = lr

    def forward(self, u):
        return self.net(u)

    def training_step(self, batch, batch_idx):
        u, y = batch
        return (self(u) - y).pow(2).mean()

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _trainer(tmp_path, callbacks, **kwargs):
    options = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


def _state_sizes(module) -> list[int]:
    return [m.state_dim for m in module.modules() if isinstance(m, LRU)]


class Spy(pl.Callback):
    """Records (global_step, state sizes) after every batch, after the compression callback ran."""

    def __init__(self):
        self.seen = []

    def on_train_start(self, trainer, pl_module):
        self.start = (trainer.global_step, _state_sizes(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append((trainer.global_step, batch_idx, _state_sizes(pl_module)))


def _manual_run(dataset, steps: int, cut_steps, tol: float, accumulate: int = 1, seed: int = 0):
    """The reference: the same training written by hand, compress_ called after the cut steps."""
    module = Net(seed)
    opt = torch.optim.Adam(module.parameters(), lr=module.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda)
    batches = list(_loader(dataset))
    step, i = 0, 0
    while step < steps:
        opt.zero_grad()
        for _ in range(accumulate):
            u, y = batches[i % len(batches)]
            i += 1
            (module.training_step((u, y), 0) / accumulate).backward()
        opt.step()
        sched.step()
        step += 1
        if step in cut_steps:
            compress_(module, tol=tol, optimizer=opt)
    return module, opt


# ------------------------------------------------------------------------------------------------ behaviour


def test_training_with_the_callback_equals_a_hand_written_loop_that_cuts_at_the_same_steps(tmp_path):
    dataset = _data(12)
    schedule = CompressionSchedule(total_steps=6, steps=[2, 4], tol=0.05)
    module, spy = Net(), Spy()
    trainer = _trainer(tmp_path, [CompressionCallback(schedule), spy], max_steps=6, accumulate_grad_batches=2)
    trainer.fit(module, _loader(dataset))

    reference, _ = _manual_run(dataset, 6, {2, 4}, 0.05, accumulate=2)
    assert _state_sizes(module) == _state_sizes(reference) and _state_sizes(module) != [D_STATE, D_STATE]
    got, want = module.state_dict(), reference.state_dict()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)


def test_cut_happens_after_the_last_accumulated_batch_of_the_step(tmp_path):
    schedule = CompressionSchedule(total_steps=4, steps=[2], tol=0.05)
    spy = Spy()
    trainer = _trainer(tmp_path, [CompressionCallback(schedule), spy], max_steps=4, accumulate_grad_batches=3)
    trainer.fit(Net(), _loader(_data(12)))
    # batch_idx 0..2 make step 1, 3..5 step 2: the cut follows batch 5, not batch 3 (the first with step 1 done).
    sizes = {batch_idx: sizes for _, batch_idx, sizes in spy.seen}
    assert sizes[4] == [D_STATE, D_STATE]
    assert sizes[5] != [D_STATE, D_STATE] and sizes[6] == sizes[5]
    assert [h["step"] for h in schedule.history] == [2]


def test_optimizer_and_lr_scheduler_stay_consistent_after_a_cut(tmp_path):
    schedule = CompressionSchedule(total_steps=5, steps=[2], tol=0.05)
    module = Net()
    trainer = _trainer(tmp_path, [CompressionCallback(schedule)], max_steps=5)
    trainer.fit(module, _loader(_data(8)))
    assert _state_sizes(module) != [D_STATE, D_STATE]
    (opt,) = trainer.optimizers
    owned = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in owned} == {id(p) for p in module.parameters()} and len(owned) == len(list(module.parameters()))
    for p in owned:  # Adam's moments have the (new) parameter shapes
        for key in ("exp_avg", "exp_avg_sq"):
            assert opt.state[p][key].shape == p.shape
    (config,) = trainer.lr_scheduler_configs
    assert config.scheduler.optimizer is opt
    # LambdaLR stepped once per optimizer step, the cut in between changed nothing of it.
    assert opt.param_groups[0]["lr"] == pytest.approx(module.lr * _lr_lambda(5), rel=1e-12)
    assert config.scheduler.last_epoch == 5


def test_the_report_reaches_the_trainers_logger_at_the_cut_step(tmp_path):
    schedule = CompressionSchedule(total_steps=5, steps=[3], tol=0.05)
    logger = pl.loggers.CSVLogger(str(tmp_path), name="run")
    callback = CompressionCallback(schedule)
    module = Net()
    # log_every_n_steps=50: the Trainer itself logs nothing in 5 steps; the cut still reaches the logger.
    trainer = _trainer(tmp_path, [callback], max_steps=5, logger=logger, log_every_n_steps=50)
    trainer.fit(module, _loader(_data(8)))
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    cut_rows = [r for r in rows if r.get("compression/state_size")]
    assert len(cut_rows) == 1 and int(cut_rows[0]["step"]) == 3
    row = cut_rows[0]
    assert float(row["compression/state_size"]) == sum(_state_sizes(module))
    assert float(row["compression/state_before"]) == 2 * D_STATE
    for name in ("net.0", "net.2"):
        layer = module.net[int(name[-1])]
        assert float(row[f"compression/{name}/state_size"]) == layer.state_dim
        assert 1 - 0.05 <= float(row[f"compression/{name}/energy_kept"]) <= 1.0
    assert float(row["compression/error_bound"]) > 0
    assert trainer.callback_metrics["compression/state_size"].item() == sum(_state_sizes(module))
    assert callback.cuts == [{"step": 3, **{k: float(v) for k, v in row.items() if k.startswith("compression/") and v}}]


def test_resume_from_a_checkpoint_taken_after_a_cut_continues_the_same_run(tmp_path):
    dataset = _data(4)  # 4 optimizer steps per epoch; a checkpoint at every epoch end
    make_schedule = lambda: CompressionSchedule(total_steps=12, steps=[3, 6], tol=0.05)  # noqa: E731

    full, full_callback = Net(), CompressionCallback(make_schedule())
    _trainer(tmp_path / "a", [full_callback], max_epochs=3).fit(full, _loader(dataset))

    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1,
                                        save_on_train_epoch_end=True)
    _trainer(tmp_path / "b", [CompressionCallback(make_schedule()), ckpt], max_epochs=1,
             enable_checkpointing=True).fit(Net(), _loader(dataset))
    (path,) = Path(tmp_path / "ckpt").glob("*.ckpt")
    saved = torch.load(path, weights_only=False)
    assert saved["global_step"] == 4
    assert saved["state_dict"]["net.0.nu_log"].shape[0] < D_STATE  # the checkpoint holds the cut model

    fresh, spy = Net(seed=123), Spy()  # other initial weights: everything must come from the checkpoint
    callback = CompressionCallback(make_schedule())
    trainer = _trainer(tmp_path / "c", [callback, spy], max_epochs=3)
    trainer.fit(fresh, _loader(dataset), ckpt_path=str(path))
    assert spy.start == (4, [saved["state_dict"][f"net.{i}.nu_log"].shape[0] for i in (0, 2)])
    assert callback.schedule.history == full_callback.schedule.history
    assert [c["step"] for c in callback.cuts] == [c["step"] for c in full_callback.cuts] == [3, 6]
    got, want = fresh.state_dict(), full.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)


# ----------------------------------------------------------------------------------------------- bad input


def test_a_model_without_compressible_layers_is_refused_at_setup(tmp_path):
    class Plain(Net):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(D_MODEL, D_MODEL)

    trainer = _trainer(tmp_path, [CompressionCallback(CompressionSchedule(total_steps=2, steps=[1]))], max_steps=2)
    with pytest.raises(ValueError, match="no compressible layer"):
        trainer.fit(Plain(), _loader(_data(2)))


def test_compressible_parameters_split_over_two_optimizers_are_refused_and_nothing_changes(tmp_path):
    class TwoOptimizers(Net):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            for opt in self.optimizers():
                opt.zero_grad()
            self.manual_backward(super().training_step(batch, batch_idx))
            for opt in self.optimizers():
                opt.step()

        def configure_optimizers(self):
            return [torch.optim.SGD(self.net[0].parameters(), lr=0.01), torch.optim.SGD(self.net[2].parameters(), lr=0.01)]

    module = TwoOptimizers()
    # Manual optimization counts every optimizer's step: two per batch, the cut is due at step 2.
    trainer = _trainer(tmp_path, [CompressionCallback(CompressionSchedule(total_steps=8, steps=[2]))], max_steps=8)
    with pytest.raises(ValueError, match="2 optimizers"):
        trainer.fit(module, _loader(_data(4)))
    assert _state_sizes(module) == [D_STATE, D_STATE]


def test_schedule_must_be_a_compression_schedule():
    with pytest.raises(TypeError, match="CompressionSchedule"):
        CompressionCallback(0.05)


# -------------------------------------------------------------------------------------------- DDP (2 ranks)

DDP_STEPS, DDP_CUT = 6, 2


def _ddp_main(out: str) -> None:
    """Run by Lightning on both ranks (it starts rank 1 by running this script again)."""
    torch.set_num_threads(1)
    dataset = _data(2 * DDP_STEPS)  # DistributedSampler: each rank gets different batches
    callback = CompressionCallback(CompressionSchedule(total_steps=DDP_STEPS, steps=[DDP_CUT], tol=0.05))

    class Checked(Net):
        def on_after_backward(self):
            # DDP's gradient must be the mean of the ranks' local gradients, before and after the cut.
            u, y = self._batch
            local = torch.func.functional_call(self, dict(self.named_parameters()), (u,))
            grads = torch.autograd.grad((local - y).pow(2).mean(), list(self.parameters()))
            flat = torch.cat([g.reshape(-1) for g in grads])
            gathered = [torch.empty_like(flat) for _ in range(2)]
            torch.distributed.all_gather(gathered, flat)
            ddp = torch.cat([p.grad.reshape(-1) for p in self.parameters()])
            assert not torch.allclose(gathered[0], gathered[1]), "ranks saw the same data"
            assert torch.allclose(ddp, torch.stack(gathered).mean(0), atol=1e-6), "gradients are not all-reduced"
            self.checked_steps += 1
            self.wrappers.add((type(self.trainer.strategy.model).__name__, id(self.trainer.strategy.model)))

        def training_step(self, batch, batch_idx):
            self._batch = batch
            return super().training_step(batch, batch_idx)

    module = Checked()
    module.checked_steps, module.wrappers = 0, set()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=DDP_STEPS, callbacks=[callback],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=out)
    trainer.fit(module, _loader(dataset))
    rank = trainer.global_rank
    torch.save({"state": {k: v.detach().clone() for k, v in module.state_dict().items()},
                "cuts": callback.cuts, "checked_steps": module.checked_steps,
                "wrappers": sorted(module.wrappers)},
               os.path.join(out, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    out = tmp_path_factory.mktemp("lightning_ddp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, __file__, str(out)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, f"the Lightning DDP job failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.distributed
def test_ddp_every_rank_cuts_and_ends_with_identical_parameters(ddp_run):
    a, b = ddp_run
    assert a["state"].keys() == b["state"].keys()
    assert a["state"]["net.0.nu_log"].shape[0] < D_STATE
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key
    assert [c["step"] for c in a["cuts"]] == [c["step"] for c in b["cuts"]] == [DDP_CUT]


@pytest.mark.distributed
def test_ddp_gradients_stay_all_reduced_after_the_cut(ddp_run):
    # Every rank asserted, at every step, that its gradient is the mean of the ranks' local gradients.
    for run in ddp_run:
        assert run["checked_steps"] == DDP_STEPS
        # ... through one DistributedDataParallel object, rebuilt in place at the cut.
        assert len(run["wrappers"]) == 1 and run["wrappers"][0][0] == "DistributedDataParallel"


# ------------------------------------------------------------------ FSDP2 (ModelParallelStrategy, 2 ranks)

FSDP_STEPS, FSDP_CUT = 5, 2


def _fsdp_main(out: str) -> None:
    """Run by Lightning on both ranks: fully_shard in configure_model, cut through compress_fsdp_."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    torch.set_num_threads(1)
    callback = CompressionCallback(CompressionSchedule(total_steps=FSDP_STEPS, steps=[FSDP_CUT], rank=4))

    class Sharded(Net):
        def configure_model(self):
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for layer in (self.net[0], self.net[2]):
                fully_shard(layer, mesh=mesh)
            fully_shard(self.net, mesh=mesh)

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.losses.append(float(loss))
            return loss

    module = Sharded()
    module.losses = []
    trainer = pl.Trainer(accelerator="cpu", devices=2, max_steps=FSDP_STEPS, callbacks=[callback],
                         strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=out)
    trainer.fit(module, _loader(_data(2 * FSDP_STEPS)))
    optimizer = trainer.optimizers[0]
    owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
    torch.save({"full": {k: v.full_tensor().detach().clone() for k, v in module.state_dict().items()},
                "cuts": callback.cuts, "losses": module.losses,
                "owned": all(id(p) in owned for p in module.parameters())},
               os.path.join(out, f"rank{trainer.global_rank}.pt"))


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    pytest.importorskip("lightning.pytorch.strategies").ModelParallelStrategy
    out = tmp_path_factory.mktemp("lightning_fsdp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, __file__, "fsdp", str(out)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, f"the Lightning FSDP job failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.distributed
def test_fsdp2_every_rank_cuts_the_sharded_model_and_trains_on(fsdp_run):
    a, b = fsdp_run
    assert [c["step"] for c in a["cuts"]] == [c["step"] for c in b["cuts"]] == [FSDP_CUT]
    assert a["full"]["net.0.nu_log"].shape[0] <= 4 and a["full"]["net.2.B_re"].shape[0] <= 4
    for key in a["full"]:
        assert torch.equal(a["full"][key], b["full"][key]), key
    for run in fsdp_run:
        assert run["owned"] and len(run["losses"]) == FSDP_STEPS
        assert all(x == x and abs(x) < 1e3 for x in run["losses"])


def test_fsdp1_strategy_is_refused_with_the_fsdp2_route():
    from adapters.torch.integrations.lightning import _unsupported

    strategies = pytest.importorskip("lightning.pytorch.strategies")
    reason = _unsupported(strategies.FSDPStrategy())
    assert "ModelParallelStrategy" in reason and "fully_shard" in reason
    assert _unsupported(strategies.ModelParallelStrategy()) is None


if __name__ == "__main__":
    if sys.argv[1] == "fsdp":
        _fsdp_main(sys.argv[2])
    else:
        _ddp_main(sys.argv[1])
