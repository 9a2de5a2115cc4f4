"""The numba decode kernel reads the paged cache in place and matches plain attention."""

from __future__ import annotations

import pytest
import torch

from simulacra.inference.engine.paged_attention import paged_decode_attention
from simulacra.inference.kvcache import causal_attention


@pytest.mark.parametrize("n_kv_heads,group", [(3, 3), (2, 1), (1, 4)])
def test_matches_attention_over_gathered_keys(n_kv_heads: int, group: int) -> None:
    gen = torch.Generator().manual_seed(n_kv_heads * 10 + group)
    num_blocks, block_size, dim = 40, 4, 16
    kc = torch.randn(num_blocks, block_size, n_kv_heads, dim, generator=gen)
    vc = torch.randn(num_blocks, block_size, n_kv_heads, dim, generator=gen)
    lengths = torch.tensor([1, 4, 5, 17, 30])  # ragged, block edges included
    order = torch.randperm(num_blocks, generator=gen)
    max_blocks = -(-int(lengths.max()) // block_size)
    tables = torch.zeros(len(lengths), max_blocks, dtype=torch.long)
    used = 0
    for b, n in enumerate(lengths.tolist()):
        k = -(-n // block_size)
        tables[b, :k] = order[used : used + k]
        used += k
    q = torch.randn(len(lengths), n_kv_heads * group, dim, generator=gen)
    kt = kc.permute(0, 2, 3, 1).contiguous()  # the cache keeps keys transposed within a block
    got = paged_decode_attention(q, kt, vc, tables, lengths, scale=0.25)
    for b, n in enumerate(lengths.tolist()):
        keys = kc[tables[b]].reshape(-1, n_kv_heads, dim)[:n]
        values = vc[tables[b]].reshape(-1, n_kv_heads, dim)[:n]
        want = causal_attention(q[b : b + 1], keys, values, 0.25)[0]
        assert (got[b] - want).abs().max().item() < 1e-5
