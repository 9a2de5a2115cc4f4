"""Durable runs: one transaction per step, resume after a kill, replay, and bad input."""

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from simulacra.cli import app
from simulacra.inference.backends.fake import ScriptedLLM
from simulacra.run import Run, replay
from simulacra.storage import RunError, RunStore

from ..agents.fakes import WordEmbedder, by_kind

TOWN3 = "scenarios/town3.yaml"


def chatty_answers() -> dict:
    """Stateless answers (they depend only on the prompt), so a resumed run gets the same ones."""

    def reaction(prompt, schema):
        return {"decision": "talk" if "have not talked" in prompt else "continue", "reason": "hello"}

    def utter(prompt, schema):
        n = prompt.count("\n", prompt.index("Conversation so far:")) if "Conversation so far:" in prompt else 0
        return {"says": f"line {n} about the tasting", "end": n >= 5}

    return {"Reaction": reaction, "Utterance": utter}


def chatty() -> ScriptedLLM:
    return ScriptedLLM(by_kind(chatty_answers()))


async def make_run(tmp_path: Path, hours: float = 1.0, **kw) -> Run:
    run = Run.create(
        TOWN3, out=tmp_path, seed=7, hours=hours, llm=chatty(), embedder=kw.pop("embedder", WordEmbedder()), **kw
    )
    return run


async def test_each_step_is_one_whole_commit(tmp_path) -> None:
    run = await make_run(tmp_path)
    llm = run.llm
    await run.arun()
    store = run.store
    info = store.info()
    assert info.status == "finished" and info.steps_done == info.steps_target == 6
    with sqlite3.connect(store.path) as db:
        steps = [r[0] for r in db.execute("select step from step order by step")]
        calls = db.execute("select count(*) from call").fetchone()[0]
        per_step = dict(db.execute("select step, count(*) from metric group by step").fetchall())
        mode = db.execute("pragma journal_mode").fetchone()[0]
    assert steps == list(range(7)) and mode == "wal"
    assert calls == len(llm.calls)  # every LLM call recorded, once
    assert len(set(per_step.values())) == 1  # the same metrics every step
    events = store.events()
    assert events and all(e["step"] >= 1 for e in events)
    assert store.metrics()["known.party"][0] == (0, 1.0)
    await run.aclose()


async def test_resume_continues_exactly(tmp_path) -> None:
    whole = await make_run(tmp_path / "a", hours=2)
    await whole.arun()
    await whole.aclose()
    part = await make_run(tmp_path / "b", hours=2)
    await part.arun(steps=5)
    await part.aclose()
    assert RunStore(part.dir).info().status == "paused"
    again = Run.open(part.dir, llm=chatty(), embedder=WordEmbedder())
    assert again.sim.town.steps == 5
    await again.arun()
    await again.aclose()
    assert RunStore(part.dir).events() == RunStore(whole.dir).events()
    resumed, straight = RunStore(part.dir).metrics(), RunStore(whole.dir).metrics()
    del resumed["llm.cached_tokens"], straight["llm.cached_tokens"]  # a restarted backend starts with a cold cache
    assert resumed == straight


async def test_replay_reproduces_the_events(tmp_path) -> None:
    run = await make_run(tmp_path, hours=2)
    await run.arun()
    await run.aclose()
    report = await replay(run.dir, tmp_path / "replayed", embedder=WordEmbedder())
    assert report.identical and report.events == len(RunStore(run.dir).events()) > 10


@pytest.mark.slow
def test_killed_at_random_steps_resumes_to_the_same_events(tmp_path) -> None:
    """SIGKILL a replaying run twice at random steps; resume it; its event log equals the original's."""
    original = asyncio.run(_original(tmp_path))
    target = RunStore(original).info().steps_done
    dest = tmp_path / "killed"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    exe = [sys.executable, "-m", "simulacra.cli"]
    rng = random.Random(1)
    cmd = [*exe, "replay", str(original), "--out", str(dest)]
    for _ in range(2):
        kill_at = rng.randint(2, target - 2)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (dest / "run.db").exists() and _steps_done(dest) >= kill_at:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = _steps_done(dest)
        assert done < target
        cmd = [*exe, "resume", str(dest)]  # the next attempt resumes the killed run
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert RunStore(dest).info().status == "finished"
    assert RunStore(dest).events() == RunStore(original).events()
    with sqlite3.connect(dest / "run.db") as db:
        assert [r[0] for r in db.execute("select step from step order by step")] == list(range(target + 1))


async def _original(tmp_path: Path) -> Path:
    run = await make_run(tmp_path / "orig", hours=3, embedder=None)  # the packaged embedder, as the CLI uses
    await run.arun()
    await run.aclose()
    return run.dir


