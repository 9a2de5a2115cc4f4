"""Shortest paths on the tile grid, compiled with numba.

The grid is 4-connected (no diagonal steps, so nobody squeezes between two wall corners) and every
step costs 1, so breadth-first search is exact. Tiles are flat indices ``t = y * width + x``.

Two searches, chosen by how many residents want the same destination (see ``Pathfinder.path_to``):

* ``bfs_field``: one multi-source BFS from all tiles of a place gives every tile's distance to it;
  a resident walks downhill (``descend``, a few microseconds). One field serves every resident bound
  for that place, so fields are cached per destination, where many residents go at once (the café
  at the party, a workplace at 9 am).
* ``astar``: for a trip few others share (going home), A* from the resident's tile to the place,
  guided by the Manhattan distance to the place's bounding box sharpened with landmark distances
  (ALT); both bounds are admissible and consistent, so the path is still shortest.

``nearest_free`` then walks inside the place to the nearest tile nobody else holds.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit
from numba.typed import List

UNREACHABLE = -1


@njit(cache=True, inline="always")
def _neighbour(t: int, k: int, width: int, n: int) -> int:
    """Tile t's k-th neighbour (0 up, 1 down, 2 left, 3 right), or -1 off the grid: one order everywhere."""
    if k == 0:
        return t - width if t >= width else -1
    if k == 1:
        return t + width if t + width < n else -1
    if k == 2:
        return t - 1 if t % width > 0 else -1
    return t + 1 if t % width < width - 1 else -1


@njit(cache=True)
def bfs_field(walkable: np.ndarray, width: int, sources: np.ndarray) -> np.ndarray:
    """Distance (in steps) from every tile to the nearest walkable source tile; -1 where unreachable."""
    n = walkable.size
    dist = np.full(n, -1, np.int32)
    queue = np.empty(n, np.int32)
    head = 0
    tail = 0
    for s in sources:
        if walkable[s] and dist[s] < 0:
            dist[s] = 0
            queue[tail] = s
            tail += 1
    while head < tail:
        t = queue[head]
        head += 1
        d = dist[t] + 1
        for k in range(4):
            u = _neighbour(t, k, width, n)
            if u >= 0 and walkable[u] and dist[u] < 0:
                dist[u] = d
                queue[tail] = u
                tail += 1
    return dist


@njit(cache=True)
def descend(field: np.ndarray, width: int, src: int) -> np.ndarray:
    """The path from ``src`` down a distance field to a source tile (both ends included); empty if unreachable."""
    d = field[src]
    if d < 0:
        return np.empty(0, np.int32)
    n = field.size
    path = np.empty(d + 1, np.int32)
    t = src
    path[0] = t
    for i in range(1, d + 1):
        want = field[t] - 1
        for k in range(4):
            u = _neighbour(t, k, width, n)
            if u >= 0 and field[u] == want:
                t = u
                break
        path[i] = t
    return path


@njit(cache=True)
def _contains(sorted_tiles: np.ndarray, t: int) -> bool:
    lo = 0
    hi = sorted_tiles.size
    while lo < hi:
        mid = (lo + hi) >> 1
        if sorted_tiles[mid] < t:
            lo = mid + 1
        else:
            hi = mid
    return lo < sorted_tiles.size and sorted_tiles[lo] == t


@njit(cache=True, inline="always")
def _heuristic(x, y, t, x0, y0, x1, y1, landmarks, lm_lo, lm_hi):
    # Manhattan distance to the target's bounding box, and for each landmark L the triangle-inequality
    # bound |d(L, target) - d(L, t)| taken against the target set's range [lo, hi] of d(L, .).
    h = max(x0 - x, 0, x - x1) + max(y0 - y, 0, y - y1)
    for k in range(landmarks.shape[1]):
        d = np.int32(landmarks[t, k])
        if d < 0 or lm_lo[k] < 0:
            continue
        lb = max(lm_lo[k] - d, d - lm_hi[k])
        if lb > h:
            h = lb
    return h


