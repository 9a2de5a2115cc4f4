"""The Town as a Mesa model: conventions, movement, occupancy, determinism, async steps, save/restore."""

from __future__ import annotations

import asyncio
import json

import mesa
import numpy as np
import pytest

from simulacra.world import GoTo, Resident, SetActivity, SetObjectState, Town, UnknownPlaceError


def trajectory(town: Town, steps: int) -> list[list[int]]:
    out = []
    for _ in range(steps):
        town.step()
        out.append(town.tile.tolist())
    return out


def test_mesa_conventions(town3) -> None:
    town = town3.build_town()
    assert isinstance(town, mesa.Model) and isinstance(town.rng, np.random.Generator)
    assert isinstance(town.agents, mesa.agent.AgentSet) and len(town.agents) == 3
    assert [a.unique_id for a in town.agents] == [1, 2, 3]
    assert all(isinstance(a, Resident) for a in town.agents)
    workers = town.agents.select(lambda a: a.workplace is not None)
    assert sorted(a.name for a in workers) == ["Ada Quill", "Cora Lind"]
    # Mesa indexes agents by class: the one class here holds all three residents, in id order
    assert list(town.agents_by_type) == [Resident]
    assert [a.name for a in town.agents_by_type[Resident]] == ["Ada Quill", "Ben Quill", "Cora Lind"]
    town.agents.shuffle_do("set_activity", "waving", "👋")  # any AgentSet method works on residents
    assert {a.activity for a in town.agents} == {"waving"}
    town.step()
    assert town.steps == 1 and town.now.hour == 7 and town.now.minute == 10
    town.run_model()  # runs until max_steps (simulation.duration)
    assert town.steps == town3.max_steps and not town.running


def test_datacollector_can_be_attached(town3) -> None:
    town = town3.build_town()
    town.datacollector = mesa.DataCollector(
        model_reporters={"density": lambda m: m.social.density(), "at_venues": lambda m: m.count_at("venue")},
        agent_reporters={"pos": "pos", "place": "place"},
    )
    for _ in range(60):  # 07:00 to 17:00
        town.step()
    model_df = town.datacollector.get_model_vars_dataframe()
    agent_df = town.datacollector.get_agent_vars_dataframe()
    assert len(model_df) == 60 and model_df["at_venues"].max() >= 2  # Ada and Cora at the café
    assert len(agent_df) == 60 * 3
    assert agent_df.loc[(60, 1), "pos"] == town.resident("Ada Quill").pos


def test_routine_moves_people_between_home_work_and_venues(town25) -> None:
    town = town25.build_town()
    places = {}
    for _ in range(48):  # Thursday 07:00 to 15:00
        town.step()
        for r in town.residents:
            places.setdefault(r.name, set()).add(r.area)
    assert "Hearth & Crumb Bakery" in places["Mara Lindqvist"]
    assert "Riverside Clinic" in places["Kenji Hoshino"]
    assert town.resident("Hilde Brandt").area == "Fernwick Library"  # works until 17:30
    assert "Copper Kettle Café" in places["Juno Castell"]
    assert town.resident("Rafa Quint").area == "Castell House"  # works evenings
    assert all(r.area != "the street" for r in town.residents if not r.is_moving)


def test_go_to_gives_a_free_tile_and_nobody_shares_one(town25) -> None:
    town = town25.build_town()
    names = [r.name for r in town.residents]
    for name in names:
        assert town.go_to(name, "Copper Kettle Café:seating") >= 0
    for _ in range(30):
        town._end_step()  # walk, without the routine sending anyone elsewhere
    assert all(not r.is_moving for r in town.residents)
    tiles = [r.pos for r in town.residents]
    assert len(set(tiles)) == len(tiles)  # one resident per tile at rest
    assert {r.place for r in town.residents} == {"Copper Kettle Café:seating"}
    assert len(town.residents_at("Copper Kettle Café")) == 25
    assert town.go_to("Juno Castell", "Copper Kettle Café:seating") == 0  # already there
    with pytest.raises(UnknownPlaceError, match="did you mean 'Copper Kettle Café'"):
        town.go_to("Juno Castell", "Copper Kettle Cafe")


def test_objects_change_state_and_are_perceived(town3) -> None:
    town = town3.build_town()
    ada = town.resident("Ada Quill")
    town.set_object_state("Ash House:stove", "on", by=ada)
    with pytest.raises(ValueError, match="cannot be 'burning'; its states are off, on"):
        town.set_object_state("Ash House:stove", "burning")
    town.step()
    seen = {s.name: s for s in ada.perception.objects}
    assert seen["Ash House:stove"].state == "on" and seen["Ash House:stove"].changed
    assert town.object_events[-1] == {
        "step": 0,
        "object": "Ash House:stove",
        "from": "off",
        "to": "on",
        "by": "Ada Quill",
    }
    assert [s.name for s in ada.perception.residents] == ["Ben Quill"]  # same house; Cora is next door
    d = [s.distance for s in ada.perception.seen]
    assert d == sorted(d)


def test_same_seed_same_run_and_other_seed_differs(town100) -> None:
    a = trajectory(town100.build_town(seed=11), 150)
    b = trajectory(town100.build_town(seed=11), 150)
    c = trajectory(town100.build_town(seed=12), 150)
    assert a == b
    assert a != c  # evening outings are drawn from model.rng


