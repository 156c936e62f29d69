"""Independent blocks of a batched CPU computation, side by side on torch's thread budget.

torch runs a batch of small LAPACK problems (``eig``, ``eigh``, ``svd`` of order ~50) as a serial loop on the
CPU, whatever its number of threads; with more than one intra-op thread its small-matrix calls can even slow
down (an ``eigh`` of 3072 matrices of order 64 took 3.1 s at two threads against 1.0 s at one, on two cores).
The systems of a batch are independent, so the batch is cut into blocks, and with ``T = torch.get_num_threads()
> 1`` the blocks go to ``T`` Python threads (torch releases the GIL inside its operators), each running its
operators on one intra-op thread: ``torch.set_num_threads(1)`` while the blocks run, ``T`` again afterwards.
With one thread, or on another device, the blocks run in order on the calling thread. Every block is computed
by the same calls on the same data either way.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

__all__: list[str] = []


def cpu_workers(x) -> int:
    """Threads for the blocks of a torch tensor ``x``: ``torch.get_num_threads()`` on the CPU, else 1."""
    import torch  # only called for torch inputs

    return max(1, torch.get_num_threads()) if x.device.type == "cpu" else 1


def map_blocks(fn, parts, workers: int) -> list:
    """``[fn(p) for p in parts]``, on up to ``workers`` threads (one intra-op thread each) when ``workers > 1``.

    An exception raised by a block is raised here (the first one in ``parts`` order), after every block ended
    and torch's thread count is restored.
    """
    parts = list(parts)
    if workers <= 1 or len(parts) <= 1:
        return [fn(p) for p in parts]
    import torch  # workers > 1 only for torch CPU tensors (cpu_workers)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=min(workers, len(parts)), thread_name_prefix="lti_reduce") as pool:
            return list(pool.map(fn, parts))
    finally:
        torch.set_num_threads(threads)
