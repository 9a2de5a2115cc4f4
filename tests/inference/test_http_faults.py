"""OpenAIHTTPBackend against a raw HTTP server on 127.0.0.1 that misbehaves after saying 200.

Each fault must end in a clear ``HTTPBackendError`` (the URL, what was wrong, the first bytes) or a
retry where retrying is safe; never a hang, never half an answer passed off as whole. The server
writes bytes by hand (asyncio streams), so it can break HTTP framing the way a real proxy or a
crashing server does. Every server loop is bounded and every test runs under a guard timeout.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from simulacra.inference.backends.http import HTTPBackendError, HTTPBackendTimeout, OpenAIHTTPBackend

MODEL = "m"
USER = [{"role": "user", "content": "Where are you going?"}]
GUARD_S = 30  # a hang fails the test here instead of blocking the suite

Writer = asyncio.StreamWriter
Action = Callable[[Writer], Awaitable[None]]


@asynccontextmanager
async def misbehaving(*actions: Action):
    """A server whose n-th request is answered by ``actions[min(n, last)]``; yields (url, requests)."""
    requests: list[dict[str, Any]] = []
    tasks: set[asyncio.Task] = set()

    async def handle(reader: asyncio.StreamReader, writer: Writer) -> None:
        tasks.add(asyncio.current_task())
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode("latin-1").split("\r\n"):
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            body = json.loads(await reader.readexactly(length)) if length else {}
            requests.append({"path": head.split(b" ")[1].decode(), "body": body})
            await actions[min(len(requests) - 1, len(actions) - 1)](writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", requests
    finally:
        server.close()
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def sse(obj: Any) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()


def delta(text: str, finish: str | None = None) -> bytes:
    return sse({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]})


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def stream_of(*events: bytes, end: bool = True) -> Action:
    """A chunked event stream; without ``end`` the connection drops before the last chunk."""

    async def act(w: Writer) -> None:
        w.write(SSE_HEAD)
        for e in events:
            w.write(chunk(e))
            await w.drain()
        if end:
            w.write(b"0\r\n\r\n")
            await w.drain()

    return act


GOOD_STREAM = stream_of(delta("to the "), delta("cafe", "stop"), sse("[DONE]"))


def json_answer(text: str) -> Action:
    body = json.dumps(
        {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        }
    ).encode()

    async def act(w: Writer) -> None:
        w.write(JSON_HEAD % len(body) + body)
        await w.drain()

    return act


def raw(data: bytes) -> Action:
    async def act(w: Writer) -> None:
        w.write(data)
        await w.drain()

    return act


def backend(url: str, **kw: Any) -> OpenAIHTTPBackend:
    kw.setdefault("backoff", 0.001)
    kw.setdefault("timeout", 5)
    return OpenAIHTTPBackend(url, MODEL, **kw)


async def collect(b: OpenAIHTTPBackend, **kw: Any) -> tuple[list[str], Any, BaseException | None]:
    """The deltas received, the final result (None if none came) and the error that ended the stream."""
    deltas, result = [], None
    try:
        async for ev in b.stream(USER, max_tokens=8, **kw):
            if ev.result is not None:
                result = ev.result
            elif ev.delta:
                deltas.append(ev.delta)
    except HTTPBackendError as exc:
        return deltas, result, exc
    return deltas, result, None


async def guarded(coro: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(coro, GUARD_S)


# ---- a stream dropped mid-way ---------------------------------------------------------------------------


async def test_a_stream_dropped_after_deltas_raises_and_is_not_retried() -> None:
    dropped = stream_of(delta("to the "), delta("ca"), end=False)  # chunked, connection gone before the end
    async with misbehaving(dropped, GOOD_STREAM) as (url, requests):
        b = backend(url, max_retries=3)
        deltas, result, err = await guarded(collect(b))
        stats = b.stats()
        await b.aclose()
    assert deltas == ["to the ", "ca"] and result is None  # no final event: the half answer is not passed off
    assert isinstance(err, HTTPBackendError) and not isinstance(err, HTTPBackendTimeout)
    msg = str(err)
    assert f"{url}/v1/chat/completions" in msg and "the stream broke" in msg
    assert "2 delta(s) had already been passed on, so it was not retried" in msg
    assert "first bytes: b'data: {" in msg and '"to the "' in msg
    assert len(requests) == 1 and stats["errors"] == 1  # not retried: the caller already holds two deltas


async def test_a_stream_that_ends_cleanly_without_done_or_finish_is_incomplete() -> None:
    async def close_framed(w: Writer) -> None:  # no length, no chunking: EOF is a legal end of the body
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        w.write(delta("to the ") + delta("ca"))
        await w.drain()

    async with misbehaving(close_framed) as (url, requests):
        b = backend(url, max_retries=2)
        deltas, result, err = await guarded(collect(b))
        await b.aclose()
    assert deltas == ["to the ", "ca"] and result is None
    assert err is not None and "ended before the answer was complete" in str(err)
    assert "no finish_reason, no [DONE]" in str(err) and url in str(err)
    assert len(requests) == 1


async def test_a_stream_dropped_before_its_first_delta_is_retried() -> None:
    early = stream_of(b": ping\n\n", end=False)
    async with misbehaving(early, GOOD_STREAM) as (url, requests):
        b = backend(url, max_retries=2)
        deltas, result, err = await guarded(collect(b))
        stats = b.stats()
        await b.aclose()
    assert err is None and deltas == ["to the ", "cafe"]
    assert result.text == "to the cafe" and result.finish_reason == "stop"
    assert len(requests) == 2 and stats["retries"] == 1 and requests[1]["body"]["stream"] is True


async def test_a_stream_that_always_drops_early_gives_up_after_the_retries() -> None:
    async with misbehaving(stream_of(b": ping\n\n", end=False)) as (url, requests):
        b = backend(url, max_retries=2)
        deltas, result, err = await guarded(collect(b))
        await b.aclose()
    assert deltas == [] and result is None
    assert err is not None and "gave up after 3 attempt(s)" in str(err) and "first bytes: b': ping" in str(err)
    assert len(requests) == 3


async def test_a_held_choice_stream_is_retried_even_after_deltas() -> None:
    """With a list of choices nothing reaches the caller before the end, so a break is always safe to retry."""
    half = stream_of(delta('"ca'), end=False)
    whole = stream_of(delta('"cafe'), delta('"', "stop"), sse("[DONE]"))
    async with misbehaving(half, whole) as (url, requests):
        b = backend(url, max_retries=1)
        deltas, result, err = await guarded(collect(b, schema=["cafe", "park"]))
        await b.aclose()
    assert err is None and result.text == "cafe" and result.parsed == "cafe"
    assert deltas == []  # the whole choice comes with the final event, never a piece of it
    assert len(requests) == 2


# ---- a 200 whose body cannot be read --------------------------------------------------------------------


async def test_a_200_with_an_unreadable_body_is_retried_then_reported_with_its_first_bytes() -> None:
    html = b"<html><body>502 Bad Gateway (proxy)</body></html>"
    page = raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s" % (len(html), html))
    async with misbehaving(page) as (url, requests):
        b = backend(url, max_retries=2)
        with pytest.raises(HTTPBackendError) as ctx:
            await guarded(b.generate(USER, max_tokens=4))
        stats = b.stats()
        await b.aclose()
    msg = str(ctx.value)
    assert f"{url}/v1/chat/completions" in msg and "HTTP 200 but the body is not an OpenAI answer (not JSON" in msg
    assert "first bytes: b'<html><body>502 Bad Gateway" in msg and "gave up after 3 attempt(s)" in msg
    assert ctx.value.status == 200 and len(requests) == 3 and stats["errors"] == 1


@pytest.mark.parametrize(
    "body, why",
    [
        (b'{"id": "x", "object": "chat.completion"}', "no choices"),
        (b'[{"text": "cafe"}]', "a JSON list, not an object"),
        (b'{"choices": [{"index": 0, "message": {"content": 7}}]}', "the answer's text is a int"),
        (b'{"choices": [{"index": 0, "message": {"content": "caf', "not JSON"),
    ],
)
async def test_a_200_that_is_json_but_not_an_answer_names_what_is_missing(body: bytes, why: str) -> None:
    page = raw(JSON_HEAD % len(body) + body)
    async with misbehaving(page) as (url, requests):
        b = backend(url, max_retries=0)
        with pytest.raises(HTTPBackendError) as ctx:
            await guarded(b.generate("Once", max_tokens=4))
        await b.aclose()
    assert f"{url}/v1/completions" in str(ctx.value) and why in str(ctx.value)
    assert repr(body[:20])[2:-1] in str(ctx.value)  # the first bytes, as received
    assert len(requests) == 1


async def test_an_unreadable_200_then_a_good_answer_succeeds() -> None:
    garbage = raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n\x00\x01\x02\x03\x04")
    async with misbehaving(garbage, json_answer("to the cafe")) as (url, requests):
        b = backend(url, max_retries=1)
        res = await guarded(b.generate(USER, max_tokens=4))
        stats = b.stats()
        await b.aclose()
    assert res.text == "to the cafe" and res.finish_reason == "stop" and res.completion_tokens == 2
    assert len(requests) == 2 and stats["retries"] == 1 and stats["errors"] == 0


async def test_a_body_cut_short_of_its_content_length_is_a_broken_connection() -> None:
    cut = raw(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{"choices": [{"ind')
    async with misbehaving(cut) as (url, requests):
        b = backend(url, max_retries=1)
        with pytest.raises(HTTPBackendError) as ctx:
            await guarded(b.generate(USER, max_tokens=4))
        await b.aclose()
    msg = str(ctx.value)
    assert url in msg and "the connection broke mid-answer" in msg and "gave up after 2 attempt(s)" in msg
    assert "could not reach" not in msg and len(requests) == 2


# ---- broken server-sent events --------------------------------------------------------------------------


async def test_an_event_that_is_not_json_is_reported_with_the_event_and_first_bytes() -> None:
    broken = stream_of(b'data: {"choices": [{"delta": {"content": "to th\n\n', sse("[DONE]"))
    async with misbehaving(broken) as (url, requests):
        b = backend(url, max_retries=1)
        deltas, result, err = await guarded(collect(b))
        await b.aclose()
    assert deltas == [] and result is None and err is not None
    msg = str(err)
    assert url in msg and "a server-sent event that is not JSON" in msg and '\'{"choices": [{"delta"' in msg
    assert "gave up after 2 attempt(s)" in msg and len(requests) == 2  # nothing passed on yet: retried once


async def test_a_broken_event_after_a_delta_raises_without_retrying() -> None:
    broken = stream_of(delta("to the "), b"data: [1, 2\n\n", sse("[DONE]"))
    async with misbehaving(broken, GOOD_STREAM) as (url, requests):
        b = backend(url, max_retries=3)
        deltas, result, err = await guarded(collect(b))
        await b.aclose()
    assert deltas == ["to the "] and result is None
    assert err is not None and "not JSON: '[1, 2'" in str(err) and "1 delta(s) had already been passed on" in str(err)
    assert len(requests) == 1


@pytest.mark.parametrize(
    "event, why",
    [
        (b"data: [1, 2]\n\n", "not a JSON object"),
        (b'data: {"choices": ["cafe"]}\n\n', "a choice that is not an object"),
        (b'data: {"choices": [{"delta": {"content": 5}}]}\n\n', "a delta that is not text"),
        (b"data: caf\xc3\n\n", "not UTF-8"),
    ],
)
async def test_malformed_events(event: bytes, why: str) -> None:
    async with misbehaving(stream_of(event, sse("[DONE]"))) as (url, requests):
        b = backend(url, max_retries=0)
        deltas, result, err = await guarded(collect(b))
        await b.aclose()
    assert deltas == [] and result is None and err is not None
    assert why in str(err) and url in str(err) and "first bytes: b'data: " in str(err)


# ---- never hang ------------------------------------------------------------------------------------------


async def test_a_server_trickling_keep_alives_cannot_hold_a_stream_forever() -> None:
    """Each read arrives well within ``timeout``; only ``total_timeout`` can end the attempt."""
    sent = []

    async def trickle(w: Writer) -> None:
        w.write(SSE_HEAD)
        for _ in range(2000):  # bounded: the test's guard ends first
            w.write(chunk(b": ping\n\n"))
            await w.drain()
            sent.append(1)
            await asyncio.sleep(0.01)

    async with misbehaving(trickle) as (url, requests):
        b = backend(url, timeout=5, total_timeout=0.3, max_retries=1)
        deltas, result, err = await guarded(collect(b))
        await b.aclose()
    assert isinstance(err, HTTPBackendTimeout) and isinstance(err, TimeoutError)
    assert "not finished within total_timeout=0.3 s" in str(err) and "gave up after 2 attempt(s)" in str(err)
    assert deltas == [] and result is None and len(requests) == 2 and len(sent) < 4000


async def test_a_body_trickled_byte_by_byte_cannot_hold_a_request_forever() -> None:
    async def trickle(w: Writer) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(2000):
            w.write(b" ")
            await w.drain()
            await asyncio.sleep(0.01)

    async with misbehaving(trickle) as (url, requests):
        b = backend(url, timeout=5, total_timeout=0.3, max_retries=0)
        with pytest.raises(HTTPBackendTimeout) as ctx:
            await guarded(b.generate(USER, max_tokens=4))
        await b.aclose()
    assert "no whole answer within total_timeout=0.3 s" in str(ctx.value) and url in str(ctx.value)
    assert len(requests) == 1


async def test_a_well_behaved_stream_and_answer_still_work() -> None:
    """The same server, behaving: the checks above do not reject a proper answer."""
    async with misbehaving(GOOD_STREAM, json_answer("home")) as (url, requests):
        b = backend(url)
        deltas, result, err = await guarded(collect(b))
        res = await guarded(b.generate(USER, max_tokens=4))
        stats = b.stats()
        await b.aclose()
    assert err is None and deltas == ["to the ", "cafe"] and result.text == "to the cafe"
    assert res.text == "home" and stats["retries"] == 0 and stats["errors"] == 0 and len(requests) == 2
