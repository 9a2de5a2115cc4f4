"""The mind end to end on town3 with the scripted fake backend: batching, plans, places, reflection,
conversations, fact provenance, determinism, prompts."""

import re

import pytest
from pydantic import ValidationError

from simulacra.agents import MindConfig
from simulacra.agents.planning import slot_at
from simulacra.inference.backends.fake import ScriptedLLM
from simulacra.inference.port import RequestError
from simulacra.scenario import load_scenario
from simulacra.simulation import Simulation

from .fakes import WordEmbedder, by_kind

TOWN3 = load_scenario("scenarios/town3.yaml")


def who(prompt: str) -> str:
    return re.search(r"You are ([A-Z][a-z]+ [A-Z][a-z]+)", prompt).group(1)


def simulation(answers=None, *, latency: float = 0.0, **config) -> tuple[Simulation, ScriptedLLM]:
    llm = ScriptedLLM(by_kind(answers), latency=latency)
    config.setdefault("line_candidates", 1)  # one scripted answer per line (candidates: test_lines.py)
    sim = Simulation(TOWN3, llm, WordEmbedder(), seed=5, config=MindConfig(seed=5, **config))
    return sim, llm


async def run(sim: Simulation, steps: int) -> list[dict]:
    events = []
    for _ in range(steps):
        await sim.astep()
        events += sim.society.take_events()
    return events


def continue_reaction(prompt, schema):
    return {"decision": "continue", "reason": "busy"}


async def test_all_residents_calls_in_a_step_are_in_flight_together() -> None:
    sim, llm = simulation({"Reaction": continue_reaction}, latency=0.02)
    await sim.astep()
    assert llm.stats()["max_in_flight"] >= len(sim.residents)
    step1 = [c for c in llm.calls if c.schema.__name__ == "DayPlan"]
    assert len(step1) == 3  # one day plan each, all awake at 07:10


async def test_day_is_planned_without_gaps_and_actions_cover_the_hour() -> None:
    sim, _ = simulation({"Reaction": continue_reaction})
    await sim.astep()
    minute = sim.town.clock.minute_of_day(sim.town.steps)
    for r in sim.residents:
        assert r.schedule[0].start == minute
        assert r.schedule[-1].end == r.spec.routine.sleep
        assert all(a.end == b.start for a, b in zip(r.schedule, r.schedule[1:], strict=False))
        assert r.actions[0].start == minute and r.actions[-1].end == 8 * 60
        assert slot_at(r.actions, minute) is not None


async def test_residents_walk_to_the_place_of_their_action() -> None:
    def hour(prompt, schema):
        place = "Pell Green" if who(prompt) == "Ada Quill" else "Pell Café"
        return {"actions": [{"minutes": 15, "action": "stroll", "emoji": "🌳", "place": place}] * 4}

    sim, _ = simulation({"HourPlan": hour, "Reaction": continue_reaction})
    events = await run(sim, 3)
    ada, cora = sim.resident("Ada Quill"), sim.resident("Cora Lind")
    assert ada.destination == "Pell Green" and cora.destination == "Pell Café"
    assert ada.area == "Pell Green" and not ada.is_moving
    assert {"kind": "action", "resident": "Ada Quill", "place": "Pell Green"}.items() <= next(
        e for e in events if e["kind"] == "action" and e["resident"] == "Ada Quill"
    ).items()


async def test_an_object_named_by_the_action_changes_state_and_back() -> None:
    calls = {"n": 0}

    def hour(prompt, schema):
        calls["n"] += 1
        act = "cook porridge on the stove" if calls["n"] == 1 else "read a book"
        return {"actions": [{"minutes": 15, "action": act, "emoji": "🍳", "place": "Ash House"}] * 4}

    sim, _ = simulation({"HourPlan": hour, "Reaction": continue_reaction})
    await sim.astep()
    stove = sim.town.map.lookup("Ash House:stove")[1]
    assert sim.town.object_state[stove] == "on"
    await run(sim, 5)  # 08:00: the next hour's plan no longer uses the stove
    assert sim.town.object_state[stove] == "off"


