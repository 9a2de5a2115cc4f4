"""The OpenAI-compatible server over the real engine and packaged model, driven by the official client.

The engine runs in the fp32 reference mode, so a greedy reply can be compared token for token with
`greedy_generate` on every CPU; under bf16 a reply can turn on a near-tie between two tokens (the
France question answered "L'Étoile, …" on one CPU and "Paris" on another), which is no test of the
server. bf16 serving is exercised by the real-engine town tests.
"""

from __future__ import annotations

import asyncio

import openai
import pytest
import torch

from simulacra.inference.backends.server import running
from simulacra.inference.engine import Engine
from simulacra.inference.generate import greedy_generate
from simulacra.inference.loader import load_model

pytestmark = pytest.mark.slow
MODEL = "smollm2"


@pytest.fixture(scope="module")
def server():
    lm = load_model(dtype=torch.float32)
    engine = Engine(lm)
    with running(engine, MODEL, engine.context_length) as srv:
        yield srv, engine, lm
    asyncio.run(engine.aclose())


def test_chat_completion_and_models(server) -> None:
    srv, _, lm = server
    client = openai.OpenAI(base_url=srv.base_url, api_key="unused")
    assert [m.id for m in client.models.list()] == [MODEL]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    tok = lm.tokenizer
    ids = tok.encode(tok.apply_chat_template(messages))
    want = greedy_generate(lm.model, [ids], 24, stop_ids=tok.eos_ids)[0]
    assert reply.choices[0].message.content == tok.decode(want)
    assert reply.usage.prompt_tokens == len(ids)
    assert reply.usage.completion_tokens == len([t for t in want if t not in tok.eos_ids])


def test_json_schema_response_format_always_parses(server) -> None:
    import json

    srv, _, _ = server
    client = openai.OpenAI(base_url=srv.base_url, api_key="unused")
    schema = {
        "type": "object",
        "properties": {
            "place": {"type": "string", "enum": ["cafe", "park", "library"]},
            "minutes": {"type": "integer"},
        },
        "required": ["place", "minutes"],
    }
    for seed in range(3):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Where do you go to read, and for how long?"}],
            response_format={"type": "json_schema", "json_schema": {"name": "plan", "schema": schema}},
            max_tokens=40,
            temperature=0.8,
            seed=seed,
        )
        value = json.loads(reply.choices[0].message.content)
        assert value["place"] in ("cafe", "park", "library") and isinstance(value["minutes"], int)


def test_concurrent_clients_are_batched(server) -> None:
    srv, engine, _ = server
    before = dict(engine.stats())

    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=srv.base_url, api_key="unused")
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"Say a word about the number {i}."}],
                    max_tokens=12,
                    temperature=0,
                )
                for i in range(12)
            )
        )
        return [r.choices[0].message.content for r in replies]

    texts = asyncio.run(main())
    after = engine.stats()
    assert all(texts)
    steps = after["steps"] - before["steps"]
    seqs = after["mean_batch_seqs"] * after["steps"] - before["mean_batch_seqs"] * before["steps"]
    assert seqs / steps > 3  # many requests share each forward pass


def test_streaming_chat(server) -> None:
    srv, _, _ = server
    client = openai.OpenAI(base_url=srv.base_url, api_key="unused")
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 20}
    client.chat.completions.create(**ask, temperature=0)  # both runs below are then the same cache hit
    stream = client.chat.completions.create(**ask, temperature=0, stream=True)
    deltas = [c.choices[0].delta.content or "" for c in stream if c.choices]
    whole = client.chat.completions.create(**ask, temperature=0)
    assert len(deltas) > 2 and "".join(deltas) == whole.choices[0].message.content


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server) -> None:
    srv, engine, _ = server
    client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
    msg = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=msg, max_tokens=4)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "word " * 9000}], max_tokens=4
        )
    assert err.value.code == "context_length_exceeded"
    for bad in (dict(max_tokens=0), dict(max_tokens=10**7), dict(temperature=-3)):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL, messages=msg, **bad)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL,
            messages=msg,
            max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nosuchtype"}}},
        )
    ok = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0)
    assert ok.choices[0].text
    assert engine.stats()["running"] == 0