def _steps_done(run_dir: Path) -> int:
    try:
        with sqlite3.connect(f"file:{run_dir / 'run.db'}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute("select max(step) from step").fetchone()
        return row[0] or 0
    except sqlite3.Error:
        return 0


# ---- bad input ---------------------------------------------------------------------------------------


def test_unknown_run_and_corrupted_or_foreign_databases(tmp_path) -> None:
    with pytest.raises(RunError, match="not a run directory"):
        RunStore(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(RunError, match="not a readable run database"):
        RunStore(bad)
    other = tmp_path / "other"
    other.mkdir()
    with sqlite3.connect(other / "run.db") as db:
        db.execute("create table t (x)")
    with pytest.raises(RunError, match="not a simulacra run database"):
        RunStore(other)


async def test_a_database_from_another_version_is_refused(tmp_path) -> None:
    run = await make_run(tmp_path)
    await run.aclose()
    with sqlite3.connect(run.dir / "run.db") as db:
        db.execute("update run set schema_version = 99")
    with pytest.raises(RunError, match="version 99.*reads version 1"):
        RunStore(run.dir)


async def test_a_failing_write_keeps_the_last_whole_step(tmp_path, monkeypatch) -> None:
    run = await make_run(tmp_path)
    await run.arun(steps=2)
    real = run.store.commit_step

    def full(data, memories):
        raise OperationalError("insert", {}, sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(run.store, "commit_step", full)
    with pytest.raises(RunError, match="disk is full.*simulacra resume"):
        await run.arun()
    monkeypatch.setattr(run.store, "commit_step", real)
    info = RunStore(run.dir).info()
    assert info.steps_done == 2 and info.status == "failed" and "disk is full" in info.message
    await run.aclose()
    again = Run.open(run.dir, llm=chatty(), embedder=WordEmbedder())
    assert again.sim.town.steps == 2
    await again.arun()
    assert RunStore(run.dir).info().status == "finished"
    await again.aclose()


async def test_ctrl_c_mid_step_leaves_whole_steps_and_says_how_to_resume(tmp_path) -> None:
    in_call = asyncio.Event()
    fill = by_kind()
    holder = {}

    async def script(prompt, schema, params):
        if holder["run"].sim.town.steps >= 3:  # hang inside a call of step 3 or later
            in_call.set()
            await asyncio.sleep(60)
        return fill(prompt, schema, params)

    run = Run.create(TOWN3, out=tmp_path, hours=2, llm=ScriptedLLM(script), embedder=WordEmbedder())
    holder["run"] = run
    task = asyncio.ensure_future(run.arun())
    await asyncio.wait_for(in_call.wait(), 30)
    in_progress = run.sim.town.steps
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    info = RunStore(run.dir).info()
    assert info.status == "interrupted" and "simulacra resume" in info.message
    assert info.steps_done == in_progress - 1 == RunStore(run.dir).last_step().step
    assert f"stopped during step {in_progress}; steps up to {info.steps_done} are saved" in info.message
    await run.aclose()


def test_cli_messages_for_missing_scenario_and_unknown_run(tmp_path) -> None:
    cli = CliRunner()
    r = cli.invoke(app, ["run", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "missing.yaml" in r.output and "Traceback" not in r.output
    r = cli.invoke(app, ["resume", str(tmp_path / "no-run")])
    assert r.exit_code == 2 and "not a run directory" in r.output
    r = cli.invoke(app, ["runs", str(tmp_path)])
    assert r.exit_code == 0


async def test_runs_lists_status(tmp_path) -> None:
    run = await make_run(tmp_path)
    await run.arun(steps=1)
    await run.aclose()
    r = CliRunner().invoke(app, ["runs", str(tmp_path)], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "paused" in r.output and "1/6" in r.output
    meta = json.loads((run.dir / "meta.json").read_text())
    assert meta["seed"] == 7 and meta["backend"]["kind"] == "custom" and meta["engine"] == {}
    import mesa
    import torch

    assert meta["versions"]["torch"] == torch.__version__ and meta["versions"]["mesa"] == mesa.__version__


def test_metadata_names_the_engine_settings_that_decide_its_outputs(tmp_path) -> None:
    from gguf import GGMLQuantizationType as Q

    from simulacra.inference.engine import Engine, EngineConfig
    from simulacra.inference.loader import default_dtype
    from simulacra.run import _engine_settings
    from tests.inference.gguf_writer import write_gguf
    from tests.inference.tiny_models import build_reference, save_reference

    save_reference(build_reference("olmoe", seed=5), tmp_path / "hf")
    model = write_gguf(tmp_path / "hf", tmp_path / "m.gguf", Q.Q8_0, tokenizer=True)
    for config in (EngineConfig(seed=3), EngineConfig(seed=3, deterministic=True)):
        engine = Engine(model, config)
        try:
            got = _engine_settings(engine)
        finally:
            asyncio.run(engine.aclose())
        assert got["seed"] == 3 and got["device"] == "cpu" and got["block_size"] == 16
        assert got["dtype"] == str(default_dtype()).removeprefix("torch.")
        assert got["deterministic"] is config.deterministic and ("invariant_tile" in got) is config.deterministic


def test_run_deterministic_records_its_backend_so_resume_rebuilds_it(tmp_path, monkeypatch) -> None:
    """`simulacra run --deterministic` asks for the engine's deterministic mode in the run's backend,
    which run.db and meta.json record and `resume` rebuilds (`backend.make_llm`)."""
    from typer.testing import CliRunner

    from simulacra.cli import app

    seen = []

    def create(path, **kw):  # noqa: ANN001, ANN003 - stands in for Run.create: no model is loaded
        seen.append(kw["backend"])
        raise FileNotFoundError("stopped here")

    monkeypatch.setattr(Run, "create", create)
    result = CliRunner().invoke(app, ["run", str(TOWN3), "--deterministic", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "stopped here" in result.output
    assert seen[0].kind == "engine" and seen[0].settings == {"deterministic": True}


def test_a_log_file_gets_one_progress_line_per_simulated_hour(tmp_path, capsys) -> None:
    from simulacra.commands.runs import _drive

    run = asyncio.run(make_run(tmp_path, hours=2.0))
    asyncio.run(_drive(run, view=False, interview=False))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " step " in ln and "steps/s" in ln]
    assert [ln.split(" step ")[1].split(" ")[0] for ln in lines] == ["6/12", "12/12"]
    assert all("calls" in ln and "ETA" in ln for ln in lines)
