"""What the viewer shows: the ``ViewSource`` protocol, and ``TownSource`` for a world-only ``Town``.

The server knows nothing about towns, minds or databases; it asks a source for frames. A frame is
the world's own JSON (``Town.snapshot()`` / ``Town.delta(since)``) plus optional fields the run loop
adds (per resident ``speech`` and ``talking_to``; per frame ``conversations``, ``stats``, ``social``).
A delta carries only residents and objects that changed (merged by ``id``); any other top-level key
it carries replaces the client's copy, and a key it lacks keeps the client's copy.

``TownSource`` records every step it is told about (``record()``), so ``snapshot_at`` answers for any
step since it was created. It stores one frame per step whose resident and object dicts are shared
with the previous step unless they changed (dicts are never mutated once recorded), so a step costs a
list of pointers, not a copy of the town.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from simulacra.world import Town, format_minutes

SOCIAL_MAX_NODES = 200  # a circle layout of more residents is unreadable; bigger towns send no graph
SPEED_RANGE = (0.05, 100.0)
CONTROL_COMMANDS = ("pause", "resume", "speed")


class NoMindError(RuntimeError):
    """Raised by an interview when the town has no minds to answer (a world-only run)."""


@runtime_checkable
class ViewSource(Protocol):
    """Where the viewer gets its frames. Methods are called on the event loop and must not block long."""

    step: int  # latest step

    def snapshot(self) -> dict: ...

    def delta(self, since_step: int) -> dict: ...

    def snapshot_at(self, step: int) -> dict: ...

    def resident_details(self, name: str) -> dict: ...

    async def interview(self, name: str, question: str) -> str: ...

    def control(self, command: str, value: float | None = None) -> dict: ...


Interview = Callable[[str, str], Awaitable[str]]
Details = Callable[[str], dict]
Extras = Callable[[Town], dict]


class TownSource:
    """A ``ViewSource`` over a live ``Town``: records each step, derives social graph and details.

    ``interview(name, question)`` is an async callable from whatever mind is attached; without one an
    interview raises ``NoMindError``. ``details(name)`` replaces the built-in details (persona from the
    scenario profile, routine as the plan, scenario memories, relationships from ``town.social``).
    ``extras(town)`` may return frame fields to merge into each recorded step: ``conversations``,
    ``stats`` and ``speech`` (``{name: {"speech": text, "talking_to": name}}``, merged per resident).
    """

    def __init__(
        self,
        town: Town,
        *,
        interview: Interview | None = None,
        details: Details | None = None,
        extras: Extras | None = None,
    ) -> None:
        self.town = town
        self._interview = interview
        self._details = details
        self._extras = extras
        self.paused = False
        self.speed = 1.0
        self._resumed = asyncio.Event()
        self._resumed.set()
        first = town.snapshot()
        self._map = first["map"]
        self._residents: dict[int, dict] = {r["id"]: r for r in first["residents"]}
        self._objects: dict[int, dict] = {o["id"]: o for o in first["objects"]}
        self._changed: dict[int, int] = dict.fromkeys(self._residents, first["step"])
        self._obj_changed: dict[int, int] = dict.fromkeys(self._objects, first["step"])
        self._speech: dict[str, dict] = {}
        self._social: dict | None = None
        self._social_step = first["step"]
        self._history: dict[int, dict] = {}
        self._times: list[float] = []
        self._last_changes: tuple[int, set[int], list[int]] = (-1, set(), [])
        self.first_step = first["step"]
        self.step = first["step"] - 1
        self.record()

    def record(self) -> None:
        """Record the town's current step (call after each step, before ``ViewerServer.publish``)."""
        town = self.town
        step = town.steps
        if step <= self.step:
            return
        d = town.delta(self.step)
        for r in d["residents"]:
            self._residents[r["id"]] = r
            self._changed[r["id"]] = step
        for o in d["objects"]:
            self._objects[o["id"]] = o
            self._obj_changed[o["id"]] = step
        extras = dict(self._extras(town)) if self._extras else {}
        fresh = {r["id"] for r in d["residents"]}
        spoke = self._merge_speech(extras.pop("speech", {}) or {}, step, fresh)
        self._last_changes = (step, {r["id"] for r in d["residents"]} | spoke, [o["id"] for o in d["objects"]])
        social = self.town.social.view_json(SOCIAL_MAX_NODES)
        if social != self._social:
            self._social, self._social_step = social, step
        self._times.append(time.perf_counter())
        stats = {"steps_per_s": self._steps_per_s(), **extras.pop("stats", {})}
        frame = {
            "step": step,
            "time": d["time"],
            "time_of_day": d["time_of_day"],
            "residents": list(self._residents.values()),
            "objects": list(self._objects.values()),
            "density": d["density"],
            "stats": stats,
            **extras,
        }
        if self._social is not None:
            frame["social"] = self._social
        self._history[step] = frame
        self.step = step

    def _merge_speech(self, speech: dict[str, dict], step: int, fresh: set[int]) -> set[int]:
        """Fold per-resident speech into the resident dicts (new dicts, so history stays intact).

        ``fresh``: ids whose dicts just came from the world (without speech), so they need it again.
        """
        changed = set()
        for name in set(speech) | set(self._speech):
            new, old = speech.get(name), self._speech.get(name)
            i = self.town.resident(name).unique_id
            if new == old and not (new and i in fresh):
                continue
            base = {k: v for k, v in self._residents[i].items() if k not in ("speech", "talking_to")}
            self._residents[i] = {**base, **(new or {})}
            self._changed[i] = step
            changed.add(i)
        self._speech = dict(speech)
        return changed

    def _steps_per_s(self) -> float | None:
        window = self._times[-11:]
        if len(window) < 2 or window[-1] <= window[0]:
            return None
        return round((len(window) - 1) / (window[-1] - window[0]), 2)

    def snapshot(self) -> dict:
        """The latest recorded step, with the map."""
        return self.snapshot_at(self.step)

    def snapshot_at(self, step: int) -> dict:
        """Any recorded step, with the map; ``KeyError`` for a step this source never saw."""
        try:
            frame = self._history[step]
        except KeyError:
            raise KeyError(f"step {step} is not recorded; steps {self.first_step}..{self.step} are") from None
        return {**frame, "map": self._map, "first_step": self.first_step}

    def delta(self, since_step: int) -> dict:
        """What changed after ``since_step`` up to the latest recorded step."""
        frame = self._history[self.step]
        if since_step == self.step - 1 and self._last_changes[0] == self.step:  # the usual case: one step
            _, res_ids, obj_ids = self._last_changes
            residents = [self._residents[i] for i in sorted(res_ids)]
            objects = [self._objects[i] for i in obj_ids]
        else:
            residents = [r for i, r in self._residents.items() if self._changed[i] > since_step]
            objects = [o for i, o in self._objects.items() if self._obj_changed[i] > since_step]
        out = {
            "step": self.step,
            "since": since_step,
            "time": frame["time"],
            "time_of_day": frame["time_of_day"],
            "residents": residents,
            "objects": objects,
            "density": frame["density"],
        }
        for key in ("stats", "conversations"):
            if key in frame:
                out[key] = frame[key]
        if self._social is not None and self._social_step > since_step:
            out["social"] = self._social
        return out

    def resident_details(self, name: str) -> dict:
        """Persona, plan, memories and relationships of one resident (``KeyError`` if unknown)."""
        if self._details is not None:
            return self._details(name)
        r = self.town.resident(name)
        profile = r.profile
        rels = [
            {"name": other, "strength": round(float(d.get("strength", 0.0)), 3), "note": d.get("note", "")}
            for other, d in self.town.social.acquaintances(name)
        ]
        memories = [
            {"text": text, "kind": "seed", "created": self.first_step, "importance": None, "score": None}
            for text in profile.get("memories", [])
        ]
        return {
            "name": r.name,
            "persona": {k: profile.get(k) for k in ("age", "occupation", "traits", "lifestyle")},
            "activity": r.activity,
            "emoji": r.emoji,
            "place": r.place,
            "plan": _routine_plan(r.spec),
            "memories": memories,
            "relationships": rels,
        }

    async def interview(self, name: str, question: str) -> str:
        """Ask a resident; needs an ``interview`` callable from an attached mind."""
        self.town.resident(name)  # KeyError for an unknown name, before blaming the missing mind
        if self._interview is None:
            raise NoMindError(
                "no mind is attached to this town, so residents cannot answer; run the simulation with an "
                "LLM (or pass interview= to TownSource) to interview residents"
            )
        return await self._interview(name, question)

    def control(self, command: str, value: float | None = None) -> dict:
        """Pause, resume or set the speed (a multiplier of the run's step rate) of ``run_town``."""
        if command == "pause":
            self.paused = True
            self._resumed.clear()
        elif command == "resume":
            self.paused = False
            self._resumed.set()
        elif command == "speed":
            lo, hi = SPEED_RANGE
            if value is None or not lo <= value <= hi:
                raise ValueError(f"speed needs a value between {lo} and {hi}, got {value}")
            self.speed = float(value)
        else:
            raise ValueError(f"unknown control command {command!r}; use one of {', '.join(CONTROL_COMMANDS)}")
        return self.control_state()

    def control_state(self) -> dict:
        return {"paused": self.paused, "speed": self.speed}

    async def wait_turn(self, step_delay: float) -> None:
        """Wait out a paused run, then the step delay (if any) at the current speed."""
        await self._resumed.wait()
        if step_delay > 0:
            await asyncio.sleep(step_delay / self.speed)


