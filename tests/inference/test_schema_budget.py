"""A schema-constrained reply always parses, even when `max_tokens` runs out, and a request whose text
is not valid Unicode is refused, not crashed on.

The engine here runs a tiny random Llama over the packaged SmolLM2 tokenizer (so the grammar sees a
real 49k vocabulary): its output is garbage that wanders far from any closing bracket, which is what
the budget's forced close must survive. Through the server, the official `openai` client drives it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from simulacra.inference.backends.server import running
from simulacra.inference.engine import Engine, EngineConfig
from simulacra.inference.engine.structured import GrammarCompiler
from simulacra.inference.loader import LoadedModel
from simulacra.inference.port import RequestError
from tests.inference.test_structured import RAW_SCHEMA, Day, Place
from tests.inference.tiny_models import tiny_llama_with_packaged_tokenizer

MODEL = "tiny"


class Visit(BaseModel):
    place: str = Field(max_length=24)
    minutes: int = Field(ge=5, le=90)
    with_whom: list[str] = Field(default_factory=list, max_length=3)


SCHEMAS: dict[str, Any] = {"Day": Day, "Place": Place, "Visit": Visit, "raw": RAW_SCHEMA, "object": {"type": "object"}}


def check_value(schema: Any, text: str) -> Any:
    """`text` is a value of `schema`, checked independently of the engine's own parse."""
    if isinstance(schema, type):
        return schema.model_validate_json(text)
    value = json.loads(text)
    assert isinstance(value, dict)
    if schema is RAW_SCHEMA:
        assert {"name", "age", "ok"} <= set(value) <= {"name", "age", "tags", "ok"}
        assert isinstance(value["name"], str) and len(value["name"]) <= 12
        assert isinstance(value["age"], int) and 0 <= value["age"] <= 120
        assert isinstance(value["ok"], bool)
        assert set(value.get("tags", [])) <= {"a", "b", "c d"}
    return value


@pytest.fixture(scope="module")
def tiny_lm() -> LoadedModel:
    return tiny_llama_with_packaged_tokenizer()


def new_engine(lm: LoadedModel, like: Engine | None = None) -> Engine:
    eng = Engine(lm, EngineConfig(device="cpu", kv_cache_gb=0.05, seed=3))
    if like is not None:  # share the grammar compiler (its llguidance tokenizer takes seconds to build)
        eng._grammars = like._grammar_compiler()
    return eng


@pytest.fixture(scope="module")
def engine(tiny_lm):
    eng = new_engine(tiny_lm)
    yield eng
    asyncio.run(eng.aclose())


@pytest.fixture(scope="module")
def min_tokens(engine) -> dict[str, int]:
    compiler: GrammarCompiler = engine._grammar_compiler()
    out = {name: compiler.min_tokens(schema) for name, schema in SCHEMAS.items()}
    assert all(n is not None and n >= 1 for n in out.values()), out
    return out


