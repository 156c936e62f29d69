"""Blocks of a batched torch CPU computation side by side (``lti_reduce._blocks``).

With more than one torch thread, the diagonal balancing and the modal form run their blocks of systems on
that many Python threads, one intra-op thread each. Checked here: the results equal the serial ones, the
caller's thread count comes back (also after an error), and an error in a block reaches the caller.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import lti_reduce as lr
import reference as ref
from test_diagonal import mixed_route_batch


@pytest.fixture
def two_threads(torch):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield torch
    torch.set_num_threads(before)


def test_map_blocks_keeps_the_order_and_restores_the_thread_count(two_threads):
    from lti_reduce._blocks import map_blocks

    seen = []

    def square(i):
        seen.append(two_threads.get_num_threads())
        return i * i

    assert map_blocks(square, range(7), 2) == [i * i for i in range(7)]
    assert seen == [1] * 7  # one intra-op thread per block
    assert two_threads.get_num_threads() == 2


def test_an_error_in_a_block_reaches_the_caller_and_the_thread_count_comes_back(two_threads):
    from lti_reduce._blocks import map_blocks

    def fail_on_three(i):
        if i == 3:
            raise ValueError("block 3")
        return i

    with pytest.raises(ValueError, match="block 3"):
        map_blocks(fail_on_three, range(6), 2)
    assert two_threads.get_num_threads() == 2


def test_diagonal_balancing_in_parallel_blocks_equals_the_serial_result(two_threads, monkeypatch):
    # The mixed-route batch (members on the eigh and the SVD routes), in blocks of one system: the blocks run
    # on two threads; every output equals the one-thread run to round-off.
    from lti_reduce import systems
    from lti_reduce.systems import _diagonal_decompose

    torch = two_threads
    tsys = mixed_route_batch(torch)
    monkeypatch.setattr(systems, "_TORCH_CPU_BLOCK", 1)
    parallel = _diagonal_decompose(tsys)
    torch.set_num_threads(1)
    serial = _diagonal_decompose(tsys)
    torch.set_num_threads(2)
    scale = ref.as_numpy(serial.s)[:, :1]
    np.testing.assert_allclose(ref.as_numpy(parallel.s), ref.as_numpy(serial.s), rtol=0, atol=1e-13 * scale.max())
    for name in ("Fc", "Mc", "Fo", "Mo", "floor"):
        a, b = ref.as_numpy(getattr(parallel, name)), ref.as_numpy(getattr(serial, name))
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * np.abs(b).max(), err_msg=name)


def test_modal_form_of_a_torch_batch_in_parallel_blocks_equals_the_serial_result(two_threads, monkeypatch):
    from lti_reduce import modal

    torch = two_threads
    rng = np.random.default_rng(3)
    count, r = 7, 9
    A = rng.standard_normal((count, r, r))
    A *= 0.9 / np.max(np.abs(np.linalg.eigvals(A)), axis=-1)[:, None, None]
    B, C = rng.standard_normal((count, r, 2)), rng.standard_normal((count, 1, r))
    args = [torch.from_numpy(X) for X in (A, B, C)]
    monkeypatch.setattr(modal, "_EIG_BLOCK", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lr.ModalConditioningWarning)
        parallel, cond_p = lr.modal_form(*args, pad=True)
        torch.set_num_threads(1)
        serial, cond_s = lr.modal_form(*args, pad=True)
    torch.set_num_threads(2)
    np.testing.assert_allclose(cond_p, cond_s, rtol=1e-12)
    for name in ("lam", "B", "C"):
        np.testing.assert_allclose(ref.as_numpy(getattr(parallel, name)), ref.as_numpy(getattr(serial, name)),
                                   rtol=0, atol=1e-12, err_msg=name)

