"""Turning the model's plans into gap-free time lines.

A small model's schedule may start late, skip hours, repeat a start or run past bedtime, and its
hour may add up to 45 or 80 minutes. These functions make whatever it wrote cover the interval
exactly (no gaps, no overlaps), so the resident always has something to do and a place to be.
Times are minutes after midnight; an interval that ends past midnight ends after 1440.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulacra.world import parse_time_of_day


@dataclass(frozen=True)
class Slot:
    """One piece of a time line: [start, end) doing ``activity`` at ``place``."""

    start: int
    end: int
    activity: str
    place: str
    emoji: str = ""


def day_bounds(wake: int, sleep: int) -> tuple[int, int]:
    """The waking interval; a bedtime before the wake time means after midnight."""
    return wake, sleep + 24 * 60 if sleep <= wake else sleep


def cover(items: list[tuple[int, str, str, str]], start: int, end: int, fallback: tuple[str, str, str]) -> list[Slot]:
    """Slots covering [start, end) from (start time, activity, place, emoji) items.

    Items are sorted by time; items at or past ``end`` are dropped, and of items with the same start
    the first written wins. The first slot is stretched back to ``start`` and each slot lasts until
    the next one begins, the last until ``end``. No usable item: one ``fallback`` slot.
    """
    if end <= start:
        return []
    seen: set[int] = set()
    kept = []
    for t, activity, place, emoji in sorted(items, key=lambda x: x[0]):
        t = max(t, start)
        if t >= end or t in seen:
            continue
        seen.add(t)
        kept.append((t, activity, place, emoji))
    if not kept:
        activity, place, emoji = fallback
        return [Slot(start, end, activity, place, emoji)]
    kept[0] = (start, *kept[0][1:])
    bounds = [t for t, *_ in kept] + [end]
    return [Slot(bounds[i], bounds[i + 1], a, p, e) for i, (_, a, p, e) in enumerate(kept)]


def schedule_slots(blocks: list[tuple[str, str, str]], wake: int, sleep: int, home: str) -> list[Slot]:
    """The day's hourly schedule from (HH:MM, activity, place) blocks, covering waking hours exactly."""
    start, end = day_bounds(wake, sleep)
    items = []
    for t, activity, place in blocks:
        m = parse_time_of_day(t)
        if m < wake - 60:  # an early-morning hour written for after midnight
            m += 24 * 60
        items.append((m, activity, place, ""))
    return cover(items, start, end, ("at home", home, "🏠"))


def sequence_slots(
    steps: list[tuple[int, str, str, str]], start: int, end: int, fallback: tuple[str, str, str]
) -> list[Slot]:
    """Consecutive (minutes, action, place, emoji) steps laid from ``start``, trimmed or stretched to ``end``."""
    items, t = [], start
    for minutes, action, place, emoji in steps:
        if t >= end:
            break
        items.append((t, action, place, emoji))
        t += max(int(minutes), 1)
    return cover(items, start, end, fallback)


def insert(slots: list[Slot], new: Slot) -> list[Slot]:
    """``slots`` with ``new`` laid over them: what it overlaps is cut back, split around it if need be."""
    out = []
    for s in slots:
        if s.end <= new.start or s.start >= new.end:
            out.append(s)
            continue
        if s.start < new.start:
            out.append(Slot(s.start, new.start, s.activity, s.place, s.emoji))
        if s.end > new.end:
            out.append(Slot(new.end, s.end, s.activity, s.place, s.emoji))
    return sorted([*out, new], key=lambda s: s.start)


def slot_at(slots: list[Slot], minute: int) -> Slot | None:
    """The slot covering ``minute`` (also tried a day later, for after-midnight slots)."""
    for m in (minute, minute + 24 * 60):
        for s in slots:
            if s.start <= m < s.end:
                return s
    return None
