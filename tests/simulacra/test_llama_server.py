"""Servers nobody here wrote: the dialect table (`inference/backends/dialects.py`) and llama.cpp's llama-server.

The translation is tested in `make test` against stand-ins that record every request body and answer
as each server does (llama.cpp's `Server` header, its usage that counts choice 0 only, its `timings`
and `/tokenize`) and against our own server in-process. The real `llama-server` is built outside
`make test` (`make peer-llama-server`, from the llama-cpp-python sdist); where it is built, a short
town3 run goes through it and is resumed, and every recorded call must carry its tokens and latency.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from simulacra.backend import Backend
from simulacra.inference.backends.dialects import DIALECTS, dialect_named, request_fields
from simulacra.inference.backends.fake import ScriptedLLM
from simulacra.inference.backends.http import OpenAIHTTPBackend
from simulacra.inference.backends.server import running
from simulacra.inference.port import RequestError, SamplingParams
from simulacra.run import Run
from simulacra.storage import RunStore

from ..agents.fakes import WordEmbedder
from .test_run import TOWN3

ROOT = Path(__file__).resolve().parents[2]
LLAMA_SERVER = ROOT / ".cache" / "peers" / "llama.cpp-build" / "bin" / "llama-server"  # bench/peers/llama_cpp.py
USER = [{"role": "user", "content": "What do you say?"}]


class Line(BaseModel):
    says: str
    end: bool


# ----------------------------------------------------------------------------- stand-ins


class StandIn:
    """An OpenAI-compatible server in a MockTransport: records each request, answers as `kind` does."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(f"{request.method} {request.url.path}")
        headers = {"Server": "llama.cpp"} if self.kind == "llama.cpp" else {}
        if request.method == "GET":
            owner = {"llama.cpp": "llamacpp", "vllm": "vllm", "openai": "openai", "odd": "someone"}[self.kind]
            return httpx.Response(200, headers=headers, json={"data": [{"id": "m", "owned_by": owner}]})
        body = json.loads(request.content)
        if request.url.path == "/tokenize":  # llama.cpp: one token per word here
            return httpx.Response(200, json={"tokens": list(range(len(body["content"].split())))})
        self.bodies.append(body)
        n = body.get("n", 1)
        texts = ['{"says": "hello there", "end": false}', '{"says": "good day to you", "end": true}'] * n
        answer: dict[str, Any] = {
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": texts[i]}, "finish_reason": "stop"}
                for i in range(n)
            ],
            "usage": {"prompt_tokens": 30, "completion_tokens": 9},  # choice 0's only, as llama.cpp counts
        }
        if self.kind == "llama.cpp":
            answer["timings"] = {"cache_n": 24, "prompt_ms": 120.0, "predicted_ms": 450.0}
        else:
            answer["usage"]["prompt_tokens_details"] = {"cached_tokens": 20}
        return httpx.Response(200, headers=headers, json=answer)


def backend_for(stand_in: StandIn, **kw: Any) -> OpenAIHTTPBackend:
    return OpenAIHTTPBackend(
        "http://llm.invalid:8080", "m", transport=httpx.MockTransport(stand_in), dialect="auto", **kw
    )


async def ask(b: OpenAIHTTPBackend, **kw: Any) -> Any:
    try:
        return await b.generate(USER, schema=Line, max_tokens=40, **kw)
    finally:
        await b.aclose()


TOWN_LINE = dict(  # a resident's conversation line, as agents/mind.py asks for it
    temperature=0.7,
    top_p=0.95,
    seed=(1 << 40) + 5,
    n=4,
    no_repeat_ngram_size=4,
    no_repeat_texts=["Hello Ann"],
)


# ----------------------------------------------------------------------------- the table, translated


