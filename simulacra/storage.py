"""A run's durable record: ``run.db`` (SQLite through SQLModel, WAL) in the run directory, or a PostgreSQL
database shared by many runs (``--db postgresql://...``, the same tables).

One transaction per step writes everything the step produced: the world and minds' state, the
viewer frame, the events, the LLM calls, the memories added or touched, the metrics. Killed at any
moment, the database holds whole steps only, so a run resumes from its last committed step with
nothing lost and nothing written twice.

Tables: ``run`` (one row per run: what was run and how far it got), ``step``, ``event``, ``call``,
``metric``, and the agents' ``memory`` table. Every row carries its run's key, ``run_id``: ``""`` in a
run's own ``run.db``, a uuid in a shared database, where ``RUN/meta.json`` names the database (without
its password) and the run's key, so the run directory stays the handle every command takes.

Faults, and what they give (each a ``RunError`` naming the file, the step and what to do):

- two processes on one run: ``RunLock``, an exclusive ``flock`` on ``run.lock`` held for the life
  of a run (it dies with its process, so a killed run never leaves a stale lock); the second is
  told which process holds it. ``commit_step`` also refuses any step but the next one.
- a damaged file: a ``run.db`` SQLite cannot read (truncated, overwritten), a ``run.db-wal`` whose
  committed frames SQLite would silently drop (``wal_damage``), a step whose state does not parse.
  Nothing is written to such a run; ``fork_run`` copies its steps up to the last good one (read
  from a temporary copy, so the damaged files stay as they are for salvage) into a new run
  directory, which ``simulacra resume RUN --from-step N`` then continues.

The file checks (WAL, ``quick_check``, salvage) are SQLite's alone: PostgreSQL keeps its own data whole, and
what it can fail with is a server that cannot be reached, which is reported with its host and port.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sqlite3
import struct
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import NaiveDatetime
from sqlalchemy import Engine, Index, inspect
from sqlalchemy import event as sa_event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError
from sqlmodel import Field, Session, SQLModel, col, create_engine, func, select

from simulacra.agents.memory import MemoryRecord, MemoryStore
from simulacra.inference.backends.recording import CallRecord

SCHEMA_VERSION = 1  # ``run_id`` and ``run.dir`` were added in place (server defaults): earlier files still open
DB_NAME = "run.db"
LOCK_NAME = "run.lock"
META_NAME = "meta.json"


class RunError(Exception):
    """A run directory that cannot be used, with what to do about it."""


class RunBusy(RunError):
    """Another process holds the run's lock."""


class RunLock:
    """An exclusive ``flock`` on ``RUN/run.lock`` while a process runs (writes) the run.

    The kernel drops the lock when its process dies, however it dies, so a stale lock file never
    blocks; the file only carries a note of the holder (pid, start time, command) for the message.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        self.path = self.dir / LOCK_NAME
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self, *, shared: bool = False) -> RunLock:
        """Take the lock (``shared``: a reader's, which only keeps writers out); RunBusy if it is held."""
        if self.fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunError(f"{self.path}: cannot open the run's lock file ({exc.strerror})") from exc
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            note = _read_note(fd)
            os.close(fd)
            raise RunBusy(_busy_message(self.dir, note)) from None
        if not shared:
            note = {"pid": os.getpid(), "started": datetime.now().isoformat(timespec="seconds"), "argv": sys.argv}
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(note).encode(), 0)
            except OSError:
                pass  # a full disk: the lock holds without its note
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def holds_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` is a run directory: its ``run.db``, or a ``meta.json`` naming the run's database."""
    d = Path(run_dir)
    return (d / DB_NAME).exists() or db_pointer(d) is not None


def require_run_dir(run_dir: str | Path) -> None:
    """RunError unless ``run_dir`` holds a run (``run.db``, or a pointer to its rows in a database)."""
    d = Path(run_dir)
    if not holds_run(d):
        hint = "list runs with `simulacra runs`" if not d.exists() else f"{DB_NAME} is missing in it"
        raise RunError(f"{d}: not a run directory ({hint})")


def db_pointer(run_dir: str | Path) -> dict | None:
    """``{"url", "run"}`` from ``RUN/meta.json`` when the run's rows are in a shared database, else None."""
    try:
        meta = json.loads((Path(run_dir) / META_NAME).read_text())
    except (OSError, ValueError):
        return None
    db = meta.get("db") if isinstance(meta, dict) else None
    return db if isinstance(db, dict) and db.get("url") and db.get("run") else None


def _write_pointer(run_dir: Path, pointer: dict) -> None:
    path = run_dir / META_NAME
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        meta = {}
    path.write_text(json.dumps({**(meta if isinstance(meta, dict) else {}), "db": pointer}, indent=1, default=str))


def _read_note(fd: int) -> dict:
    try:
        note = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return note if isinstance(note, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def _busy_message(run_dir: Path, note: dict) -> str:
    pid = note.get("pid")
    if pid is not None and _alive(pid):
        cmd = " ".join(str(a) for a in note.get("argv") or [])
        cmd = f" `{cmd[:200]}`" if cmd else ""
        return (
            f"run {run_dir} is already being run by process {pid}{cmd} (started {note.get('started', '?')}); "
            f"wait for it or kill it (`kill {pid}`), then try again"
        )
    return (
        f"run {run_dir} is in use by another process (one reading it, or one just starting: see `fuser "
        f"{run_dir / LOCK_NAME}`); wait for it or stop it, then try again"
    )


