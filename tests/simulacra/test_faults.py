"""Faults of durable runs: kills at any moment, two processes on one run, damaged files, a full disk.

Each fault must end in a message that says what is wrong, where (file, step) and what to do, and
the last committed state must never be harmed. The runs use the scripted LLM (``chatty``) and, for
the command line, the replay backend: a replayed run is rebuilt from its source's recorded calls on
``simulacra resume``, so a subprocess needs no model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulacra.cli import app
from simulacra.run import Backend, Run, _config_from_json, replay
from simulacra.storage import RunBusy, RunError, RunLock, RunStore, StepData, wal_damage

from ..agents.fakes import WordEmbedder
from .test_run import TOWN3, chatty

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "1000"}
CLI = [sys.executable, "-m", "simulacra.cli"]
STEPS = 12  # two simulated hours of town3


# ---- fixtures: an uninterrupted run, and a replay of it (which the command line can resume) ----------------


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """An uninterrupted run, with the packaged embedder as the command line uses it."""

    async def make() -> Path:
        run = Run.create(TOWN3, out=tmp_path_factory.mktemp("base"), seed=7, hours=2, llm=chatty(), embedder=None)
        await run.arun()
        await run.aclose()
        return run.dir.resolve()

    return asyncio.run(make())


@pytest.fixture(scope="module")
def rep(base, tmp_path_factory) -> Path:
    """A finished replay of ``base``: its backend (replay from base) is rebuilt by `simulacra resume`."""
    dest = tmp_path_factory.mktemp("rep") / "run"
    report = asyncio.run(replay(base, dest))
    assert report.identical
    return dest


def partial_replay(base: Path, dest: Path, steps: int) -> Path:
    """A replay of ``base`` stopped (paused) after ``steps`` steps: what `simulacra resume` continues."""

    async def make() -> Path:
        settings = json.loads(RunStore(base).info().settings)
        run = Run.create(
            base / "scenario.yaml",
            seed=7,
            hours=2,
            backend=Backend("replay", source=str(base)),
            config=_config_from_json(settings["mind"]),
            run_dir=dest,
        )
        await run.arun(steps=steps)
        await run.aclose()
        return dest

    return asyncio.run(make())


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "1000"})


def steps_of(run_dir: Path) -> list[int]:
    with sqlite3.connect(f"file:{run_dir / 'run.db'}?mode=ro", uri=True) as db:
        return [r[0] for r in db.execute("SELECT step FROM step ORDER BY step")]


def per_step(run_dir: Path, table: str) -> dict[int, int]:
    with sqlite3.connect(f"file:{run_dir / 'run.db'}?mode=ro", uri=True) as db:
        return dict(db.execute(f"SELECT step, count(*) FROM {table} GROUP BY step").fetchall())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_run(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("replay-*", "export", "run.lock"))
    return dest


def assert_whole(run_dir: Path, like: Path) -> None:
    """Finished, every step once, and the same events, calls and metrics per step as ``like``."""
    info = RunStore(run_dir).info()
    assert info.status == "finished" and info.steps_done == info.steps_target == STEPS
    assert steps_of(run_dir) == list(range(STEPS + 1))
    assert RunStore(run_dir).events() == RunStore(like).events()
    for table in ("call", "metric"):
        assert per_step(run_dir, table) == per_step(like, table), table


# ---- 1. kills: every resume finishes with each step committed once -----------------------------------------


async def test_the_last_step_and_the_finished_mark_are_one_commit(tmp_path) -> None:
    """No moment exists where every step is saved but the run is not marked finished (the kill window that
    left runs "running" at their last step)."""
    seen = []
    run = Run.create(TOWN3, out=tmp_path, seed=7, hours=1, llm=chatty(), embedder=WordEmbedder())

    def on_step(p) -> None:  # called after each commit, before arun's own status update
        seen.append((p.step, RunStore(run.dir).info().status))

    await run.arun(on_step=on_step)
    await run.aclose()
    assert seen[-1] == (6, "finished") and all(s == "running" for _, s in seen[:-1])


def test_all_steps_saved_but_not_marked_finished_resumes_to_finished(rep, tmp_path) -> None:
    """The state an older run could be killed in: all steps committed, status still "running"."""
    run_dir = copy_run(rep, tmp_path / "run")
    with sqlite3.connect(run_dir / "run.db") as db:
        db.execute("UPDATE run SET status = 'running', message = ''")
    r = cli("resume", run_dir)
    assert r.exit_code == 0, r.output
    assert f"is complete (step {STEPS} of {STEPS}); nothing to resume" in r.output and "Traceback" not in r.output
    assert_whole(run_dir, rep)


async def test_a_stale_resume_cannot_write_a_step_twice(tmp_path) -> None:
    """The IntegrityError's cause: a resume that loaded step 5 while another process went on to save step 6
    then inserted step 6 again (metrics first). Now it is refused before anything is written."""
    run = Run.create(TOWN3, out=tmp_path, seed=7, hours=1, llm=chatty(), embedder=WordEmbedder())
    await run.arun(steps=5)
    await run.aclose()
    first = Run.open(run.dir, llm=chatty(), embedder=WordEmbedder())
    late = Run.open(run.dir, llm=chatty(), embedder=WordEmbedder())  # loaded step 5 too
    assert first.sim.town.steps == late.sim.town.steps == 5
    await first.arun()
    await first.aclose()
    with pytest.raises(RunError, match="moved on to step 6 since it was opened at step 5.*open it again"):
        await late.arun()
    await late.aclose()
    assert steps_of(run.dir) == list(range(7)) and RunStore(run.dir).info().status == "finished"
    assert set(per_step(run.dir, "metric")) == set(range(7))


async def test_commit_step_accepts_only_the_next_step(tmp_path) -> None:
    run = Run.create(TOWN3, out=tmp_path, seed=7, hours=1, llm=chatty(), embedder=WordEmbedder())
    await run.arun(steps=3)
    sim = run.sim
    stale = StepData(2, sim.town.now, 0.0, {}, sim.state_dict(), [{"kind": "x"}], [], {"m": 1.0})
    with pytest.raises(RunError, match=r"step 2 cannot be saved: the last saved step is 3.*Nothing was written"):
        run.store.commit_step(stale, sim.society.memories)
    assert steps_of(run.dir) == [0, 1, 2, 3] and per_step(run.dir, "metric")[2] == per_step(run.dir, "metric")[1]
    await run.aclose()


def _steps_done(run_dir: Path) -> int:
    try:
        with sqlite3.connect(f"file:{run_dir / 'run.db'}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT max(step) FROM step").fetchone()[0] or 0
    except sqlite3.Error:
        return 0


def _kill_at_step(cmd: list[str], dest: Path, at: int, jitter: float) -> None:
    """Start ``cmd``; SIGKILL it ``jitter`` seconds after step ``at`` is committed (a random moment in a step)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and _steps_done(dest) < at:
            time.sleep(0.005)
        time.sleep(jitter)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # still running: the kill is mid-run
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _kill_after_last_commit(cmd: list[str]) -> None:
    """Start ``cmd`` and SIGKILL it as soon as it reports the last step (committed, the process not yet done)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:  # bounded by the run: the process ends after its last step
            if f"step {STEPS}/{STEPS}" in line:
                break
        else:
            raise AssertionError("the run ended without reporting its last step")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_killed_at_random_moments_and_after_the_last_commit_resumes_exactly(base, tmp_path) -> None:
    """SIGKILL a run mid-step at random moments (fixed seed), then once after its last commit; each resume
    continues from the last committed step; the result equals the uninterrupted run, every step once."""
    dest = tmp_path / "killed"
    rng = random.Random(5)
    first, second = sorted(rng.sample(range(1, STEPS - 4), 2))  # a step takes tens of ms: kills land mid-run
    _kill_at_step([*CLI, "replay", str(base), "--out", str(dest)], dest, first, rng.uniform(0, 0.01))
    done = _steps_done(dest)
    assert first <= done < STEPS
    _kill_at_step([*CLI, "resume", str(dest)], dest, max(second, done + 1), rng.uniform(0, 0.01))
    assert done < _steps_done(dest) < STEPS
    _kill_after_last_commit([*CLI, "resume", str(dest)])
    assert _steps_done(dest) == STEPS
    out = subprocess.run([*CLI, "resume", str(dest)], env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "is complete" in out.stdout and "nothing to resume" in out.stdout
    assert_whole(dest, base)


# ---- 2. two processes on one run ---------------------------------------------------------------------------

HOLDER = """
import sys
from simulacra.run import Run
from tests.agents.fakes import WordEmbedder
from tests.simulacra.test_run import chatty
run = Run.open(sys.argv[1], llm=chatty(), embedder=WordEmbedder(), lock=True)
print("holding", flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
def test_a_second_process_is_told_who_runs_the_run_and_a_killed_holder_never_blocks(base, tmp_path) -> None:
    run_dir = partial_replay(base, tmp_path / "run", 8)
    before = steps_of(run_dir)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)], env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        r = cli("resume", run_dir)
        assert r.exit_code == 2 and "Traceback" not in r.output
        assert f"run {run_dir} is already being run by process {holder.pid}" in r.output
        assert "(started 20" in r.output and "wait for it or kill it" in r.output and f"kill {holder.pid}" in r.output
        r = cli("runs", run_dir.parent)  # reading is not blocked
        assert r.exit_code == 0 and "8/12" in r.output and "paused" in r.output
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert steps_of(run_dir) == before  # nothing was written by the refused resume
    assert (run_dir / "run.lock").exists()  # the killed holder's lock file stays, and does not block:
    r = cli("resume", run_dir)
    assert r.exit_code == 0, r.output
    assert_whole(run_dir, base)


