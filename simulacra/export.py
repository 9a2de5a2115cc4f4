"""A run's database as analysis tables: events, memories, LLM calls and metrics, as Parquet or CSV.

``run.db`` (or the run's rows in a shared database) is built to resume and replay a run; researchers
want flat tables for pandas, R or DuckDB. ``export_run`` writes one file per table into ``RUN/export/``
(the run's own folder, so the export travels with the run). Event payloads are flattened into
columns where a field always holds one kind of plain value; anything else (lists, nested objects,
mixed types) stays in a JSON ``data`` column. Memory embeddings are left out (binary, and recomputable from the text).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from sqlmodel import Session, col, select

from simulacra.agents.memory import MemoryRecord
from simulacra.inference.backends.recording import CallRecord
from simulacra.storage import CallRow, EventRow, MetricRow, RunStore, StepRow

FORMATS = ("parquet", "csv")
EVENT_COLUMNS = ["id", "step", "kind", "resident"]
MEMORY_COLUMNS = [n for n in MemoryRecord.model_fields if n not in ("embedding", "run_id")]  # less the vectors
CALL_COLUMNS = [
    "id",
    "step",
    "purpose",
    "resident",
    "schema_name",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "wall_s",
    "finish_reason",
    "error",
    "output",
]
METRIC_COLUMNS = ["step", "name", "value"]


def export_run(
    run_dir: str | Path, fmt: Literal["parquet", "csv"] = "parquet", out: str | Path | None = None
) -> dict[str, Path]:
    """Write the run's tables (events, memories, calls, metrics, metrics_wide) as ``fmt`` files.

    ``out`` is the folder to write into (default ``RUN/export/``); existing files of the same name are
    replaced. Returns each table's name and the path written.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    store = RunStore(run_dir)  # RunError for a folder that is not a run
    try:
        key = store.key  # the run's rows (a shared database holds other runs' too)
        with Session(store.engine) as s:
            tables = {
                "events": _events(s, key),
                "memories": _memories(s, key),
                "calls": _calls(s, key),
                "metrics": _metrics(s, key),
            }
            tables["metrics_wide"] = _metrics_wide(tables["metrics"], s, key)
    finally:
        store.close()
    folder = Path(out) if out is not None else store.dir / "export"
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, df in tables.items():
        path = folder / f"{name}.{fmt}"
        if fmt == "parquet":
            df.to_parquet(path, index=False)
        else:
            df.to_csv(path, index=False)
        written[name] = path
    return written


def _flat_keys(payloads: list[dict[str, Any]]) -> list[str]:
    """Payload keys whose values are always one plain type (or missing): these become columns."""
    kinds: dict[str, set[type]] = {}
    for p in payloads:
        for k, v in p.items():
            t = float if isinstance(v, int | float) and not isinstance(v, bool) else type(v)
            kinds.setdefault(k, set()).add(t)
    taken = {*EVENT_COLUMNS, "data"}
    out = []
    for k, ts in kinds.items():
        present = ts - {type(None)}
        if k not in taken and len(present) == 1 and present <= {str, float, bool}:
            out.append(k)
    return out


def _events(s: Session, key: str) -> pd.DataFrame:
    rows = s.exec(select(EventRow).where(EventRow.run_id == key).order_by(col(EventRow.id))).all()
    payloads = [json.loads(r.data) for r in rows]
    flat = _flat_keys(payloads)
    records = []
    for r, p in zip(rows, payloads, strict=True):
        rest = {k: v for k, v in p.items() if k not in flat}
        records.append(
            {
                "id": r.id,
                "step": r.step,
                "kind": r.kind,
                "resident": r.resident,
                **{k: p.get(k) for k in flat},
                "data": json.dumps(rest, ensure_ascii=False) if rest else None,
            }
        )
    return pd.DataFrame(records, columns=[*EVENT_COLUMNS, *flat, "data"])


def _memories(s: Session, key: str) -> pd.DataFrame:
    query = select(MemoryRecord).where(MemoryRecord.run_id == key)
    rows = s.exec(query.order_by(col(MemoryRecord.resident), col(MemoryRecord.seq))).all()
    records = [{c: getattr(r, c) for c in MEMORY_COLUMNS} for r in rows]
    df = pd.DataFrame(records, columns=MEMORY_COLUMNS)
    df["importance"] = df["importance"].astype("Int64")  # unrated memories stay missing, not NaN floats
    return df


def _calls(s: Session, key: str) -> pd.DataFrame:
    records = []
    for r in s.exec(select(CallRow).where(CallRow.run_id == key).order_by(col(CallRow.id))).all():
        rec = CallRecord.model_validate_json(r.record)
        records.append(
            {
                "id": r.id,
                "step": r.step,
                "purpose": r.purpose,
                "resident": r.resident,
                "schema_name": rec.schema_name,
                "prompt_tokens": r.prompt_tokens,
                "cached_tokens": r.cached_tokens,
                "completion_tokens": r.completion_tokens,
                "wall_s": r.wall_s,
                "finish_reason": rec.finish_reason,
                "error": rec.error.get("message", "") if rec.error else None,
                "output": rec.text,
            }
        )
    return pd.DataFrame(records, columns=CALL_COLUMNS)


def _metrics(s: Session, key: str) -> pd.DataFrame:
    query = select(MetricRow).where(MetricRow.run_id == key)
    rows = s.exec(query.order_by(col(MetricRow.step), col(MetricRow.name))).all()
    return pd.DataFrame([(r.step, r.name, r.value) for r in rows], columns=METRIC_COLUMNS)


def _metrics_wide(metrics: pd.DataFrame, s: Session, key: str) -> pd.DataFrame:
    """One row per step: simulated time, wall seconds and every metric as a column."""
    query = select(StepRow).where(StepRow.run_id == key).order_by(col(StepRow.step))
    steps = pd.DataFrame(
        [(r.step, r.sim_time, r.wall_s) for r in s.exec(query).all()],
        columns=["step", "sim_time", "wall_s"],
    )
    if metrics.empty:
        return steps
    wide = metrics.pivot(index="step", columns="name", values="value").reset_index()
    wide.columns.name = None
    return steps.merge(wide, on="step", how="left")
