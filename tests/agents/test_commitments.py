"""A meeting agreed in conversation is remembered by both partners, offered in their next plan like an
event they heard of, and kept in the schedule when chosen; it survives a save and load of the mind."""

from datetime import datetime

from simulacra.agents import MindConfig
from simulacra.agents.commitments import meeting_time, named_place, proposed
from simulacra.inference.backends.fake import ScriptedLLM
from simulacra.metrics import meetings
from simulacra.run import Run
from simulacra.simulation import Simulation

from .fakes import WordEmbedder, by_kind, saying, talk, who
from .test_events import TOWN3

THURSDAY_10 = datetime(2025, 4, 10, 10, 0)  # a Thursday


def test_a_clock_time_still_to_come_is_read_on_the_day_it_names() -> None:
    at = lambda line: meeting_time(line, THURSDAY_10)  # noqa: E731
    assert at("See you at 7 pm!") == datetime(2025, 4, 10, 19, 0)
    assert at("Come by at 7.") == datetime(2025, 4, 10, 19, 0)  # no one meets at 7 at night... or in the morning
    assert at("Meet me at 11:30 am") == datetime(2025, 4, 10, 11, 30)
    assert at("We met at 9:30 today.") is None  # already past
    assert at("Tomorrow at 9:30, then.") == datetime(2025, 4, 11, 9, 30)
    assert at("On Friday at six.") == datetime(2025, 4, 11, 18, 0)
    assert at("Monday at 8 pm?") == datetime(2025, 4, 14, 20, 0)  # the next Monday
    assert at("I have three cats.") is None and at("at 25:00") is None


def test_a_place_is_named_in_full_and_the_longest_wins() -> None:
    places = ["Pell Café", "Pell Café Garden", "Pell Green"]
    assert named_place("Let us sit in the pell café garden", places) == "Pell Café Garden"
    assert named_place("The café is nice", places) is None
    assert proposed("Meet me at Pell Green at 4 pm", places, THURSDAY_10) == ("Pell Green", datetime(2025, 4, 10, 16))
    assert proposed("Pell Green is lovely", places, THURSDAY_10) is None  # no time: no meeting


def script(going: set[str], offered: dict):
    def hour(prompt, schema):
        name = who(prompt)
        step = {"minutes": 15, "action": "reading", "emoji": "📖", "place": "Ash House"}
        out = {"actions": [step] * 4}
        if "event" in schema.model_fields:
            labels = [a for a in schema.model_fields["event"].annotation.__args__ if a.startswith("meeting")]
            if labels:
                offered.setdefault(name, []).append(labels[0])
                out |= {"event": labels[0] if name in going else "none", "why": "I said I would"}
        return out

    says = saying("Ada Quill", "Shall we meet at Pell Green at 3 pm?", "Yes, gladly.")
    return by_kind({"Reaction": talk, "Utterance": says, "HourPlan": hour})


async def run(going: set[str], steps: int) -> tuple[Simulation, dict, list[dict]]:
    offered: dict = {}
    sim = Simulation(TOWN3, ScriptedLLM(script(going, offered)), WordEmbedder(), seed=3, config=MindConfig(seed=3))
    events = []
    for _ in range(steps):
        await sim.astep()
        events += sim.society.take_events()
    return sim, offered, events


async def test_a_meeting_agreed_in_conversation_is_offered_and_kept() -> None:
    """Ada proposes to her brother Ben to meet on Pell Green at 3 pm; Ben chooses to go, Ada does not."""
    sim, offered, events = await run({"Ben Quill"}, 8 * 6 + 2)  # 07:00 to 15:20
    made = [e for e in events if e["kind"] == "commitment"]
    assert {(e["resident"], e["other"], e["by"]) for e in made} == {
        ("Ada Quill", "Ben Quill", "Ada Quill"),
        ("Ben Quill", "Ada Quill", "Ada Quill"),
    }  # both partners took it on, once
    ben = sim.resident("Ben Quill")
    (mine,) = ben.commitments
    assert (mine.place, mine.start, mine.host) == ("Pell Green", datetime(2025, 4, 10, 15, 0), "Ada Quill")
    assert any("agreed to meet Ada Quill at Pell Green at 15:00" in m.text for m in ben.stream.memories)
    assert offered["Ben Quill"][0] == "meeting Ada Quill at Pell Green, 15:00-16:00"  # a plan option
    assert offered["Ada Quill"][0] == "meeting Ben Quill at Pell Green, 15:00-16:00"
    assert any(s.place == "Pell Green" and s.start <= 15 * 60 < s.end for s in ben.schedule)
    choices = [(e["resident"], e["go"]) for e in events if e["kind"] == "event_choice" and e["event"] == mine.id]
    assert sorted(choices) == [("Ada Quill", False), ("Ben Quill", True)]  # one meeting, two minds, decided once
    assert "Cora Lind" not in offered  # not in the conversation: no meeting

    state = ben.mind_state()
    ben.commitments = []
    ben.load_mind_state(state)
    assert ben.commitments == [mine]


async def test_the_measure_counts_meetings_made_due_and_kept(tmp_path) -> None:
    run = Run.create(
        "scenarios/town3.yaml", out=tmp_path, seed=3, hours=9.5, llm=ScriptedLLM(script({"Ben Quill"}, {})),
        embedder=WordEmbedder(), config=MindConfig(seed=3),
    )  # fmt: skip
    try:
        await run.arun(steps=8 * 6 + 3)  # to 15:30: the meeting has begun
        assert meetings(run.store, run.sim) == {"made": 2, "due": 2, "kept": 1}  # Ben came, Ada did not
    finally:
        await run.aclose()
