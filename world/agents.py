"""The residents: what the world is told about each one, the Mesa agent that stands for it, its actions.

Split from ``model.py`` the way Mesa's examples split (``agents.py`` holds the agents, ``model.py``
builds and steps the model): a mind (``simulacra.agents.mind.Citizen``) subclasses ``Resident``,
overrides ``think`` and returns the actions defined here, and needs nothing else from the world.

* ``Routine``, ``ResidentSpec``, ``RelationSpec``: plain data the scenario loader builds a town from.
* ``Resident``: the Mesa agent. It keeps no state of its own beyond its spec: position, path,
  destination and activity live in the town's arrays (row ``index``), so every property is a view.
* ``GoTo``, ``SetObjectState``, ``SetActivity`` (``Action``): what ``think`` may return; the town
  applies them in resident-id order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import mesa

from .perception import Perception

if TYPE_CHECKING:
    from .model import Town

ALL_WEEK = (0, 1, 2, 3, 4, 5, 6)
WORKWEEK = (0, 1, 2, 3, 4)


@dataclass
class Routine:
    """Routine hints the scripted day follows (minutes after midnight). ``work`` None: no work hours."""

    wake: int = 7 * 60
    sleep: int = 22 * 60 + 30
    work: tuple[int, int] | None = (9 * 60, 17 * 60)
    workdays: tuple[int, ...] = WORKWEEK
    leisure: tuple[str, ...] = ()  # places liked for an evening outing
    outing_chance: float = 0.4  # chance per day of going out to one of them


@dataclass
class ResidentSpec:
    """What the world needs to know about a resident. ``profile`` is opaque to the world (for minds)."""

    name: str
    home: str | None = None
    workplace: str | None = None
    routine: Routine = field(default_factory=Routine)
    start: tuple[int, int] | None = None  # default: a free tile of home, else a spawn point
    speed: int | None = None  # tiles per step; default the town's walk_speed
    profile: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RelationSpec:
    """``source`` knows ``target`` at the start."""

    source: str
    target: str
    strength: float = 0.5
    note: str = ""


@dataclass(frozen=True)
class GoTo:
    """Walk to a place or object (full name). The resident gets a path to a free tile of it."""

    place: str


@dataclass(frozen=True)
class SetObjectState:
    """Change an object's state ("the stove is on")."""

    object: str
    state: str


@dataclass(frozen=True)
class SetActivity:
    """What the resident is doing, in words and an emoji (shown by the viewer, seen by others)."""

    text: str
    emoji: str = ""


Action = GoTo | SetObjectState | SetActivity


class Resident(mesa.Agent):
    """A resident: a Mesa agent whose position and path live in the town's arrays.

    A mind (``simulacra.agents.mind.Citizen``) subclasses this and overrides ``think``; the default
    ``think`` follows the scripted routine. Everything here is a cheap view of the town's row ``index``.
    """

    def __init__(self, model: Town, spec: ResidentSpec, index: int) -> None:
        self.index = index  # row in the town's arrays (set before Agent.__init__ touches ``pos``)
        self.spec = spec
        super().__init__(model)
        self.town: Town = model

    # Mesa's Agent.__init__ assigns ``self.pos = None``; pos is a view of the town's arrays.
    @property
    def pos(self) -> tuple[int, int] | None:
        """``(x, y)`` of the tile the resident stands on."""
        town = getattr(self, "town", None)
        if town is None:
            return None
        t = int(town.tile[self.index])
        return t % town.map.width, t // town.map.width

    @pos.setter
    def pos(self, value: tuple[int, int] | None) -> None:
        if value is not None:
            self.town.teleport(self, value)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def profile(self) -> dict[str, Any]:
        return self.spec.profile

    @property
    def active(self) -> bool:
        return bool(self.town.active[self.index])

    @property
    def place(self) -> str:
        """Full name of the most specific place the resident is in (a room, an area or the outdoors)."""
        return self.town.map.places[int(self.town.map.place_of[self.town.tile[self.index]])].name

    @property
    def area(self) -> str:
        """Name of the area the resident is in (or the outdoors)."""
        return self.town.map.places[int(self.town.map.area_of[self.town.tile[self.index]])].name

    @property
    def destination(self) -> str | None:
        """Where the resident was last sent (it may have arrived), or None."""
        return self.town.code_name(int(self.town.dest[self.index]))

    @property
    def is_moving(self) -> bool:
        return bool(self.town.cursor[self.index] < self.town.path_len[self.index] - 1)

    @property
    def activity(self) -> str:
        return self.town.activity[self.index]

    @property
    def emoji(self) -> str:
        return self.town.emoji[self.index]

    @property
    def home(self) -> str | None:
        return self.spec.home

    @property
    def workplace(self) -> str | None:
        return self.spec.workplace

    @property
    def perception(self) -> Perception:
        """What this resident perceived at the start of the current step."""
        return self.town.perception_of(self)

    def go_to(self, place: str) -> int:
        """Walk to ``place`` (a place or object name); returns the steps the walk will take."""
        return self.town.go_to(self, place)

    def set_activity(self, text: str, emoji: str = "") -> None:
        """Set what the resident is doing (for the viewer and for others' perception)."""
        self.town.set_activity(self, text, emoji)

    def routine_action(self) -> GoTo | None:
        """This step's scripted decision: where the routine hints say to be, if not already going there."""
        code = int(self.town.routine_code[self.index])
        if code < 0 or code == int(self.town.dest[self.index]):
            return None
        return GoTo(self.town.code_name(code))

    async def think(self, perception: Perception) -> Action | Sequence[Action] | None:
        """Decide this step's actions. Override with cognition; the default follows the routine."""
        return self.routine_action()

    def remove(self) -> None:
        """Leave the town: stop moving, free the held tile, stop being perceived (history stays)."""
        self.town._deactivate(self.index)
        super().remove()

    def __repr__(self) -> str:
        return f"Resident({self.unique_id}, {self.name!r}, pos={self.pos}, place={self.place!r})"