async def test_two_runs_of_one_directory_in_one_process_collide_on_the_lock(tmp_path) -> None:
    run = Run.create(TOWN3, out=tmp_path, seed=7, hours=1, llm=chatty(), embedder=WordEmbedder())
    try:
        with pytest.raises(RunBusy, match=f"already being run by process {os.getpid()}"):
            Run.open(run.dir, llm=chatty(), embedder=WordEmbedder(), lock=True)
        with pytest.raises(RunError, match="already holds a run"):
            Run.create(TOWN3, run_dir=run.dir, llm=chatty(), embedder=WordEmbedder())
        other = Run.open(run.dir, llm=chatty(), embedder=WordEmbedder())  # reading needs no lock ...
        with pytest.raises(RunBusy):
            await other.arun()  # ... writing does
        await other.aclose()
    finally:
        await run.aclose()
    lock = RunLock(run.dir).acquire()  # released by aclose
    lock.release()


# ---- 3. damaged files ---------------------------------------------------------------------------------------


def _all_commands_refuse(run_dir: Path, *expect: str) -> None:
    """resume, replay and export fail with the message; runs lists the run as unreadable with it; nothing is
    written to the run's files."""
    files = {p.name: sha(p) for p in run_dir.iterdir() if p.name.startswith("run.db")}
    for args in (["resume", run_dir], ["replay", run_dir, "--out", run_dir.parent / "rep"], ["export", run_dir]):
        r = cli(*args)
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output and str(run_dir / "run.db") in r.output, r.output
        for e in expect:
            assert e in r.output, (args[0], e, r.output)
    r = cli("runs", run_dir.parent)
    assert r.exit_code == 0 and "unreadable" in r.output and all(e in r.output for e in expect), r.output
    assert {p.name: sha(p) for p in run_dir.iterdir() if p.name.startswith("run.db")} == files
    assert not (run_dir.parent / "rep").exists() and not (run_dir / "export").exists()


