"""Pathfinding equals networkx shortest-path lengths on the same grid graph, on random maps."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from simulacra.world.pathfinding import Pathfinder, astar, bfs_field, choose_landmarks, descend


def random_grid(seed: int, width: int = 31, height: int = 23, density: float = 0.68) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((height, width)) < density


def grid_graph(walk: np.ndarray) -> nx.Graph:
    """The same 4-connected graph for networkx: nodes are flat tile indices."""
    h, w = walk.shape
    g = nx.Graph()
    cells = [int(t) for t in np.flatnonzero(walk.ravel())]
    g.add_nodes_from(cells)
    for t in cells:
        x, y = t % w, t // w
        if x + 1 < w and walk[y, x + 1]:
            g.add_edge(t, t + 1)
        if y + 1 < h and walk[y + 1, x]:
            g.add_edge(t, t + w)
    return g


def check_path(path: np.ndarray, walk: np.ndarray, src: int, targets: set[int]) -> None:
    w = walk.shape[1]
    assert path[0] == src and int(path[-1]) in targets
    assert walk.ravel()[path].all()
    steps = np.abs(np.diff(path))
    assert set(steps.tolist()) <= {1, w}
    assert not any(
        a % w == w - 1 and b == a + 1 or b % w == w - 1 and a == b + 1 for a, b in zip(path, path[1:], strict=False)
    )


@pytest.mark.parametrize("seed", range(8))
def test_bfs_field_equals_networkx(seed: int) -> None:
    walk = random_grid(seed)
    g = grid_graph(walk)
    rng = np.random.default_rng(100 + seed)
    cells = np.flatnonzero(walk.ravel())
    sources = np.sort(rng.choice(cells, size=3, replace=False)).astype(np.int32)
    field = bfs_field(walk.ravel(), walk.shape[1], sources)
    expected = nx.multi_source_dijkstra_path_length(g, {int(s) for s in sources})
    got = {int(t): int(field[t]) for t in np.flatnonzero(field >= 0)}
    assert got == expected
    assert (field[~walk.ravel()] == -1).all()


@pytest.mark.parametrize("seed", range(8))
def test_astar_and_descend_give_networkx_lengths(seed: int) -> None:
    walk = random_grid(seed, density=0.72)
    w = walk.shape[1]
    g = grid_graph(walk)
    rng = np.random.default_rng(200 + seed)
    cells = np.flatnonzero(walk.ravel())
    pf = Pathfinder(walk, w, landmarks=4)
    for trial in range(25):
        k = int(rng.integers(1, 6))
        targets = np.sort(rng.choice(cells, size=k, replace=False)).astype(np.int32)
        src = int(rng.choice(cells))
        lengths = nx.multi_source_dijkstra_path_length(g, {int(t) for t in targets})
        for shared in (False, True):
            path = pf.path_to(("t", trial), src, targets, shared=shared)
            if src not in lengths:
                assert path.size == 0
                continue
            assert path.size - 1 == lengths[src]
            check_path(path, walk, src, {int(t) for t in targets})


def test_astar_without_landmarks_matches_too() -> None:
    walk = random_grid(3, 40, 30, 0.75)
    w = walk.shape[1]
    g = grid_graph(walk)
    cells = np.flatnonzero(walk.ravel())
    rng = np.random.default_rng(5)
    n = walk.size
    for _ in range(30):
        src, dst = (int(c) for c in rng.choice(cells, size=2, replace=False))
        targets = np.array([dst], np.int32)
        bbox = np.array([dst % w, dst // w, dst % w, dst // w], np.int32)
        path = astar(
            walk.ravel(),
            w,
            src,
            targets,
            bbox,
            np.empty((n, 0), np.int16),
            np.empty(0, np.int32),
            np.empty(0, np.int32),
            np.zeros(n, np.int32),
            np.zeros(n, np.int32),
            np.zeros(n, np.int32),
            1 + _,
            np.empty(16, np.int32),
            np.empty(16, np.int64),
            np.empty(16, np.int32),
        )
        if nx.has_path(g, src, dst):
            assert path.size - 1 == nx.shortest_path_length(g, src, dst)
        else:
            assert path.size == 0


def test_landmarks_are_distances() -> None:
    walk = random_grid(11)
    tiles, table = choose_landmarks(walk, walk.shape[1], 4)
    assert len(tiles) == 4 and len(set(tiles.tolist())) == 4
    for k, t in enumerate(tiles):
        assert (table[:, k] == bfs_field(walk.ravel(), walk.shape[1], np.array([t], np.int32))).all()


def test_descend_from_unreachable_is_empty() -> None:
    walk = np.ones((5, 5), bool)
    walk[:, 2] = False
    field = bfs_field(walk.ravel(), 5, np.array([0], np.int32))
    assert descend(field, 5, 4).size == 0
    assert descend(field, 5, 10).tolist() == [10, 5, 0]


def test_nearest_free_stays_inside_the_place() -> None:
    walk = np.ones((3, 6), bool)
    labels = np.zeros(18, np.int32)
    labels[[3, 4, 9, 10]] = 7  # a 2x2 place
    reserved = np.full(18, -1, np.int32)
    pf = Pathfinder(walk, 6)
    assert pf.nearest_free(3, labels, 7, reserved).tolist() == [3]
    reserved[[3, 4]] = 0
    assert pf.nearest_free(3, labels, 7, reserved).tolist() == [3, 9]
    reserved[[9, 10]] = 1
    assert pf.nearest_free(3, labels, 7, reserved).size == 0  # full: nothing outside the place counts


def test_prefetched_and_cached_paths_equal_searched_ones() -> None:
    walk = random_grid(7, 60, 40, 0.75)
    w = walk.shape[1]
    cells = np.flatnonzero(walk.ravel())
    rng = np.random.default_rng(2)
    target_sets = [np.sort(rng.choice(cells, size=3, replace=False)).astype(np.int32) for _ in range(6)]
    requests = [(k, int(rng.choice(cells)), target_sets[k]) for k in rng.integers(0, 6, size=50).tolist()]
    plain = Pathfinder(walk, w, path_cache_mb=0)
    ahead = Pathfinder(walk, w, threads=2)
    unique = len({(k, src) for k, src, _ in requests})
    assert ahead.prefetch(requests) == unique
    assert ahead.prefetch(requests) == 0  # all cached now
    for key, src, targets in requests:
        assert np.array_equal(ahead.path_to(key, src, targets), plain.path_to(key, src, targets))
    assert ahead.stats["astar"] == 0 and ahead.stats["path_hits"] == len(requests)
    assert plain.stats["astar"] == len(requests) and plain.stats["path_hits"] == 0


def test_path_cache_stays_within_its_budget() -> None:
    walk = random_grid(8, 60, 40, 0.8)
    w = walk.shape[1]
    cells = np.flatnonzero(walk.ravel())
    targets = cells[:1].astype(np.int32)
    pf = Pathfinder(walk, w, path_cache_mb=2e-3)  # about 2 KB: a few paths
    for src in cells[-200:].tolist():
        pf.path_to("home", src, targets)
    assert 0 < pf._paths_bytes <= pf.path_budget
    assert 0 < len(pf._paths) < 200
