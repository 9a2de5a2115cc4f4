"""Decode attention read straight from the paged KV cache (numba, CPU, fp32).

Gathering every decode sequence's blocks into a padded tensor for SDPA copies the whole context of
the batch twice per layer; this kernel reads K/V in place through the block tables, one
(sequence, KV head) pair per parallel iteration, all query heads of the group at once.
Measured 1.8x faster than gather + SDPA for 32 sequences x 304 context (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import torch
from torch import Tensor


@nb.njit(parallel=True, fastmath=True, cache=True)
def _decode(q, kc, vc, tables, lengths, scale, out):  # pragma: no cover - compiled
    # q [B, Hq, D]; kc, vc [num_blocks, block_size, Hkv, D]; tables [B, max_blocks]; out [B, Hq, D]
    n_seq, n_q_heads, dim = q.shape
    block_size, n_kv_heads = kc.shape[1], kc.shape[2]
    group = n_q_heads // n_kv_heads
    for job in nb.prange(n_seq * n_kv_heads):
        b, h = job // n_kv_heads, job % n_kv_heads
        length = lengths[b]
        scores = np.empty((group, length), dtype=np.float32)
        for t in range(length):
            block, offset = tables[b, t // block_size], t % block_size
            for g in range(group):
                acc = np.float32(0.0)
                for d in range(dim):
                    acc += q[b, h * group + g, d] * kc[block, offset, h, d]
                scores[g, t] = acc * scale
        for g in range(group):
            top = scores[g, 0]
            for t in range(1, length):
                top = max(top, scores[g, t])
            total = np.float32(0.0)
            for t in range(length):
                e = math.exp(scores[g, t] - top)
                scores[g, t] = e
                total += e
            row = h * group + g
            out[b, row, :] = 0.0
            for t in range(length):
                block, offset = tables[b, t // block_size], t % block_size
                p = scores[g, t] / total
                for d in range(dim):
                    out[b, row, d] += p * vc[block, offset, h, d]


def supported(kc: Tensor) -> bool:
    return kc.device.type == "cpu" and kc.dtype == torch.float32


def paged_decode_attention(q: Tensor, kc: Tensor, vc: Tensor, tables: Tensor, lengths: Tensor, scale: float) -> Tensor:
    """q [B, Hq, D] against each sequence's first `lengths[b]` cached tokens -> [B, Hq, D]."""
    out = torch.empty_like(q)
    _decode(q.contiguous().numpy(), kc.numpy(), vc.numpy(), tables.numpy(), lengths.numpy(), np.float32(scale),
            out.numpy())
    return out
