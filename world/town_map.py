"""The town map: a tile grid with collision, named places (area → room → object) and spawn points.

The map is written by people, so its source form is text: an ASCII grid whose characters are either
terrain (``#`` wall, ``.`` street, ``+`` door, ...) or the character of a place, and a list of places
that may also claim tiles with rectangles (the generator's big towns use rectangles: a town of 4,000
homes would run out of characters). ``TownMap.build`` turns a ``MapSpec`` into arrays and checks
everything a person can get wrong; each problem carries a location path (``("places", 2, "rooms",
0, "char")``) so the scenario loader can point at the line of the YAML file.

Coordinates are ``(x, y)`` = (column, row), origin top-left; tiles are also flat indices
``y * width + x``. Objects are furniture: they block their own tile and are used from a free tile
next to them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .pathfinding import bfs_field

PLACE_KINDS = ("home", "work", "venue", "outdoor")
SEP = ":"  # separates area, room and object in full names: "Hearth Café:counter:coffee machine"


@dataclass(frozen=True)
class Terrain:
    """What a grid character means when it is not a place: its name, collision and colour."""

    name: str
    walkable: bool
    color: str = "#cccccc"


DEFAULT_LEGEND: dict[str, Terrain] = {
    "#": Terrain("wall", False, "#4a4a55"),
    ".": Terrain("street", True, "#d9d3c3"),
    ",": Terrain("grass", True, "#9cc46f"),
    "+": Terrain("door", True, "#a9743f"),
    "~": Terrain("water", False, "#5b8fd6"),
    "T": Terrain("tree", False, "#3f7a3a"),
    "*": Terrain("spawn", True, "#e3c86b"),
    "_": Terrain("floor", True, "#efe4c8"),
    " ": Terrain("void", False, "#000000"),
}
FLOOR = DEFAULT_LEGEND["_"]


@dataclass
class ObjectSpec:
    """An object in a place, e.g. a stove whose state residents change ("off" → "on")."""

    name: str
    at: tuple[int, int]
    state: str = "idle"
    states: tuple[str, ...] | None = None
    description: str = ""


@dataclass
class PlaceSpec:
    """An area (top level) or a room (inside an area); tiles from ``char`` in the grid and/or ``rects``."""

    name: str
    kind: str = "venue"
    char: str | None = None
    rects: list[tuple[int, int, int, int]] = field(default_factory=list)  # (x, y, width, height)
    rooms: list[PlaceSpec] = field(default_factory=list)
    objects: list[ObjectSpec] = field(default_factory=list)
    description: str = ""
    color: str | None = None


@dataclass
class MapSpec:
    """Everything needed to build a map: the grid rows, extra terrain, places, spawn points."""

    tiles: list[str]
    places: list[PlaceSpec]
    legend: dict[str, Terrain] = field(default_factory=dict)
    spawn: list[tuple[int, int]] = field(default_factory=list)
    outdoors: str = "outdoors"


@dataclass(frozen=True)
class MapProblem:
    """One thing wrong with a map: where (a path into the ``MapSpec``) and what to change."""

    loc: tuple
    message: str


class MapError(ValueError):
    """A map that cannot be built; ``problems`` lists every independent mistake found."""

    def __init__(self, problems: list[MapProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{_loc_str(p.loc)}: {p.message}" for p in problems))


class UnknownPlaceError(KeyError):
    """A place or object name that the map does not have (with the nearest real names)."""

    def __init__(self, name: str, suggestions: list[str]) -> None:
        self.name = name
        self.suggestions = suggestions
        hint = f"; did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(f"no place or object called {name!r} in this town{hint}")

    def __str__(self) -> str:
        return str(self.args[0])


def _check_child_name(loc: tuple, name: str, taken: set[str], clash: str, problems: list[MapProblem]) -> None:
    """A room's or object's name: no ':' (it separates levels) and unique in its parent, ignoring case."""
    if SEP in name:
        problems.append(_colon_problem(loc, name))
    if name.casefold() in taken:
        problems.append(MapProblem((*loc, "name"), f"{clash} '{name}'; rename one"))
    taken.add(name.casefold())


def _colon_problem(loc: tuple, name: str) -> MapProblem:
    return MapProblem((*loc, "name"), f"'{name}' contains ':', which separates area, room and object; remove it")


def _loc_str(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class Place:
    """A named region. ``depth`` 0 is an area (or the outdoors, id 0), 1 a room inside an area."""

    id: int
    name: str  # full name, unique: "Hearth Café" or "Hearth Café:kitchen"
    short: str
    kind: str
    parent: int  # -1 for areas
    depth: int
    tiles: np.ndarray  # sorted flat indices of the floor tiles a resident can stand on
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive)
    description: str = ""
    color: str | None = None
    children: list[int] = field(default_factory=list)
    objects: list[int] = field(default_factory=list)

    @property
    def area(self) -> int:
        """Id of the area this place belongs to (itself for an area)."""
        return self.id if self.depth == 0 else self.parent


@dataclass
class MapObject:
    """An object on one tile of a place; ``stand_tiles`` are the free tiles from which it is used."""

    id: int
    name: str  # "Hearth Café:counter:coffee machine"
    short: str
    place: int  # the room or area holding it
    area: int
    tile: int
    x: int
    y: int
    state: str
    states: tuple[str, ...] | None
    description: str
    stand_tiles: np.ndarray


class TownMap:
    """The built map: collision, place membership per tile, places, objects and spawn points."""

    def __init__(self) -> None:  # use TownMap.build
        self.width = 0
        self.height = 0
        self.rows: list[str] = []
        self.legend: dict[str, Terrain] = {}
        self.place_chars: dict[str, int] = {}
        self.walkable = np.zeros(0, np.bool_)
        self.area_of = np.zeros(0, np.int32)
        self.place_of = np.zeros(0, np.int32)
        self.places: list[Place] = []
        self.objects: list[MapObject] = []
        self.spawn_tiles = np.zeros(0, np.int32)
        self._by_name: dict[str, tuple[str, int]] = {}
        self._by_folded: dict[str, tuple[str, int]] = {}

    @classmethod
    def build(cls, spec: MapSpec) -> TownMap:
        """Build and check a map; raises ``MapError`` listing every problem found at the first failing stage."""
        m = cls()
        problems: list[MapProblem] = []
        m._build_grid(spec, problems)
        if problems:
            raise MapError(problems)
        specs = m._build_places(spec, problems)
        if problems:
            raise MapError(problems)
        m._build_objects(spec, specs, problems)
        if problems:
            raise MapError(problems)
        m._finish_places(spec, specs, problems)
        if problems:
            raise MapError(problems)
        m._build_spawn(spec, problems)
        if problems:
            raise MapError(problems)
        m._check_reachable(specs, problems)
        if problems:
            raise MapError(problems)
        return m

    def _build_grid(self, spec: MapSpec, problems: list[MapProblem]) -> None:
        rows = list(spec.tiles)
        while rows and not rows[-1].strip():
            rows.pop()
        if not rows:
            problems.append(MapProblem(("tiles",), "the grid is empty; draw the town as rows of characters"))
            return
        width = len(rows[0])
        for r, row in enumerate(rows):
            if len(row) != width:
                problems.append(
                    MapProblem(
                        ("tiles", r),
                        f"grid row {r} is {len(row)} characters wide but row 0 is {width}; "
                        "every row must have the same width (pad with '#' or spaces)",
                    )
                )
        legend = dict(DEFAULT_LEGEND)
        for ch, terrain in spec.legend.items():
            if len(ch) != 1:
                problems.append(MapProblem(("legend", ch), f"legend keys are single characters, got {ch!r}"))
            legend[ch] = terrain
        place_chars: dict[str, tuple] = {}
        for i, a in enumerate(spec.places):
            for loc, p in [(("places", i), a)] + [(("places", i, "rooms", j), r) for j, r in enumerate(a.rooms)]:
                if p.char is None:
                    continue
                name = p.name if loc[-2] == "places" else f"{a.name}{SEP}{p.name}"
                if p.char in legend:
                    problems.append(
                        MapProblem(
                            (*loc, "char"),
                            f"char {p.char!r} of '{name}' is the terrain '{legend[p.char].name}'; "
                            "pick a character that is not terrain",
                        )
                    )
                elif p.char in place_chars:
                    problems.append(
                        MapProblem(
                            (*loc, "char"),
                            f"char {p.char!r} of '{name}' is already used by '{place_chars[p.char][1]}'; "
                            "every place needs its own character",
                        )
                    )
                else:
                    place_chars[p.char] = (loc, name)
        if problems:
            return
        seen_bad: set[str] = set()
        for r, row in enumerate(rows):
            for c, ch in enumerate(row):
                if ch not in legend and ch not in place_chars and ch not in seen_bad:
                    seen_bad.add(ch)
                    known = "".join(sorted(legend)) + "".join(sorted(place_chars))
                    problems.append(
                        MapProblem(
                            ("tiles", r),
                            f"character {ch!r} at column {c} of grid row {r} is neither terrain nor a place's char "
                            f"(known: {known!r}); add it to map.legend or give a place that char",
                        )
                    )
        if problems:
            return
        self.width, self.height, self.rows = width, len(rows), rows
        self.legend = {ch: t for ch, t in legend.items() if any(ch in row for row in rows)}
        codes = np.frombuffer("".join(rows).encode("utf-32-le"), dtype=np.uint32)
        walk = np.zeros(codes.size, np.bool_)
        for ch, t in legend.items():
            if t.walkable:
                walk |= codes == ord(ch)
        self._codes = codes
        self._place_char_locs = place_chars
        for ch in place_chars:
            walk |= codes == ord(ch)
        self.walkable = walk

    def _tiles_of(self, p: PlaceSpec, loc: tuple, problems: list[MapProblem]) -> np.ndarray:
        """Flat indices of the floor tiles a place claims by char and by rectangles."""
        parts = []
        if p.char is not None:
            mask = self._codes == ord(p.char)
            parts.append(np.flatnonzero(mask))
        for k, rect in enumerate(p.rects):
            x, y, w, h = rect
            if w < 1 or h < 1 or x < 0 or y < 0 or x + w > self.width or y + h > self.height:
                problems.append(
                    MapProblem(
                        (*loc, "rects", k),
                        f"rectangle [x={x}, y={y}, width={w}, height={h}] does not fit the {self.width}x{self.height} "
                        "grid (x+width and y+height may be at most the grid's width and height)",
                    )
                )
                continue
            ys, xs = np.mgrid[y : y + h, x : x + w]
            flat = (ys * self.width + xs).ravel()
            parts.append(flat[self.walkable[flat]])
        if not parts:
            return np.zeros(0, np.int64)
        return np.unique(np.concatenate(parts))

    def _build_places(self, spec: MapSpec, problems: list[MapProblem]) -> list[tuple[tuple, PlaceSpec]]:
        n = self.width * self.height
        self.area_of = np.zeros(n, np.int32)
        self.place_of = np.zeros(n, np.int32)
        specs: list[tuple[tuple, PlaceSpec]] = [(("outdoors",), PlaceSpec(spec.outdoors, "outdoor"))]
        self._parents: list[int] = [-1]
        names: dict[str, int] = {spec.outdoors.casefold(): -1}
        claimed_by: dict[int, str] = {}
        for i, a in enumerate(spec.places):
            loc = ("places", i)
            if SEP in a.name:
                problems.append(_colon_problem(loc, a.name))
            folded = a.name.casefold()
            if folded in names:
                other = "the outdoors (map.outdoors)" if names[folded] < 0 else f"map.places[{names[folded]}]"
                problems.append(
                    MapProblem((*loc, "name"), f"the name '{a.name}' is already used by {other}; names must be unique")
                )
            names[folded] = i
            if a.kind not in PLACE_KINDS:
                problems.append(MapProblem((*loc, "kind"), f"kind must be one of {', '.join(PLACE_KINDS)}"))
            aid = len(specs)
            specs.append((loc, a))
            self._parents.append(-1)
            own = self._tiles_of(a, loc, problems)
            clash = own[self.area_of[own] != 0]
            if clash.size:
                t = int(clash[0])
                problems.append(
                    MapProblem(
                        loc,
                        f"'{a.name}' overlaps '{claimed_by[int(self.area_of[t])]}' at (x={t % self.width}, "
                        f"y={t // self.width}); places may not share tiles",
                    )
                )
            self.area_of[own] = aid
            self.place_of[own] = aid
            claimed_by[aid] = a.name
            room_names: set[str] = set()
            for j, r in enumerate(a.rooms):
                rloc = (*loc, "rooms", j)
                full = f"{a.name}{SEP}{r.name}"
                _check_child_name(rloc, r.name, room_names, f"'{a.name}' already has a room called", problems)
                if r.rooms:
                    problems.append(
                        MapProblem((*rloc, "rooms"), "rooms cannot hold rooms (areas hold rooms, rooms hold objects)")
                    )
                rid = len(specs)
                specs.append((rloc, r))
                self._parents.append(aid)
                tiles = self._tiles_of(r, rloc, problems)
                other_area = tiles[(self.area_of[tiles] != 0) & (self.area_of[tiles] != aid)]
                other_room = tiles[(self.place_of[tiles] != aid) & (self.area_of[tiles] == aid)]
                for bad in (other_area, other_room):
                    if bad.size:
                        t = int(bad[0])
                        who = claimed_by[int(self.place_of[t])]
                        problems.append(
                            MapProblem(
                                rloc,
                                f"'{full}' overlaps '{who}' at (x={t % self.width}, y={t // self.width}); "
                                "places may not share tiles",
                            )
                        )
                self.area_of[tiles] = aid
                self.place_of[tiles] = rid
                claimed_by[rid] = full
        return specs

    def _build_objects(self, spec: MapSpec, specs: list[tuple[tuple, PlaceSpec]], problems: list[MapProblem]) -> None:
        self._object_specs: list[tuple[tuple, ObjectSpec, int]] = []
        occupied: dict[int, str] = {}
        for pid, (loc, p) in enumerate(specs):
            if pid == 0:
                continue
            area_id = self._parent_id(specs, pid)
            full_place = self._full_name(specs, pid)
            names: set[str] = set()
            for k, o in enumerate(p.objects):
                oloc = (*loc, "objects", k)
                _check_child_name(oloc, o.name, names, f"'{full_place}' already has an object", problems)
                x, y = o.at
                where = f"(x={x}, y={y})"
                if not (0 <= x < self.width and 0 <= y < self.height):
                    problems.append(
                        MapProblem((*oloc, "at"), f"{where} is outside the {self.width}x{self.height} grid")
                    )
                    continue
                t = y * self.width + x
                inside = self.place_of[t] == pid if pid != area_id else self.area_of[t] == pid
                if not inside:
                    here = self.place_of[t]
                    what = f"in '{self._full_name(specs, int(here))}'" if here else "not in any place"
                    problems.append(
                        MapProblem(
                            (*oloc, "at"),
                            f"'{o.name}' is placed at {where}, which is {what}, not in '{full_place}'; "
                            "move it onto a floor tile of its place",
                        )
                    )
                    continue
                if t in occupied:
                    problems.append(
                        MapProblem((*oloc, "at"), f"'{o.name}' is on the same tile {where} as '{occupied[t]}'")
                    )
                    continue
                if o.states is not None and o.state not in o.states:
                    problems.append(
                        MapProblem(
                            (*oloc, "state"),
                            f"state {o.state!r} is not one of the object's states ({', '.join(o.states)}); "
                            "use one of them or add it to states",
                        )
                    )
                occupied[t] = o.name
                self._object_specs.append((oloc, o, pid))
        for t in occupied:
            self.walkable[t] = False

    def _parent_id(self, specs: list[tuple[tuple, PlaceSpec]], pid: int) -> int:
        return self._parents[pid] if self._parents[pid] >= 0 else pid

    def _full_name(self, specs: list[tuple[tuple, PlaceSpec]], pid: int) -> str:
        parent = self._parents[pid]
        name = specs[pid][1].name
        return name if parent < 0 else f"{specs[parent][1].name}{SEP}{name}"

    def _finish_places(self, spec: MapSpec, specs: list[tuple[tuple, PlaceSpec]], problems: list[MapProblem]) -> None:
        w = self.width
        floor = np.flatnonzero(self.walkable)
        by_area = _group(floor, self.area_of[floor], len(specs))
        by_place = _group(floor, self.place_of[floor], len(specs))
        for pid, (loc, p) in enumerate(specs):
            parent = self._parents[pid]
            is_area = parent < 0
            tiles = by_area[pid] if is_area else by_place[pid]
            name = self._full_name(specs, pid)
            if tiles.size == 0 and pid != 0:
                how = "a char that appears in map.tiles or rects that cover floor tiles"
                if p.char is None and not p.rects and not p.rooms:
                    msg = f"'{name}' has no tiles: give it {how}"
                else:
                    msg = f"'{name}' has no free floor tile (walls or objects cover all of it); give it {how}"
                problems.append(MapProblem(loc, msg))
                bbox = (0, 0, 0, 0)
            elif tiles.size:
                xs, ys = tiles % w, tiles // w
                bbox = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
            else:
                bbox = (0, 0, self.width - 1, self.height - 1)
            place = Place(
                id=pid,
                name=name,
                short=p.name,
                kind=p.kind if is_area else specs[parent][1].kind,
                parent=parent,
                depth=0 if is_area else 1,
                tiles=tiles.astype(np.int32),
                bbox=bbox,
                description=p.description,
                color=p.color,
            )
            self.places.append(place)
            if parent >= 0:
                self.places[parent].children.append(pid)
        for oid, (oloc, o, pid) in enumerate(self._object_specs):
            t = o.at[1] * w + o.at[0]
            area = self.places[pid].area
            nbrs = [t - w, t + w, t - 1 if o.at[0] > 0 else -1, t + 1 if o.at[0] < w - 1 else -1]
            stand = sorted(u for u in nbrs if 0 <= u < w * self.height and self.walkable[u] and self.area_of[u] == area)
            obj = MapObject(
                id=oid,
                name=f"{self.places[pid].name}{SEP}{o.name}",
                short=o.name,
                place=pid,
                area=area,
                tile=t,
                x=o.at[0],
                y=o.at[1],
                state=o.state,
                states=tuple(o.states) if o.states is not None else None,
                description=o.description,
                stand_tiles=np.array(stand, np.int32),
            )
            if not stand:
                problems.append(
                    MapProblem(
                        oloc,
                        f"'{obj.name}' at (x={obj.x}, y={obj.y}) has no free floor tile of its place next to it, "
                        "so nobody can use it; move it or clear a neighbouring tile",
                    )
                )
            self.objects.append(obj)
            self.places[pid].objects.append(oid)
        for kind, items in (("place", self.places), ("object", self.objects)):
            for item in items:
                self._by_name[item.name] = (kind, item.id)
                self._by_folded.setdefault(item.name.casefold(), (kind, item.id))

    def _build_spawn(self, spec: MapSpec, problems: list[MapProblem]) -> None:
        tiles = [int(t) for t in np.flatnonzero(self._codes == ord("*"))] if "*" in self.legend else []
        for k, (x, y) in enumerate(spec.spawn):
            if not (0 <= x < self.width and 0 <= y < self.height):
                problems.append(
                    MapProblem(("spawn", k), f"(x={x}, y={y}) is outside the {self.width}x{self.height} grid")
                )
                continue
            t = y * self.width + x
            if not self.walkable[t]:
                problems.append(
                    MapProblem(("spawn", k), f"(x={x}, y={y}) is not walkable; a spawn point must be a floor tile")
                )
                continue
            tiles.append(t)
        if not tiles and not problems:
            problems.append(
                MapProblem(("spawn",), "the map has no spawn point; mark one with '*' in map.tiles or add map.spawn")
            )
        self.spawn_tiles = np.array(sorted(set(tiles)), np.int32)

    def _check_reachable(self, specs: list[tuple[tuple, PlaceSpec]], problems: list[MapProblem]) -> None:
        dist = bfs_field(self.walkable, self.width, self.spawn_tiles)
        t0 = int(self.spawn_tiles[0])
        origin = f"(x={t0 % self.width}, y={t0 // self.width})"
        for place in self.places[1:]:
            if not (dist[place.tiles] >= 0).any():
                problems.append(
                    MapProblem(
                        specs[place.id][0],
                        f"'{place.name}' cannot be reached from the spawn point at {origin}; "
                        "open a door ('+') in its walls",
                    )
                )
        for obj, (oloc, _, _) in zip(self.objects, self._object_specs, strict=True):
            if obj.stand_tiles.size and not (dist[obj.stand_tiles] >= 0).any():
                problems.append(MapProblem(oloc, f"'{obj.name}' cannot be reached from the spawn point at {origin}"))
        self.reachable = dist >= 0

    def xy(self, tile: int) -> tuple[int, int]:
        """``(x, y)`` of a flat tile index."""
        return tile % self.width, tile // self.width

    def tile(self, x: int, y: int) -> int:
        """Flat index of ``(x, y)``."""
        return y * self.width + x

    def lookup(self, name: str) -> tuple[str, int]:
        """``("place", id)`` or ``("object", id)`` for a full name (exact, then case-insensitive).

        Raises ``UnknownPlaceError`` with the closest real names: a mind that asks for a place the
        town lacks gets something it can correct.
        """
        hit = self._by_name.get(name) or self._by_folded.get(name.strip().casefold())
        if hit is None:
            raise UnknownPlaceError(name, difflib.get_close_matches(name, list(self._by_name), n=3, cutoff=0.6))
        return hit

    def place(self, name: str) -> Place:
        """The place (area, room or the outdoors) with this full name."""
        kind, i = self.lookup(name)
        if kind != "place":
            raise UnknownPlaceError(name, [self.places[self.objects[i].place].name])
        return self.places[i]

    def object(self, name: str) -> MapObject:
        """The object with this full name (``"Area:room:object"`` or ``"Area:object"``)."""
        kind, i = self.lookup(name)
        if kind != "object":
            raise UnknownPlaceError(name, [self.objects[o].name for o in self.places[i].objects][:3])
        return self.objects[i]

    def place_names(
        self, kinds: Iterable[str] | None = None, *, rooms: bool = True, outdoors: bool = True
    ) -> list[str]:
        """Real place names, for schema enums (a small model cannot invent a location)."""
        wanted = set(kinds) if kinds is not None else None
        out = []
        for p in self.places:
            if p.id == 0 and not outdoors:
                continue
            if p.depth > 0 and not rooms:
                continue
            if wanted is not None and p.kind not in wanted:
                continue
            out.append(p.name)
        return out

    def to_json(self) -> dict:
        """What a viewer needs to draw the map: the grid, what each character means, places and objects."""
        legend = {ch: {"terrain": t.name, "walkable": t.walkable, "color": t.color} for ch, t in self.legend.items()}
        for ch, (_loc, name) in self._place_char_locs.items():
            if any(ch in row for row in self.rows):
                legend[ch] = {"terrain": FLOOR.name, "walkable": True, "color": FLOOR.color, "place": name}
        places = []
        for p in self.places[1:]:
            x0, y0, x1, y1 = p.bbox
            places.append(
                {
                    "id": p.id,
                    "name": p.name,
                    "short": p.short,
                    "kind": p.kind,
                    "parent": p.parent,
                    "bbox": [x0, y0, x1, y1],
                    "label_at": [(x0 + x1) // 2, (y0 + y1) // 2],
                    "color": p.color,
                }
            )
        return {
            "width": self.width,
            "height": self.height,
            "tiles": list(self.rows),
            "legend": legend,
            "floor": {"terrain": FLOOR.name, "color": FLOOR.color},
            "outdoors": self.places[0].name,
            "places": places,
            "objects": [
                {"id": o.id, "name": o.name, "short": o.short, "place": o.place, "x": o.x, "y": o.y}
                for o in self.objects
            ],
            "spawn": [list(self.xy(int(t))) for t in self.spawn_tiles],
        }


def _group(tiles: np.ndarray, labels: np.ndarray, count: int) -> list[np.ndarray]:
    """Split ``tiles`` (sorted) by label into ``count`` sorted arrays."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(count + 1))
    sorted_tiles = tiles[order]
    return [sorted_tiles[bounds[i] : bounds[i + 1]] for i in range(count)]
