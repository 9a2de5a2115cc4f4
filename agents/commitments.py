"""Commitments made in conversation: "See you at the Lantern Pub at 7 pm!" becomes, for both partners, a
meeting they decide on in their next plan like any event they have heard of (Park et al.: what was said
is retrieved when planning and can change the plan).

A line commits when it names one of the town's places in full and a clock time still to come: today,
tomorrow or a named weekday within the week. The check is plain text, so it costs no call and reads the
same on replay; a line that carries a tracked fact is left to the fact's own event.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta

from .facts import TownEvent

MEETING_MINUTES = 60
_NUMBERS = "one two three four five six seven eight nine ten eleven twelve".split()
_TIME = re.compile(
    r"\b(?:at|by|around|from)\s+(\d{1,2}|" + "|".join(_NUMBERS) + r")(?:[:.](\d{2}))?\s*(a\.?m\.?|p\.?m\.?|o'clock)?",
    re.IGNORECASE,
)
_WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday".split()


def meeting_time(line: str, now: datetime) -> datetime | None:
    """The first clock time a line names that is still to come, on the day it names (default today).

    Without am/pm, 1-7 o'clock is read as the afternoon or evening (no one meets at 3 at night)."""
    text = line.lower()
    day = now.date()
    if "tomorrow" in text:
        day += timedelta(days=1)
    else:
        for i, name in enumerate(_WEEKDAYS):
            if re.search(rf"\b{name}\b", text):
                day += timedelta(days=(i - now.weekday()) % 7)
                break
    for m in _TIME.finditer(line):
        word, minutes, suffix = m.group(1).lower(), int(m.group(2) or 0), (m.group(3) or "").lower()
        hour = _NUMBERS.index(word) + 1 if word in _NUMBERS else int(word)
        if hour > 23 or minutes > 59:
            continue
        if suffix.startswith("p") and hour < 12:
            hour += 12
        elif suffix.startswith("a") and hour == 12:
            hour = 0
        elif not suffix.startswith("a") and 1 <= hour <= 7:
            hour += 12
        at = datetime.combine(day, datetime.min.time()).replace(hour=hour, minute=minutes)
        if at > now:
            return at
    return None


def named_place(line: str, places: Sequence[str]) -> str | None:
    """The longest of the town's place names the line names in full (case aside)."""
    found = [p for p in places if re.search(r"\b" + re.escape(p) + r"\b", line, re.IGNORECASE)]
    return max(found, key=len) if found else None


def proposed(line: str, places: Sequence[str], now: datetime) -> tuple[str, datetime] | None:
    """The place and start of the meeting a line proposes; None when it names no place or no time to come."""
    place, start = named_place(line, places), meeting_time(line, now)
    return None if place is None or start is None else (place, start)


def meeting(me: str, other: str, host: str, place: str, start: datetime) -> TownEvent:
    """The meeting as ``me`` plans it ("meeting Ada Quill at Pell Café, 17:00-18:00"); one id for both."""
    pair = " + ".join(sorted((me, other)))
    end = start + timedelta(minutes=MEETING_MINUTES)
    return TownEvent(f"meet {pair} at {place} {start:%Y-%m-%d %H:%M}", f"meeting {other}", host, place, start, end)


def to_json(ev: TownEvent) -> dict:
    return {
        "id": ev.id,
        "title": ev.title,
        "host": ev.host,
        "place": ev.place,
        "start": ev.start.isoformat(),
        "end": ev.end.isoformat(),
    }


def from_json(d: dict) -> TownEvent:
    return TownEvent(
        d["id"], d["title"], d["host"], d["place"], datetime.fromisoformat(d["start"]), datetime.fromisoformat(d["end"])
    )
