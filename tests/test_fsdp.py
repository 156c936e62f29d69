"""compress_fsdp_: a real two-process gloo job on CPU with FSDP2 (fully_shard): gather, cut, agree, re-shard.

The test launches this file twice as a script (``python tests/test_fsdp.py RANK WORLD PORT OUTDIR``). Each
process shards a small LRU model with ``fully_shard``, trains it with AdamW and a cosine LR schedule on its own
data, cuts it with ``compress_fsdp_``, trains on, and saves what the test compares. Beside it, every process
trains an unsharded copy on the data of *both* ranks (FSDP averages the ranks' gradients, so the two follow
the same trajectory up to round-off) and cuts it with ``compress_``: the independent reference.
"""

from __future__ import annotations

import os
import sys

import pytest
from launch import run_two_ranks

pytestmark = pytest.mark.distributed
STEPS_BEFORE, STEPS_AFTER = 3, 3


def _model():
    import torch
    from torch import nn

    from adapters.torch import LRU

    torch.manual_seed(0)  # identical initial parameters on every rank
    return nn.Sequential(LRU(4, 12, r_min=0.5, r_max=0.95), nn.Linear(4, 4), LRU(4, 12, r_min=0.5, r_max=0.95))


def _batch(rank: int, step: int):
    import torch

    return torch.randn(4, 16, 4, generator=torch.Generator().manual_seed(1000 * rank + step))


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import copy

    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import adapters.torch as at
    from adapters.torch.integrations.fsdp import compress_fsdp_

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    model = _model()
    reference = copy.deepcopy(model)
    for block in (model[0], model[2]):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)

    def make(m):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)

    opt, sched = make(model)
    ref_opt, ref_sched = make(reference)

    def loss_of(m, u):
        return (m(u) - u.roll(1, dims=1)).pow(2).mean()

    def step(k):
        loss = loss_of(model, _batch(rank, k))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ref_loss = sum(loss_of(reference, _batch(r, k)) for r in range(world)) / world
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_opt.step()
        ref_sched.step()
        return loss.item()

    for k in range(STEPS_BEFORE):
        step(k)
    shards_before = {n: tuple(p.to_local().shape) for n, p in model.named_parameters()}
    # A failure on one rank: every rank raises, and nothing changed anywhere.
    local_before = {n: p.to_local().clone() for n, p in model.named_parameters()}
    moments_before = {id(p): opt.state[p]["exp_avg"].to_local().clone() for p in model.parameters()}

    def fails_on_rank_1(module, optimizer=None, **kwargs):
        report = at.compress_(module, optimizer=optimizer, **kwargs)
        if rank == 1:
            raise ValueError("injected failure")
        return report

    try:
        compress_fsdp_(model, optimizer=opt, rank=4, compress_fn=fails_on_rank_1)
        failure = None
    except RuntimeError as exc:
        failure = str(exc)
    restored = all(torch.equal(p.to_local(), local_before[n]) and p.to_local().shape == local_before[n].shape
                   for n, p in model.named_parameters())
    restored &= all(torch.equal(opt.state[p]["exp_avg"].to_local(), moments_before[id(p)]) for p in model.parameters())
    report = compress_fsdp_(model, optimizer=opt, rank=4)
    ref_report = at.compress_(reference, rank=4, optimizer=ref_opt)
    losses = [step(STEPS_BEFORE + k) for k in range(STEPS_AFTER)]
    # A second cut through what the Lightning and Hugging Face callbacks call at a scheduled step.
    from adapters.torch.integrations._callbacks import owning_optimizer, scheduled_cut

    schedule = at.CompressionSchedule(total_steps=100, steps=[10], rank=3)
    report2 = scheduled_cut(schedule, 10, model, owning_optimizer([opt], model))
    at.CompressionSchedule(total_steps=100, steps=[10], rank=3).step(10, reference, ref_opt)
    losses.append(step(STEPS_BEFORE + STEPS_AFTER))
    u = _batch(7, 0)
    with torch.no_grad():
        out_sharded, out_reference = model(u), reference(u)
    options = StateDictOptions(full_state_dict=True)
    full = get_model_state_dict(model, options=options)
    fresh = _model()
    fresh.load_state_dict(full)  # a compressed checkpoint loads into a freshly built full-size model
    with torch.no_grad():
        out_fresh = fresh(u)
    full_opt = get_optimizer_state_dict(model, opt, options=options)
    moments = {k: tuple(v["exp_avg"].shape) for k, v in full_opt["state"].items()}
    fully_shard(fresh[0], mesh=mesh)  # ... and trains on sharded again
    fully_shard(fresh[2], mesh=mesh)
    fully_shard(fresh, mesh=mesh)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    loss_of(fresh, u).backward()
    fresh_opt.step()
    torch.save({"after": [x.after for x in report], "after2": [x.after for x in report2],
                "history": schedule.history, "failure": failure, "restored": restored, "ref_after": [x.after for x in ref_report],
                "names": [x.name for x in report], "losses": losses, "out_sharded": out_sharded,
                "out_reference": out_reference, "out_fresh": out_fresh, "full": full, "moments": moments,
                "shapes": {k: tuple(v.shape) for k, v in full.items()}, "shards_before": shards_before,
                "shards_after": {n: tuple(p.to_local().shape) for n, p in model.named_parameters()},
                "lr": opt.param_groups[0]["lr"], "ref_lr": ref_opt.param_groups[0]["lr"],
                "owned": all(any(p is q for g in opt.param_groups for q in g["params"]) for p in model.parameters())},
               os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()



@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, torch):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    pytest.importorskip("torch.distributed.fsdp").fully_shard  # FSDP2
    out = tmp_path_factory.mktemp("fsdp")
    run_two_ranks(__file__, out, "FSDP")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_the_cut_happened_on_every_rank_and_the_shards_were_resized(fsdp_run):
    for run in fsdp_run:
        assert run["names"] == ["0", "2"] and run["after"] == run["ref_after"] and max(run["after"]) <= 4
        assert run["shapes"]["0.nu_log"] == (run["after2"][0],)  # after the second cut (below)
        assert run["shards_before"]["0.nu_log"] == (6,)  # 12 modes over 2 ranks
        assert sum(r["shards_after"]["0.nu_log"][0] for r in fsdp_run) == run["after2"][0]
        assert run["shards_after"]["1.weight"] == run["shards_before"]["1.weight"]  # not a compressible layer
        assert run["owned"]  # the optimizer holds the new sharded parameters


