"""Runs against remote OpenAI-compatible servers: `--llm-url`, the server pool's routing and failover."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from simulacra.backend import Backend
from simulacra.cli import app
from simulacra.inference.backends.http import HTTPBackendError
from simulacra.inference.backends.pool import PoolDownError, ServerPool
from simulacra.inference.port import GenerateResult, StreamEvent, call_meta
from simulacra.run import Run, replay
from simulacra.storage import RunError, RunStore

from ..agents.fakes import WordEmbedder
from .test_run import TOWN3, make_run

ROOT = Path(__file__).resolve().parents[2]
FAST = {"max_retries": 1, "backoff": 0.01, "timeout": 5.0}  # a dead server gives up in milliseconds


# ----------------------------------------------------------------------------- the router, on fakes


class Fake:
    """A backend that answers with its name, or fails as an unreachable server does."""

    def __init__(self, name: str) -> None:
        self.base_url = name
        self.model = "m"
        self.dead = False
        self.calls: list[str | None] = []

    async def generate(self, prompt: Any, **kwargs: Any) -> GenerateResult:
        if self.dead:
            raise HTTPBackendError(f"{self.base_url}: could not reach the server: ConnectError")
        self.calls.append(prompt)
        return GenerateResult(self.base_url, server=self.base_url)

    async def stream(self, prompt: Any, **kwargs: Any) -> AsyncIterator[StreamEvent]:
        result = await self.generate(prompt, **kwargs)
        yield StreamEvent(result.text, result)

    def stats(self) -> dict[str, float]:
        return {"requests": float(len(self.calls))}

    async def aclose(self) -> None:
        return None


async def ask(pool: ServerPool, key: str | None) -> str:
    with call_meta(affinity=key):
        return (await pool.generate(f"from {key}")).text


async def test_keys_stick_and_new_keys_go_to_the_server_with_fewest() -> None:
    pool = ServerPool([Fake("a"), Fake("b"), Fake("c")])
    first = [await ask(pool, k) for k in ("k1", "k2", "k3", "k4", "k5")]
    assert first == ["a", "b", "c", "a", "b"]  # fewest keys, ties to the first listed
    again = [await ask(pool, k) for k in ("k5", "k4", "k3", "k2", "k1")]
    assert again == ["b", "a", "c", "b", "a"]  # each key keeps its server
    assert await ask(pool, None) == "a"  # no key: fewest in flight (none anywhere: the first)
    assert [s["keys"] for s in pool.server_stats()] == [2, 2, 1]
    assert pool.stats()["requests"] == 11


async def test_a_failed_server_s_keys_move_and_the_call_is_retried() -> None:
    a, b, c = Fake("a"), Fake("b"), Fake("c")
    pool = ServerPool([a, b, c])
    for k in ("k1", "k2", "k3", "k4", "k5", "k6"):
        await ask(pool, k)  # a: k1 k4, b: k2 k5, c: k3 k6
    b.dead = True
    assert await ask(pool, "k5") == "c"  # failed on b, retried on the server k5 moved to
    assert pool.down.keys() == {1} and "ConnectError" in pool.down[1]
    # b's keys moved in first-seen order to the up server with the fewest keys: k2 -> a (a tie: first), k5 -> c
    assert pool.assigned == {"k1": 0, "k3": 2, "k4": 0, "k6": 2, "k2": 0, "k5": 2}
    assert all(i != 1 for i in pool.assigned.values())
    assert [await ask(pool, k) for k in ("k1", "k3", "k4", "k6")] == ["a", "c", "a", "c"]  # the others stay put
    stats = pool.stats()
    assert stats["servers_down"] == 1 and stats["failovers"] == 1
    a.dead = c.dead = True
    with pytest.raises(PoolDownError, match="every LLM server is down"):
        await ask(pool, "k1")


async def test_moved_keys_spread_over_the_servers_left() -> None:
    fakes = [Fake("a"), Fake("b"), Fake("c")]
    pool = ServerPool(fakes)
    for k in ("k1", "k2", "k3", "k4", "k5", "k6"):
        await ask(pool, k)
    pool.mark_down(0, "gone")  # a held k1 and k4: k1 -> b (2 vs 2: first), then k4 -> c (3 vs 2)
    assert pool.assigned["k1"] == 1 and pool.assigned["k4"] == 2
    assert [s["keys"] for s in pool.server_stats()] == [0, 3, 3]


async def test_a_stream_fails_over_before_its_first_delta() -> None:
    a, b = Fake("a"), Fake("b")
    pool = ServerPool([a, b])
    await ask(pool, "k1")
    a.dead = True
    with call_meta(affinity="k1"):
        events = [e async for e in pool.stream("hi")]
    assert events[-1].result is not None and events[-1].result.server == "b"
    assert pool.assigned == {"k1": 1}


# ----------------------------------------------------------------------------- real servers, real runs


@contextmanager
def servers(n: int, delay_s: float = 0.0) -> Iterator[list[tuple[str, subprocess.Popen]]]:
    """n scripted OpenAI-compatible servers, each its own process on a free port of 127.0.0.1."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "FAKE_LLM_DELAY_S": str(delay_s)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.simulacra.fake_llm_server"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    try:
        urls = []
        for p in procs:
            line = p.stdout.readline().strip()  # the server prints its URL once it listens
            assert line.startswith("http://"), f"the fake server did not start (exit {p.poll()})"
            urls.append(line)
        yield list(zip(urls, procs, strict=True))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