def _routine_plan(spec: Any) -> list[str]:
    """A world-only resident's plan is its routine: the times the scripted day follows."""
    rt = spec.routine
    plan = [f"{format_minutes(rt.wake)} wake up" + (f" at {spec.home}" if spec.home else "")]
    if rt.work and spec.workplace:
        plan.append(f"{format_minutes(rt.work[0])}–{format_minutes(rt.work[1])} work at {spec.workplace}")
    if rt.leisure:
        plan.append(f"evening: maybe go out to {' or '.join(rt.leisure)}")
    plan.append(f"{format_minutes(rt.sleep)} go to sleep")
    return plan


async def run_town(source: TownSource, steps: int, *, server: Any = None, step_delay: float = 0.0) -> int:
    """Step ``source.town`` up to ``steps`` times, recording and publishing each step; returns steps run.

    Honours pause/resume/speed from viewers (``source.control``). The run never waits for a viewer:
    the server sends while residents await their minds; a step that never awaits (a world-only town)
    is followed by one yield to the event loop, so the server still gets its turn.
    """
    loop = asyncio.get_running_loop()
    done = 0
    for _ in range(steps):
        if not source.town.running:
            break
        await source.wait_turn(step_delay)
        turn: list[None] = []
        loop.call_soon(turn.append, None)  # runs only if the step lets the loop turn
        await source.town.astep()
        source.record()
        if server is not None:
            server.publish(source.step)
        if not turn:
            await asyncio.sleep(0)
        done += 1
    return done
