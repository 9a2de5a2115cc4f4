"""Ground truth for information diffusion: who knows each tracked fact, and who told them.

A fact spreads only through what is said. When a resident who knows a fact says something that
mentions it (one of the fact's keywords, as a whole word), every listener who did not know it
learns it, with provenance (from whom, at which step, the words used). A mention by someone who
does not know the fact is kept apart (``unsourced``): the small model guessing or hallucinating,
which diffusion must not count. This is what lets diffusion be measured without asking the model;
interviews (the paper's method) are compared against it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime


@dataclass(frozen=True)
class TrackedFact:
    id: str
    holder: str
    text: str
    keywords: tuple[str, ...]


@dataclass(frozen=True)
class TownEvent:
    """Something residents can hear of and go to; ``information`` is the tracked fact announcing it."""

    id: str
    title: str
    host: str
    place: str
    start: datetime
    end: datetime
    information: str | None = None

    def label(self) -> str:
        """How plans name it: title, place and hours (what a resident must know to go)."""
        return f"{self.title} at {self.place.split(':')[0]}, {self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True)
class Provenance:
    fact: str
    learner: str
    source: str | None  # None: knew it from the start
    step: int
    time: str  # sim time, ISO
    words: str = ""


class FactTracker:
    """Who knows what, learned from whom."""

    def __init__(self, facts: list[TrackedFact]) -> None:
        self.facts = {f.id: f for f in facts}
        self._patterns = {
            f.id: re.compile(r"\b(" + "|".join(re.escape(k) for k in f.keywords) + r")\b", re.IGNORECASE)
            for f in facts
            if f.keywords
        }
        self.known: dict[str, dict[str, Provenance]] = {f.id: {} for f in facts}
        self.unsourced: list[Provenance] = []

    def seed(self, step: int, now: datetime) -> None:
        """Each fact's holder knows it at the start."""
        for f in self.facts.values():
            self.known[f.id].setdefault(f.holder, Provenance(f.id, f.holder, None, step, now.isoformat()))

    def mentions(self, text: str) -> list[str]:
        """The ids of the facts a text mentions."""
        return [fid for fid, pat in self._patterns.items() if pat.search(text)]

    def heard_of(self, resident: str, event: TownEvent, memories: list[str]) -> bool:
        """Whether ``resident`` has heard of ``event``: they host it, were told its announcing fact (by a line
        that carried it, from someone who knew: the ground truth above), or, for an event no fact announces,
        remember its title. Keywords alone are too loose a test (measured on a generated town: a barista's
        "I work at Iqbal Café" matched the party's keyword "Iqbal Café")."""
        if resident == event.host:
            return True
        if event.information in self.known:
            return self.knows(resident, event.information)
        return any(event.title.lower() in m.lower() for m in memories)

    def knows(self, resident: str, fact: str) -> bool:
        return resident in self.known[fact]

    def hear(self, speaker: str, listeners: list[str], text: str, step: int, now: datetime) -> list[Provenance]:
        """Someone said ``text`` to ``listeners``: returns who learned which fact from it."""
        learned = []
        for fid in self.mentions(text):
            if not self.knows(speaker, fid):
                self.unsourced.append(Provenance(fid, "", speaker, step, now.isoformat(), text))
                continue
            for who in listeners:
                if who != speaker and who not in self.known[fid]:
                    p = Provenance(fid, who, speaker, step, now.isoformat(), text)
                    self.known[fid][who] = p
                    learned.append(p)
        return learned

    def counts(self) -> dict[str, int]:
        return {fid: len(k) for fid, k in self.known.items()}

    def state_dict(self) -> dict:
        return {
            "known": {fid: [asdict(p) for p in k.values()] for fid, k in self.known.items()},
            "unsourced": [asdict(p) for p in self.unsourced],
        }

    def load_state_dict(self, state: dict) -> None:
        self.known = {fid: {p["learner"]: Provenance(**p) for p in ps} for fid, ps in state["known"].items()}
        self.unsourced = [Provenance(**p) for p in state["unsourced"]]
