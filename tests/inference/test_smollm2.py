"""The packaged SmolLM2-135M-Instruct (GGUF Q4_1): loads, tokenizes, and generates what
`transformers` generates from the same file."""

from __future__ import annotations

import pytest
import torch

from simulacra.inference.generate import greedy_generate
from simulacra.inference.loader import describe_model, load_model
from simulacra.inference.packaged import default_model_path

pytestmark = pytest.mark.slow

PROMPTS = [
    "The old lighthouse keeper walked down to the harbour and",
    "Here is a list of three fruits:",
    "In 1969, the first humans",
]


@pytest.fixture(scope="module")
def ours():
    return load_model(dtype=torch.float32)


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoModelForCausalLM

    path = default_model_path()
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def test_describes_the_packaged_model() -> None:
    info = describe_model()
    cfg = info.config
    assert (info.format, cfg.family, info.quantization) == ("gguf", "llama", "Q4_1")
    assert (cfg.n_layers, cfg.hidden_size, cfg.n_heads, cfg.n_kv_heads) == (30, 576, 9, 3)
    assert cfg.tie_embeddings and not cfg.is_moe
    assert 130e6 < info.total_params < 140e6


def test_tokenizer_round_trips(ours) -> None:
    tok = ours.tokenizer
    for text in PROMPTS + ["  two spaces, tabs\tand\nnewlines; digits 2026; café"]:
        assert tok.decode(tok.encode(text)) == text


def test_greedy_continuation_equals_transformers(ours, reference) -> None:
    tok = ours.tokenizer
    prompts = [tok.encode(p) for p in PROMPTS]
    got = greedy_generate(ours.model, prompts, max_new_tokens=40, stop_ids=tok.eos_ids)  # one ragged batch
    for ids, mine in zip(prompts, got, strict=True):
        with torch.inference_mode():
            out = reference.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False)
        want = out[0, len(ids) :].tolist()
        assert len(want) >= 32
        assert mine[: len(want)] == want, (tok.decode(mine), tok.decode(want))


def test_chat_reply_is_fluent_english(ours) -> None:
    tok = ours.tokenizer
    questions = {"What is the capital of France?": "paris", "What color is the sky on a clear day?": "blue"}
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}])) for q in questions]
    replies = [tok.decode(r) for r in greedy_generate(ours.model, prompts, 48, stop_ids=tok.eos_ids)]
    for (question, answer), reply in zip(questions.items(), replies, strict=True):
        words = reply.split()
        assert answer in reply.lower(), (question, reply)
        assert len(words) >= 4 and reply.isascii(), reply
        assert sum(w.strip(".,!?'\"").isalpha() for w in words) >= 0.8 * len(words), reply
