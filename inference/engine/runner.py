"""Runs one scheduled step through the model: flatten the chunks, forward, logits of sampling rows."""

from __future__ import annotations

import torch
from torch import Tensor

from simulacra.inference import kernels
from simulacra.inference.engine.paged_kv import PagedKV
from simulacra.inference.engine.scheduler import Chunk
from simulacra.inference.model import Transformer


class ModelRunner:
    def __init__(self, model: Transformer, num_blocks: int, block_size: int, deterministic: bool = False) -> None:
        """`deterministic`: batch-invariant forward passes (fixed-tile linears, invariant MoE experts,
        every row's attention through one kernel): a row's logits do not depend on its batch."""
        cfg = model.cfg
        self.model = model
        self.deterministic = deterministic
        kernels.pack_linears(model)  # bf16 CPU weights: packed once for oneDNN, same bits (kernels/dense.py)
        self.kv = PagedKV(
            cfg.n_layers,
            num_blocks,
            block_size,
            cfg.n_kv_heads,
            cfg.head_dim,
            PagedKV.cache_dtype(model.dtype, str(model.embed.weight.device)),
            str(model.embed.weight.device),
            deterministic,
        )

    @torch.inference_mode()
    def run(self, chunks: list[Chunk]) -> Tensor:
        """fp32 logits, one row per chunk that samples (in chunk order)."""
        tokens, positions, last_rows, row = [], [], [], 0
        for c in chunks:
            tokens.extend(c.seq.token_ids[c.start : c.start + c.num_tokens])
            positions.extend(range(c.start, c.start + c.num_tokens))
            row += c.num_tokens
            if c.samples:
                last_rows.append(row - 1)
        self.kv.prepare([(c.seq.block_table, c.start, c.num_tokens) for c in chunks])
        device = self.model.embed.weight.device
        args = (
            torch.tensor(tokens, device=device),
            torch.tensor(positions, device=device),
            self.kv,
            torch.tensor(last_rows, dtype=torch.long, device=device),
        )
        with kernels.serial_ops(len(tokens)), kernels.invariant_forward(self.deterministic):
            return self.model(*args)
