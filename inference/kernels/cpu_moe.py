"""CPU expert compute over expert-sorted tokens.

Two kernels, chosen per expert by how many tokens it received this step:

* **wide** (count >= `small_max`): gather the expert's tokens and run one matmul per projection
  over all of them (torch -> MKL/oneDNN; AMX where the CPU has it). Gate and up are one fused
  weight `[2I, H]`; SiLU(gate) * up is done in place on the matmul output; the down projection
  writes straight into the expert's rows of the sorted output buffer.
* **narrow** (0 < count < `small_max`, i.e. decode and thin prefill): one compiled numba call
  for all such experts together, parallel over (expert, block of weight rows). Each weight row is
  read from memory once and used for every token of its expert while it sits in L1; gate row j
  and up row j are consumed together so SiLU * mul happens in registers; the down projection reads
  the activations back from L1/L2. Quantised weights (`quant.QuantizedTensor`) are decoded row by
  row inside this loop, so only quantised bytes cross the memory bus.

The weighted combine of each token's k expert outputs is one compiled pass (parallel over tokens),
summing the slots in slot order: no per-token Python loop, no `index_add_` whose accumulation order
depends on the batch.

**Batch-invariant modes.** The default mode is not batch-invariant: whether an expert takes the
narrow or the wide kernel depends on how many tokens it got, and MKL's blocking depends on the
matmul's row count, so a token's bits depend on its batch. Two fixed configurations are:
* `small_max=None`: the narrow kernel for every expert. Each (token, weight row) result is computed
  by the same instruction sequence whatever else is in the batch (no reduction ever spans tokens);
  fastest invariant mode on a CPU without AMX (see docs/KERNELS.md).
* `tile=T`: every expert goes through fixed-shape matmuls of T rows (its sorted run padded with zero
  rows, routing.sort_by_expert's `block`). A fixed-shape GEMM computes each row with the same
  instruction sequence whatever the other rows hold or where the row sits in the tile; for CPUs
  whose matmuls are much faster than the narrow kernel (AMX).
Both are tested bit-for-bit.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import types
from numba.extending import overload
from torch import Tensor

from simulacra.inference.kernels.quant import QuantizedTensor, narrow_experts_q
from simulacra.inference.kernels.routing import ExpertSort, sort_by_expert

ROWS_PER_ITEM = 16  # weight rows per parallel work item of the float narrow kernel


def row(w, e, r, scratch):  # pragma: no cover - numba overload below
    """Row r of expert e of a float weight as float32: fp32 used in place, bf16 bits widened into `scratch`."""
    raise NotImplementedError


@overload(row, inline="always")
def _row(w, e, r, scratch):
    if isinstance(w, types.Array) and w.dtype == types.float32:

        def impl(w, e, r, scratch):
            return w[e, r]

        return impl
    if isinstance(w, types.Array) and w.dtype == types.uint16:

        def impl(w, e, r, scratch):
            src = w[e, r]
            bits = scratch.view(np.uint32)
            for i in range(src.size):
                bits[i] = np.uint32(src[i]) << np.uint32(16)
            return scratch

        return impl
    return None


@numba.njit(cache=True, parallel=True, fastmath=True)
def narrow_experts(x, tokens, starts, counts, experts, gate_up, down, act, out):  # pragma: no cover - compiled
    """Float narrow kernel. For each listed expert e and its slots s (tokens t = tokens[s]):
    act[s] = silu(Wg[e] x_t) * (Wu[e] x_t); out[s] = Wd[e] act[s]. Parallel over (expert, row block);
    each weight row is read from memory once and reused from L1 for all the expert's tokens."""
    hidden = x.shape[1]
    inter = act.shape[1]
    n_exp = experts.size
    rb = ROWS_PER_ITEM
    nb1 = (inter + rb - 1) // rb
    for it in numba.prange(n_exp * nb1):
        e = experts[it // nb1]
        j0 = (it % nb1) * rb
        lo, c = starts[e], counts[e]
        g_scratch = np.empty(hidden, np.float32)
        u_scratch = np.empty(hidden, np.float32)
        for j in range(j0, min(inter, j0 + rb)):
            wg = row(gate_up, e, j, g_scratch)
            wu = row(gate_up, e, inter + j, u_scratch)
            for q in range(c):
                xt = x[tokens[lo + q]]
                g = np.float32(0.0)
                u = np.float32(0.0)
                for i in range(hidden):
                    g += wg[i] * xt[i]
                    u += wu[i] * xt[i]
                act[lo + q, j] = g / (np.float32(1.0) + np.exp(-g)) * u
    nb2 = (hidden + rb - 1) // rb
    for it in numba.prange(n_exp * nb2):
        e = experts[it // nb2]
        r0 = (it % nb2) * rb
        lo, c = starts[e], counts[e]
        d_scratch = np.empty(inter, np.float32)
        for r in range(r0, min(hidden, r0 + rb)):
            wd = row(down, e, r, d_scratch)
            for q in range(c):
                a = act[lo + q]
                acc = np.float32(0.0)
                for i in range(inter):
                    acc += wd[i] * a[i]
                out[lo + q, r] = acc


def weight_object(w: Tensor) -> np.ndarray:
    """A float weight as numba sees it: float32 array, or bf16 bit patterns as uint16."""
    if w.dtype == torch.bfloat16:
        return w.detach().contiguous().view(torch.int16).numpy().view(np.uint16)
    return w.detach().float().contiguous().numpy()


@numba.njit(cache=True, parallel=True)
def _combine(out, position, weights, y):  # pragma: no cover - compiled
    """y[t] = sum over slots s, in slot order, of weights[t, s] * out[position[t*k + s]]. Not fastmath: fixed order."""
    n, k = weights.shape
    hidden = y.shape[1]
    for t in numba.prange(n):
        yt = y[t]
        for i in range(hidden):
            yt[i] = 0.0
        for s in range(k):
            w = weights[t, s]
            src = out[position[t * k + s]]
            for i in range(hidden):
                yt[i] += w * src[i]


@numba.njit(cache=True, parallel=True)
def _silu_mul(h, act):  # pragma: no cover - compiled
    """act = silu(h[:, :I]) * h[:, I:], elementwise (same arithmetic for every element: batch-invariant)."""
    n, inter = act.shape
    for t in numba.prange(n):
        for j in range(inter):
            g = h[t, j]
            act[t, j] = g / (np.float32(1.0) + np.exp(-g)) * h[t, inter + j]


def _expert_t(w: Tensor | QuantizedTensor, e: int, scratch: dict) -> Tensor:
    """Expert e's weight transposed ([C, R]) for `x @ W.T` as a torch matmul: a view of a float weight, or
    a quantised expert decoded into a buffer reused across experts of the same shape."""
    if isinstance(w, QuantizedTensor):
        shape = w.shape[-2:]
        if shape not in scratch:
            scratch[shape] = np.empty(shape[::-1], np.float32)
        return w.dequantize_t(e, scratch[shape])
    return w[e].t()


def expert_shapes(
    gate_up: Tensor | QuantizedTensor, down: Tensor | QuantizedTensor, weights: Tensor, ids: Tensor
) -> tuple[int, int, int]:
    """(E, I, H), after checking that the weights and the routing agree with each other."""
    if weights.shape != ids.shape or ids.dim() != 2:
        raise ValueError(
            f"routing weights {tuple(weights.shape)} and expert ids {tuple(ids.shape)} must both be [N, k]"
        )
    n_exp, two_i, hidden = gate_up.shape
    if tuple(down.shape) != (n_exp, hidden, two_i // 2):
        raise ValueError(f"expert weights disagree: gate_up {tuple(gate_up.shape)}, down {tuple(down.shape)}")
    return n_exp, two_i // 2, hidden


def cpu_experts(
    x: Tensor,
    weights: Tensor,
    ids: Tensor,
    gate_up: Tensor | QuantizedTensor,
    down: Tensor | QuantizedTensor,
    small_max: int | None = 32,
    tile: int | None = None,
) -> Tensor:
    """Routed-expert FFN output [N, H] (fp32) for tokens `x[N, H]` routed to `ids[N, k]` with `weights[N, k]`.

    `gate_up[E, 2I, H]` ([gate; up] rows) and `down[E, H, I]` are float tensors (fp32 or bf16) or
    `QuantizedTensor`s. Experts with fewer than `small_max` tokens take the narrow kernel, the rest
    one wide matmul each; `small_max=None` sends every expert to the narrow kernel and `tile` every
    expert to fixed `tile`-row matmuls (the two batch-invariant modes).
    """
    n, k = ids.shape
    n_exp, inter, hidden = expert_shapes(gate_up, down, weights, ids)
    y = torch.empty(n, hidden, dtype=torch.float32)
    if n == 0:
        return y
    if tile is not None:
        return _tiled(x, weights, ids, gate_up, down, tile, y)
    srt = sort_by_expert(ids, n_exp)
    tokens = srt.tokens()
    x32 = x.detach().float().contiguous()
    out = np.empty((srt.n_pairs, hidden), np.float32)
    counts, starts = srt.counts, srt.offsets[:-1]
    limit = np.iinfo(np.int64).max if small_max is None else small_max
    narrow = np.flatnonzero((counts > 0) & (counts < limit))
    if narrow.size:
        act = np.empty((srt.n_pairs, inter), np.float32)
        if isinstance(gate_up, QuantizedTensor):
            if inter % gate_up.lanes:
                raise ValueError(f"quantised gate_up tiles ({gate_up.lanes} rows) straddle gate and up (I={inter})")
            narrow_experts_q(x32.numpy(), tokens, starts, counts, narrow, gate_up.arrays, down.arrays, act, out)
        else:
            gu, dn = weight_object(gate_up), weight_object(down)
            narrow_experts(x32.numpy(), tokens, starts, counts, narrow, gu, dn, act, out)
    wide = np.flatnonzero(counts >= limit)
    if wide.size:
        _wide_experts(x, tokens, srt, wide, gate_up, down, inter, out)
    w32 = weights.detach().float().contiguous().numpy()
    _combine(out, srt.position, w32, y.numpy())
    return y


def _wide_experts(
    x: Tensor,
    tokens: np.ndarray,
    srt: ExpertSort,
    wide: np.ndarray,
    gate_up: Tensor | QuantizedTensor,
    down: Tensor | QuantizedTensor,
    inter: int,
    out: np.ndarray,
) -> None:
    """One gathered matmul per expert for gate_up and down; results land in the expert's rows of `out`."""
    quantised = isinstance(gate_up, QuantizedTensor)
    compute = torch.float32 if quantised else gate_up.dtype
    xc = x.detach().to(compute)
    tok = torch.from_numpy(tokens)
    out_t = torch.from_numpy(out)
    scratch: dict = {}
    for e in wide.tolist():
        lo, c = int(srt.offsets[e]), int(srt.counts[e])
        xs = xc.index_select(0, tok[lo : lo + c])
        h = torch.mm(xs, _expert_t(gate_up, e, scratch))
        g = h[:, :inter]
        F.silu(g, inplace=True)
        g.mul_(h[:, inter:])
        wd_t = _expert_t(down, e, scratch)
        if compute == torch.float32:
            torch.mm(g, wd_t, out=out_t[lo : lo + c])
        else:
            out_t[lo : lo + c] = torch.mm(g, wd_t)


def _tiled(
    x: Tensor,
    weights: Tensor,
    ids: Tensor,
    gate_up: Tensor | QuantizedTensor,
    down: Tensor | QuantizedTensor,
    tile: int,
    y: Tensor,
) -> Tensor:
    """Batch-invariant mode: every matmul has shape [tile, H] x [H, 2I] or [tile, I] x [I, H]."""
    n_exp, inter, hidden = expert_shapes(gate_up, down, weights, ids)
    srt = sort_by_expert(ids, n_exp, block=tile)
    quantised = isinstance(gate_up, QuantizedTensor)
    compute = torch.float32 if quantised else gate_up.dtype
    xz = torch.cat((x.detach().to(compute), torch.zeros(1, hidden, dtype=compute)))  # row n: the padding row
    tok = torch.from_numpy(srt.tokens())
    out = torch.empty(srt.sorted_pairs.size, hidden, dtype=torch.float32)
    h = torch.empty(tile, 2 * inter, dtype=torch.float32)
    act = torch.empty(tile, inter, dtype=torch.float32)
    scratch: dict = {}
    blocks = srt.block_expert
    b = 0
    while b < blocks.size:
        e = int(blocks[b])
        wgu_t, wd_t = _expert_t(gate_up, e, scratch), _expert_t(down, e, scratch)
        while b < blocks.size and blocks[b] == e:
            rows = slice(b * tile, (b + 1) * tile)
            xs = xz.index_select(0, tok[rows])
            if compute == torch.float32:
                torch.mm(xs, wgu_t, out=h)
            else:
                h.copy_(torch.mm(xs, wgu_t))
            _silu_mul(h.numpy(), act.numpy())
            if compute == torch.float32:
                torch.mm(act, wd_t, out=out[rows])
            else:
                out[rows] = torch.mm(act.to(compute), wd_t).float()
            b += 1
    _combine(out.numpy(), srt.position, weights.detach().float().contiguous().numpy(), y.numpy())
    return y
