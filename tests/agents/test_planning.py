"""Plans become gap-free time lines whatever the model wrote."""

from hypothesis import given
from hypothesis import strategies as st

from simulacra.agents.planning import schedule_slots, sequence_slots, slot_at
from simulacra.world import format_minutes


def assert_covers(slots, start, end) -> None:
    assert slots[0].start == start and slots[-1].end == end
    for a, b in zip(slots, slots[1:], strict=False):
        assert a.end == b.start and a.start < a.end


def test_schedule_covers_the_waking_day() -> None:
    blocks = [("12:00", "lunch", "Café"), ("09:00", "work", "Bakery"), ("09:00", "again", "X"), ("23:00", "late", "Y")]
    slots = schedule_slots(blocks, 7 * 60, 22 * 60, "Home")
    assert_covers(slots, 7 * 60, 22 * 60)
    assert [(format_minutes(s.start), s.activity) for s in slots] == [("07:00", "work"), ("12:00", "lunch")]


def test_schedule_past_midnight_and_empty_fallback() -> None:
    slots = schedule_slots([("20:00", "pub", "Pub"), ("00:00", "walk home", "Street")], 8 * 60, 60, "Home")
    assert_covers(slots, 8 * 60, 25 * 60)
    assert slot_at(slots, 30).activity == "walk home"  # 00:30 belongs to the waking day
    assert schedule_slots([], 8 * 60, 22 * 60, "Home")[0].place == "Home"


@given(
    st.lists(st.tuples(st.sampled_from([5, 10, 15]), st.text(min_size=1, max_size=5)), max_size=8),
    st.integers(0, 23 * 60),
    st.integers(1, 120),
)
def test_hour_decomposition_always_covers_its_interval(steps, start, length) -> None:
    end = start + length
    slots = sequence_slots([(m, a, "P", "") for m, a in steps], start, end, ("idle", "Home", ""))
    assert_covers(slots, start, end)
    for minute in range(start, end):
        assert slot_at(slots, minute % (24 * 60)) is not None


def test_decomposition_trims_and_stretches() -> None:
    long = sequence_slots(
        [(15, "a", "P", ""), (15, "b", "P", ""), (15, "c", "P", ""), (15, "d", "P", "")], 0, 40, ("", "", "")
    )
    assert [(s.activity, s.start, s.end) for s in long] == [("a", 0, 15), ("b", 15, 30), ("c", 30, 40)]
    short = sequence_slots([(5, "a", "P", ""), (10, "b", "P", "")], 0, 60, ("", "", ""))
    assert [(s.activity, s.start, s.end) for s in short] == [("a", 0, 5), ("b", 5, 60)]
