"""The simple KV store: one contiguous K/V tensor per (layer, sequence).

Used by parity tests (no past) and by the reference decode loop (`generate.py`); the serving engine
brings its own paged store with the same `attend` method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Attention of q [n, Hq, D] over k/v [past + n, Hkv, D]; query i sees keys up to past + i."""
    n, total = q.shape[0], k.shape[0]
    past = total - n
    mask = None
    if n > 1:
        mask = torch.arange(total, device=q.device)[None, :] <= (past + torch.arange(n, device=q.device))[:, None]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        attn_mask=mask,
        scale=scale,
        enable_gqa=True,
    )
    return out[0].transpose(0, 1)


class ContiguousKV:
    """Per-sequence caches for a ragged batch whose tokens are grouped by sequence, in order."""

    def __init__(self, n_layers: int, n_seqs: int) -> None:
        self.k: list[list[Tensor | None]] = [[None] * n_seqs for _ in range(n_layers)]
        self.v: list[list[Tensor | None]] = [[None] * n_seqs for _ in range(n_layers)]
        self.seq_ids: list[int] = []
        self.lengths: list[int] = []

    def set_batch(self, seq_ids: list[int], lengths: list[int]) -> None:
        """Declare which sequences the next forward's tokens belong to (contiguous runs)."""
        self.seq_ids, self.lengths = list(seq_ids), list(lengths)

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        q, k = q.to(v.dtype), k.to(v.dtype)
        outs, start = [], 0
        for s, n in zip(self.seq_ids, self.lengths, strict=True):
            ks, vs = k[start : start + n], v[start : start + n]
            past_k, past_v = self.k[layer][s], self.v[layer][s]
            if past_k is not None:
                ks, vs = torch.cat((past_k, ks)), torch.cat((past_v, vs))
            self.k[layer][s], self.v[layer][s] = ks, vs
            outs.append(causal_attention(q[start : start + n], ks, vs, scale))
            start += n
        return torch.cat(outs)