def _run_key(primary_key: bool = True) -> Any:
    """The ``run_id`` column of every table: the run's key (``""`` in a run's own ``run.db``; the server
    default lets an earlier simulacra's inserts, and rows copied from an older file, take that). It comes
    last in a key, so run.db's lookups by step stay on its index (a salvage of a damaged file reads only the
    pages of the steps it asks for); a shared database gets per-run indexes (``_PER_RUN``)."""
    return Field(default="", primary_key=primary_key, sa_column_kwargs={"server_default": ""})


class RunRow(SQLModel, table=True):
    __tablename__ = "run"

    run_id: str = _run_key()
    id: int = 1  # the key before ``run_id``; kept so an earlier simulacra still reads a newer run.db
    schema_version: int
    scenario: str  # the scenario's name
    seed: int
    model: str  # path of the model file or folder ("" for a non-engine backend)
    model_sha256: str = ""
    settings: str = "{}"  # JSON: engine settings, mind config, versions, command line
    created_at: datetime
    updated_at: datetime
    status: str = "running"  # running | finished | interrupted | failed
    message: str = ""
    steps_done: int = 0
    steps_target: int = 0
    dir: str = Field(default="", sa_column_kwargs={"server_default": ""})  # host:path of a shared database's run


class StepRow(SQLModel, table=True):
    __tablename__ = "step"

    step: int = Field(primary_key=True)
    run_id: str = _run_key()
    sim_time: NaiveDatetime
    wall_s: float
    frame: str  # JSON: what the viewer draws at this step
    state: str  # JSON: everything needed to continue from this step


class EventRow(SQLModel, table=True):
    __tablename__ = "event"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = _run_key(primary_key=False)
    step: int = Field(index=True)
    kind: str = Field(index=True)
    resident: str | None = None
    data: str  # JSON


class CallRow(SQLModel, table=True):
    __tablename__ = "call"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = _run_key(primary_key=False)
    step: int = Field(index=True)
    purpose: str | None = Field(default=None, index=True)
    resident: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    record: str  # CallRecord as JSON (prompt, params, schema, output, timings, meta)


class MetricRow(SQLModel, table=True):
    __tablename__ = "metric"

    step: int = Field(primary_key=True)
    name: str = Field(primary_key=True)
    run_id: str = _run_key()
    value: float


def _per_run_index(table: Any, *columns: str) -> Index:
    """An index that leads with ``run_id``, in a shared database only (a run's own run.db holds one run)."""
    t = table.__table__
    return Index(f"ix_{t.name}_run", *(t.c[c] for c in ("run_id", *columns))).ddl_if(dialect="postgresql")


_PER_RUN = (
    _per_run_index(StepRow, "step"),
    _per_run_index(EventRow, "step"),
    _per_run_index(CallRow, "step"),
    _per_run_index(MetricRow, "step"),
    _per_run_index(MemoryRecord, "resident", "seq"),
)


@dataclass
class StepData:
    """What one step leaves behind, written by ``RunStore.commit_step`` in one transaction."""

    step: int
    sim_time: datetime
    wall_s: float
    frame: dict
    state: dict
    events: list[dict]
    calls: list[CallRecord]
    metrics: dict[str, float]


def _now() -> datetime:
    return datetime.now(UTC)


def _wal(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed step survives a killed process
    cur.close()


# ---- a database shared by many runs (PostgreSQL) ------------------------------------------------------------

PG_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
_ENGINES: dict[str, Engine] = {}  # one pool per database and process, shared by every run it opens
_PASSWORDS: dict[str, str] = {}  # masked URL -> the URL as given: a run dir's password-less pointer reconnects
_ENGINES_LOCK = threading.Lock()
_TABLES_LOCK = 0x51AC_7AB1  # advisory lock: workers starting at once create the tables once


def is_db_url(text: str | Path | None) -> bool:
    """Whether ``text`` names a database (``postgresql://...``) rather than a file or folder."""
    return text is not None and str(text).split("://", 1)[0].lower() in PG_SCHEMES and "://" in str(text)


def _pg_url(url: str) -> URL:
    try:
        u = make_url(url)
    except ArgumentError:
        u = None
    if u is None or u.drivername not in PG_SCHEMES:
        raise RunError(
            f"--db {url.split('://', 1)[0]}://...: not a PostgreSQL URL; write postgresql://USER@HOST:PORT/DATABASE "
            "(without --db a run keeps its rows in RUN/run.db)"
        )
    if not u.database:
        raise RunError(f"--db {mask_url(url)}: name the database (postgresql://USER@HOST:PORT/DATABASE)")
    return u.set(drivername="postgresql+psycopg")


def mask_url(url: str) -> str:
    """``url`` without its password: what a run records (the password comes from the URL given again in this
    process, ``PGPASSWORD`` or ``~/.pgpass``)."""
    try:
        u = make_url(url)
    except ArgumentError:
        return "(not a URL)"
    return u._replace(drivername="postgresql", password=None).render_as_string(hide_password=False)


def _pg_engine(url: str) -> Engine:
    u = _pg_url(url)
    if u.password is not None:
        _PASSWORDS[mask_url(url)] = url
    key = u.render_as_string(hide_password=False)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            # UTC sessions: timestamps read back as written, whatever the server's time zone
            args = {"connect_timeout": 10, "options": "-c timezone=UTC", "application_name": "simulacra"}
            engine = _ENGINES[key] = create_engine(u, pool_pre_ping=True, connect_args=args)
    return engine


def _after_fork() -> None:  # a forked worker must not share its parent's connections
    for engine in _ENGINES.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork)


