"""The town as a Mesa 3 model: ``Town`` (the model) and ``Resident`` (the agents).

Residents are ordinary Mesa agents (``town.agents``, ``AgentSet.select``, ``DataCollector`` all work),
but the state that every step touches for every resident (tile, path, destination) lives in numpy
arrays on the town, so movement and perception for 10,000 residents are array operations rather
than 10,000 Python calls. A ``Resident`` is a view onto its row of those arrays.

One step (``step()`` for Mesa users, ``await astep()`` for the simulation):

1. the clock advances (``steps`` += 1; the time is ``start + steps * minutes_per_step``);
2. perception runs for everyone at once, on the positions at the start of the step;
3. every resident decides: ``step()`` uses the scripted routine (work hours at the workplace, an
   evening outing now and then, home at night); ``astep()`` awaits every resident's
   ``think(perception)`` concurrently with ``asyncio.gather`` (a mind overrides it; the default is
   the same scripted routine);
4. decisions are applied in resident-id order, whatever order they finished in, so the outcome
   does not depend on timing;
5. walkers advance along their paths; the step is recorded (density, DataCollector).

Collision: walls and objects block tiles. A resident that has arrived holds its tile: nobody else
is sent to it (``go_to`` picks a free tile of the place, nearest to where the path enters it).
Walkers pass through each other and through seated residents, as in Smallville, so no one ever
waits for anyone and nothing can deadlock. When a place is full, newcomers share its entry tile.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import mesa
import numpy as np

from .clock import Clock
from .pathfinding import Pathfinder
from .perception import OBJECT, Perception, Seen, perceive
from .social import SocialGraph
from .town_map import TownMap

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

EMOJI = {"walking": "🚶", "sleeping": "😴", "home": "🏠", "work": "💼", "venue": "☕", "outdoor": "🌳"}


def _between(start: np.ndarray, end: np.ndarray, m: int) -> np.ndarray:
    """Vectorised ``start <= m < end`` on a 24-hour clock (wrapping past midnight when end < start)."""
    return np.where(start <= end, (start <= m) & (m < end), (m >= start) | (m < end))


class Resident(mesa.Agent):
    """A resident: a Mesa agent whose position and path live in the town's arrays.

    Minds (a later issue) subclass this and override ``think``. Everything here is a cheap view.
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


