"""The output schema of every cognitive call.

The engine constrains decoding to these schemas, so a 135M model cannot produce text the code
cannot read. Where the answer must be one of the town's things (a place, a resident, an emoji, a
memory number), the schema lists the valid values, so the model cannot invent a location either.
Schemas that depend on the town are built once per town by ``TownSchemas``.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Literal

from pydantic import BaseModel, Field, create_model

from simulacra.world import format_minutes

EMOJIS = (
    "😴", "🍳", "☕", "🍽️", "🚶", "💼", "📚", "✍️", "🧹", "🛒", "🌳", "🎨", "🎵", "🗣️", "💬",
    "🏠", "🧑‍🍳", "🍞", "🌹", "🔧", "📖", "🧒", "🎉", "🏃", "🛁", "📞", "💻", "🧺", "🍺", "🙂",
)  # fmt: skip

Say = Field(min_length=1, max_length=160)
NO_EVENT = "none"  # the event option of a plan that goes to none of the known events
Short = Field(min_length=1, max_length=48)


class Importance(BaseModel):
    """How poignant a memory is, 1 (mundane) to 10 (life-changing)."""

    score: Literal[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


class Questions(BaseModel):
    """Reflection, first half: the salient questions the recent memories raise."""

    questions: list[Annotated[str, Field(min_length=1, max_length=80)]] = Field(min_length=1, max_length=3)


class Reaction(BaseModel):
    """What to do on noticing someone or something."""

    decision: Literal["continue", "react", "talk"]
    reason: str = Short


class Utterance(BaseModel):
    """One turn of a conversation."""

    says: str = Say
    end: bool


class Answer(BaseModel):
    """An interview answer, in character."""

    answer: str = Field(min_length=1, max_length=300)


@cache
def cited_answer(n_memories: int) -> type[BaseModel]:
    """An interview answer that names the numbered memories it rests on (none: it knows nothing of it),
    so a measure can check the memories rather than the answer's words."""
    index = Literal[tuple(range(1, max(n_memories, 1) + 1))]  # type: ignore[valid-type]
    return create_model(
        "Answer",
        answer=(str, Field(min_length=1, max_length=300)),
        because=(list[index], Field(max_length=3)),
        __doc__="An interview answer, in character, citing its memories.",
    )


class YesNo(BaseModel):
    """A yes/no interview answer."""

    answer: Literal["yes", "no"]


class TownSchemas:
    """The schemas whose valid values come from one town: its places and waking hours."""

    def __init__(self, places: list[str]) -> None:
        self.places = list(places)
        self._with_event: dict[tuple[str, tuple[str, ...]], type[BaseModel]] = {}
        place = Literal[tuple(self.places)]  # type: ignore[valid-type]
        emoji = Literal[EMOJIS]  # type: ignore[valid-type]
        wake = Literal[tuple(format_minutes(m) for m in range(5 * 60, 10 * 60 + 1, 30))]  # type: ignore[valid-type]
        hours = Literal[tuple(format_minutes(h * 60) for h in range(24))]  # type: ignore[valid-type]

        self.DayPlan = create_model(
            "DayPlan",
            wake_up=(wake, ...),
            plan=(list[Annotated[str, Short]], Field(min_length=3, max_length=6)),
            __doc__="The morning's broad plan for the day.",
        )
        self.Block = create_model("Block", start=(hours, ...), activity=(str, Short), place=(place, ...))
        self.Schedule = create_model(
            "Schedule", blocks=(list[self.Block], Field(min_length=2, max_length=8)), __doc__="An hourly schedule."
        )
        self.Step = create_model(
            "Step",
            minutes=(Literal[5, 10, 15], ...),
            action=(str, Short),
            emoji=(emoji, ...),
            place=(place, ...),
        )
        self.HourPlan = create_model(
            "HourPlan", actions=(list[self.Step], Field(min_length=2, max_length=4)), __doc__="An hour, in 5–15 min."
        )

    def with_event(self, plan: type[BaseModel], labels: tuple[str, ...]) -> type[BaseModel]:
        """``plan`` (DayPlan or HourPlan) with a choice among the known events ("none": not going) and why."""
        key = (plan.__name__, labels)
        if key not in self._with_event:
            self._with_event[key] = create_model(
                plan.__name__,
                __base__=plan,
                event=(Literal[(*labels, NO_EVENT)], ...),  # type: ignore[valid-type]
                why=(str, Short),
            )
        return self._with_event[key]

    def insights(self, n_memories: int) -> type[BaseModel]:
        """Reflection, second half: insights that cite the numbered memories they rest on."""
        index = Literal[tuple(range(1, max(n_memories, 1) + 1))]  # type: ignore[valid-type]
        item = create_model("Insight", insight=(str, Field(min_length=1, max_length=120)), because=(list[index], ...))
        return create_model("Insights", insights=(list[item], Field(min_length=1, max_length=3)))