async def run_through(run: Run, **kw: Any) -> None:
    """`arun` and `aclose` on one event loop (the HTTP clients' connections belong to it)."""
    try:
        await run.arun(**kw)
    finally:
        await run.aclose()


def test_a_run_over_two_servers_survives_losing_one(tmp_path) -> None:
    import asyncio

    with servers(2, delay_s=0.03) as pair:
        (url_a, _), (url_b, proc_b) = pair
        backend = Backend("http", urls=[url_a, url_b], settings=FAST)
        run = Run.create(TOWN3, out=tmp_path / "remote", seed=7, hours=1.0, backend=backend, embedder=WordEmbedder())
        killed_at = []

        def kill_b() -> None:
            proc_b.send_signal(signal.SIGKILL)  # B dies during step 2, most likely with calls in flight
            proc_b.wait(timeout=10)
            killed_at.append(time.time())

        def on_step(p) -> None:
            if p.step == 1:  # step 1 is committed
                threading.Timer(0.05, kill_b).start()

        pool = run.llm
        asyncio.run(run_through(run, on_step=on_step))
        assert killed_at and isinstance(pool, ServerPool)
        assert pool.down.keys() == {1}, pool.server_stats()  # B was marked down, the run went on
        info = RunStore(run.dir).info()
        assert info.status == "finished" and info.steps_done == info.steps_target == 6
        with sqlite3.connect(run.dir / "run.db") as db:
            steps = [r[0] for r in db.execute("select step from step order by step")]
            calls = [(s, json.loads(r)) for s, r in db.execute("select step, record from call order by id")]
        assert steps == list(range(7))  # each step exactly once: no gap, no duplicate
        servers_by_step = {}
        for step, rec in calls:
            servers_by_step.setdefault(step, set()).add(rec["meta"]["server"])
        b_v1, a_v1 = f"{url_b}/v1", f"{url_a}/v1"
        assert any(b_v1 in s for st, s in servers_by_step.items() if st <= 1)  # B answered before it died
        assert all(s == {a_v1} for st, s in servers_by_step.items() if st >= 3)  # A alone after
        assert all(rec["finish_reason"] != "error" for _, rec in calls)

        meta = json.loads((run.dir / "meta.json").read_text())
        assert meta["backend"]["kind"] == "http" and meta["backend"]["urls"] == [url_a, url_b]
        assert meta["backend"]["model"] == "town-model" and meta["backend"]["api_key_env"] is None

        # the same answers, whichever server gave them: the events are those of an in-process run
        local = asyncio.run(make_run(tmp_path / "local"))
        asyncio.run(run_through(local))
        assert RunStore(run.dir).events() == RunStore(local.dir).events()
        assert len(calls) == len(RunStore(local.dir).calls())  # no call lost, none recorded twice
        assert pool.failovers >= 1  # a call did fail on B and was answered by A

        # a replay reads the recorded calls, no server needed
        report = asyncio.run(replay(run.dir, tmp_path / "replayed", embedder=WordEmbedder()))
        assert report.identical and report.steps == 6

        # resuming needs every recorded server: B is gone, and the error says which
        with pytest.raises(RunError, match=f"cannot reach the LLM server at {url_b}"):
            Run.open(run.dir, embedder=WordEmbedder())
        viewed = Run.open(run.dir, embedder=WordEmbedder(), probe=False)  # the viewer does not need them
        asyncio.run(viewed.aclose())
        # ... unless told which servers to use from now on, which is recorded for the next resume
        moved = Run.open(run.dir, embedder=WordEmbedder(), lock=True, urls=[url_a])
        asyncio.run(moved.aclose())
        assert json.loads(RunStore(run.dir).info().settings)["backend"]["urls"] == [url_a]
        assert json.loads((run.dir / "meta.json").read_text())["backend"]["urls"] == [url_a]
        with pytest.raises(RunError, match="'custom' backend"):
            Run.open(local.dir, embedder=WordEmbedder(), lock=True, urls=[url_a])


