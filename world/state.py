"""The town as plain JSON: what a viewer draws (``snapshot``, ``delta``) and what a run saves
(``state_dict``, ``load_state_dict``).

Split from ``model.py`` because these are formats, not behaviour: the viewer (``viewer/``) reads the
snapshot and delta keys, and run directories hold saved states, so a state saved by an earlier
version must still load. Changing a key here is a decision to make on purpose, in one place.
``Town`` exposes each function as a method (``town.snapshot()``, ``town.state_dict()``, ...).

``state_dict`` (``"format": 1``) holds everything a step can change: the step count, both RNG
states, the day's outing draws, every resident's tile, destination, held tile, speed, rest of path,
activity and sleep, object states and events, the social graph and the density history. Perception
is recomputed at every step start, so it is not saved.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .model import Town


def resident_json(town: Town, i: int) -> dict[str, Any]:
    """One resident as the viewer draws it: id, name, position, place, activity, emoji, moving, active."""
    r = town.residents[i]
    x, y = town.map.xy(int(town.tile[i]))
    return {
        "id": r.unique_id,
        "name": r.name,
        "x": x,
        "y": y,
        "place": r.place,
        "activity": town.activity[i],
        "emoji": town.emoji[i],
        "moving": bool(town.cursor[i] < town.path_len[i] - 1),
        "active": bool(town.active[i]),
    }


def snapshot(town: Town) -> dict[str, Any]:
    """Everything a viewer needs to draw the town now, as plain JSON."""
    return {
        "step": town.steps,
        "time": town.now.isoformat(),
        "time_of_day": town.clock.time_of_day(town.steps),
        "map": town.map.to_json(),
        "residents": [resident_json(town, i) for i in range(town.tile.size)],
        "objects": [{"id": o.id, "state": s} for o, s in zip(town.map.objects, town.object_state, strict=True)],
        "density": town.social.density(),
    }


def delta(town: Town, since_step: int) -> dict[str, Any]:
    """What changed after ``since_step``: residents that moved or changed activity, objects that changed."""
    changed = np.flatnonzero(town.changed_step > since_step)
    objs = np.flatnonzero(town.object_changed_step > since_step)
    return {
        "step": town.steps,
        "since": since_step,
        "time": town.now.isoformat(),
        "time_of_day": town.clock.time_of_day(town.steps),
        "residents": [resident_json(town, int(i)) for i in changed],
        "objects": [{"id": int(o), "state": town.object_state[o]} for o in objs],
        "density": town.social.density(),
    }


def state_dict(town: Town) -> dict[str, Any]:
    """The whole dynamic state as plain JSON: positions, paths, objects, social graph, clock, rng.

    A town built from the same scenario and given this state continues exactly as this one does.
    """
    mv = town.movement
    version, internal, gauss = town.random.getstate()
    return {
        "format": 1,
        "steps": town.steps,
        "running": town.running,
        "rng": town.rng.bit_generator.state,
        "random": [version, list(internal), gauss],
        "day": town._day,
        "residents": {
            "tile": mv.tile.tolist(),
            "dest": mv.dest.tolist(),
            "held": mv.held.tolist(),
            "speed": mv.speed.tolist(),
            "active": town.active.tolist(),
            "changed_step": town.changed_step.tolist(),
            "path": [mv.remaining_path(i) for i in range(mv.tile.size)],
            "activity": list(town.activity),
            "emoji": list(town.emoji),
            "asleep": town.asleep.tolist(),
            "out_code": town.out_code.tolist(),
            "out_start": town.out_start.tolist(),
            "out_end": town.out_end.tolist(),
        },
        "objects": {"state": list(town.object_state), "changed_step": town.object_changed_step.tolist()},
        "object_events": list(town.object_events),
        "social": town.social.state_dict(),
        "density_history": [list(x) for x in town.density_history],
    }


def load_state_dict(town: Town, state: dict[str, Any]) -> None:
    """Restore a state saved by ``state_dict`` (on a town built from the same scenario)."""
    res = state["residents"]
    mv = town.movement
    n = mv.tile.size
    if len(res["tile"]) != n:
        raise ValueError(f"the saved state has {len(res['tile'])} residents but this town has {n}")
    if len(state["objects"]["state"]) != len(town.map.objects):
        raise ValueError("the saved state's objects do not match this town's map")
    town.steps = int(state["steps"])
    town.running = bool(state["running"])
    town.rng.bit_generator.state = state["rng"]
    version, internal, gauss = state["random"]
    town.random.setstate((version, tuple(internal), gauss))
    town._day = int(state["day"])
    mv.tile[:] = res["tile"]
    mv.dest[:] = res["dest"]
    mv.held[:] = res["held"]
    mv.speed[:] = res["speed"]
    town.active[:] = res["active"]
    town.changed_step[:] = res["changed_step"]
    town.activity = list(res["activity"])
    town.emoji = list(res["emoji"])
    town.asleep[:] = res["asleep"]
    town.out_code[:] = res["out_code"]
    town.out_start[:] = res["out_start"]
    town.out_end[:] = res["out_end"]
    mv.restore(res["path"])
    town.object_state = list(state["objects"]["state"])
    town.object_changed_step[:] = state["objects"]["changed_step"]
    town.object_events = deque(state["object_events"], maxlen=town.object_events.maxlen)
    town.social.load_state_dict(state["social"])
    town.density_history = [(int(s), float(d)) for s, d in state["density_history"]]
    town._perceive()
