"""A cut of an FSDP2-sharded model in a 2-process gloo job on CPU: sizes per rank, cost, agreement with one process.

Run: ``python benchmarks/bench_fsdp.py`` (starts two processes itself; one torch thread each).

Each rank shards a model of ``BLOCKS`` blocks (LRU(d_model, state) + Linear) with ``fully_shard`` (one unit per
block and the root), trains it with AdamW on its own data, cuts it with ``compress_fsdp_(rank=CUT_RANK)`` after
``STEPS_BEFORE`` steps and trains ``STEPS_AFTER`` more. Beside it, each process trains an unsharded copy on the
data of both ranks and cuts it with ``compress_``: the sharded run must follow it. Printed: the elements each
rank holds (parameters and AdamW moments) before and after the cut, the median training step and the cut's
wall time (interleaved in the same processes), the losses around the cut, and the largest difference from
the unsharded reference.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKS, D_MODEL, STATE, CUT_RANK = 4, 32, 64, 16
STEPS_BEFORE, STEPS_AFTER, BATCH, LENGTH = 10, 10, 8, 64


def _model():
    import torch
    from torch import nn

    from adapters.torch import LRU

    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(LRU(D_MODEL, STATE, r_min=0.5, r_max=0.99), nn.Linear(D_MODEL, D_MODEL))
                           for _ in range(BLOCKS)])


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import copy

    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import adapters.torch as at

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    model = _model()
    reference = copy.deepcopy(model)
    for block in model:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=3e-3)

    def batch(r, k):
        u = torch.randn(BATCH, LENGTH, D_MODEL, generator=torch.Generator().manual_seed(1000 * r + k))
        return u, u.roll(3, dims=1)

    def held(m):
        n = 0
        for p in m.parameters():
            n += (p.to_local() if hasattr(p, "to_local") else p).numel()
        return n

    def moments(o):
        n = 0
        for state in o.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    v = state[key]
                    n += (v.to_local() if hasattr(v, "to_local") else v).numel()
        return n

    times, losses = [], []

    def step(k):
        u, y = batch(rank, k)
        t = time.perf_counter()
        loss = (model(u) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
        ref_loss = sum((reference(a) - b).pow(2).mean() for a, b in (batch(r, k) for r in range(world))) / world
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_opt.step()
        losses.append(float(ref_loss.detach()))

    for k in range(STEPS_BEFORE):
        step(k)
    before = (held(model), moments(opt))
    dist.barrier()
    t = time.perf_counter()
    report = at.compress_fsdp_(model, optimizer=opt, rank=CUT_RANK, certify="lazy")
    cut_time = time.perf_counter() - t
    at.compress_(reference, rank=CUT_RANK, optimizer=ref_opt, certify="lazy")
    after_cut = held(model)
    for k in range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER):
        step(k)
    u, _ = batch(99, 0)
    with torch.no_grad():
        diff = float((model(u) - reference(u)).abs().max() / reference(u).abs().max())
    row = {"rank": rank, "params_before": before[0], "moments_before": before[1], "params_after": after_cut,
           "moments_after": moments(opt), "step_ms": 1e3 * statistics.median(times[1:]), "cut_ms": 1e3 * cut_time,
           "state": f"{report.state_before}->{report.state_after}", "losses": losses, "diff": diff}
    torch.save(row, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def main() -> None:
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as out, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen([sys.executable, __file__, str(r), "2", str(port), out], env=env, cwd=ROOT)
                 for r in range(2)]
        for p in procs:
            p.wait(timeout=600)
            assert p.returncode == 0
        rows = [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(2)]
    print(f"model: {BLOCKS} x (LRU({D_MODEL}, {STATE}) + Linear), FSDP2 over 2 gloo ranks on CPU; "
          f"cut rank={CUT_RANK} after {STEPS_BEFORE} AdamW steps, {STEPS_AFTER} more after it\n")
    print("| rank | total state | parameters held (before -> after) | AdamW moments held (before -> after) | "
          "median step (ms) | cut (ms) | max rel. diff. from 1-process reference |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rank']} | {r['state']} | {r['params_before']:,} -> {r['params_after']:,} | "
              f"{r['moments_before']:,} -> {r['moments_after']:,} | {r['step_ms']:.1f} | {r['cut_ms']:.0f} | "
              f"{r['diff']:.1e} |")
    losses = rows[0]["losses"]
    print(f"\nloss (mean over both ranks' data): step 1 {losses[0]:.4f}, before the cut {losses[STEPS_BEFORE - 1]:.4f}, "
          f"first step after {losses[STEPS_BEFORE]:.4f}, last {losses[-1]:.4f}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        _worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
        sys.stdout.flush()
        os._exit(0)
    main()
