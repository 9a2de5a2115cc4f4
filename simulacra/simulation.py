"""A scenario brought to life: the town (world), the residents' minds (agents) and the LLM, stepped together.

``Simulation`` is what the research API and the command line drive. It owns nothing clever: it
builds a ``Town`` of ``Citizen`` residents from a scenario, gives them a ``Society`` (LLM port,
embedder, memory, facts, conversations), and steps them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from simulacra.agents import Citizen, MindConfig, Society, TownEvent, TrackedFact, attach_minds
from simulacra.agents.society import TextEmbedder
from simulacra.backend import Backend, make_llm
from simulacra.inference.port import LLM
from simulacra.scenario import Scenario
from simulacra.world import Town


def town_text(scenario: Scenario) -> str:
    """The town as every resident's prompt begins: name and description."""
    d = scenario.definition
    return f"This is {d.name}. {d.description}".strip()


def tracked_facts(scenario: Scenario) -> list[TrackedFact]:
    return [TrackedFact(i.id, i.holder, i.fact, tuple(i.keywords)) for i in scenario.definition.information]


def mind_config(scenario: Scenario, seed: int, **overrides: Any) -> MindConfig:
    m = scenario.definition.model
    return MindConfig(temperature=m.temperature, top_p=m.top_p, seed=seed, **overrides)