def test_a_truncated_database_is_reported_and_continued_from_its_last_good_step(rep, tmp_path) -> None:
    run_dir = copy_run(rep, tmp_path / "runs" / "trunc")
    db = run_dir / "run.db"
    os.truncate(db, int(db.stat().st_size * 0.9))  # the tail of the file is gone, mid-page
    r = cli("resume", run_dir)
    good = int(r.output.split("Steps 0-")[1].split(" ")[0])
    assert 1 <= good < STEPS
    _all_commands_refuse(
        run_dir,
        "not a readable run database (database disk image is malformed)",
        "Nothing was written to it",
        f"Steps 0-{good} are intact",
        f"simulacra resume {run_dir} --from-step {good}",
    )
    r = cli("resume", run_dir, "--from-step", good)
    fork = run_dir.with_name(f"trunc-from-step-{good}")
    assert r.exit_code == 0, r.output
    assert f"continuing {run_dir} from step {good} in {fork}" in r.output
    assert steps_of(fork) == list(range(STEPS + 1)) and RunStore(fork).info().status == "finished"
    original = RunStore(rep).events()
    assert [e for e in RunStore(fork).events() if e["step"] <= good] == [e for e in original if e["step"] <= good]
    assert json.loads((fork / "meta.json").read_text())["continued_from"] == {"run": str(run_dir), "step": good}


