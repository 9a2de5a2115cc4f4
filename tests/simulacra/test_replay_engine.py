"""Replay is exact on the real engine: a run on the packaged model, replayed from its calls, gives its events.

The fake-LLM replay tests cannot catch what depends on call timing (the real engine's calls return
after real forward passes, a replay's at once), nor on embeddings the real MiniLM computes; these can.
"""

from pathlib import Path

import pytest

from simulacra.run import Run, replay
from simulacra.scenario import dump_scenario, generate_scenario
from simulacra.storage import RunStore

pytestmark = pytest.mark.slow

TOWN3 = Path(__file__).resolve().parents[2] / "scenarios" / "town3.yaml"


def scenario_file(name: str, tmp_path: Path) -> Path:
    if name == "town3":
        return TOWN3
    path = tmp_path / "generated.yaml"  # a town no other test has seen
    dump_scenario(generate_scenario(5, seed=11), path)
    return path


@pytest.mark.parametrize(("town", "hours"), [("town3", 1.0), ("generated", 0.5)])
async def test_replay_of_a_real_engine_run_gives_identical_events(tmp_path, town, hours) -> None:
    run = Run.create(scenario_file(town, tmp_path), out=tmp_path, seed=3, hours=hours)
    try:
        await run.arun()
    finally:
        await run.aclose()
    events = RunStore(run.dir).events()
    assert any(e["kind"] in ("day_plan", "hour_plan") for e in events)
    report = await replay(run.dir, tmp_path / "replayed")
    assert report.first_difference is None, report.first_difference
    assert report.identical and report.events == len(events)
