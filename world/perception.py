"""Perception for every resident at once: who and what each one sees this step, nearest first.

A resident sees other residents and objects that are within ``radius`` tiles (Euclidean, compared
as squared integers, so there is no rounding) and in the same area (walls hide the next room's
people, the street does not see into the café). Of those, it attends to the ``bandwidth`` nearest,
ties broken by kind (residents before objects) and then by index, so results are exact and
reproducible.

The kernel buckets residents and objects into grid cells one radius wide (a counting sort), so each
resident only examines the 3x3 cells around it: linear in the number of residents for a town of
fixed density, instead of all n² pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

RESIDENT = 0
OBJECT = 1


@njit(cache=True)
def _bucket(xs, ys, active, cell, cells_x, cells_y):
    n = xs.size
    ncell = cells_x * cells_y
    start = np.zeros(ncell + 1, np.int64)
    cid = np.empty(n, np.int64)
    for i in range(n):
        if active[i]:
            c = (ys[i] // cell) * cells_x + xs[i] // cell
            cid[i] = c
            start[c + 1] += 1
        else:
            cid[i] = -1
    for c in range(ncell):
        start[c + 1] += start[c]
    fill = start[:-1].copy()
    order = np.empty(start[ncell], np.int64)
    for i in range(n):  # ascending i, so each cell lists its members in index order
        c = cid[i]
        if c >= 0:
            order[fill[c]] = i
            fill[c] += 1
    return start, order


@njit(cache=True)
def _insert(kinds, idxs, d2s, count, bandwidth, d2, kind, idx):
    """Insert (d2, kind, idx) into the row's sorted top-``bandwidth`` list; returns the new count."""
    pos = count
    while pos > 0:
        p = pos - 1
        if d2s[p] < d2 or (d2s[p] == d2 and (kinds[p] < kind or (kinds[p] == kind and idxs[p] < idx))):
            break
        pos = p
    if pos >= bandwidth:
        return count
    last = min(count, bandwidth - 1)
    for q in range(last, pos, -1):
        kinds[q] = kinds[q - 1]
        idxs[q] = idxs[q - 1]
        d2s[q] = d2s[q - 1]
    kinds[pos] = kind
    idxs[pos] = idx
    d2s[pos] = d2
    return min(count + 1, bandwidth)


@njit(cache=True)
def perceive(
    xs: np.ndarray,
    ys: np.ndarray,
    areas: np.ndarray,
    active: np.ndarray,
    oxs: np.ndarray,
    oys: np.ndarray,
    oareas: np.ndarray,
    radius: int,
    bandwidth: int,
    width: int,
    height: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each resident: kinds, indices and squared distances of what it sees (row padded with -1)."""
    n = xs.size
    kinds = np.full((n, bandwidth), -1, np.int8)
    idxs = np.full((n, bandwidth), -1, np.int32)
    d2s = np.full((n, bandwidth), -1, np.int32)
    counts = np.zeros(n, np.int32)
    if bandwidth == 0 or n == 0:
        return kinds, idxs, d2s, counts
    cell = max(radius, 1)
    cells_x = width // cell + 1
    cells_y = height // cell + 1
    r2 = radius * radius
    rstart, rorder = _bucket(xs, ys, active, cell, cells_x, cells_y)
    oactive = np.ones(oxs.size, np.bool_)
    ostart, oorder = _bucket(oxs, oys, oactive, cell, cells_x, cells_y)
    for i in range(n):
        if not active[i]:
            continue
        x = xs[i]
        y = ys[i]
        a = areas[i]
        cx = x // cell
        cy = y // cell
        count = 0
        krow = kinds[i]
        irow = idxs[i]
        drow = d2s[i]
        for gy in range(max(cy - 1, 0), min(cy + 2, cells_y)):
            for gx in range(max(cx - 1, 0), min(cx + 2, cells_x)):
                c = gy * cells_x + gx
                for k in range(rstart[c], rstart[c + 1]):
                    j = rorder[k]
                    if j == i or areas[j] != a:
                        continue
                    dx = xs[j] - x
                    dy = ys[j] - y
                    d2 = dx * dx + dy * dy
                    if d2 <= r2:
                        count = _insert(krow, irow, drow, count, bandwidth, d2, RESIDENT, j)
                for k in range(ostart[c], ostart[c + 1]):
                    j = oorder[k]
                    if oareas[j] != a:
                        continue
                    dx = oxs[j] - x
                    dy = oys[j] - y
                    d2 = dx * dx + dy * dy
                    if d2 <= r2:
                        count = _insert(krow, irow, drow, count, bandwidth, d2, OBJECT, j)
        counts[i] = count
    return kinds, idxs, d2s, counts


def perceive_bruteforce(
    xs: np.ndarray,
    ys: np.ndarray,
    areas: np.ndarray,
    active: np.ndarray,
    oxs: np.ndarray,
    oys: np.ndarray,
    oareas: np.ndarray,
    radius: int,
    bandwidth: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The same result by checking every pair with numpy: the reference the kernel is tested against."""
    n = len(xs)
    kinds = np.full((n, bandwidth), -1, np.int8)
    idxs = np.full((n, bandwidth), -1, np.int32)
    d2s = np.full((n, bandwidth), -1, np.int32)
    counts = np.zeros(n, np.int32)
    xs, ys, oxs, oys = (np.asarray(v, np.int64) for v in (xs, ys, oxs, oys))
    for i in range(n):
        if not active[i]:
            continue
        rd2 = (xs - xs[i]) ** 2 + (ys - ys[i]) ** 2
        rmask = active & (areas == areas[i]) & (rd2 <= radius * radius)
        rmask[i] = False
        od2 = (oxs - xs[i]) ** 2 + (oys - ys[i]) ** 2
        omask = (oareas == areas[i]) & (od2 <= radius * radius)
        cand_d2 = np.concatenate([rd2[rmask], od2[omask]])
        cand_kind = np.concatenate([np.zeros(rmask.sum(), np.int64), np.ones(omask.sum(), np.int64)])
        cand_idx = np.concatenate([np.flatnonzero(rmask), np.flatnonzero(omask)])
        order = np.lexsort((cand_idx, cand_kind, cand_d2))[:bandwidth]
        c = len(order)
        kinds[i, :c] = cand_kind[order]
        idxs[i, :c] = cand_idx[order]
        d2s[i, :c] = cand_d2[order]
        counts[i] = c
    return kinds, idxs, d2s, counts


@dataclass(frozen=True)
class Seen:
    """One thing a resident perceives. ``kind`` is "resident" or "object"; ``distance`` is in tiles."""

    kind: str
    name: str
    distance: float
    state: str  # a resident's current activity, or an object's state ("on", "idle")
    changed: bool = False  # an object whose state changed during the previous step
    id: int = -1  # resident unique_id or object id


@dataclass(frozen=True)
class Perception:
    """What one resident perceives this step: residents and objects, nearest first (one merged list)."""

    step: int
    place: str
    seen: tuple[Seen, ...]

    @property
    def residents(self) -> list[Seen]:
        """The residents seen, nearest first."""
        return [s for s in self.seen if s.kind == "resident"]

    @property
    def objects(self) -> list[Seen]:
        """The objects seen, nearest first."""
        return [s for s in self.seen if s.kind == "object"]
