"""Counterfactual forks: a fork without interventions continues exactly like its parent; each intervention
has a visible effect; a fork resumes, replays, compares and plots like any run; bad input is located and
never leaves a fork or a changed parent behind."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulacra.cli import app
from simulacra.compare import compare, first_event_difference, plot
from simulacra.inference.backends.recording import ReplayLLM
from simulacra.interventions import load_interventions, parse_option
from simulacra.run import Run, replay
from simulacra.scenario import ScenarioError, load_scenario
from simulacra.storage import RunError, RunStore, read_only

from ..agents.fakes import WordEmbedder
from .test_run import TOWN3, chatty

AT = 5  # Thu 07:50 in town3 (12 steps: two hours)


def tree_hash(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    async def make() -> Path:
        run = Run.create(
            TOWN3, out=tmp_path_factory.mktemp("parent"), seed=7, hours=2, llm=chatty(), embedder=WordEmbedder()
        )
        await run.arun()
        await run.aclose()
        return run.dir

    d = asyncio.run(make())
    return d, tree_hash(d)


async def fork(parent_dir: Path, dest: Path, interventions=(), llm=None) -> Run:
    return await Run.afork(parent_dir, AT, list(interventions), dest, llm=llm or chatty(), embedder=WordEmbedder())


def memories(run_dir: Path, resident: str) -> list[tuple[int, str]]:
    with sqlite3.connect(run_dir / "run.db") as db:
        return db.execute("select created_step, text from memory where resident = ?", (resident,)).fetchall()


async def test_a_fork_without_interventions_continues_exactly_like_its_parent(parent, tmp_path) -> None:
    src, hashes = parent
    with read_only(src) as store:  # (a RunStore on the parent itself would leave SQLite's -wal and -shm there)
        calls = store.calls(after_step=AT)  # the parent's answers from the fork on: any departure misses
        a, ma = store.events(), store.metrics()
    run = await fork(src, tmp_path / "same", llm=ReplayLLM(calls))
    assert run.sim.town.steps == AT and run.store.info().status == "paused"
    await run.arun()
    await run.aclose()
    b = RunStore(run.dir).events()
    assert [e for e in b if e["step"] > AT] == [e for e in a if e["step"] > AT] and a == b
    assert first_event_difference(a, b) is None
    mb = RunStore(run.dir).metrics()
    del ma["llm.cached_tokens"], mb["llm.cached_tokens"]
    assert ma == mb
    meta = json.loads((run.dir / "meta.json").read_text())
    assert meta["fork"] == {"parent": str(src), "step": AT, "interventions": []}
    assert tree_hash(src) == hashes  # the parent is only read


async def test_each_intervention_has_a_visible_effect(parent, tmp_path) -> None:
    src, hashes = parent
    ivs = [
        {
            "tell": {
                "to": ["Ada Quill", "Ben Quill"],
                "memory": "There is a quiz at the café on Friday.",
                "by": "Cora Lind",
                "fact": "quiz",
                "keywords": ["quiz"],
            }
        },
        {"move_event": {"id": "party", "place": "Pell Green", "start": "2025-04-10 18:00", "end": "2025-04-10 19:00"}},
        {"relationship": {"resident": "Ben Quill", "other": "Cora Lind", "strength": 0.9, "note": "my friend"}},
        {
            "add_resident": {
                "name": "Dan Moss",
                "age": 50,
                "home": "Birch House",
                "relationships": [{"name": "Cora Lind"}],
            }
        },
        {"set": {"temperature": 0.25, "max_turns": 2}},
    ]
    run = await fork(src, tmp_path / "changed", ivs)
    await run.arun(steps=3)
    await run.aclose()
    store = RunStore(run.dir)
    assert (AT, "There is a quiz at the café on Friday.") in memories(run.dir, "Ben Quill")
    known = store.metrics()["known.quiz"]
    assert known[0] == (AT, 3.0)  # Cora (who told), Ada and Ben: tracked from the fork step
    assert [e["kind"] for e in store.events() if e["step"] == AT][-5:] == ["intervention"] * 5
    scenario = load_scenario(run.dir / "scenario.yaml").definition
    party = next(e for e in scenario.events if e.id == "party")
    assert party.place == "Pell Green" and party.start.hour == 18
    assert [r.name for r in scenario.residents][-1] == "Dan Moss"
    assert (run.dir / "scenario.origin.yaml").read_bytes() == (src / "scenario.yaml").read_bytes()
    told = [text for step, text in memories(run.dir, "Cora Lind") if step == AT]
    assert any(text.startswith("Change of plans: Coffee tasting is now at Pell Green") for text in told)  # the host
    state = json.loads(store.step_row(AT).state)
    edge = next(e for e in state["town"]["social"]["edges"] if e[:2] == ["Ben Quill", "Cora Lind"])
    assert edge[2]["strength"] == 0.9 and edge[2]["note"] == "my friend"
    assert memories(run.dir, "Dan Moss") and len(state["minds"]) == 4
    later = store.calls(after_step=AT)
    assert later and {c.params["temperature"] for c in later if c.meta.get("purpose") != "importance"} == {0.25}
    settings = json.loads(store.info().settings)
    assert settings["mind"]["max_turns"] == 2 and settings["lineage"]["origin_mind"]["max_turns"] == 8

    again = Run.open(run.dir, llm=chatty(), embedder=WordEmbedder())  # resume builds the changed town
    assert again.sim.town.steps == AT + 3 and [r.name for r in again.sim.residents][-1] == "Dan Moss"
    await again.arun()
    await again.aclose()
    report = await replay(run.dir, tmp_path / "replayed", embedder=WordEmbedder())  # its interventions again
    assert report.identical, report.first_difference
    assert tree_hash(src) == hashes


async def test_cancel_and_remove_and_a_fork_of_a_fork(parent, tmp_path) -> None:
    src, _ = parent
    first = await fork(src, tmp_path / "first", [{"cancel_event": "party"}, {"remove_resident": "Ben Quill"}])
    await first.arun(steps=2)
    await first.aclose()
    d = load_scenario(first.dir / "scenario.yaml").definition
    assert (
        not d.events and d.measurement.attendance == [] and [r.name for r in d.residents] == ["Ada Quill", "Cora Lind"]
    )
    assert "present.party" not in {k for k, v in RunStore(first.dir).metrics().items() if v[-1][0] > AT}
    second = await Run.afork(
        first.dir,
        AT + 1,
        [{"tell": {"to": "Ada Quill", "memory": "Ben moved away."}}],
        tmp_path / "second",
        llm=chatty(),
        embedder=WordEmbedder(),
    )
    await second.arun(steps=1)
    await second.aclose()
    forks = json.loads(RunStore(second.dir).info().settings)["lineage"]["forks"]
    assert [f["step"] for f in forks] == [AT, AT + 1]
    assert (second.dir / "scenario.origin.yaml").read_bytes() == (src / "scenario.yaml").read_bytes()
    report = await replay(second.dir, tmp_path / "replayed", embedder=WordEmbedder())
    assert report.identical, report.first_difference


def test_errors_name_the_file_line_and_field(parent, tmp_path) -> None:
    src, hashes = parent
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "interventions:\n"
        "  - tell: {to: Ada Quil, memory: hello}\n"
        "  - move_event:\n"
        "      id: party\n"
        "      place: The Moon\n"
        "  - add_event: {id: late, title: Late, host: Cora Lind, place: Pell Café,\n"
        "                start: 2025-04-10 07:10, end: 2025-04-10 07:20}\n"
        "  - set: {temprature: 0.3}\n"
    )
    with pytest.raises(ScenarioError) as exc:
        load_interventions(bad)
    assert "bad.yaml, line 8, interventions[3].set: unknown key 'temprature' (did you mean 'temperature'?" in str(
        exc.value
    )
    bad.write_text("\n".join(bad.read_text().splitlines()[:7]) + "\n")
    dest = tmp_path / "never"
    with pytest.raises(ScenarioError) as exc:
        asyncio.run(Run.afork(src, AT, load_interventions(bad), dest, llm=chatty(), embedder=WordEmbedder()))
    text = str(exc.value)
    assert "line 2, interventions[0].tell.to: unknown resident 'Ada Quil' (did you mean 'Ada Quill'?" in text
    assert "line 5, interventions[1].move_event.place: unknown place 'The Moon'" in text
    assert "interventions[2].add_event.end: the event would end at Thu 2025-04-10 07:20, before the fork" in text
    with pytest.raises(ScenarioError, match=r"--intervene #2, line 1, remove_resident.name: unknown resident 'Zed'"):
        asyncio.run(Run.afork(src, AT, parse_option("remove_resident: Zed", "--intervene", 2), dest, llm=chatty()))
    with pytest.raises(RunError, match="has steps 0-12"):
        asyncio.run(Run.afork(src, 99, [], dest, llm=chatty()))
    assert not dest.exists() and tree_hash(src) == hashes


async def test_a_fork_that_fails_half_way_is_removed(parent, tmp_path, monkeypatch) -> None:
    src, hashes = parent

    async def broken(self, interventions, note) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Run, "_intervene", broken)
    with pytest.raises(OSError):
        await fork(src, tmp_path / "half")
    assert not (tmp_path / "half").exists() and tree_hash(src) == hashes


async def test_compare_tables_and_plot(parent, tmp_path) -> None:
    src, _ = parent
    run = await fork(
        src, tmp_path / "told", [{"tell": {"to": "Ada Quill", "memory": "Cora hosts a tasting.", "fact": "party"}}]
    )
    await run.arun()
    await run.aclose()
    c = compare([src, run.dir])
    assert c.table[("known.party", run.dir.name)].iloc[-1] >= 2 > c.table[("known.party", src.name)].iloc[AT - 1]
    assert c.first_difference == {run.dir.name: AT}
    assert plot(c, tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


# ---- the command line, on a replayed run (its backend is rebuilt from the recorded calls) --------------------


def test_command_line_fork_compare_plot(tmp_path) -> None:
    async def make() -> Path:
        run = Run.create(TOWN3, out=tmp_path, seed=7, hours=1, llm=chatty(), embedder=None)
        await run.arun()
        await run.aclose()
        report = await replay(run.dir, tmp_path / "rep")
        assert report.identical
        return report.run_dir

    rep = asyncio.run(make())
    cli = CliRunner()
    out = cli.invoke(app, ["fork", str(rep), "--at", "2", "--out", str(tmp_path / "f"), "--hours", "1"])
    assert out.exit_code == 0, out.output
    assert RunStore(tmp_path / "f").events() == RunStore(rep).events()  # replay backend: the same from the fork on
    yaml = tmp_path / "iv.yaml"
    yaml.write_text("- cancel_event: party\n")
    out = cli.invoke(
        app,
        [
            "fork",
            str(rep),
            "--at",
            "2025-04-10 07:20",
            "--out",
            str(tmp_path / "g"),
            "--interventions",
            str(yaml),
            "--tell",
            "Ada Quill: hello",
            "--set",
            "temperature=0.1",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "forked" in out.output and "step 2" in out.output
    out = cli.invoke(app, ["fork", str(rep), "--at", "2", "--out", str(tmp_path / "h"), "--tell", "Nobody: hi"])
    assert out.exit_code == 2 and "--tell #1" in out.output and "unknown resident 'Nobody'" in out.output
    assert not (tmp_path / "h").exists()
    out = cli.invoke(
        app, ["compare", str(rep), str(tmp_path / "g"), "--plot", str(tmp_path / "c.png")], env={"COLUMNS": "200"}
    )
    assert out.exit_code == 0, out.output
    assert "events first differ" in out.output and "at step 2" in out.output and (tmp_path / "c.png").exists()
    out = cli.invoke(app, ["plot", str(tmp_path / "g")])
    assert out.exit_code == 0 and (tmp_path / "g" / "metrics.png").exists(), out.output
