"""The diagonal linear recurrence ``x_k = lam * x_{k-1} + bu_k`` and the real-output response built on it.

One recurrence, several algorithms, all computing the same thing to round-off:

``"sequential"``
    A plain Python loop over time. The reference the others are tested against; slow.
``"scan"``
    A parallel (associative) scan, log-depth, ``O(L n)`` work: the odd-even (Blelloch-style) reduction
    specialised to a time-invariant ``lam``, so the "multiplier" half of the usual ``(a, b)`` pairs is just
    ``lam ** (2 ** level)``.
``"chunked"``
    Two levels: time is cut into chunks of ``T`` steps; one loop over the ``T`` positions advances *all*
    chunks at once from a zero state (each step a single fused ``addcmul`` over (batch, L/T, n)); the chunk-end
    states are carried across chunks (multiplier ``lam ** T``); one in-place pass adds ``lam^(t+1)`` times
    the carried state. ``O(L n)`` work, about three passes over memory, ``~2T + L/T`` kernel launches and no
    temporary as large as the input. Usually the fastest mode on CPU. (A closed-form variant that multiplies
    each chunk by the ``(T, T)`` Toeplitz matrix of powers of ``lam`` does ``T`` times the work and measured
    2-5x slower on CPU, so it is not offered.)
``"fft"``
    The recurrence is a causal convolution of each state channel with the kernel ``lam ** k``, done with FFTs
    (length ``>= 2L - 1``, so the circular convolution is the linear one). Valid because ``lam`` does not
    depend on time (LTI).

``"scan"`` and ``"chunked"`` run inside one :class:`torch.autograd.Function` whose backward pass is the same
recurrence run backwards in time with ``conj(lam)`` (the adjoint recurrence), so their backward pass is as
fast as their forward pass and only ``x`` is stored. The adjoint is written with differentiable operations,
so double backward (e.g. ``gradgradcheck``) works too.

Numerics: powers ``lam ** k`` are formed by repeated squaring (``log2 k`` roundings each, never ``exp(k log
lam)``, which is ``nan`` for ``lam = 0``); nothing here ever divides by ``lam``; ``lam ** k`` underflowing to
zero for large ``k`` is harmless (the true value is below round-off).

Everything is device-agnostic: tensors are created with ``new_*``/``like`` from the inputs.
"""

from __future__ import annotations

import math

import torch

__all__ = ["MODES", "linear_recurrence", "real_output_response", "lam_powers", "choose_mode"]

MODES = ("auto", "scan", "chunked", "fft", "sequential")

# Below this length "auto" uses the associative scan on CPU too: the chunked loop's fixed cost dominates.
_CHUNKED_MIN_LENGTH = 64


def lam_powers(lam: torch.Tensor, length: int) -> torch.Tensor:
    """Powers ``lam ** k`` for ``k = 0, ..., length - 1`` by repeated squaring.

    Parameters
    ----------
    lam : Tensor, shape (n,)
        Diagonal of the state matrix (real or complex).
    length : int
        Number of powers.

    Returns
    -------
    Tensor, shape (length, n)
        Row ``k`` is ``lam ** k``; row 0 is exactly one (also for ``lam = 0``).

    Notes
    -----
    Doubling: from the block ``lam^0 .. lam^(k-1)`` the next block is that block times ``lam^k``, and
    ``lam^(2k) = (lam^k)^2``. Each power is a product of at most ``log2(length) + 1`` rounded factors, so the
    relative error grows like ``log(k) eps`` rather than ``k eps`` (cumulative product) and no logarithm of
    ``lam`` is taken. Differentiable.
    """
    powers = torch.ones_like(lam).unsqueeze(0)
    step = lam
    while powers.shape[0] < length:
        powers = torch.cat([powers, powers * step], dim=0)
        step = step * step
    return powers[:length]


def choose_mode(bu_shape, device: torch.device) -> str:
    """The mode ``"auto"`` resolves to for an input of shape ``(batch, L, n)`` on ``device``.

    On CPU the chunked scan wins from a few dozen steps on (dense matmuls); short sequences use the
    associative scan. On accelerators the associative scan (few, large, memory-bound kernels) is the default.
    """
    length = bu_shape[-2]
    if device.type == "cpu" and length >= _CHUNKED_MIN_LENGTH:
        return "chunked"
    return "scan"


