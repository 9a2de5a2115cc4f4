"""Runs in PostgreSQL (`--db postgresql://...`): the same tables as run.db, keyed by run, on a real server the
tests start themselves (``postgres_server``); and run.db files from before the run key still open."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from sqlmodel import Session, col, func, select
from typer.testing import CliRunner

from simulacra.cli import app
from simulacra.compare import compare
from simulacra.export import export_run
from simulacra.run import Run
from simulacra.storage import RunError, RunRow, RunStore, StepRow, list_db_runs
from simulacra.viewer_run import RunSource

from ..agents.fakes import WordEmbedder
from .postgres_server import PASSWORD, PostgresServer, missing_reason, postgres_server
from .test_remote_runs import servers
from .test_run import TOWN3, chatty, make_run

ROOT = Path(__file__).resolve().parents[2]
needs_postgres = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


def cli(*args: object, env: dict | None = None):  # noqa: ANN201 - typer's Result
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250", **(env or {})})


def steps_in_db(store: RunStore) -> list[int]:
    with Session(store.engine) as s:
        return list(s.exec(select(StepRow.step).where(StepRow.run_id == store.key).order_by(col(StepRow.step))))


def run_files_bytes(run_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in run_dir.rglob("*") if p.is_file())


# ---- one run: the same rows as in run.db --------------------------------------------------------------------


@needs_postgres
async def test_a_run_in_postgres_reads_like_the_same_run_in_sqlite(pg, tmp_path) -> None:
    run = await make_run(tmp_path / "pg", hours=1, db=pg.url)
    await run.arun(steps=3)
    await run.aclose()
    assert not (run.dir / "run.db").exists()
    meta = json.loads((run.dir / "meta.json").read_text())
    assert meta["db"] == {"url": pg.url_without_password, "run": run.store.key}
    assert PASSWORD.encode() not in run_files_bytes(run.dir)  # the URL is recorded without its password
    again = Run.open(run.dir, llm=chatty(), embedder=WordEmbedder(), lock=True)  # found again from meta.json
    assert again.sim.town.steps == 3
    await again.arun()
    await again.aclose()
    local = await make_run(tmp_path / "local", hours=1)
    await local.arun()
    await local.aclose()

    shared, own = RunStore(run.dir), RunStore(local.dir)
    assert shared.info().status == "finished" and steps_in_db(shared) == list(range(7))
    assert shared.events() == own.events() and len(shared.events()) > 10
    assert [c.text for c in shared.calls()] == [c.text for c in own.calls()]
    a, b = shared.metrics(), own.metrics()
    del a["llm.cached_tokens"], b["llm.cached_tokens"]  # the resumed backend started cold
    assert a == b

    for fmt in ("csv", "parquet"):  # export: the same tables (ids are the database's own)
        mine, theirs = export_run(run.dir, fmt), export_run(local.dir, fmt, tmp_path / f"local-{fmt}")
        for name in ("events", "memories", "metrics"):
            x = pd.read_csv(mine[name]) if fmt == "csv" else pd.read_parquet(mine[name])
            y = pd.read_csv(theirs[name]) if fmt == "csv" else pd.read_parquet(theirs[name])
            x, y = x.drop(columns=["id"], errors="ignore"), y.drop(columns=["id"], errors="ignore")
            if name == "metrics":
                x, y = (d[d["name"] != "llm.cached_tokens"].reset_index(drop=True) for d in (x, y))
            pd.testing.assert_frame_equal(x, y)
    comparison = compare([run.dir, local.dir])  # compare reads the database's run beside run.db's
    assert list(comparison.first_difference.values()) == [None]

    viewed = Run.open(run.dir, llm=chatty(), embedder=WordEmbedder())  # the viewer's past steps
    source = RunSource(viewed)
    assert source.snapshot_at(2)["step"] == 2 and source.run_info()["metrics"]
    await viewed.aclose()

    r = cli("runs", "--db", pg.url)
    assert r.exit_code == 0 and shared.key in r.output and "finished" in r.output and "6/6" in r.output, r.output
    r = cli("runs", run.dir.parent)  # a folder of run directories: one in the database among them
    assert r.exit_code == 0 and run.dir.name in r.output and "6/6" in r.output, r.output


# ---- many writers -----------------------------------------------------------------------------------------


@needs_postgres
def test_two_runs_write_to_one_database_at_once(pg, tmp_path) -> None:
    """Two runs in two threads, in lock-step (each waits after every step until the other has committed it), so
    their commits interleave; both finish, each with every step once and its own events only."""
    seeds = (7, 8)
    committed = {s: [threading.Event() for _ in range(7)] for s in seeds}
    runs: dict[int, Run] = {}
    errors: list[BaseException] = []

    def one(seed: int) -> None:
        other = seeds[1 - seeds.index(seed)]

        def on_step(p) -> None:
            committed[seed][p.step].set()
            assert committed[other][p.step].wait(60), f"the other run never committed step {p.step}"

        async def go() -> None:
            llm, embedder = chatty(), WordEmbedder()
            run = Run.create(TOWN3, out=tmp_path / "pg", seed=seed, hours=1, llm=llm, embedder=embedder, db=pg.url)
            runs[seed] = run
            committed[seed][0].set()
            try:
                await run.arun(on_step=on_step)
            finally:
                await run.aclose()

        try:
            asyncio.run(go())
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            for e in committed[seed]:
                e.set()

    threads = [threading.Thread(target=one, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for seed in seeds:
        store = RunStore(runs[seed].dir)
        assert store.info().status == "finished" and steps_in_db(store) == list(range(7))
        with Session(store.engine) as s:
            per_step = s.exec(select(func.count()).select_from(StepRow).where(StepRow.run_id == store.key)).one()
        assert per_step == 7
        alone = Run.create(TOWN3, out=tmp_path / "alone", seed=seed, hours=1, llm=chatty(), embedder=WordEmbedder())
        asyncio.run(alone.arun())
        asyncio.run(alone.aclose())
        assert store.events() == RunStore(alone.dir).events()  # no row of the other run
    keys = {RunStore(r.dir).key for r in runs.values()}
    assert keys <= {r.run_id for r in list_db_runs(pg.url)} and len(keys) == 2


# ---- a killed run -----------------------------------------------------------------------------------------


@needs_postgres
@pytest.mark.slow  # the command line's packaged embedder, three times
def test_a_killed_run_resumes_from_the_database(pg, tmp_path) -> None:
    """`simulacra run --db` SIGKILLed after a committed step, then `simulacra resume`: every step once, in order,
    and the events of the same run uninterrupted."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "200"}
    env.pop("PGPASSWORD", None)
    exe = [sys.executable, "-m", "simulacra.cli"]
    with servers(1, delay_s=0.05) as [(url, _)]:
        args = ["run", TOWN3, "--hours", "2", "--seed", "7", "--llm-url", url, "--out", tmp_path / "runs"]
        cmd = [*exe, *map(str, args), "--db", pg.url]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        run_dir, done, deadline = None, -1, time.time() + 120
        while time.time() < deadline and proc.poll() is None and done < 3:
            dirs = list((tmp_path / "runs").glob("*/meta.json"))
            try:  # meta.json may be half written, the run row not there yet
                if dirs and "db" in json.loads(dirs[0].read_text()):
                    run_dir = dirs[0].parent
                    done = RunStore(run_dir, db=pg.url).info().steps_done
            except (ValueError, RunError):
                pass
            time.sleep(0.05)
        assert proc.poll() is None and run_dir is not None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = RunStore(run_dir, db=pg.url)
        killed_at = store.info().steps_done
        assert 3 <= killed_at < 12 and store.info().status == "running"  # killed: nothing marked it stopped

        out = subprocess.run([*exe, "resume", str(run_dir)], cwd=ROOT, env=env, capture_output=True, text=True)
        assert out.returncode == 2 and "PGPASSWORD" in out.stdout + out.stderr  # the URL has no password
        env["PGPASSWORD"] = PASSWORD  # (or --db with the password)
        resumed = subprocess.run([*exe, "resume", str(run_dir)], cwd=ROOT, env=env, capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
        assert f"resuming {run_dir} at step {killed_at} of 12" in resumed.stdout
        measured = cli("measure", run_dir)  # interviews on the run read from the database
        assert measured.exit_code == 0 and "step 12" in measured.output, measured.output
        assert (run_dir / "interviews.json").exists()

    info = store.info()
    assert info.status == "finished" and info.steps_done == 12
    assert steps_in_db(store) == list(range(13))  # contiguous, each committed once
    straight = asyncio.run(make_run(tmp_path / "straight", hours=2, embedder=None))  # the CLI's embedder
    asyncio.run(straight.arun())
    asyncio.run(straight.aclose())
    assert store.events() == RunStore(straight.dir).events()
    assert len(store.calls()) == len(RunStore(straight.dir).calls())  # no call lost, none recorded twice


# ---- continuing elsewhere ----------------------------------------------------------------------------------


@needs_postgres
async def test_from_step_and_forks_of_a_database_run_stay_in_the_database(pg, tmp_path) -> None:
    run = await make_run(tmp_path, hours=1, db=pg.url)
    await run.arun()
    await run.aclose()
    cont = Run.continue_from(run.dir, 3, tmp_path / "from-3", llm=chatty(), embedder=WordEmbedder())
    assert cont.store.shared and cont.store.key != run.store.key and cont.sim.town.steps == 3
    await cont.arun()
    await cont.aclose()
    assert RunStore(cont.dir).events() == RunStore(run.dir).events()
    meta = json.loads((cont.dir / "meta.json").read_text())
    assert meta["db"]["run"] == cont.store.key and meta["continued_from"] == {"run": str(run.dir), "step": 3}

    fork = await Run.afork(run.dir, 2, [], tmp_path / "fork", llm=chatty(), embedder=WordEmbedder())
    assert fork.store.shared and fork.store.key not in (run.store.key, cont.store.key)
    await fork.arun()
    await fork.aclose()
    assert RunStore(fork.dir).events() == RunStore(run.dir).events()
    assert {run.store.key, cont.store.key, fork.store.key} <= {r.run_id for r in list_db_runs(pg.url)}

    async def broken(self, interventions, note) -> None:
        raise OSError("disk full")

    before = {r.run_id for r in list_db_runs(pg.url)}
    with pytest.MonkeyPatch.context() as m:
        m.setattr(Run, "_intervene", broken)
        with pytest.raises(OSError):
            await Run.afork(run.dir, 2, [], tmp_path / "half", llm=chatty(), embedder=WordEmbedder())
    assert not (tmp_path / "half").exists()
    assert {r.run_id for r in list_db_runs(pg.url)} == before  # the half-made fork left no rows behind
    with Session(RunStore(run.dir).engine) as s:
        orphans = s.exec(select(func.count()).select_from(StepRow).where(col(StepRow.run_id).not_in(before)))
        assert orphans.one() == 0


# ---- errors a user can act on -----------------------------------------------------------------------------


@needs_postgres
def test_errors_name_the_server_and_what_to_do(pg, tmp_path) -> None:
    dead = "postgresql://someone@127.0.0.1:9/nowhere"
    with pytest.raises(RunError, match=r"cannot connect to PostgreSQL at 127\.0\.0\.1:9 .*pg_isready -h 127\.0\.0\.1"):
        RunStore(tmp_path / "x", create=True, db=dead)
    r = cli("run", TOWN3, "--db", dead, "--out", tmp_path / "runs")
    assert r.exit_code == 2 and "127.0.0.1:9" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing left behind
    with pytest.raises(RunError, match="PGPASSWORD"):
        RunStore(tmp_path / "y", create=True, db=pg.url.replace(PASSWORD, "wrong"))
    with pytest.raises(RunError, match="createdb"):
        RunStore(tmp_path / "z", create=True, db=pg.url.replace("/simulacra_test", "/no_such_db"))
    with pytest.raises(RunError, match="not a PostgreSQL URL"):
        RunStore(tmp_path / "w", create=True, db="mysql://u@h/d")
    r = cli("runs", "--db", dead)
    assert r.exit_code == 2 and "127.0.0.1:9" in r.output

    local = asyncio.run(make_run(tmp_path / "local", hours=1))
    asyncio.run(local.aclose())
    with pytest.raises(RunError, match="keeps its rows in its own run.db"):
        Run.open(local.dir, db=pg.url)


# ---- run.db files from before the run key -----------------------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE run (id INTEGER NOT NULL, schema_version INTEGER NOT NULL, scenario VARCHAR NOT NULL,
    seed INTEGER NOT NULL, model VARCHAR NOT NULL, model_sha256 VARCHAR NOT NULL, settings VARCHAR NOT NULL,
    created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL, status VARCHAR NOT NULL, message VARCHAR NOT NULL,
    steps_done INTEGER NOT NULL, steps_target INTEGER NOT NULL, PRIMARY KEY (id));
