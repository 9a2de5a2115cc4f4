"""Conversations: who is talking with whom, the turns so far, and how they start and end.

A resident who decides to talk records an *intent*; intents are resolved at the start of the next
step in resident order (never in the order LLM calls happened to finish), so the same run gives
the same pairs. Each step a conversation advances by one exchange (each side speaks once), driven
by its initiator's coroutine, so the reply is conditioned on what was just said. It ends when a
side says goodbye (``end``), at the turn limit, or when one of them has to leave.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass
class Conversation:
    id: int
    a: str  # the initiator: its coroutine drives the exchange
    b: str
    place: str
    started_step: int
    turns: list[tuple[str, str, int]] = field(default_factory=list)  # (speaker, text, step)
    ended_step: int | None = None
    end_reason: str = ""
    news: list[tuple[str, str]] = field(default_factory=list)  # (speaker, line) lines that told a memory

    @property
    def ended(self) -> bool:
        return self.ended_step is not None

    def other(self, name: str) -> str:
        return self.b if name == self.a else self.a

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "participants": [self.a, self.b],
            "place": self.place,
            "started_step": self.started_step,
            "turns": [{"speaker": s, "text": t, "step": k} for s, t, k in self.turns],
            "ended": self.ended,
            "end_reason": self.end_reason,
        }


class Conversations:
    """All conversations of a town, the pending intents, and the per-resident index."""

    def __init__(self, max_turns: int = 8) -> None:
        self.max_turns = max_turns
        self.active: dict[str, Conversation] = {}
        self.history: list[Conversation] = []
        self.intents: list[tuple[int, str, str, str]] = []  # (initiator index, initiator, target, place)

    def of(self, name: str) -> Conversation | None:
        return self.active.get(name)

    def request(self, index: int, initiator: str, target: str, place: str) -> None:
        self.intents.append((index, initiator, target, place))

    def resolve(self, step: int, available: Callable[[str], bool]) -> list[Conversation]:
        """Start the conversations asked for last step, in initiator order; the first claim on a person wins."""
        started = []
        for _, a, b, place in sorted(self.intents):
            if a in self.active or b in self.active or not available(a) or not available(b):
                continue
            conv = Conversation(len(self.history), a, b, place, step)
            self.history.append(conv)
            self.active[a] = self.active[b] = conv
            started.append(conv)
        self.intents.clear()
        return started

    def say(self, conv: Conversation, speaker: str, text: str, step: int) -> None:
        conv.turns.append((speaker, text, step))

    def end(self, conv: Conversation, step: int, reason: str) -> None:
        conv.ended_step, conv.end_reason = step, reason
        for name in (conv.a, conv.b):
            if self.active.get(name) is conv:
                del self.active[name]

    def state_dict(self) -> dict:
        return {
            "history": [asdict(c) for c in self.history],
            "intents": [list(i) for i in self.intents],
        }

    def load_state_dict(self, state: dict) -> None:
        self.history = [
            Conversation(
                **{**c, "turns": [tuple(t) for t in c["turns"]], "news": [tuple(t) for t in c.get("news", [])]}
            )
            for c in state["history"]
        ]
        self.active = {}
        for c in self.history:
            if not c.ended:
                self.active[c.a] = self.active[c.b] = c
        self.intents = [tuple(i) for i in state["intents"]]  # type: ignore[misc]
