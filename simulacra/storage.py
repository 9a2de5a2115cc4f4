"""A run's durable record: ``run.db`` (SQLite through SQLModel, WAL) in the run directory.

One transaction per step writes everything the step produced: the world and minds' state, the
viewer frame, the events, the LLM calls, the memories added or touched, the metrics. Killed at any
moment, the database holds whole steps only, so a run resumes from its last committed step with
nothing lost and nothing written twice.

Tables: ``run`` (one row: what was run and how far it got), ``step``, ``event``, ``call``,
``metric``, and the agents' ``memory`` table.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import NaiveDatetime
from sqlalchemy import event as sa_event
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlmodel import Field, Session, SQLModel, col, create_engine, func, select

from simulacra.agents.memory import MemoryRecord, MemoryStore
from simulacra.inference.recording import CallRecord

SCHEMA_VERSION = 1
DB_NAME = "run.db"


class RunError(Exception):
    """A run directory that cannot be used, with what to do about it."""


class RunRow(SQLModel, table=True):
    __tablename__ = "run"

    id: int = Field(default=1, primary_key=True)
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


class StepRow(SQLModel, table=True):
    __tablename__ = "step"

    step: int = Field(primary_key=True)
    sim_time: NaiveDatetime
    wall_s: float
    frame: str  # JSON: what the viewer draws at this step
    state: str  # JSON: everything needed to continue from this step


class EventRow(SQLModel, table=True):
    __tablename__ = "event"

    id: int | None = Field(default=None, primary_key=True)
    step: int = Field(index=True)
    kind: str = Field(index=True)
    resident: str | None = None
    data: str  # JSON


class CallRow(SQLModel, table=True):
    __tablename__ = "call"

    id: int | None = Field(default=None, primary_key=True)
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
    value: float


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


class RunStore:
    """Open or create ``run.db`` in a run directory; all reads and writes of a run go through here."""

    def __init__(self, run_dir: str | Path, *, create: bool = False) -> None:
        self.dir = Path(run_dir)
        self.path = self.dir / DB_NAME
        if not create and not self.path.exists():
            hint = "list runs with `simulacra runs`" if not self.dir.exists() else f"{DB_NAME} is missing in it"
            raise RunError(f"{self.dir}: not a run directory ({hint})")
        if create:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(f"sqlite:///{self.path}")
        sa_event.listen(self.engine, "connect", _wal)
        try:
            if create:
                SQLModel.metadata.create_all(self.engine)
            else:
                self._check()
        except (DatabaseError, sqlite3.DatabaseError) as exc:
            self.engine.dispose()
            raise RunError(
                f"{self.path}: not a readable run database ({str(exc.args[0]).splitlines()[0]}); "
                "it may be corrupted: start a new run, or restore the file from a backup"
            ) from exc

    def _check(self) -> None:
        with Session(self.engine) as s:
            try:
                row = s.exec(select(RunRow)).first()
            except OperationalError as exc:
                raise RunError(f"{self.path}: not a simulacra run database ({exc.orig})") from exc
        if row is None:
            raise RunError(f"{self.path}: the run table is empty; the run never started properly")
        if row.schema_version != SCHEMA_VERSION:
            raise RunError(
                f"{self.path}: written by run-database version {row.schema_version}; this simulacra reads version "
                f"{SCHEMA_VERSION}. Use the simulacra version that made the run, or start a new run"
            )

    def close(self) -> None:
        self.engine.dispose()

    # ---- the run row -----------------------------------------------------------------------------

    def start(
        self, *, scenario: str, seed: int, model: str, model_sha256: str, settings: dict, steps_target: int
    ) -> None:
        now = _now()
        with Session(self.engine) as s:
            s.add(
                RunRow(
                    schema_version=SCHEMA_VERSION,
                    scenario=scenario,
                    seed=seed,
                    model=model,
                    model_sha256=model_sha256,
                    settings=json.dumps(settings),
                    created_at=now,
                    updated_at=now,
                    steps_target=steps_target,
                )
            )
            s.commit()

    def info(self) -> RunRow:
        with Session(self.engine) as s:
            row = s.exec(select(RunRow)).one()
            s.expunge(row)
            return row

    def set_status(self, status: str, message: str = "", steps_target: int | None = None) -> None:
        with Session(self.engine) as s:
            row = s.exec(select(RunRow)).one()
            row.status, row.message, row.updated_at = status, message, _now()
            if steps_target is not None:
                row.steps_target = steps_target
            s.add(row)
            s.commit()

    # ---- steps -----------------------------------------------------------------------------------

    def commit_step(self, data: StepData, memories: MemoryStore) -> None:
        """Write one step atomically (and nothing if anything fails)."""
        with Session(self.engine) as s:
            s.add(
                StepRow(
                    step=data.step,
                    sim_time=data.sim_time,
                    wall_s=data.wall_s,
                    frame=json.dumps(data.frame, ensure_ascii=False),
                    state=json.dumps(data.state, ensure_ascii=False),
                )
            )
            for e in data.events:
                payload = {k: v for k, v in e.items() if k not in ("step", "kind", "resident")}
                s.add(EventRow(step=data.step, kind=e["kind"], resident=e.get("resident"), data=json.dumps(payload)))
            for c in data.calls:
                s.add(
                    CallRow(
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
                s.add(MetricRow(step=data.step, name=name, value=float(value)))
            memories.flush(s)
            row = s.exec(select(RunRow)).one()
            row.steps_done, row.updated_at = data.step, _now()
            s.add(row)
            s.commit()

    def last_step(self) -> StepRow | None:
        with Session(self.engine) as s:
            return s.exec(select(StepRow).order_by(col(StepRow.step).desc())).first()

    def step_row(self, step: int) -> StepRow:
        with Session(self.engine) as s:
            row = s.get(StepRow, step)
        if row is None:
            raise KeyError(f"step {step} is not in {self.path}")
        return row

    def wall_s(self) -> float:
        """Wall seconds of every committed step (a resumed run's summary counts its earlier sessions)."""
        with Session(self.engine) as s:
            return float(s.exec(select(func.sum(StepRow.wall_s))).one() or 0.0)

    def frame_at(self, step: int) -> dict:
        return json.loads(self.step_row(step).frame)

    def events(self, since_step: int = -1) -> list[dict]:
        with Session(self.engine) as s:
            rows = s.exec(select(EventRow).where(EventRow.step > since_step).order_by(col(EventRow.id))).all()
        return [{"step": r.step, "kind": r.kind, "resident": r.resident, **json.loads(r.data)} for r in rows]

    def calls(self) -> list[CallRecord]:
        with Session(self.engine) as s:
            rows = s.exec(select(CallRow).order_by(col(CallRow.id))).all()
        return [CallRecord.model_validate_json(r.record) for r in rows]

    def metrics(self) -> dict[str, list[tuple[int, float]]]:
        with Session(self.engine) as s:
            rows = s.exec(select(MetricRow).order_by(col(MetricRow.step))).all()
        out: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            out.setdefault(r.name, []).append((r.step, r.value))
        return out

    def load_memories(self, memories: MemoryStore) -> None:
        with Session(self.engine) as s:
            memories.load(s)


def list_runs(root: str | Path) -> list[tuple[Path, RunRow | None, str]]:
    """Every run directory under ``root``: (path, its run row or None, a problem if it cannot be read)."""
    out = []
    for db in sorted(Path(root).glob(f"*/{DB_NAME}")):
        try:
            store = RunStore(db.parent)
            out.append((db.parent, store.info(), ""))
            store.close()
        except RunError as exc:
            out.append((db.parent, None, str(exc)))
    return out


__all__ = [
    "DB_NAME",
    "SCHEMA_VERSION",
    "CallRow",
    "EventRow",
    "MemoryRecord",
    "MetricRow",
    "RunError",
    "RunRow",
    "RunStore",
    "StepData",
    "StepRow",
    "list_runs",
]