def _unreachable(url: str, exc: BaseException) -> RunError:
    """What a failed connection means, with the server's host and port and what to do."""
    u = make_url(url)
    host, port = u.host or u.query.get("host") or "localhost", u.port or 5432
    msg = _sqlite_message(exc)
    if "password" in msg:
        fix = (
            "give the password in the URL (postgresql://USER:PASSWORD@HOST/DB), in PGPASSWORD or in ~/.pgpass (a run "
            "records its URL without the password)"
        )
    elif "does not exist" in msg:
        fix = f"create it first (`createdb -h {host} -p {port} -U {u.username or '$USER'} {u.database}`)"
    else:
        fix = f"is the server running and listening there? (`pg_isready -h {host} -p {port}`)"
    return RunError(
        f"cannot connect to PostgreSQL at {host}:{port} (database {u.database}, user {u.username or 'default'}): "
        f"{msg}. {fix}"
    )


def _pg_tables(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_TABLES_LOCK})")
        SQLModel.metadata.create_all(conn)


def _upgrade_sqlite(engine: Engine) -> None:
    """Add what a run.db from an earlier simulacra lacks: columns with a default (``run_id``), so no row is
    rewritten and that simulacra still reads the file."""
    with engine.begin() as conn:
        for table in SQLModel.metadata.sorted_tables:
            have = {r[1] for r in conn.exec_driver_sql(f"PRAGMA table_info('{table.name}')")}
            for c in table.columns:
                if have and c.name not in have and c.server_default is not None:
                    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {c.name} VARCHAR NOT NULL DEFAULT ''")