def test_a_step_whose_state_does_not_parse_names_the_step(rep, tmp_path) -> None:
    run_dir = copy_run(rep, tmp_path / "runs" / "badstate")
    with sqlite3.connect(run_dir / "run.db") as db:
        db.execute("UPDATE step SET state = substr(state, 1, 100) WHERE step = ?", (STEPS,))
    before = sha(run_dir / "run.db")
    r = cli("resume", run_dir)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert f"the saved state of step {STEPS} (the last) does not parse" in r.output
    assert f"Steps 0-{STEPS - 1} are intact (the saved state of step {STEPS} does not parse" in r.output
    assert f"simulacra resume {run_dir} --from-step {STEPS - 1}" in r.output
    r = cli("runs", run_dir.parent)
    assert r.exit_code == 0 and "damaged" in r.output and f"the saved state of step {STEPS} (the last)" in r.output
    r = cli("export", run_dir, "--format", "csv")  # export needs no state: it works, and says what is wrong
    assert r.exit_code == 0 and f"warning: {run_dir / 'run.db'}: the saved state of step {STEPS}" in r.output
    assert sha(run_dir / "run.db") == before
    r = cli("resume", run_dir, "--from-step", STEPS - 1, "--out", tmp_path / "fixed")
    assert r.exit_code == 0, r.output
    assert_whole(tmp_path / "fixed", rep)  # the last step redone from its predecessor: the same as the original


def _live_copy(tmp_path: Path, steps: int) -> tuple[Path, Run]:
    """The files a killed run leaves: run.db and its WAL with the steps since the last checkpoint."""
    run = Run.create(TOWN3, out=tmp_path / "live", seed=7, hours=1, llm=chatty(), embedder=WordEmbedder())
    dest = tmp_path / "runs" / "walrun"
    dest.mkdir(parents=True)

    def copy(p) -> None:  # right after the commit of the last step: it is the WAL's last transaction
        if p.step == steps:
            for name in ("run.db", "run.db-wal", "scenario.yaml", "meta.json"):
                shutil.copyfile(run.dir / name, dest / name)

    asyncio.run(run.arun(steps=steps, on_step=copy))
    return dest, run


def test_a_damaged_wal_is_refused_before_sqlite_drops_its_steps(tmp_path) -> None:
    run_dir, live = _live_copy(tmp_path, 6)
    try:
        assert wal_damage(run_dir / "run.db") == ""  # a killed run's WAL as it is: sound
        wal = run_dir / "run.db-wal"
        page = int.from_bytes(wal.read_bytes()[8:12], "big")
        frames = (wal.stat().st_size - 32) // (24 + page)
        bad = frames // 2
        with wal.open("r+b") as f:  # one flipped byte in the page of a frame in the middle
            f.seek(32 + bad * (24 + page) + 24 + 100)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0xFF]))
        problem = wal_damage(run_dir / "run.db")
        assert f"run.db-wal is damaged at frame {bad + 1} (byte {32 + bad * (24 + page)})" in problem
        assert "SQLite would silently drop the" in problem and "committed transaction(s) (steps) after it" in problem
        r = cli("resume", run_dir)
        good = int(r.output.split("Steps 0-")[1].split(" ")[0])
        assert 0 <= good < 6
        _all_commands_refuse(run_dir, "run.db-wal is damaged at frame", f"--from-step {good}")
        fork = Run.continue_from(run_dir, good, llm=chatty(), embedder=WordEmbedder())
        asyncio.run(fork.arun())
        asyncio.run(fork.aclose())
        original = live.store.events()
        assert [e for e in RunStore(fork.dir).events() if e["step"] <= good] == [
            e for e in original if e["step"] <= good
        ]
        assert steps_of(fork.dir) == list(range(7)) and RunStore(fork.dir).info().status == "finished"
    finally:
        asyncio.run(live.aclose())