async def test_reflection_triggers_on_summed_importance_and_links_evidence() -> None:
    seen_prompt = {}

    def insights(prompt, schema):
        seen_prompt[who(prompt)] = prompt
        return {"insights": [{"insight": "Ben cares for the roses", "because": [1, 2]}]}

    answers = {
        "Importance": lambda p, s: {"score": 9},
        "Reaction": continue_reaction,
        "Questions": lambda p, s: {"questions": ["What does Ben care about?"]},
        "Insights": insights,
    }
    sim, llm = simulation(answers, reflection_threshold=15, importance_prior_weight=0.0)
    ben = sim.resident("Ben Quill")
    events = await run(sim, 1)
    assert not [e for e in events if e["kind"] == "reflection"]  # scores land at the end of the step
    events = await run(sim, 1)
    refl = [e for e in events if e["kind"] == "reflection" and e["resident"] == "Ben Quill"]
    assert len(refl) == 1 and ben.stream.importance_since_reflection < 15
    insight = next(m for m in ben.stream.memories if m.kind == "reflection")
    listed = re.findall(r"^(\d+)\. (.*)$", seen_prompt["Ben Quill"], re.M)
    by_number = {int(n): t for n, t in listed}
    assert [ben.stream.memories[s].text for s in insight.evidence] == sorted(
        [by_number[1], by_number[2]], key=lambda t: next(m.seq for m in ben.stream.memories if m.text == t)
    )
    questions = [c for c in llm.calls if c.schema.__name__ == "Questions"]
    assert len(questions) == 3  # everyone scored 9 per memory and reflected once


# distinct lines (near-copies of an earlier line are echoes, which the mind replaces)
TOPICS = (
    "the bakery opens early on weekdays",
    "my sister is visiting from the coast",
    "rain is coming over the hills tonight",
    "the library has new books on birds",
    "our roof needs fixing before winter",
    "someone painted the old bridge green",
    "the market sells plums this week",
    "a fox crossed the square at dawn",
    "the choir practises on Tuesday nights",
)


def talk_script(end_after: int | None = None, mention: str = ""):
    turns = {"n": 0}

    def reaction(prompt, schema):
        if who(prompt) == "Cora Lind" and "Ada Quill" in prompt.split("You notice:")[1]:
            return {"decision": "talk", "reason": "hello"}
        return {"decision": "continue", "reason": "busy"}

    def hour(prompt, schema):
        return {"actions": [{"minutes": 15, "action": "work", "emoji": "💼", "place": "Pell Café"}] * 4}

    def utter(prompt, schema):
        turns["n"] += 1
        speaker = who(prompt)
        text = f"{speaker} says line {turns['n']}: {TOPICS[turns['n'] % len(TOPICS)]}" + (
            f" about the {mention}" if mention and speaker == "Cora Lind" else ""
        )
        return {"says": text, "end": end_after is not None and turns["n"] >= end_after}

    return {"Reaction": reaction, "HourPlan": hour, "Utterance": utter}


async def test_conversation_takes_turns_across_steps_and_ends_by_decision() -> None:
    sim, _ = simulation(talk_script(end_after=5))
    events = await run(sim, 14)
    convs = sim.society.conversations.history
    assert len(convs) == 1
    c = convs[0]
    assert (c.a, c.b) == ("Cora Lind", "Ada Quill")
    speakers = [s for s, _, _ in c.turns]
    assert speakers == ["Cora Lind", "Ada Quill", "Cora Lind", "Ada Quill", "Cora Lind"]
    steps = [k for _, _, k in c.turns]
    assert steps == sorted(steps) and steps[0] < steps[-1]  # one exchange per step, across steps
    assert c.ended and c.end_reason == "Cora Lind said goodbye"
    for name, other in (("Cora Lind", "Ada Quill"), ("Ada Quill", "Cora Lind")):
        mem = [m for m in sim.resident(name).stream.memories if m.kind == "conversation"]
        assert len(mem) == 1 and other in mem[0].text and "line 5" in mem[0].text
    assert sim.town.social.relation("Ada Quill", "Cora Lind")["interactions"] == 1
    kinds = [e["kind"] for e in events]
    assert kinds.count("conversation_start") == 1 and kinds.count("conversation_end") == 1
    assert kinds.count("utterance") == 5


async def test_conversation_stops_at_the_turn_limit() -> None:
    sim, _ = simulation(talk_script(end_after=None), max_turns=4)
    await run(sim, 14)
    c = sim.society.conversations.history[0]
    assert len(c.turns) == 4 and c.end_reason == "turn limit"


async def test_a_fact_spreads_only_when_said_and_carries_provenance() -> None:
    sim, _ = simulation(talk_script(end_after=4, mention="tasting"))
    facts = sim.society.facts
    assert set(facts.known["party"]) == {"Cora Lind"}
    events = await run(sim, 14)
    got = facts.known["party"]["Ada Quill"]
    assert got.source == "Cora Lind" and "tasting" in got.words
    assert "Ben Quill" not in facts.known["party"]  # never told
    learned = [e for e in events if e["kind"] == "fact_learned"]
    assert [(e["learner"], e["source"]) for e in learned] == [("Ada Quill", "Cora Lind")]


