"""Routing for the kernels: the counting sort of (token, slot) pairs by expert (the router itself is `model.route`).

Every MoE kernel wants the same thing from the router: the N*k (token, slot) pairs grouped by the
expert they go to, with per-expert offsets, so an expert's tokens are one contiguous run it can
process with its weights read once. A stable counting sort does that in O(N*k + E) (no comparison
sort, no `torch.argsort` + `bincount` + `.tolist()` round trip). Kernels that work in fixed row
tiles (the Triton grouped GEMM, the batch-invariant CPU mode) also want each expert's run padded to
a multiple of the tile so no tile straddles two experts: the idea of vLLM's `moe_align_block_size`.
Padding slots hold the sentinel pair index `N*k`, which kernels map to a zero row and never store.

Pair index convention everywhere in `kernels`: pair `p = token * k + slot`, so `p // k` is the token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class ExpertSort:
    """The (token, slot) pairs grouped by expert.

    `sorted_pairs[offsets[e] : offsets[e] + counts[e]]` are expert e's pairs in increasing pair order
    (stable), followed by padding up to `offsets[e + 1]` (sentinel `n_pairs`). `position[p]` is where
    pair p landed. `block_expert[b]` is the expert of row tile b (`block` rows each); `block == 1`
    means no padding.
    """

    sorted_pairs: np.ndarray  # int64 [padded_total]
    offsets: np.ndarray  # int64 [E + 1], padded run starts
    counts: np.ndarray  # int64 [E], real pairs per expert
    position: np.ndarray  # int64 [N * k]
    block_expert: np.ndarray  # int64 [padded_total // block]
    n_tokens: int
    top_k: int
    block: int

    @property
    def n_pairs(self) -> int:
        return self.n_tokens * self.top_k

    def tokens(self) -> np.ndarray:
        """Token of each sorted slot (`n_tokens` for padding, i.e. a zero row appended to x)."""
        return _tokens_of(self.sorted_pairs, self.top_k, self.n_pairs, self.n_tokens)


@numba.njit(cache=True)
def _count_sort(flat_ids: np.ndarray, n_experts: int, block: int):  # pragma: no cover - compiled
    n_pairs = flat_ids.size
    counts = np.zeros(n_experts, np.int64)
    for p in range(n_pairs):
        e = flat_ids[p]
        if e < 0 or e >= n_experts:
            raise ValueError("expert id out of range")
        counts[e] += 1
    offsets = np.zeros(n_experts + 1, np.int64)
    for e in range(n_experts):
        offsets[e + 1] = offsets[e] + (counts[e] + block - 1) // block * block
    total = offsets[n_experts]
    sorted_pairs = np.full(total, n_pairs, np.int64)
    position = np.empty(n_pairs, np.int64)
    cursor = offsets[:n_experts].copy()
    for p in range(n_pairs):  # increasing p: stable within each expert
        e = flat_ids[p]
        sorted_pairs[cursor[e]] = p
        position[p] = cursor[e]
        cursor[e] += 1
    block_expert = np.empty(total // block, np.int64)
    for e in range(n_experts):
        for b in range(offsets[e] // block, offsets[e + 1] // block):
            block_expert[b] = e
    return sorted_pairs, offsets, counts, position, block_expert


@numba.njit(cache=True)
def _tokens_of(sorted_pairs: np.ndarray, k: int, n_pairs: int, n_tokens: int) -> np.ndarray:  # pragma: no cover
    out = np.empty(sorted_pairs.size, np.int64)
    for i in range(sorted_pairs.size):
        p = sorted_pairs[i]
        out[i] = n_tokens if p >= n_pairs else p // k
    return out


def sort_by_expert(ids: Tensor | np.ndarray, n_experts: int, block: int = 1) -> ExpertSort:
    """Group the (token, slot) pairs of `ids[N, k]` by expert, each run padded to a multiple of `block`."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    arr = ids.detach().to("cpu", torch.int64).numpy() if isinstance(ids, Tensor) else np.asarray(ids, np.int64)
    if arr.ndim != 2:
        raise ValueError(f"expert ids must be [tokens, k], got shape {arr.shape}")
    sorted_pairs, offsets, counts, position, block_expert = _count_sort(
        np.ascontiguousarray(arr).reshape(-1), n_experts, block
    )
    return ExpertSort(sorted_pairs, offsets, counts, position, block_expert, arr.shape[0], arr.shape[1], block)
