"""Retrieval scoring: recency, importance and relevance, each min-max normalised over the candidates.

Park et al. (2023) rank memories by ``w_rec·recency + w_imp·importance + w_rel·relevance``. Recency
is ``decay ** hours`` since the memory was last retrieved (0.995 per sim hour in the paper), so a
memory just created or just used scores highest. The original code computed recency from list
position in a way that favoured the *least* recently accessed memory; here recency is a function of
the time itself, and a test pins that a fresh memory outranks an identical stale one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RetrievalWeights:
    recency: float = 1.0
    importance: float = 1.0
    relevance: float = 1.0
    decay: float = 0.995  # per simulated hour since last retrieval


def min_max(x: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] over the candidates; all equal → all 0.5 (the component cannot tell them apart)."""
    if x.size == 0:
        return x
    lo, hi = float(x.min()), float(x.max())
    if hi - lo < 1e-12:
        return np.full_like(x, 0.5, dtype=np.float64)
    return (x - lo) / (hi - lo)


@dataclass
class Scores:
    """Per-candidate components (normalised) and the weighted total, for ranking and for the viewer."""

    recency: np.ndarray
    importance: np.ndarray
    relevance: np.ndarray
    total: np.ndarray


def score(
    hours_since_retrieved: np.ndarray,
    importance: np.ndarray,
    similarity: np.ndarray,
    weights: RetrievalWeights = RetrievalWeights(),
) -> Scores:
    """The paper's retrieval score for each candidate memory."""
    rec = min_max(np.power(weights.decay, np.maximum(np.asarray(hours_since_retrieved, np.float64), 0.0)))
    imp = min_max(np.asarray(importance, np.float64))
    rel = min_max(np.asarray(similarity, np.float64))
    total = weights.recency * rec + weights.importance * imp + weights.relevance * rel
    return Scores(rec, imp, rel, total)


def top_k(total: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best, best first; ties go to the later (newer) candidate, deterministically."""
    if total.size == 0 or k <= 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((-np.arange(total.size), -total))  # primary: score desc; then index desc
    return order[:k]
