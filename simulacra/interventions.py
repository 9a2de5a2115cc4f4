"""Interventions at a fork: tell a resident something, add, move or cancel an event, add or remove a
resident, change a relationship, change the model or the minds' settings for the rest of the run.

An intervention is one mapping naming its kind, from a YAML file (``interventions: [...]``) or a
command-line option; ``parse_interventions`` checks its shape (pydantic, like a scenario), ``check``
checks it against the town at the fork step and returns the scenario after the edits, ``apply`` makes
it happen to a ``Simulation``. Every problem is a ``ScenarioError`` issue naming the file (or option),
line and field and what to change, as the scenario's own errors do.

Edits of the town itself (events, residents, new tracked facts) are edits of the scenario: the edited
scenario is validated by ``parse_scenario`` (its errors are moved onto the intervention that caused
them), and the simulation is rebuilt from it with every resident's state carried over, so a resumed
fork builds the same town from its ``scenario.yaml``. The rest (memories, provenance, the social graph,
the mind settings) is applied to the live simulation and saved in the fork step's state.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, ValidationError

from simulacra.agents import RetrievalWeights
from simulacra.agents.facts import Provenance
from simulacra.scenario import Scenario, ScenarioError, parse_scenario, path_str, read_yaml, read_yaml_text
from simulacra.scenario.checks import _did_you_mean, _known
from simulacra.scenario.errors import Issue, line_for, pydantic_issue
from simulacra.scenario.schema import EventDef, ResidentDef, Slug, Strict, Text
from simulacra.simulation import Simulation


def _one_or_more(v: Any) -> Any:
    return [v] if isinstance(v, str) else v


class TellSpec(Strict):
    """Residents ``to`` remember ``memory`` (told ``by`` someone); with ``fact``, they know that tracked fact."""

    to: Annotated[list[Text], BeforeValidator(_one_or_more), Field(min_length=1)]
    memory: Text
    by: Text | None = None
    fact: Slug | None = None  # an existing fact id, or a new one to track (then ``keywords`` are needed)
    keywords: list[Text] = []


class AddEventSpec(EventDef):
    """A new event (the scenario's event fields); ``measure``: count its attendance; the host is told."""

    measure: bool = True


class MoveEventSpec(Strict):
    """Move an event in place or time (or to another host); ``announce``: the host and who knows of it are told."""

    id: Slug
    place: Text | None = None
    start: datetime | None = None
    end: datetime | None = None
    host: Text | None = None
    announce: bool = True


class CancelEventSpec(Strict):
    id: Slug
    announce: bool = True


class RemoveResidentSpec(Strict):
    name: Text


class RelationshipSpec(Strict):
    """How ``resident`` sees ``other`` from now on (``mutual``: both ways)."""

    resident: Text
    other: Text
    strength: float | None = Field(None, ge=0, le=1)
    note: str = ""
    mutual: bool = False


class RetrievalSpec(Strict):
    recency: float | None = Field(None, ge=0)
    importance: float | None = Field(None, ge=0)
    relevance: float | None = Field(None, ge=0)
    decay: float | None = Field(None, gt=0, le=1)


class SetSpec(Strict):
    """The model (an engine run's GGUF file or HF folder), sampling and mind settings for the rest of the run."""

    model: Text | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, le=50)  # memories retrieved per question
    reflection_threshold: int | None = Field(None, ge=1)
    max_turns: int | None = Field(None, ge=1, le=64)
    notice_cooldown_steps: int | None = Field(None, ge=0)
    importance_prior_weight: float | None = Field(None, ge=0, le=1)
    retrieval: RetrievalSpec | None = None


SPECS: dict[str, type[BaseModel]] = {
    "tell": TellSpec,
    "add_event": AddEventSpec,
    "move_event": MoveEventSpec,
    "cancel_event": CancelEventSpec,
    "add_resident": ResidentDef,
    "remove_resident": RemoveResidentSpec,
    "relationship": RelationshipSpec,
    "set": SetSpec,
}
_SHORT = {"cancel_event": "id", "remove_resident": "name"}  # `cancel_event: party` for `cancel_event: {id: party}`


