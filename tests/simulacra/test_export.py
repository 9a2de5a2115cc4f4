"""export_run: a small town3 run (fake LLM) exported as Parquet and CSV, read back with pandas."""

import asyncio
import json
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func
from sqlmodel import Session, create_engine, select

from simulacra.agents.memory import MemoryRecord
from simulacra.export import export_run
from simulacra.inference.backends.fake import ScriptedLLM
from simulacra.run import Run
from simulacra.storage import CallRow, EventRow, MetricRow, RunError, StepRow

from ..agents.fakes import WordEmbedder, by_kind

TABLES = {"events": EventRow, "memories": MemoryRecord, "calls": CallRow, "metrics": MetricRow}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    async def make() -> Path:
        run = Run.create(
            "scenarios/town3.yaml",
            out=tmp_path_factory.mktemp("runs"),
            hours=1,
            llm=ScriptedLLM(by_kind()),
            embedder=WordEmbedder(),
        )
        await run.arun()
        await run.aclose()
        return run.dir

    return asyncio.run(make())


def db_counts(run_dir: Path) -> dict[str, int]:
    engine = create_engine(f"sqlite:///{run_dir / 'run.db'}")
    with Session(engine) as s:
        out = {name: s.exec(select(func.count()).select_from(table)).one() for name, table in TABLES.items()}
        out["steps"] = s.exec(select(func.count()).select_from(StepRow)).one()
    engine.dispose()
    return out


def read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_export_writes_every_table_with_the_databases_row_counts(run_dir: Path, fmt: str) -> None:
    paths = export_run(run_dir, fmt)
    counts = db_counts(run_dir)
    assert set(paths) == {"events", "memories", "calls", "metrics", "metrics_wide"}
    assert all(p.parent == run_dir / "export" and p.suffix == f".{fmt}" for p in paths.values())
    for name in TABLES:
        assert counts[name] > 0, name  # the run did something worth exporting
        assert len(read(paths[name])) == counts[name], name
    assert len(read(paths["metrics_wide"])) == counts["steps"]


def test_columns_hold_what_the_tables_promise(run_dir: Path) -> None:
    paths = export_run(run_dir, "parquet")
    events, memories, calls, metrics, wide = (read(paths[n]) for n in paths)
    assert {"step", "kind", "resident", "data"} <= set(events.columns)
    assert "action" in events.columns and "place" in events.columns  # simple payload fields become columns
    assert set(events["kind"]) >= {"day_plan", "action"}
    plans = events[events["kind"] == "day_plan"]
    assert all(isinstance(json.loads(d)["schedule"], list) for d in plans["data"])  # nested fields stay JSON

    assert list(memories.columns) == [
        "resident",
        "seq",
        "kind",
        "text",
        "created_step",
        "created_at",
        "last_retrieved_at",
        "importance",
        "evidence",
    ]
    assert "embedding" not in memories.columns

    assert {"step", "purpose", "resident", "prompt_tokens", "cached_tokens", "completion_tokens", "wall_s"} <= set(
        calls.columns
    )
    assert {"DayPlan", "HourPlan"} <= set(calls["schema_name"])
    assert all(isinstance(json.loads(t), dict) for t in calls["output"])  # the model's JSON answers
    assert calls["prompt_tokens"].gt(0).all()

    assert list(metrics.columns) == ["step", "name", "value"]
    assert {"step", "sim_time", "wall_s", "density", "llm.calls"} <= set(wide.columns)
    last = wide.sort_values("step").iloc[-1]
    assert last["llm.calls"] == len(calls)  # the cumulative counter agrees with the call table


def test_csv_and_parquet_agree(run_dir: Path, tmp_path: Path) -> None:
    pq = export_run(run_dir, "parquet", out=tmp_path / "pq")
    csv = export_run(run_dir, "csv", out=tmp_path / "csv")
    for name in pq:
        a, b = read(pq[name]), read(csv[name])
        assert list(a.columns) == list(b.columns), name
        for c in a.columns:  # CSV loses types and the difference between "" and missing; compare as text
            if pd.api.types.is_numeric_dtype(a[c]) and pd.api.types.is_numeric_dtype(b[c]):
                pd.testing.assert_series_equal(a[c].astype(float), b[c].astype(float), check_names=False)
            else:
                left = a[c].map(lambda v: "" if pd.isna(v) else str(v))
                right = b[c].map(lambda v: "" if pd.isna(v) else str(v))
                if pd.api.types.is_datetime64_any_dtype(a[c]):
                    right = pd.to_datetime(b[c]).map(lambda v: "" if pd.isna(v) else str(v))
                assert left.tolist() == right.tolist(), (name, c)


def test_errors_say_what_to_do(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(RunError, match="not a run directory"):
        export_run(tmp_path / "nowhere", "csv")
    with pytest.raises(ValueError, match="parquet, csv"):
        export_run(run_dir, "xlsx")
