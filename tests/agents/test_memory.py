"""Memory stream and retrieval: scoring, normalisation, recency, persistence."""

from datetime import datetime, timedelta

import numpy as np
import pytest
from sqlmodel import Session, SQLModel, create_engine

from simulacra.agents.memory import MemoryStore, MemoryStream
from simulacra.agents.retrieval import RetrievalWeights, min_max, score, top_k

T0 = datetime(2025, 4, 10, 7, 0)


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, np.float32)
    return v / np.linalg.norm(v)


def test_min_max_normalises_each_component_over_the_candidates() -> None:
    x = np.array([3.0, 5.0, 4.0])
    assert min_max(x).tolist() == [0.0, 1.0, 0.5]
    assert min_max(np.array([2.0, 2.0])).tolist() == [0.5, 0.5]  # indistinguishable: neutral
    s = score(np.array([0.0, 10.0]), np.array([1.0, 9.0]), np.array([0.2, 0.1]))
    for part in (s.recency, s.importance, s.relevance):
        assert part.min() == 0.0 and part.max() == 1.0
    assert s.total.tolist() == pytest.approx((s.recency + s.importance + s.relevance).tolist())


def test_weights_change_the_ranking() -> None:
    hours = np.array([0.0, 50.0])
    imp = np.array([1.0, 10.0])
    sim = np.array([0.0, 0.0])
    recent_first = score(hours, imp, sim, RetrievalWeights(recency=3.0, importance=1.0, relevance=1.0))
    important_first = score(hours, imp, sim, RetrievalWeights(recency=1.0, importance=3.0, relevance=1.0))
    assert top_k(recent_first.total, 1).tolist() == [0]
    assert top_k(important_first.total, 1).tolist() == [1]


def test_fresh_memory_outranks_an_identical_stale_one() -> None:
    s = MemoryStream("Ada")
    stale = s.add("observation", "the stove is on", 0, T0, importance=4)
    fresh = s.add("observation", "the stove is on", 30, T0 + timedelta(hours=5), importance=4)
    for m in (stale, fresh):
        s.set_embedding(m, unit(1, 0))
    got = s.retrieve(unit(1, 0), T0 + timedelta(hours=6), k=2)
    assert [r.memory.seq for r in got] == [fresh.seq, stale.seq]
    assert got[0].recency == 1.0 and got[1].recency == 0.0


def test_recency_counts_from_the_last_retrieval_not_creation() -> None:
    s = MemoryStream("Ada")
    old = s.add("observation", "old but just used", 0, T0, importance=5)
    new = s.add("observation", "newer, never used", 6, T0 + timedelta(hours=1), importance=5)
    s.set_embedding(old, unit(1, 0))
    s.set_embedding(new, unit(0, 1))
    # retrieving `old` at hour 10 refreshes it
    s.retrieve(unit(1, 0), T0 + timedelta(hours=10), k=1, weights=RetrievalWeights(relevance=3.0))
    assert old.last_retrieved_at == T0 + timedelta(hours=10)
    assert new.last_retrieved_at == T0 + timedelta(hours=1)
    got = s.retrieve(unit(1, 1), T0 + timedelta(hours=11), k=2, weights=RetrievalWeights(importance=0, relevance=0))
    assert got[0].memory is old


def test_retrieval_order_combines_relevance_importance_recency() -> None:
    s = MemoryStream("Ada")
    texts = [
        ("party at the café", 8, unit(1, 0, 0)),
        ("made tea", 1, unit(0, 1, 0)),
        ("café opens at 8", 3, unit(1, 1, 0)),
    ]
    for i, (t, imp, e) in enumerate(texts):
        m = s.add("observation", t, i, T0, importance=imp)
        s.set_embedding(m, e)
    got = s.retrieve(unit(1, 0, 0), T0, k=3)
    assert [r.memory.text for r in got] == ["party at the café", "café opens at 8", "made tea"]
    assert got[0].score == pytest.approx(got[0].recency + got[0].importance + got[0].relevance)
    # touch=False leaves last_retrieved alone
    s.retrieve(unit(1, 0, 0), T0 + timedelta(hours=3), k=3, touch=False)
    assert all(m.last_retrieved_at == T0 for m in s.memories)


def test_importance_since_reflection_accumulates() -> None:
    s = MemoryStream("Ada")
    a = s.add("observation", "x", 0, T0)
    s.add("observation", "y", 0, T0, importance=3)
    s.set_importance(a, 7)
    s.set_importance(a, 7)  # re-scoring does not count twice
    assert s.importance_since_reflection == 10


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="memory kind"):
        MemoryStream("Ada").add("dream", "x", 0, T0)


def test_flush_and_load_round_trip_through_sqlite(tmp_path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'run.db'}")
    SQLModel.metadata.create_all(engine)
    store = MemoryStore(["Ada", "Ben"])
    m = store["Ada"].add("observation", "Ben is here", 1, T0, importance=2)
    store["Ada"].set_embedding(m, unit(1, 2, 3))
    store["Ada"].add("reflection", "Ben is kind", 2, T0 + timedelta(minutes=10), importance=6, evidence=(0,))
    store["Ben"].add("seed", "I garden", 0, T0)
    with Session(engine) as session:
        assert store.flush(session) == 3
        session.commit()
    relevance_only = RetrievalWeights(recency=0, importance=0, relevance=1)
    store["Ada"].retrieve(unit(1, 2, 3), T0 + timedelta(hours=2), k=1, weights=relevance_only)  # touches seq 0 only...
    with Session(engine) as session:
        assert store.flush(session) == 1  # ...so only that row is written again
        session.commit()
    again = MemoryStore(["Ada", "Ben"])
    with Session(engine) as session:
        again.load(session)
    a = again["Ada"].memories
    assert [x.text for x in a] == ["Ben is here", "Ben is kind"]
    assert a[1].evidence == (0,) and a[1].importance == 6
    assert a[0].last_retrieved_at == T0 + timedelta(hours=2)
    np.testing.assert_array_equal(a[0].embedding, unit(1, 2, 3))
    assert again["Ben"].memories[0].importance is None
