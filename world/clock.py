"""The town clock: a start date-time and a fixed number of minutes per step.

Time is a pure function of the step count (``start + steps * minutes_per_step``), so saving and
restoring a town restores its clock by restoring ``steps``; nothing drifts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta

_HHMM = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*$")


def parse_time_of_day(value: str | time | int) -> int:
    """Minutes after midnight for ``"17:00"``, a ``datetime.time`` or a minute count (0..1439).

    Raises ``ValueError`` with the accepted forms, so a scenario error can say what to write.
    """
    if isinstance(value, time):
        return value.hour * 60 + value.minute
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < 24 * 60:
            return value
        raise ValueError(f"{value} is not a minute of the day (0..1439); write a time such as '17:00'")
    m = _HHMM.match(str(value))
    if m:
        h, mi = int(m.group(1)), int(m.group(2))
        if h < 24 and mi < 60:
            return h * 60 + mi
        if h == 24 and mi == 0:
            return 24 * 60 - 1
    raise ValueError(f"{value!r} is not a time of day; write it as HH:MM, e.g. '07:30' or '17:00'")


def format_minutes(minute: int) -> str:
    """``"HH:MM"`` for a minute of the day; minutes past midnight wrap (1500 → ``"01:00"``, -30 → ``"23:30"``).

    The one time-of-day formatter (``parse_time_of_day`` reads it back), for the world, the minds and
    the scenario files alike.
    """
    minute %= 24 * 60
    return f"{minute // 60:02d}:{minute % 60:02d}"


# (start minute, name): the part of the day that begins at that minute.
DAY_PARTS = ((0, "night"), (5 * 60, "early morning"), (8 * 60, "morning"), (12 * 60, "afternoon"), (17 * 60, "evening"))
DAY_PARTS_LATE = (22 * 60, "night")


@dataclass(frozen=True)
class Clock:
    """Simulated time. ``steps`` is the model's step counter; every helper takes it explicitly."""

    start: datetime
    minutes_per_step: int = 10

    def __post_init__(self) -> None:
        if self.minutes_per_step <= 0:
            raise ValueError(f"minutes_per_step must be positive, got {self.minutes_per_step}")

    @property
    def step_delta(self) -> timedelta:
        """The simulated time one step covers."""
        return timedelta(minutes=self.minutes_per_step)

    def at(self, steps: int) -> datetime:
        """The simulated date-time after ``steps`` steps."""
        return self.start + steps * self.step_delta

    def step_of(self, when: datetime) -> int:
        """The first step whose time is at or after ``when`` (so an event starting then is seen that step)."""
        minutes = (when - self.start).total_seconds() / 60
        return max(0, -int(-minutes // self.minutes_per_step))

    def steps_in(self, hours: float) -> int:
        """The whole number of steps nearest to ``hours`` simulated hours (``round``: halves go to the even step).

        Nearest, not rounded up (as a scenario's ``duration`` is, in whole minutes): ``hours`` is a float
        that a person types or a caller computes back from a step count (``hours_of``), and rounding up
        would turn float error into an extra step (7 steps of 10 min are 1.1666… h, which is 7.000000000000001
        steps again).
        """
        return round(hours * 60 / self.minutes_per_step)

    def hours_of(self, steps: int) -> float:
        """The simulated hours ``steps`` steps cover (``steps_in`` reads it back exactly)."""
        return steps * self.minutes_per_step / 60

    def minute_of_day(self, steps: int) -> int:
        """Minutes after midnight at ``steps``."""
        t = self.at(steps)
        return t.hour * 60 + t.minute

    def day(self, steps: int) -> int:
        """Days since the start date (0 on the first day)."""
        return (self.at(steps).date() - self.start.date()).days

    def weekday(self, steps: int) -> int:
        """Monday is 0, as in ``datetime.weekday``."""
        return self.at(steps).weekday()

    def time_of_day(self, steps: int) -> str:
        """ "night", "early morning", "morning", "afternoon" or "evening" (evening ends at 22:00)."""
        m = self.minute_of_day(steps)
        if m >= DAY_PARTS_LATE[0]:
            return DAY_PARTS_LATE[1]
        name = DAY_PARTS[0][1]
        for start, part in DAY_PARTS:
            if m >= start:
                name = part
        return name

    def is_time(self, steps: int, hhmm: str | time | int) -> bool:
        """True in the one step whose interval ``[now, now + minutes_per_step)`` contains the time of day.

        "Is it 5 pm?" is answered yes exactly once a day, whatever the step length.
        """
        target = parse_time_of_day(hhmm)
        m = self.minute_of_day(steps)
        return (target - m) % (24 * 60) < self.minutes_per_step

    def is_between(self, steps: int, start: str | time | int, end: str | time | int) -> bool:
        """Whether the time of day lies in ``[start, end)``; wraps past midnight when end < start."""
        a, b, m = parse_time_of_day(start), parse_time_of_day(end), self.minute_of_day(steps)
        return a <= m < b if a <= b else (m >= a or m < b)

    def describe(self, steps: int) -> str:
        """A sentence-ready time, e.g. "Tuesday, February 14, 2023, 05:00 PM"."""
        return self.at(steps).strftime("%A, %B %d, %Y, %I:%M %p")
