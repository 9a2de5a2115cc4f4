"""The paper's measurements, two ways: ground truth every step, and interviews at the end.

Ground truth (what Park et al. could not see): who knows each tracked fact, from whom (the
``FactTracker``'s provenance); the acquaintance graph's density; who was at a seeded event's place
during its hours. Interviews (what they did): every resident is asked the scenario's questions;
an answer counts as knowing a fact when it names the fact's holder or one of its keywords; a
"knowing" answer with no ground truth behind it is counted as unsupported (a hallucination).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from simulacra.simulation import Simulation


def step_metrics(sim: Simulation) -> dict[str, float]:
    """Cheap per-step figures, stored in run.db's ``metric`` table."""
    soc, town = sim.society, sim.town
    out: dict[str, float] = {f"known.{fid}": n for fid, n in soc.facts.counts().items()}
    out["density"] = town.social.density()
    out["conversations"] = float(len(soc.conversations.history))
    stats = soc.call_stats().values()
    out["llm.calls"] = float(sum(s["calls"] for s in stats))
    out["llm.prompt_tokens"] = float(sum(s["prompt_tokens"] for s in stats))
    out["llm.cached_tokens"] = float(sum(s["cached_tokens"] for s in stats))
    out["llm.completion_tokens"] = float(sum(s["completion_tokens"] for s in stats))
    for ev, names in sim.attendance.items():
        out[f"present.{ev}"] = float(len(names))
    return out


def _mentions(text: str, words: list[str]) -> bool:
    return any(re.search(r"\b" + re.escape(w) + r"\b", text, re.IGNORECASE) for w in words if w)


async def interview_facts(sim: Simulation) -> dict[str, Any]:
    """Ask every resident the scenario's questions about each tracked fact, all at once (one batch)."""
    d = sim.scenario.definition
    facts = {i.id: i for i in d.information}
    jobs = []
    for iv in d.measurement.interviews:
        for r in sim.residents:
            for q in iv.questions:
                jobs.append((iv.fact, r.name, q, r.interview(q)))
    answers = await asyncio.gather(*(j[3] for j in jobs))
    out: dict[str, Any] = {}
    for (fid, name, q, _), a in zip(jobs, answers, strict=True):
        info = facts[fid]
        words = [*info.keywords, *info.holder.split()]
        f = out.setdefault(fid, {"answers": {}, "knows": set()})
        f["answers"].setdefault(name, []).append({"question": q, "answer": a})
        if _mentions(a, words):
            f["knows"].add(name)
    for fid, f in out.items():
        truth = set(sim.society.facts.known[fid])
        f["unsupported"] = sorted(f["knows"] - truth)
        f["knows"] = sorted(f["knows"])
    return out


async def interview_relationships(sim: Simulation) -> dict[str, Any]:
    """The paper's relationship question for every ordered pair; density of the "yes" graph."""
    q = sim.scenario.definition.measurement.relationship_question
    pairs = [(a, b) for a in sim.residents for b in sim.residents if a is not b]
    said = await asyncio.gather(*(a.interview_yes_no(q.format(name=b.name)) for a, b in pairs))
    yes = [(a.name, b.name) for (a, b), y in zip(pairs, said, strict=True) if y]
    n = len(sim.residents)
    return {"edges": yes, "density": len(yes) / (n * (n - 1)) if n > 1 else 0.0}


def coordination(sim: Simulation) -> dict[str, Any]:
    """For each measured event: who knew of it before it began (invited), and who of them was there."""
    d = sim.scenario.definition
    out = {}
    for ev in d.events:
        if ev.id not in d.measurement.attendance:
            continue
        known = sim.society.facts.known.get(ev.information or "", {})
        start_step = sim.town.clock.step_of(ev.start)
        invited = sorted(n for n, p in known.items() if p.step < start_step)
        present = sorted(sim.attendance.get(ev.id, set()))
        out[ev.id] = {
            "invited": invited,
            "attended": sorted(set(invited) & set(present)),
            "present_uninvited": sorted(set(present) - set(invited)),
        }
    return out


def summary(sim: Simulation, first: dict[str, float], wall_s: float, interviews: dict | None = None) -> dict[str, Any]:
    """The paper's table for this run: start → end of each measure, plus cost."""
    n = len(sim.residents)
    hours = sim.town.steps * sim.town.clock.minutes_per_step / 60
    last = step_metrics(sim)
    out: dict[str, Any] = {"residents": n, "sim_hours": hours, "wall_s": round(wall_s, 1)}
    for fid in sim.society.facts.counts():
        out[f"knows {fid} (ground truth)"] = f"{int(first[f'known.{fid}'])} → {int(last[f'known.{fid}'])} of {n}"
    out["network density"] = f"{first['density']:.3f} → {last['density']:.3f}"
    for ev, c in coordination(sim).items():
        out[f"{ev}: invited → attended"] = f"{len(c['invited'])} → {len(c['attended'])}"
    if interviews:
        for fid, f in interviews.get("facts", {}).items():
            out[f"knows {fid} (interview)"] = f"{len(f['knows'])} of {n} ({len(f['unsupported'])} unsupported)"
        if "relationships" in interviews:
            out["density (interview)"] = f"{interviews['relationships']['density']:.3f}"
    calls, tokens = last["llm.calls"], last["llm.prompt_tokens"] + last["llm.completion_tokens"]
    if hours > 0:
        out["LLM calls per resident-hour"] = round(calls / (n * hours), 1)
        out["tokens per resident-hour"] = round(tokens / (n * hours))
        out["wall seconds per sim hour"] = round(wall_s / hours, 1)
    return out
