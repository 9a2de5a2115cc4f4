"""Where the residents stand and how they walk: tiles, paths, destinations and held tiles, as arrays.

Split from ``model.py`` because this is mechanics without meaning. ``Movement`` knows tiles,
destination codes, paths and who holds which tile; the town (``world/model.py``) decides who goes
where, and says what arriving means ("working at the bakery"). ``Town`` owns one ``Movement`` and
reads its arrays as ``town.tile``, ``town.cursor``, ...: every array has one row per resident (row
``i`` is the resident with ``index`` i) and is only ever changed in place, never rebound.

A destination is one int code: a place id, or ``len(places)`` + an object id.

Paths live in one int32 pool: resident i walks ``pool[path_start[i] : path_start[i] + path_len[i]]``
and stands at ``cursor[i]`` along it. New paths are appended; when the pool is full, it keeps only
the unwalked rest of each path (and doubles while that would fill more than half of it).

Occupancy: ``reserved[t]`` is the resident holding tile t (-1: free) and ``held[i]`` the tile
resident i holds. A path ends on a free tile of its destination, which the walker reserves at once,
in the order residents are sent, so two residents sent to one place never get the same tile. Walkers
pass through everyone, so nobody waits and nothing can deadlock; a full place: newcomers share its
entry tile.

Looking ahead: a resident's next trip is usually known when it arrives (from work: home; at home:
work), so ``expect`` queues it and ``prefetch_expected`` finds those paths into the pathfinder's
cache in quiet steps, and ``prefetch_requests`` finds all of one step's A* paths in one batch. Both
only move work between steps: a path is the same whether found ahead or in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

import numpy as np

from .pathfinding import Pathfinder
from .town_map import TownMap


class Movement:
    """Every resident's tile, path, destination, speed and held tile; paths found by ``pathfinder``."""

    def __init__(self, town_map: TownMap, pathfinder: Pathfinder, speed: np.ndarray) -> None:
        n = speed.size
        self.map = town_map
        self.pathfinder = pathfinder
        self.n_places = len(town_map.places)
        self.tile = np.zeros(n, np.int32)
        self.dest = np.full(n, -1, np.int32)
        self.held = np.full(n, -1, np.int32)
        self.path_start = np.zeros(n, np.int64)
        self.path_len = np.zeros(n, np.int64)
        self.cursor = np.zeros(n, np.int64)
        self.speed = speed
        self.reserved = np.full(town_map.walkable.size, -1, np.int32)
        self._pool = np.zeros(1 << 16, np.int32)
        self._pool_top = 0
        self._expected: dict[int, int] = {}

    def checked_tile(self, x: int, y: int, who: str) -> int:
        """The flat index of ``(x, y)``; ``ValueError`` naming ``who`` if it is off the map or not walkable."""
        if not (0 <= x < self.map.width and 0 <= y < self.map.height):
            raise ValueError(f"{who}: ({x}, {y}) is outside the {self.map.width}x{self.map.height} map")
        t = y * self.map.width + x
        if not self.map.walkable[t]:
            raise ValueError(f"{who}: ({x}, {y}) is not a walkable tile")
        return t

    def put(self, i: int, t: int) -> None:
        """Stand resident i on tile t with no path, holding t when it is free."""
        self.release(i)
        self.tile[i] = t
        self.path_len[i] = 0
        self.cursor[i] = 0
        if self.reserved[t] < 0:
            self.reserved[t] = i
            self.held[i] = t

    def release(self, i: int) -> None:
        """Resident i stops holding its tile."""
        h = self.held[i]
        if h >= 0 and self.reserved[h] == i:
            self.reserved[h] = -1
        self.held[i] = -1

    def stop(self, i: int) -> None:
        """Resident i stops walking and frees its tile (it leaves the town)."""
        self.release(i)
        self.path_len[i] = 0
        self.cursor[i] = 0

    def shared(self, codes: np.ndarray) -> np.ndarray:
        """Per destination code: whether this step's ``codes`` want that place often enough to pay for a
        distance field (objects never get one)."""
        counts = np.bincount(codes, minlength=self.n_places + len(self.map.objects))
        wanted = counts >= self.pathfinder.shared_threshold
        wanted[self.n_places :] = False
        return wanted

    def free_path(self, start: int, code: int) -> np.ndarray:
        """Path from ``start`` (inside the destination) to its nearest unheld tile; empty if full."""
        if code < self.n_places:
            place = self.map.places[code]
            labels = self.map.area_of if place.depth == 0 else self.map.place_of
            return self.pathfinder.nearest_free(start, labels, code, self.reserved)
        obj = self.map.objects[code - self.n_places]
        free = obj.stand_tiles[self.reserved[obj.stand_tiles] < 0]
        return free[:1]

    def in_destination(self, t: int, code: int) -> bool:
        """Whether tile t is inside destination ``code`` (a tile of the place, or one to use the object from)."""
        if code < self.n_places:
            place = self.map.places[code]
            labels = self.map.area_of if place.depth == 0 else self.map.place_of
            return bool(labels[t] == code)
        return bool(np.any(self.map.objects[code - self.n_places].stand_tiles == t))

    def expect(self, i: int, code: int) -> None:
        """Resident i will probably walk to place ``code`` from where it stands now (a guess: only how
        soon the path is found depends on it)."""
        if 0 <= code < self.n_places:
            self._expected.pop(i, None)
            self._expected[i] = code

    def prefetch_expected(self, limit: int | None = None) -> int:
        """Find the paths of up to ``limit`` expected trips (oldest first; all when None) of residents
        standing still; returns how many were searched."""
        if self.pathfinder.shared_threshold <= 1:  # every trip then follows a distance field, never A*
            self._expected.clear()
            return 0
        taken = list(islice(self._expected.items(), limit))
        for i, _ in taken:
            del self._expected[i]
        still = [(i, c) for i, c in taken if self.cursor[i] >= self.path_len[i] - 1]
        return self.pathfinder.prefetch([(c, int(self.tile[i]), self.map.places[c].tiles) for i, c in still])

    def prefetch_requests(self, idx: Sequence[int], codes: Sequence[int], shared: np.ndarray) -> int:
        """Find, in one batch, the A* paths that sending residents ``idx`` to ``codes`` (from where they
        stand) will need; returns how many were searched."""
        n = self.n_places
        wanted = [(c, int(self.tile[i]), self.map.places[c].tiles) for i, c in zip(idx, codes, strict=True) if c < n]
        return self.pathfinder.prefetch([w for w in wanted if not shared[w[0]]])

    def tiles_left(self, i: int) -> int:
        """How many tiles resident i still has to walk."""
        return max(0, int(self.path_len[i] - 1 - self.cursor[i]))

    def send(self, i: int, code: int, *, shared: bool, who: str) -> int | None:
        """Give resident i a path to a free tile of destination ``code`` and hold the tile it ends on.

        Returns the path's length in tiles (0: i already stands there). None when i was already sent
        to ``code`` and holds a tile of it: nothing changes. ``shared``: use (and cache) a distance
        field to the place rather than A*. ``ValueError`` naming ``who`` if it cannot be reached.
        """
        if int(self.dest[i]) == code and self.held[i] >= 0 and self.in_destination(int(self.held[i]), code):
            return None
        self.release(i)
        src = int(self.tile[i])
        if code < self.n_places:
            place = self.map.places[code]
            path = self.pathfinder.path_to(code, src, place.tiles, shared=shared)
            if path.size == 0:
                raise ValueError(f"{who} cannot reach {place.name} from {self.map.xy(src)}")
            rest = self.free_path(int(path[-1]), code)
            if rest.size > 1:
                path = np.concatenate([path, rest[1:]])
        else:
            obj = self.map.objects[code - self.n_places]
            free = obj.stand_tiles[self.reserved[obj.stand_tiles] < 0]
            targets = free if free.size else obj.stand_tiles
            path = self.pathfinder.path_to(("object", obj.id, targets.tobytes()), src, targets)
            if path.size == 0:
                raise ValueError(f"{who} cannot reach {obj.name} from {self.map.xy(src)}")
        end = int(path[-1])
        if self.reserved[end] < 0:
            self.reserved[end] = i
            self.held[i] = end
        self._set_path(i, path)
        self.dest[i] = code
        return int(path.size - 1)

    def advance(self, active: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Every active walker moves up to its speed along its path, all at once.

        Returns the indices of those who moved, and of those among them who arrived (in index order).
        """
        moving = np.flatnonzero(active & (self.cursor < self.path_len - 1))
        if moving.size == 0:
            return moving, []
        c = np.minimum(self.cursor[moving] + self.speed[moving], self.path_len[moving] - 1)
        self.cursor[moving] = c
        self.tile[moving] = self._pool[self.path_start[moving] + c]
        return moving, moving[c == self.path_len[moving] - 1].tolist()

    def remaining_path(self, i: int) -> list[int]:
        """The unwalked rest of resident i's path, from the tile it stands on; [] when it is not walking."""
        if self.cursor[i] < self.path_len[i] - 1:
            a = int(self.path_start[i] + self.cursor[i])
            return self._pool[a : int(self.path_start[i] + self.path_len[i])].tolist()
        return []

    def restore(self, paths: Sequence[Sequence[int]]) -> None:
        """After ``tile``, ``dest``, ``held`` and ``speed`` were loaded: re-reserve the held tiles and
        start each resident on its saved rest of path (``remaining_path``; empty: standing still)."""
        self.reserved[:] = -1
        held = np.flatnonzero(self.held >= 0)
        self.reserved[self.held[held]] = held
        self._pool_top = 0
        self.path_len[:] = 0
        self.cursor[:] = 0
        for i, path in enumerate(paths):
            if path:
                self._set_path(i, np.asarray(path, np.int32))

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