async def test_llama_cpp_is_detected_and_spoken_to_in_its_own_fields(caplog) -> None:
    server = StandIn("llama.cpp")
    b = backend_for(server)
    with caplog.at_level(logging.WARNING, logger="simulacra.inference.backends.http"):
        result = await ask(b, **TOWN_LINE, repetition_penalty=1.1)
    assert b.dialect is DIALECTS["llama.cpp"] and b.detected == "Server: llama.cpp"
    assert server.paths[0] == "GET /v1/models"  # asked once, before the first request
    body = server.bodies[0]
    assert body["seed"] == 5  # its seed is a uint32: the low 32 bits (all torch's CPU generator reads)
    assert (body["top_k"], body["min_p"], body["n"]) == (0, 0.0, 4)  # its defaults (top-k 40, min-p 0.05) off
    assert body["samplers"] == ["penalties", "temperature", "top_k", "top_p"]
    assert (body["repeat_penalty"], body["repeat_last_n"]) == (1.1, -1)  # the whole context, as the port's
    assert "repetition_penalty" not in body and "no_repeat_ngram_size" not in body and "no_repeat_texts" not in body
    assert body["response_format"]["json_schema"]["schema"]["additionalProperties"] is False
    # usage counted choice 0 only: the other three were tokenized by the server (7 + 5 + 7 words)
    assert result.completion_tokens == 9 + 7 + 5 + 7 and len(result.samples) == 4
    assert server.paths.count("POST /tokenize") == 3
    assert result.cached_tokens == 24  # no prompt_tokens_details: its timings.cache_n
    assert result.timings["server_prompt_s"] == pytest.approx(0.12)
    assert result.timings["server_decode_s"] == pytest.approx(0.45)
    # the n-gram bans cannot be sent: left out, said once, counted
    assert b.stats()["skipped_no_repeat_ngram_size"] == 1
    assert "does not support no_repeat_ngram_size" in caplog.text and "llama.cpp" in caplog.text
    assert b.capabilities()["skipped"].keys() == {"no_repeat_ngram_size"}


async def test_an_unsupported_field_can_be_refused_instead() -> None:
    server = StandIn("llama.cpp")
    with pytest.raises(RequestError) as ctx:
        await ask(backend_for(server, unsupported="refuse"), **TOWN_LINE)
    assert ctx.value.param == "no_repeat_ngram_size" and ctx.value.code == "unsupported_by_server"
    assert "http://llm.invalid:8080/v1 (llama.cpp, Server: llama.cpp)" in str(ctx.value)
    assert server.bodies == []  # refused before anything was sent


async def test_openai_gets_no_top_k_and_vllm_gets_everything_it_reads() -> None:
    openai = StandIn("openai")
    b = backend_for(openai)
    await ask(b, top_k=5, seed=(1 << 40) + 5, repetition_penalty=1.2, presence_penalty=0.5)
    body = openai.bodies[0]
    assert "top_k" not in body and "repetition_penalty" not in body
    assert (body["seed"], body["presence_penalty"]) == ((1 << 40) + 5, 0.5)
    assert b.stats()["skipped_top_k"] == 1 and b.stats()["skipped_repetition_penalty"] == 1

    vllm = StandIn("vllm")
    b = backend_for(vllm)
    result = await ask(b, top_k=5, n=2, repetition_penalty=1.2, no_repeat_ngram_size=3)
    body = vllm.bodies[0]
    assert (body["top_k"], body["repetition_penalty"], body["n"]) == (5, 1.2, 2) and "min_p" not in body
    assert "no_repeat_ngram_size" not in body and b.stats()["skipped_no_repeat_ngram_size"] == 1
    assert result.completion_tokens == 9 and result.cached_tokens == 20  # its usage counts every choice
    assert "POST /tokenize" not in vllm.paths and "server_prompt_s" not in result.timings


async def test_an_unknown_server_and_the_default_keep_the_old_wire() -> None:
    odd = StandIn("odd")
    b = backend_for(odd)
    await ask(b, top_k=3, no_repeat_ngram_size=2, no_repeat_texts=["x y"])
    assert b.dialect is DIALECTS["generic"] and "someone" in b.detected
    assert odd.bodies[0]["no_repeat_ngram_size"] == 2 and odd.bodies[0]["top_k"] == 3
    # no dialect given: no detection request at all, and the body it always was
    plain = StandIn("llama.cpp")
    b = OpenAIHTTPBackend("http://llm.invalid", "m", transport=httpx.MockTransport(plain))
    await b.generate("hi", max_tokens=3)
    await b.aclose()
    assert plain.paths == ["POST /v1/completions"]
    assert set(plain.bodies[0]) == {"model", "max_tokens", "temperature", "top_p", "prompt"}


def test_the_table_itself() -> None:
    fields, unsupported = request_fields(DIALECTS["llama.cpp"], SamplingParams(seed=0xFFFF_FFFF), None)
    assert fields["seed"] == 0xFFFF_FFFE  # all ones is llama.cpp's "random"
    fields, _ = request_fields(DIALECTS["simulacra"], SamplingParams(no_repeat_ngram_size=2), ["a", "b"])
    assert fields["no_repeat_ngram_size"] == 2 and fields["response_format"]["json_schema"]["name"] == "choice"
    assert unsupported == [] and dialect_named(DIALECTS["vllm"]) is DIALECTS["vllm"]
    with pytest.raises(ValueError, match="unknown server dialect 'tgi'; one of simulacra, vllm"):
        OpenAIHTTPBackend("http://x", "m", dialect="tgi")


