# ruff: noqa: E501  (expected messages are asserted whole, one string each)
"""Broken scenario files and the exact message a user sees for each (file, line, field path, what to change).

Every case starts from one valid file (``VALID``) and makes one mistake a person could make, writes
it to disk and loads it the way ``simulacra scenario check`` does. The message is asserted whole.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simulacra.scenario import ScenarioError, load_scenario

VALID = """\
name: Tiny
simulation:
  start: 2025-04-10 07:00
  minutes_per_step: 10
  duration: 1d
map:
  tiles: |
    #########
    #aaa#bbb#
    #aaa#bbb#
    ##+###+##
    *.......*
  places:
    - name: Ash House
      kind: home
      char: a
      objects:
        - {name: stove, at: [1, 1], state: "off", states: ["off", "on"]}
    - name: Café
      kind: venue
      char: b
residents:
  - name: Ada
    age: 30
    home: Ash House
    workplace: Café
    relationships:
      - {name: Ben, note: brother}
  - name: Ben
    age: 28
    home: Ash House
information:
  - {id: party, holder: Ada, fact: Ada hosts a party at the café at 5 pm.}
events:
  - {id: party, title: Party, host: Ada, place: Café, start: 2025-04-10 17:00, end: 2025-04-10 19:00, information: party}
measurement:
  interviews:
    - {fact: party, questions: [Do you know about a party?]}
