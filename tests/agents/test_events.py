"""Knowing turns into going: an event heard of is offered in the next plan, and a choice to go puts its
hours in the schedule and the resident at its place; a choice not to go is logged with its reason."""

import re

from simulacra.agents import MindConfig
from simulacra.agents.planning import Slot, insert
from simulacra.inference.backends.fake import ScriptedLLM
from simulacra.scenario import load_scenario
from simulacra.simulation import Simulation

from .fakes import WordEmbedder, by_kind, saying, talk, who

TOWN3 = load_scenario("scenarios/town3.yaml")  # Cora hosts a tasting at Pell Café, 17:00-18:00


def script(offered: dict, going: set[str]):
    def hour(prompt, schema):
        name = who(prompt)
        afternoon = int(re.search(r"It is (\d\d):", prompt).group(1)) >= 16
        place = {"Cora Lind": "Pell Café", "Ada Quill": "Pell Green" if afternoon else "Pell Café:counter"}
        step = {"minutes": 15, "action": "pruning roses", "emoji": "🌹", "place": place.get(name, "Ash House")}
        out = {"actions": [step] * 4}
        if "event" in schema.model_fields:
            label = schema.model_fields["event"].annotation.__args__[0]
            offered.setdefault(name, []).append((label, "You know of: " + label in prompt))
            out |= {"event": label, "why": "Cora invited me"} if name in going else {"event": "none", "why": "busy"}
        return out

    says = saying("Cora Lind", "Come to my tasting at five!", "Lovely, thank you.")
    return by_kind({"Reaction": talk, "Utterance": says, "HourPlan": hour})


async def run(going: set[str]) -> tuple[Simulation, dict, list[dict]]:
    offered: dict = {}
    sim = Simulation(TOWN3, ScriptedLLM(script(offered, going)), WordEmbedder(), seed=3, config=MindConfig(seed=3))
    events = []
    for _ in range(10 * 6 + 3):  # 07:00 to 17:30
        await sim.astep()
        events += sim.society.take_events()
    return sim, offered, events


async def test_an_invitee_who_chooses_the_event_goes_there() -> None:
    sim, offered, events = await run({"Ada Quill"})
    assert "Ada Quill" in sim.society.facts.known["party"]  # she heard of it from Cora
    label, in_prompt = offered["Ada Quill"][0]
    assert label == "Coffee tasting at Pell Café, 17:00-18:00" and in_prompt
    assert "Ben Quill" not in offered  # never heard of it: never offered
    ada = sim.resident("Ada Quill")
    assert any(s.place == "Pell Café" and s.start <= 17 * 60 < s.end for s in ada.schedule)
    assert "Ada Quill" in sim.attendance["party"]
    choice = [e for e in events if e["kind"] == "event_choice" and e["resident"] == "Ada Quill"]
    assert [(c["go"], c["why"]) for c in choice] == [(True, "Cora invited me")]  # decided once
    assert len(offered["Ada Quill"]) == 1


async def test_a_choice_not_to_go_is_logged_with_its_reason() -> None:
    sim, offered, events = await run(set())
    choice = [e for e in events if e["kind"] == "event_choice" and e["resident"] == "Ada Quill"]
    assert [(c["go"], c["why"]) for c in choice] == [(False, "busy")]
    assert "Ada Quill" not in sim.attendance["party"]


def test_insert_cuts_back_and_splits_what_it_overlaps() -> None:
    day = [Slot(420, 720, "work", "Café"), Slot(720, 1320, "home", "House")]
    out = insert(day, Slot(1020, 1080, "party", "Café"))
    assert [(s.start, s.end, s.activity) for s in out] == [
        (420, 720, "work"), (720, 1020, "home"), (1020, 1080, "party"), (1080, 1320, "home"),
    ]  # fmt: skip
