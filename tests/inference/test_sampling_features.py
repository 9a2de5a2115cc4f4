"""Sampling features serving users expect: n samples of one prompt, OpenAI's presence and frequency
penalties, HF/vLLM's repetition penalty and no-repeat n-grams, through the engine, the server, the HTTP
backend, the fake and the replay.

Each is checked for its effect, not only for being accepted: the processed logits against a hand
computation (and transformers' processor), bans against the n-grams of the actual output ids, n samples
against n single requests and the block manager's reference counts. The model is a tiny random fp32
Llama over the packaged tokenizer, in deterministic mode, so no comparison rests on a near-tie.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from typing import Any

import httpx
import openai
import pytest
import torch
from pydantic import BaseModel, Field

from simulacra.inference.backends.fake import ScriptedLLM
from simulacra.inference.backends.http import OpenAIHTTPBackend
from simulacra.inference.backends.recording import RecordingLLM, ReplayLLM, read_jsonl, write_jsonl
from simulacra.inference.backends.server import running
from simulacra.inference.engine import Engine, EngineConfig
from simulacra.inference.engine.sampling import NgramBans, Penalties, apply_penalties, ngram_table
from simulacra.inference.engine.sequence import Status
from simulacra.inference.loader import LoadedModel
from simulacra.inference.port import GenerateResult, RequestError, SamplingParams, request_key, sample_seed
from tests.inference.tiny_models import tiny_llama_with_packaged_tokenizer

MODEL = "tiny"
PROMPT = "The baker opened the shop early and the whole street smelled of fresh bread and coffee."


class Visit(BaseModel):
    place: str = Field(max_length=20)
    minutes: int = Field(ge=5, le=90)


@pytest.fixture(scope="module")
def tiny_lm() -> LoadedModel:
    return tiny_llama_with_packaged_tokenizer()


def new_engine(lm: LoadedModel, like: Engine | None = None) -> Engine:
    eng = Engine(lm, EngineConfig(device="cpu", kv_cache_gb=0.05, deterministic=True))
    if like is not None:  # share the grammar compiler (its llguidance tokenizer takes seconds to build)
        eng._grammars = like._grammar_compiler()
    return eng


@pytest.fixture(scope="module")
def engine(tiny_lm):
    eng = new_engine(tiny_lm)
    yield eng
    asyncio.run(eng.aclose())


def spy_outputs(engine: Engine) -> list[list[int]]:
    """The output ids of every sequence the engine finishes from now on (results carry only text)."""
    outputs: list[list[int]] = []
    finish = engine.scheduler.finish

    def spy(seq, reason):
        outputs.append(list(seq.output_ids))
        finish(seq, reason)

    engine.scheduler.finish = spy  # type: ignore[method-assign]
    return outputs


def ngrams(ids: list[int], size: int) -> list[tuple[int, ...]]:
    return [tuple(ids[i : i + size]) for i in range(len(ids) - size + 1)]


def fields(result: GenerateResult) -> tuple:
    """Everything a replay must reproduce (timings aside)."""
    return (
        result.text,
        result.parsed,
        result.prompt_tokens,
        result.completion_tokens,
        result.cached_tokens,
        result.finish_reason,
        [fields(s) for s in result.samples],
    )


# ----------------------------------------------------------------- the logits, by hand


def states(params: list[SamplingParams], outputs: list[list[int]], prompt: list[int], texts=None) -> list[Penalties]:
    return [Penalties(p, list(prompt), out, texts or {}) for p, out in zip(params, outputs, strict=True)]


def test_presence_and_frequency_penalties_are_openais_formula() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 40, generator=g) * 3
    params = [
        SamplingParams(presence_penalty=0.5, frequency_penalty=0.25),
        SamplingParams(presence_penalty=-1.0, frequency_penalty=1.5),
    ]
    outputs = [[3, 3, 3, 7], [5, 9, 5]]
    sts = states(params, outputs, prompt=[1, 2])
    out = logits.clone()
    apply_penalties(out, [0, 2], sts)  # row 1 asks for nothing
    want = logits.clone()
    for row, p, ids in ((0, params[0], outputs[0]), (2, params[1], outputs[1])):
        for tok, count in Counter(ids).items():
            want[row, tok] -= p.presence_penalty + p.frequency_penalty * count
    assert torch.allclose(out, want, rtol=0, atol=1e-5)
    assert torch.equal(out[1], logits[1])  # untouched, bit for bit
    unseen = [t for t in range(40) if t not in {3, 7}]
    assert torch.equal(out[0, unseen], logits[0, unseen])  # only generated tokens move (the prompt does not count)
    # the effect on the distribution: a token generated 3 times loses exp(0.5 + 3 * 0.25) against any unseen one
    before, after = torch.log_softmax(logits[0], -1), torch.log_softmax(out[0], -1)
    assert float((after[3] - after[0]) - (before[3] - before[0])) == pytest.approx(-1.25, abs=1e-5)
    assert float((after[7] - after[0]) - (before[7] - before[0])) == pytest.approx(-0.75, abs=1e-5)
    # the counts follow the output as it grows (only new tokens are counted)
    outputs[0].append(7)
    again = logits.clone()
    apply_penalties(again, [0, 2], sts)
    assert float(logits[0, 7] - again[0, 7]) == pytest.approx(0.5 + 2 * 0.25, abs=1e-5)


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_matches_the_formula_and_transformers(penalty: float) -> None:
    from transformers import RepetitionPenaltyLogitsProcessor

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 60, generator=g) * 2
    prompt, outputs = [1, 2, 3, 40], [[3, 10, 11, 10], [50]]
    out = logits.clone()
    apply_penalties(out, [0, 1], states([SamplingParams(repetition_penalty=penalty)] * 2, outputs, prompt))
    for row, ids in enumerate(outputs):
        hf = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([prompt + ids]), logits[row : row + 1].clone())
        assert torch.equal(out[row], hf[0])
        want = logits[row].clone()
        for tok in set(prompt + ids):
            x = float(want[tok])
            want[tok] = x / penalty if x > 0 else x * penalty
        assert torch.allclose(out[row], want, rtol=0, atol=1e-6)


def test_zero_penalties_leave_a_row_bit_identical_beside_penalised_rows() -> None:
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(2))
    logits[1, :10] = float("-inf")  # a grammar mask stays a mask
    params = [SamplingParams(presence_penalty=1.0, repetition_penalty=1.2), SamplingParams(no_repeat_ngram_size=4)]
    out = logits.clone()
    apply_penalties(out, [0, 1], states(params, [[4, 5], [12, 13]], prompt=[12]))
    assert torch.equal(out[1], logits[1]) and not torch.equal(out[0], logits[0])
    assert not SamplingParams().penalised and params[1].penalised


def test_no_repeat_ngrams_ban_the_texts_and_the_output_so_far() -> None:
    texts = ngram_table([[5, 6, 7], [5, 8]], 2)
    bans = NgramBans(2, texts)
    assert bans.banned([]) == set()  # the output holds fewer than N-1 tokens
    assert bans.banned([5]) == {6, 8}
    assert bans.banned([1, 2, 1]) == {2}  # (1, 2) already written
    assert bans.banned([1, 2, 1, 9, 5]) == {6, 8}
    tri = NgramBans(3, ngram_table([[1, 2, 3]], 3))
    assert tri.banned([7, 1, 2]) == {3} and tri.banned([7, 1, 4]) == set()
    assert NgramBans(1, ngram_table([[4, 4, 9]], 1)).banned([2]) == {2, 4, 9}  # N = 1: no token twice


def test_a_ban_never_empties_what_the_grammar_allows() -> None:
    """Row 0: the grammar allows tokens 4 and 8 and both are banned, so the ban is lifted for the step;
    row 1: only 4 is banned among the allowed, so 8 is all that is left."""
    logits = torch.full((2, 20), float("-inf"))
    logits[:, [4, 8]] = torch.tensor([1.0, 0.5])
    params = SamplingParams(no_repeat_ngram_size=2)
    texts = ngram_table([[9, 4], [9, 8], [6, 4]], 2)
    sts = [Penalties(params, [1], [9], texts), Penalties(params, [1], [6], texts)]
    out = logits.clone()
    apply_penalties(out, [0, 1], sts)
    assert torch.equal(out[0], logits[0])
    assert torch.isfinite(out[1]).nonzero().flatten().tolist() == [8]


# ----------------------------------------------------------------- the engine


async def test_n_samples_are_seeded_independent_and_each_a_single_request(engine) -> None:
    kw = dict(max_tokens=10, temperature=1.0, ignore_eos=True)
    r = await engine.generate(PROMPT, n=4, seed=5, **kw)
    assert len(r.samples) == 4 and r.texts == [s.text for s in r.samples]
    assert len(set(r.texts)) == 4  # independent samples at temperature 1
    assert r.text == r.samples[0].text and r.finish_reason == r.samples[0].finish_reason
    assert r.completion_tokens == 40 and r.prompt_tokens == r.samples[0].prompt_tokens
    again = await engine.generate(PROMPT, n=4, seed=5, **kw)
    assert again.texts == r.texts
    singles = [await engine.generate(PROMPT, seed=sample_seed(5, i), **kw) for i in range(4)]
    assert [s.text for s in singles] == r.texts
    assert sample_seed(5, 0) == 5 and len({sample_seed(5, i) & 0xFFFF_FFFF for i in range(1000)}) == 1000
    # whatever else shares the batch
    crowd = await asyncio.gather(
        engine.generate(PROMPT, n=4, seed=5, **kw), *(engine.generate(f"{i} other", seed=i, **kw) for i in range(5))
    )
    assert crowd[0].texts == r.texts
    assert (await engine.generate(PROMPT, n=1, seed=5, **kw)).samples == []  # n = 1: the result as ever


async def test_n_samples_stream_by_index(engine) -> None:
    deltas: dict[int, str] = {}
    events = [e async for e in engine.stream(PROMPT, n=3, seed=9, max_tokens=8, temperature=1.0)]
    for e in events:
        deltas[e.index] = deltas.get(e.index, "") + e.delta
    result = events[-1].result
    assert result is not None and all(e.result is None for e in events[:-1])
    assert [deltas.get(i, "") for i in range(3)] == result.texts
    assert result.texts == (await engine.generate(PROMPT, n=3, seed=9, max_tokens=8, temperature=1.0)).texts


async def test_n_samples_share_the_prompt_blocks(tiny_lm) -> None:
    """Sample 0 prefills the prompt; the others wait one step, then take its full blocks from the prefix
    cache (reference count 4) and compute only the last, partial block of their own."""
    engine = Engine(tiny_lm, EngineConfig(device="cpu", kv_cache_gb=0.05))  # stepped by hand: no worker thread
    bs = engine.blocks.block_size
    prompt = list(range(1000, 1000 + 2 * bs + 5))
    request = engine._make_request(prompt, None, dict(n=4, max_tokens=6, temperature=1.0, seed=3, ignore_eos=True))
    for seq in request.seqs:
        engine._requests[seq.id] = request
        engine.scheduler.add(seq)
    engine.step()
    assert [s.status for s in request.seqs] == [Status.RUNNING] + [Status.WAITING] * 3
    engine.step()
    tables = [s.block_table for s in request.seqs]
    shared = tables[0][:2]
    assert all(t[:2] == shared for t in tables)
    assert [engine.blocks.blocks[b].ref_count for b in shared] == [4, 4]
    own = [b for t in tables for b in t[2:]]
    assert len(own) == 4 and len(set(own)) == 4
    assert sum(b.ref_count > 0 for b in engine.blocks.blocks) == 2 + 4  # not 4 * 3
    engine.blocks.check_invariants(request.seqs)
    assert engine.counters.prefill_tokens == len(prompt) + 3 * 5  # the shared blocks were computed once
    assert engine.scheduler.reused_tokens == 3 * 2 * bs
    while engine.scheduler.has_work:
        engine.step()
    await asyncio.sleep(0)
    events = []
    while not request.events.empty():
        events.append(request.events.get_nowait())
    result = events[-1].result
    assert result is not None and len(result.samples) == 4 and result.completion_tokens == 24
    assert sum(b.ref_count for b in engine.blocks.blocks) == 0


async def test_every_sample_obeys_the_grammar_even_when_everything_is_banned(engine, tiny_lm) -> None:
    r = await engine.generate(PROMPT, schema=Visit, n=4, seed=2, max_tokens=24, temperature=1.0)
    assert len(r.samples) == 4 and all(isinstance(s.parsed, Visit) for s in r.samples)
    assert len(set(r.texts)) > 1
    # N = 1: no token may come twice, which JSON cannot do; the grammar's allowed set wins each time
    outputs = spy_outputs(engine)
    banned = await engine.generate(
        PROMPT, schema=Visit, n=4, seed=2, max_tokens=24, temperature=1.0, no_repeat_ngram_size=1
    )
    assert all(isinstance(s.parsed, Visit) for s in banned.samples)
    assert any(len(set(ids)) < len(ids) for ids in outputs)
    choice = await engine.generate(PROMPT, schema=["yes", "no"], no_repeat_ngram_size=1, no_repeat_texts=["yes no"])
    assert choice.parsed in ("yes", "no")


async def test_no_repeat_ngrams_never_written_while_an_unpenalised_run_writes_them(engine, tiny_lm) -> None:
    tok, size = tiny_lm.tokenizer, 3
    outputs = spy_outputs(engine)
    greedy = await engine.generate(PROMPT, max_tokens=30, ignore_eos=True)
    sampled = await engine.generate(PROMPT, n=6, seed=11, max_tokens=24, temperature=0.8, ignore_eos=True)
    plain = list(outputs)
    texts = [greedy.text, *sampled.texts]
    table = ngram_table([tok.encode(t) for t in texts], size)
    kw = dict(no_repeat_ngram_size=size, no_repeat_texts=texts, ignore_eos=True)
    outputs.clear()
    await engine.generate(PROMPT, max_tokens=30, **kw)
    await engine.generate(PROMPT, n=6, seed=11, max_tokens=24, temperature=0.8, **kw)
    await engine.generate(PROMPT, n=6, seed=12, max_tokens=24, temperature=1.5, **kw)
    assert len(outputs) == 13

    def violations(ids: list[int]) -> int:
        grams = ngrams(ids, size)
        repeated = len(grams) - len(set(grams))
        return repeated + sum(g[-1] in table.get(g[:-1], ()) for g in grams)

    assert all(violations(ids) == 0 for ids in outputs)
    assert sum(violations(ids) for ids in plain) > len(plain)  # the same requests unbanned: many
    assert len(ngrams(plain[0], size)) > len(set(ngrams(plain[0], size)))  # greedy loops


async def test_penalties_cut_repetition_in_the_engine(engine) -> None:
    outputs = spy_outputs(engine)
    plain = await engine.generate(PROMPT, max_tokens=30, ignore_eos=True)
    await engine.generate(PROMPT, max_tokens=30, ignore_eos=True, frequency_penalty=2.0, presence_penalty=1.0)
    await engine.generate(PROMPT, max_tokens=30, ignore_eos=True, repetition_penalty=3.0)
    top = [Counter(ids).most_common(1)[0][1] for ids in outputs]
    assert top[0] >= 10 and top[1] < top[0] / 2 and top[2] < top[0] / 2, top
    same = await engine.generate(PROMPT, max_tokens=30, ignore_eos=True, presence_penalty=0.0, repetition_penalty=1.0)
    assert same.text == plain.text


async def test_bad_values_are_request_errors_naming_the_field(engine) -> None:
    for kw, param in [
        (dict(n=0), "n"),
        (dict(n=129), "n"),
        (dict(presence_penalty=2.1), "presence_penalty"),
        (dict(frequency_penalty=-2.5), "frequency_penalty"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
        (dict(no_repeat_texts=["x"]), "no_repeat_texts"),
        (dict(no_repeat_ngram_size=2, no_repeat_texts=["\ud800"]), "no_repeat_texts[0]"),
    ]:
        with pytest.raises(RequestError) as err:
            await engine.generate(PROMPT, **kw)
        assert err.value.param == param and param.split("[")[0] in str(err.value)


# ----------------------------------------------------------------- the server and the HTTP backend


@pytest.fixture(scope="module")
def server(engine):
    with running(engine, MODEL, engine.context_length) as srv:
        yield srv


def test_the_server_answers_n_choices(server, engine) -> None:
    kw = dict(n=3, seed=4, temperature=1.0, max_tokens=8)
    want = asyncio.run(engine.generate([{"role": "user", "content": PROMPT}], **kw))
    want_text = asyncio.run(engine.generate(PROMPT, **kw))
    with openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=30) as client:
        chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}], **kw)
        assert [c.index for c in chat.choices] == [0, 1, 2]
        assert [c.message.content for c in chat.choices] == want.texts
        assert [c.finish_reason for c in chat.choices] == [s.finish_reason for s in want.samples]
        assert chat.usage.completion_tokens == want.completion_tokens == sum(s.completion_tokens for s in want.samples)
        assert chat.usage.prompt_tokens == want.prompt_tokens
        text = client.completions.create(model=MODEL, prompt=PROMPT, **kw)
        assert [c.index for c in text.choices] == [0, 1, 2] and [c.text for c in text.choices] == want_text.texts
        parts = ["", "", ""]
        finishes = {}
        for chunk in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True, **kw
        ):
            for c in chunk.choices:
                parts[c.index] += c.delta.content or ""
                if c.finish_reason:
                    finishes[c.index] = c.finish_reason
        assert parts == want.texts and sorted(finishes) == [0, 1, 2]
        penalised = dict(
            presence_penalty=1.5,
            frequency_penalty=0.5,
            extra_body={"repetition_penalty": 1.4, "no_repeat_ngram_size": 2, "no_repeat_texts": ["bread"]},
        )
        got = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0, **penalised)
        direct = asyncio.run(
            engine.generate(
                PROMPT,
                max_tokens=20,
                presence_penalty=1.5,
                frequency_penalty=0.5,
                repetition_penalty=1.4,
                no_repeat_ngram_size=2,
                no_repeat_texts=["bread"],
            )
        )
        plain = asyncio.run(engine.generate(PROMPT, max_tokens=20))
        assert got.choices[0].text == direct.text != plain.text


def test_the_server_refuses_bad_values_with_400s_naming_the_field(server) -> None:
    for field, value in [
        ("n", 0),
        ("n", 1000),
        ("presence_penalty", -2.01),
        ("frequency_penalty", 3),
        ("repetition_penalty", -1),
        ("no_repeat_ngram_size", 33),
    ]:
        body = {"model": MODEL, "prompt": PROMPT, field: value}
        resp = httpx.post(f"{server.base_url}/completions", json=body, timeout=10)
        assert resp.status_code == 400, (field, resp.text)
        err = resp.json()["error"]
        assert err["param"] == field and field in err["message"], err


def test_the_http_backend_round_trips_n_and_the_penalties(server, engine) -> None:
    kw: dict[str, Any] = dict(
        n=3,
        seed=8,
        temperature=1.0,
        max_tokens=12,
        presence_penalty=0.7,
        frequency_penalty=0.3,
        repetition_penalty=1.2,
        no_repeat_ngram_size=2,
        no_repeat_texts=["fresh bread"],
    )
    messages = [{"role": "user", "content": PROMPT}]

    async def go() -> tuple[GenerateResult, GenerateResult, list]:
        backend = OpenAIHTTPBackend(server.url, MODEL, backoff=0.01)
        try:
            got = await backend.generate(messages, **kw)
            text = await backend.generate(PROMPT, **kw)
            events = [e async for e in backend.stream(messages, **kw)]
        finally:
            await backend.aclose()
        return got, text, events

    got, text, events = asyncio.run(go())
    want = asyncio.run(engine.generate(messages, **kw))
    assert got.texts == want.texts and len(set(want.texts)) == 3
    assert [s.finish_reason for s in got.samples] == [s.finish_reason for s in want.samples]
    assert got.completion_tokens == want.completion_tokens and got.prompt_tokens == want.prompt_tokens
    assert text.texts == asyncio.run(engine.generate(PROMPT, **kw)).texts
    parts = ["", "", ""]
    for e in events:
        parts[e.index] += e.delta
    assert events[-1].result is not None and events[-1].result.texts == parts == want.texts


def test_the_http_backend_sends_the_fields_only_when_set() -> None:
    llm = ScriptedLLM(lambda prompt, schema, params: f"seed {params.seed}")
    with running(llm, MODEL, 4096) as srv:

        async def go() -> tuple[GenerateResult, GenerateResult]:
            backend = OpenAIHTTPBackend(srv.url, MODEL, backoff=0.01)
            try:
                plain = await backend.generate("hi", max_tokens=4)
                many = await backend.generate(
                    "hi", n=2, seed=1, presence_penalty=-0.5, repetition_penalty=0.9, no_repeat_ngram_size=3
                )
                return plain, many
            finally:
                await backend.aclose()

        plain, many = asyncio.run(go())
    assert llm.calls[0].params == SamplingParams(max_tokens=4, temperature=0.0)
    sent = llm.calls[1].params
    assert (sent.n, sent.presence_penalty, sent.repetition_penalty, sent.no_repeat_ngram_size) == (2, -0.5, 0.9, 3)
    assert plain.samples == [] and many.texts == [f"seed {sample_seed(1, i)}" for i in range(2)]
    body = OpenAIHTTPBackend("http://x", MODEL)._body("hi", SamplingParams(), None, stream=False)[1]
    assert set(body) == {"model", "max_tokens", "temperature", "top_p", "prompt"}


# ----------------------------------------------------------------- the fake and the replay


def test_the_fake_answers_n_samples_from_its_script() -> None:
    llm = ScriptedLLM(["one two", "three", "four five six", "seven"])

    async def go() -> list[GenerateResult]:
        return [await llm.generate("q", n=3, max_tokens=2), await llm.generate("q")]

    many, next_one = asyncio.run(go())
    assert many.texts == ["one two", "three", "four five"] and many.completion_tokens == 5
    assert [s.finish_reason for s in many.samples] == ["stop", "stop", "length"]
    assert next_one.text == "seven" and next_one.samples == []


async def test_a_replay_of_n_samples_is_exact(engine, tmp_path) -> None:
    records: list = []
    rec = RecordingLLM(engine, records.append)
    calls: list[tuple[Any, dict[str, Any]]] = [
        (PROMPT, dict(n=3, seed=1, temperature=1.0, max_tokens=8, frequency_penalty=0.4)),
        (PROMPT, dict(n=2, seed=1, temperature=1.0, max_tokens=24, schema=Visit, no_repeat_ngram_size=2)),
        (PROMPT, dict(max_tokens=6)),
    ]
    live = [await rec.generate(p, **kw) for p, kw in calls]
    streamed = [e async for e in rec.stream(PROMPT, n=2, seed=3, temperature=1.0, max_tokens=6)]
    write_jsonl(records, tmp_path / "calls.jsonl")
    loaded = read_jsonl(tmp_path / "calls.jsonl")
    assert len(loaded[0].samples) == 3 and loaded[2].samples == [] and "n" not in loaded[2].params
    replay = ReplayLLM(loaded)
    again = [await replay.generate(p, **kw) for p, kw in calls]
    assert [fields(r) for r in again] == [fields(r) for r in live]
    assert all(isinstance(s.parsed, Visit) for s in again[1].samples)
    events = [e async for e in replay.stream(PROMPT, n=2, seed=3, temperature=1.0, max_tokens=6)]
    assert fields(events[-1].result) == fields(streamed[-1].result)
    texts = ["", ""]
    for e in events:
        texts[e.index] += e.delta
    assert texts == streamed[-1].result.texts
    assert replay.unused() == []


def test_request_keys_without_the_new_fields_are_unchanged() -> None:
    base = SamplingParams(max_tokens=16, temperature=0.5, seed=42, stop=["\n"])
    pinned = "1fb9bba0bddda27dd2576d75818fa5110cdd0f2fde76e6e8c0cacf61ce5eb606"  # test_fake_and_replay's
    msgs = [{"role": "user", "content": "hi"}]
    explicit = dataclasses.replace(base, n=1, presence_penalty=0.0, repetition_penalty=1.0, no_repeat_texts=[])
    assert request_key(msgs, base, None) == request_key(msgs, explicit, None) == pinned
    keys = {
        request_key(msgs, dataclasses.replace(base, **kw), None)
        for kw in (dict(n=2), dict(presence_penalty=0.1), dict(repetition_penalty=1.1), dict(no_repeat_ngram_size=2))
    }
    assert len(keys) == 4 and pinned not in keys
    assert json.dumps(dataclasses.asdict(base))  # still plain data