class Town(mesa.Model):
    """A town of residents on a tile map, with a clock, movement, perception and a social graph.

    ``seed`` (or ``rng``) seeds ``self.rng`` (numpy) and ``self.random`` as in any Mesa 3 model; the
    only randomness in the world (who goes out on an evening, and where) comes from ``self.rng``,
    so the same seed gives the same run. ``Town.step()`` is a Mesa step; ``await Town.astep()`` is the
    same step with every resident's ``think`` awaited concurrently.
    """

    def __init__(
        self,
        town_map: TownMap,
        residents: Sequence[ResidentSpec],
        *,
        start: datetime,
        minutes_per_step: int = 10,
        seed: int | None = None,
        rng: np.random.Generator | int | None = None,
        vision_radius: int = 4,
        attention_bandwidth: int = 5,
        walk_speed: int = 8,
        relations: Iterable[RelationSpec] = (),
        max_steps: int | None = None,
        resident_class: type[Resident] = Resident,
        field_cache_mb: float = 64.0,
    ) -> None:
        super().__init__(rng=rng if rng is not None else seed)
        self.map = town_map
        self.clock = Clock(start, minutes_per_step)
        self.vision_radius = int(vision_radius)
        self.attention_bandwidth = int(attention_bandwidth)
        self.walk_speed = int(walk_speed)
        self.max_steps = max_steps
        self.datacollector: mesa.DataCollector | None = None
        self.pathfinder = Pathfinder(town_map.walkable, town_map.width, field_cache_mb=field_cache_mb)
        self._n_places = len(town_map.places)
        self._kind_codes = {k: i for i, k in enumerate(("home", "work", "venue", "outdoor"))}
        self._place_kind = np.array([self._kind_codes[p.kind] for p in town_map.places], np.int8)

        n = len(residents)
        names = [r.name for r in residents]
        if len(set(names)) != n:
            dup = sorted({x for x in names if names.count(x) > 1})
            raise ValueError(f"resident names must be unique; repeated: {', '.join(dup)}")
        self.tile = np.zeros(n, np.int32)
        self.dest = np.full(n, -1, np.int32)
        self.held = np.full(n, -1, np.int32)
        self.path_start = np.zeros(n, np.int64)
        self.path_len = np.zeros(n, np.int64)
        self.cursor = np.zeros(n, np.int64)
        self.speed = np.array([r.speed or self.walk_speed for r in residents], np.int64)
        self.active = np.ones(n, np.bool_)
        self.changed_step = np.zeros(n, np.int64)
        self.activity: list[str] = [""] * n
        self.emoji: list[str] = [""] * n
        self.reserved = np.full(town_map.walkable.size, -1, np.int32)
        self._pool = np.zeros(1 << 16, np.int32)
        self._pool_top = 0

        # routine hints as arrays
        self.home_code = np.array([self._code(r.home) if r.home else -1 for r in residents], np.int32)
        self.work_code = np.array([self._code(r.workplace) if r.workplace else -1 for r in residents], np.int32)
        rt = [r.routine for r in residents]
        self.wake = np.array([x.wake for x in rt], np.int32)
        self.sleep = np.array([x.sleep for x in rt], np.int32)
        self.work_start = np.array([x.work[0] if x.work else 0 for x in rt], np.int32)
        self.work_end = np.array([x.work[1] if x.work else 0 for x in rt], np.int32)
        self.has_work = np.array([bool(x.work) for x in rt], np.bool_) & (self.work_code >= 0)
        self.workdays = np.array([sum(1 << d for d in x.workdays) for x in rt], np.int32)
        self.outing_chance = np.array([x.outing_chance for x in rt], np.float64)
        leisure = [[self._code(p) for p in x.leisure] for x in rt]
        self._leisure_count = np.array([len(x) for x in leisure], np.int64)
        self._leisure_offset = np.concatenate([[0], np.cumsum(self._leisure_count)[:-1]]).astype(np.int64)
        self._leisure_flat = np.array([c for x in leisure for c in x], np.int32)
        self.out_code = np.full(n, -1, np.int32)
        self.out_start = np.zeros(n, np.int32)
        self.out_end = np.zeros(n, np.int32)
        self.routine_code = np.full(n, -1, np.int32)
        self.asleep = np.zeros(n, np.bool_)
        self._day = -1

        # objects
        objs = town_map.objects
        self.object_state: list[str] = [o.state for o in objs]
        self.object_changed_step = np.full(len(objs), -1, np.int64)
        self.object_events: deque[dict] = deque(maxlen=10_000)
        self._ox = np.array([o.x for o in objs], np.int32)
        self._oy = np.array([o.y for o in objs], np.int32)
        self._oarea = np.array([o.area for o in objs], np.int32)

        # perception results (filled at the start of every step)
        self.seen_kind = np.full((n, self.attention_bandwidth), -1, np.int8)
        self.seen_index = np.full((n, self.attention_bandwidth), -1, np.int32)
        self.seen_d2 = np.full((n, self.attention_bandwidth), -1, np.int32)
        self.seen_count = np.zeros(n, np.int32)
        self.perceived_step = -1
        # seconds spent in the last step: perception, decisions (routine, go_to and pathfinding), walking
        self.timings: dict[str, float] = {}

        self.social = SocialGraph(names)
        for rel in relations:
            self.social.add_relation(rel.source, rel.target, strength=rel.strength, note=rel.note, step=0)
        self.density_history: list[tuple[int, float]] = [(0, self.social.density())]

        self.residents: list[Resident] = [resident_class(self, spec, i) for i, spec in enumerate(residents)]
        self._by_name = {r.name: r for r in self.residents}
        self._custom_think = any(type(r).think is not Resident.think for r in self.residents)
        self._place_initial(residents)
        self._new_day_if_needed()

    # ---- names and codes ----------------------------------------------------------------------------
    # A destination is one int: a place id, or len(places) + object id.

    def _code(self, name: str) -> int:
        kind, i = self.map.lookup(name)
        return i if kind == "place" else self._n_places + i

    def code_name(self, code: int) -> str | None:
        """The full name behind a destination code (None for -1)."""
        if code < 0:
            return None
        if code < self._n_places:
            return self.map.places[code].name
        return self.map.objects[code - self._n_places].name

    def resident(self, who: str | int | Resident) -> Resident:
        """A resident by name, unique_id or itself."""
        if isinstance(who, Resident):
            return who
        if isinstance(who, str):
            try:
                return self._by_name[who]
            except KeyError:
                raise KeyError(f"{who!r} is not a resident of this town") from None
        return self.residents[int(who) - self.residents[0].unique_id]

    @property
    def now(self) -> datetime:
        """The current simulated date-time."""
        return self.clock.at(self.steps)

    # ---- placement, paths, reservations --------------------------------------------------------------

    def _place_initial(self, specs: Sequence[ResidentSpec]) -> None:
        spawn = self.map.spawn_tiles
        for i, spec in enumerate(specs):
            if spec.start is not None:
                x, y = spec.start
                self._put(i, self._checked_tile(x, y, spec.name))
            elif self.home_code[i] >= 0:
                code = int(self.home_code[i])
                place = self.map.places[code] if code < self._n_places else None
                t0 = int(place.tiles[0]) if place is not None else int(self.map.objects[code - self._n_places].tile)
                path = self._free_path(t0, code)
                self._put(i, int(path[-1]) if path.size else t0)
                self.dest[i] = code
            else:
                self._put(i, int(spawn[i % spawn.size]))
            self.activity[i] = "at home" if self.dest[i] >= 0 else "arriving in town"
            self.emoji[i] = EMOJI["home"] if self.dest[i] >= 0 else ""

    def _checked_tile(self, x: int, y: int, who: str) -> int:
        if not (0 <= x < self.map.width and 0 <= y < self.map.height):
            raise ValueError(f"{who}: ({x}, {y}) is outside the {self.map.width}x{self.map.height} map")
        t = y * self.map.width + x
        if not self.map.walkable[t]:
            raise ValueError(f"{who}: ({x}, {y}) is not a walkable tile")
        return t

    def _put(self, i: int, t: int) -> None:
        """Stand resident i on tile t, holding it when free."""
        self._release(i)
        self.tile[i] = t
        self.path_len[i] = 0
        self.cursor[i] = 0
        if self.reserved[t] < 0:
            self.reserved[t] = i
            self.held[i] = t
        self.changed_step[i] = self.steps

    def _release(self, i: int) -> None:
        h = self.held[i]
        if h >= 0 and self.reserved[h] == i:
            self.reserved[h] = -1
        self.held[i] = -1

    def _deactivate(self, i: int) -> None:
        self._release(i)
        self.active[i] = False
        self.path_len[i] = 0
        self.cursor[i] = 0
        self.changed_step[i] = self.steps

    def teleport(self, who: str | int | Resident, xy: tuple[int, int]) -> None:
        """Put a resident on a tile at once (no walking), holding it if free."""
        r = self.resident(who)
        self._put(r.index, self._checked_tile(int(xy[0]), int(xy[1]), r.name))
        self.dest[r.index] = -1

    def _free_path(self, start: int, code: int) -> np.ndarray:
        """Path from ``start`` (inside the destination) to its nearest unheld tile; empty if full."""
        if code < self._n_places:
            place = self.map.places[code]
            labels = self.map.area_of if place.depth == 0 else self.map.place_of
            return self.pathfinder.nearest_free(start, labels, code, self.reserved)
        obj = self.map.objects[code - self._n_places]
        free = obj.stand_tiles[self.reserved[obj.stand_tiles] < 0]
        return free[:1]

    def _in_destination(self, t: int, code: int) -> bool:
        if code < self._n_places:
            place = self.map.places[code]
            labels = self.map.area_of if place.depth == 0 else self.map.place_of
            return bool(labels[t] == code)
        return bool(np.any(self.map.objects[code - self._n_places].stand_tiles == t))

    def _set_path(self, i: int, path: np.ndarray) -> None:
        k = path.size
        if self._pool_top + k > self._pool.size:
            self._compact_pool(k)
        self._pool[self._pool_top : self._pool_top + k] = path
        self.path_start[i] = self._pool_top
        self.path_len[i] = k
        self.cursor[i] = 0
        self._pool_top += k

    def _compact_pool(self, extra: int) -> None:
        """Keep only the unwalked rest of each path; grow the pool if it is still too small."""
        moving = np.flatnonzero(self.cursor < self.path_len - 1)
        rest = [self._pool[self.path_start[i] + self.cursor[i] : self.path_start[i] + self.path_len[i]] for i in moving]
        live = sum(r.size for r in rest)
        size = self._pool.size
        while live + extra > size // 2:
            size *= 2
        pool = np.zeros(size, np.int32)
        top = 0
        for i, r in zip(moving, rest, strict=True):
            pool[top : top + r.size] = r
            self.path_start[i] = top
            self.path_len[i] = r.size
            self.cursor[i] = 0
            top += r.size
        done = self.cursor >= self.path_len - 1
        self.path_len[done] = 0
        self.cursor[done] = 0
        self._pool = pool
        self._pool_top = top

    def _go_to_code(self, i: int, code: int, *, shared: bool = False) -> int:
        """Send resident i to destination ``code``; returns the path length in tiles (0: already there)."""
        if int(self.dest[i]) == code and self.held[i] >= 0 and self._in_destination(int(self.held[i]), code):
            return max(0, int(self.path_len[i] - 1 - self.cursor[i]))
        self._release(i)
        src = int(self.tile[i])
        if code < self._n_places:
            place = self.map.places[code]
            path = self.pathfinder.path_to(code, src, place.tiles, shared=shared)
            if path.size == 0:
                raise ValueError(f"{self.residents[i].name} cannot reach {place.name} from {self.map.xy(src)}")
            rest = self._free_path(int(path[-1]), code)
            if rest.size > 1:
                path = np.concatenate([path, rest[1:]])
        else:
            obj = self.map.objects[code - self._n_places]
            free = obj.stand_tiles[self.reserved[obj.stand_tiles] < 0]
            targets = free if free.size else obj.stand_tiles
            path = self.pathfinder.path_to(("object", obj.id, targets.tobytes()), src, targets)
            if path.size == 0:
                raise ValueError(f"{self.residents[i].name} cannot reach {obj.name} from {self.map.xy(src)}")
        end = int(path[-1])
        if self.reserved[end] < 0:
            self.reserved[end] = i
            self.held[i] = end
        self._set_path(i, path)
        self.dest[i] = code
        name = self.code_name(code)
        if path.size > 1:
            self.activity[i] = f"walking to {name}"
            self.emoji[i] = EMOJI["walking"]
        else:
            self._arrived(i)
        self.changed_step[i] = self.steps
        return int(path.size - 1)

    def go_to(self, who: str | int | Resident, place: str) -> int:
        """Send a resident to a place or object by full name; returns the number of steps the walk takes.

        Raises ``UnknownPlaceError`` (with the nearest real names) for a place the town lacks.
        """
        r = self.resident(who)
        tiles = self._go_to_code(r.index, self._code(place))
        return math.ceil(tiles / max(1, int(self.speed[r.index])))

    def set_activity(self, who: str | int | Resident, text: str, emoji: str = "") -> None:
        """Set what a resident is doing, for the viewer and for others' perception."""
        r = self.resident(who)
        self.activity[r.index] = text
        self.emoji[r.index] = emoji
        self.changed_step[r.index] = self.steps

    def set_object_state(self, obj: str, state: str, by: str | int | Resident | None = None) -> None:
        """Change an object's state (checked against its allowed states); logged as an object event."""
        o = self.map.object(obj)
        if o.states is not None and state not in o.states:
            raise ValueError(f"{o.name} cannot be {state!r}; its states are {', '.join(o.states)}")
        old = self.object_state[o.id]
        if old == state:
            return
        self.object_state[o.id] = state
        self.object_changed_step[o.id] = self.steps
        who = self.resident(by).name if by is not None else None
        self.object_events.append({"step": self.steps, "object": o.name, "from": old, "to": state, "by": who})

    # ---- queries --------------------------------------------------------------------------------------

    def object_states(self) -> dict[str, str]:
        """Every object's current state by full name."""
        return {o.name: s for o, s in zip(self.map.objects, self.object_state, strict=True)}

    def residents_at(self, place: str) -> list[Resident]:
        """Active residents standing in a place (an area includes its rooms), in id order."""
        p = self.map.place(place)
        labels = self.map.area_of if p.depth == 0 else self.map.place_of
        idx = np.flatnonzero(self.active & (labels[self.tile] == p.id))
        return [self.residents[i] for i in idx]

    def count_at(self, kind: str) -> int:
        """How many active residents are in areas of this kind ("home", "work", "venue", "outdoor")."""
        area_kind = self._place_kind[self.map.area_of[self.tile]]
        return int(np.count_nonzero(self.active & (area_kind == self._kind_codes[kind])))

    def can_talk(self, a: str | int | Resident, b: str | int | Resident) -> bool:
        """Whether two residents could converse now: same area and within the vision radius."""
        i, j = self.resident(a).index, self.resident(b).index
        ti, tj = int(self.tile[i]), int(self.tile[j])
        if self.map.area_of[ti] != self.map.area_of[tj]:
            return False
        (xi, yi), (xj, yj) = self.map.xy(ti), self.map.xy(tj)
        return (xi - xj) ** 2 + (yi - yj) ** 2 <= self.vision_radius**2

    def perception_of(self, who: str | int | Resident) -> Perception:
        """What one resident perceived at the start of this step, nearest first."""
        r = self.resident(who)
        i = r.index
        seen = []
        for k in range(int(self.seen_count[i])):
            j = int(self.seen_index[i, k])
            dist = math.sqrt(int(self.seen_d2[i, k]))
            if self.seen_kind[i, k] == OBJECT:
                o = self.map.objects[j]
                changed = bool(self.object_changed_step[j] == self.perceived_step - 1)
                seen.append(Seen("object", o.name, dist, self.object_state[j], changed, j))
            else:
                other = self.residents[j]
                seen.append(Seen("resident", other.name, dist, self.activity[j], False, other.unique_id))
        return Perception(self.perceived_step, r.place, tuple(seen))

    # ---- the step -------------------------------------------------------------------------------------

    def _new_day_if_needed(self) -> None:
        """Once a day, draw who goes out in the evening, where and when (vectorised, from ``self.rng``)."""
        day = self.clock.day(self.steps)
        if day == self._day:
            return
        self._day = day
        n = self.tile.size
        u_go, u_where, u_when, u_len = (self.rng.random(n) for _ in range(4))
        wd = self.clock.weekday(self.steps)
        works_today = self.has_work & (((self.workdays >> wd) & 1) == 1)
        free_from = np.where(works_today, self.work_end, self.wake + 120)
        last = np.where(self.sleep > self.wake, self.sleep - 60, 24 * 60 - 1)
        span = np.maximum(last - free_from - 60, 0)
        start = free_from + (u_when * span).astype(np.int32)
        length = 60 + (u_len * 90).astype(np.int32)
        goes = (u_go < self.outing_chance) & (self._leisure_count > 0) & (last - free_from >= 60)
        if self._leisure_flat.size:
            count = self._leisure_count
            pick = self._leisure_offset + np.minimum((u_where * count).astype(np.int64), np.maximum(count - 1, 0))
            codes = self._leisure_flat[np.minimum(pick, self._leisure_flat.size - 1)]
        else:
            codes = np.full(n, -1, np.int32)
        self.out_code = np.where(goes, codes, -1).astype(np.int32)
        self.out_start = start.astype(np.int32)
        self.out_end = np.minimum(start + length, last).astype(np.int32)

    def _routine(self) -> None:
        """Where the routine says each resident should be now (``routine_code``), all at once."""
        m = self.clock.minute_of_day(self.steps)
        wd = self.clock.weekday(self.steps)
        awake = _between(self.wake, self.sleep, m)
        at_work = self.has_work & (((self.workdays >> wd) & 1) == 1) & _between(self.work_start, self.work_end, m)
        out = awake & (self.out_code >= 0) & (self.out_start <= m) & (m < self.out_end)
        code = self.home_code.copy()
        code[out] = self.out_code[out]
        code[at_work] = self.work_code[at_work]
        code[~self.active] = -1
        self.routine_code = code
        fell_asleep = ~awake & ~self.asleep & (self.dest == self.home_code) & self.active
        woke = awake & self.asleep
        self.asleep = ~awake
        for i in np.flatnonzero(fell_asleep):
            if self.cursor[i] >= self.path_len[i] - 1:
                self.activity[i], self.emoji[i] = "sleeping", EMOJI["sleeping"]
                self.changed_step[i] = self.steps
        for i in np.flatnonzero(woke):
            if self.activity[i] == "sleeping":
                self.activity[i], self.emoji[i] = "at home", EMOJI["home"]
                self.changed_step[i] = self.steps

    def _perceive(self) -> None:
        w = self.map.width
        xs = (self.tile % w).astype(np.int32)
        ys = (self.tile // w).astype(np.int32)
        areas = self.map.area_of[self.tile]
        self.seen_kind, self.seen_index, self.seen_d2, self.seen_count = perceive(
            xs,
            ys,
            areas,
            self.active,
            self._ox,
            self._oy,
            self._oarea,
            self.vision_radius,
            self.attention_bandwidth,
            w,
            self.map.height,
        )
        self.perceived_step = self.steps

    def _begin_step(self) -> None:
        t0 = time.perf_counter()
        self._new_day_if_needed()
        self._perceive()
        t1 = time.perf_counter()
        self._routine()
        self.timings = {"perception": t1 - t0, "decisions": time.perf_counter() - t1}

    def _shared(self, codes: np.ndarray) -> np.ndarray:
        """Which destinations this step are wanted by enough residents to pay for a distance field."""
        counts = np.bincount(codes, minlength=self._n_places + len(self.map.objects))
        return counts >= self.pathfinder.shared_threshold

    def _apply_routine(self) -> None:
        todo = np.flatnonzero((self.routine_code >= 0) & (self.routine_code != self.dest) & self.active)
        if todo.size == 0:
            return
        codes = self.routine_code[todo]
        shared = self._shared(codes)
        for i, code in zip(todo.tolist(), codes.tolist(), strict=True):
            self._go_to_code(i, code, shared=bool(shared[code]) and code < self._n_places)

    def _apply_decisions(self, decided: list[tuple[Resident, Any]]) -> None:
        """Apply each resident's actions, residents in id order, each resident's actions in order."""
        decided = sorted(decided, key=lambda rd: rd[0].unique_id)
        plans: list[tuple[Resident, list[Action]]] = []
        goto_codes = []
        for r, result in decided:
            actions = [] if result is None else [result] if not isinstance(result, list | tuple) else list(result)
            for a in actions:
                if isinstance(a, GoTo):
                    goto_codes.append(self._code(a.place))
                elif not isinstance(a, SetObjectState | SetActivity):
                    raise TypeError(f"{r.name}.think returned {a!r}; expected GoTo, SetObjectState or SetActivity")
            plans.append((r, actions))
        shared = self._shared(np.array(goto_codes, np.int64)) if goto_codes else None
        for r, actions in plans:
            for a in actions:
                if isinstance(a, GoTo):
                    code = self._code(a.place)
                    self._go_to_code(r.index, code, shared=bool(shared[code]) and code < self._n_places)
                elif isinstance(a, SetObjectState):
                    self.set_object_state(a.object, a.state, by=r)
                else:
                    self.set_activity(r, a.text, a.emoji)

    def _arrived(self, i: int) -> None:
        code = int(self.dest[i])
        name = self.code_name(code)
        if code == self.home_code[i]:
            sleeping = self.asleep[i]
            self.activity[i] = "sleeping" if sleeping else "at home"
            self.emoji[i] = EMOJI["sleeping"] if sleeping else EMOJI["home"]
        elif code == self.work_code[i]:
            self.activity[i] = f"working at {name}"
            self.emoji[i] = EMOJI["work"]
        else:
            self.activity[i] = f"at {name}"
            kind = self.map.places[code].kind if code < self._n_places else "venue"
            self.emoji[i] = EMOJI.get(kind, "")

    def _move(self) -> None:
        """Every walker advances up to its speed along its path, all at once."""
        moving = np.flatnonzero(self.active & (self.cursor < self.path_len - 1))
        if moving.size == 0:
            return
        c = np.minimum(self.cursor[moving] + self.speed[moving], self.path_len[moving] - 1)
        self.cursor[moving] = c
        self.tile[moving] = self._pool[self.path_start[moving] + c]
        self.changed_step[moving] = self.steps
        for i in moving[c == self.path_len[moving] - 1].tolist():
            self._arrived(i)

    def _end_step(self) -> None:
        t0 = time.perf_counter()
        self._move()
        self.timings["walking"] = time.perf_counter() - t0
        self.density_history.append((self.steps, self.social.density()))
        if self.max_steps is not None and self.steps >= self.max_steps:
            self.running = False
        if self.datacollector is not None:
            self.datacollector.collect(self)

    def step(self) -> None:
        """One Mesa step with the scripted routine (Mesa's wrapper has already advanced ``steps``)."""
        self._begin_step()
        t0 = time.perf_counter()
        self._apply_routine()
        self.timings["decisions"] += time.perf_counter() - t0
        self._end_step()

    async def astep(self) -> None:
        """One step with every resident's ``think`` awaited concurrently; decisions applied in id order."""
        self.steps += 1  # what Mesa's wrapper does for step()
        self._begin_step()
        if self._custom_think:
            people = [r for r in self.residents if self.active[r.index]]
            results = await asyncio.gather(*(r.think(self.perception_of(r)) for r in people))
            self._apply_decisions(list(zip(people, results, strict=True)))
        else:
            self._apply_routine()  # the default think, vectorised: same decisions, no 10,000 coroutines
        self._end_step()

    async def arun(self, steps: int) -> None:
        """Run ``steps`` async steps (or until ``running`` turns False)."""
        for _ in range(steps):
            if not self.running:
                break
            await self.astep()

    # ---- viewer ----------------------------------------------------------------------------------------

    def _resident_json(self, i: int) -> dict:
        r = self.residents[i]
        x, y = self.map.xy(int(self.tile[i]))
        return {
            "id": r.unique_id,
            "name": r.name,
            "x": x,
            "y": y,
            "place": r.place,
            "activity": self.activity[i],
            "emoji": self.emoji[i],
            "moving": bool(self.cursor[i] < self.path_len[i] - 1),
            "active": bool(self.active[i]),
        }

    def snapshot(self) -> dict:
        """Everything a viewer needs to draw the town now, as plain JSON."""
        return {
            "step": self.steps,
            "time": self.now.isoformat(),
            "time_of_day": self.clock.time_of_day(self.steps),
            "map": self.map.to_json(),
            "residents": [self._resident_json(i) for i in range(self.tile.size)],
            "objects": [{"id": o.id, "state": s} for o, s in zip(self.map.objects, self.object_state, strict=True)],
            "density": self.social.density(),
        }

    def delta(self, since_step: int) -> dict:
        """What changed after ``since_step``: residents that moved or changed activity, objects that changed."""
        changed = np.flatnonzero(self.changed_step > since_step)
        objs = np.flatnonzero(self.object_changed_step > since_step)
        return {
            "step": self.steps,
            "since": since_step,
            "time": self.now.isoformat(),
            "time_of_day": self.clock.time_of_day(self.steps),
            "residents": [self._resident_json(int(i)) for i in changed],
            "objects": [{"id": int(o), "state": self.object_state[o]} for o in objs],
            "density": self.social.density(),
        }

    # ---- save and restore ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The whole dynamic state as plain JSON: positions, paths, objects, social graph, clock, rng.

        A town built from the same scenario and given this state continues exactly as this one does.
        """
        paths = []
        for i in range(self.tile.size):
            if self.cursor[i] < self.path_len[i] - 1:
                a = int(self.path_start[i] + self.cursor[i])
                paths.append(self._pool[a : int(self.path_start[i] + self.path_len[i])].tolist())
            else:
                paths.append([])
        version, internal, gauss = self.random.getstate()
        return {
            "format": 1,
            "steps": self.steps,
            "running": self.running,
            "rng": self.rng.bit_generator.state,
            "random": [version, list(internal), gauss],
            "day": self._day,
            "residents": {
                "tile": self.tile.tolist(),
                "dest": self.dest.tolist(),
                "held": self.held.tolist(),
                "speed": self.speed.tolist(),
                "active": self.active.tolist(),
                "changed_step": self.changed_step.tolist(),
                "path": paths,
                "activity": list(self.activity),
                "emoji": list(self.emoji),
                "asleep": self.asleep.tolist(),
                "out_code": self.out_code.tolist(),
                "out_start": self.out_start.tolist(),
                "out_end": self.out_end.tolist(),
            },
            "objects": {"state": list(self.object_state), "changed_step": self.object_changed_step.tolist()},
            "object_events": list(self.object_events),
            "social": self.social.state_dict(),
            "density_history": [list(x) for x in self.density_history],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state saved by ``state_dict`` (on a town built from the same scenario)."""
        res = state["residents"]
        n = self.tile.size
        if len(res["tile"]) != n:
            raise ValueError(f"the saved state has {len(res['tile'])} residents but this town has {n}")
        if len(state["objects"]["state"]) != len(self.map.objects):
            raise ValueError("the saved state's objects do not match this town's map")
        self.steps = int(state["steps"])
        self.running = bool(state["running"])
        self.rng.bit_generator.state = state["rng"]
        version, internal, gauss = state["random"]
        self.random.setstate((version, tuple(internal), gauss))
        self._day = int(state["day"])
        self.tile[:] = res["tile"]
        self.dest[:] = res["dest"]
        self.held[:] = res["held"]
        self.speed[:] = res["speed"]
        self.active[:] = res["active"]
        self.changed_step[:] = res["changed_step"]
        self.activity = list(res["activity"])
        self.emoji = list(res["emoji"])
        self.asleep[:] = res["asleep"]
        self.out_code[:] = res["out_code"]
        self.out_start[:] = res["out_start"]
        self.out_end[:] = res["out_end"]
        self.reserved[:] = -1
        held = np.flatnonzero(self.held >= 0)
        self.reserved[self.held[held]] = held
        self._pool_top = 0
        self.path_len[:] = 0
        self.cursor[:] = 0
        for i, path in enumerate(res["path"]):
            if path:
                self._set_path(i, np.asarray(path, np.int32))
        self.object_state = list(state["objects"]["state"])
        self.object_changed_step[:] = state["objects"]["changed_step"]
        self.object_events = deque(state["object_events"], maxlen=self.object_events.maxlen)
        self.social.load_state_dict(state["social"])
        self.density_history = [(int(s), float(d)) for s, d in state["density_history"]]
        self._perceive()
