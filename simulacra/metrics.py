"""The paper's measurements, two ways: ground truth every step, and interviews at the end.

Ground truth (what Park et al. could not see): who knows each tracked fact, from whom (the
``FactTracker``'s provenance); the acquaintance graph's density; who was at a seeded event's place
during its hours. Interviews (what they did): every resident is asked the scenario's questions and
cites the numbered memories its answer rests on; an answer counts as knowing a fact when a cited
memory tells of it (the fact's keywords in the memory, not in the answer: a 135M model echoes the
question's words). An answer that claims it in words (holder or keyword, not "I don't know") with
no such memory, or knowing with no ground truth behind it, is unsupported (a hallucination).

What a ``Simulation`` knows of itself it reports (``step_metrics``, ``coordination``); this module
adds what needs the run's ``run.db`` (why invited residents stayed away), the interviews and the
summary table. It imports ``simulation``, never the other way round.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from simulacra.agents import commitments
from simulacra.simulation import Simulation
from simulacra.storage import RunStore
from simulacra.world import parse_time_of_day

DONT_KNOW = re.compile(r"\b(don't know|do not know|no idea|not sure|never heard|haven't heard|have not heard)\b", re.I)


def _mentions(text: str, words: list[str]) -> bool:
    return any(re.search(r"\b" + re.escape(w) + r"\b", text, re.IGNORECASE) for w in words if w)


def claims(info: Any, question: str, answer: str, holder: bool = False, places: Sequence[str] = ()) -> bool:
    """Whether an answer claims to know the fact: it uses the fact's keywords or its holder's names, less the
    words the question itself gives (asked "Who is hosting the party?", saying "party" claims nothing) and
    those inside the town's place names ("I work at Lantern Pub" says nothing of a lantern party). The
    holder may use any keyword: it is their own fact, and they cannot name themselves."""
    if DONT_KNOW.search(answer):
        return False
    for place in places:
        answer = re.sub(re.escape(place), " ", answer, flags=re.IGNORECASE)
    words = [*info.keywords, *info.holder.split()]
    return _mentions(answer, words if holder else [w for w in words if not _mentions(question, [w])])


def judge(
    info: Any, tracker: Any, answers: dict[str, list[dict[str, Any]]], places: Sequence[str] = ()
) -> dict[str, Any]:
    """Knowing and unsupported residents for one fact, from each resident's answers (question, answer, the cited
    memories under "because"). An answer knows when it claims the fact and a memory it cites carries it; an
    answer that claims nothing is no evidence either way. Unsupported: claims with no cited memory behind them,
    or knowing answers from residents who, by the ground truth, never learned the fact (hallucinated support)."""
    knows, claimed = set(), set()
    for name, given in answers.items():
        for a in given:
            claim = claims(info, a["question"], a["answer"], holder=name == info.holder, places=places)
            a["supported"] = claim and any(info.id in tracker.mentions(m) for m in a["because"])
            claimed |= {name} if claim else set()
            knows |= {name} if a["supported"] else set()
    truth = set(tracker.known[info.id])
    unsupported = (claimed - knows) | (knows - truth)
    return {"answers": answers, "knows": sorted(knows & truth), "unsupported": sorted(unsupported)}


async def interview_facts(sim: Simulation) -> dict[str, Any]:
    """Ask every resident the scenario's questions about each tracked fact, all at once (one batch)."""
    d = sim.scenario.definition
    facts = {i.id: i for i in d.information}
    jobs = []
    for iv in d.measurement.interviews:
        for r in sim.residents:
            for q in iv.questions:
                jobs.append((iv.fact, r.name, q, r.interview_cited(q)))
    said = await asyncio.gather(*(j[3] for j in jobs))
    answers: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for (fid, name, q, _), (a, cited) in zip(jobs, said, strict=True):
        answers.setdefault(fid, {}).setdefault(name, []).append({"question": q, "answer": a, "because": cited})
    places = [p.name for p in d.map.places]
    return {fid: judge(facts[fid], sim.society.facts, given, places) for fid, given in answers.items()}