class RunStore:
    """Open or create a run's rows; all reads and writes of a run go through here.

    The rows are in ``RUN/run.db``, or, given ``db`` (``postgresql://...``) at ``create``, in that database
    under a new key recorded in ``RUN/meta.json`` with the URL (never its password), where later opens find
    them; ``db`` when opening reconnects differently (another host, a password), recorded for a writer.

    ``lock``: the caller's ``RunLock`` on this run (a writer). With it a run.db is checked fully
    (``PRAGMA quick_check``) before anything is written; without it (a reader) only what is cheap: the WAL,
    when no process is writing the run.
    """

    def __init__(
        self, run_dir: str | Path, *, create: bool = False, lock: RunLock | None = None, db: str | None = None
    ) -> None:
        self.dir = Path(run_dir)
        self.path = self.dir / DB_NAME
        self.key = ""  # the run's rows' run_id
        pointer = None if create else db_pointer(self.dir)
        self.db_url = db or (_PASSWORDS.get(pointer["url"], pointer["url"]) if pointer else None)
        if self.db_url is not None:  # may hold a password: never written anywhere
            self._open_shared(create, pointer, lock)
            return
        if not create:
            require_run_dir(self.dir)
        if create:
            self.dir.mkdir(parents=True, exist_ok=True)
        else:
            self._check_wal(lock)
        self.engine = create_engine(f"sqlite:///{self.path}")
        sa_event.listen(self.engine, "connect", _wal)
        try:
            if create:
                SQLModel.metadata.create_all(self.engine)
            else:
                _upgrade_sqlite(self.engine)
                self._check()
                if lock is not None:
                    self.verify()
        except (DatabaseError, sqlite3.DatabaseError) as exc:
            self.engine.dispose()
            raise damaged(self.dir, f"not a readable run database ({_sqlite_message(exc)})") from exc
        except RunError:
            self.engine.dispose()
            raise

    def _open_shared(self, create: bool, pointer: dict | None, lock: RunLock | None) -> None:
        url = self.db_url or ""
        if not create and pointer is None:
            require_run_dir(self.dir)
            raise RunError(
                f"{self.dir} keeps its rows in its own {DB_NAME}, not in a database: leave out --db for this run"
            )
        self.engine = _pg_engine(url)
        try:
            with self.engine.connect():
                pass
        except DatabaseError as exc:
            raise _unreachable(url, exc) from exc
        if create:
            self.dir.mkdir(parents=True, exist_ok=True)
            _pg_tables(self.engine)
            self.key = uuid.uuid4().hex
            _write_pointer(self.dir, self.pointer)
            return
        assert pointer is not None
        self.key = str(pointer["run"])
        self._check()
        if lock is not None and mask_url(url) != pointer["url"]:
            _write_pointer(self.dir, self.pointer)  # the server moved (or was named anew): for the next resume

    @property
    def shared(self) -> bool:
        """Whether the rows are in a database shared by runs (not the run's own run.db)."""
        return self.db_url is not None

    @property
    def where(self) -> str:
        """Where the rows are, for messages: the run.db file, or the run's key and database (no password)."""
        return f"run {self.key} in {mask_url(self.db_url)}" if self.db_url else str(self.path)

    @property
    def pointer(self) -> dict:
        """What ``meta.json`` records of a shared database's run (``db``): the URL without password, the key."""
        return {"url": mask_url(self.db_url), "run": self.key} if self.db_url else {}

    def _check_wal(self, lock: RunLock | None) -> None:
        """Refuse a WAL whose committed steps SQLite would drop, before SQLite touches it (a read-write
        connection's close would checkpoint the readable part and delete the rest)."""
        wal = self.path.with_name(DB_NAME + "-wal")
        if not wal.exists() or wal.stat().st_size == 0:
            return
        probe = lock
        if probe is None:  # a reader: only when no process is writing the run (a live WAL is its writer's)
            try:
                probe = RunLock(self.dir).acquire(shared=True)
            except RunError:
                return
        try:
            problem = wal_damage(self.path)
        finally:
            if probe is not lock:
                probe.release()
        if problem:
            raise damaged(self.dir, problem)

    def _check(self) -> None:
        with Session(self.engine) as s:
            try:
                row = s.exec(select(RunRow).where(RunRow.run_id == self.key)).first()
            except OperationalError as exc:
                if self.shared:
                    raise _unreachable(self.db_url or "", exc) from exc
                if "malformed" in str(exc.orig) or "not a database" in str(exc.orig):
                    raise
                raise RunError(f"{self.path}: not a simulacra run database ({exc.orig})") from exc
            except DatabaseError as exc:  # PostgreSQL: no run table there
                if not self.shared:
                    raise
                raise RunError(
                    f"{self.where}: that database holds no simulacra runs ({_sqlite_message(exc)}); does "
                    f"{self.dir / META_NAME} name the right one? (`simulacra runs --db URL` lists a database's runs)"
                ) from exc
        if row is None and self.shared:
            raise RunError(
                f"{self.where}: no such run in the database (stopped before it started properly, or deleted, or "
                f"the database named in {self.dir / META_NAME} is another one); nothing can be resumed: delete "
                f"{self.dir} and start the run again"
            )
        if row is None:
            raise RunError(
                f"{self.path}: the run table is empty; the run was stopped before it started properly. "
                f"Nothing in it can be resumed: delete {self.dir} and start the run again"
            )
        if row.schema_version != SCHEMA_VERSION:
            raise RunError(
                f"{self.where}: written by run-database version {row.schema_version}; this simulacra reads version "
                f"{SCHEMA_VERSION}. Use the simulacra version that made the run, or start a new run"
            )

    def verify(self) -> None:
        """``PRAGMA quick_check`` (every page and row, not the indexes' contents): RunError if damaged.
        A shared database is the server's to keep whole: nothing to check here."""
        if self.shared:
            return
        with self.engine.connect() as conn:
            rows = [r[0] for r in conn.exec_driver_sql("PRAGMA quick_check(5)")]
        if rows != ["ok"]:
            raise damaged(self.dir, f"failed SQLite's check: {'; '.join(rows)}")

    def problems(self) -> list[str]:
        """What a cheap look finds wrong (the last step's state not JSON), for `runs`, `replay`, `export`."""
        if self.shared:
            return []
        try:
            with self.engine.connect() as conn:
                row = conn.exec_driver_sql(
                    "SELECT step, json_valid(state) FROM step ORDER BY step DESC LIMIT 1"
                ).first()
        except (DatabaseError, sqlite3.DatabaseError) as exc:
            return [f"its steps cannot be read ({_sqlite_message(exc)})"]
        if row is not None and not row[1]:
            return [f"the saved state of step {row[0]} (the last) is not valid JSON; {recovery_hint(self.dir)}"]
        return []

    def delete_rows(self) -> None:
        """Remove this run's rows from a shared database (a fork or start that failed half-way); its own
        ``run.db`` goes with its directory instead."""
        if not self.shared:
            return
        from sqlalchemy import delete

        tables = SQLModel.metadata.tables
        with Session(self.engine) as s:
            for name, _ in (*_STEP_TABLES, ("run", None)):
                s.execute(delete(tables[name]).where(tables[name].c.run_id == self.key))
            s.commit()

    def close(self) -> None:
        if self.shared:
            return  # the process's pool for that database stays, for the next run opened there
        try:
            self.engine.dispose()
        except (DatabaseError, sqlite3.DatabaseError):
            pass  # closing checkpoints the WAL; on a full disk that fails and the WAL simply stays

    @property
    def write_hint(self) -> str:
        """What to do when a write fails."""
        if self.shared:
            u = make_url(self.db_url or "")
            return f"Check that the PostgreSQL server at {u.host or 'localhost'}:{u.port or 5432} is up"
        return "Free disk space"

    @contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """A read that fails on a damaged file becomes a RunError naming the file, what and how to recover."""
        try:
            yield
        except (DatabaseError, sqlite3.DatabaseError) as exc:
            if self.shared:
                raise RunError(
                    f"{self.where}: could not read {what} ({_sqlite_message(exc)}). {self.write_hint}, then try again"
                ) from exc
            raise damaged(self.dir, f"could not read {what} ({_sqlite_message(exc)})") from exc

    def _run_row(self, s: Session) -> RunRow:
        return s.exec(select(RunRow).where(RunRow.run_id == self.key)).one()

    def start(
        self, *, scenario: str, seed: int, model: str, model_sha256: str, settings: dict, steps_target: int
    ) -> None:
        now = _now()
        with Session(self.engine) as s:
            s.add(
                RunRow(
                    run_id=self.key,
                    schema_version=SCHEMA_VERSION,
                    scenario=scenario,
                    seed=seed,
                    model=model,
                    model_sha256=model_sha256,
                    settings=json.dumps(settings),
                    created_at=now,
                    updated_at=now,
                    steps_target=steps_target,
                    dir=f"{socket.gethostname()}:{self.dir.resolve()}" if self.shared else "",
                )
            )
            s.commit()

    def info(self) -> RunRow:
        with self._reading("the run row"), Session(self.engine) as s:
            row = self._run_row(s)
            s.expunge(row)
            return row

    def set_status(self, status: str, message: str = "", steps_target: int | None = None) -> None:
        with Session(self.engine) as s:
            row = self._run_row(s)
            row.status, row.message, row.updated_at = status, message, _now()
            if steps_target is not None:
                row.steps_target = steps_target
            s.add(row)
            s.commit()

    def commit_step(self, data: StepData, memories: MemoryStore) -> None:
        """Write one step atomically (and nothing if anything fails).

        Only the step after the last saved one is accepted (RunError otherwise: the state in memory
        is stale, e.g. another process ran the run since it was opened); the step that reaches the
        run's target marks the run finished in the same transaction, so a run is never left with
        every step saved but "running"."""
        key = self.key
        with Session(self.engine) as s:
            last = s.exec(select(func.max(StepRow.step)).where(StepRow.run_id == key)).one()
            expected = 0 if last is None else last + 1
            if data.step != expected:
                raise RunError(
                    f"{self.where}: step {data.step} cannot be saved: the last saved step is {last}, so the state in "
                    f"memory is stale (another process ran this run since it was opened?). Nothing was written; "
                    f"resume again with `simulacra resume {self.dir}`"
                )
            s.add(
                StepRow(
                    run_id=key,
                    step=data.step,
                    sim_time=data.sim_time,
                    wall_s=data.wall_s,
                    frame=json.dumps(data.frame, ensure_ascii=False),
                    state=json.dumps(data.state, ensure_ascii=False),
                )
            )
            s.flush()  # the step row first: a clash is reported on ``step``, not on a table flushed before it
            for e in data.events:
                payload = {k: v for k, v in e.items() if k not in ("step", "kind", "resident")}
                s.add(
                    EventRow(
                        run_id=key, step=data.step, kind=e["kind"], resident=e.get("resident"), data=json.dumps(payload)
                    )
                )
            for c in data.calls:
                s.add(
                    CallRow(
                        run_id=key,
                        step=data.step,
                        purpose=c.meta.get("purpose"),
                        resident=c.meta.get("resident"),
                        prompt_tokens=c.prompt_tokens,
                        cached_tokens=c.cached_tokens,
                        completion_tokens=c.completion_tokens,
                        wall_s=float(c.timings.get("wall_s", 0.0)),
                        record=c.model_dump_json(),
                    )
                )
            for name, value in data.metrics.items():
                s.add(MetricRow(run_id=key, step=data.step, name=name, value=float(value)))
            memories.flush(s, key)
            row = self._run_row(s)
            row.steps_done, row.updated_at = data.step, _now()
            if row.steps_target and data.step >= row.steps_target:
                row.status, row.message = "finished", ""
            s.add(row)
            s.commit()

    def rewrite_last_step(self, data: StepData, memories: MemoryStore) -> None:
        """Replace the last step's frame, state and metrics and add events and memories, in one transaction.

        For an intervention at a fork: the step's saved state becomes the town after the intervention, so
        ``resume`` continues from it. ``data.calls`` are not written (an intervention makes no calls)."""
        key = self.key
        with Session(self.engine) as s:
            row = s.get(StepRow, {"step": data.step, "run_id": key})
            last = s.exec(select(func.max(StepRow.step)).where(StepRow.run_id == key)).one()
            if row is None or data.step != last:
                raise RunError(
                    f"{self.where}: step {data.step} is not the last saved step ({last}); nothing was written"
                )
            row.frame = json.dumps(data.frame, ensure_ascii=False)
            row.state = json.dumps(data.state, ensure_ascii=False)
            s.add(row)
            for e in data.events:
                payload = {k: v for k, v in e.items() if k not in ("step", "kind", "resident")}
                s.add(
                    EventRow(
                        run_id=key, step=data.step, kind=e["kind"], resident=e.get("resident"), data=json.dumps(payload)
                    )
                )
            for old in s.exec(select(MetricRow).where(MetricRow.run_id == key, MetricRow.step == data.step)).all():
                s.delete(old)
            s.flush()
            for name, value in data.metrics.items():
                s.add(MetricRow(run_id=key, step=data.step, name=name, value=float(value)))
            memories.flush(s, key)
            s.commit()

    def set_settings(self, settings: dict) -> None:
        """Replace the run's settings (a fork's backend, mind config and lineage after its interventions)."""
        with Session(self.engine) as s:
            row = self._run_row(s)
            row.settings, row.updated_at = json.dumps(settings), _now()
            s.add(row)
            s.commit()

    def last_step(self) -> StepRow | None:
        query = select(StepRow).where(StepRow.run_id == self.key).order_by(col(StepRow.step).desc())
        with self._reading("the last step"), Session(self.engine) as s:
            return s.exec(query).first()

    def step_row(self, step: int) -> StepRow:
        with self._reading(f"step {step}"), Session(self.engine) as s:
            row = s.get(StepRow, {"step": step, "run_id": self.key})
        if row is None:
            raise KeyError(f"step {step} is not in {self.where}")
        return row

    def wall_s(self) -> float:
        """Wall seconds of every committed step (a resumed run's summary counts its earlier sessions)."""
        with self._reading("the steps' wall times"), Session(self.engine) as s:
            return float(s.exec(select(func.sum(StepRow.wall_s)).where(StepRow.run_id == self.key)).one() or 0.0)

    def frame_at(self, step: int) -> dict:
        return json.loads(self.step_row(step).frame)

    def events(self, since_step: int = -1) -> list[dict]:
        query = select(EventRow).where(EventRow.run_id == self.key, EventRow.step > since_step)
        with self._reading("the events"), Session(self.engine) as s:
            rows = s.exec(query.order_by(col(EventRow.id))).all()
        return [{"step": r.step, "kind": r.kind, "resident": r.resident, **json.loads(r.data)} for r in rows]

    def calls(self, after_step: int = -1, up_to: int | None = None) -> list[CallRecord]:
        """The recorded calls of steps ``after_step`` + 1 .. ``up_to`` (all by default), in recorded order."""
        query = select(CallRow).where(CallRow.run_id == self.key, CallRow.step > after_step)
        if up_to is not None:
            query = query.where(CallRow.step <= up_to)
        with self._reading("the recorded LLM calls"), Session(self.engine) as s:
            rows = s.exec(query.order_by(col(CallRow.id))).all()
        return [CallRecord.model_validate_json(r.record) for r in rows]

    def metrics(self) -> dict[str, list[tuple[int, float]]]:
        query = select(MetricRow).where(MetricRow.run_id == self.key).order_by(col(MetricRow.step))
        with self._reading("the metrics"), Session(self.engine) as s:
            rows = s.exec(query).all()
        out: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            out.setdefault(r.name, []).append((r.step, r.value))
        return out

    def load_memories(self, memories: MemoryStore) -> None:
        with self._reading("the memories"), Session(self.engine) as s:
            try:
                memories.load(s, self.key)
            except ValueError as exc:
                raise damaged(self.dir, f"its memory table is inconsistent ({exc})") from exc