"""

CASES = [
    pytest.param(
        [("    home: Ash House\n    workplace", "    home: Bakery House\n    workplace")],
        "FILE, line 25, residents[0].home: unknown place 'Bakery House' (known homes: Ash House); fix the name or add the place to map.places",
        id="unknown_home",
    ),
    pytest.param(
        [("  - name: Ben\n    age: 28\n    home: Ash House", "  - name: Ben\n    age: 28\n    home: Café")],
        "FILE, line 31, residents[1].home: 'Café' is a place of kind venue, not a home (known homes: Ash House); pick a home or set that place's kind to home",
        id="home_not_home",
    ),
    pytest.param(
        [("    age: 28\n", "    age: 28\n    hobby: chess\n")],
        "FILE, line 31, residents[1]: unknown key 'hobby' (allowed: name, age, traits, occupation, lifestyle, home, workplace, routine, relationships, memories, start)",
        id="unknown_key",
    ),
    pytest.param(
        [("    age: 28\n    home", "    age: 28\n    hom")],
        "FILE, line 31, residents[1]: unknown key 'hom'; did you mean 'home'? (allowed: name, age, traits, occupation, lifestyle, home, workplace, routine, relationships, memories, start)",
        id="typo_key",
    ),
    pytest.param(
        [("  - name: Ben\n    age: 28\n", "  - name: Ben\n")],
        "FILE, line 29, residents[1]: missing required key 'age'",
        id="missing_key",
    ),
    pytest.param(
        [("    age: 28", "    age: twenty")],
        "FILE, line 30, residents[1].age: expected a whole number, got 'twenty'",
        id="bad_age",
    ),
    pytest.param(
        [("    age: 28", "    age: 130")],
        "FILE, line 30, residents[1].age: 130 is out of range; it must be at most 120",
        id="age_range",
    ),
    pytest.param(
        [("      kind: venue", "      kind: shop")],
        "FILE, line 20, map.places[1].kind: 'shop' is not allowed; use one of 'home', 'work', 'venue' or 'outdoor'",
        id="bad_kind",
    ),
    pytest.param(
        [("{name: Ben, note: brother}", "{name: Bea, note: brother}")],
        "FILE, line 28, residents[0].relationships[0].name: unknown resident 'Bea' (did you mean 'Ben'? relationships must name residents of this scenario)",
        id="unknown_relationship",
    ),
    pytest.param(
        [("{name: Ben, note: brother}", "{name: Ada, note: brother}")],
        "FILE, line 28, residents[0].relationships[0].name: a resident cannot have a relationship with themself; remove this entry",
        id="self_relationship",
    ),
    pytest.param(
        [("    workplace: Café", "    workplace: Cafe")],
        "FILE, line 26, residents[0].workplace: unknown place 'Cafe' (did you mean 'Café'? known workplaces: Café); fix the name or add the place to map.places",
        id="unknown_workplace",
    ),
    pytest.param(
        [("    #aaa#bbb#\n    #aaa#bbb#\n", "    #aaa#bbb#\n    #aaa#bb#\n")],
        "FILE, line 10, map.tiles[2]: grid row 2 is 8 characters wide but row 0 is 9; every row must have the same width (pad with '#' or spaces)",
        id="ragged_row",
    ),
    pytest.param(
        [("    #aaa#bbb#\n    #aaa#bbb#\n", "    #aaa#bbb#\n    #aaQ#bbb#\n")],
        "FILE, line 10, map.tiles[2]: character 'Q' at column 3 of grid row 2 is neither terrain nor a place's char (known: ' #*+,.T_~ab'); add it to map.legend or give a place that char",
        id="unknown_char",
    ),
    pytest.param(
        [("      kind: venue\n      char: b", "      kind: venue\n      char: a")],
        "FILE, line 21, map.places[1].char: char 'a' of 'Café' is already used by 'Ash House'; every place needs its own character",
        id="duplicate_char",
    ),
    pytest.param(
        [("at: [1, 1]", "at: [5, 1]")],
        "FILE, line 18, map.places[0].objects[0].at: 'stove' is placed at (x=5, y=1), which is in 'Café', not in 'Ash House'; move it onto a floor tile of its place",
        id="object_outside",
    ),
    pytest.param(
        [("    ##+###+##", "    ##+######")],
        "FILE, line 19, map.places[1]: 'Café' cannot be reached from the spawn point at (x=0, y=4); open a door ('+') in its walls",
        id="unreachable",
    ),
    pytest.param(
        [('state: "off", states', 'state: "lit", states')],
        "FILE, line 18, map.places[0].objects[0].state: state 'lit' is not one of the object's states (off, on); use one of them or add it to states",
        id="bad_state",
    ),
    pytest.param(
        [("  - name: Ben\n    age: 28", "  - name: Ada\n    age: 28")],
        "FILE, line 28, residents[0].relationships[0].name: unknown resident 'Ben' (relationships must name residents of this scenario)\nFILE, line 29, residents[1].name: 'Ada' is also the name of residents[0]; resident names must be unique",
        id="duplicate_resident",
    ),
    pytest.param(
        [("start: 2025-04-10 17:00, end: 2025-04-10 19:00", "start: 2025-04-12 17:00, end: 2025-04-12 19:00")],
        "FILE, line 35, events[0].start: the event runs 2025-04-12 17:00 to 2025-04-12 19:00 but the simulation runs 2025-04-10 07:00 to 2025-04-11 07:00; move the event or change simulation.start / simulation.duration",
        id="event_outside_sim",
    ),
    pytest.param(
        [("end: 2025-04-10 19:00", "end: 2025-04-10 16:00")],
        "FILE, line 35, events[0].end: the event ends (2025-04-10 16:00) before it starts (17:00)",
        id="event_ends_before",
    ),
    pytest.param(
        [("{fact: party,", "{fact: parade,")],
        "FILE, line 38, measurement.interviews[0].fact: unknown fact 'parade' (facts: party); interviews must name an id from information",
        id="unknown_fact",
    ),
    pytest.param(
        [
            (
                "  - name: Ben\n    age: 28\n    home: Ash House",
                "  - name: Ben\n    age: 28\n    home: Ash House\n    routine: {wake: '7 am'}",
            )
        ],
        "FILE, line 32, residents[1].routine.wake: '7 am' is not a time of day; write it as HH:MM, e.g. '07:30' or '17:00'",
        id="bad_time",
    ),
    pytest.param(
        [("duration: 1d", "duration: two days")],
        "FILE, line 5, simulation.duration: 'two days' is not a duration; write e.g. '2d', '36h', '1d 12h', '90m' or '300 steps'",
        id="bad_duration",
    ),
    pytest.param(
        [("  minutes_per_step: 10\n", "  minutes_per_step: 10\n  minutes_per_step: 5\n")],
        "FILE, line 5, simulation.minutes_per_step: the key 'minutes_per_step' appears twice in this mapping (first on line 4); keep one",
        id="duplicate_key",
    ),
    pytest.param(
        [("    age: 30\n", "    age: 30\n   oops: [\n")],
        "FILE, line 25, column 4: not valid YAML (while parsing a block collection, did not find expected '-' indicator); check the indentation and quoting here",
        id="yaml_syntax",
    ),
    pytest.param(
        [
            ("    #aaa#bbb#\n    #aaa#bbb#\n    ##+###+##", "    ##a##bbb#\n    ##a##bbb#\n    ##+###+##"),
            ("at: [1, 1]", "at: [2, 1]"),
        ],
        "FILE, line 31, residents[1].home: 'Ash House' has room for 1 resident (free floor tiles) but 2 live there; enlarge it or house this resident elsewhere",
        id="home_full",
    ),
    pytest.param(
        [("      char: b\n", "      char: b\n      rects: [[6, 1, 5, 2]]\n")],
        "FILE, line 22, map.places[1].rects[0]: rectangle [x=6, y=1, width=5, height=2] does not fit the 9x5 grid (x+width and y+height may be at most the grid's width and height)",
        id="rect_outside",
    ),
    pytest.param(
        [
            (
                "  - name: Ben\n    age: 28\n    home: Ash House",
                "  - name: Ben\n    age: 28\n    home: Ash House\n    routine: {work: 09:00-17:00}",
            )
        ],
        "FILE, line 32, residents[1].routine.work: work hours are set but there is no workplace; add workplace",
        id="work_without_workplace",
    ),
    pytest.param(
        [("place: Café,", "place: Cafe Royal,")],
        "FILE, line 35, events[0].place: unknown place 'Cafe Royal' (places: Ash House, Café, the street); fix the name or add the place to map.places",
        id="unknown_event_place",
    ),
    pytest.param(
        [("      char: b\n", "      char: b\n      color: red\n")],
        "FILE, line 22, map.places[1].color: 'red' is not a colour; write it as #rrggbb, e.g. '#a0522d'",
        id="bad_color",
    ),
]


def test_the_valid_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(VALID)
    scenario = load_scenario(path)
    assert [r.name for r in scenario.definition.residents] == ["Ada", "Ben"]


@pytest.mark.parametrize(("edits", "expected"), CASES)
def test_broken_scenario_message(tmp_path: Path, edits: list[tuple[str, str]], expected: str) -> None:
    text = VALID
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value) == expected.replace("FILE", str(path))


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: file not found; check the path"
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(empty)
    assert str(info.value) == f"{empty}: the file is empty; a scenario needs name, map, residents and simulation"


def test_yaml_words_stay_words(tmp_path: Path) -> None:
    """YAML 1.1 reads 17:00 as 1020 and on/off as booleans; a scenario means the time and the word."""
    text = VALID.replace('state: "off", states: ["off", "on"]', "state: off, states: [off, on]")
    text = text.replace(
        "    home: Ash House\ninformation", "    home: Ash House\n    routine: {wake: 7:15, sleep: 23:30}\ninformation"
    )
    path = tmp_path / "words.yaml"
    path.write_text(text)
    scenario = load_scenario(path)
    assert scenario.town_map.objects[0].state == "off"
    assert scenario.town_map.objects[0].states == ("off", "on")
    ben = scenario.definition.residents[1]
    assert (ben.routine.wake, ben.routine.sleep) == (7 * 60 + 15, 23 * 60 + 30)