async def interview_relationships(sim: Simulation) -> dict[str, Any]:
    """The paper's relationship question for every ordered pair; density of the "yes" graph."""
    q = sim.scenario.definition.measurement.relationship_question
    pairs = [(a, b) for a in sim.residents for b in sim.residents if a is not b]
    said = await asyncio.gather(*(a.interview_yes_no(q.format(name=b.name)) for a, b in pairs))
    yes = [(a.name, b.name) for (a, b), y in zip(pairs, said, strict=True) if y]
    n = len(sim.residents)
    return {"edges": yes, "density": len(yes) / (n * (n - 1)) if n > 1 else 0.0}


def coordination(sim: Simulation, store: RunStore | None = None) -> dict[str, Any]:
    """For each measured event: who knew of it before it began (invited; the host is not), and who of them was there
    (``Simulation.coordination``).

    With the run's ``store`` each invited resident who stayed away also gets the ground truth of
    why (the paper only had interviews): ``planned`` (their day schedule or an hour plan put them at
    the event's place during its hours, so something else won: a conflict) and ``where`` (what they
    were mostly doing during the event's hours, from the stored frames)."""
    out: dict[str, Any] = sim.coordination()
    if store is None:
        return out
    events = {e.id: e for e in sim.scenario.definition.events}
    for eid, c in out.items():
        ev = events[eid]
        if sim.town.steps >= sim.town.clock.step_of(ev.start):
            present = sim.attendance.get(eid, set())
            where, planned = whereabouts(store, sim, ev), planned_to_attend(store, sim, ev)
            choices = {e["resident"]: e for e in store.events() if e["kind"] == "event_choice" and e["event"] == eid}
            absent = [n for n in c["invited"] if n not in present]
            c["absent"] = {
                n: {
                    "planned": n in planned,
                    "where": where.get(n, ""),
                    # the plan's own answer: chose another thing and why, or None (never offered: heard too late)
                    "choice": {k: choices[n][k] for k in ("go", "why", "plan")} if n in choices else None,
                }
                for n in absent
            }
    return out


def _area(place: str) -> str:
    return place.split(":")[0]


def whereabouts(store: RunStore, sim: Simulation, ev: Any) -> dict[str, str]:
    """Each resident's most frequent "activity (place)" over the event's hours, from run.db's frames."""
    clock = sim.town.clock
    last = min(clock.step_of(ev.end), sim.town.steps + 1)
    seen: dict[str, Counter[str]] = {}
    for step in range(clock.step_of(ev.start), last):
        for r in store.frame_at(step)["residents"]:
            seen.setdefault(r["name"], Counter())[f"{r['activity']} ({r['place']})"] += 1
    return {name: c.most_common(1)[0][0] for name, c in seen.items()}


def meetings(store: RunStore, sim: Simulation) -> dict[str, int]:
    """Meetings agreed in conversation (``commitment`` events, one per partner): how many were made, how
    many are over by now, and in how many of those the resident was at the place for part of the hour."""
    clock = sim.town.clock
    made = [e for e in store.events() if e["kind"] == "commitment"]
    due = [e for e in made if clock.step_of(datetime.fromisoformat(e["start"])) < sim.town.steps]
    kept = 0
    for e in due:
        start = clock.step_of(datetime.fromisoformat(e["start"]))
        end = min(start + max(1, round(commitments.MEETING_MINUTES / clock.minutes_per_step)), sim.town.steps + 1)
        kept += any(
            r["name"] == e["resident"] and _area(r["place"]) == _area(e["place"])
            for step in range(start, end)
            for r in store.frame_at(step)["residents"]
        )
    return {"made": len(made), "due": len(due), "kept": kept}


