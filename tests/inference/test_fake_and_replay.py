"""ScriptedLLM behaves like a backend; RecordingLLM + ReplayLLM reproduce a run's calls exactly."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import BaseModel

from simulacra.inference.backends.fake import ScriptedLLM, ScriptExhaustedError, check_json_schema
from simulacra.inference.backends.recording import (
    CallRecord,
    JsonlSink,
    RecordingLLM,
    ReplayLLM,
    ReplayMissError,
    read_jsonl,
    write_jsonl,
)
from simulacra.inference.port import LLM, RequestError, SamplingParams, call_meta, request_key


class Plan(BaseModel):
    place: str
    minutes: int


class Day(BaseModel):
    owner: str
    plans: list[Plan]


def run(coro):
    return asyncio.run(coro)


async def collect(stream):
    return [event async for event in stream]


# ----------------------------------------------------------------------------- ScriptedLLM


def test_list_script_answers_in_order_and_records_calls():
    llm = ScriptedLLM(["one", "two"])
    assert isinstance(llm, LLM)

    async def go():
        a = await llm.generate("first prompt", max_tokens=5, temperature=0.7, seed=3)
        b = await llm.generate([{"role": "user", "content": "second"}], stop=["x"])
        return a, b

    a, b = run(go())
    assert (a.text, b.text) == ("one", "two")
    assert [c.prompt for c in llm.calls] == ["first prompt", [{"role": "user", "content": "second"}]]
    assert llm.calls[0].params == SamplingParams(max_tokens=5, temperature=0.7, seed=3)
    assert llm.calls[1].params.stop == ["x"] and llm.calls[1].text == "user: second"
    assert llm.prompts == ["first prompt", "user: second"]
    with pytest.raises(ScriptExhaustedError, match="2 scripted answer.*call 3.*'third'"):
        run(llm.generate("third"))
    assert isinstance(llm.calls[-1].error, ScriptExhaustedError)


def test_string_cycle_and_callable_scripts():
    assert run(ScriptedLLM("always").generate("a")).text == "always"
    cyc = ScriptedLLM(["a", "b"], cycle=True)
    assert [run(cyc.generate("p")).text for _ in range(3)] == ["a", "b", "a"]

    seen = []

    def script(prompt, schema, params):
        seen.append((prompt, schema, params.max_tokens))
        return f"echo {prompt}"

    assert run(ScriptedLLM(script).generate("hi", max_tokens=9)).text == "echo hi"
    assert seen == [("hi", None, 9)]

    async def async_script(prompt, schema, params):
        await asyncio.sleep(0)
        return prompt.upper()

    assert run(ScriptedLLM(async_script).generate("loud")).text == "LOUD"


def test_token_counts_max_tokens_and_stop():
    llm = ScriptedLLM("the quick brown fox jumps over the lazy dog", context_length=1000)

    async def go():
        full = await llm.generate("a b c")
        cut = await llm.generate("a b c d", max_tokens=3)
        stopped = await llm.generate("z", stop=["fox", "dog"])
        return full, cut, stopped

    full, cut, stopped = run(go())
    assert (full.prompt_tokens, full.completion_tokens, full.finish_reason) == (3, 9, "stop")
    assert (cut.text, cut.completion_tokens, cut.finish_reason) == ("the quick brown", 3, "length")
    assert cut.cached_tokens == 3  # "a b c" was seen before: a simulated prefix-cache hit
    assert (stopped.text, stopped.finish_reason) == ("the quick brown ", "stop")
    stats = llm.stats()
    assert stats["requests"] == 3 and stats["completion_tokens"] == 9 + 3 + 3


def test_schema_pydantic_instance_dict_and_text():
    answers = [Plan(place="cafe", minutes=30), {"place": "park", "minutes": 5}, '{"place": "home", "minutes": 1}']
    llm = ScriptedLLM(answers)
    results = [run(llm.generate("plan", schema=Plan)) for _ in answers]
    assert [r.parsed for r in results] == [
        Plan(place="cafe", minutes=30),
        Plan(place="park", minutes=5),
        Plan(place="home", minutes=1),
    ]
    assert results[0].text == '{"place": "cafe", "minutes": 30}'  # the engine's JSON layout
    assert all(json.loads(r.text) == r.parsed.model_dump() for r in results)
    bad = ScriptedLLM([{"place": "cafe"}])
    with pytest.raises(RequestError) as err:
        run(bad.generate("plan", schema=Plan))
    assert err.value.code == "invalid_output"


def test_schema_choices_and_dict_schemas():
    llm = ScriptedLLM(["yes", "maybe"])
    res = run(llm.generate("ok?", schema=["yes", "no"]))
    assert (res.text, res.parsed) == ("yes", "yes")
    with pytest.raises(RequestError, match="none of the 2 choices"):
        run(llm.generate("ok?", schema=["yes", "no"]))

    schema = Day.model_json_schema()  # nested models: $defs and $ref
    good = {"owner": "Isabella", "plans": [{"place": "cafe", "minutes": 30}]}
    res = run(ScriptedLLM([good]).generate("day", schema=schema))
    assert res.parsed == good
    with pytest.raises(ValueError, match=r"\$.plans\[0\].minutes"):
        run(ScriptedLLM([{"owner": "I", "plans": [{"place": "x", "minutes": "soon"}]}]).generate("d", schema=schema))
    enum = {"type": "string", "enum": ["cafe", "park"]}
    res = run(ScriptedLLM("park").generate("where", schema=enum))  # a bare string becomes the JSON string
    assert (res.text, res.parsed) == ('"park"', "park")
    with pytest.raises(ValueError, match="not one of"):
        run(ScriptedLLM("moon").generate("where", schema=enum))
    assert check_json_schema(True, {"type": "integer"})  # bool is not an integer in JSON Schema
    assert check_json_schema(None, {"anyOf": [{"type": "string"}, {"type": "null"}]}) == ""


def test_truncated_json_is_unparsed_not_an_error():
    llm = ScriptedLLM([{"owner": "a b c d e f g", "plans": []}])
    res = run(llm.generate("day", schema=Day, max_tokens=2))
    assert res.finish_reason == "length" and res.parsed is None and res.text == '{"owner": "a'


def test_errors_like_a_backend():
    llm = ScriptedLLM([RequestError("bad schema", "response_format", "invalid_schema"), "fine"], context_length=10)
    with pytest.raises(RequestError) as err:
        run(llm.generate("x", max_tokens=2))
    assert err.value.param == "response_format"
    assert run(llm.generate("x", max_tokens=2)).text == "fine"
    with pytest.raises(RequestError) as err:
        run(llm.generate("one two three four five six seven eight nine", max_tokens=2))
    assert err.value.code == "context_length_exceeded" and err.value.param == "prompt"
    with pytest.raises(RequestError) as err:
        run(llm.generate([{"role": "user", "content": "x"}], max_tokens=0))
    assert err.value.param == "max_tokens"
    with pytest.raises(RequestError, match="unknown generation argument"):
        run(llm.generate("x", max_token=3))


def test_stream_deltas_and_final_result():
    llm = ScriptedLLM(["alpha beta gamma delta epsilon", Plan(place="cafe", minutes=3)])
    events = run(collect(llm.stream("go", max_tokens=4)))
    assert len(events) >= 2 and all(e.result is None for e in events[:-1])
    result = events[-1].result
    assert "".join(e.delta for e in events) == result.text == "alpha beta gamma delta"
    assert result.finish_reason == "length"
    events = run(collect(llm.stream("go", schema=Plan)))
    assert events[-1].result.parsed == Plan(place="cafe", minutes=3)
    assert len(llm.calls) == 2


def test_latency_shows_concurrency():
    llm = ScriptedLLM("ok", latency=0.05)

    async def go():
        return await asyncio.gather(*(llm.generate(f"p{i}") for i in range(8)))

    assert len(run(go())) == 8
    assert llm.stats()["max_in_flight"] == 8
    run(llm.aclose())
    with pytest.raises(RuntimeError, match="closed"):
        run(llm.generate("late"))


def _script(prompt, schema, params):
    if schema is Plan:
        return Plan(place="library", minutes=len(str(prompt)))
    if isinstance(schema, list):
        return schema[-1]
    return f"reply to {prompt} with seed {params.seed}"


async def _session(llm):
    """A little run: plain, chat, schema, choices, repeated identical requests, a stream."""
    out = [await llm.generate("hello", seed=1)]
    out.append(await llm.generate([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]))
    with call_meta(purpose="plan", resident="Isabella", step=3):
        out.append(await llm.generate("make a plan", schema=Plan, max_tokens=50))
    out.append(await llm.generate("go?", schema=["stay", "go"]))
    out.append(await llm.generate("count", seed=7))
    out.append(await llm.generate("count", seed=7))
    events = [e async for e in llm.stream("stream this", max_tokens=3)]
    out.append(events[-1].result)
    return out


def _same(a, b):
    keys = ("text", "parsed", "prompt_tokens", "completion_tokens", "cached_tokens", "finish_reason")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def test_record_then_replay_gives_identical_results(tmp_path):
    counter = iter(range(1000))

    def script(prompt, schema, params):
        text = _script(prompt, schema, params)
        return f"{text} #{next(counter)}" if prompt == "count" else text  # identical requests, different answers

    records: list[CallRecord] = []
    recorded = run(_session(RecordingLLM(ScriptedLLM(script), records.append, meta={"run": "r1"})))
    assert len(records) == 7
    plan = records[2]
    assert plan.meta == {"run": "r1", "purpose": "plan", "resident": "Isabella", "step": 3}
    assert plan.schema_name == "Plan" and plan.json_schema == Plan.model_json_schema()
    assert plan.parsed == {"place": "library", "minutes": 11} and plan.params["max_tokens"] == 50
    assert records[3].json_schema == {"type": "string", "enum": ["stay", "go"]}
    assert records[4].key == records[5].key and records[4].text != records[5].text
    assert records[0].timings["wall_s"] >= 0 and records[0].started_at > 0

    path = tmp_path / "calls.jsonl"
    assert write_jsonl(records, path) == 7
    loaded = read_jsonl(path)
    assert loaded == records
    replay = ReplayLLM(loaded)
    replayed = run(_session(replay))
    assert all(_same(a, b) for a, b in zip(recorded, replayed, strict=True))
    assert isinstance(replayed[2].parsed, Plan)  # re-parsed into the caller's model
    assert replayed[4].text.endswith("#0") and replayed[5].text.endswith("#1")  # identical requests, in order
    assert replay.unused() == [] and replay.stats()["replay_hits"] == 7

    with call_meta(purpose="chat", resident="Klaus"):
        with pytest.raises(ReplayMissError) as miss:
            run(replay.generate("count", seed=7))
    msg = str(miss.value)
    assert "purpose='chat'" in msg and "resident='Klaus'" in msg and "2 time(s)" in msg and "call 3" in msg
    assert isinstance(miss.value, RuntimeError)


def test_replay_miss_explains_where_the_request_differs():
    records: list[CallRecord] = []
    rec = RecordingLLM(ScriptedLLM("a"), records.append)
    long_prompt = "You are Isabella Rodriguez, owner of Hobbs Cafe. " * 3
    run(rec.generate(long_prompt + "What next?"))
    replay = ReplayLLM(records)
    with call_meta(purpose="react", resident="Isabella", step=12):
        with pytest.raises(ReplayMissError) as miss:
            run(replay.generate(long_prompt + "Who is there?"))
    msg = str(miss.value)
    assert "purpose='react'" in msg and "resident='Isabella'" in msg and "step=12" in msg
    assert repr(long_prompt[:80]) in msg  # the first 80 characters of the prompt
    assert "'What next?'" in msg and "'Who is there?'" in msg  # where it departs from the nearest record
    with pytest.raises(ReplayMissError, match="sampling parameters or schema differ"):
        run(replay.generate(long_prompt + "What next?", temperature=0.5))
    with pytest.raises(ReplayMissError, match="no call_meta.*empty"):
        run(ReplayLLM([]).generate("x"))


def test_request_errors_are_recorded_and_replayed_and_meta_follows_tasks(tmp_path):
    path = tmp_path / "log.jsonl"
    sink = JsonlSink(path)

    def script(prompt, schema, params):
        if prompt == "bad":
            raise RequestError("nope", "prompt", "context_length_exceeded")
        return prompt * 2

    rec = RecordingLLM(ScriptedLLM(script, latency=0.01), sink)

    async def resident(name):
        with call_meta(resident=name):
            await asyncio.sleep(0)
            return await rec.generate(name)

    async def go():
        await asyncio.gather(*(resident(n) for n in ("A", "B", "C")))
        with pytest.raises(RequestError):
            await rec.generate("bad")

    run(go())
    sink.close()
    records = read_jsonl(path)
    assert {r.prompt: r.meta["resident"] for r in records if r.prompt != "bad"} == {"A": "A", "B": "B", "C": "C"}
    assert records[-1].finish_reason == "error" and records[-1].error["code"] == "context_length_exceeded"
    assert rec.stats()["recorded_calls"] == 4
    replay = ReplayLLM(records)
    with pytest.raises(RequestError) as err:
        run(replay.generate("bad"))
    assert (err.value.param, err.value.code) == ("prompt", "context_length_exceeded")


def test_request_key_is_stable_and_canonical():
    params = SamplingParams(max_tokens=16, temperature=0.5, seed=42, stop=["\n"])
    key = request_key([{"role": "user", "content": "hi"}], params, None)
    # pinned: a change here silently invalidates every recorded run
    assert key == "1fb9bba0bddda27dd2576d75818fa5110cdd0f2fde76e6e8c0cacf61ce5eb606"
    assert request_key([{"content": "hi", "role": "user"}], params, None) == key  # dict order does not matter
    assert request_key("hi", params, None) != key
    assert request_key([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=16, seed=42), None) != key
    assert request_key("x", SamplingParams(), Plan) == request_key("x", SamplingParams(), Plan.model_json_schema())
    assert request_key("x", SamplingParams(), ["a", "b"]) != request_key("x", SamplingParams(), ["b", "a"])


def test_read_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = CallRecord(key="k", prompt="p", params={})
    path.write_text(good.model_dump_json() + "\n\n{oops\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:3"):
        read_jsonl(path)
