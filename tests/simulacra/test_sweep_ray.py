"""Sweeps that survive failures and restarts, in process and as Ray tasks on a local Ray (num_cpus=2).

Every point is a tiny generated town on the fake LLM, so a point takes well under a second; the
time goes into Ray's start (one session for the module) and its workers' imports.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from simulacra.cli import app
from simulacra.inference.backends.fake import ScriptedLLM
from simulacra.storage import RunError, RunStore
from simulacra.sweeps import Point, PointProgress, SweepFileError, load_sweep_file, point_dir, sweep

from ..agents.fakes import WordEmbedder, by_kind

FAILS = 4  # the resident count whose backend fails on purpose


def fake() -> ScriptedLLM:
    return ScriptedLLM(by_kind())


def fake_but_one(point: Point) -> ScriptedLLM:
    """A point-aware factory: the fake backend, except that every call of the FAILS-resident towns raises."""
    if point.residents == FAILS:
        return ScriptedLLM(lambda prompt, schema, params: RuntimeError("the fake backend fails on purpose"))
    return fake()


def stored(run_dir: str | Path) -> tuple[str, int, int, int]:
    """(status, steps saved, steps in the step table, events) of a run."""
    store = RunStore(run_dir)
    try:
        info = store.info()
        return info.status, info.steps_done, store.last_step().step, len(store.events())
    finally:
        store.close()


def states(log: list[PointProgress]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in log:
        if not out.get(p.point.name) or out[p.point.name][-1] != p.state:
            out.setdefault(p.point.name, []).append(p.state)
    return out


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def test_on_ray_a_failing_point_is_reported_and_a_rerun_skips_or_resumes(local_ray: None, tmp_path: Path) -> None:
    log: list[PointProgress] = []
    kw = dict(hours=0.5, out=tmp_path, embedder=WordEmbedder(), executor="ray", on_progress=log.append)
    df = sweep(residents=[3, FAILS], seeds=[0, 1], llm_factory=fake_but_one, **kw)

    assert list(zip(df["residents"], df["seed"], strict=True)) == [(3, 0), (3, 1), (4, 0), (4, 1)]
    ok, bad = df[df["residents"] == 3], df[df["residents"] == FAILS]
    assert (ok["status"] == "done").all() and (ok["error"] == "").all()
    assert (ok["steps"] == 3).all() and (ok["steps_computed"] == 3).all() and (ok["calls"] > 0).all()
    assert (bad["status"] == "failed").all()
    assert bad["error"].str.contains("RuntimeError: the fake backend fails on purpose").all()
    assert (bad["steps"] == 0).all() and bad["calls"].isna().all()  # step 0 was saved; figures are missing
    for d in bad["run_dir"]:
        assert stored(d)[0] == "failed"  # the run itself says so too (`simulacra runs`)
    for name, seen in states(log).items():  # progress per point: queued, running, then how it ended
        assert seen[0] == "queued" and seen[1] == "running", name
        assert seen[-1] == ("failed" if name.startswith(f"n{FAILS}-") else "done"), name
    assert any(p.state == "running" and p.step == 3 and p.steps_target == 3 for p in log)  # step reports came back

    before = {d: stored(d) for d in ok["run_dir"]}
    again = sweep(residents=[3, FAILS], seeds=[0, 1], llm_factory=fake, **kw)  # the cause fixed
    ok2, bad2 = again[again["residents"] == 3], again[again["residents"] == FAILS]
    assert (ok2["status"] == "skipped").all() and (ok2["steps_computed"] == 0).all()
    assert {d: stored(d) for d in ok2["run_dir"]} == before  # not a step more
    cols = ["steps", "calls", "prompt_tokens", "density_end", "wall_s"]
    assert ok2[cols].reset_index(drop=True).equals(ok[cols].reset_index(drop=True))  # rows rebuilt from run.db
    assert (bad2["status"] == "resumed").all() and (bad2["steps"] == 3).all() and (bad2["steps_computed"] == 3).all()
    assert all(stored(d)[0] == "finished" for d in bad2["run_dir"])


def test_on_ray_an_interrupted_point_resumes_where_it_stopped(local_ray: None, tmp_path: Path) -> None:
    out, whole = tmp_path / "sweep", tmp_path / "whole"
    first = sweep(residents=[3], seeds=[5], hours=1 / 6, out=out, llm_factory=fake, embedder=WordEmbedder())
    assert first["steps"].tolist() == [1]
    store = RunStore(point_dir(out, 3, 5))  # as if a 3-step run had been stopped after its first step
    store.set_status("interrupted", "stopped during step 2", steps_target=3)
    store.close()

    df = sweep(residents=[3], seeds=[5], hours=0.5, out=out, llm_factory=fake, embedder=WordEmbedder(), executor="ray")
    (row,) = df.itertuples()
    assert (row.status, row.steps, row.steps_computed, row.error) == ("resumed", 3, 2, "")
    ref = sweep(residents=[3], seeds=[5], hours=0.5, out=whole, llm_factory=fake, embedder=WordEmbedder())
    assert stored(row.run_dir) == stored(ref["run_dir"][0])  # finished, 3 steps, the same events as uninterrupted
    assert RunStore(row.run_dir).events() == RunStore(ref["run_dir"][0]).events()


def test_an_address_where_nothing_listens_is_refused_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process, whatever ran before
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(RunError, match=f"nothing answers at the Ray cluster {re.escape(address)}"):
            sweep(residents=[3], hours=0.2, out=tmp_path, llm_factory=fake, executor="ray", address=address)
    with pytest.raises(RunError, match="is not HOST:PORT"):
        sweep(residents=[3], hours=0.2, out=tmp_path, llm_factory=fake, executor="ray", address="headnode")
    assert not list(tmp_path.rglob("run.db"))  # no point was started


def test_on_ray_the_factory_must_pickle(local_ray: None, tmp_path: Path) -> None:
    lock = threading.Lock()
    with pytest.raises(ValueError, match="must be picklable"):
        sweep(residents=[3], hours=0.2, out=tmp_path, llm_factory=lambda: (lock, fake())[1], executor="ray")


def test_in_process_is_the_default_with_the_same_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import simulacra.sweeps as sweeps

    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("the default executor must not use Ray")

    monkeypatch.setattr(sweeps, "_on_ray", no_ray)
    df = sweep(residents=[3, FAILS], hours=0.5, out=tmp_path, llm_factory=fake_but_one, embedder=WordEmbedder())
    assert df["status"].tolist() == ["done", "failed"]
    assert df["error"][1] == "RuntimeError: the fake backend fails on purpose"
    again = sweep(residents=[3, FAILS], hours=0.5, out=tmp_path, llm_factory=fake, embedder=WordEmbedder())
    assert again["status"].tolist() == ["skipped", "resumed"] and again["steps"].tolist() == [3, 3]
    assert list(again.columns) == list(df.columns)  # one row shape, whatever happened


def test_a_folder_holding_another_seed_is_a_failed_point(tmp_path: Path) -> None:
    sweep(residents=[3], seeds=[0], hours=0.2, out=tmp_path, llm_factory=fake, embedder=WordEmbedder())
    point_dir(tmp_path, 3, 0).rename(point_dir(tmp_path, 3, 1))
    df = sweep(residents=[3], seeds=[1, 2], hours=0.2, out=tmp_path, llm_factory=fake, embedder=WordEmbedder())
    assert df["status"].tolist() == ["failed", "done"]
    assert "holds a run of seed 0, not this sweep point's; pass another out=" in df["error"][0]


def test_the_sweep_command_runs_a_yaml_and_writes_its_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = tmp_path / "recorded"
    sweep(residents=[3], seeds=[0, 1], hours=0.5, out=recorded, llm_factory=fake, embedder=WordEmbedder())
    monkeypatch.setattr("simulacra.inference.embedding.load_embedder", lambda *a, **k: WordEmbedder())
    spec = tmp_path / "scaling.yaml"
    spec.write_text("residents: [3]\nseeds: [0, 1]\nhours: 0.5\nbackend: {kind: replay, source: recorded}\n")
    out = tmp_path / "replayed"

    result = CliRunner().invoke(app, ["sweep", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "n3-s0: queued" in result.output and "n3-s1: done (3/3 steps)" in result.output
    table = pd.read_csv(out / "sweep.csv")
    assert table["status"].tolist() == ["done", "done"] and (out / "sweep.parquet").is_file()
    for seed in (0, 1):  # each point answered from the same point of the recorded sweep
        assert RunStore(point_dir(out, 3, seed)).events() == RunStore(point_dir(recorded, 3, seed)).events()

    result = CliRunner().invoke(app, ["sweep", str(spec), "--out", str(out)])
    assert result.exit_code == 0 and "n3-s0: skipped: finished earlier (3/3 steps)" in result.output


def test_a_bad_sweep_file_is_located(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("residents: [3, 0]\nseed: [1]\nhours: 1\nbackend: {kind: http}\nexecutor: rey\n")
    with pytest.raises(SweepFileError) as exc:
        load_sweep_file(spec)
    lines = str(exc.value).splitlines()
    assert f"{spec}, line 1, residents[1]: 0 is out of range; it must be at least 1" in lines
    assert f"{spec}, line 2: unknown key 'seed'; did you mean 'seeds'?" in lines[1]
    assert any(line.startswith(f"{spec}, line 4, backend: an http backend needs urls") for line in lines)
    assert any(line.startswith(f"{spec}, line 5, executor: 'rey' is not allowed") for line in lines)
    result = CliRunner().invoke(app, ["sweep", str(spec)])
    assert result.exit_code == 2 and "error:" in result.output and "did you mean 'seeds'" in result.output

    spec.write_text("scenario: nowhere.yaml\nhours: 1\n")
    with pytest.raises(SweepFileError, match=r"line 1, scenario: no scenario file nowhere.yaml"):
        load_sweep_file(spec)
