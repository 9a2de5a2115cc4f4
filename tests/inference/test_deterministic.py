"""`EngineConfig(deterministic=True)`: a request's tokens and logits are bit-identical whatever else is in
its batch, however its prompt was chunked, whether its prefix came from the prefix cache.

Fast tests run a tiny random model (dense and MoE, fp32 and bf16); the slow ones the packaged model in
its default dtype (bf16 on bf16 hardware, where the default mode is known not to be batch-invariant).
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from torch import nn

from simulacra.inference import kernels
from simulacra.inference.config import ModelConfig
from simulacra.inference.engine import Engine, EngineConfig
from simulacra.inference.engine.block_manager import BlockManager
from simulacra.inference.engine.runner import ModelRunner
from simulacra.inference.engine.sampling import make_generator
from simulacra.inference.engine.scheduler import Scheduler
from simulacra.inference.engine.sequence import Sequence
from simulacra.inference.model import Linear, Transformer
from simulacra.inference.port import SamplingParams
from tests.inference.tiny_models import spread_init

# ---------------------------------------------------------------- the pieces, on tiny random weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@torch.inference_mode()
def test_linear_is_nn_linear_by_default_and_batch_invariant_inside_invariant_forward(dtype, bias) -> None:
    torch.manual_seed(0)
    layer = Linear(192, 320, bias=bias).to(dtype)
    probe = torch.randn(1, 192).to(dtype)
    x = torch.randn(5, 192).to(dtype)
    assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))  # default: nn.Linear
    with kernels.invariant_forward():
        alone = layer(probe)[0]
        for n in (1, 2, 15, 16, 17, 40, 100):
            for pos in {0, n // 2, n - 1}:
                batch = torch.randn(n, 192).to(dtype)
                batch[pos] = probe[0]
                assert torch.equal(layer(batch)[pos], alone), (n, pos)
    assert not kernels.invariant_forward_active()


def test_invariant_forward_is_per_thread() -> None:
    import threading

    seen = []
    with kernels.invariant_forward():
        t = threading.Thread(target=lambda: seen.append(kernels.invariant_forward_active()))
        t.start()
        t.join()
        assert kernels.invariant_forward_active()
    assert seen == [False] and not kernels.invariant_forward_active()


def tiny_model(moe: bool, dtype: torch.dtype) -> Transformer:
    extra = dict(n_experts=8, n_experts_per_tok=2, moe_intermediate_size=48) if moe else {}
    cfg = ModelConfig("llama", 96, 64, 2, 4, 2, 16, 96, max_position=512, **extra)
    torch.manual_seed(1)
    model = Transformer(cfg)
    spread_init(model)
    return model.to(dtype).eval()


def last_logits(
    model: Transformer, prompts: list[list[int]], deterministic: bool, budget: int = 4096, runner_sched=None
) -> list[torch.Tensor]:
    """Logits of each prompt's last token, all prompts scheduled together (chunked under `budget`)."""
    runner, sched = runner_sched or (
        ModelRunner(model, 128, 16, deterministic=deterministic),
        Scheduler(BlockManager(128, 16), 64, budget),
    )
    seqs = [Sequence(p, SamplingParams(max_tokens=1), make_generator(0)) for p in prompts]
    for s in seqs:
        sched.add(s)
    out: dict[int, torch.Tensor] = {}
    while len(out) < len(seqs):
        chunks = sched.schedule()
        logits = runner.run(chunks)
        sampled = [c for c in chunks if c.samples]
        for c in chunks:
            c.seq.num_computed = c.start + c.num_tokens
            sched.blocks.publish(c.seq)
        for c, row in zip(sampled, logits, strict=True):
            out[seqs.index(c.seq)] = row.clone()
            sched.finish(c.seq, "length")
    return [out[i] for i in range(len(seqs))]


def random_prompts(n: int, seed: int, lo: int = 3, hi: int = 60) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 96, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist() for _ in range(n)
    ]


