"""Conversation lines: the four faults, and how the mind picks among sampled candidates."""

import re

from simulacra.agents import MindConfig, lines
from simulacra.inference.backends.fake import ScriptedLLM
from simulacra.scenario import load_scenario
from simulacra.simulation import Simulation

from .fakes import WordEmbedder, by_kind

TOWN3 = load_scenario("scenarios/town3.yaml")
NAMES = ["Kenji Hoshino", "Elin Lindqvist"]


def test_an_echo_copies_the_conversation_nearly_or_by_a_run_of_words() -> None:
    partner = "The coffee machine needs descaling before the weekend."
    assert lines.faults("The coffee machine needs descaling before the weekend!", [partner], set()) == {"echo"}
    assert lines.is_echo("Yes, the coffee machine needs descaling before the weekend, sadly.", [partner])
    assert not lines.is_echo("Then I will descale it on Friday morning.", [partner])
    assert not lines.is_echo("Anything", [])


def test_a_duplicate_is_a_line_said_before_word_for_word() -> None:
    said = {lines.normalise("How has your day been?")}
    assert lines.faults("how has your DAY been", [], said) == {"duplicate"}
    assert lines.faults("How has your week been?", [], said) == set()


def test_loops_and_leaks() -> None:
    assert lines.is_loop("The island of the island of the island of")
    assert not lines.is_loop("I went to the market and then to the river.")
    assert lines.leaks("Kenji Hoshino: Elin Lindqvist: Hi Kenji!", NAMES)
    assert lines.leaks("I want to study botany. One or two short sentences.", NAMES)
    assert not lines.leaks("Note the time: it is late.", NAMES)  # not a resident's name
    assert not lines.leaks("I want to study botany in the city next year.", NAMES)
    assert lines.strip_prefixes("Elin Lindqvist: Kenji: Hi Kenji!", NAMES) == "Hi Kenji!"
    assert lines.strip_greeting("Hi Moss! I work at the library.") == "I work at the library."
    assert lines.strip_greeting("Hi, Hilde! I am standing for council.") == "I am standing for council."
    assert lines.strip_greeting("Hi Moss!") == "Hi Moss!"  # nothing but the greeting: kept


def who(prompt: str) -> str:
    return re.search(r"You are ([A-Z][a-z]+ [A-Z][a-z]+)", prompt).group(1)


FRESH = (
    "the roses on Pell Green are in bloom",
    "a new baker starts on Monday",
    "the river rose a foot overnight",
    "my nephew passed his exams",
    "the council repaints the benches",
)


def candidates_script(seen: list):
    """Cora talks to Ada; each line is asked with 4 candidates: an echo, a loop, a leak, then a good one."""

    def reaction(prompt, schema):
        if who(prompt) == "Cora Lind" and "Ada Quill" in prompt.split("You notice:")[1]:
            return {"decision": "talk", "reason": "hello"}
        return {"decision": "continue", "reason": "busy"}

    def utter(prompt, schema):
        seen.append(prompt)
        k = len(seen)
        conv = prompt.split("Conversation so far:")[1]
        last = re.findall(r"^[A-Z][a-z]+ [A-Z][a-z]+: (.*)$", conv, re.M)
        i = (k - 1) % 4
        if i == 0:
            return {"says": last[-1] if last else "the the the the the the", "end": False}
        if i == 1:
            return {"says": "the island of the island of the island of", "end": False}
        if i == 2:
            return {"says": "Ada Quill: Cora Lind: hello. One or two short sentences.", "end": False}
        want = re.search(r"You want to tell [^:]+: (.*)", prompt)  # the topic the mind chose
        return {"says": f"Fresh news: {want.group(1) if want else FRESH[k // 4 % len(FRESH)]}", "end": k >= 16}

    def hour(prompt, schema):  # everyone at the café, so they meet
        return {"actions": [{"minutes": 15, "action": "work", "emoji": "💼", "place": "Pell Café"}] * 4}

    return {"Reaction": reaction, "HourPlan": hour, "Utterance": utter}


async def test_the_mind_says_the_fault_free_candidate_and_tells_its_news_once() -> None:
    seen: list[str] = []
    llm = ScriptedLLM(by_kind(candidates_script(seen)))
    sim = Simulation(TOWN3, llm, WordEmbedder(), seed=5, config=MindConfig(seed=5, line_candidates=4))
    for _ in range(14):
        await sim.astep()
        sim.society.take_events()
    conv = sim.society.conversations.history[0]
    said = [t for _, t, _ in conv.turns]
    assert said and all(t.startswith("Fresh news") for t in said)
    calls = [c for c in llm.calls if c.schema.__name__ == "Utterance"]
    assert all(c.params.n == 4 for c in calls)
    later = [c for c in calls if "(you speak first)" not in c.text]
    assert later and all(c.params.no_repeat_ngram_size == 4 and c.params.no_repeat_texts for c in later)
    assert said[0] in later[0].params.no_repeat_texts  # the conversation so far may not be repeated
    cora, ada = sim.resident("Cora Lind"), sim.resident("Ada Quill")
    # what Cora told Ada is remembered by Ada as heard news, and Cora does not tell it to Ada again
    heard = [m.text for m in ada.stream.memories if m.kind == "heard"]
    assert conv.news and all(
        f"Cora told me: {lines.strip_greeting(line)}" in heard for s, line in conv.news if s == "Cora Lind"
    )
    told = cora.told["Ada Quill"]
    assert told and len(told) == len(set(told))  # each memory told once
    asked = seen[::4]  # the script runs once per candidate
    topics = [re.search(r"You want to tell Ada Quill: (.*)", p) for p in asked if who(p) == "Cora Lind"]
    assert len({t.group(1) for t in topics if t}) == len([t for t in topics if t])  # never the same topic twice


async def test_a_line_said_in_an_earlier_step_counts_as_a_duplicate_from_the_next_step() -> None:
    sim = Simulation(TOWN3, ScriptedLLM(by_kind()), WordEmbedder(), seed=5, config=MindConfig(seed=5))
    soc = sim.society
    soc.spoke(lines.normalise("Hello there, Ada!"))
    assert "hello there ada" not in soc.said  # not before the step ends
    soc.end_step()
    assert "hello there ada" in soc.said
    state = soc.state_dict()
    soc.said = set()
    soc.load_state_dict(state)
    assert "hello there ada" in soc.said  # kept for a resumed run


def test_a_day_plan_is_told_as_speech_and_other_memories_as_written() -> None:
    from simulacra.agents.mind import speakable

    assert speakable("My plan for Thursday 10 April: bake bread; visit the library.") == (
        "Today I plan to bake bread, then visit the library."
    )
    assert speakable("The roses on Pell Green need pruning.") == "The roses on Pell Green need pruning."
