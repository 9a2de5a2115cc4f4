"""The engine's KV store: K/V in fixed-size blocks, attention over ragged batches.

Cache layout: `k[layer]` is `[num_blocks * block_size, n_kv_heads, head_dim]`, addressed by slot
(`block_id * block_size + offset`). Per step, `prepare` turns each sequence's block table into
slot indices once; every layer then writes its new K/V with one `index_copy_` and attends:

- sequences with one new token (decode) attend together in one batched call. Their keys are
  gathered into `[B, max_context]` with a length mask: the *token* batch is not padded, only the
  key axis of this one call, and decode batches of a town have similar context lengths;
- sequences with several new tokens (prefill chunks) attend one by one with a causal mask offset by
  what is already cached, so a prefix-cache hit or an earlier chunk is simply "past".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from simulacra.inference.kvcache import causal_attention


@dataclass
class StepLayout:
    slots: Tensor  # [N] cache slot of each new token
    decode_rows: Tensor  # rows (into the flat batch) of single-token sequences
    decode_ctx: Tensor  # [B, max_ctx] slots of their contexts (padded with 0)
    decode_mask: Tensor  # [B, 1, 1, max_ctx] True where a key exists
    prefill: list[tuple[int, int, Tensor]]  # (first row, num new tokens, context slots) per chunk


class PagedKV:
    def __init__(
        self,
        n_layers: int,
        num_blocks: int,
        block_size: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: str = "cpu",
    ) -> None:
        shape = (n_layers, num_blocks * block_size, n_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size
        self.layout: StepLayout | None = None

    @staticmethod
    def bytes_per_token(n_layers: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * n_layers * n_kv_heads * head_dim * torch.finfo(dtype).bits // 8

    def _slots(self, block_table: list[int], start: int, end: int) -> Tensor:
        pos = torch.arange(start, end)
        table = torch.tensor(block_table, dtype=torch.long)
        return table[pos // self.block_size] * self.block_size + pos % self.block_size

    def prepare(self, chunks: list[tuple[list[int], int, int]]) -> None:
        """Layout of the next forward: per sequence (block table, tokens already cached, new tokens),
        in the order their tokens appear in the flat batch."""
        slots, decode_rows, decode_ctx, prefill = [], [], [], []
        row = 0
        for table, start, n in chunks:
            slots.append(self._slots(table, start, start + n))
            ctx = self._slots(table, 0, start + n)
            if n == 1:
                decode_rows.append(row)
                decode_ctx.append(ctx)
            else:
                prefill.append((row, n, ctx))
            row += n
        if decode_ctx:
            lengths = torch.tensor([len(c) for c in decode_ctx])
            ctx = torch.nn.utils.rnn.pad_sequence(decode_ctx, batch_first=True)
            mask = (torch.arange(ctx.shape[1])[None, :] < lengths[:, None])[:, None, None, :]
        else:
            ctx, mask = torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 1, 1, 0, dtype=torch.bool)
        self.layout = StepLayout(torch.cat(slots), torch.tensor(decode_rows, dtype=torch.long), ctx, mask, prefill)

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        lay = self.layout
        kc, vc = self.k[layer], self.v[layer]
        kc.index_copy_(0, lay.slots, k)
        vc.index_copy_(0, lay.slots, v)
        out = torch.empty_like(q)
        if len(lay.decode_rows):
            qd = q[lay.decode_rows].unsqueeze(2)  # [B, Hq, 1, D]
            kd = kc[lay.decode_ctx].transpose(1, 2)  # [B, Hkv, L, D]
            vd = vc[lay.decode_ctx].transpose(1, 2)
            o = torch.nn.functional.scaled_dot_product_attention(
                qd, kd, vd, attn_mask=lay.decode_mask, scale=scale, enable_gqa=True
            )
            out[lay.decode_rows] = o.squeeze(2)
        for first, n, ctx in lay.prefill:
            out[first : first + n] = causal_attention(q[first : first + n], kc[ctx], vc[ctx], scale)
        return out