@pytest.mark.parametrize("moe", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiny_model_logits_do_not_depend_on_batch_chunking_or_cache(moe, dtype) -> None:
    model = tiny_model(moe, dtype)
    probe = random_prompts(1, 7, 40, 41)[0]
    alone = last_logits(model, [probe], True)[0]
    others = random_prompts(20, 3)
    batched = last_logits(model, others[:9] + [probe] + others[9:], True)[9]
    chunked = last_logits(model, [probe], True, budget=7)[0]  # 6 chunks of 7 then 5 tokens
    assert torch.equal(batched, alone)
    assert torch.equal(chunked, alone)
    # a prefix-cache hit: a first prompt with the probe's first 32 tokens publishes two blocks
    rs = (ModelRunner(model, 128, 16, deterministic=True), Scheduler(BlockManager(128, 16), 64, 4096))
    last_logits(model, [probe[:32] + [1, 2, 3]], True, runner_sched=rs)
    seq_hit = last_logits(model, [probe], True, runner_sched=rs)[0]
    assert rs[1].reused_tokens == 32
    assert torch.equal(seq_hit, alone)


def test_tiny_model_default_mode_is_unchanged_and_close_to_deterministic() -> None:
    model = tiny_model(True, torch.float32)
    prompts = random_prompts(6, 5)
    default = last_logits(model, prompts, False)
    det = last_logits(model, prompts, True)
    for a, b in zip(default, det, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert not kernels.invariant_forward_active() and not kernels.settings.batch_invariant


def test_deterministic_mode_refuses_a_gpu_cache() -> None:
    from simulacra.inference.engine.paged_kv import PagedKV

    with pytest.raises(ValueError, match="CPU"):
        PagedKV(1, 2, 16, 2, 16, torch.bfloat16, "cpu", deterministic=True)  # a bf16 cache is the GPU layout


# ---------------------------------------------------------------- the packaged model, default dtype

TOPICS = [
    "a baker",
    "the river",
    "a lighthouse",
    "the town hall",
    "a fox",
    "winter",
    "the market",
    "a violin",
    "an old map",
    "the school",
    "a storm",
    "the library",
]
VERBS = [
    "Write one sentence about",
    "Describe",
    "Tell a short story about",
    "Give two facts about",
    "Write a haiku about",
    "What do you think of",
]


def chat(q: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are a resident of a small town."}, {"role": "user", "content": q}]


PROMPTS = [chat(f"{v} {t}.") for v in VERBS for t in TOPICS][:64]  # 64 different prompts


@pytest.fixture(scope="module")
def lm():
    from simulacra.inference.loader import load_model

    return load_model()  # the default dtype: bf16 on AVX512-BF16 / AMX CPUs


async def _run(engine: Engine, requests: list[dict]):
    try:
        return await asyncio.gather(*(engine.generate(**r) for r in requests))
    finally:
        await engine.aclose()


@pytest.mark.slow
def test_greedy_and_sampled_alone_equal_inside_a_batch_of_64(lm) -> None:
    """16 requests (8 greedy, 8 at temperature 0.7 with fixed seeds), each alone and at its place in a
    batch of 64 different ones: 0 changed. (In the default mode 6 of 16 greedy ones changed.)"""
    requests = [
        dict(prompt=p, seed=1000 + i, max_tokens=24, temperature=0.0 if i % 8 == 0 else 0.7, top_p=0.95)
        for i, p in enumerate(PROMPTS)
    ]
    targets = list(range(0, 64, 4))
    config = EngineConfig(deterministic=True)
    alone = [asyncio.run(_run(Engine(lm, config), [requests[i]]))[0].text for i in targets]
    batch = asyncio.run(_run(Engine(lm, config), requests))
    assert [batch[i].text for i in targets] == alone
    assert len(set(alone)) == len(alone)  # 16 different answers: the test compares something


@pytest.mark.slow
def test_prefix_cache_hit_and_chunked_prefill_give_the_logits_of_a_cold_prefill(lm) -> None:
    tok = lm.tokenizer
    shared = tok.encode(tok.apply_chat_template(chat("Describe the market."))[:-20])
    prompt_a, prompt_b = shared + tok.encode(" and the bakery"), shared + tok.encode(" where the river")
    model = lm.model
    cold = last_logits(model, [prompt_b], True)[0]
    rs = (ModelRunner(model, 64, 16, deterministic=True), Scheduler(BlockManager(64, 16), 8, 4096))
    last_logits(model, [prompt_a], True, runner_sched=rs)
    hit = last_logits(model, [prompt_b], True, runner_sched=rs)[0]
    assert rs[1].reused_tokens >= 16
    assert torch.equal(hit, cold)
    assert torch.equal(last_logits(model, [prompt_b], True, budget=5)[0], cold)  # many chunks
    assert torch.equal(last_logits(model, [prompt_b], True, budget=37)[0], cold)
    batched = last_logits(model, [tok.encode(tok.apply_chat_template(p)) for p in PROMPTS[:7]] + [prompt_b], True)
    assert torch.equal(batched[-1], cold)