@njit(cache=True)
def astar(
    walkable: np.ndarray,
    width: int,
    src: int,
    targets: np.ndarray,
    bbox: np.ndarray,
    landmarks: np.ndarray,
    lm_lo: np.ndarray,
    lm_hi: np.ndarray,
    g: np.ndarray,
    parent: np.ndarray,
    stamp: np.ndarray,
    mark: int,
    pool_node: np.ndarray,
    pool_next: np.ndarray,
    pool_g: np.ndarray,
) -> np.ndarray:
    """Shortest path from ``src`` to any tile of ``targets`` (sorted flat indices); empty if unreachable.

    The heuristic (Manhattan to the target's box, sharpened by landmark distances, "ALT") is consistent
    and changes by at most 1 per step, so a node's f is f, f+1 or f+2 of its parent's: three LIFO
    buckets (a cyclic bucket queue) replace a binary heap, each push and pop O(1), and LIFO expands
    the deepest of equal-f nodes first. ``g``/``parent``/``stamp`` are scratch arrays the size of the
    grid, reused between calls (entries count only where ``stamp == mark``); ``pool_*`` hold the
    bucket entries as linked lists, with the g each entry was pushed with (an entry is stale when
    ``g`` has dropped since: the same test as recomputing its f, without the heuristic).

    Long because it is one numba kernel whose search loop keeps the queue, the
    scratch arrays and the pool growth in local variables; split into helpers it would pass a dozen
    arrays per call in the innermost loop.
    """
    n = walkable.size
    if not walkable[src]:
        return np.empty(0, np.int32)
    x0 = bbox[0]
    y0 = bbox[1]
    x1 = bbox[2]
    y1 = bbox[3]
    heads = np.full(3, -1, np.int64)
    counts = np.zeros(3, np.int64)
    g[src] = 0
    parent[src] = -1
    stamp[src] = mark
    f = _heuristic(src % width, src // width, src, x0, y0, x1, y1, landmarks, lm_lo, lm_hi)
    top = 0
    pool_node[0] = src
    pool_next[0] = -1
    pool_g[0] = 0
    heads[f % 3] = 0
    counts[f % 3] = 1
    top = 1
    found = -1
    total = 1
    while total > 0:
        b = f % 3
        if counts[b] == 0:
            f += 1
            continue
        e = heads[b]
        heads[b] = pool_next[e]
        counts[b] -= 1
        total -= 1
        t = pool_node[e]
        gt = g[t]
        if gt != pool_g[e]:  # stale: t was reached more cheaply after this entry was made
            continue
        tx = t % width
        ty = t // width
        if x0 <= tx <= x1 and y0 <= ty <= y1 and _contains(targets, t):
            found = t
            break
        for k in range(4):
            u = _neighbour(t, k, width, n)
            if u < 0 or not walkable[u]:
                continue
            gu = gt + 1
            if stamp[u] == mark and g[u] <= gu:
                continue
            stamp[u] = mark
            g[u] = gu
            parent[u] = t
            fu = gu + _heuristic(u % width, u // width, u, x0, y0, x1, y1, landmarks, lm_lo, lm_hi)
            if top >= pool_node.size:
                grown_n = np.empty(pool_node.size * 2, np.int32)
                grown_x = np.empty(pool_node.size * 2, np.int64)
                grown_g = np.empty(pool_node.size * 2, np.int32)
                grown_n[:top] = pool_node[:top]
                grown_x[:top] = pool_next[:top]
                grown_g[:top] = pool_g[:top]
                pool_node = grown_n
                pool_next = grown_x
                pool_g = grown_g
            bu = fu % 3
            pool_node[top] = u
            pool_next[top] = heads[bu]
            pool_g[top] = gu
            heads[bu] = top
            counts[bu] += 1
            top += 1
            total += 1
    if found < 0:
        return np.empty(0, np.int32)
    length = g[found] + 1
    path = np.empty(length, np.int32)
    t = found
    for i in range(length - 1, -1, -1):
        path[i] = t
        t = parent[t]
    return path


@njit(cache=True, nogil=True)
def astar_batch(
    walkable: np.ndarray,
    width: int,
    srcs: np.ndarray,
    t_start: np.ndarray,
    t_flat: np.ndarray,
    bboxes: np.ndarray,
    landmarks: np.ndarray,
    lm_lo: np.ndarray,
    lm_hi: np.ndarray,
) -> List:
    """``astar`` for many requests with scratch arrays of its own: request j goes from ``srcs[j]`` to
    ``t_flat[t_start[j]:t_start[j + 1]]``. Without the GIL, so two threads can each run a share."""
    n = walkable.size
    g = np.zeros(n, np.int32)
    parent = np.zeros(n, np.int32)
    stamp = np.zeros(n, np.int32)
    pool_node = np.empty(1 << 14, np.int32)
    pool_next = np.empty(1 << 14, np.int64)
    pool_g = np.empty(1 << 14, np.int32)
    out = List()
    for j in range(srcs.size):
        targets = t_flat[t_start[j] : t_start[j + 1]]
        out.append(
            astar(
                walkable, width, srcs[j], targets, bboxes[j], landmarks, lm_lo[j], lm_hi[j],
                g, parent, stamp, j + 1, pool_node, pool_next, pool_g,
            )
        )
    return out


@njit(cache=True)
def nearest_free(
    walkable: np.ndarray,
    width: int,
    start: int,
    labels: np.ndarray,
    label: int,
    reserved: np.ndarray,
    parent: np.ndarray,
    stamp: np.ndarray,
    mark: int,
    queue: np.ndarray,
) -> np.ndarray:
    """Path from ``start`` to the nearest tile with ``labels == label`` that nobody holds (``reserved < 0``).

    The search stays inside the place (tiles labelled ``label``), so a resident who reached a café's
    door walks to the nearest free seat of the café. Empty if the place is full.
    """
    n = walkable.size
    head = 0
    tail = 1
    queue[0] = start
    stamp[start] = mark
    parent[start] = -1
    found = -1
    while head < tail:
        t = queue[head]
        head += 1
        if reserved[t] < 0:
            found = t
            break
        for k in range(4):
            u = _neighbour(t, k, width, n)
            if u >= 0 and walkable[u] and labels[u] == label and stamp[u] != mark:
                stamp[u] = mark
                parent[u] = t
                queue[tail] = u
                tail += 1
    if found < 0:
        return np.empty(0, np.int32)
    length = 0
    t = found
    while t >= 0:
        length += 1
        t = parent[t]
    path = np.empty(length, np.int32)
    t = found
    for i in range(length - 1, -1, -1):
        path[i] = t
        t = parent[t]
    return path


def choose_landmarks(walkable: np.ndarray, width: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` landmark tiles spread by farthest-point sampling, and every tile's BFS distance to each.

    Returns ``(tiles, table)`` with ``table[t, k]`` the distance from tile t to landmark k (-1 where
    unreachable), int16 when the map is small enough (one cache line serves a node's whole row).
    """
    walkable = np.ascontiguousarray(walkable, dtype=np.bool_).ravel()
    n = walkable.size
    cells = np.flatnonzero(walkable)
    if count <= 0 or cells.size == 0:
        return np.empty(0, np.int32), np.empty((n, 0), np.int16)
    tiles = []
    fields = []
    nearest = bfs_field(walkable, width, cells[:1].astype(np.int32))
    for _ in range(count):
        t = int(np.argmax(nearest))
        if nearest[t] <= 0 and tiles:
            break
        f = bfs_field(walkable, width, np.array([t], np.int32))
        tiles.append(t)
        fields.append(f)
        nearest = np.where(f >= 0, np.minimum(nearest, f), nearest)
    table = np.stack(fields, axis=1)
    if table.max() < np.iinfo(np.int16).max:
        table = table.astype(np.int16)
    return np.array(tiles, np.int32), np.ascontiguousarray(table)


class Pathfinder:
    """Paths on one grid: A* with landmarks for single trips, cached distance fields for shared ones.

    A whole-grid BFS costs about as much as ten to a hundred A* searches (more on bigger maps), so a
    field pays only when several residents head to the same place. ``path_to(..., shared=True)`` uses
    (and caches, LRU bounded by bytes) the destination's field; ``shared=False`` runs A*. Both give
    shortest paths but may break ties differently, so the caller decides ``shared`` from the requests
    alone (never from what happens to be cached): the same state always yields the same paths.

    An A* path is a pure function of (destination key, source tile), so ``path_to`` also keeps every
    A* result in a byte-bounded LRU (``path_cache_mb``), and ``prefetch`` computes many at once, split
    over ``threads`` threads (the kernel runs without the GIL). Residents repeat their trips (home →
    work → home), so a commute is searched once and then reused; a miss costs what it always did.
    """

    def __init__(
        self,
        walkable: np.ndarray,
        width: int,
        *,
        landmarks: int = 4,
        field_cache_mb: float = 64.0,
        path_cache_mb: float = 64.0,
        threads: int | None = None,
    ) -> None:
        self.walkable = np.ascontiguousarray(walkable, dtype=np.bool_).ravel()
        self.width = int(width)
        n = self.walkable.size
        self.landmark_tiles, self.landmarks = choose_landmarks(self.walkable, self.width, landmarks)
        self._g = np.zeros(n, np.int32)
        self._parent = np.zeros(n, np.int32)
        self._stamp = np.zeros(n, np.int32)
        self._queue = np.zeros(n, np.int32)
        self._mark = 0
        self._pool_node = np.empty(1 << 14, np.int32)
        self._pool_next = np.empty(1 << 14, np.int64)
        self._pool_g = np.empty(1 << 14, np.int32)
        self._fields: OrderedDict[object, np.ndarray] = OrderedDict()
        self._bounds: dict[object, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.field_budget = int(field_cache_mb * 2**20)
        self._paths: OrderedDict[tuple[Hashable, int], np.ndarray] = OrderedDict()
        self._paths_bytes = 0
        self.path_budget = int(path_cache_mb * 2**20)
        self.threads = max(1, min(2, os.cpu_count() or 1) if threads is None else int(threads))
        self._executor: ThreadPoolExecutor | None = None
        self.stats = {"field_hits": 0, "fields_built": 0, "astar": 0, "descend": 0, "path_hits": 0, "prefetched": 0}

    @property
    def shared_threshold(self) -> int:
        """How many same-step requests for one destination make its field worth building (grid size / 16k)."""
        return max(1, self.walkable.size // 16384)

    def _next_mark(self) -> int:
        self._mark += 1
        if self._mark >= 2**31 - 1:
            self._stamp[:] = 0
            self._mark = 1
        return self._mark

    def field(self, key: object, targets: np.ndarray) -> np.ndarray:
        """The distance field to ``targets`` (cached under ``key``; built on a miss)."""
        f = self._fields.get(key)
        if f is not None:
            self._fields.move_to_end(key)
            self.stats["field_hits"] += 1
            return f
        f = bfs_field(self.walkable, self.width, targets)
        self.stats["fields_built"] += 1
        self._fields[key] = f
        while len(self._fields) > 1 and len(self._fields) * f.nbytes > self.field_budget:
            self._fields.popitem(last=False)
        return f

    def _target_bounds(self, key: object, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b = self._bounds.get(key)
        if b is None:
            xs = targets % self.width
            ys = targets // self.width
            bbox = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.int32)
            rows = self.landmarks[targets].astype(np.int32)
            lo = rows.min(axis=0) if rows.size else np.empty(0, np.int32)
            hi = rows.max(axis=0) if rows.size else np.empty(0, np.int32)
            if rows.size:
                lo = np.where((rows < 0).any(axis=0), -1, lo).astype(np.int32)
            b = (bbox, lo.astype(np.int32), hi.astype(np.int32))
            self._bounds[key] = b
        return b

    def path_to(self, key: Hashable, src: int, targets: np.ndarray, *, shared: bool = False) -> np.ndarray:
        """Shortest path from ``src`` to the nearest of ``targets`` (sorted), src first; empty if unreachable.

        ``key`` must name ``targets`` (one key, one target set). The array may be the cached one: read only.
        """
        if shared:
            self.stats["descend"] += 1
            return descend(self.field(key, targets), self.width, src)
        path = self._paths.get((key, src))
        if path is not None:
            self._paths.move_to_end((key, src))
            self.stats["path_hits"] += 1
            return path
        self.stats["astar"] += 1
        bbox, lo, hi = self._target_bounds(key, targets)
        path = astar(
            self.walkable,
            self.width,
            src,
            targets,
            bbox,
            self.landmarks,
            lo,
            hi,
            self._g,
            self._parent,
            self._stamp,
            self._next_mark(),
            self._pool_node,
            self._pool_next,
            self._pool_g,
        )
        self._remember(key, src, path)
        return path

    def _remember(self, key: Hashable, src: int, path: np.ndarray) -> None:
        if self.path_budget <= 0:
            return
        path.flags.writeable = False
        self._paths[(key, src)] = path
        self._paths_bytes += path.nbytes + 64
        while self._paths_bytes > self.path_budget and self._paths:
            _, old = self._paths.popitem(last=False)
            self._paths_bytes -= old.nbytes + 64

    def prefetch(self, requests: Sequence[tuple[Hashable, int, np.ndarray]]) -> int:
        """Find the A* paths of ``(key, src, targets)`` requests not yet cached, in one batch over
        ``threads`` threads, so that ``path_to`` then finds them. Returns how many were searched.

        Only speed depends on it: a path is the same whether prefetched, cached or searched in place.
        """
        todo: dict[tuple[Hashable, int], np.ndarray] = {}
        for key, src, targets in requests:
            if (key, src) not in self._paths:
                todo.setdefault((key, int(src)), targets)
        if not todo or self.path_budget <= 0:
            return 0
        items = list(todo.items())
        parts = np.array_split(np.arange(len(items)), min(self.threads, len(items)))
        chunks = [self._batch_args([items[j] for j in part]) for part in parts]
        if len(chunks) == 1:
            results = [astar_batch(*chunks[0])]
        else:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="astar")
            results = list(self._executor.map(lambda args: astar_batch(*args), chunks))
        for part, paths in zip(parts, results, strict=True):
            for j, path in zip(part.tolist(), paths, strict=True):
                (key, src), _ = items[j]
                self._remember(key, src, path)
        self.stats["prefetched"] += len(items)
        return len(items)

    def _batch_args(self, items: list[tuple[tuple[Hashable, int], np.ndarray]]) -> tuple:
        """``astar_batch``'s arguments for ``((key, src), targets)`` items."""
        bounds = [self._target_bounds(key, targets) for (key, _), targets in items]
        sizes = [targets.size for _, targets in items]
        t_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        t_flat = np.concatenate([targets for _, targets in items]).astype(np.int32)
        srcs = np.array([src for (_, src), _ in items], np.int64)
        bboxes = np.stack([b[0] for b in bounds])
        lo = np.stack([b[1] for b in bounds]).reshape(len(items), -1)
        hi = np.stack([b[2] for b in bounds]).reshape(len(items), -1)
        return (self.walkable, self.width, srcs, t_start, t_flat, bboxes, self.landmarks, lo, hi)

    def nearest_free(self, start: int, labels: np.ndarray, label: int, reserved: np.ndarray) -> np.ndarray:
        """Path inside the region ``labels == label`` from ``start`` to its nearest unreserved tile."""
        return nearest_free(
            self.walkable,
            self.width,
            start,
            labels,
            label,
            reserved,
            self._parent,
            self._stamp,
            self._next_mark(),
            self._queue,
        )

    def clear(self) -> None:
        """Drop cached fields and paths (caches only: paths never depend on them)."""
        self._fields.clear()
        self._paths.clear()
        self._paths_bytes = 0
