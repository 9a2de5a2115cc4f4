"""The OpenAI-compatible server, driven by the official `openai` client over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from simulacra.inference.backends.fake import ScriptedLLM
from simulacra.inference.backends.server import running
from simulacra.inference.port import GenerateResult, RequestError, StreamEvent

MODEL = "town-model"
CONTEXT = 512
USER = [{"role": "user", "content": "What are you doing today?"}]
BAD_SCHEMA = {"type": "no-such-type"}


class Plan(BaseModel):
    place: str
    minutes: int


def script(prompt: Any, schema: Any, params: Any) -> Any:
    text = prompt if isinstance(prompt, str) else " ".join(m["content"] for m in prompt)
    if "BOOM" in text:
        raise RuntimeError("the backend fell over")
    if isinstance(schema, dict):
        if "no-such-type" in json.dumps(schema):
            raise RequestError("the schema cannot be compiled", "response_format", "invalid_schema")
        if schema.get("type") == "object" and "place" in schema.get("properties", {}):
            return {"place": "Hobbs Cafe", "minutes": 45}
        return {"ok": True}
    if isinstance(schema, list):
        return schema[0]
    return "I will open the cafe at eight and then paint for a while"


@pytest.fixture(scope="module")
def server():
    llm = ScriptedLLM(script, context_length=CONTEXT)
    with running(llm, MODEL, CONTEXT, default_max_tokens=64) as srv:
        yield srv, llm


@pytest.fixture(scope="module")
def client(server):
    srv, _ = server
    with openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=10) as c:
        yield c


def test_models_health_and_stats(server, client):
    srv, _ = server
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    assert httpx.get(f"{srv.url}/health", timeout=5).json()["status"] == "ok"
    client.chat.completions.create(model=MODEL, messages=USER)
    stats = httpx.get(f"{srv.base_url}/stats", timeout=5).json()
    assert stats["requests"] >= 1 and "max_in_flight" in stats


def test_chat_completion_and_usage(server, client):
    _, llm = server
    res = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "developer", "content": "You are Isabella."}, *USER],
        max_tokens=5,
        temperature=0.3,
        top_p=0.9,
        seed=11,
        stop="zzz",
        extra_body={"top_k": 20},
    )
    choice = res.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "I will open the cafe"
    assert choice.finish_reason == "length"
    assert res.usage.completion_tokens == 5 and res.usage.prompt_tokens == 10
    assert res.usage.total_tokens == 15 and res.usage.prompt_tokens_details.cached_tokens == 0
    call = llm.calls[-1]
    assert call.prompt[0] == {"role": "system", "content": "You are Isabella."}
    p = call.params
    assert (p.max_tokens, p.temperature, p.top_p, p.top_k, p.seed, p.stop) == (5, 0.3, 0.9, 20, 11, ["zzz"])
    again = client.chat.completions.create(model=MODEL, messages=USER, max_completion_tokens=10, stop=["cafe"])
    assert again.choices[0].message.content == "I will open the "
    assert again.choices[0].finish_reason == "stop"
    assert llm.calls[-1].params.max_tokens == 10
    assert llm.calls[-1].params.temperature == 1.0  # OpenAI's default


def test_completion(server, client):
    res = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=64, stop=["paint"])
    assert res.choices[0].text == "I will open the cafe at eight and then "
    assert res.choices[0].finish_reason == "stop"
    assert res.usage.prompt_tokens == 4 and res.object == "text_completion"


def test_json_schema_and_json_object_and_choices(server, client):
    fmt = {"type": "json_schema", "json_schema": {"name": "Plan", "schema": Plan.model_json_schema(), "strict": True}}
    res = client.chat.completions.create(model=MODEL, messages=USER, response_format=fmt)
    assert Plan.model_validate_json(res.choices[0].message.content) == Plan(place="Hobbs Cafe", minutes=45)
    parsed = client.chat.completions.parse(model=MODEL, messages=USER, response_format=Plan)
    assert parsed.choices[0].message.parsed == Plan(place="Hobbs Cafe", minutes=45)
    obj = client.chat.completions.create(model=MODEL, messages=USER, response_format={"type": "json_object"})
    assert json.loads(obj.choices[0].message.content) == {"ok": True}
    choice = client.chat.completions.create(model=MODEL, messages=USER, extra_body={"guided_choice": ["go", "stay"]})
    assert choice.choices[0].message.content == "go"
    comp = client.completions.create(model=MODEL, prompt="plan:", extra_body={"response_format": fmt})
    assert Plan.model_validate_json(comp.choices[0].text).minutes == 45


def test_streaming_chat_and_completion(server, client):
    full = "I will open the cafe at eight and then paint for a while"
    stream = client.chat.completions.create(
        model=MODEL, messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for d in deltas if d) >= 2
    assert "".join(deltas) == full
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage.completion_tokens == 13 and chunks[-1].choices == []

    comp = list(client.completions.create(model=MODEL, prompt="hi", stream=True, max_tokens=4))
    assert "".join(c.choices[0].text for c in comp) == "I will open the"
    assert comp[-1].choices[0].finish_reason == "length"
    fmt = {"type": "json_schema", "json_schema": {"name": "Plan", "schema": Plan.model_json_schema()}}
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model=MODEL, messages=USER, response_format=fmt, stream=True)
    )
    assert Plan.model_validate_json(text).place == "Hobbs Cafe"


def _ok(client) -> None:
    assert client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2).choices[0].message.content


def test_bad_requests_get_openai_errors_and_the_server_goes_on(server, client):
    cases = [
        (dict(model="no-such-model"), openai.NotFoundError, "model", "model_not_found"),
        (dict(max_tokens=0), openai.BadRequestError, "max_tokens", None),
        (dict(max_tokens=-5), openai.BadRequestError, "max_tokens", None),
        (dict(max_tokens=CONTEXT + 1), openai.BadRequestError, "max_tokens", None),
        (dict(max_completion_tokens=0), openai.BadRequestError, "max_completion_tokens", None),
        (dict(n=0), openai.BadRequestError, "n", None),
        (dict(n=129), openai.BadRequestError, "n", None),
        (dict(presence_penalty=2.5), openai.BadRequestError, "presence_penalty", None),
        (dict(frequency_penalty=-3), openai.BadRequestError, "frequency_penalty", None),
        (dict(extra_body={"repetition_penalty": 0}), openai.BadRequestError, "repetition_penalty", None),
        (dict(extra_body={"no_repeat_ngram_size": -1}), openai.BadRequestError, "no_repeat_ngram_size", None),
        (dict(extra_body={"no_repeat_texts": ["a b"]}), openai.BadRequestError, "no_repeat_texts", None),
        (dict(temperature=50), openai.BadRequestError, "temperature", None),
        (
            dict(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "no-such-type"}},
                }
            ),
            openai.BadRequestError,
            "response_format",
            "invalid_schema",
        ),
        (dict(response_format={"type": "xml"}), openai.BadRequestError, "response_format", None),
        (
            dict(messages=[{"role": "user", "content": "word " * (CONTEXT + 10)}]),
            openai.BadRequestError,
            "messages",
            "context_length_exceeded",
        ),
        (dict(messages=[]), openai.BadRequestError, "messages", None),
    ]
    for kwargs, error, param, code in cases:
        args = {"model": MODEL, "messages": USER, **kwargs}
        for stream in (False, True):
            with pytest.raises(error) as exc:
                res = client.chat.completions.create(**args, stream=stream)
                list(res) if stream else None
            assert exc.value.param == param, (kwargs, exc.value.body)
            assert exc.value.type == "invalid_request_error"
            if code:
                assert exc.value.code == code
            _ok(client)
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=MODEL, prompt=["a", "b"])
    assert exc.value.param == "prompt"
    _ok(client)


def test_malformed_bodies_and_backend_crash(server, client):
    srv, _ = server
    url = f"{srv.base_url}/chat/completions"
    bad = httpx.post(
        url, content=b'{"model": "town-model", "messages": [', timeout=5, headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400
    err = bad.json()["error"]
    assert err["type"] == "invalid_request_error" and "not valid JSON" in err["message"]
    missing = httpx.post(url, json={"model": MODEL}, timeout=5)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
    wrong_role = httpx.post(url, json={"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, timeout=5)
    assert wrong_role.status_code == 400 and wrong_role.json()["error"]["param"] == "messages.0.role"
    assert httpx.get(f"{srv.url}/nowhere", timeout=5).json()["error"]["code"] == "not_found"
    _ok(client)
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "BOOM"}])
    assert "fell over" in exc.value.message and exc.value.type == "server_error"
    with pytest.raises(openai.InternalServerError):
        list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "BOOM"}], stream=True))
    _ok(client)
    health = httpx.get(f"{srv.url}/health", timeout=5).json()
    assert health["errors"] >= 6 and health["in_flight"] == 0


def test_concurrent_requests_are_not_serialised():
    """No request is answered until all 16 are inside the backend together: a server that queued them
    would never get there (the wait's timeout is only a guard against hanging). How long a batch takes
    is measured by `make bench-server`, not here."""
    n = 16
    arrived: list[str] = []
    all_in: asyncio.Event | None = None

    async def barrier(prompt: Any, schema: Any, params: Any) -> str:
        nonlocal all_in
        all_in = all_in or asyncio.Event()  # made on the server's event loop
        arrived.append(prompt[0]["content"])
        if len(arrived) == n:
            all_in.set()
        try:
            await asyncio.wait_for(all_in.wait(), 30)
        except TimeoutError:
            raise RuntimeError(f"only {len(arrived)} of {n} requests reached the backend together") from None
        return "concurrent answer"

    llm = ScriptedLLM(barrier)
    with running(llm, MODEL, CONTEXT) as srv:

        async def go() -> list[str]:
            async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=60) as c:
                results = await asyncio.gather(
                    *(
                        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"resident {i}"}])
                        for i in range(n)
                    )
                )
                return [r.choices[0].message.content for r in results]

        texts = asyncio.run(go())
    assert texts == ["concurrent answer"] * n
    assert llm.stats()["max_in_flight"] == n  # the server overlaps requests instead of queueing them
    assert sorted(arrived) == sorted(f"resident {i}" for i in range(n))
    assert sorted(c.text for c in llm.calls) == sorted(f"user: resident {i}" for i in range(n))


class EndlessLLM:
    """Streams one word every 10 ms (bounded), and notes when its stream is closed."""

    def __init__(self) -> None:
        self.closed_streams = 0

    async def generate(self, prompt: Any, **kwargs: Any) -> GenerateResult:
        return GenerateResult(text="x")

    async def stream(self, prompt: Any, **kwargs: Any) -> AsyncIterator[StreamEvent]:
        try:
            for _ in range(500):
                await asyncio.sleep(0.01)
                yield StreamEvent("word ")
            yield StreamEvent("", GenerateResult(text="word " * 500, completion_tokens=500))
        finally:
            self.closed_streams += 1

    def stats(self) -> dict[str, float]:
        return {}

    async def aclose(self) -> None:
        return None


def test_client_leaving_a_stream_closes_the_backend_stream():
    llm = EndlessLLM()
    with running(llm, MODEL, CONTEXT) as srv:
        with openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=10) as c:
            stream = c.completions.create(model=MODEL, prompt="go", stream=True)
            for i, _ in enumerate(stream):
                if i == 3:
                    break
            stream.close()
        deadline = time.monotonic() + 3
        while llm.closed_streams == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert llm.closed_streams == 1


def test_lone_surrogates_are_400s_naming_the_field_whatever_the_backend(server, client):
    """JSON can carry half a surrogate pair (`"\\ud800"`); no tokenizer can encode it, so the server
    refuses it before the backend (here the scripted fake) sees it, for every string field."""
    srv, llm = server
    calls = len(llm.calls)
    lone = "\\ud800"  # as the JSON text spells it
    user = '[{"role": "user", "content": "hi"}]'
    cases = [
        ("chat/completions", f'"messages": [{{"role": "user", "content": "{lone}"}}]', "messages[0].content"),
        ("chat/completions", f'"messages": {user}, "stop": "a{lone}"', "stop"),
        ("chat/completions", f'"messages": {user}, "guided_choice": ["go", "{lone}"]', "guided_choice[1]"),
        (
            "chat/completions",
            f'"messages": {user}, "response_format": {{"type": "json_schema", "json_schema": '
            f'{{"name": "x", "schema": {{"properties": {{"{lone}": {{}}}}}}}}}}',
            "response_format.json_schema.schema.properties (a key)",
        ),
        ("completions", f'"prompt": "{lone}x"', "prompt"),
        ("completions", f'"prompt": "x", "stop": ["y", "{lone}"]', "stop[1]"),
    ]
    for path, fields, param in cases:
        for stream in ("false", "true"):
            raw = f'{{"model": "{MODEL}", "max_tokens": 4, "stream": {stream}, {fields}}}'
            res = httpx.post(
                f"{srv.base_url}/{path}", content=raw.encode(), headers={"content-type": "application/json"}, timeout=5
            )
            assert res.status_code == 400, (raw, res.text)
            err = res.json()["error"]
            assert (err["param"], err["code"], err["type"]) == (param, "invalid_unicode", "invalid_request_error")
            assert "not valid Unicode" in err["message"] and "lone surrogate (U+D800)" in err["message"]
    assert len(llm.calls) == calls  # none reached the backend
    pair = httpx.post(  # a whole pair is one character, and fine
        f"{srv.base_url}/chat/completions",
        content=f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "\\ud83d\\ude00"}}]}}'.encode(),
        headers={"content-type": "application/json"},
        timeout=5,
    )
    assert pair.status_code == 200 and llm.calls[-1].text == "user: \U0001f600"
    _ok(client)
