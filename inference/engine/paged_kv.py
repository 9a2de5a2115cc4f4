"""The engine's KV store: K/V in fixed-size blocks, attention over ragged batches.

Cache layout: `v[layer]` is `[num_blocks, block_size, n_kv_heads, head_dim]`, `k[layer]` the same
with each block's keys transposed, `[num_blocks, n_kv_heads, head_dim, block_size]` (the decode
kernel's q·k then runs along the block's tokens, `paged_attention.py`); a token's slot is
`block_id * block_size + offset`. Per step, `prepare` turns each sequence's block table into
indices once; every layer then writes its new K/V with one `index_copy_` and attends:

- sequences with one new token (decode) attend together in one call: on the CPU a numba kernel
  reads K/V in place through the block tables (`paged_attention.py`); on a GPU their blocks are
  gathered into `[B, max_blocks * block_size]` with a length mask for one SDPA call (only the key
  axis of that call is padded, never the token batch);
- sequences with several new tokens (prefill chunks) attend one by one with a causal mask offset by
  what is already cached, so a prefix-cache hit or an earlier chunk is simply "past".

Deterministic mode (`EngineConfig.deterministic`, CPU only): every row of the batch, prefill or
decode, goes through the numba kernel with its own block table and context length (position + 1,
causal by construction), so a token's attention depends only on its q and the K/V of its context,
never on how its prompt was chunked, whether its prefix came from the cache, or what else is batched.

On the CPU the cache is fp32 whatever the weights' dtype (`cache_dtype`): the numba kernel reads it
in place, and attention runs at full precision; K/V of a bf16 model are widened as they are stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from simulacra.inference.engine import paged_attention
from simulacra.inference.kvcache import causal_attention


@dataclass
class StepLayout:
    slots: Tensor  # [N] cache slot of each new token
    slot_blocks: Tensor  # [N] its block (slots // block_size)
    slot_offsets: Tensor  # [N] its offset in the block
    decode_rows: Tensor  # rows (into the flat batch) of single-token sequences
    decode_blocks: Tensor  # [B, max_blocks] their block tables (padded with block 0)
    decode_lengths: Tensor  # [B] their context lengths (this token included)
    decode_mask: Tensor  # [B, 1, 1, max_blocks * block_size] True where a key exists
    prefill: list[tuple[int, int, Tensor, int]]  # (first row, new tokens, block table, context length)
    all_decode: bool = False  # every row of the batch is a decode row, in order


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
        deterministic: bool = False,
    ) -> None:
        self.k = torch.zeros((n_layers, num_blocks, n_kv_heads, head_dim, block_size), dtype=dtype, device=device)
        self.v = torch.zeros((n_layers, num_blocks, block_size, n_kv_heads, head_dim), dtype=dtype, device=device)
        self.block_size = block_size
        self.deterministic = deterministic
        if deterministic and not paged_attention.supported(self.k):
            raise ValueError("deterministic attention runs the numba kernel: it needs the CPU (fp32 cache)")
        self.layout: StepLayout | None = None

    @staticmethod
    def cache_dtype(model_dtype: torch.dtype, device: str) -> torch.dtype:
        """fp32 on the CPU (the in-place numba decode kernel is fp32; a bf16 cache would be gathered
        for SDPA every layer: measured slower), the model's dtype on a GPU."""
        return torch.float32 if torch.device(device).type == "cpu" else model_dtype

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
        bs, dev = self.block_size, self.k.device
        slots, decode_rows, decode_tables, lengths, prefill = [], [], [], [], []
        row = 0
        for table, start, n in chunks:
            slots.append(self._slots(table, start, start + n))
            used = torch.tensor(table[: -(-(start + n) // bs)], dtype=torch.long)
            if self.deterministic:  # every row alone, over its own context (see the module docstring)
                decode_rows.extend(range(row, row + n))
                decode_tables.extend([used] * n)
                lengths.extend(range(start + 1, start + n + 1))
            elif n == 1:
                decode_rows.append(row)
                decode_tables.append(used)
                lengths.append(start + 1)
            else:
                prefill.append((row, n, used.to(dev), start + n))
            row += n
        if decode_tables:
            tables = torch.nn.utils.rnn.pad_sequence(decode_tables, batch_first=True)
        else:
            tables = torch.zeros(0, 0, dtype=torch.long)
        lens = torch.tensor(lengths, dtype=torch.long)
        keys = 0 if self.deterministic else tables.shape[1] * bs  # the mask is for the SDPA (non-numba) path
        mask = (torch.arange(keys)[None, :] < lens[:, None])[:, None, None, :]
        rows = torch.tensor(decode_rows, dtype=torch.long)
        # built on the CPU (small, Python lists), used on the cache's device (no-op copies on the CPU)
        flat = torch.cat(slots)
        layout = (flat, flat // bs, flat % bs, rows, tables, lens, mask)
        self.layout = StepLayout(*(t.to(dev) for t in layout), prefill, not prefill and len(decode_rows) == row)

    def _keys(self, kc: Tensor, blocks: Tensor) -> Tensor:
        """The keys of ``blocks`` in token order: [len(blocks) * block_size, H, D] (a copy)."""
        return kc[blocks].permute(0, 3, 1, 2).reshape(-1, kc.shape[1], kc.shape[2])

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        lay = self.layout
        kc, vc = self.k[layer], self.v[layer]
        heads, dim = vc.shape[2], vc.shape[3]
        kc.permute(0, 3, 1, 2)[lay.slot_blocks, lay.slot_offsets] = k.to(kc.dtype)
        vc.view(-1, heads, dim).index_copy_(0, lay.slots, v.to(kc.dtype))
        dtype, q = v.dtype, q.to(kc.dtype)
        if lay.all_decode and paged_attention.supported(kc):  # the common decode step: no scatter
            out = paged_attention.paged_decode_attention(q, kc, vc, lay.decode_blocks, lay.decode_lengths, scale)
            return out.to(dtype)
        out = torch.empty_like(q)
        if len(lay.decode_rows) and paged_attention.supported(kc):
            out[lay.decode_rows] = paged_attention.paged_decode_attention(
                q[lay.decode_rows], kc, vc, lay.decode_blocks, lay.decode_lengths, scale
            )
        elif len(lay.decode_rows):
            b = lay.decode_blocks.shape[0]
            qd = q[lay.decode_rows].unsqueeze(2)  # [B, Hq, 1, D]
            kd = self._keys(kc, lay.decode_blocks.reshape(-1)).view(b, -1, heads, dim).transpose(1, 2)  # [B, H, L, D]
            vd = vc[lay.decode_blocks].view(b, -1, heads, dim).transpose(1, 2)
            o = torch.nn.functional.scaled_dot_product_attention(
                qd, kd, vd, attn_mask=lay.decode_mask, scale=scale, enable_gqa=True
            )
            out[lay.decode_rows] = o.squeeze(2)
        for first, n, table, total in lay.prefill:
            ks = self._keys(kc, table)[:total]
            vs = vc[table].view(-1, heads, dim)[:total]
            out[first : first + n] = causal_attention(q[first : first + n], ks, vs, scale)
        return out.to(dtype)