def test_a_wal_cut_off_inside_its_last_transaction_is_normal_and_a_broken_header_is_not(tmp_path) -> None:
    run_dir, live = _live_copy(tmp_path, 3)
    asyncio.run(live.aclose())
    wal = run_dir / "run.db-wal"
    data = wal.read_bytes()
    wal.write_bytes(data[: len(data) - 3000])  # a kill in the middle of writing the last commit
    assert wal_damage(run_dir / "run.db") == ""
    again = Run.open(run_dir, llm=chatty(), embedder=WordEmbedder(), lock=True)
    assert again.sim.town.steps == 2  # the cut-off step 3 was never committed
    asyncio.run(again.aclose())
    wal.write_bytes(data[:4] + bytes([data[4] ^ 1]) + data[5:])  # the header's format version
    assert "run.db-wal has a damaged header" in wal_damage(run_dir / "run.db")
    wal.write_bytes(data[:20] + bytes([data[20] ^ 1]) + data[21:])  # a salt: the header checksum fails
    assert "its checksum fails), so SQLite would ignore the" in wal_damage(run_dir / "run.db")


def test_a_garbage_database_names_the_file_and_what_to_do(tmp_path) -> None:
    run_dir = tmp_path / "runs" / "junk"
    run_dir.mkdir(parents=True)
    (run_dir / "run.db").write_bytes(b"not a database at all" * 500)
    r = cli("resume", run_dir)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "not a readable run database (file is not a database)" in r.output
    assert "No step in it can be read back" in r.output and "restore it from a backup or start a new run" in r.output


# ---- 4. a real full disk ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (this needs root and a kernel that lets this sandbox mount one)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("cannot mount a tmpfs here: no mount command")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(disk: Path, leave: int) -> Path:
    """A filler file that leaves about ``leave`` bytes free on ``disk``."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    size = max(st.f_bavail * st.f_frsize - leave, 0)
    with filler.open("wb") as f:
        f.write(b"\0" * size)
    return filler


def test_a_full_disk_mid_run_stops_with_the_step_and_resumes_after_space_is_freed(base, small_disk) -> None:
    run_dir = small_disk / "run"
    # a run needs about 2.8 times its final run.db while it runs (the WAL); this leaves room for about half
    filler = _fill(small_disk, int((base / "run.db").stat().st_size * 1.6))
    r = cli("replay", base, "--out", run_dir)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "database or disk is full" in r.output, r.output
    failed = int(r.output.split("could not write step ")[1].split(" ")[0])
    assert 2 <= failed < STEPS, r.output
    assert f"steps up to {failed - 1} are saved" in r.output
    assert f"Free disk space and continue with `simulacra resume {run_dir}`" in r.output
    with sqlite3.connect(f"file:{run_dir / 'run.db'}?mode=ro", uri=True) as db:  # still valid, read in place
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert [s for (s,) in db.execute("SELECT step FROM step ORDER BY step")] == list(range(failed))
        for (state,) in db.execute("SELECT state FROM step"):
            assert {"town", "minds", "society"} <= json.loads(state).keys()
        assert db.execute("SELECT count(*) FROM metric WHERE step >= ?", (failed,)).fetchone()[0] == 0
    r = cli("resume", run_dir)  # still full: the same clear stop, nothing lost
    assert r.exit_code == 2 and "disk is full" in r.output and "simulacra resume" in r.output, r.output
    assert steps_of(run_dir)[-1] >= failed - 1
    filler.unlink()
    r = cli("resume", run_dir)
    assert r.exit_code == 0, r.output
    assert_whole(run_dir, base)