def test_our_own_server_is_detected_and_gets_the_n_gram_bans() -> None:
    llm = ScriptedLLM(lambda prompt, schema, params: '{"says": "hi", "end": true}')
    with running(llm, "m", 4096) as srv:

        async def go() -> OpenAIHTTPBackend:
            b = OpenAIHTTPBackend(srv.url, "m", dialect="auto")
            await ask(b, **TOWN_LINE)
            return b

        b = asyncio.run(go())
    assert b.dialect is DIALECTS["simulacra"] and b.detected == "owned_by 'simulacra'"
    sent = llm.calls[0].params
    assert (sent.n, sent.no_repeat_ngram_size, sent.no_repeat_texts) == (4, 4, ["Hello Ann"])
    assert sent.seed == (1 << 40) + 5 and b.stats().get("skipped_no_repeat_ngram_size") is None


# ----------------------------------------------------------------------------- the real llama-server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def llama_server(slots: int = 8, context: int = 4096) -> Iterator[str]:
    """llama-server on the packaged SmolLM2 GGUF, on a free port of 127.0.0.1; its URL once it answers."""
    from simulacra.inference.packaged import default_model_path

    port = free_port()
    cmd = [str(LLAMA_SERVER), "-m", str(default_model_path()), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["-np", str(slots), "-c", str(slots * context), "-t", "1", "--no-webui"]
    env = {**os.environ, "LD_LIBRARY_PATH": str(LLAMA_SERVER.parent)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("llama-server did not become healthy within 120 s")
            time.sleep(0.3)
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=30)


needs_llama_server = pytest.mark.skipif(
    not LLAMA_SERVER.is_file(), reason="llama-server not built: run `make peer-llama-server`"
)


async def run_through(run: Run, **kw: Any) -> None:
    try:
        await run.arun(**kw)
    finally:
        await run.aclose()


def test_a_run_records_what_its_server_left_out_in_meta_json(tmp_path) -> None:
    stand_in = StandIn("llama.cpp")
    llm = backend_for(stand_in)
    run = Run.create(TOWN3, out=tmp_path, seed=3, hours=1.0, llm=llm, embedder=WordEmbedder())

    async def go() -> None:
        try:
            await run.arun(steps=1)
            await llm.generate(USER, schema=Line, max_tokens=40, **TOWN_LINE)  # a line with n-gram bans
            await run.arun(steps=1)
        finally:
            await run.aclose()

    asyncio.run(go())
    (server,) = json.loads((run.dir / "meta.json").read_text())["servers"]
    assert server["server"] == "http://llm.invalid:8080/v1" and server["dialect"] == "llama.cpp"
    assert server["why"]  # the evidence the dialect was detected from
    assert server["skipped"] == {"no_repeat_ngram_size": 1}  # left out, counted and explained
    assert "llama.cpp" in server["notes"]["no_repeat_ngram_size"]


@pytest.mark.slow
@needs_llama_server
def test_a_town3_run_through_llama_server_records_every_call_and_resumes(tmp_path) -> None:
    settings = {"timeout": 600.0, "max_retries": 1}  # a shared 2-core machine: the longest answers take minutes
    with llama_server() as url:
        backend = Backend("http", urls=[url], settings=settings)
        run = Run.create(TOWN3, out=tmp_path, seed=3, hours=1.0, backend=backend, embedder=WordEmbedder())
        llm = run.llm
        asyncio.run(run_through(run, steps=1))
        assert llm.dialect is DIALECTS["llama.cpp"]
        again = Run.open(run.dir, embedder=WordEmbedder(), lock=True)  # reconnects from what run.db recorded
        assert again.llm.base_url == f"{url}/v1"
        asyncio.run(run_through(again, steps=1))
    assert RunStore(run.dir).info().steps_done == 2
    with sqlite3.connect(run.dir / "run.db") as db:
        calls = [json.loads(r) for (r,) in db.execute("select record from call")]
    assert calls, "the run made no call"
    for rec in calls:
        assert rec["meta"]["server"] == f"{url}/v1" and rec["finish_reason"] in ("stop", "length")
        assert rec["prompt_tokens"] > 0 and rec["completion_tokens"] > 0
        assert rec["timings"]["wall_s"] > 0 and rec["timings"]["server_decode_s"] > 0
        if rec["json_schema"] is not None and rec["finish_reason"] == "stop":
            assert rec["parsed"] is not None, rec["text"]  # a whole constrained answer always parses
    assert any(rec["cached_tokens"] > 0 for rec in calls)  # the residents' prompt prefixes were reused
