"""Prompts, written for a 135M-parameter model and for the engine's prefix cache.

Every prompt is two chat messages. The system message is the stable part: the town (the same for
every resident) and then the resident's persona (the same for every call of that resident), so the
engine computes it once and reuses it. The user message is the changing part: the task, the time,
the retrieved memories. Tasks are short and concrete and show one example of the answer; the
schema (``schemas.py``) guarantees the form, the example steers the content.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Persona:
    """What a resident's prompts say about them (from the scenario)."""

    name: str
    age: int
    occupation: str
    traits: tuple[str, ...]
    lifestyle: str
    home: str | None
    workplace: str | None
    work_hours: str | None  # "09:00-17:00"
    relations: tuple[tuple[str, str], ...]  # (name, note)

    def describe(self) -> str:
        lines = [f"You are {self.name}, {self.age}, {self.occupation or 'a resident'}."]
        if self.traits:
            lines.append(f"You are {', '.join(self.traits)}.")
        if self.lifestyle:
            lines.append(self.lifestyle)
        if self.home:
            lines.append(f"You live at {self.home}.")
        if self.workplace:
            lines.append(f"You work at {self.workplace}" + (f", {self.work_hours}." if self.work_hours else "."))
        if self.relations:
            lines.append("You know: " + "; ".join(f"{n} ({note})" if note else n for n, note in self.relations) + ".")
        return " ".join(lines)


def system(town: str, places: Sequence[str], persona: Persona) -> str:
    """The stable prefix: town first (shared by everyone), then the persona (shared by a resident's calls)."""
    return f"{town}\nPlaces: {', '.join(places)}.\n\n{persona.describe()}\nAnswer in JSON."


def _numbered(lines: Sequence[str]) -> str:
    return "\n".join(f"{i}. {t}" for i, t in enumerate(lines, 1)) if lines else "(nothing)"


def _bullets(lines: Sequence[str]) -> str:
    return "\n".join(f"- {t}" for t in lines) if lines else "- (nothing)"


def chat(system_text: str, user: str) -> Messages:
    return [{"role": "system", "content": system_text}, {"role": "user", "content": user}]


IMPORTANCE_SYSTEM = (
    "Rate how important a memory is to a person, from 1 to 10. 1 is mundane, like brushing teeth or seeing a "
    'bed. 10 is life-changing, like a wedding or losing a job. Example: "Maria is making coffee" -> '
    '{"score": 2}. "Tom asked me to his party on Friday" -> {"score": 6}.'
)


def importance(text: str) -> Messages:
    return chat(IMPORTANCE_SYSTEM, f"Memory: {text}")


def _events(events: Sequence[str]) -> tuple[str, dict]:
    """The known events as a question and the example's answer: going to the first (why: the invitation)."""
    if not events:
        return "", {}
    ask = f'\nYou know of: {"; ".join(events)}. In "event", name the one you will go to, or "none"; say why.'
    return ask, {"event": events[0], "why": "I was invited and want to go"}


def day_plan(
    sys: str, date: str, memories: Sequence[str], example: Sequence[str], wake: str, events: Sequence[str] = ()
) -> Messages:
    """``example`` is built from the resident's own routine: a small model copies examples, so they must fit.
    ``events``: the labels of the events the resident knows of today, offered as the plan's ``event``."""
    ask, choice = _events(events)
    return chat(
        sys,
        f"It is {date}, morning. You remember:\n{_bullets(memories)}{ask}\n"
        "When do you wake up, and what 3 to 6 things will you do today? Example: "
        + json.dumps({"wake_up": wake, "plan": list(example), **choice}, ensure_ascii=False),
    )


def schedule(sys: str, date: str, plan: Sequence[str], wake: str, sleep: str, example: Sequence[dict]) -> Messages:
    return chat(
        sys,
        f"It is {date}. Your plan today:\n{_bullets(plan)}\n"
        f"Write your schedule from {wake} to {sleep}: blocks with a start hour, an activity and a place "
        "from the list. Example: " + json.dumps({"blocks": list(example)}, ensure_ascii=False),
    )


def hour_plan(
    sys: str,
    time: str,
    until: str,
    activity: str,
    place: str,
    emoji: str,
    memories: Sequence[str],
    note: str = "",
    events: Sequence[str] = (),
) -> Messages:
    """``events``: events heard of since the day was planned, offered as the plan's ``event``."""
    extra = f"\n{note}" if note else ""
    ask, choice = _events(events)
    first = {"minutes": 10, "action": activity, "emoji": emoji, "place": place}
    example = json.dumps({"actions": [first]}, ensure_ascii=False)[:-2] + ", ...]"
    if choice:
        example += ", " + json.dumps(choice, ensure_ascii=False)[1:-1]
    return chat(
        sys,
        f"It is {time}. Your schedule says: {activity} at {place}, until {until}.{extra}\n"
        f"You remember:\n{_bullets(memories)}{ask}\n"
        f"Break the time from {time} to {until} into steps of 5, 10 or 15 minutes: what you do, an emoji and "
        "the place. Example: " + example + "}",
    )