def ask(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Plan stop {i} of a baker's day, as JSON."}]


# ----------------------------------------------------------------- the engine


async def test_replies_cut_by_max_tokens_still_parse(engine, min_tokens) -> None:
    """Every budget from the shortest value up: each reply validates, never exceeds max_tokens, and a
    reply the budget closed reports "length" with its parsed value."""
    jobs = []
    for name, schema in SCHEMAS.items():
        low = min_tokens[name]
        for max_tokens in sorted({low, low + 1, low + 2, low + 5, low + 11, low + 23}):
            for seed, temperature in ((0, 1.0), (1, 0.0)):
                jobs.append((name, schema, max_tokens, seed, temperature))
    results = await asyncio.gather(
        *(
            engine.generate(ask(i), schema=schema, max_tokens=mt, seed=seed, temperature=temp)
            for i, (_, schema, mt, seed, temp) in enumerate(jobs)
        )
    )
    reasons = []
    for (name, schema, max_tokens, _, _), r in zip(jobs, results, strict=True):
        value = check_value(schema, r.text)
        assert r.parsed is not None and r.parsed == value, (name, r.text)
        assert 1 <= r.completion_tokens <= max_tokens
        assert r.finish_reason in ("stop", "length")
        reasons.append(r.finish_reason)
    assert reasons.count("length") >= len(jobs) // 2  # the random model rarely closes anything itself
    assert engine.stats()["running"] == 0


async def test_the_shortest_value_fits_a_budget_of_exactly_its_length(engine, min_tokens) -> None:
    for name, schema in SCHEMAS.items():
        r = await engine.generate(ask(0), schema=schema, max_tokens=min_tokens[name], temperature=1.0, seed=5)
        check_value(schema, r.text)
        assert r.parsed is not None and r.completion_tokens <= min_tokens[name]


async def test_max_tokens_below_any_value_is_refused_up_front(engine, min_tokens) -> None:
    for name in ("Day", "Place", "raw"):
        with pytest.raises(RequestError) as info:
            await engine.generate(ask(0), schema=SCHEMAS[name], max_tokens=min_tokens[name] - 1)
        assert (info.value.param, info.value.code) == ("max_tokens", "max_tokens_too_small")
        assert str(min_tokens[name]) in str(info.value)
    assert engine.stats()["running"] == engine.stats()["waiting"] == 0


async def test_forced_closes_are_reproducible(tiny_lm, engine) -> None:
    """Two fresh engines, the same four requests: the same texts, forced closes included."""

    async def run() -> list[tuple[str, str]]:
        eng = new_engine(tiny_lm, like=engine)
        try:
            rs = await asyncio.gather(
                *(eng.generate(ask(i), schema=Day, max_tokens=44, temperature=1.0, seed=i) for i in range(4))
            )
        finally:
            await eng.aclose()
        return [(r.text, r.finish_reason) for r in rs]

    first = await run()
    assert "length" in {reason for _, reason in first}
    assert first == await run()


async def test_a_streamed_forced_close_arrives_whole(engine, min_tokens) -> None:
    forced = 0
    for seed in range(4):
        deltas, result = [], None
        async for event in engine.stream(ask(seed), schema=Day, max_tokens=min_tokens["Day"] + 3, seed=seed):
            deltas.append(event.delta)
            result = event.result
        assert result is not None and "".join(deltas) == result.text
        assert isinstance(result.parsed, Day) and result.parsed == Day.model_validate_json(result.text)
        forced += result.finish_reason == "length"
    assert forced >= 1


async def test_a_replay_gives_a_forced_reply_the_same_parsed_value(engine, min_tokens) -> None:
    """A run's replay must see what the live run saw: the recorded "length" reply re-parses."""
    from simulacra.inference.backends.recording import RecordingLLM, ReplayLLM

    records: list = []
    live = RecordingLLM(engine, records.append)
    asked = [dict(schema=Day, max_tokens=min_tokens["Day"] + 2, temperature=1.0, seed=s) for s in range(3)]
    results = [await live.generate(ask(i), **kw) for i, kw in enumerate(asked)]
    assert "length" in {r.finish_reason for r in results}
    replay = ReplayLLM(records)
    for i, (kw, r) in enumerate(zip(asked, results, strict=True)):
        again = await replay.generate(ask(i), **kw)
        assert (again.text, again.finish_reason, again.parsed) == (r.text, r.finish_reason, r.parsed)
        assert isinstance(again.parsed, Day)


@pytest.mark.parametrize(
    ("prompt", "stop", "param"),
    [
        ("\ud800", None, "prompt"),
        ("fine", ["ok", "x\udfffy"], "stop[1]"),
        ([{"role": "user", "content": "fine"}, {"role": "user", "content": "a\ud83d"}], None, "messages[1].content"),
    ],
)
async def test_text_that_is_not_valid_unicode_is_a_request_error(engine, prompt, stop, param) -> None:
    with pytest.raises(RequestError) as info:
        await engine.generate(prompt, stop=stop, max_tokens=4)
    assert (info.value.param, info.value.code) == (param, "invalid_unicode")
    assert "lone surrogate" in str(info.value)


# ----------------------------------------------------------------- through the server


@pytest.fixture(scope="module")
def server(engine):
    with running(engine, MODEL, engine.context_length) as srv:
        yield srv


def fmt(schema: Any) -> dict[str, Any]:
    body = schema.model_json_schema() if isinstance(schema, type) else schema
    return {"type": "json_schema", "json_schema": {"name": "reply", "schema": body}}


def test_concurrent_openai_clients_get_schema_replies_that_always_parse(server, min_tokens) -> None:
    """32 concurrent requests, half constrained with budgets that cut the random model short."""
    constrained = ["Visit", "Place", "Day", "raw"]

    async def main() -> list[tuple[str | None, int, Any]]:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=60) as client:

            async def one(i: int) -> tuple[str | None, int, Any]:
                name = constrained[i % 4] if i % 2 == 0 else None
                max_tokens = 16 if name is None else min_tokens[name] + (i * 7) % 19
                extra = {} if name is None else {"response_format": fmt(SCHEMAS[name])}
                reply = await client.chat.completions.create(
                    model=MODEL, messages=ask(i), max_tokens=max_tokens, temperature=1.0, seed=i, **extra
                )
                return name, max_tokens, reply

            return await asyncio.gather(*(one(i) for i in range(32)))

    reasons = []
    for name, max_tokens, reply in asyncio.run(main()):
        choice = reply.choices[0]
        assert reply.usage.completion_tokens <= max_tokens
        if name is None:
            assert choice.finish_reason in ("stop", "length")
            continue
        check_value(SCHEMAS[name], choice.message.content)
        reasons.append(choice.finish_reason)
    assert len(reasons) == 16 and set(reasons) <= {"stop", "length"} and "length" in reasons


