"""What all residents' minds share: the LLM port, the embedder, memory, facts, conversations, the log.

Every cognitive call goes through ``Society.ask``: it tags the call (purpose, resident, step) for the
recorder, derives its sampling seed from (run seed, resident, step, purpose, n) so the same run asks
the same questions with the same seeds, and keeps per-purpose counts of calls, tokens and prefix-cache
hits. Embeddings of new memories are computed in one call per step (``embed_new``), and importance
is scored once per distinct text, however many residents saw the same thing, and applied for
everyone at the step's end (``end_step``).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel

from simulacra.inference.port import LLM, RequestError, call_meta

from . import prompts
from .conversation import Conversations
from .facts import FactTracker, TownEvent, TrackedFact
from .memory import Memory, MemoryStore, MemoryStream
from .retrieval import RetrievalWeights
from .schemas import Importance


class TextEmbedder(Protocol):
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class MindConfig:
    """Knobs of the architecture; defaults follow the paper where it gives one."""

    retrieval: RetrievalWeights = field(default_factory=RetrievalWeights)
    top_k: int = 5
    reflection_threshold: int = 150  # summed importance since the last reflection
    max_turns: int = 8  # utterances per conversation
    notice_cooldown_steps: int = 6  # someone unseen for this long is "new" again
    importance_prior_weight: float = 2 / 3  # share of the embedding prior in importance (0: the LLM's score only)
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    line_candidates: int = 4  # samples per conversation line (they share the prompt's KV blocks), reranked
    no_repeat_ngram: int = 4  # a line may not repeat this many tokens in a row of the conversation (0: off)


@dataclass
class KindStats:
    calls: int = 0
    invalid: int = 0  # output cut short or not valid for the schema
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


MAX_TOKENS = {
    "importance": 12,
    "day_plan": 200,
    "schedule": 480,
    "hour_plan": 420,
    "reaction": 48,
    "utterance": 80,
    "questions": 120,
    "insights": 200,
    "interview": 120,
    "yes_no": 8,
}


# SmolLM2-135M rates nearly every memory 2 (measured: 8 of 8 texts, from a routine walk to a death), so
# its score is blended with a prior: how much closer a memory is (MiniLM cosine) to poignant than to
# routine prototypes, mapped to 1..10. See docs/AGENTS.md.
POIGNANT = (
    "I decided to run in the election",
    "I am hosting a party and inviting everyone",
    "someone I love died",
    "I got a new job",
    "we are getting married",
    "a friend told me important news",
    "I had an argument with a friend",
    "I am worried about my future",
)
ROUTINE = (
    "someone is at home",
    "someone is walking to a place",
    "the bed is in use",
    "the stove is on",
    "I am eating breakfast",
    "someone is sleeping",
    "someone is talking with someone",
    "my plan for the day: breakfast, work, a walk",
)


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any parts (not Python's salted hash)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Society:
    """The shared services of one town's minds."""

    def __init__(
        self,
        llm: LLM,
        embedder: TextEmbedder,
        *,
        residents: Sequence[str],
        town_text: str,
        facts: Sequence[TrackedFact] = (),
        events: Sequence[TownEvent] = (),
        config: MindConfig | None = None,
    ) -> None:
        self.llm = llm
        self.embedder = embedder
        self.config = config or MindConfig()
        self.town_text = town_text
        self.memories = MemoryStore(list(residents))
        self.facts = FactTracker(list(facts))
        self.events = list(events)  # what residents may hear of and plan to go to
        self.conversations = Conversations(self.config.max_turns)
        self.stats: dict[str, KindStats] = defaultdict(KindStats)
        self.step = -1
        self.now: datetime | None = None
        self._events: list[tuple[int, int, dict]] = []  # (resident index, n, event)
        self._event_n: dict[int, int] = defaultdict(int)
        self._call_n: dict[tuple, int] = defaultdict(int)
        self._importance: dict[str, int] = {}
        self._importance_pending: dict[str, asyncio.Future] = {}
        self._embed_flush: asyncio.Future | None = None
        self._prototypes: tuple[np.ndarray, np.ndarray] | None = None
        self._scores: list[tuple[int, MemoryStream, list[Memory], list[int]]] = []  # applied by end_step
        self.busy: frozenset[str] = frozenset()  # residents in a conversation at the start of the step
        self.said: set[str] = set()  # normalised conversation lines of earlier steps (what "duplicate" means)
        self._said_now: list[str] = []  # this step's, added to `said` by end_step (not as calls finish)

    async def ask(
        self,
        kind: str,
        resident: str | None,
        messages: prompts.Messages,
        schema: type[BaseModel],
        *,
        temperature: float | None = None,
        seed_key: str | None = None,
    ) -> Any:
        """One structured call; the validated object, or None when the output was cut short or refused."""
        result = await self._generate(kind, resident, messages, schema, temperature=temperature, seed_key=seed_key)
        return result.parsed if result is not None else None

    async def ask_samples(
        self, kind: str, resident: str | None, messages: prompts.Messages, schema: type[BaseModel], **sampling: Any
    ) -> list[Any]:
        """One structured call for several candidates (``n``, penalties: the port's sampling keywords); their
        validated objects, None for each one cut short. The samples share the prompt's KV blocks."""
        result = await self._generate(kind, resident, messages, schema, **sampling)
        if result is None:
            return []
        return [s.parsed for s in result.samples] if result.samples else [result.parsed]

    async def _generate(
        self,
        kind: str,
        resident: str | None,
        messages: prompts.Messages,
        schema: type[BaseModel],
        *,
        temperature: float | None = None,
        seed_key: str | None = None,
        **sampling: Any,
    ) -> Any:
        n_key = (resident, self.step, kind, seed_key)
        n = self._call_n[n_key]
        self._call_n[n_key] += 1
        seed = derive_seed(self.config.seed, resident, self.step, kind, seed_key, n)
        temp = self.config.temperature if temperature is None else temperature
        stats = self.stats[kind]
        stats.calls += 1
        t0 = time.perf_counter()
        try:
            with call_meta(purpose=kind, resident=resident, step=self.step):
                result = await self.llm.generate(
                    messages,
                    schema=schema,
                    max_tokens=MAX_TOKENS[kind],
                    temperature=temp,
                    top_p=self.config.top_p,
                    seed=seed,
                    **sampling,
                )
        except RequestError:
            stats.invalid += 1
            return None
        finally:
            stats.wall_s += time.perf_counter() - t0
        stats.prompt_tokens += result.prompt_tokens
        stats.cached_tokens += result.cached_tokens
        stats.completion_tokens += result.completion_tokens
        if result.parsed is None:
            stats.invalid += 1
        return result

    async def importance(self, text: str) -> int:
        """1–10, asked once per distinct text (concurrent askers share the one call), blended with the prior."""
        if text in self._importance:
            return self._importance[text]
        pending = self._importance_pending.get(text)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._importance_pending[text] = pending
            msgs = prompts.importance(text)
            parsed = await self.ask("importance", None, msgs, Importance, temperature=0.0, seed_key=text)
            llm = int(parsed.score) if parsed is not None else 5
            w = self.config.importance_prior_weight
            value = min(10, max(1, round((1 - w) * llm + w * self.importance_prior(text))))
            self._importance[text] = value
            del self._importance_pending[text]
            pending.set_result(value)
            return value
        return await pending

    def score_at_step_end(self, index: int, stream: MemoryStream, memories: list[Memory], scores: list[int]) -> None:
        """Hold a resident's importance scores until ``end_step``, so no one sees them mid-step."""
        self._scores.append((index, stream, memories, list(scores)))

    def end_step(self) -> None:
        """Once every resident has decided: apply the step's importance scores in resident order.

        Applying them as each resident's own calls returned made a partner's retrieval in a
        conversation depend on which call finished first (a replay, whose calls return at once,
        retrieved other memories than the recorded run: a `ReplayMissError`).
        """
        for _, stream, memories, scores in sorted(self._scores, key=lambda x: x[0]):
            for m, score in zip(memories, scores, strict=True):
                stream.set_importance(m, score)
        self._scores.clear()
        self.said.update(self._said_now)
        self._said_now.clear()

    def spoke(self, normalised_line: str) -> None:
        """A conversation line was said this step: a duplicate for everyone from the next step on."""
        self._said_now.append(normalised_line)

    def importance_prior(self, text: str) -> float:
        """1..10 from how much closer ``text`` is to poignant than to routine prototypes (MiniLM cosine)."""
        if self._prototypes is None:
            self._prototypes = (self.embed(POIGNANT), self.embed(ROUTINE))
        v = self.embed([text])[0]
        high, low = float((self._prototypes[0] @ v).max()), float((self._prototypes[1] @ v).max())
        return 1.0 + 9.0 / (1.0 + math.exp(-8.0 * (high - low)))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.embed(list(texts))

    async def embed_new(self) -> None:
        """Embed every memory that has no embedding yet, for all residents in one batch.

        The first resident to call it schedules the batch for after every other resident's
        coroutine has had its turn (they all start in the same loop iteration), then all wait on it.
        """
        if self._embed_flush is None:
            loop = asyncio.get_running_loop()
            self._embed_flush = loop.create_future()
            loop.call_soon(self._flush_embeddings)
        await asyncio.shield(self._embed_flush)

    def _flush_embeddings(self) -> None:
        fut, self._embed_flush = self._embed_flush, None
        try:
            todo = [(s, m) for s in self.memories for m in s.memories if m.embedding is None]
            if todo:
                vectors = self.embed([m.text for _, m in todo])
                for (s, m), v in zip(todo, vectors, strict=True):
                    s.set_embedding(m, v)
        except Exception as exc:  # noqa: BLE001 - handed to every waiter
            fut.set_exception(exc)
        else:
            fut.set_result(None)

    def event(self, index: int, kind: str, resident: str, **data: Any) -> None:
        """Log an event; events come out ordered by (resident, order within the resident), not by timing."""
        n = self._event_n[index]
        self._event_n[index] += 1
        self._events.append((index, n, {"step": self.step, "kind": kind, "resident": resident, **data}))

    def take_events(self) -> list[dict]:
        """The events logged since the last call, in a deterministic order."""
        events = [e for _, _, e in sorted(self._events, key=lambda x: (x[0], x[1]))]
        self._events.clear()
        self._event_n.clear()
        return events

    def state_dict(self) -> dict:
        """What a resumed run needs besides the memory rows: facts, conversations, counters, caches."""
        return {
            "step": self.step,
            "facts": self.facts.state_dict(),
            "conversations": self.conversations.state_dict(),
            "memories": self.memories.state_dict(),
            "importance": dict(self._importance),
            "stats": {k: vars(v) for k, v in self.stats.items()},
            "said": sorted(self.said),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.facts.load_state_dict(state["facts"])
        self.conversations.load_state_dict(state["conversations"])
        self.memories.load_state_dict(state["memories"])
        self._importance = {k: int(v) for k, v in state["importance"].items()}
        self.stats = defaultdict(KindStats, {k: KindStats(**v) for k, v in state["stats"].items()})
        self.said = set(state.get("said", ()))  # runs saved before 2026-12-03 did not keep it

    def call_stats(self) -> dict[str, dict[str, float]]:
        """Per purpose: calls, invalid outputs, tokens, prefix-cache hit rate, wall seconds."""
        return {
            kind: {
                "calls": s.calls,
                "invalid": s.invalid,
                "prompt_tokens": s.prompt_tokens,
                "cached_tokens": s.cached_tokens,
                "completion_tokens": s.completion_tokens,
                "hit_rate": s.hit_rate,
                "wall_s": s.wall_s,
            }
            for kind, s in sorted(self.stats.items())
        }