def test_a_failure_on_one_rank_raises_on_every_rank_and_changes_nothing(fsdp_run):
    for run in fsdp_run:
        assert run["failure"] is not None and "rank 1: ValueError: injected failure" in run["failure"]
        assert run["restored"]


def test_a_scheduled_cut_through_the_callbacks_glue_cuts_the_sharded_model(fsdp_run):
    for run in fsdp_run:
        assert max(run["after2"]) <= 3 and run["shapes"]["2.theta"] == (run["after2"][1],)
        assert run["history"][0]["step"] == 10 and run["history"][0]["state_after"] == sum(run["after2"])


def test_the_sharded_model_follows_the_unsharded_reference_through_the_cut(fsdp_run, torch):
    for run in fsdp_run:
        torch.testing.assert_close(run["out_sharded"], run["out_reference"], rtol=1e-4, atol=1e-5)
        assert run["lr"] == pytest.approx(run["ref_lr"])  # the LR schedule continues on the same optimizer


def test_every_rank_holds_the_same_full_model(fsdp_run, torch):
    a, b = fsdp_run
    assert a["full"].keys() == b["full"].keys()
    for key in a["full"]:
        assert torch.equal(a["full"][key], b["full"][key]), key
    assert a["losses"] != b["losses"]  # different data per rank: the test proves the sync


def test_the_full_checkpoint_loads_into_a_fresh_model_and_the_optimizer_state_matches(fsdp_run, torch):
    for run in fsdp_run:
        torch.testing.assert_close(run["out_fresh"], run["out_sharded"])
        for name, shape in run["moments"].items():
            assert shape == run["shapes"][name], name


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
