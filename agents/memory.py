"""The memory stream: every resident's observations, conversations, reflections and plans.

Records live in memory for retrieval (numpy arrays, one stream per resident) and in SQLite through
SQLModel (table ``memory``) for durability: ``MemoryStore.flush(session)`` writes what changed since
the last flush inside the caller's transaction, so the run loop can commit a whole step atomically.

Ids are assigned per resident (``seq``, 0, 1, 2, …) by the resident's own coroutine, so they do not
depend on the order in which concurrent LLM calls finish; the database key is (resident, seq).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from pydantic import NaiveDatetime
from sqlmodel import Field, Session, SQLModel, select

from .retrieval import RetrievalWeights, Scores, score, top_k

KINDS = ("seed", "observation", "conversation", "heard", "reflection", "plan", "interview")


class MemoryRecord(SQLModel, table=True):
    """One memory as stored in ``run.db``."""

    __tablename__ = "memory"

    resident: str = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    run_id: str = Field(default="", primary_key=True, sa_column_kwargs={"server_default": ""})  # storage._run_key
    kind: str
    text: str
    created_step: int
    created_at: NaiveDatetime
    last_retrieved_at: NaiveDatetime
    importance: int | None = None
    embedding: bytes | None = None  # float32, L2-normalised
    evidence: str = "[]"  # JSON list of seq numbers this memory rests on (reflections)

    @classmethod
    def of(cls, resident: str, m: Memory, run_id: str = "") -> MemoryRecord:
        return cls(
            run_id=run_id,
            resident=resident,
            seq=m.seq,
            kind=m.kind,
            text=m.text,
            created_step=m.created_step,
            created_at=m.created_at,
            last_retrieved_at=m.last_retrieved_at,
            importance=m.importance,
            embedding=None if m.embedding is None else m.embedding.astype(np.float32).tobytes(),
            evidence=json.dumps(list(m.evidence)),
        )

    def memory(self) -> Memory:
        return Memory(
            self.seq,
            self.kind,
            self.text,
            self.created_step,
            self.created_at,
            self.last_retrieved_at,
            self.importance,
            None if self.embedding is None else np.frombuffer(self.embedding, np.float32).copy(),
            tuple(json.loads(self.evidence)),
        )


@dataclass
class Memory:
    """A memory in a resident's stream (the in-memory twin of ``MemoryRecord``)."""

    seq: int
    kind: str
    text: str
    created_step: int
    created_at: NaiveDatetime
    last_retrieved_at: NaiveDatetime
    importance: int | None = None
    embedding: np.ndarray | None = None
    evidence: tuple[int, ...] = ()


@dataclass
class Retrieved:
    """A retrieved memory with the components of its score (shown by the viewer's inspector)."""

    memory: Memory
    score: float
    recency: float
    importance: float
    relevance: float