@dataclass
class Intervention:
    """One validated intervention and where it was written (file or option, line map, field path)."""

    kind: str
    spec: Any
    source: str = "interventions"
    loc: tuple = ()
    lines: dict[tuple, int] = field(default_factory=dict, repr=False)

    def issue(self, message: str, *fields: str) -> Issue:
        loc = (*self.loc, *fields)
        return Issue(line_for(self.lines, loc), path_str(loc), message)

    def error(self, message: str, *fields: str) -> ScenarioError:
        return ScenarioError(self.source, [self.issue(message, *fields)])

    def to_json(self) -> dict:
        return {self.kind: self.spec.model_dump(mode="json", exclude_defaults=True)}


class InterventionError(ScenarioError):
    """Problems in interventions from one or more sources (a file, command-line options), one per line."""

    def __init__(self, errors: list[ScenarioError]) -> None:
        self.errors = errors
        self.source = errors[0].source
        self.issues = [i for e in errors for i in e.issues]
        ValueError.__init__(self, "\n".join(str(e) for e in errors))


def _raise_all(errors: list[ScenarioError]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise InterventionError(errors)


# ---- reading ----------------------------------------------------------------------------------------------


def parse_one(item: Any, source: str, lines: dict[tuple, int] | None = None, loc: tuple = ()) -> Intervention:
    """One ``{kind: {...}}`` mapping as an ``Intervention``; ``ScenarioError`` naming source, line and field."""
    lines = lines or {}
    if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in SPECS:
        got = f"the key(s) {', '.join(map(str, item))}" if isinstance(item, dict) else f"{type(item).__name__}"
        raise ScenarioError(
            source,
            [
                Issue(
                    line_for(lines, loc),
                    path_str(loc),
                    f"an intervention is one mapping naming its kind, got {got}; write e.g. "
                    f"'tell: {{to: Ada Quill, memory: ...}}' (kinds: {', '.join(SPECS)})",
                )
            ],
        )
    kind, body = next(iter(item.items()))
    if isinstance(body, str) and kind in _SHORT:
        body = {_SHORT[kind]: body}
    model = SPECS[kind]
    try:
        spec = model.model_validate(body)
    except ValidationError as exc:
        raise ScenarioError(source, [_issue(e, model, (*loc, kind), lines) for e in exc.errors()]) from None
    return Intervention(kind, spec, source, (*loc, kind), lines)


def _issue(err: dict, model: type[BaseModel], loc: tuple, lines: dict[tuple, int]) -> Issue:
    full = (*loc, *err["loc"])
    if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
        key = str(err["loc"][0])
        allowed = list(model.model_fields)
        hint = _did_you_mean(key, allowed)
        return Issue(line_for(lines, full), path_str(loc), f"unknown key '{key}' ({hint}allowed: {', '.join(allowed)})")
    return pydantic_issue({**err, "loc": full}, lines)


def parse_interventions(
    data: Any, source: str = "interventions", lines: dict[tuple, int] | None = None
) -> list[Intervention]:
    """A list of interventions (or ``{interventions: [...]}``, or one), every problem reported at once."""
    loc: tuple = ()
    if isinstance(data, dict) and set(data) == {"interventions"}:
        data, loc = data["interventions"], ("interventions",)
    if isinstance(data, dict):
        return [parse_one(data, source, lines, loc)]
    if not isinstance(data, list):
        raise ScenarioError(source, [Issue(1, path_str(loc), "expected a list of interventions ('- tell: {...}')")])
    out, errors = [], []
    for i, item in enumerate(data):
        try:
            out.append(parse_one(item, source, lines, (*loc, i)))
        except ScenarioError as exc:
            errors.append(exc)
    if errors:
        raise ScenarioError(source, [i for e in errors for i in e.issues])
    return out


def load_interventions(path: str | Path) -> list[Intervention]:
    """Interventions from a YAML file (``interventions:`` and a list, or just the list)."""
    data, lines = read_yaml(path)
    return parse_interventions(data, str(path), lines)


def parse_option(text: str, option: str, n: int) -> list[Intervention]:
    """The interventions in one command-line value of ``option`` (inline YAML: ``"cancel_event: party"``)."""
    source = f"{option} #{n}"
    data, lines = read_yaml_text(text, source)
    return parse_interventions(data, source, lines)


# ---- checking against the town, and the scenario after the edits ------------------------------------------


def check(interventions: list[Intervention], scenario: Scenario, step: int) -> Scenario:
    """Check every intervention against the town at ``step`` (names, places, times); the scenario after the
    edits (``scenario`` itself when none edits it). Raises one error listing every problem."""
    data = scenario.definition.model_dump(mode="json")
    now = scenario.clock.at(step)
    edited, errors = False, []
    for iv in interventions:
        kept = copy.deepcopy(data)
        try:
            entry = _EDITS[iv.kind](data, iv, now)
            if entry is not None:
                scenario_now = _parse_edited(data, iv, entry)
                edited = True
            _after_check(iv, data, now)
        except ScenarioError as exc:
            errors.append(exc)
            data = kept  # the next interventions are checked against the town without this one
    _raise_all(errors)
    return scenario_now if edited else scenario


def scenario_at(origin: Scenario, forks: list[dict]) -> Scenario:
    """The town a run's step is in: its first scenario with the edits of each earlier fork applied."""
    scenario = origin
    for f in sorted(forks, key=lambda f: f["step"]):
        scenario = check(parse_interventions(f["interventions"], f"the fork of {f['parent']}"), scenario, f["step"])
    return scenario


def _parse_edited(data: dict, iv: Intervention, entry: tuple) -> Scenario:
    try:
        return parse_scenario(copy.deepcopy(data), source="<scenario after interventions>")
    except ScenarioError as exc:
        raise ScenarioError(iv.source, [_relocate(i, iv, entry) for i in exc.issues]) from None


def _relocate(issue: Issue, iv: Intervention, entry: tuple) -> Issue:
    """A problem the edited scenario has, on the intervention that made it."""
    prefix = path_str(entry) if entry else ""
    if prefix and (issue.path == prefix or issue.path.startswith((prefix + ".", prefix + "["))):
        rest = issue.path[len(prefix) :].lstrip(".")
        fields = tuple(p for p in rest.replace("[", ".").replace("]", "").split(".") if p)
        loc = (*iv.loc, *(int(p) if p.isdigit() else p for p in fields))
        return Issue(line_for(iv.lines, loc), path_str(loc), issue.message)
    return iv.issue(f"this leaves the town's {issue.path} wrong: {issue.message}")


def _residents(data: dict) -> list[str]:
    return [r["name"] for r in data["residents"]]


def _need_resident(iv: Intervention, name: str, data: dict, *fields: str) -> None:
    names = _residents(data)
    if name not in names:
        raise iv.error(
            f"unknown resident '{name}' ({_did_you_mean(name, names)}residents: {_known(names)}); "
            "use a resident's full name as the scenario writes it",
            *fields,
        )


def _event_index(iv: Intervention, data: dict, event_id: str) -> int:
    ids = [e["id"] for e in data["events"]]
    if event_id not in ids:
        raise iv.error(f"unknown event '{event_id}' ({_did_you_mean(event_id, ids)}events: {_known(ids)})", "id")
    return ids.index(event_id)


def _edit_tell(data: dict, iv: Intervention, now: datetime) -> tuple | None:
    s: TellSpec = iv.spec
    for k, name in enumerate(s.to):
        _need_resident(iv, name, data, "to", *((str(k),) if len(s.to) > 1 else ()))
    if s.by is not None:
        _need_resident(iv, s.by, data, "by")
    facts = [f["id"] for f in data["information"]]
    if s.fact is None or s.fact in facts:
        return None
    if not s.keywords:
        raise iv.error(
            f"'{s.fact}' is a new fact (facts: {_known(facts)}); give the keywords that mark it in what residents "
            "say, e.g. keywords: [pub, quiz], so its diffusion can be tracked",
            "fact",
        )
    data["information"].append({"id": s.fact, "holder": s.by or s.to[0], "fact": s.memory, "keywords": s.keywords})
    return ("information", len(data["information"]) - 1)


def _edit_add_event(data: dict, iv: Intervention, now: datetime) -> tuple:
    s: AddEventSpec = iv.spec
    if s.id in [e["id"] for e in data["events"]]:
        raise iv.error(f"there is already an event '{s.id}'; choose another id, or use move_event", "id")
    data["events"].append(s.model_dump(mode="json", exclude={"measure"}))
    if s.measure:
        data["measurement"]["attendance"].append(s.id)
    return ("events", len(data["events"]) - 1)


def _edit_move_event(data: dict, iv: Intervention, now: datetime) -> tuple:
    s: MoveEventSpec = iv.spec
    k = _event_index(iv, data, s.id)
    changes = s.model_dump(mode="json", include={"place", "start", "end", "host"}, exclude_none=True)
    if not changes:
        raise iv.error("nothing to move: give a new place, start, end or host")
    data["events"][k].update(changes)
    return ("events", k)


def _edit_cancel_event(data: dict, iv: Intervention, now: datetime) -> tuple:
    k = _event_index(iv, data, iv.spec.id)
    del data["events"][k]
    m = data["measurement"]
    m["attendance"] = [e for e in m["attendance"] if e != iv.spec.id]
    return ()


def _edit_add_resident(data: dict, iv: Intervention, now: datetime) -> tuple:
    s: ResidentDef = iv.spec
    if s.name in _residents(data):
        raise iv.error(f"'{s.name}' already lives here; choose another name", "name")
    data["residents"].append(s.model_dump(mode="json"))
    return ("residents", len(data["residents"]) - 1)


def _edit_remove_resident(data: dict, iv: Intervention, now: datetime) -> tuple:
    name = iv.spec.name
    _need_resident(iv, name, data, "name")
    for e in data["events"]:
        if e["host"] == name:
            raise iv.error(
                f"{name} hosts the event '{e['id']}'; cancel it (cancel_event: {e['id']}) or give it another host "
                f"(move_event: {{id: {e['id']}, host: ...}}) before this intervention",
                "name",
            )
    if len(data["residents"]) == 1:
        raise iv.error(f"{name} is the only resident; a town needs at least one", "name")
    for f in data["information"]:
        if f["holder"] == name:
            others = [r for r in _residents(data) if r != name]
            f["holder"] = others[0]  # a holder only seeds the fact at step 0; who knows it now is in the state
    data["residents"] = [r for r in data["residents"] if r["name"] != name]
    for r in data["residents"]:
        r["relationships"] = [rel for rel in r["relationships"] if rel["name"] != name]
    return ()


def _edit_relationship(data: dict, iv: Intervention, now: datetime) -> None:
    s: RelationshipSpec = iv.spec
    _need_resident(iv, s.resident, data, "resident")
    _need_resident(iv, s.other, data, "other")
    if s.resident == s.other:
        raise iv.error("a resident cannot have a relationship with themself; name two residents", "other")


def _edit_set(data: dict, iv: Intervention, now: datetime) -> None:
    model = iv.spec.model
    if model is not None and not Path(model).exists():
        raise iv.error(f"no model at '{model}'; give a GGUF file or a Hugging Face model folder", "model")


_EDITS: dict[str, Callable[[dict, Intervention, datetime], tuple | None]] = {
    "tell": _edit_tell,
    "add_event": _edit_add_event,
    "move_event": _edit_move_event,
    "cancel_event": _edit_cancel_event,
    "add_resident": _edit_add_resident,
    "remove_resident": _edit_remove_resident,
    "relationship": _edit_relationship,
    "set": _edit_set,
}


def _after_check(iv: Intervention, data: dict, now: datetime) -> None:
    """An added or moved event must not be over before the fork."""
    if iv.kind not in ("add_event", "move_event"):
        return
    event = next(e for e in data["events"] if e["id"] == iv.spec.id)
    end = datetime.fromisoformat(event["end"])
    if end <= now:
        raise iv.error(
            f"the event would end at {end:%a %Y-%m-%d %H:%M}, before the fork at {now:%a %Y-%m-%d %H:%M}; "
            "give it a later start and end",
            "end" if iv.spec.end is not None or iv.kind == "add_event" else "id",
        )


# ---- applying ---------------------------------------------------------------------------------------------


def apply(sim: Simulation, interventions: list[Intervention]) -> tuple[Simulation, list[dict]]:
    """Apply interventions to a simulation at its current step: the simulation to continue (a new one when
    the town changed) and one ``intervention`` event per intervention, for the step's log."""
    before = {e.id: e for e in sim.scenario.definition.events}
    scenario = check(interventions, sim.scenario, sim.town.steps)
    if scenario is not sim.scenario:
        sim = rebuild(sim, scenario)
    after = {e.id: e for e in scenario.definition.events}
    events = []
    for iv in interventions:
        _APPLY[iv.kind](sim, iv.spec, before, after)
        who = getattr(iv.spec, "name", None) or getattr(iv.spec, "resident", None)
        events.append({"step": sim.town.steps, "kind": "intervention", "resident": who, **iv.to_json()})
    return sim, events


def new_model(interventions: list[Intervention]) -> str | None:
    """The model the last ``set`` intervention names, if any."""
    models = [iv.spec.model for iv in interventions if iv.kind == "set" and iv.spec.model]
    return models[-1] if models else None


def _tell(sim: Simulation, s: TellSpec, before: dict, after: dict) -> None:
    step, now = sim.town.steps, sim.town.now
    known = sim.society.facts.known
    if s.fact is not None and s.by is not None:
        known[s.fact].setdefault(s.by, Provenance(s.fact, s.by, None, step, now.isoformat()))
    for name in s.to:
        sim.resident(name).remember("observation", s.memory)
        if s.fact is not None:
            known[s.fact].setdefault(name, Provenance(s.fact, name, s.by, step, now.isoformat(), s.memory))


def _announce(sim: Simulation, event: EventDef, text: str) -> None:
    """The host and everyone who knows of the event (its announcing fact) remember ``text``."""
    knowing = set(sim.society.facts.known.get(event.information or "", {}))
    present = {r.name for r in sim.residents}
    for name in [event.host, *sorted(knowing - {event.host})]:
        if name in present:
            sim.resident(name).remember("observation", text)


def _when(e: EventDef) -> str:
    return f"{e.start:%A} {e.start:%H:%M}-{e.end:%H:%M}"


def _add_event(sim: Simulation, s: AddEventSpec, before: dict, after: dict) -> None:
    sim.resident(s.host).remember("observation", f"I am hosting {s.title} at {s.place}, {_when(after[s.id])}.")


def _move_event(sim: Simulation, s: MoveEventSpec, before: dict, after: dict) -> None:
    e = after[s.id]
    if s.announce:
        _announce(sim, e, f"Change of plans: {e.title} is now at {e.place}, {_when(e)}, hosted by {e.host}.")


def _cancel_event(sim: Simulation, s: CancelEventSpec, before: dict, after: dict) -> None:
    e = before[s.id]
    if s.announce:
        _announce(sim, e, f"{e.title} at {e.place} ({_when(e)}) is cancelled.")


def _relationship(sim: Simulation, s: RelationshipSpec, before: dict, after: dict) -> None:
    social = sim.town.social
    old = social.relation(s.resident, s.other) or {}
    strength = s.strength if s.strength is not None else old.get("strength", 0.5)
    social.add_relation(s.resident, s.other, strength=strength, note=s.note, step=sim.town.steps, mutual=s.mutual)


def _set(sim: Simulation, s: SetSpec, before: dict, after: dict) -> None:
    soc = sim.society
    fields = s.model_dump(exclude_none=True, exclude={"model", "retrieval"})
    config = replace(soc.config, **fields)
    if s.retrieval is not None:
        weights = {**vars(config.retrieval), **s.retrieval.model_dump(exclude_none=True)}
        config = replace(config, retrieval=RetrievalWeights(**weights))
    soc.config = config
    soc.conversations.max_turns = config.max_turns


def _nothing(sim: Simulation, s: Any, before: dict, after: dict) -> None:
    """Done by the rebuild from the edited scenario."""


_APPLY: dict[str, Callable[[Simulation, Any, dict, dict], None]] = {
    "tell": _tell,
    "add_event": _add_event,
    "move_event": _move_event,
    "cancel_event": _cancel_event,
    "add_resident": _nothing,
    "remove_resident": _nothing,
    "relationship": _relationship,
    "set": _set,
}


# ---- rebuilding a simulation for an edited scenario -------------------------------------------------------


def rebuild(sim: Simulation, scenario: Scenario) -> Simulation:
    """A simulation of the edited scenario in ``sim``'s state: every remaining resident's position, plans,
    memories and acquaintances carried over, new residents as the scenario starts them (their first
    memories dated now), removed ones gone (their conversations ended)."""
    step, now = sim.town.steps, sim.town.now
    fresh = Simulation(scenario, sim.llm, sim.society.embedder, seed=sim.seed, config=sim.society.config)
    names, old_names = [r.name for r in fresh.residents], [r.name for r in sim.residents]
    fresh.load_state_dict(_merged_state(sim.state_dict(), fresh.state_dict(), old_names, names))
    for name in names:
        if name in old_names:
            fresh.society.memories.streams[name] = sim.society.memories[name]
            continue
        stream = fresh.society.memories[name]
        for m in stream.memories:
            m.created_step, m.created_at, m.last_retrieved_at = step, now, now
            stream._dirty.add(m.seq)
    return fresh


def _merged_state(old: dict, new: dict, old_names: list[str], names: list[str]) -> dict:
    """``old``'s state for the residents in both towns, ``new``'s (a fresh town's) for the added ones."""
    step = int(old["town"]["steps"])
    where = {n: i for i, n in enumerate(old_names)}
    town = dict(old["town"])
    residents = {}
    for key, values in old["town"]["residents"].items():
        fresh = new["town"]["residents"][key]
        residents[key] = [values[where[n]] if n in where else fresh[j] for j, n in enumerate(names)]
    residents["changed_step"] = [residents["changed_step"][j] if n in where else step for j, n in enumerate(names)]
    town["residents"] = residents
    town["social"] = _merged_graph(old["town"]["social"], new["town"]["social"], set(where), names)
    society = dict(old["society"])
    society["facts"] = _merged_facts(old["society"]["facts"], new["society"]["facts"], set(names))
    society["conversations"] = _merged_conversations(old["society"]["conversations"], names, step)
    society["memories"] = {n: old["society"]["memories"].get(n) or new["society"]["memories"][n] for n in names}
    return {
        "town": town,
        "minds": {n: old["minds"][n] if n in where else new["minds"][n] for n in names},
        "society": society,
        "attendance": {k: old["attendance"].get(k, []) for k in new["attendance"]},
    }


def _merged_graph(old: dict, new: dict, kept: set[str], names: list[str]) -> dict:
    present = set(names)
    edges = [e for e in old["edges"] if e[0] in present and e[1] in present]
    edges += [e for e in new["edges"] if (e[0] not in kept or e[1] not in kept)]
    return {"nodes": [n for n in old["nodes"] if n in present] + [n for n in names if n not in kept], "edges": edges}


def _merged_facts(old: dict, new: dict, present: set[str]) -> dict:
    known = {fid: [p for p in old["known"].get(fid, []) if p["learner"] in present] for fid in new["known"]}
    return {"known": known, "unsourced": old["unsourced"]}


def _merged_conversations(old: dict, names: list[str], step: int) -> dict:
    present = set(names)
    history = []
    for c in old["history"]:
        c = dict(c)
        if c["ended_step"] is None and not {c["a"], c["b"]} <= present:
            c["ended_step"], c["end_reason"] = step, "left town"
        history.append(c)
    intents = [[names.index(a), a, b, p] for _, a, b, p in old["intents"] if a in present and b in present]
    return {"history": history, "intents": intents}


__all__ = [
    "SPECS",
    "Intervention",
    "InterventionError",
    "apply",
    "check",
    "load_interventions",
    "new_model",
    "parse_interventions",
    "parse_one",
    "parse_option",
    "rebuild",
    "scenario_at",
]