def list_runs(root: str | Path) -> list[tuple[Path, RunRow | None, str]]:
    """Every run directory under ``root``: (path, its run row or None, a problem if it cannot be read)."""
    out = []
    dirs = {p.parent for p in Path(root).glob(f"*/{DB_NAME}")}
    dirs |= {p.parent for p in Path(root).glob(f"*/{META_NAME}") if db_pointer(p.parent) is not None}
    for d in sorted(dirs):
        try:
            store = RunStore(d)
            try:
                out.append((d, store.info(), "; ".join(store.problems())))
            finally:
                store.close()
        except RunError as exc:
            out.append((d, None, str(exc)))
    return out


def list_db_runs(url: str) -> list[RunRow]:
    """Every run in a shared database, oldest first (``simulacra runs --db URL``)."""
    engine = _pg_engine(url)
    try:
        if not inspect(engine).has_table(RunRow.__tablename__):
            return []
        with Session(engine) as s:
            rows = list(s.exec(select(RunRow).order_by(col(RunRow.created_at))).all())
            for r in rows:
                s.expunge(r)
    except OperationalError as exc:
        raise _unreachable(url, exc) from exc
    return rows


def _sqlite_message(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return str(orig.args[0] if orig.args else orig).splitlines()[0]


def _in_database(run_dir: str | Path) -> bool:
    """Whether a run directory's rows are in a shared database (no run.db of its own)."""
    return not (Path(run_dir) / DB_NAME).exists() and db_pointer(run_dir) is not None


def damaged(run_dir: Path, what: str) -> RunError:
    """A RunError for a damaged run: what is wrong, in which file, and how to continue (never in place)."""
    where = Path(run_dir) / (META_NAME if _in_database(run_dir) else DB_NAME)
    return RunError(f"{where}: {what}. Nothing was written to it. {recovery_hint(run_dir)}")


WAL_MAGIC = (0x377F0682, 0x377F0683)
WAL_HEADER = 32
FRAME_HEADER = 24


def _wal_checksum(data: bytes, big_endian: bool, s1: int = 0, s2: int = 0) -> tuple[int, int]:
    """SQLite's WAL checksum (pairs of 32-bit words, cumulative)."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    mask = 0xFFFFFFFF
    for i in range(0, len(words), 2):
        s1 = (s1 + words[i] + s2) & mask
        s2 = (s2 + words[i + 1] + s1) & mask
    return s1, s2


def wal_damage(db_path: str | Path) -> str:
    """'' if ``run.db-wal`` is sound; else where it is damaged and what SQLite would silently drop.

    SQLite reads a WAL up to the first frame whose checksum fails and ignores the rest, even committed
    transactions (steps) after it. A break in the last transaction only (a write cut off by a kill, never
    reported as committed) is normal; a commit frame after the break means saved steps would be lost.
    """
    wal = Path(str(db_path) + "-wal")
    data = wal.read_bytes()
    if len(data) < WAL_HEADER:
        return ""
    magic, version, page_size, _ckpt, salt1, salt2, c1, c2 = struct.unpack(">8I", data[:WAL_HEADER])
    frame = FRAME_HEADER + page_size
    n_frames = (len(data) - WAL_HEADER) // frame if page_size else 0
    if magic not in WAL_MAGIC or version != 3007000 or not 512 <= page_size <= 65536:
        return f"{wal.name} has a damaged header (bytes 0-31), so SQLite would ignore all {n_frames} frame(s) in it"
    big = magic & 1 == 1
    s1, s2 = _wal_checksum(data[:24], big)
    if (s1, s2) != (c1, c2):
        commits = sum(1 for i in range(n_frames) if struct.unpack_from(">I", data, WAL_HEADER + i * frame + 4)[0])
        if commits:
            return (
                f"{wal.name} has a damaged header (its checksum fails), so SQLite would ignore the {commits} "
                f"committed transaction(s) in it"
            )
        return ""
    broken_at = None
    for i in range(n_frames):
        off = WAL_HEADER + i * frame
        head = data[off : off + FRAME_HEADER]
        _page, commit, fs1, fs2, fc1, fc2 = struct.unpack(">6I", head)
        if (fs1, fs2) != (salt1, salt2):
            if broken_at is None:
                return ""  # a frame of an earlier generation of the WAL: the live part ended before it
            continue
        if broken_at is None:
            s1, s2 = _wal_checksum(head[:8], big, s1, s2)
            s1, s2 = _wal_checksum(data[off + FRAME_HEADER : off + frame], big, s1, s2)
            if (s1, s2) != (fc1, fc2):
                broken_at = i
        elif commit:  # a committed transaction after the break: SQLite would never read it
            lost = sum(
                1
                for j in range(i, n_frames)
                if struct.unpack_from(">2I", data, WAL_HEADER + j * frame + 8) == (salt1, salt2)
                and struct.unpack_from(">I", data, WAL_HEADER + j * frame + 4)[0]
            )
            return (
                f"{wal.name} is damaged at frame {broken_at + 1} (byte {WAL_HEADER + broken_at * frame}): its "
                f"checksum fails, so SQLite would silently drop the {lost} committed transaction(s) (steps) after it"
            )
    return ""


@contextmanager
def salvage_copy(run_dir: str | Path) -> Iterator[sqlite3.Connection]:
    """A connection to a temporary copy of ``run.db`` (and its WAL) that reads as much as SQLite can.

    The run's own files are only read. A truncated copy gets its header's page count set to the pages
    that are there, so the rows in them can still be read.
    """
    src = Path(run_dir) / DB_NAME
    tmp = Path(tempfile.mkdtemp(prefix="simulacra-salvage-"))
    try:
        dst = tmp / DB_NAME
        shutil.copyfile(src, dst)
        wal = src.with_name(DB_NAME + "-wal")
        if wal.exists():
            shutil.copyfile(wal, tmp / (DB_NAME + "-wal"))
        with dst.open("r+b") as f:
            head = f.read(100)
            if len(head) == 100 and head[:16] == b"SQLite format 3\x00":
                page = struct.unpack_from(">H", head, 16)[0] or 65536
                pages = struct.unpack_from(">I", head, 28)[0]
                have = dst.stat().st_size // page
                if have < pages:
                    f.truncate(have * page)
                    f.seek(28)
                    f.write(struct.pack(">I", have))
        conn = sqlite3.connect(dst)
        try:
            yield conn
        finally:
            conn.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_STEP_TABLES = (("step", "step"), ("event", "step"), ("call", "step"), ("metric", "step"), ("memory", "created_step"))
_STATE_KEYS = {"town", "minds", "society"}


def last_good_step(conn: sqlite3.Connection) -> tuple[int | None, list[str]]:
    """The last step whose state parses and whose rows (and every earlier step's) can all be read; and, for
    each later step, why not."""
    notes: list[str] = []
    top = None
    for q in ("SELECT max(step) FROM step", "SELECT steps_done FROM run", "SELECT steps_target FROM run"):
        try:
            top = conn.execute(q).fetchone()[0]
        except (sqlite3.DatabaseError, TypeError):
            continue
        if top is not None:
            break
    if top is None:
        return None, ["no step can be read"]
    for n in range(int(top), -1, -1):
        try:
            row = conn.execute("SELECT state FROM step WHERE step = ?", (n,)).fetchone()
        except sqlite3.DatabaseError as exc:
            notes.append(f"step {n} cannot be read ({_sqlite_message(exc)})")
            continue
        if row is None:
            notes.append(f"step {n} is missing")
            continue
        try:
            state = json.loads(row[0])
            if not isinstance(state, dict) or not _STATE_KEYS <= state.keys():
                raise ValueError("it lacks the town, minds or society")
        except ValueError as exc:
            notes.append(f"the saved state of step {n} does not parse ({str(exc)[:80]})")
            continue
        bad = _unreadable_table(conn, n)
        if bad:
            notes.append(f"the {bad} rows up to step {n} cannot all be read")
            continue
        return n, notes
    return None, notes


def _unreadable_table(conn: sqlite3.Connection, step: int) -> str:
    for table, column in _STEP_TABLES:
        try:
            for _ in conn.execute(f"SELECT * FROM {table} WHERE {column} <= ?", (step,)):
                pass
        except sqlite3.DatabaseError:
            return table
    try:
        conn.execute("SELECT * FROM run").fetchall()
    except sqlite3.DatabaseError:
        return "run"
    return ""


def recovery_hint(run_dir: str | Path) -> str:
    """How to continue a damaged run: from its last good step, in a new directory."""
    if _in_database(run_dir):
        return (
            f"Continue from an earlier step in a new run directory with `simulacra resume {run_dir} --from-step N` "
            f"({run_dir} itself is left as it is)"
        )
    try:
        with salvage_copy(run_dir) as conn:
            good, notes = last_good_step(conn)
    except (OSError, sqlite3.Error) as exc:
        return f"Nothing in it can be read back ({exc}); restore it from a backup or start a new run"
    if good is None:
        return f"No step in it can be read back ({'; '.join(notes[:3])}); restore it from a backup or start a new run"
    why = f" ({'; '.join(notes[:3])})" if notes else ""
    return (
        f"Steps 0-{good} are intact{why}. Continue from step {good} in a new run directory with "
        f"`simulacra resume {run_dir} --from-step {good}` ({run_dir} itself is left as it is)"
    )


@contextmanager
def read_only(run_dir: str | Path) -> Iterator[RunStore]:
    """A ``RunStore`` over a temporary copy of a run's database, so reading it never touches the run's files
    (not even SQLite's ``-wal`` / ``-shm``): what a fork or a comparison reads its parents through. A run in a
    shared database is read there (a reader changes nothing on the server, and sees whole steps only)."""
    src = Path(run_dir)
    require_run_dir(src)
    if _in_database(src):
        shared = RunStore(src)
        try:
            yield shared
        finally:
            shared.close()
        return
    tmp = Path(tempfile.mkdtemp(prefix="simulacra-read-"))
    store: RunStore | None = None
    try:
        for name in (DB_NAME, DB_NAME + "-wal"):
            if (src / name).exists():
                shutil.copyfile(src / name, tmp / name)
        store = RunStore(tmp)
        yield store
    finally:
        if store is not None:
            store.close()
        shutil.rmtree(tmp, ignore_errors=True)


def fork_run(src_dir: str | Path, dest_dir: str | Path, step: int, *, db: str | None = None) -> Path:
    """Copy a run's steps 0..``step`` (read from a temporary copy: the source is never written) into a new run
    directory, to be resumed from there. Memories made after ``step`` are left out; the memories kept carry
    their last-retrieved times as last saved, capped at ``step``'s time (the one thing not kept per step), so
    the continuation is close to, not identical with, the original's. A run in a shared database is copied
    there, under a new key (``db``: how to reach it, as for ``RunStore``)."""
    src, dest = Path(src_dir), Path(dest_dir)
    if dest.exists() and any(p.name != LOCK_NAME for p in dest.iterdir()):
        raise RunError(f"{dest} already exists and is not empty; choose another directory with --out")
    if _in_database(src):
        pointer = _fork_shared(src, dest, step, db)
    else:
        _fork_sqlite(src, dest, step)
        pointer = {}
    for name in ("scenario.yaml", "meta.json"):
        if (src / name).exists():
            shutil.copyfile(src / name, dest / name)
    meta = dest / "meta.json"
    if meta.exists():
        try:
            data = json.loads(meta.read_text())
            data["continued_from"] = {"run": str(src), "step": step}
            if pointer:
                data["db"] = pointer
            meta.write_text(json.dumps(data, indent=1, default=str))
        except ValueError:
            pass
    return dest


def _fork_shared(src: Path, dest: Path, step: int, db: str | None) -> dict:
    """``fork_run`` in a shared database: one INSERT ... SELECT per table, in one transaction."""

    source = RunStore(src, db=db)
    last = source.last_step()
    if last is None or not 0 <= step <= last.step:
        raise RunError(f"{src}: step {step} cannot be continued: it has steps 0-{last.step if last else None}")
    sim_time = source.step_row(step).sim_time
    target = RunStore(dest, create=True, db=source.db_url)
    try:
        _copy_shared(source, target, src, dest, step, sim_time)
    except BaseException:
        target.delete_rows()  # the run row made above: a failed copy leaves nothing
        raise
    return target.pointer


def _copy_shared(source: RunStore, target: RunStore, src: Path, dest: Path, step: int, sim_time: Any) -> None:
    from sqlalchemy import insert, literal

    tables = SQLModel.metadata.tables
    with Session(source.engine) as s:
        for name, column in (("run", None), *_STEP_TABLES):
            t = tables[name]
            cols = [c for c in t.columns if not (c.name == "id" and name in ("event", "call"))]  # new serial ids
            values: dict[str, Any] = {"run_id": literal(target.key)}
            if name == "run":
                values |= {
                    "status": literal("paused"),
                    "steps_done": literal(step),
                    "updated_at": literal(_now().replace(tzinfo=None)),
                    "message": literal(f"continued from {src} at step {step}"),
                    "dir": literal(f"{socket.gethostname()}:{dest.resolve()}"),
                }
            if name == "memory":
                values["last_retrieved_at"] = func.least(t.c.last_retrieved_at, literal(sim_time))
            query = select(*[values.get(c.name, c) for c in cols]).where(t.c.run_id == source.key)
            if column is not None:
                query = query.where(t.c[column] <= step)
            if "id" in t.c and name in ("event", "call"):
                query = query.order_by(t.c.id)
            s.execute(insert(t).from_select([c.name for c in cols], query))
        s.commit()


def _fork_sqlite(src: Path, dest: Path, step: int) -> None:
    with salvage_copy(src) as conn:
        good, notes = last_good_step(conn)
        if good is None or step > good or step < 0:
            best = "no step can be continued" if good is None else f"the last good step is {good}"
            raise RunError(f"{src}: step {step} cannot be continued: {best} ({'; '.join(notes[:3]) or 'no such step'})")
        bad = _unreadable_table(conn, step)
        if bad:
            raise RunError(f"{src}: the {bad} rows up to step {step} cannot all be read; try an earlier --from-step")
        sim_time = conn.execute("SELECT sim_time FROM step WHERE step = ?", (step,)).fetchone()[0]
        store = RunStore(dest, create=True)
        store.close()
        out = sqlite3.connect(dest / DB_NAME)
        try:
            for table, column in (("run", None), *_STEP_TABLES):
                cur = conn.execute(
                    f"SELECT * FROM {table}" + (f" WHERE {column} <= ?" if column else ""), (step,) if column else ()
                )
                names = [d[0] for d in cur.description]
                mine = {r[1] for r in out.execute(f"PRAGMA table_info('{table}')")}
                cols = [c for c in names if c in mine]  # from an older file: the columns both have
                rows = [dict(zip(names, r, strict=True)) for r in cur]
                for r in rows:
                    if table == "run":
                        r.update(
                            status="paused",
                            steps_done=step,
                            updated_at=_now().strftime("%Y-%m-%d %H:%M:%S.%f"),
                            message=f"continued from {src} at step {step}",
                        )
                    if table == "memory" and r["last_retrieved_at"] > sim_time:
                        r["last_retrieved_at"] = sim_time
                marks = ", ".join("?" for _ in cols)
                out.executemany(
                    f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})",
                    [tuple(r[c] for c in cols) for r in rows],
                )
            out.commit()
        finally:
            out.close()


__all__ = [
    "DB_NAME",
    "LOCK_NAME",
    "META_NAME",
    "SCHEMA_VERSION",
    "CallRow",
    "EventRow",
    "MemoryRecord",
    "MetricRow",
    "RunBusy",
    "RunError",
    "RunLock",
    "RunRow",
    "RunStore",
    "StepData",
    "StepRow",
    "damaged",
    "db_pointer",
    "fork_run",
    "holds_run",
    "is_db_url",
    "last_good_step",
    "list_db_runs",
    "list_runs",
    "mask_url",
    "read_only",
    "recovery_hint",
    "require_run_dir",
    "salvage_copy",
    "wal_damage",
]
