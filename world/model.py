"""The town as a Mesa 3 model: ``Town`` builds the town from specs and steps it.

As in Mesa's examples, the model is split from its agents: ``world/agents.py`` holds ``Resident``
(the Mesa agent), its actions and the specs a town is built from; ``world/movement.py`` holds
tiles, paths and held tiles; ``world/state.py`` the JSON the viewer draws and a run saves. This
module is what is left: building the town, the step, destination names and codes, and queries.

Residents are ordinary Mesa agents (``town.agents``, ``AgentSet.select``, ``DataCollector`` all
work), but the state that every step touches for every resident (tile, path, destination) lives in
numpy arrays, so movement and perception for 10,000 residents are array operations rather than
10,000 Python calls.

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
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import datetime
from operator import attrgetter
from typing import Any

import mesa
import numpy as np

from . import state as town_state
from .agents import Action, GoTo, RelationSpec, Resident, ResidentSpec, SetActivity, SetObjectState
from .clock import Clock
from .movement import Movement
from .pathfinding import Pathfinder
from .perception import OBJECT, Perception, Seen, perceive
from .social import SocialGraph
from .town_map import TownMap

EMOJI = {"walking": "🚶", "sleeping": "😴", "home": "🏠", "work": "💼", "venue": "☕", "outdoor": "🌳"}


def _between(start: np.ndarray, end: np.ndarray, m: int) -> np.ndarray:
    """Vectorised ``start <= m < end`` on a 24-hour clock (wrapping past midnight when end < start)."""
    return np.where(start <= end, (start <= m) & (m < end), (m >= start) | (m < end))


def _movement_array(name: str, doc: str) -> property:
    """A read-only ``Town`` attribute that is ``town.movement.<name>`` (the same array, not a copy)."""
    return property(attrgetter(f"movement.{name}"), doc=f"{doc} (``movement.{name}``).")


class Town(mesa.Model):
    """A town of residents on a tile map, with a clock, movement, perception and a social graph.

    ``seed`` (or ``rng``) seeds ``self.rng`` (numpy) and ``self.random`` as in any Mesa 3 model; the
    only randomness in the world (who goes out on an evening, and where) comes from ``self.rng``,
    so the same seed gives the same run. ``Town.step()`` is a Mesa step; ``await Town.astep()`` is the
    same step with every resident's ``think`` awaited concurrently.
    """

    tile = _movement_array("tile", "Flat index of the tile each resident stands on")
    dest = _movement_array("dest", "Each resident's destination code (-1: none)")
    held = _movement_array("held", "The tile each resident holds (-1: none)")
    path_start = _movement_array("path_start", "Where each resident's path starts in the path pool")
    path_len = _movement_array("path_len", "Each resident's path length in tiles (0: no path)")
    cursor = _movement_array("cursor", "How far along its path each resident is")
    speed = _movement_array("speed", "Each resident's walking speed in tiles per step")
    reserved = _movement_array("reserved", "Per tile, the resident holding it (-1: free)")

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
        path_cache_mb: float = 64.0,
        searches_per_step: int = 160,
    ) -> None:
        super().__init__(rng=rng if rng is not None else seed)
        self.map = town_map
        self.clock = Clock(start, minutes_per_step)
        self.vision_radius = int(vision_radius)
        self.attention_bandwidth = int(attention_bandwidth)
        self.walk_speed = int(walk_speed)
        self.max_steps = max_steps
        self.datacollector: mesa.DataCollector | None = None
        self.pathfinder = Pathfinder(
            town_map.walkable, town_map.width, field_cache_mb=field_cache_mb, path_cache_mb=path_cache_mb
        )
        # A* searches a step may spend, its own first, then looking ahead (``Movement.expect``)
        self.searches_per_step = int(searches_per_step)
        self._n_places = len(town_map.places)
        self._kind_codes = {k: i for i, k in enumerate(("home", "work", "venue", "outdoor"))}
        self._place_kind = np.array([self._kind_codes[p.kind] for p in town_map.places], np.int8)

        n = len(residents)
        names = [r.name for r in residents]
        if len(set(names)) != n:
            dup = sorted({x for x in names if names.count(x) > 1})
            raise ValueError(f"resident names must be unique; repeated: {', '.join(dup)}")
        speed = np.array([r.speed or self.walk_speed for r in residents], np.int64)
        self.movement = Movement(town_map, self.pathfinder, speed)
        self.active = np.ones(n, np.bool_)
        self.changed_step = np.zeros(n, np.int64)
        self.activity: list[str] = [""] * n
        self.emoji: list[str] = [""] * n
        self._init_routine(residents)
        self._init_objects()

        # perception results (filled at the start of every step)
        self.seen_kind = np.full((n, self.attention_bandwidth), -1, np.int8)
        self.seen_index = np.full((n, self.attention_bandwidth), -1, np.int32)
        self.seen_d2 = np.full((n, self.attention_bandwidth), -1, np.int32)
        self.seen_count = np.zeros(n, np.int32)
        self.perceived_step = -1
        self._searched_before = 0
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
        self._warm_commutes()

    def _init_routine(self, residents: Sequence[ResidentSpec]) -> None:
        """The routine hints as arrays, one row per resident, and the day's (not yet drawn) outings."""
        n = len(residents)
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

    def _init_objects(self) -> None:
        """Object states (from the map), when each last changed, the event log, and positions for perception."""
        objs = self.map.objects
        self.object_state: list[str] = [o.state for o in objs]
        self.object_changed_step = np.full(len(objs), -1, np.int64)
        self.object_events: deque[dict] = deque(maxlen=10_000)
        self._ox = np.array([o.x for o in objs], np.int32)
        self._oy = np.array([o.y for o in objs], np.int32)
        self._oarea = np.array([o.area for o in objs], np.int32)

    def _code(self, name: str) -> int:
        """The destination code of a place or object name: a place id, or len(places) + the object id."""
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

    def _place_initial(self, specs: Sequence[ResidentSpec]) -> None:
        """Stand everyone at their ``start``, else on a free tile of home, else on a spawn point."""
        spawn = self.map.spawn_tiles
        for i, spec in enumerate(specs):
            if spec.start is not None:
                x, y = spec.start
                self._put(i, self.movement.checked_tile(x, y, spec.name))
            elif self.home_code[i] >= 0:
                code = int(self.home_code[i])
                place = self.map.places[code] if code < self._n_places else None
                t0 = int(place.tiles[0]) if place is not None else int(self.map.objects[code - self._n_places].tile)
                path = self.movement.free_path(t0, code)
                self._put(i, int(path[-1]) if path.size else t0)
                self.dest[i] = code
            else:
                self._put(i, int(spawn[i % spawn.size]))
            self.activity[i] = "at home" if self.dest[i] >= 0 else "arriving in town"
            self.emoji[i] = EMOJI["home"] if self.dest[i] >= 0 else ""

    def _warm_commutes(self) -> None:
        """At build time, find every worker's path from home to work (the first morning's rush)."""
        for i in np.flatnonzero(self.has_work & (self.dest == self.home_code)).tolist():
            self.movement.expect(i, int(self.work_code[i]))
        self.movement.prefetch_expected()

    def _put(self, i: int, t: int) -> None:
        """Stand resident i on tile t (no walking), holding it when free."""
        self.movement.put(i, t)
        self.changed_step[i] = self.steps

    def _deactivate(self, i: int) -> None:
        """Resident i leaves the town (``Resident.remove``): no path, no held tile, not perceived."""
        self.movement.stop(i)
        self.active[i] = False
        self.changed_step[i] = self.steps

    def teleport(self, who: str | int | Resident, xy: tuple[int, int]) -> None:
        """Put a resident on a tile at once (no walking), holding it if free."""
        r = self.resident(who)
        self._put(r.index, self.movement.checked_tile(int(xy[0]), int(xy[1]), r.name))
        self.dest[r.index] = -1

    def _go_to_code(self, i: int, code: int, *, shared: bool = False) -> int:
        """Send resident i to destination ``code``; returns the path length in tiles (0: already there)."""
        tiles = self.movement.send(i, code, shared=shared, who=self.residents[i].name)
        if tiles is None:  # already sent there, and holding a tile of it
            return self.movement.tiles_left(i)
        if tiles > 0:
            self.activity[i] = f"walking to {self.code_name(code)}"
            self.emoji[i] = EMOJI["walking"]
        else:
            self._arrived(i)
        self.changed_step[i] = self.steps
        return tiles

    def _arrived(self, i: int) -> None:
        """Resident i has reached its destination: its activity says so ("at home", "working at ...")."""
        code = int(self.dest[i])
        name = self.code_name(code)
        self.movement.expect(i, int(self.work_code[i] if code == self.home_code[i] else self.home_code[i]))
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
        self._searched_before = self.pathfinder.stats["astar"] + self.pathfinder.stats["prefetched"]
        self._new_day_if_needed()
        self._perceive()
        t1 = time.perf_counter()
        self._routine()
        self.timings = {"perception": t1 - t0, "decisions": time.perf_counter() - t1}

    def _apply_routine(self) -> None:
        """Send everyone whose routine destination changed this step there (the default ``think``, vectorised)."""
        todo = np.flatnonzero((self.routine_code >= 0) & (self.routine_code != self.dest) & self.active)
        if todo.size == 0:
            return
        codes = self.routine_code[todo]
        shared = self.movement.shared(codes)
        self.movement.prefetch_requests(todo.tolist(), codes.tolist(), shared)
        for i, code in zip(todo.tolist(), codes.tolist(), strict=True):
            self._go_to_code(i, code, shared=bool(shared[code]))

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
        shared = self.movement.shared(np.array(goto_codes, np.int64)) if goto_codes else None
        if goto_codes:
            sent = [(r.index, self._code(a.place)) for r, actions in plans for a in actions if isinstance(a, GoTo)]
            firsts = dict(reversed(sent))  # a resident's first GoTo leaves from where it stands now
            self.movement.prefetch_requests(list(firsts), list(firsts.values()), shared)
        for r, actions in plans:
            for a in actions:
                if isinstance(a, GoTo):
                    code = self._code(a.place)
                    self._go_to_code(r.index, code, shared=bool(shared[code]))
                elif isinstance(a, SetObjectState):
                    self.set_object_state(a.object, a.state, by=r)
                else:
                    self.set_activity(r, a.text, a.emoji)

    def _move(self) -> None:
        """Every walker advances up to its speed along its path, all at once; arrivals say where they are."""
        moved, arrived = self.movement.advance(self.active)
        self.changed_step[moved] = self.steps
        for i in arrived:
            self._arrived(i)

    def _look_ahead(self, searched_before: int) -> None:
        """Spend what is left of this step's search budget on expected trips (``Movement.expect``)."""
        stats = self.pathfinder.stats
        spent = stats["astar"] + stats["prefetched"] - searched_before
        if spent < self.searches_per_step:
            self.movement.prefetch_expected(self.searches_per_step - spent)

    def _end_step(self) -> None:
        t0 = time.perf_counter()
        self._move()
        t1 = time.perf_counter()
        self._look_ahead(self._searched_before)
        self.timings["walking"] = t1 - t0
        self.timings["looking ahead"] = time.perf_counter() - t1
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

    def snapshot(self) -> dict:
        """Everything a viewer needs to draw the town now, as plain JSON (``world.state.snapshot``)."""
        return town_state.snapshot(self)

    def delta(self, since_step: int) -> dict:
        """What changed after ``since_step``: residents that moved or changed activity, objects that changed."""
        return town_state.delta(self, since_step)

    def state_dict(self) -> dict:
        """The whole dynamic state as plain JSON: positions, paths, objects, social graph, clock, rng.

        A town built from the same scenario and given this state continues exactly as this one does.
        """
        return town_state.state_dict(self)

    def load_state_dict(self, state: dict) -> None:
        """Restore a state saved by ``state_dict`` (on a town built from the same scenario)."""
        town_state.load_state_dict(self, state)
