"""OpenAIHTTPBackend against our own server on 127.0.0.1, and against scripted transports for retries."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from simulacra.inference.backends.fake import ScriptedLLM
from simulacra.inference.backends.http import HTTPBackendError, HTTPBackendTimeout, OpenAIHTTPBackend
from simulacra.inference.backends.server import running
from simulacra.inference.port import LLM, RequestError

MODEL = "town-model"
CONTEXT = 1024
USER = [{"role": "user", "content": "Where are you going?"}]


class Plan(BaseModel):
    place: str
    minutes: int


def script(prompt: Any, schema: Any, params: Any) -> Any:
    text = prompt if isinstance(prompt, str) else " ".join(m["content"] for m in prompt)
    if "BOOM" in text:
        raise RuntimeError("backend crash")
    if isinstance(schema, dict) and "enum" in schema:
        return schema["enum"][-1]  # a bare string: the fake writes it as a JSON string, as a server would
    if isinstance(schema, dict):
        return {"place": "Hobbs Cafe", "minutes": 45}
    return "to the cafe to meet Klaus and then home"


@pytest.fixture(scope="module")
def server():
    llm = ScriptedLLM(script, context_length=CONTEXT)
    with running(llm, MODEL, CONTEXT) as srv:
        yield srv, llm


def backend(srv, **kwargs: Any) -> OpenAIHTTPBackend:
    kwargs.setdefault("backoff", 0.01)
    return OpenAIHTTPBackend(srv.url, MODEL, api_key="secret", **kwargs)  # the root URL: /v1 is added


def run(coro):
    return asyncio.run(coro)


def test_generate_with_messages_and_with_a_string(server):
    srv, llm = server

    async def go():
        b = backend(srv)
        assert isinstance(b, LLM) and b.base_url == srv.base_url
        chat = await b.generate(USER, max_tokens=4, temperature=0.5, top_k=7, seed=3, stop=["zz"])
        text = await b.generate("Once", max_tokens=50, stop=["Klaus"])
        stats = b.stats()
        await b.aclose()
        return chat, text, stats

    chat, text, stats = run(go())
    assert (chat.text, chat.finish_reason, chat.completion_tokens, chat.prompt_tokens) == (
        "to the cafe to",
        "length",
        4,
        5,
    )
    assert (text.text, text.finish_reason) == ("to the cafe to meet ", "stop")
    params = llm.calls[-2].params
    assert (params.max_tokens, params.temperature, params.top_k, params.seed, params.stop) == (4, 0.5, 7, 3, ["zz"])
    assert llm.calls[-2].prompt == USER and llm.calls[-1].prompt == "Once"
    assert stats["requests"] == 2 and stats["attempts"] == 2 and stats["completion_tokens"] == 9
    assert chat.timings["total_s"] > 0


def test_schemas_come_back_parsed(server):
    srv, _ = server

    async def go2():
        b = backend(srv)
        plan = await b.generate(USER, schema=Plan)
        raw = await b.generate(USER, schema={"type": "object", "properties": {"place": {"type": "string"}}})
        choice = await b.generate(USER, schema=["stay", "go"])
        await b.aclose()
        return plan, raw, choice

    plan, raw, choice = run(go2())
    assert plan.parsed == Plan(place="Hobbs Cafe", minutes=45) and Plan.model_validate_json(plan.text) == plan.parsed
    assert raw.parsed == {"place": "Hobbs Cafe", "minutes": 45}
    assert (choice.text, choice.parsed) == ("go", "go")  # the JSON string "go" is unquoted, as the engine writes it


def test_stream(server):
    srv, _ = server

    async def go():
        b = backend(srv)
        events = [e async for e in b.stream(USER, max_tokens=50)]
        choice = [e async for e in b.stream("pick", schema=["a", "b"])]
        plan = [e async for e in b.stream(USER, schema=Plan)]
        await b.aclose()
        return events, choice, plan

    events, choice, plan = run(go())
    result = events[-1].result
    assert result is not None and all(e.result is None for e in events[:-1])
    assert len(events) >= 3
    assert "".join(e.delta for e in events) == result.text == "to the cafe to meet Klaus and then home"
    assert (result.completion_tokens, result.prompt_tokens, result.finish_reason) == (9, 5, "stop")
    assert "first_token_s" in result.timings
    assert [e.delta for e in choice] == ["b"] and choice[-1].result.parsed == "b"
    assert plan[-1].result.parsed == Plan(place="Hobbs Cafe", minutes=45)
    assert "".join(e.delta for e in plan) == plan[-1].result.text


def test_4xx_is_a_request_error_without_retries(server):
    srv, llm = server

    async def go():
        b = backend(srv, max_retries=3)
        with pytest.raises(RequestError) as ctx:
            await b.generate([{"role": "user", "content": "word " * CONTEXT}], max_tokens=8)
        with pytest.raises(RequestError) as stream_ctx:
            _ = [e async for e in b.stream("x " * CONTEXT, max_tokens=8)]
        other = OpenAIHTTPBackend(srv.base_url, "other-model", max_retries=3, backoff=0.01)
        with pytest.raises(RequestError) as model_ctx:
            await other.generate(USER)
        attempts = b.stats()["attempts"], other.stats()["attempts"]
        await b.aclose()
        await other.aclose()
        return ctx.value, stream_ctx.value, model_ctx.value, attempts

    calls_before = len(llm.calls)
    ctx, stream_ctx, model_ctx, attempts = run(go())
    assert (ctx.code, ctx.param) == ("context_length_exceeded", "messages")
    assert "maximum context length" in str(ctx) and "HTTP 400" in str(ctx)
    assert (stream_ctx.code, stream_ctx.param) == ("context_length_exceeded", "prompt")
    assert (model_ctx.code, model_ctx.param) == ("model_not_found", "model")
    assert attempts == (2, 1)  # one per request: no retries
    assert len(llm.calls) == calls_before + 2  # the backend saw each bad request once


def test_5xx_is_retried_then_reported(server):
    srv, llm = server

    async def go():
        b = backend(srv, max_retries=2)
        with pytest.raises(HTTPBackendError) as ctx:
            await b.generate([{"role": "user", "content": "BOOM"}], max_tokens=3)
        stats = b.stats()
        await b.aclose()
        return ctx.value, stats

    before = len(llm.calls)
    err, stats = run(go())
    assert err.status == 500 and "backend crash" in str(err) and "3 attempt(s)" in str(err)
    assert stats["attempts"] == 3 and stats["retries"] == 2 and stats["errors"] == 1
    assert len(llm.calls) == before + 3


def _ok_body(text: str = "fine") -> dict[str, Any]:
    return {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 2}},
    }


def test_retries_on_503_429_and_connection_errors_with_a_mock_transport():
    seen: list[dict[str, Any]] = []
    plan = ["503", "429", "connect", "ok"]
    answer = ['"yes"']

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append({"url": str(request.url), "body": json.loads(request.content)})
        step = plan[len(seen) - 1]
        if step == "503":
            return httpx.Response(503, json={"error": {"message": "warming up"}})
        if step == "429":
            return httpx.Response(429, headers={"Retry-After": "0"}, text="slow down")
        if step == "connect":
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json=_ok_body(answer[0]))

    async def go():
        b = OpenAIHTTPBackend(
            "http://llm.invalid:9/v1", MODEL, max_retries=3, backoff=0.01, transport=httpx.MockTransport(handler)
        )
        res = await b.generate(USER, schema=["yes", "no"], top_k=5, seed=1, stop=["\n"], max_tokens=3)
        stats = b.stats()
        await b.aclose()
        return res, stats

    res, stats = run(go())
    assert (res.text, res.parsed) == ("yes", "yes")
    assert stats["attempts"] == 4 and stats["retries"] == 3
    assert len(seen) == 4
    assert seen[0]["url"] == "http://llm.invalid:9/v1/chat/completions"
    body = seen[0]["body"]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "choice", "schema": {"type": "string", "enum": ["yes", "no"]}, "strict": True},
    }
    assert (body["top_k"], body["seed"], body["stop"], body["max_tokens"]) == (5, 1, ["\n"], 3)
    assert "stream" not in body

    seen.clear()
    plan[:] = ["ok"]
    answer[0] = "perhaps"
    with pytest.raises(RequestError) as ctx:  # a server that ignored the schema: parsing fails loudly
        run(go())
    assert ctx.value.code == "invalid_output"

    seen.clear()
    plan[:] = ["503", "503", "ok"]
    answer[0] = "fine"

    async def go_plain():
        b = OpenAIHTTPBackend(
            "http://llm.invalid:9", MODEL, max_retries=3, backoff=0.01, transport=httpx.MockTransport(handler)
        )
        res = await b.generate("plain", max_tokens=3)
        stats = b.stats()
        await b.aclose()
        return res, stats

    res, stats = run(go_plain())
    assert res.text == "fine" and res.cached_tokens == 2 and res.prompt_tokens == 3
    assert stats["attempts"] == 3 and stats["retries"] == 2
    assert seen[0]["url"] == "http://llm.invalid:9/v1/completions" and seen[0]["body"]["prompt"] == "plain"
    assert "top_k" not in seen[0]["body"] and "seed" not in seen[0]["body"]

    seen.clear()
    plan[:] = ["ok"]
    answer[0] = '{"place": "cafe", "minutes": 5, "mood": "happy"}'

    async def go_plan():
        b = OpenAIHTTPBackend("http://llm.invalid:9", MODEL, transport=httpx.MockTransport(handler))
        try:
            return await b.generate(USER, schema=Plan)
        finally:
            await b.aclose()

    assert run(go_plan()).parsed == Plan(place="cafe", minutes=5)
    sent = seen[0]["body"]["response_format"]["json_schema"]
    assert sent["name"] == "Plan" and sent["schema"]["additionalProperties"] is False


def test_a_400_from_a_mock_server_is_not_retried():
    attempts = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        return httpx.Response(400, json={"error": {"message": "bad top_p", "param": "top_p", "code": "invalid_value"}})

    async def go():
        b = OpenAIHTTPBackend(
            "http://x.invalid", MODEL, max_retries=5, backoff=0.01, transport=httpx.MockTransport(handler)
        )
        try:
            await b.generate("x")
        finally:
            await b.aclose()

    with pytest.raises(RequestError) as ctx:
        run(go())
    assert len(attempts) == 1 and (ctx.value.param, ctx.value.code) == ("top_p", "invalid_value")
    assert "bad top_p" in str(ctx.value)


def test_timeouts_are_retried_then_raise_a_timeout_error():
    """The server holds every request until the client has given up: each attempt can only end by
    the client's own timeout. (The outer wait is a guard against hanging, not a threshold.)"""
    release = threading.Event()

    async def held(prompt: Any, schema: Any, params: Any) -> str:
        while not release.is_set():
            await asyncio.sleep(0.01)
        return "too late"

    slow = ScriptedLLM(held)
    with running(slow, MODEL, CONTEXT) as srv:

        async def go():
            b = OpenAIHTTPBackend(srv.base_url, MODEL, timeout=0.2, max_retries=1, backoff=0.01)
            try:
                with pytest.raises(HTTPBackendTimeout) as ctx:
                    await b.generate("hurry", max_tokens=3)
                with pytest.raises(TimeoutError):
                    _ = [e async for e in b.stream("hurry", max_tokens=3)]
            finally:
                await b.aclose()
            return ctx.value, b.stats()

        try:
            err, stats = run(asyncio.wait_for(go(), 60))
        finally:
            answered = [c for c in slow.calls if c.result is not None]
            release.set()
    assert "timed out" in str(err) and "2 attempt(s)" in str(err)
    assert stats["attempts"] == 4  # generate and stream: the first try and one retry each
    assert answered == []  # no attempt got an answer: every one was ended by the timeout


def test_an_unreachable_server_is_reported_after_retries():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def go():
        b = OpenAIHTTPBackend(f"http://127.0.0.1:{port}", MODEL, timeout=2, max_retries=2, backoff=0.01)
        try:
            with pytest.raises(HTTPBackendError, match="could not reach the server.*3 attempt"):
                await b.generate("anyone?")
        finally:
            await b.aclose()

    run(go())