def test_streamed_schema_reply_cut_by_the_budget_parses(server, min_tokens) -> None:
    with openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=60) as client:
        for name in ("Visit", "Day"):
            chunks = list(
                client.chat.completions.create(
                    model=MODEL,
                    messages=ask(3),
                    max_tokens=min_tokens[name] + 4,
                    temperature=1.0,
                    seed=3,
                    response_format=fmt(SCHEMAS[name]),
                    stream=True,
                )
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            check_value(SCHEMAS[name], text)
            assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
                "length"
            ]


def test_max_tokens_too_small_for_the_schema_is_a_400(server, min_tokens) -> None:
    with openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=60) as client:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as exc:
                res = client.chat.completions.create(
                    model=MODEL, messages=ask(0), max_tokens=2, response_format=fmt(Day), stream=stream
                )
                list(res) if stream else None
            assert (exc.value.param, exc.value.code) == ("max_tokens", "max_tokens_too_small")


LONE = "\\ud800"  # as the JSON text spells it: a lone high surrogate


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("chat/completions", f'{{"model": "tiny", "messages": [{{"role": "user", "content": "{LONE}"}}]}}', None),
        (
            "chat/completions",
            f'{{"model": "tiny", "messages": [{{"role": "user", "content": "hi"}}, '
            f'{{"role": "user", "content": [{{"type": "text", "text": "a{LONE}b"}}]}}]}}',
            "messages[1].content[0].text",
        ),
        (
            "chat/completions",
            f'{{"model": "tiny", "messages": [{{"role": "user", "content": "hi"}}], "stop": ["ok", "{LONE}"]}}',
            "stop[1]",
        ),
        ("chat/completions", f'{{"model": "ti{LONE}ny", "messages": [{{"role": "user", "content": "hi"}}]}}', "model"),
        (
            "chat/completions",
            '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": '
            f'"json_schema", "json_schema": {{"name": "x", "schema": {{"enum": ["a", "{LONE}"]}}}}}}}}',
            "response_format.json_schema.schema.enum[1]",
        ),
        ("completions", f'{{"model": "tiny", "prompt": "{LONE}"}}', "prompt"),
        ("completions", f'{{"model": "tiny", "prompt": ["x{LONE}"]}}', "prompt[0]"),
        ("completions", f'{{"model": "tiny", "prompt": "hi", "stop": "{LONE}"}}', "stop"),
    ],
    ids=["content", "content-part", "stop", "model", "schema", "prompt", "prompt-list", "completion-stop"],
)
def test_a_lone_surrogate_in_a_raw_request_is_a_400_naming_the_field(server, path, body, param) -> None:
    param = param or "messages[0].content"
    for stream in (False, True):
        raw = body[:-1] + f', "stream": {json.dumps(stream)}, "max_tokens": 4}}'
        res = httpx.post(
            f"{server.base_url}/{path}", content=raw.encode(), headers={"content-type": "application/json"}, timeout=30
        )
        assert res.status_code == 400, res.text
        err = res.json()["error"]
        assert (err["param"], err["code"], err["type"]) == (param, "invalid_unicode", "invalid_request_error")
        assert "not valid Unicode" in err["message"] and "lone surrogate (U+D800)" in err["message"]
    ok = httpx.post(
        f"{server.base_url}/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "a whole pair: \U0001f600"}], "max_tokens": 3},
        timeout=30,
    )
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] in ("stop", "length")