def linear_recurrence(
    lam: torch.Tensor,
    bu: torch.Tensor,
    *,
    mode: str = "auto",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """States of the diagonal recurrence ``x_k = lam * x_{k-1} + bu_k``, ``x_{-1} = 0``.

    Parameters
    ----------
    lam : Tensor, shape (n,)
        Diagonal of the state matrix, real or complex. Any value works (stability is the caller's
        business), but ``mode="fft"`` and ``"scan"`` lose accuracy for ``|lam| > 1``.
    bu : Tensor, shape (..., L, n)
        Input to each state at each step; leading dimensions are batch dimensions.
    mode : {"auto", "scan", "chunked", "fft", "sequential"}
        Algorithm (see the module docstring). ``"auto"`` uses :func:`choose_mode`.
    chunk_size : int, optional
        Chunk length for ``mode="chunked"``; default about ``sqrt(L)``, the length that minimises the
        number of Python-level steps ``T + L/T``.

    Returns
    -------
    Tensor, shape (..., L, n)
        The states ``x``, in the promoted dtype of ``lam`` and ``bu``.

    Raises
    ------
    ValueError
        Unknown ``mode``, a ``lam`` that is not 1-D, or ``bu`` whose last axis is not ``n``.
    """
    lam, bu, batch_shape = _check(lam, bu, mode)
    if bu.numel() == 0:
        return bu.clone().reshape(*batch_shape, *bu.shape[-2:])
    if mode == "auto":
        mode = choose_mode(bu.shape, bu.device)
    if mode == "sequential":
        x = _sequential(lam, bu)
    elif mode == "fft":
        x = _fft_states(lam, bu)
    else:
        chunk = 0 if chunk_size is None else int(chunk_size)  # 0: chosen from L in _chunked_scan
        if chunk_size is not None and chunk < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
        x = _DiagonalRecurrence.apply(lam, bu, mode, chunk, False)
    return x.reshape(*batch_shape, *x.shape[-2:])


def real_output_response(
    u: torch.Tensor,
    lam: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    *,
    mode: str = "auto",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Output ``y_k = Re(C x_k) + D u_k`` of ``x_k = diag(lam) x_{k-1} + B u_k`` for a real input sequence.

    Parameters
    ----------
    u : Tensor, shape (..., L, m)
        Real input sequence.
    lam : Tensor, shape (n,)
        Complex eigenvalues.
    B : Tensor, shape (n, m)
        Complex input matrix.
    C : Tensor, shape (p, n)
        Complex output matrix.
    D : Tensor, shape (p, m) or (p,), optional
        Real feedthrough; a 1-D ``D`` acts elementwise (``p == m``), as in the LRU.
    mode, chunk_size
        As in :func:`linear_recurrence`.

    Returns
    -------
    Tensor, shape (..., L, p)
        Real output in ``u``'s dtype.

    Notes
    -----
    With ``mode="fft"`` the convolution runs per state channel (``Re(C (lam^k * (B u)))``), never on the
    ``(L, p, m)`` impulse response ``Re(C diag(lam^k) B)``, whose construction alone would cost ``L p m n``.
    """
    cdtype = torch.promote_types(lam.dtype, B.dtype)
    bu = torch.matmul(u.to(cdtype), B.to(cdtype).transpose(-1, -2))
    x = linear_recurrence(lam, bu, mode=mode, chunk_size=chunk_size)
    y = torch.matmul(x, C.to(x.dtype).transpose(-1, -2)).real.to(u.dtype)
    if D is not None:
        y = y + (u * D if D.dim() == 1 else torch.matmul(u, D.to(u.dtype).transpose(-1, -2)))
    return y


def _check(lam, bu, mode):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if lam.dim() != 1:
        raise ValueError(f"lam must be 1-D with shape (n,), got shape {tuple(lam.shape)}")
    if bu.dim() < 2 or bu.shape[-1] != lam.shape[0]:
        raise ValueError(
            f"bu must have shape (..., L, n) with n = lam.shape[0] = {lam.shape[0]}, got {tuple(bu.shape)}"
        )
    dtype = torch.promote_types(lam.dtype, bu.dtype)
    batch_shape = bu.shape[:-2]
    bu = bu.to(dtype).reshape(math.prod(batch_shape), *bu.shape[-2:])
    return lam.to(dtype), bu, batch_shape


def _sequential(lam, bu):
    """Reference loop (plain autograd)."""
    x = torch.zeros_like(bu[:, 0])
    states = []
    for k in range(bu.shape[1]):
        x = lam * x + bu[:, k]
        states.append(x)
    return torch.stack(states, dim=1)


def _associative_scan(bu, a):
    """Inclusive scan of ``x_k = a x_{k-1} + bu_k`` along axis 1 of ``bu`` (batch, L, n), ``a`` of shape (n,).

    Odd-even reduction: combine neighbours ``(2k, 2k+1)`` into the partial sum ending at ``2k+1``, solve the
    half-length problem (multiplier ``a^2``) recursively, then fill in the even positions from their odd
    predecessors. Work ``O(L)``, depth ``2 log2 L``.
    """
    length = bu.shape[1]
    if length == 1:
        return bu
    half = length // 2
    even = bu[:, 0 : 2 * half : 2]
    odd = bu[:, 1 : 2 * half : 2]
    odd_prefix = _associative_scan(odd + a * even, a * a)  # x at positions 1, 3, 5, ...
    later_even = bu[:, 2::2] + a * odd_prefix[:, : (length - 1) // 2]  # x at positions 2, 4, ...
    even_prefix = torch.cat([bu[:, :1], later_even], dim=1)
    out = torch.stack([even_prefix[:, :half], odd_prefix], dim=2).reshape(bu.shape[0], 2 * half, -1)
    if length % 2:
        out = torch.cat([out, even_prefix[:, half:]], dim=1)
    return out


def _chunked_scan(bu, lam, chunk, reverse=False):
    """Two-level recurrence: a loop over the ``T`` positions of all chunks at once, then the chunk carries.

    ``bu`` (batch, L, n); with ``reverse=True`` computes ``x_k = lam x_{k+1} + bu_k`` (time runs backwards),
    which is what the adjoint needs, without copying ``bu`` into flipped order.

    The first ``C = L // T`` whole chunks (the last ones when reversed) are solved with zero initial state, one
    vectorised step per position (``T`` Python iterations over tensors of shape (batch, C, n)). The true
    state entering each chunk is then carried across chunks (``h_c = e_c + lam^T h_{c-1}``, ``C``
    iterations on (batch, n)), added back as ``lam^{t+1} h_{c-1}`` in one in-place pass, and the ``L - C T``
    leftover steps are run one by one. ``O(L n)`` work, about three passes over memory, ``2T + C`` small
    kernel launches: no temporary as large as ``bu`` is allocated.
    """
    batch, length, n = bu.shape
    chunk = max(1, min(chunk or _chunk_length(length), length))
    n_chunks = length // chunk
    whole = n_chunks * chunk
    offset = length - whole if reverse else 0
    x = torch.empty_like(bu, memory_format=torch.contiguous_format)  # so the chunk view below is a view
    b = bu[:, offset : offset + whole].unflatten(1, (n_chunks, chunk)).unbind(2)
    xc = x[:, offset : offset + whole].unflatten(1, (n_chunks, chunk))  # a view: writes land in x
    xs = xc.unbind(2)  # one call for all T position views (per-step slicing is the loop's overhead)
    first, last, step = (chunk - 1, 0, -1) if reverse else (0, chunk - 1, 1)
    xs[first].copy_(b[first])
    for t in range(first + step, last + step, step):
        torch.addcmul(b[t], lam, xs[t - step], out=xs[t])
    if n_chunks > 1:
        powers = lam_powers(lam, chunk + 1)  # lam^0 .. lam^T
        ends = xs[last].unbind(1)  # local (zero-start) state at each chunk's end
        carried = torch.empty_like(xs[last])  # (batch, C, n): true state at each chunk's end
        hs = carried.unbind(1)
        c_first, c_last = (n_chunks - 1, 0) if reverse else (0, n_chunks - 1)
        hs[c_first].copy_(ends[c_first])
        for c in range(c_first + step, c_last + step, step):
            torch.addcmul(ends[c], powers[-1], hs[c - step], out=hs[c])
        if reverse:  # position t of chunk c receives lam^(T - t) h_{c+1}
            xc[:, :-1].addcmul_(powers[1:].flip(0), carried[:, 1:].unsqueeze(2))
        else:  # position t of chunk c receives lam^(t + 1) h_{c-1}
            xc[:, 1:].addcmul_(powers[1:], carried[:, :-1].unsqueeze(2))
    leftover = range(offset - 1, -1, -1) if reverse else range(whole, length)
    for k in leftover:
        torch.addcmul(bu[:, k], lam, x[:, k - step], out=x[:, k])
    return x


def _chunk_length(length: int) -> int:
    """Chunk length minimising the Python-level steps ``T + L // T + L % T`` (near ``sqrt(L)``)."""
    root = max(1, math.isqrt(length))
    candidates = range(max(1, root // 2), 2 * root + 1)
    return min(candidates, key=lambda t: (t + length // t + length % t, t))


class _DiagonalRecurrence(torch.autograd.Function):
    """``x_k = lam x_{k-1} + bu_k`` with the adjoint recurrence as backward.

    With PyTorch's convention (gradients are conjugate Wirtinger derivatives), for ``g_k = dL/dx_k``:
    ``gbar_k = g_k + conj(lam) gbar_{k+1}`` (the same recurrence, reversed in time, with ``conj(lam)``),
    ``dL/dbu_k = gbar_k`` and ``dL/dlam = sum_k gbar_k conj(x_{k-1})``. ``reverse=True`` is the recurrence
    run backwards in time (the adjoint), so the adjoint of the adjoint is the forward pass again.
    """

    @staticmethod
    def forward(ctx, lam, bu, mode, chunk, reverse):
        if mode == "scan":
            x = _associative_scan(bu.flip(1), lam).flip(1) if reverse else _associative_scan(bu, lam)
        else:
            x = _chunked_scan(bu, lam, chunk, reverse)
        ctx.mode, ctx.chunk, ctx.reverse = mode, chunk, reverse
        ctx.save_for_backward(lam, x)
        return x

    @staticmethod
    def backward(ctx, grad_x):
        lam, x = ctx.saved_tensors
        grad_lam = grad_bu = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            adjoint_lam = lam.conj() if lam.is_complex() else lam
            gbar = _DiagonalRecurrence.apply(adjoint_lam, grad_x, ctx.mode, ctx.chunk, not ctx.reverse)
            grad_bu = gbar
            if ctx.needs_input_grad[0]:
                # x_k depends on lam through lam * x_{k-1} (forward) or lam * x_{k+1} (reverse).
                later, earlier = (gbar[:, :-1], x[:, 1:]) if ctx.reverse else (gbar[:, 1:], x[:, :-1])
                grad_lam = (later * (earlier.conj() if earlier.is_complex() else earlier)).sum(dim=(0, 1))
        return grad_lam, grad_bu, None, None, None


def _fft_length(length: int) -> int:
    """Smallest power of two ``>= 2 L - 1`` (no wrap-around)."""
    return 1 << max(0, math.ceil(math.log2(max(2 * length - 1, 1))))


def _fft_states(lam, bu):
    """Causal convolution of each state channel with ``lam ** k``; time is moved last so FFTs are contiguous."""
    length = bu.shape[1]
    nfft = _fft_length(length)
    powers = lam_powers(lam, length).mT  # (n, L)
    signal = bu.mT  # (batch, n, L)
    if not bu.is_complex():  # real lam and real input: real convolution
        kernel = torch.fft.rfft(powers, n=nfft)
        x = torch.fft.irfft(torch.fft.rfft(signal, n=nfft) * kernel, n=nfft)
    else:
        x = torch.fft.ifft(torch.fft.fft(signal, n=nfft) * torch.fft.fft(powers, n=nfft))
    return x[..., :length].mT