class Simulation:
    """One run of a scenario: ``await sim.astep()``, ``sim.town``, ``sim.society``, ``await sim.interview(...)``."""

    def __init__(
        self,
        scenario: Scenario,
        llm: LLM | None = None,
        embedder: TextEmbedder | None = None,
        *,
        seed: int | None = None,
        config: MindConfig | None = None,
        **town_overrides: Any,
    ) -> None:
        if llm is None:  # the local engine with the scenario's model
            llm = make_llm(Backend("engine", scenario.definition.model.path or ""))
        if embedder is None:
            from simulacra.inference.embedding import load_embedder

            embedder = load_embedder()
        self.scenario = scenario
        self.seed = scenario.definition.simulation.seed if seed is None else int(seed)
        self.llm = llm
        self.town: Town = scenario.build_town(seed=self.seed, resident_class=Citizen, **town_overrides)
        names = [r.name for r in self.town.residents]
        self.society = Society(
            llm,
            embedder,
            residents=names,
            town_text=town_text(scenario),
            facts=tracked_facts(scenario),
            events=[
                TownEvent(e.id, e.title, e.host, e.place, e.start, e.end, e.information)
                for e in scenario.definition.events
            ],
            config=config or mind_config(scenario, self.seed),
        )
        seeds: dict[str, list[str]] = {}
        for info in scenario.definition.information:
            seeds.setdefault(info.holder, []).append(info.memory or info.fact)
        attach_minds(self.town, self.society, town_text=town_text(scenario), seed_memories=seeds)
        measured = set(scenario.definition.measurement.attendance)
        self._events = [e for e in scenario.definition.events if e.id in measured]
        self.attendance: dict[str, set[str]] = {e.id: set() for e in self._events}

    @property
    def residents(self) -> list[Citizen]:
        return list(self.town.residents)  # type: ignore[arg-type]

    def resident(self, name: str) -> Citizen:
        return self.town.resident(name)  # type: ignore[return-value]

    async def astep(self) -> None:
        await self.town.astep()
        self.society.end_step()
        self._note_attendance()

    def _note_attendance(self) -> None:
        """Who is at a measured event's place during its hours (ground truth for coordination)."""
        now = self.town.now
        for ev in self._events:
            if ev.start <= now < ev.end:
                area = ev.place.split(":")[0]
                self.attendance[ev.id] |= {r.name for r in self.residents if r.area == area}

    async def arun(self, steps: int) -> None:
        for _ in range(steps):
            if not self.town.running:
                break
            await self.astep()

    async def interview(self, name: str, question: str) -> str:
        return await self.resident(name).interview(question)

    def state_dict(self) -> dict:
        """Everything but the memory rows (``run.db`` holds those) needed to continue this run exactly."""
        return {
            "town": self.town.state_dict(),
            "minds": {r.name: r.mind_state() for r in self.residents},
            "society": self.society.state_dict(),
            "attendance": {k: sorted(v) for k, v in self.attendance.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.town.load_state_dict(state["town"])
        for r in self.residents:
            r.load_mind_state(state["minds"][r.name])
        self.society.load_state_dict(state["society"])
        self.attendance = {k: set(v) for k, v in state["attendance"].items()}

    def frame(self, stats: dict[str, float] | None = None) -> dict:
        """The viewer's picture of this step: the world's snapshot (without the map), speech, conversations,
        the social graph and run statistics."""
        frame = self.town.snapshot()
        del frame["map"]
        step = self.town.steps
        live = {c.id: c for c in self.society.conversations.history if not c.ended or c.ended_step == step}
        for r in frame["residents"]:
            conv = self.society.conversations.of(r["name"]) or next(
                (c for c in live.values() if r["name"] in (c.a, c.b)), None
            )
            if conv is not None:
                r["talking_to"] = conv.other(r["name"])
                said = [t for who, t, k in conv.turns if who == r["name"] and k == step]
                if said:
                    r["speech"] = said[-1]
        frame["conversations"] = [c.to_json() for c in live.values()]
        social = self.town.social.view_json()
        if social is not None:
            frame["social"] = social
        frame["stats"] = dict(stats or {})
        return frame

    def run(self, steps: int | None = None, *, hours: float | None = None) -> None:
        """Synchronous convenience for scripts and notebooks without a running event loop: ``steps`` or ``hours``."""
        if (steps is None) == (hours is None):
            raise ValueError("give either steps or hours, e.g. sim.run(hours=1)")
        if hours is not None:
            steps = self.town.clock.steps_in(hours)
        asyncio.run(self.arun(steps))

    def step_metrics(self) -> dict[str, float]:
        """Cheap per-step ground truth (facts known, density, conversations, LLM totals, attendance so far),
        stored in run.db's ``metric`` table."""
        soc, town = self.society, self.town
        out: dict[str, float] = {f"known.{fid}": n for fid, n in soc.facts.counts().items()}
        out["density"] = town.social.density()
        out["conversations"] = float(len(soc.conversations.history))
        stats = soc.call_stats().values()
        out["llm.calls"] = float(sum(s["calls"] for s in stats))
        out["llm.prompt_tokens"] = float(sum(s["prompt_tokens"] for s in stats))
        out["llm.cached_tokens"] = float(sum(s["cached_tokens"] for s in stats))
        out["llm.completion_tokens"] = float(sum(s["completion_tokens"] for s in stats))
        for ev, names in self.attendance.items():
            out[f"present.{ev}"] = float(len(names))
        return out

    def coordination(self) -> dict[str, dict[str, list[str]]]:
        """For each measured event: who knew of it before it began (``invited``; the host is not), who of them was
        there (``attended``), and who came uninvited. ``simulacra.metrics.coordination`` adds, from a run's
        ``run.db``, why the invited who stayed away did."""
        d = self.scenario.definition
        out = {}
        for ev in d.events:
            if ev.id not in d.measurement.attendance:
                continue
            known = self.society.facts.known.get(ev.information or "", {})
            start_step = self.town.clock.step_of(ev.start)
            invited = sorted(n for n, p in known.items() if p.step < start_step and n != ev.host)
            present = set(self.attendance.get(ev.id, set()))
            out[ev.id] = {
                "invited": invited,
                "attended": sorted(set(invited) & present),
                "present_uninvited": sorted(present - set(invited)),
            }
        return out

    def metrics(self) -> dict[str, Any]:
        """The ground-truth measures now (facts known, density, LLM cost) plus who was invited to and attended each
        measured event."""
        return {**self.step_metrics(), "coordination": self.coordination()}
