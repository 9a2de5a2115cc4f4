"""The engine on the packaged model (fp32 reference mode): batching, prefix cache, chunking,
preemption, cancellation, sampling, streaming and errors."""

from __future__ import annotations

import asyncio

import pytest
import torch

from simulacra.inference.engine import Engine, EngineConfig
from simulacra.inference.engine.block_manager import BlockManager
from simulacra.inference.engine.runner import ModelRunner
from simulacra.inference.engine.sampling import make_generator
from simulacra.inference.engine.scheduler import Scheduler
from simulacra.inference.engine.sequence import Sequence
from simulacra.inference.generate import greedy_generate
from simulacra.inference.loader import load_model
from simulacra.inference.port import RequestError, SamplingParams

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is the capital of France?",
    "Name three fruits.",
    "Write one sentence about a baker named Ada.",
    "What is 2 + 2?",
    "Describe a quiet park in the morning.",
]


def chat(q: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are a resident of a small town."}, {"role": "user", "content": q}]


@pytest.fixture(scope="module")
def lm():
    return load_model(dtype=torch.float32)


async def run_all(engine: Engine, prompts, **kw):
    try:
        return await asyncio.gather(*(engine.generate(p, **kw) for p in prompts))
    finally:
        await engine.aclose()


async def test_batched_greedy_equals_single_requests_and_reference(lm) -> None:
    prompts = [chat(q) for q in QUESTIONS]
    batched = await run_all(Engine(lm), prompts, max_tokens=24)
    singles = [(await run_all(Engine(lm), [p], max_tokens=24))[0] for p in prompts]
    ids = [lm.tokenizer.encode(lm.tokenizer.apply_chat_template(p)) for p in prompts]
    reference = greedy_generate(lm.model, ids, 24, stop_ids=lm.tokenizer.eos_ids)
    for b, s, r in zip(batched, singles, reference, strict=True):
        assert b.text == s.text == lm.tokenizer.decode(r)
        assert b.completion_tokens == len([t for t in r if t not in lm.tokenizer.eos_ids])


def test_prefix_cache_hit_gives_the_logits_of_a_cold_prefill(lm) -> None:
    tok = lm.tokenizer
    shared = tok.encode(tok.apply_chat_template(chat(QUESTIONS[0]))[:-40])
    prompt_a, prompt_b = shared + tok.encode(" and the bakery"), shared + tok.encode(" where the river")

    def logits_for(prompts: list[list[int]], runner: ModelRunner, sched: Scheduler) -> list[torch.Tensor]:
        out = []
        for p in prompts:
            seq = Sequence(p, SamplingParams(max_tokens=1), make_generator(0))
            sched.add(seq)
            chunks = sched.schedule()
            out.append(runner.run(chunks)[-1])
            seq.num_computed = len(seq)
            sched.blocks.publish(seq)
            out.append(seq.num_cached)
        return out

    def fresh():
        blocks = BlockManager(64, 16)
        return ModelRunner(lm.model, 64, 16), Scheduler(blocks, 8, 4096)

    warm = logits_for([prompt_a, prompt_b], *fresh())
    cold = logits_for([prompt_b], *fresh())
    assert warm[3] >= 16 * (len(shared) // 16) - 16 and warm[3] > 0  # b reused a's blocks
    assert cold[1] == 0
    assert (warm[2] - cold[0]).abs().max().item() < 1e-4


async def test_chunked_prefill_and_preemption_do_not_change_greedy_output(lm) -> None:
    prompts = [chat(q) for q in QUESTIONS[2:]]  # the long answers
    baseline = await run_all(Engine(lm), prompts, max_tokens=32)
    chunked = await run_all(Engine(lm, EngineConfig(max_batched_tokens=7)), prompts, max_tokens=32)
    cfg = lm.model.cfg
    per_token = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 4
    tiny = Engine(lm, EngineConfig(kv_cache_gb=7 * 16 * per_token / 2**30, block_size=16))
    assert tiny.blocks.blocks_needed(len(tiny.encode(prompts[0])) + 1) == 3  # two fit, both cannot grow
    squeezed = await run_all(tiny, prompts, max_tokens=32)
    assert tiny.stats()["preemptions"] > 0
    assert [r.text for r in chunked] == [r.text for r in baseline]
    assert [r.text for r in squeezed] == [r.text for r in baseline]


async def test_cancelled_requests_free_their_blocks(lm) -> None:
    engine = Engine(lm)
    try:
        task = asyncio.create_task(engine.generate(chat("Tell me a very long story."), max_tokens=400))
        while engine.counters.decode_tokens < 5:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        result = await engine.generate(chat(QUESTIONS[3]), max_tokens=8)  # still serving
        assert result.text
        engine.blocks.check_invariants(engine.scheduler.running)
        assert all(b.ref_count == 0 for b in engine.blocks.blocks)
    finally:
        await engine.aclose()


class Exploding:
    """A grammar constraint whose every token raises: the engine must fail that request alone."""

    forcing = False  # not writing a budget close-out
    closed = False
    close_seconds = 0.0

    def accept(self, token: int, budget: int) -> int:
        raise RuntimeError("constraint exploded")

    def is_done(self) -> bool:
        return False


async def test_engine_survives_a_request_that_raises(lm, monkeypatch) -> None:
    engine = Engine(lm)
    original = engine._make_request

    def make(prompt, schema, sampling):
        request = original(prompt, None, sampling)
        if prompt == "boom":
            request.seq.constraint = Exploding()
        return request

    monkeypatch.setattr(engine, "_make_request", make)
    monkeypatch.setattr(
        "simulacra.inference.engine.structured.apply_masks", lambda constraints, logits: 0.0, raising=False
    )
    try:
        results = await asyncio.gather(
            engine.generate("boom", max_tokens=8),
            *(engine.generate(chat(q), max_tokens=8) for q in QUESTIONS[:3]),
            return_exceptions=True,
        )
        assert isinstance(results[0], RuntimeError) and "exploded" in str(results[0])
        assert all(r.text for r in results[1:])
        assert (await engine.generate(chat(QUESTIONS[3]), max_tokens=4)).text
        assert all(b.ref_count == 0 for b in engine.blocks.blocks)
    finally:
        await engine.aclose()


async def test_seeded_sampling_is_reproducible(lm) -> None:
    prompts = [chat("Invent a name for a cat.")] * 3
    kw = dict(max_tokens=16, temperature=1.0, top_p=0.95, top_k=50)
    a = await run_all(Engine(lm), prompts, seed=1234, **kw)
    b = await run_all(Engine(lm), prompts, seed=1234, **kw)
    others = await asyncio.gather(*(run_all(Engine(lm), [prompts[0]], seed=s, **kw) for s in range(5)))
    assert [r.text for r in a] == [r.text for r in b]
    assert len({r[0].text for r in others}) > 1  # different seeds explore


async def test_stop_strings_and_streaming(lm) -> None:
    engine = Engine(lm)
    try:
        prompt = chat("Describe a quiet park in the morning.")
        full = await engine.generate(prompt, max_tokens=40)
        words = full.text.split()
        stop = " " + words[len(words) // 2]  # a stop string from the middle of the greedy answer
        deltas, result = [], None
        async for event in engine.stream(prompt, max_tokens=40, stop=[stop, "never-said"]):
            deltas.append(event.delta)
            result = event.result or result
        assert result.finish_reason == "stop"
        assert result.text == full.text[: full.text.index(stop)]
        assert "".join(deltas) == result.text and len(deltas) > 3
    finally:
        await engine.aclose()


async def test_bad_requests_are_refused_before_any_work(lm) -> None:
    engine = Engine(lm)
    try:
        with pytest.raises(RequestError) as err:
            await engine.generate("word " * 9000, max_tokens=8)
        assert err.value.code == "context_length_exceeded"
        for bad in (dict(max_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-2)):
            with pytest.raises(RequestError):
                await engine.generate("hello", **bad)
        with pytest.raises(RequestError):
            await engine.generate([], max_tokens=4)
        assert engine.stats()["requests"] == 0
        assert (await engine.generate("hello", max_tokens=2)).completion_tokens >= 1
    finally:
        await engine.aclose()


async def test_counters_report_prefix_reuse(lm) -> None:
    engine = Engine(lm)
    results = await run_all(engine, [chat(q) for q in QUESTIONS] * 2, max_tokens=4)
    stats = engine.stats()
    assert stats["requests"] == 10 and stats["finished"] == 10
    assert stats["cached_tokens"] == sum(r.cached_tokens for r in results) > 0
    assert 0 < stats["cache_hit_rate"] < 1 and stats["mean_batch_seqs"] > 1


async def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(lm, monkeypatch) -> None:
    engine = Engine(lm)
    real_sample, calls = engine._sample, []

    def broken_once(chunks, logits):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("bug in a step")
        return real_sample(chunks, logits)

    monkeypatch.setattr(engine, "_sample", broken_once)
    try:
        with pytest.raises(RuntimeError, match="bug in a step"):
            await engine.generate(chat(QUESTIONS[0]), max_tokens=4)
        assert (await engine.generate(chat(QUESTIONS[1]), max_tokens=4)).text
        assert all(b.ref_count == 0 for b in engine.blocks.blocks)
    finally:
        await engine.aclose()