CREATE TABLE step (step INTEGER NOT NULL, sim_time DATETIME NOT NULL, wall_s FLOAT NOT NULL, frame VARCHAR NOT NULL,
    state VARCHAR NOT NULL, PRIMARY KEY (step));
CREATE TABLE event (id INTEGER NOT NULL, step INTEGER NOT NULL, kind VARCHAR NOT NULL, resident VARCHAR,
    data VARCHAR NOT NULL, PRIMARY KEY (id));
CREATE INDEX ix_event_step ON event (step);
CREATE INDEX ix_event_kind ON event (kind);
CREATE TABLE call (id INTEGER NOT NULL, step INTEGER NOT NULL, purpose VARCHAR, resident VARCHAR,
    prompt_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    wall_s FLOAT NOT NULL, record VARCHAR NOT NULL, PRIMARY KEY (id));
CREATE INDEX ix_call_step ON call (step);
CREATE INDEX ix_call_purpose ON call (purpose);
CREATE TABLE metric (step INTEGER NOT NULL, name VARCHAR NOT NULL, value FLOAT NOT NULL, PRIMARY KEY (step, name));
CREATE TABLE memory (resident VARCHAR NOT NULL, seq INTEGER NOT NULL, kind VARCHAR NOT NULL, text VARCHAR NOT NULL,
    created_step INTEGER NOT NULL, created_at DATETIME NOT NULL, last_retrieved_at DATETIME NOT NULL,
    importance INTEGER, embedding BLOB, evidence VARCHAR NOT NULL, PRIMARY KEY (resident, seq));