@dataclass
class MemoryStream:
    """One resident's memories in creation order."""

    resident: str
    memories: list[Memory] = field(default_factory=list)
    importance_since_reflection: int = 0
    _dirty: set[int] = field(default_factory=set)

    def add(
        self,
        kind: str,
        text: str,
        step: int,
        now: datetime,
        *,
        importance: int | None = None,
        evidence: tuple[int, ...] = (),
    ) -> Memory:
        if kind not in KINDS:
            raise ValueError(f"memory kind must be one of {', '.join(KINDS)}, not {kind!r}")
        m = Memory(len(self.memories), kind, text, step, now, now, importance, None, tuple(evidence))
        self.memories.append(m)
        self._dirty.add(m.seq)
        if importance is not None:
            self.importance_since_reflection += importance
        return m

    def set_importance(self, m: Memory, importance: int) -> None:
        if m.importance is None:
            self.importance_since_reflection += importance
        m.importance = importance
        self._dirty.add(m.seq)

    def set_embedding(self, m: Memory, vector: np.ndarray) -> None:
        m.embedding = np.asarray(vector, np.float32)
        self._dirty.add(m.seq)

    def recent(self, n: int, kinds: tuple[str, ...] | None = None) -> list[Memory]:
        out = [m for m in self.memories if kinds is None or m.kind in kinds]
        return out[-n:] if n > 0 else []

    def since(self, step: int) -> list[Memory]:
        return [m for m in self.memories if m.created_step >= step]

    def retrieve(
        self,
        query: np.ndarray,
        now: datetime,
        k: int = 5,
        weights: RetrievalWeights = RetrievalWeights(),
        *,
        touch: bool = True,
        kinds: tuple[str, ...] | None = None,
    ) -> list[Retrieved]:
        """The k best memories for a query embedding; retrieving them marks them as used now.

        Memories without an embedding yet have relevance 0; without an importance, 5 (the midpoint).
        """
        cands = [m for m in self.memories if kinds is None or m.kind in kinds]
        if not cands:
            return []
        hours = np.array([(now - m.last_retrieved_at).total_seconds() / 3600.0 for m in cands])
        imp = np.array([5 if m.importance is None else m.importance for m in cands], np.float64)
        q = np.asarray(query, np.float32)
        sim = np.array([float(m.embedding @ q) if m.embedding is not None else 0.0 for m in cands])
        s: Scores = score(hours, imp, sim, weights)
        best = top_k(s.total, k)
        out = [
            Retrieved(cands[i], float(s.total[i]), float(s.recency[i]), float(s.importance[i]), float(s.relevance[i]))
            for i in best
        ]
        if touch:
            for r in out:
                r.memory.last_retrieved_at = now
                self._dirty.add(r.memory.seq)
        return out

    def take_dirty(self) -> list[Memory]:
        dirty = [self.memories[i] for i in sorted(self._dirty)]
        self._dirty.clear()
        return dirty


class MemoryStore:
    """All residents' streams, and their persistence in SQLite."""

    def __init__(self, residents: list[str] | tuple[str, ...] = ()) -> None:
        self.streams: dict[str, MemoryStream] = {name: MemoryStream(name) for name in residents}

    def __getitem__(self, resident: str) -> MemoryStream:
        if resident not in self.streams:
            self.streams[resident] = MemoryStream(resident)
        return self.streams[resident]

    def __iter__(self):
        return iter(self.streams.values())

    def count(self) -> int:
        return sum(len(s.memories) for s in self.streams.values())

    def flush(self, session: Session, run_id: str = "") -> int:
        """Write every memory added or changed since the last flush (the caller commits); returns the count.
        ``run_id``: the run's key in a database shared by many runs (``""`` in a run's own ``run.db``)."""
        n = 0
        for stream in self.streams.values():
            for m in stream.take_dirty():
                session.merge(MemoryRecord.of(stream.resident, m, run_id))
                n += 1
        return n

    def load(self, session: Session, run_id: str = "") -> None:
        """Replace the streams with what the database holds for run ``run_id`` (resuming a run)."""
        streams: dict[str, MemoryStream] = {name: MemoryStream(name) for name in self.streams}
        query = select(MemoryRecord).where(MemoryRecord.run_id == run_id)
        rows = session.exec(query.order_by(MemoryRecord.resident, MemoryRecord.seq)).all()
        for r in rows:
            s = streams.setdefault(r.resident, MemoryStream(r.resident))
            if r.seq != len(s.memories):
                raise ValueError(f"memory table of {r.resident!r} has a gap at seq {len(s.memories)}")
            s.memories.append(r.memory())
        self.streams = streams

    def state_dict(self) -> dict:
        """Per-resident counters that are not in the memory rows themselves."""
        return {
            name: {"importance_since_reflection": s.importance_since_reflection} for name, s in self.streams.items()
        }

    def load_state_dict(self, state: dict) -> None:
        for name, d in state.items():
            self[name].importance_since_reflection = int(d["importance_since_reflection"])
