"""Routing: top-k with each family's normalisation, and the counting sort of (token, slot) pairs by expert.

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


@numba.njit(cache=True)
def _route_rows(logits: np.ndarray, k: int, softmax_first: bool, renorm: bool):  # pragma: no cover
    n, n_exp = logits.shape
    weights = np.empty((n, k), np.float32)
    ids = np.empty((n, k), np.int64)
    for t in range(n):
        row = logits[t]
        taken = np.zeros(n_exp, np.bool_)
        for s in range(k):  # selection: k is small (2-8), first index wins ties like torch.topk
            best = -1
            for e in range(n_exp):
                if not taken[e] and (best < 0 or row[e] > row[best]):
                    best = e
            taken[best] = True
            ids[t, s] = best
        mx = row[ids[t, 0]]
        if softmax_first:  # softmax over all experts, then the top k (renormalised if asked)
            z = np.float32(0.0)
            for e in range(n_exp):
                z += np.exp(row[e] - mx)
            total = np.float32(0.0)
            for s in range(k):
                weights[t, s] = np.exp(row[ids[t, s]] - mx) / z
                total += weights[t, s]
            if renorm:
                for s in range(k):
                    weights[t, s] /= total
        else:  # softmax over the k selected logits
            z = np.float32(0.0)
            for s in range(k):
                weights[t, s] = np.exp(row[ids[t, s]] - mx)
                z += weights[t, s]
            for s in range(k):
                weights[t, s] /= z
    return weights, ids


def route_topk(logits: Tensor, k: int, mode: str, norm_topk: bool) -> tuple[Tensor, Tensor]:
    """Router logits [N, E] -> (weights [N, k] fp32, expert ids [N, k]) in one compiled pass per row.

    Same contract as `model.route` (`softmax_topk`: softmax over all experts, top k, renormalise when
    `norm_topk`; `topk_softmax`: softmax over the top k logits). Row-local, so a token's routing never
    depends on the batch around it. `model.route` (torch) stays the default router: it is what
    `transformers` computes, tie-breaking included; this one exists for callers that want routing
    and sorting without torch dispatch overhead per step.
    """
    if mode not in ("softmax_topk", "topk_softmax"):
        raise ValueError(f"unknown router mode {mode!r}")
    arr = np.ascontiguousarray(logits.detach().float().cpu().numpy())
    w, ids = _route_rows(arr, k, mode == "softmax_topk", norm_topk)
    return torch.from_numpy(w), torch.from_numpy(ids)