"""


async def test_a_run_db_from_before_the_run_key_opens_and_resumes(tmp_path) -> None:
    """A run.db made by the simulacra before shared databases (no run_id columns) gets them in place, keeps its
    rows, resumes, and is continued from a step like any other."""
    whole = await make_run(tmp_path / "whole", hours=1)
    await whole.arun()
    await whole.aclose()
    part = await make_run(tmp_path / "part", hours=1)
    await part.arun(steps=3)
    await part.aclose()
    old = part.dir / "run.db"
    new = part.dir / "new.db"
    old.rename(new)
    with sqlite3.connect(old) as db:  # the same rows in the earlier shape
        db.executescript(OLD_SCHEMA)
        db.execute("ATTACH ? AS n", (str(new),))
        for table in ("run", "step", "event", "call", "metric", "memory"):
            cols = [r[1] for r in db.execute(f"PRAGMA main.table_info('{table}')")]
            db.execute(f"INSERT INTO main.{table} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM n.{table}")
        db.commit()
        db.execute("DETACH n")
    new.unlink()

    fork = Run.continue_from(part.dir, 2, tmp_path / "from-2", llm=chatty(), embedder=WordEmbedder())  # reads a copy
    await fork.arun()
    await fork.aclose()
    again = Run.open(part.dir, llm=chatty(), embedder=WordEmbedder(), lock=True)
    assert again.sim.town.steps == 3
    await again.arun()
    await again.aclose()
    with sqlite3.connect(old) as db:
        assert "run_id" in {r[1] for r in db.execute("PRAGMA table_info('step')")}
        assert [r[0] for r in db.execute("SELECT step FROM step ORDER BY step")] == list(range(7))
    for d in (part.dir, fork.dir):
        assert RunStore(d).events() == RunStore(whole.dir).events()
        assert RunStore(d).info().status == "finished"
    assert isinstance(RunStore(part.dir).info(), RunRow)


# ---- sweeps -------------------------------------------------------------------------------------------------


@needs_postgres
async def test_a_sweep_puts_every_point_in_the_database(pg, tmp_path) -> None:
    from simulacra.sweeps import asweep

    out, embedder = tmp_path / "sweep", WordEmbedder()
    rows = await asweep(TOWN3, seeds=(1, 2), hours=0.5, out=out, llm_factory=chatty, embedder=embedder, db=pg.url)
    assert list(rows["status"]) == ["done", "done"], rows.to_dict("records")
    keys = set()
    for run_dir in map(Path, rows["run_dir"]):
        assert not (run_dir / "run.db").exists()
        store = RunStore(run_dir)
        assert store.shared and store.info().status == "finished" and steps_in_db(store) == list(range(4))
        keys.add(store.key)
    assert len(keys) == 2 and keys <= {r.run_id for r in list_db_runs(pg.url)}
