"""Coordination, the paper's third measure: who of the invited came, and why the others did not,
by ground truth (their plans and whereabouts in run.db) and by interview."""

import asyncio
import re
from datetime import timedelta
from types import SimpleNamespace

from simulacra.inference.backends.fake import ScriptedLLM
from simulacra.metrics import (
    claims,
    coordination,
    interview_all,
    interview_coordination,
    interview_facts,
    planned_to_attend,
    whereabouts,
)
from simulacra.run import Run
from simulacra.scenario import load_scenario
from simulacra.simulation import Simulation

from ..agents.fakes import WordEmbedder, by_kind, saying, talk, who

TOWN3 = "scenarios/town3.yaml"


class StubStore:
    """The two reads the coordination measure makes of run.db: logged events and stored frames."""

    def __init__(self, events: list[dict], frames: dict[int, list[dict]]) -> None:
        self._events, self._frames = events, frames

    def events(self) -> list[dict]:
        return self._events

    def frame_at(self, step: int) -> dict:
        return {"residents": self._frames.get(step, [])}


def slot(start: str, end: str, place: str) -> dict:
    return {"start": start, "end": end, "activity": "x", "place": place, "emoji": ""}


def sim_at_step(steps: int, answers: dict | None = None) -> Simulation:
    sim = Simulation(load_scenario(TOWN3), llm=ScriptedLLM(by_kind(answers)), embedder=WordEmbedder(), seed=1)
    sim.town.steps = steps  # the clock is a function of the step count
    return sim


def test_planned_means_a_plan_of_that_day_puts_them_at_the_place_during_the_hours() -> None:
    sim = sim_at_step(80)
    ev = sim.scenario.definition.events[0]  # Coffee tasting, Pell Café, 17:00-18:00 on the first day
    clock = sim.town.clock
    morning = clock.step_of(ev.start - timedelta(hours=8))
    during, after = clock.step_of(ev.start), clock.step_of(ev.end)
    store = StubStore(
        [
            {"step": morning, "kind": "day_plan", "resident": "A", "schedule": [slot("16:30", "17:30", "Pell Café")]},
            {"step": morning, "kind": "day_plan", "resident": "B", "schedule": [slot("09:00", "10:00", "Pell Café")]},
            # C planned the café, then re-planned the day elsewhere: the last plan counts
            {"step": morning, "kind": "day_plan", "resident": "C", "schedule": [slot("17:00", "18:00", "Pell Café")]},
            {"step": morning + 1, "kind": "day_plan", "resident": "C", "schedule": [slot("17:00", "18:00", "home")]},
            # D's hour plan sends it to a room of the café for ten minutes of the event
            {"step": during, "kind": "hour_plan", "resident": "D", "actions": [slot("17:10", "17:20", "Pell Café: b")]},
            # E only decides to go after the event is over
            {"step": after, "kind": "hour_plan", "resident": "E", "actions": [slot("17:30", "17:40", "Pell Café")]},
            # F's slot ends exactly when the event starts
            {"step": morning, "kind": "day_plan", "resident": "F", "schedule": [slot("16:00", "17:00", "Pell Café")]},
        ],
        {},
    )
    assert planned_to_attend(store, sim, ev) == {"A", "D"}


def test_whereabouts_is_what_each_resident_mostly_did_during_the_event() -> None:
    sim = sim_at_step(80)
    ev = sim.scenario.definition.events[0]
    first, end = sim.town.clock.step_of(ev.start), sim.town.clock.step_of(ev.end)
    frames = {
        s: [
            {"name": "A", "activity": "tasting" if s < end - 1 else "walking", "place": "Pell Café"},
            {"name": "B", "activity": "working", "place": "Hale Workshop"},
        ]
        for s in range(first, end)
    }
    frames[first - 1] = [{"name": "A", "activity": "walking", "place": "street"}] * 20  # before: ignored
    assert whereabouts(StubStore([], frames), sim, ev) == {"A": "tasting (Pell Café)", "B": "working (Hale Workshop)"}


def test_absent_invitees_get_ground_truth_and_an_interview() -> None:
    def answer(prompt, schema):
        return {
            "answer": "I had to work late." if "You are Ada Quill" in prompt else "I forgot about it.",
            "because": [],
        }

    sim = sim_at_step(80, {"Answer": answer})
    ev = sim.scenario.definition.events[0]
    names = [r.name for r in sim.residents]
    host = ev.host
    guests = [n for n in names if n != host]
    # both guests heard of the tasting in the morning; nobody went
    facts = sim.society.facts
    facts.seed(0, sim.town.clock.at(0))
    assert {p.learner for p in facts.hear(host, guests, "Come to my tasting!", 1, sim.town.clock.at(1))} == set(guests)
    store = StubStore(
        [{"step": 1, "kind": "day_plan", "resident": guests[0], "schedule": [slot("17:00", "18:00", "Pell Café")]}],
        {s: [{"name": n, "activity": "reading", "place": "home"} for n in names] for s in range(60, 80)},
    )
    c = coordination(sim, store)["party"]
    assert c["invited"] == sorted(guests) and c["attended"] == []  # the host is not an invitee
    assert c["absent"][guests[0]] == {"planned": True, "where": "reading (home)", "choice": None}
    assert c["absent"][guests[1]]["planned"] is False
    said = asyncio.run(interview_coordination(sim, {"party": c}))["party"]
    assert set(said["answers"]) == set(c["absent"])
    conflict = {n for n, a in said["answers"].items() if a["names_conflict"]}
    assert conflict == {"Ada Quill"}