def planned_to_attend(store: RunStore, sim: Simulation, ev: Any) -> set[str]:
    """Residents whose last day schedule made on the event's day, or an hour plan, had them at the
    event's place for part of its hours (the plans are the logged ``day_plan`` / ``hour_plan`` events)."""
    clock, area = sim.town.clock, _area(ev.place)
    lo = ev.start.hour * 60 + ev.start.minute
    hi = lo + int((ev.end - ev.start).total_seconds() // 60)
    schedule: dict[str, list[dict]] = {}
    hour_plans: dict[str, list[dict]] = {}
    for e in store.events():
        if clock.at(e["step"]).date() != ev.start.date() or e["step"] >= clock.step_of(ev.end):
            continue
        if e["kind"] == "day_plan":
            schedule[e["resident"]] = e["schedule"]
        elif e["kind"] == "hour_plan":
            hour_plans.setdefault(e["resident"], []).extend(e["actions"])

    def there(slot: dict) -> bool:
        start, end = (parse_time_of_day(slot[k]) for k in ("start", "end"))
        end = end if end > start else end + 24 * 60  # a slot running past midnight
        return _area(slot["place"]) == area and start < hi and end > lo

    return {n for n in {*schedule, *hour_plans} if any(map(there, schedule.get(n, []) + hour_plans.get(n, [])))}


CONFLICT_WORDS = (
    "busy", "work", "shift", "had to", "couldn't", "could not", "conflict", "instead", "too tired", "sick",
)  # fmt: skip


async def interview_coordination(sim: Simulation, coord: dict[str, Any]) -> dict[str, Any]:
    """The paper's follow-up: every invited resident who stayed away is asked why. An answer naming
    a conflict (a crude keyword list, ``CONFLICT_WORDS``) is counted as one; it is set beside the
    ground truth of ``coordination`` (did their plans have them there)."""
    events = {e.id: e for e in sim.scenario.definition.events}
    out: dict[str, Any] = {}
    for eid, c in coord.items():
        ev = events[eid]
        q = f"Did you go to {ev.title} at {ev.place}? If not, why not?"
        names = sorted(c.get("absent", {}))
        answers = await asyncio.gather(*(sim.interview(n, q) for n in names))
        out[eid] = {
            "question": q,
            "answers": {
                n: {"answer": a, "names_conflict": _mentions(a, list(CONFLICT_WORDS))}
                for n, a in zip(names, answers, strict=True)
            },
        }
    return out


async def interview_all(sim: Simulation, store: RunStore | None = None) -> dict[str, Any]:
    """The paper's end-of-run interviews: facts, relationships and (with the run's store) the reasons
    of invited residents who did not attend. What ``simulacra run --interview`` and ``simulacra
    measure`` store in ``interviews.json``."""
    out: dict[str, Any] = {"facts": await interview_facts(sim), "relationships": await interview_relationships(sim)}
    if store is not None:
        out["coordination"] = await interview_coordination(sim, coordination(sim, store))
    return out


def summary(
    sim: Simulation,
    first: dict[str, float],
    wall_s: float,
    interviews: dict | None = None,
    store: RunStore | None = None,
) -> dict[str, Any]:
    """The paper's table for this run: start → end of each measure, plus cost."""
    n = len(sim.residents)
    hours = sim.town.clock.hours_of(sim.town.steps)
    last = sim.step_metrics()
    out: dict[str, Any] = {"residents": n, "sim_hours": hours, "wall_s": round(wall_s, 1)}
    for fid in sim.society.facts.counts():
        out[f"knows {fid} (ground truth)"] = f"{int(first[f'known.{fid}'])} → {int(last[f'known.{fid}'])} of {n}"
    out["network density"] = f"{first['density']:.3f} → {last['density']:.3f}"
    for ev, c in coordination(sim, store).items():
        out[f"{ev}: invited → attended"] = f"{len(c['invited'])} → {len(c['attended'])}"
        if "absent" in c:
            conflict = sum(a["planned"] for a in c["absent"].values())
            out[f"{ev}: absent invitees (planned to go / did not plan)"] = f"{conflict} / {len(c['absent']) - conflict}"
    if store is not None:
        m = meetings(store, sim)
        out["meetings agreed in conversation: made / due → kept"] = f"{m['made']} / {m['due']} → {m['kept']}"
    if interviews:
        for fid, f in interviews.get("facts", {}).items():
            out[f"knows {fid} (interview)"] = f"{len(f['knows'])} of {n} ({len(f['unsupported'])} unsupported)"
        if "relationships" in interviews:
            out["density (interview)"] = f"{interviews['relationships']['density']:.3f}"
        for ev, c in interviews.get("coordination", {}).items():
            named = sum(a["names_conflict"] for a in c["answers"].values())
            out[f"{ev}: absent invitees naming a conflict (interview)"] = f"{named} of {len(c['answers'])}"
    calls, tokens = last["llm.calls"], last["llm.prompt_tokens"] + last["llm.completion_tokens"]
    if hours > 0:
        out["LLM calls per resident-hour"] = round(calls / (n * hours), 1)
        out["tokens per resident-hour"] = round(tokens / (n * hours))
        out["wall seconds per sim hour"] = round(wall_s / hours, 1)
    return out
