"""The pydantic schema of a scenario file: what every key means, its type, default and allowed range.

``ScenarioDef`` and the ``*Def`` classes it nests describe one YAML scenario file (map, residents,
information, events, simulation, model and measurement settings); the helpers before them read the
forms an author writes (``17:00``, ``09:00-17:00``, ``weekdays``, ``1d 12h``) into plain values. The
schema only checks shapes and values; cross-references between sections are checked in ``checks``,
the map itself by building it (``loader``), and ``errors`` turns pydantic's errors into sentences,
so this module imports no other part of the scenario package.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from simulacra.world import parse_time_of_day

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_SETS = {"weekdays": WEEKDAYS[:5], "daily": WEEKDAYS, "weekends": WEEKDAYS[5:]}


def parse_hours(v: Any) -> Any:
    """``"09:00-17:00"`` (or a pair of times) as a pair of minutes of the day."""
    if isinstance(v, str):
        parts = v.split("-")
        if len(parts) != 2:
            raise ValueError(f"{v!r} is not a span of hours; write it as HH:MM-HH:MM, e.g. '09:00-17:00'")
        return (parse_time_of_day(parts[0]), parse_time_of_day(parts[1]))
    if isinstance(v, list | tuple) and len(v) == 2:
        return (parse_time_of_day(v[0]), parse_time_of_day(v[1]))
    raise ValueError(f"{v!r} is not a span of hours; write it as HH:MM-HH:MM, e.g. '09:00-17:00'")


def _days(v: Any) -> Any:
    if isinstance(v, str):
        if v.lower() in _DAY_SETS:
            return list(_DAY_SETS[v.lower()])
        raise ValueError(f"{v!r} is not a set of days; write weekdays, weekends, daily or a list such as [mon, wed]")
    return v


def _rows(v: Any) -> Any:
    if isinstance(v, list) and all(isinstance(r, str) for r in v):
        return "\n".join(v)
    return v


_DURATION = re.compile(r"\s*(\d+)\s*(d|h|m|steps?)\s*", re.IGNORECASE)


def parse_duration(v: Any) -> str:
    """Check a duration such as ``2d``, ``1d 12h``, ``90m`` or ``300 steps`` (kept as written)."""
    text = str(v)
    pos = 0
    parts = []
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"{text!r} is not a duration; write e.g. '2d', '36h', '1d 12h', '90m' or '300 steps'")
        parts.append(m.group(2).lower())
        pos = m.end()
    if not parts or (any(p.startswith("step") for p in parts) and len(parts) > 1):
        raise ValueError(f"{text!r} is not a duration; write e.g. '2d', '36h', '1d 12h', '90m' or '300 steps'")
    return text.strip()


def duration_steps(text: str, minutes_per_step: int) -> int:
    """Steps covered by a duration string (rounded up)."""
    total = 0
    for m in _DURATION.finditer(text):
        k, unit = int(m.group(1)), m.group(2).lower()
        if unit.startswith("step"):
            return k
        total += k * {"d": 1440, "h": 60, "m": 1}[unit]
    return -(-total // minutes_per_step)


TimeOfDay = Annotated[int, BeforeValidator(parse_time_of_day)]
Hours = Annotated[tuple[int, int], BeforeValidator(parse_hours)]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Days = Annotated[list[Weekday], BeforeValidator(_days)]
Duration = Annotated[str, BeforeValidator(parse_duration)]
Text = Annotated[str, Field(min_length=1)]
Char = Annotated[str, Field(min_length=1, max_length=1)]
Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
XY = tuple[int, int]
Rect = tuple[int, int, int, int]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TerrainDef(Strict):
    """A terrain character: its name, whether residents can walk on it, and its colour for the viewer."""

    name: Text
    walkable: bool
    color: str = Field("#cccccc", pattern=r"^#[0-9a-fA-F]{6}$")


class ObjectDef(Strict):
    """An object on one floor tile; residents change its state ("the stove is on")."""

    name: Text
    at: XY
    state: Text = "idle"
    states: list[Text] | None = None
    description: str = ""


class RoomDef(Strict):
    """A room inside an area, claiming tiles by ``char`` and/or ``rects`` ([x, y, width, height])."""

    name: Text
    char: Char | None = None
    rects: list[Rect] = []
    objects: list[ObjectDef] = []
    description: str = ""


class PlaceDef(Strict):
    """An area: a home, a workplace, a public venue, or an outdoor place such as a park."""

    name: Text
    kind: Literal["home", "work", "venue", "outdoor"]
    char: Char | None = None
    rects: list[Rect] = []
    rooms: list[RoomDef] = []
    objects: list[ObjectDef] = []
    description: str = ""
    color: str | None = Field(None, pattern=r"^#[0-9a-fA-F]{6}$")


class MapDef(Strict):
    """The grid (one string per row, or one block of text), extra terrain, places and spawn points."""

    tiles: Annotated[str, BeforeValidator(_rows)]
    legend: dict[Char, TerrainDef] = {}
    places: list[PlaceDef] = Field(min_length=1)
    spawn: list[XY] = []
    outdoors: Text = "the street"


class RoutineDef(Strict):
    """Routine hints: when a resident wakes, works and sleeps, and where they like to go out."""

    wake: TimeOfDay = 7 * 60
    sleep: TimeOfDay = 22 * 60 + 30
    work: Hours | None = None
    workdays: Days = list(WEEKDAYS[:5])
    leisure: list[Text] = []
    outing_chance: float = Field(0.4, ge=0, le=1)


class RelationshipDef(Strict):
    """Someone this resident knows at the start, how well, and what they think of them."""

    name: Text
    note: str = ""
    strength: float = Field(0.5, ge=0, le=1)


class ResidentDef(Strict):
    """A resident: who they are (for their mind), where they live and work, whom they know."""

    name: Text
    age: int = Field(ge=0, le=120)
    traits: list[Text] = []
    occupation: str = ""
    lifestyle: str = ""
    home: Text | None = None
    workplace: Text | None = None
    routine: RoutineDef = RoutineDef()
    relationships: list[RelationshipDef] = []
    memories: list[Text] = []
    start: XY | None = None


class InformationDef(Strict):
    """A fact seeded into one resident at the start, whose spread is measured."""

    id: Slug
    holder: Text
    fact: Text
    memory: str = ""  # what the holder remembers (defaults to the fact)
    keywords: list[Text] = []  # words that mark the fact in memories and conversations (ground truth)


class EventDef(Strict):
    """Something to attend: a place and a time window (e.g. a party at the café on an evening)."""

    id: Slug
    title: Text
    host: Text
    place: Text
    start: datetime
    end: datetime
    description: str = ""
    information: Slug | None = None  # the fact that announces it


class SimulationDef(Strict):
    """Clock, length, seed, and the world's perception and walking settings."""

    start: datetime
    minutes_per_step: int = Field(10, ge=1, le=1440)
    duration: Duration = "2d"
    seed: int = 0
    vision_radius: int = Field(4, ge=1, le=64)
    attention_bandwidth: int = Field(5, ge=1, le=64)
    walk_speed: int = Field(8, ge=1, le=10_000)


class ModelDef(Strict):
    """Which model the residents think with and how it samples (the engine reads these)."""

    path: str | None = None  # GGUF file or HF folder; None: the packaged default
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_tokens: int = Field(256, ge=1, le=8192)
    embedding: str | None = None  # embedding model for memory relevance; None: the packaged default


class InterviewDef(Strict):
    """Interview questions for one tracked fact, asked to every resident at the end."""

    fact: Slug
    questions: list[Text] = Field(min_length=1)
    expected: str = ""  # what a knowing answer contains, for scoring


class MeasurementDef(Strict):
    """The measurement protocol: interviews per fact, the relationship question, attendance."""

    interviews: list[InterviewDef] = []
    relationship_question: Text = "Do you know {name}?"
    attendance: list[Slug] = []  # event ids whose attendance is measured


class ScenarioDef(Strict):
    """A whole scenario file."""

    name: Text
    description: str = ""
    map: MapDef
    residents: list[ResidentDef] = Field(min_length=1)
    information: list[InformationDef] = []
    events: list[EventDef] = []
    simulation: SimulationDef
    model: ModelDef = ModelDef()
    measurement: MeasurementDef = MeasurementDef()
