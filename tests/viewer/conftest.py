"""Helpers for the viewer tests: towns, a client-side delta applier, and JSON receive helpers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from simulacra.scenario import load_scenario, packaged_scenarios
from simulacra.world import Town

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WORLD_KEYS = ("step", "time", "time_of_day", "residents", "objects", "density")


def town25(**overrides) -> Town:
    return load_scenario(packaged_scenarios()["town25"]).build_town(seed=1, **overrides)


def town3(**overrides) -> Town:
    return load_scenario(packaged_scenarios()["town3"]).build_town(seed=1, **overrides)


def world_part(frame: dict) -> dict:
    """The fields the world itself produces (what ``Town.snapshot()`` has), residents in id order."""
    out = {k: frame[k] for k in WORLD_KEYS}
    out["residents"] = sorted(out["residents"], key=lambda r: r["id"])
    out["objects"] = sorted(out["objects"], key=lambda o: o["id"])
    return out


def apply_delta(state: dict, delta: dict) -> dict:
    """What the page does: residents and objects merged by id, other keys replaced."""
    out = dict(state)
    for key in ("residents", "objects"):
        by_id = {x["id"]: x for x in state[key]}
        by_id.update({x["id"]: x for x in delta.get(key, [])})
        out[key] = list(by_id.values())
    for key, value in delta.items():
        if key not in ("residents", "objects", "since"):
            out[key] = value
    return out


async def recv_json(ws, timeout: float = 5.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_type(ws, kind: str, timeout: float = 5.0) -> dict:
    """The next message of type ``kind``, skipping stream messages (snapshot/delta) in between."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        msg = await recv_json(ws, max(0.01, end - loop.time()))
        if msg["type"] == kind:
            return msg
        assert msg["type"] in ("snapshot", "delta", "control"), msg


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