def test_restored_town_continues_identically(town100) -> None:
    town = town100.build_town(seed=5)
    for _ in range(70):
        town.step()
    town.set_object_state(town.map.objects[0].name, "unmade", by=town.residents[0])
    town.social.record_interaction(town.residents[0].name, town.residents[50].name, town.steps)
    saved = json.loads(json.dumps(town.state_dict()))  # plain JSON
    expected = trajectory(town, 90)
    end_state = town.state_dict()

    fresh = town100.build_town(seed=999)  # a different seed: everything must come from the state
    fresh.load_state_dict(saved)
    assert trajectory(fresh, 90) == expected
    assert fresh.state_dict() == end_state


async def test_astep_equals_step(town100) -> None:
    sync = trajectory(town100.build_town(), 100)
    town = town100.build_town()
    got = []
    for _ in range(100):
        await town.astep()
        got.append(town.tile.tolist())
    assert got == sync


class SlowThinker(Resident):
    """Thinks for a while (later residents finish first) and then follows the routine."""

    async def think(self, perception):
        await asyncio.sleep(0.001 * (200 - self.unique_id) / 100)
        return self.routine_action()


async def test_awaited_minds_give_the_same_run_whatever_order_they_finish(town100) -> None:
    sync = trajectory(town100.build_town(), 60)
    town = town100.build_town(resident_class=SlowThinker)
    got = []
    for _ in range(60):
        await town.astep()
        got.append(town.tile.tolist())
    assert got == sync


class Crowd(Resident):
    """Everyone heads for the café counter at once and says so."""

    async def think(self, perception):
        await asyncio.sleep(0.0005 * (30 - self.unique_id))
        return [
            GoTo("Pell Café:counter"),
            SetActivity("queueing"),
            SetObjectState("Pell Café:counter:coffee machine", "brewing"),
        ]


async def test_decisions_apply_in_id_order(town3) -> None:
    town = town3.build_town(resident_class=Crowd)
    await town.astep()
    assert [r.activity for r in town.residents] == ["queueing"] * 3
    assert [e["by"] for e in town.object_events] == ["Ada Quill"]  # first in id order; the rest is no change
    counter = town.map.place("Pell Café:counter")
    held = [int(town.held[r.index]) for r in town.residents]
    assert len(set(held)) == 3 and all(h in counter.tiles for h in held)
    # the lowest id got the counter tile nearest the door, whoever finished thinking first
    assert held[0] == min(held, key=lambda t: (abs(t % 26 - 17) + abs(t // 26 - 3), t))


def test_snapshot_and_delta_are_json(town25) -> None:
    town = town25.build_town()
    snap = json.loads(json.dumps(town.snapshot()))
    assert snap["map"]["width"] == 70 and len(snap["map"]["tiles"]) == 38
    assert {p["name"] for p in snap["map"]["places"]} >= {"Copper Kettle Café", "Copper Kettle Café:counter"}
    assert snap["map"]["legend"]["G"]["place"] == "Copper Kettle Café:counter"
    assert len(snap["residents"]) == 25 and {"x", "y", "activity", "emoji"} <= set(snap["residents"][0])
    for _ in range(3):
        town.step()
    at3 = town.snapshot()
    for _ in range(3):
        town.step()
    at6 = town.snapshot()
    delta = json.loads(json.dumps(town.delta(3)))
    assert delta["step"] == 6 and delta["since"] == 3 and "map" not in delta
    # exactly the residents whose drawn state differs from step 3, each as the step-6 snapshot has it
    differs = [now for then, now in zip(at3["residents"], at6["residents"], strict=True) if then != now]
    assert differs and delta["residents"] == differs
    assert "Mara Lindqvist" in {r["name"] for r in delta["residents"]}  # still walking to her bakery at 08:00
    assert all(town.changed_step[town.resident(r["id"]).index] > 3 for r in delta["residents"])
    assert delta["objects"] == [o for o, then in zip(at6["objects"], at3["objects"], strict=True) if o != then]
    assert {k: delta[k] for k in ("time", "time_of_day", "density")} == {
        k: at6[k] for k in ("time", "time_of_day", "density")
    }
    # nothing changed since now: the frame still carries the clock, but no residents and no objects
    empty = json.loads(json.dumps(town.delta(town.steps)))
    assert empty == {
        "step": 6,
        "since": 6,
        "time": at6["time"],
        "time_of_day": at6["time_of_day"],
        "residents": [],
        "objects": [],
        "density": at6["density"],
    }


def test_removed_resident_leaves_the_town(town3) -> None:
    town = town3.build_town()
    ben = town.resident("Ben Quill")
    ben.remove()
    town.step()
    assert len(town.agents) == 2 and not ben.active
    assert "Ben Quill" not in [s.name for s in town.resident("Ada Quill").perception.residents]


def test_looking_ahead_and_path_cache_change_no_path(town100, monkeypatch) -> None:
    """Prefetching expected trips and caching A* paths only move work between steps."""
    from simulacra.world.pathfinding import Pathfinder

    # a small map makes every trip follow a distance field; big towns run A* for places few want
    monkeypatch.setattr(Pathfinder, "shared_threshold", property(lambda self: 3))
    ahead = town100.build_town(seed=3)
    plain = town100.build_town(seed=3, path_cache_mb=0, searches_per_step=0)
    assert trajectory(ahead, 150) == trajectory(plain, 150)
    assert ahead.pathfinder.stats["path_hits"] > 0 and ahead.pathfinder.stats["prefetched"] > 0
    assert plain.pathfinder.stats["path_hits"] == 0 and plain.pathfinder.stats["astar"] > 0
