"""Dense linear layers on the CPU: bf16 weights pre-packed once for oneDNN.

`F.linear` on a bf16 CPU weight hands it to oneDNN, which reorders it into its blocked layout on
every call; at the small row counts of decoding that reorder is most of the call (576x576 at one
row: 0.10 ms against 0.03 ms for the fp32 GEMV). `torch.ops.mkldnn._reorder_linear_weight` does the
reorder once, and `_linear_pointwise` runs the same kernel on it: the same bits as `F.linear`
(checked by `tests/inference/test_dense_kernels.py`), measured in `docs/KERNELS.md`. These are the
ops inductor's CPU backend emits for frozen bf16 linears.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn

# Threads. Under OMP_WAIT_POLICY=PASSIVE (the rule on these shared machines) every parallel op wakes
# sleeping OpenMP threads: ~80-300 us on 2 cores, against ~5 us for a one-thread add of [64, 576].
# So a small forward pass runs its elementwise ops on one thread (`serial_ops`), and only matmuls of
# at least PARALLEL_ROWS rows take the other threads back (below that, one thread is as fast: the
# GEMV is memory-bound). Measured in docs/KERNELS.md. Thread counts never change a row's bits here:
# elementwise ops are per element, norms reduce within a row, and in the deterministic mode every
# matmul has the same tile shape, hence the same thread count.
SERIAL_TOKENS = 256  # forward passes of at most this many tokens run elementwise ops on one thread
PARALLEL_ROWS = 16  # ... and their matmuls with at least this many rows on all threads
_threads: ContextVar[int] = ContextVar("parallel_threads", default=0)  # set inside `serial_ops`


@contextmanager
def serial_ops(n_tokens: int) -> Iterator[None]:
    """One intra-op thread for the enclosed forward pass of ``n_tokens`` tokens, if it is small."""
    threads = torch.get_num_threads()
    if n_tokens > SERIAL_TOKENS or threads == 1:
        yield
        return
    token = _threads.set(threads)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _threads.reset(token)


def matmul_threads(rows: int) -> int:
    """Threads a matmul of ``rows`` rows should use now (0: leave the current count)."""
    threads = _threads.get()
    return threads if threads and rows >= PARALLEL_ROWS else 0


def can_pack(weight: Tensor) -> bool:
    """Whether oneDNN can pack this weight (a bf16 CPU matrix, torch built with oneDNN)."""
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.bfloat16
        and weight.dim() == 2
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


def pack_weight(weight: Tensor) -> Tensor:
    """oneDNN's blocked copy of ``weight`` [out, in] (valid for any row count)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


def packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T (+ bias)`` with a weight from ``pack_weight``; ``x`` [..., in] in the weight's dtype."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, packed: Tensor | None) -> Tensor:
    """``F.linear``, on the packed weight when there is one, with the threads `matmul_threads` gives."""
    threads = matmul_threads(x.numel() // max(1, x.shape[-1]))
    if threads:
        torch.set_num_threads(threads)
    try:
        if packed is not None and x.dtype == packed.dtype:
            return packed_linear(x, packed, bias)
        return torch.nn.functional.linear(x, weight, bias)
    finally:
        if threads:
            torch.set_num_threads(1)


def pack_linears(model: nn.Module) -> int:
    """Give every packable linear layer of ``model`` its packed weight (`Linear.packed`); returns how
    many. Idempotent; the float weights stay (tied embeddings, state dicts and parity read them)."""
    done = 0
    for module in model.modules():
        if hasattr(module, "packed") and isinstance(module, nn.Linear) and can_pack(module.weight):
            if module.packed is None:
                module.packed = pack_weight(module.weight)
            done += 1
    return done