def test_measure_on_a_finished_run_writes_all_three_interviews(tmp_path) -> None:
    """07:00 to 18:00, through the whole tasting: Cora tells Ada about it at the café in the morning,
    Ada's afternoon hour plans send her to the green instead, Ben never hears of it."""

    says = saying("Cora Lind", "Come to my tasting at five!", "Lovely, thank you.")

    def hour(prompt, schema):
        afternoon = int(re.search(r"It is (\d\d):", prompt).group(1)) >= 16
        place = {"Cora Lind": "Pell Café", "Ada Quill": "Pell Green" if afternoon else "Pell Café:counter"}
        step = {"minutes": 15, "action": "pruning roses", "emoji": "🌹", "place": place.get(who(prompt), "Ash House")}
        if "event" in schema.model_fields:  # the tasting is offered once Ada has heard of it: she says no
            return {"actions": [step] * 4, "event": "none", "why": "the roses need me"}
        return {"actions": [step] * 4}

    def answer(prompt, schema):
        if "why not" in prompt:
            return {
                "answer": "No, I had to work late." if who(prompt) == "Ada Quill" else "I was there.",
                "because": [],
            }
        if who(prompt) == "Ben Quill":
            return {"answer": "Nothing that I know of.", "because": []}
        # cites the numbered memories that mention the tasting, as the schema asks
        cited = [int(n) for n, text in re.findall(r"^(\d+)\. (.*)$", prompt, re.M) if "tasting" in text.lower()]
        return {"answer": "Cora's tasting at five.", "because": cited[:3]}

    script = by_kind({"Reaction": talk, "Utterance": says, "HourPlan": hour, "Answer": answer})
    run = Run.create(TOWN3, out=tmp_path, seed=3, hours=11, llm=ScriptedLLM(script), embedder=WordEmbedder())
    asyncio.run(run.arun())
    ev = run.sim.scenario.definition.events[0]
    assert run.sim.town.now == ev.end  # the run covered the whole event
    truth = coordination(run.sim, run.store)["party"]
    assert truth["invited"] == ["Ada Quill"] and truth["attended"] == []
    choice = {"go": False, "why": "the roses need me", "plan": "hour_plan"}
    assert truth["absent"] == {"Ada Quill": {"planned": False, "where": "pruning roses (Pell Green)", "choice": choice}}

    got = asyncio.run(interview_all(run.sim, run.store))
    asyncio.run(run.aclose())
    assert set(got) == {"facts", "relationships", "coordination"}
    asked = got["facts"]["party"]["answers"]
    assert set(asked) == {"Ada Quill", "Ben Quill", "Cora Lind"}
    assert asked["Ben Quill"][0]["answer"] == "Nothing that I know of."
    assert got["facts"]["party"]["knows"] == ["Ada Quill", "Cora Lind"]  # their cited memories tell of it
    assert got["facts"]["party"]["unsupported"] == []
    assert asked["Ada Quill"][0]["supported"] and any("tasting" in m.lower() for m in asked["Ada Quill"][0]["because"])
    assert got["relationships"]["density"] > 0  # they all talked
    said = got["coordination"]["party"]
    assert said["question"] == "Did you go to Coffee tasting at Pell Café? If not, why not?"
    # only the absent invitee is asked, and her answer names a conflict her plans did not show
    assert said["answers"] == {"Ada Quill": {"answer": "No, I had to work late.", "names_conflict": True}}


def test_knowing_is_judged_by_the_cited_memories_not_the_answers_words() -> None:
    """Cora (the holder) cites her memory of the tasting; Ada names it with nothing behind it; Ben echoes
    the question's words while saying he does not know."""

    def answer(prompt, schema):
        name = re.search(r"You are ([A-Z][a-z]+ [A-Z][a-z]+)", prompt).group(1)
        listed = re.findall(r"^(\d+)\. (.*)$", prompt, re.M)
        if name == "Cora Lind":
            return {"answer": "My tasting, at five.", "because": [int(n) for n, t in listed if "tasting" in t][:1]}
        if name == "Ada Quill":
            return {"answer": "There is a tasting at the café.", "because": []}
        return {"answer": "I don't know of any tasting or party.", "because": []}

    sim = sim_at_step(1, {"Answer": answer})
    got = asyncio.run(interview_facts(sim))["party"]
    assert got["knows"] == ["Cora Lind"]
    assert got["unsupported"] == ["Ada Quill"]  # claimed in words, no memory cited


def test_a_place_named_like_a_keyword_claims_nothing() -> None:
    fact = SimpleNamespace(id="party", keywords=["lantern", "party"], holder="Juno Castell")
    q = "Do you know about a party at the café?"
    assert not claims(fact, q, "I work at the Lantern Pub until six.", places=["Lantern Pub", "Café"])
    assert claims(fact, q, "Juno's lantern party, on Friday.", places=["Lantern Pub"])
    assert not claims(fact, q, "I don't know of a lantern party.", places=[])
    assert claims(fact, q, "Yes, my party!", holder=True)  # the holder's own fact: any keyword


def test_words_the_question_gives_away_claim_nothing() -> None:
    """Asked about the tasting by name, Ada's echo of "tasting" is no claim; naming its host is."""

    def answer(prompt, schema):
        name = re.search(r"You are ([A-Z][a-z]+ [A-Z][a-z]+)", prompt).group(1)
        says = {"Ada Quill": "A tasting sounds lovely.", "Ben Quill": "Cora is hosting it."}
        return {"answer": says.get(name, "Nothing."), "because": []}

    sim = sim_at_step(1, {"Answer": answer})
    (iv,) = sim.scenario.definition.measurement.interviews
    iv.questions = ["Do you know about a tasting at Pell Café today?"]
    got = asyncio.run(interview_facts(sim))["party"]
    assert got["knows"] == [] and got["unsupported"] == ["Ben Quill"]