def test_resume_reconnects_and_reads_the_key_from_the_named_variable(tmp_path, monkeypatch) -> None:
    import asyncio

    monkeypatch.setenv("SIMULACRA_TEST_KEY", "sk-secret-123")
    with servers(1) as [(url, _)]:
        backend = Backend("http", "town-model", urls=[url], api_key_env="SIMULACRA_TEST_KEY", settings=FAST)
        run = Run.create(TOWN3, out=tmp_path, seed=7, hours=1.0, backend=backend, embedder=WordEmbedder())
        asyncio.run(run_through(run, steps=2))
        for name in ("meta.json", "run.db"):
            assert b"sk-secret-123" not in (run.dir / name).read_bytes()
        assert json.loads((run.dir / "meta.json").read_text())["backend"]["api_key_env"] == "SIMULACRA_TEST_KEY"

        monkeypatch.delenv("SIMULACRA_TEST_KEY")
        with pytest.raises(RunError, match="SIMULACRA_TEST_KEY, which is not set; `export SIMULACRA_TEST_KEY="):
            Run.open(run.dir, embedder=WordEmbedder(), lock=True)
        monkeypatch.setenv("SIMULACRA_TEST_KEY", "sk-secret-123")
        again = Run.open(run.dir, embedder=WordEmbedder(), lock=True)  # reconnects from what run.db recorded
        assert again.llm.api_key == "sk-secret-123" and again.llm.base_url == f"{url}/v1"
        asyncio.run(run_through(again))
        info = RunStore(run.dir).info()
        assert info.status == "finished" and info.steps_done == 6


def test_the_cli_records_the_flags_and_names_an_unreachable_server(tmp_path, monkeypatch) -> None:
    result = CliRunner().invoke(app, ["run", TOWN3, "--llm-url", "http://127.0.0.1:9", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "cannot reach the LLM server at http://127.0.0.1:9" in result.output
    assert not any(tmp_path.iterdir())  # nothing was started, nothing left behind

    result = CliRunner().invoke(app, ["run", TOWN3, "--llm-url", "http://x", "--model", "m.gguf"])
    assert result.exit_code == 2 and "--llm-model" in result.output

    seen = []

    def create(path, **kw):  # noqa: ANN001, ANN003 - stands in for Run.create: no server is asked
        seen.append(kw["backend"])
        raise FileNotFoundError("stopped here")

    monkeypatch.setattr(Run, "create", create)
    args = ["run", TOWN3, "--llm-url", "http://h1:8000", "--llm-url", "http://h2:8000", "--llm-model", "qwen"]
    result = CliRunner().invoke(app, [*args, "--api-key-env", "MY_KEY", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "stopped here" in result.output
    b = seen[0]
    assert (b.kind, b.urls, b.model, b.api_key_env) == ("http", ["http://h1:8000", "http://h2:8000"], "qwen", "MY_KEY")