async def test_same_answers_same_run() -> None:
    runs = []
    for _ in range(2):
        sim, _ = simulation(talk_script(end_after=5))
        runs.append(await run(sim, 14))
    assert runs[0] == runs[1] and len(runs[0]) > 10


async def test_prompts_share_a_stable_prefix() -> None:
    sim, llm = simulation(talk_script(end_after=3))
    await run(sim, 14)
    systems = {}
    for c in llm.calls:
        if c.schema.__name__ == "Importance":
            continue
        systems.setdefault(who(c.prompt[0]["content"]), set()).add(c.prompt[0]["content"])
    assert all(len(s) == 1 for s in systems.values())  # one system prompt per resident, every call kind
    heads = {next(iter(s)).split("You are")[0] for s in systems.values()}
    assert len(heads) == 1  # the town part is the same for everyone
    kinds = sim.society.call_stats()
    assert set(kinds) >= {"day_plan", "schedule", "hour_plan", "reaction", "utterance", "importance"}


async def test_a_failed_call_falls_back_to_the_schedule() -> None:
    def refuse(prompt, schema):
        return RequestError("boom", "schema", "invalid_output")

    sim, _ = simulation({"HourPlan": refuse, "Reaction": continue_reaction})
    await sim.astep()
    ada = sim.resident("Ada Quill")
    minute = sim.town.clock.minute_of_day(sim.town.steps)
    assert slot_at(ada.actions, minute).activity == slot_at(ada.schedule, minute).activity
    assert sim.society.call_stats()["hour_plan"]["invalid"] == 3


async def test_interview_answers_from_retrieved_memories_without_touching_them() -> None:
    def answer(prompt, schema):
        remembered = prompt.split("What you remember:")[1].split("Answer in character")[0]
        return (
            {"answer": "Yes, at five.", "because": [1]}
            if "tasting" in remembered
            else {"answer": "No idea.", "because": []}
        )

    sim, _ = simulation({"Reaction": continue_reaction, "Answer": answer})
    await sim.astep()
    cora = sim.resident("Cora Lind")
    before = [m.last_retrieved_at for m in cora.stream.memories]
    reply = await sim.interview("Cora Lind", "Is there a tasting at Pell Café?")
    assert reply == "Yes, at five."
    _, cited = await cora.interview_cited("Is there a tasting at Pell Café?")
    assert len(cited) == 1 and cited[0] in [m.text for m in cora.stream.memories]  # the memory numbered 1
    assert [m.last_retrieved_at for m in cora.stream.memories] == before


async def test_asleep_residents_cost_nothing() -> None:
    sim, llm = simulation({"Reaction": continue_reaction})
    await run(sim, 2)  # the day plan's memory is scored on the step after
    sim.town.load_state_dict({**sim.town.state_dict(), "steps": 6 * 16})  # 23:00
    n = len(llm.calls)
    await sim.astep()
    assert len(llm.calls) == n
    assert all(r.activity in ("sleeping", "at home") or r.is_moving for r in sim.residents)


def test_hour_plan_schema_holds_answers_to_the_residents_places_and_the_hours_grain() -> None:
    sim, _ = simulation()
    schema = sim.resident("Ada Quill").schemas.HourPlan

    def plan(*steps: tuple[int, str]) -> dict:
        return {"actions": [{"minutes": m, "action": "tidy up", "emoji": "🧹", "place": p} for m, p in steps]}

    steps = [(15, "Ash House"), (10, "Pell Café"), (5, "Pell Café:counter")]  # her home and public places
    assert [(a.minutes, a.place) for a in schema.model_validate(plan(*steps)).actions] == steps
    for bad in (
        plan((15, "Birch House"), (15, "Pell Café")),  # someone else's home
        plan((15, "Town Hall"), (15, "Pell Café")),  # no such place in town3
        plan((20, "Ash House"), (15, "Pell Café")),  # steps are 5, 10 or 15 minutes
        plan((15, "Ash House")),  # at least two steps
        plan(*[(15, "Pell Green")] * 5),  # at most four
    ):
        with pytest.raises(ValidationError):
            schema.model_validate(bad)
    with pytest.raises(ValidationError):  # an action needs words
        schema.model_validate({"actions": [{**plan((5, "Pell Green"))["actions"][0], "action": ""}] * 2})


@pytest.mark.parametrize("name", ["Ada Quill", "Ben Quill"])
def test_schemas_offer_only_public_places_and_own_home(name) -> None:
    sim, _ = simulation()
    places = sim.resident(name).schemas.places
    assert "Ash House" in places and "Birch House" not in places and "Pell Café" in places