def reaction(
    sys: str, time: str, doing: str, place: str, noticed: str, memories: Sequence[str], other: str, last_talk: str
) -> Messages:
    """With someone to talk to, "talk" is offered first and the last conversation is stated: measured on
    SmolLM2-135M, the choice then follows that fact (listed last, "talk" was almost never picked)."""
    if other:
        talked = f"You talked with {other} at {last_talk}." if last_talk else f"You have not talked to {other} today."
        ask = f'{talked} Do you "talk" to {other}, "continue" what you are doing, or "react" (change your plan)?'
        example = '{"decision": "talk", "reason": "to say good morning"}'
    else:
        ask = 'Do you "continue" what you are doing, or "react" (change your plan)?'
        example = '{"decision": "continue", "reason": "it does not concern me"}'
    return chat(
        sys,
        f"It is {time}. You are {doing} at {place}. You notice: {noticed}.\n"
        f"You remember:\n{_bullets(memories)}\n{ask} Example: {example}",
    )


# The utterance prompt's instructions, also what `lines.leaks` looks for in a line (the model repeating them).
UTTERANCE_INSTRUCTIONS = (
    "one or two short sentences",
    "Set end to true to say goodbye",
    "Conversation so far",
    "you speak first",
    "your next line",
    "Answer in JSON",
)


def utterance(
    sys: str,
    time: str,
    place: str,
    other: str,
    note: str,
    memories: Sequence[str],
    turns: Sequence[tuple[str, str]],
    example: str,
    example_end: bool,
    topic: str = "",
) -> Messages:
    """``example`` is built by the mind from ``topic`` (what it wants to tell): SmolLM2-135M echoes the
    example's line, so a line made of a memory is how a small model brings up what is on its mind (and how
    news travels)."""
    so_far = "\n".join(f"{who}: {text}" for who, text in turns) if turns else "(you speak first)"
    about = f" ({note})" if note else ""
    want = f"You want to tell {other}: {topic}\n" if topic else ""
    return chat(
        sys,
        f"It is {time}, at {place}. You are talking with {other}{about}.\n"
        f"You remember:\n{_bullets(memories)}\n"
        f"Conversation so far:\n{so_far}\n{want}"
        f"Say your next line to {other}: {UTTERANCE_INSTRUCTIONS[0]}. {UTTERANCE_INSTRUCTIONS[1]}. Example: "
        + json.dumps({"says": example, "end": example_end}, ensure_ascii=False),
    )


def questions(sys: str, memories: Sequence[str]) -> Messages:
    return chat(
        sys,
        f"Your recent memories:\n{_numbered(memories)}\n"
        "What are the 3 most important questions about your life that these raise? "
        'Example: {"questions": ["Why is Sam worried?", "What should I cook for the party?"]}',
    )


def insights(sys: str, question: str, memories: Sequence[str]) -> Messages:
    return chat(
        sys,
        f"Question: {question}\nWhat you remember:\n{_numbered(memories)}\n"
        "What 1 to 3 insights can you draw? Cite the numbers they rest on. "
        'Example: {"insights": [{"insight": "Sam cares about the garden", "because": [1, 3]}]}',
    )


def interview(sys: str, time: str, question: str, memories: Sequence[str], *, yes_no: bool = False) -> Messages:
    """The example answer is the best-ranked memory (or "I don't know"), never a fixed sentence: the
    135M model echoes a fixed example ("Yes, Lena told me …") whatever it remembers. An open answer cites
    the numbered memories it rests on (``schemas.cited_answer``)."""
    if yes_no:
        how = (
            'Answer "yes" if what you remember shows it, else "no". '
            'Examples: {"answer": "no"} when you remember nothing about it; {"answer": "yes"} when you do.'
        )
        listed = _bullets(memories)
    else:
        example = (
            {"answer": memories[0][:200], "because": [1]} if memories else {"answer": "I don't know.", "because": []}
        )
        how = (
            'Answer in character, in one to three sentences, only from what you remember; in "because", give the '
            "numbers of the memories your answer rests on ([] if none). Example: "
            + json.dumps(example, ensure_ascii=False)
        )
        listed = _numbered(memories)
    return chat(sys, f"It is {time}. Someone asks you: {question}\nWhat you remember:\n{listed}\n{how}")
