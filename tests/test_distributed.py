"""compress_ddp_: a real two-process gloo job on CPU (unwrap, cut, broadcast, re-wrap, keep training).

The test launches this file twice as a script (``python tests/test_distributed.py RANK WORLD PORT OUTDIR``);
each process trains a small LRU + SelectiveSSM model under DDP on its own data, cuts it with
``compress_ddp_`` (balanced truncation for the LRU, a state selection for the selective block, calibrated on
*different* data per rank), trains on, and saves what the test compares.
"""

from __future__ import annotations

import os
import sys

import pytest
from launch import free_port, run_two_ranks

STEPS_BEFORE, STEPS_AFTER = 3, 3


def _model():
    import torch
    from torch import nn

    from adapters.torch import LRU
    from adapters.torch.mamba import SelectiveSSM

    torch.manual_seed(0)  # identical initial parameters on every rank
    return nn.Sequential(LRU(4, 12, r_min=0.5, r_max=0.99), SelectiveSSM(4, 16, expand=1, d_conv=2))


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from adapters.torch.integrations.distributed import compress_ddp_
    from adapters.torch.mamba import compress_selective_

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    data = torch.Generator().manual_seed(100 + rank)  # DIFFERENT data on every rank
    model = DDP(_model())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def step():
        u = torch.randn(4, 24, 4, generator=data)
        loss = (model(u) - u.roll(1, dims=1)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        # DDP's gradient must be the mean of every rank's local gradient.
        local = torch.func.functional_call(model.module, dict(model.module.named_parameters()), (u,))
        local_grads = torch.autograd.grad((local - u.roll(1, dims=1)).pow(2).mean(), list(model.module.parameters()))
        flat_local = torch.cat([g.reshape(-1) for g in local_grads])
        gathered = [torch.empty_like(flat_local) for _ in range(world)]
        dist.all_gather(gathered, flat_local)
        flat_ddp = torch.cat([p.grad.reshape(-1) for p in model.module.parameters()])
        assert torch.allclose(flat_ddp, torch.stack(gathered).mean(0), atol=1e-6), "gradients are not all-reduced"
        assert not torch.allclose(gathered[0], gathered[1]), "ranks saw the same data; the test proves nothing"
        opt.step()
        return loss.item()

    for _ in range(STEPS_BEFORE):
        step()
    calibration = torch.randn(4, 24, 4, generator=data)  # differs per rank: rank 0 decides
    # compress_ cuts both kinds: the LRU by balanced truncation, the selective block by state selection.
    model, report = compress_ddp_(model, optimizer=opt, rank=6, calibration_inputs=calibration)
    assert [x.method for x in report] == ["balanced_truncation", "state_selection"]
    model, report_sel = compress_ddp_(model, optimizer=opt, compress_fn=compress_selective_,
                                      calibration_inputs=calibration, rank=4)
    losses = [step() for _ in range(STEPS_AFTER)]
    state = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    torch.save({"state": state, "losses": losses, "lru_after": report.layers[0].after,
                "selective_after": report_sel.layers[0].after, "kept": report_sel.layers[0].kept,
                "optimizer": opt.state_dict()["state"]}, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()



@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, torch):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    out = tmp_path_factory.mktemp("ddp")
    run_two_ranks(__file__, out, "gloo")
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def test_every_rank_ends_with_identical_reduced_parameters(ddp_run, torch):
    a, b = ddp_run
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key


def test_the_cut_happened_on_every_rank(ddp_run):
    for run in ddp_run:
        assert run["lru_after"] == 6
        assert run["selective_after"] == 4
        assert run["state"]["0.nu_log"].shape == (6,)
        assert run["state"]["1.A_log"].shape == (4, 4)


def test_optimizer_state_is_identical_across_ranks(ddp_run, torch):
    a, b = ddp_run
    for index in a["optimizer"]:
        for key, value in a["optimizer"][index].items():
            assert torch.equal(value, b["optimizer"][index][key]), (index, key)


def test_training_continues_in_sync_with_different_data_per_rank(ddp_run):
    # The workers assert, at every step, that DDP's gradient is the mean of the ranks' local gradients
    # (which differ); here: the losses differ (different data) and are finite.
    a, b = ddp_run
    assert len(a["losses"]) == len(b["losses"]) > 0
    assert all(x == x and abs(x) < 1e6 for x in a["losses"] + b["losses"])
    assert a["losses"] != b["losses"]


def test_without_a_process_group_it_compresses_a_plain_module(torch):
    from adapters.torch import LRU
    from adapters.torch.integrations.distributed import compress_ddp_

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        pytest.skip("a process group is initialized in this test process")
    model = torch.nn.Sequential(LRU(4, 12))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    new, report = compress_ddp_(model, optimizer=opt, rank=4)
    assert new is model and model[0].state_dim == 4 and report.compressed
    model(torch.randn(2, 5, 4)).sum().backward()
    opt.step()


@pytest.mark.skipif("not __import__('torch').cuda.is_available()")
def test_broadcast_handles_cuda_tensors_with_a_single_rank_nccl_group(torch, tmp_path):
    import torch.distributed as dist

    from adapters.torch import LRU
    from adapters.torch.integrations.distributed import compress_ddp_

    if not dist.is_nccl_available():
        pytest.skip("NCCL not available")
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        model = torch.nn.parallel.DistributedDataParallel(LRU(4, 12).cuda(), device_ids=[0])
        opt = torch.optim.Adam(model.parameters())
        model(torch.randn(2, 5, 4, device="cuda")).sum().backward()
        opt.step()
        model, report = compress_ddp_(model, optimizer=opt, rank=4)
        assert model.device_ids == [0] and model.module.state_dim == 4
        model(torch.randn(2, 5, 4, device="cuda")).sum().backward()
        opt.step()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    # Everything is saved and the process group destroyed: skip interpreter teardown, where gloo's
    # background threads can abort the process ("terminate called without an active exception") on
    # a loaded machine, after the work is done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
