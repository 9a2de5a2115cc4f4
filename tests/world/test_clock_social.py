"""The clock's helpers and the social graph's API and density."""

from __future__ import annotations

from datetime import datetime

import pytest

from simulacra.world import Clock, SocialGraph, parse_time_of_day


def test_clock() -> None:
    c = Clock(datetime(2025, 4, 10, 7, 0), 10)  # a Thursday
    assert c.at(6) == datetime(2025, 4, 10, 8, 0)
    assert c.minute_of_day(60) == 17 * 60
    assert c.time_of_day(0) == "early morning" and c.time_of_day(60) == "evening" and c.time_of_day(100) == "night"
    assert [s for s in range(0, 300) if c.is_time(s, "17:00")] == [60, 204]  # once a day
    assert Clock(datetime(2025, 4, 10, 7, 0), 25).is_time(24, "17:05")  # 16:50 <= 17:05 < 17:15
    assert c.is_between(100, "22:00", "06:00") and not c.is_between(60, "22:00", "06:00")
    assert c.day(102) == 1 and c.weekday(102) == 4
    assert c.step_of(datetime(2025, 4, 11, 18, 0)) == 210
    assert c.describe(60) == "Thursday, April 10, 2025, 05:00 PM"
    assert parse_time_of_day("7:30") == 450
    with pytest.raises(ValueError, match="write it as HH:MM"):
        parse_time_of_day("half past seven")


def test_hours_to_steps_is_the_nearest_step_and_reads_back_exactly() -> None:
    c, slow = Clock(datetime(2025, 4, 10, 7, 0), 10), Clock(datetime(2025, 4, 10, 7, 0), 25)
    assert c.steps_in(2) == 12 and c.steps_in(0.5) == 3 and c.steps_in(1 / 3) == 2
    assert slow.steps_in(1) == 2 and slow.steps_in(1.25) == 3  # 2.4 and 3.0 steps
    assert c.steps_in(0.26) == 2 and c.steps_in(0.24) == 1  # 1.56 and 1.44 steps: the nearest
    assert c.hours_of(7) == 7 * 10 / 60
    # a step count turned into hours (replay does) comes back as itself, where rounding up would add a step
    assert all(c.steps_in(c.hours_of(n)) == n and slow.steps_in(slow.hours_of(n)) == n for n in range(2000))


def test_social_graph() -> None:
    g = SocialGraph(["A", "B", "C", "D"])
    assert g.density() == 0
    g.add_relation("A", "B", strength=0.8, note="sister", mutual=True)
    assert g.knows("A", "B") and g.knows("B", "A") and not g.knows("A", "C")
    assert g.density() == pytest.approx(2 / 12)
    g.record_interaction("A", "C", step=5)
    rel = g.relation("C", "A")
    assert rel["last_interaction"] == 5 and rel["interactions"] == 1 and rel["since"] == 5
    assert g.strengthen("A", "B", 0.5) == 1.0  # clipped to [0, 1]
    g.set_note("D", "A", "the new neighbour", step=7)
    assert [name for name, _ in g.acquaintances("A")] == ["B", "C"]
    assert g.edge_count() == 5 and g.density() == pytest.approx(5 / 12)
    h = SocialGraph()
    h.load_state_dict(g.state_dict())
    assert h.state_dict() == g.state_dict()
    with pytest.raises(KeyError, match="'Z' is not a resident"):
        g.add_relation("A", "Z")
