"""Perception (spatial-hash kernel) equals a brute-force reference that checks every pair."""

from __future__ import annotations

import numpy as np
import pytest

from simulacra.world.perception import perceive, perceive_bruteforce


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("radius", "bandwidth"), [(1, 3), (4, 5), (7, 12)])
def test_kernel_equals_bruteforce(seed: int, radius: int, bandwidth: int) -> None:
    rng = np.random.default_rng(seed)
    w, h, n, m = 50, 35, 400, 60
    xs = rng.integers(0, w, n).astype(np.int32)
    ys = rng.integers(0, h, n).astype(np.int32)
    xs[:40], ys[:40] = 10, 10  # a crowd on one tile: ties broken by kind, then index
    areas = (xs // 12 + 3 * (ys // 12)).astype(np.int32)
    areas[rng.random(n) < 0.1] = 0  # some outdoors
    active = rng.random(n) > 0.05
    oxs = rng.integers(0, w, m).astype(np.int32)
    oys = rng.integers(0, h, m).astype(np.int32)
    oareas = (oxs // 12 + 3 * (oys // 12)).astype(np.int32)
    got = perceive(xs, ys, areas, active, oxs, oys, oareas, radius, bandwidth, w, h)
    want = perceive_bruteforce(xs, ys, areas, active, oxs, oys, oareas, radius, bandwidth)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    kinds, idxs, d2s, counts = got
    assert counts.max() == bandwidth  # the crowd saturates attention
    assert (np.diff(np.where(d2s >= 0, d2s, 1 << 30), axis=1) >= 0).all()  # nearest first
    assert (counts[~active] == 0).all()


def test_nothing_to_see() -> None:
    xs = np.array([0, 20], np.int32)
    ys = np.array([0, 0], np.int32)
    empty = np.empty(0, np.int32)
    kinds, idxs, d2s, counts = perceive(
        xs, ys, np.zeros(2, np.int32), np.ones(2, bool), empty, empty, empty, 4, 3, 30, 5
    )
    assert counts.tolist() == [0, 0]
    assert (idxs == -1).all()
