"""The town's kinds of prompts, built from the packaged scenarios, for `simulacra moefy`.

A routed MoE made from a dense model is only as good as the hidden states its routers are fitted
on, so they should be the ones the town produces: day plans, schedules, hour plans, reactions,
conversation lines, interviews, importance scores and reflection questions, each written by
`agents.prompts` for a real resident of a real scenario (persona, places, seed memories, the
scenario's interview questions), with the schema the town constrains its answer to. Nothing is run
here: the caller sends the prompts through the engine (`inference.moefy`).

Residents are split, not prompts: every `holdout`-th resident of each scenario is held out, so the
quality check (`bench/moefy_quality.py`) scores prompts whose personas the routers never saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from simulacra.agents import Citizen, prompts
from simulacra.agents.schemas import Answer, Importance, Questions, Reaction, Utterance, YesNo
from simulacra.agents.society import MAX_TOKENS
from simulacra.inference.backends.fake import ScriptedLLM
from simulacra.scenario import load_scenario, resolve_scenario_path
from simulacra.world import format_minutes

KINDS = ("day_plan", "schedule", "hour_plan", "reaction", "utterance", "interview", "importance", "questions")


@dataclass(frozen=True)
class TownPrompt:
    kind: str
    scenario: str
    resident: str
    messages: list[dict[str, str]]
    schema: Any  # a pydantic model class: the engine constrains the reply to it, as in a run
    heldout: bool

    @property
    def max_tokens(self) -> int:
        """The town's budget for this kind of call (`agents.society.MAX_TOKENS`)."""
        return MAX_TOKENS["yes_no" if self.schema is YesNo else self.kind]


class _NoEmbedder:
    """The prompts are built from the scenario directly; nothing is retrieved, so nothing is embedded."""

    dim = 8

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.zeros((len(texts), self.dim), dtype=np.float32)


def _resident_prompts(c: Citizen, scenario_name: str, question: str, heldout: bool) -> list[TownPrompt]:
    spec, sch, sys = c.spec, c.schemas, c.system_text
    memories = [m.text for m in c.stream.memories] or ["I had a quiet morning."]
    others = [b for b in c.town.social.graph[spec.name]] or [r.name for r in c.town.residents if r.name != c.name]
    other = others[0] if others else "a neighbour"
    rel = c.town.social.relation(c.name, other) if other in c.town.social.graph else None
    note = rel["note"] if rel else ""
    date, wake = c._date(), format_minutes(spec.routine.wake)
    sleep = format_minutes(spec.routine.sleep)
    plan = c._example_plan()
    blocks = c._example_blocks(wake)
    place = spec.workplace or c.home_place
    leisure = spec.routine.leisure[0] if spec.routine.leisure else c.home_place
    first = other.split()[0]
    made: list[tuple[str, list[dict[str, str]], Any]] = [
        ("day_plan", prompts.day_plan(sys, date, memories, plan, wake), sch.DayPlan),
        ("schedule", prompts.schedule(sys, date, plan, wake, sleep, blocks), sch.Schedule),
        ("hour_plan", prompts.hour_plan(sys, "09:00", "10:00", "work", place, "💼", memories[:3]), sch.HourPlan),
        (
            "hour_plan",
            prompts.hour_plan(sys, "17:00", "18:00", f"visit {leisure}", leisure, "🙂", memories[:3]),
            sch.HourPlan,
        ),
        (
            "reaction",
            prompts.reaction(sys, "10:20", "walking", leisure, f"{other} is nearby", memories[:3], other, ""),
            Reaction,
        ),
        (
            "utterance",
            prompts.utterance(sys, "10:30", leisure, other, note, memories[:3], [], f"Good morning, {first}!", False),
            Utterance,
        ),
        (
            "utterance",
            prompts.utterance(
                sys,
                "10:40",
                leisure,
                other,
                note,
                memories[:3],
                [(c.name, f"Good morning, {first}!"), (other, "Morning! Lovely day, isn't it?")],
                memories[0][:120],
                False,
            ),
            Utterance,
        ),
        ("importance", prompts.importance(memories[-1]), Importance),
        ("questions", prompts.questions(sys, memories[:5]), Questions),
    ]
    made.append(("interview", prompts.interview(sys, "20:00", question, memories[:3]), Answer))
    knows = prompts.interview(sys, "20:00", f"Do you know {other}?", memories[:3], yes_no=True)
    made.append(("interview", knows, YesNo))
    return [TownPrompt(k, scenario_name, c.name, m, s, heldout) for k, m, s in made]


def town_prompts(scenarios: Sequence[str] = ("town3", "town25"), holdout: int = 4) -> list[TownPrompt]:
    """Every kind of prompt for every resident of `scenarios`; every `holdout`-th resident held out
    (0: none)."""
    from simulacra.simulation import Simulation

    out: list[TownPrompt] = []
    for name in scenarios:
        scenario = load_scenario(resolve_scenario_path(name))
        sim = Simulation(scenario, llm=ScriptedLLM("{}"), embedder=_NoEmbedder())
        questions = [q for i in scenario.definition.measurement.interviews for q in i.questions]
        questions = questions or ["What did you do today?"]
        for i, c in enumerate(sim.residents):
            held = bool(holdout) and i % holdout == holdout - 1
            out += _resident_prompts(c, name, questions[i % len(questions)], held)
    return out
