"""The tokenizer rebuilt from GGUF metadata must give the ids the model was trained on.

transformers is the reference: it builds its own tokenizer from the same GGUF file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jinja2
import pytest
from tokenizers import pre_tokenizers

from simulacra.inference.errors import ModelLoadError
from simulacra.inference.tokenizer import CHATML_TEMPLATE, Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SAMPLES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  two leading spaces",
    "trailing spaces   ",
    "multiple     spaces   inside",
    " 42",
    "line1\nline2\n\nline3\r\nend",
    "\tTabbed\ttext\n",
    "12345",
    "3.14",
    "I have 1000000 dollars and 2.5 cats, a1b2c3",
    "Wait... what?! (yes) [no] {maybe} <tag> #hash @at $5 100% a&b ~~ ==>",
    "don't I'll we've they're",
    "café résumé naïve é",
    "中文测试，你好世界",
    "emoji 😀🎉👍🏽 done",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after<|im_end|>",
    "def f(x):\n    return x ** 2\n",
    "",
]

CONVERSATIONS = [
    [{"role": "system", "content": "You are Ann, a baker in town."}, {"role": "user", "content": "Hi, Ann!"}],
    [{"role": "user", "content": "What should I plan for today?"}],
]


# ---------------------------------------------------------------------------- packaged SmolLM2 (gpt2/smollm)


@pytest.fixture(scope="module")
def smollm_gguf() -> tuple[Path, dict[str, Any]]:
    import gguf

    from simulacra.inference.packaged import default_model_path

    path = default_model_path()
    reader = gguf.GGUFReader(path)
    return path, {key: field.contents() for key, field in reader.fields.items()}


@pytest.fixture(scope="module")
def ours(smollm_gguf: tuple[Path, dict[str, Any]]) -> Tokenizer:
    path, meta = smollm_gguf
    return Tokenizer.from_gguf_metadata(meta, path)


@pytest.fixture(scope="module")
def reference(smollm_gguf: tuple[Path, dict[str, Any]]) -> Any:
    # PreTrainedTokenizerFast builds the same tokenizer as AutoTokenizer from a GGUF (same converter), but
    # skips AutoTokenizer's parse of the whole file for the model config, which costs ~7 s here.
    from transformers import PreTrainedTokenizerFast

    path, _ = smollm_gguf
    return PreTrainedTokenizerFast.from_pretrained(path.parent, gguf_file=path.name)


@pytest.mark.slow
def test_metadata_is_what_these_tests_assume(smollm_gguf: tuple[Path, dict[str, Any]], ours: Tokenizer) -> None:
    _, meta = smollm_gguf
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "smollm"
    assert ours.vocab_size == len(meta["tokenizer.ggml.tokens"]) == 49152
    assert ours.bos_id == meta["tokenizer.ggml.bos_token_id"]
    assert ours.pad_id == meta["tokenizer.ggml.padding_token_id"]
    assert ours.add_bos is False
    assert ours.chat_template == meta["tokenizer.chat_template"]


@pytest.mark.slow
def test_encode_matches_transformers(ours: Tokenizer, reference: Any) -> None:
    mismatches = {
        text: (ours.encode(text), reference.encode(text, add_special_tokens=False))
        for text in SAMPLES
        if ours.encode(text) != reference.encode(text, add_special_tokens=False)
    }
    assert not mismatches
    # transformers adds nothing for this model either
    assert ours.encode("Hi there", add_special_tokens=True) == reference("Hi there")["input_ids"]


@pytest.mark.slow
def test_special_tokens_in_text_stay_whole(ours: Tokenizer) -> None:
    im_start, im_end = ours.token_to_id("<|im_start|>"), ours.token_to_id("<|im_end|>")
    ids = ours.encode("<|im_start|>user\nHi<|im_end|>")
    assert ids[0] == im_start and ids[-1] == im_end
    assert ids.count(im_start) == 1 and ids.count(im_end) == 1
    assert ours.decode(ids) == "user\nHi"  # control tokens are dropped by default


@pytest.mark.slow
def test_decode_round_trips(ours: Tokenizer) -> None:
    for text in SAMPLES:
        assert ours.decode(ours.encode(text), skip_special_tokens=False) == text
        if "<|" not in text:
            assert ours.decode(ours.encode(text)) == text


@pytest.mark.slow
def test_token_bytes_concatenate_to_the_text(ours: Tokenizer) -> None:
    for text in SAMPLES:
        ids = ours.encode(text)
        assert b"".join(ours.token_bytes(i) for i in ids) == text.encode("utf-8")
    assert ours.token_bytes(ours.token_to_id("\u0120hello")) == b" hello"
    assert ours.token_bytes(ours.token_to_id("<|im_end|>")) == b"<|im_end|>"
    assert ours.vocab[ours.token_to_id("<|im_end|>")] == "<|im_end|>"
    assert len(ours.vocab) == ours.vocab_size


@pytest.mark.slow
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["system+user", "user-only"])
def test_chat_template_matches_transformers(ours: Tokenizer, reference: Any, messages: list[dict[str, str]]) -> None:
    expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.apply_chat_template(messages) == expected
    assert ours.apply_chat_template(messages, add_generation_prompt=False) == reference.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=False
    )


@pytest.mark.slow
def test_eos_ids_include_the_chat_end_token(ours: Tokenizer) -> None:
    assert ours.token_to_id("<|im_end|>") in ours.eos_ids
    assert ours.eos_token == "<|im_end|>"


@pytest.mark.slow
def test_from_dir_matches_from_gguf(ours: Tokenizer, reference: Any, tmp_path: Path) -> None:
    reference.save_pretrained(tmp_path)
    from_dir = Tokenizer.from_dir(tmp_path)
    for text in SAMPLES:
        assert from_dir.encode(text) == ours.encode(text), text
    assert from_dir.vocab_size == ours.vocab_size
    assert from_dir.bos_id == ours.bos_id
    assert from_dir.pad_id == ours.pad_id
    assert from_dir.add_bos is False
    assert from_dir.eos_ids == ours.eos_ids
    assert from_dir.chat_template == ours.chat_template
    assert from_dir.apply_chat_template(CONVERSATIONS[0]) == ours.apply_chat_template(CONVERSATIONS[0])
    assert from_dir.token_bytes(from_dir.token_to_id("\u0120hello")) == b" hello"


# ---------------------------------------------------------------------------- tiny handmade vocabularies

# Normal SentencePiece pieces after <unk>, <s>, </s> and the 256 byte tokens, so ids start at 259.
_SPM_PIECES = [
    ("\u2581", -1.0),  # 259
    ("h", -1.0),  # 260
    ("e", -1.0),  # 261
    ("l", -1.0),  # 262
    ("o", -1.0),  # 263
    ("w", -1.0),  # 264
    ("r", -1.0),  # 265
    ("d", -1.0),  # 266
    ("ll", -2.0),  # 267
    ("he", -3.0),  # 268
    ("llo", -4.0),  # 269
    ("hello", -5.0),  # 270
    ("\u2581hello", -6.0),  # 271
    ("\u2581w", -7.0),  # 272
    ("or", -8.0),  # 273
    ("\u2581wor", -9.0),  # 274
    ("ld", -10.0),  # 275
    ("\u2581world", -11.0),  # 276
]


def _spm_meta(**extra: Any) -> dict[str, Any]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + [p for p, _ in _SPM_PIECES]
    meta: dict[str, Any] = {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0, 0.0, 0.0] + [0.0] * 256 + [s for _, s in _SPM_PIECES],
        "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * len(_SPM_PIECES),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_space_prefix": True,
    }
    meta.update(extra)
    return meta


def test_sentencepiece_merges_by_score_with_byte_fallback() -> None:
    tok = Tokenizer.from_gguf_metadata(_spm_meta(), "tiny-spm.gguf")
    # "hello world é" -> "▁hello▁world▁é". Merges go best score first:
    # ll, he, llo, hello, ▁hello -> 271; ▁w, or, ▁wor, ld, ▁world -> 276; "▁é" is not a piece, so
    # "▁" (259) and é falls back to its UTF-8 bytes C3 A9 -> <0xC3> (3 + 0xC3 = 198), <0xA9> (3 + 0xA9 = 172).
    ids = tok.encode("hello world é", add_special_tokens=True)
    assert ids == [1, 271, 276, 259, 198, 172]  # BOS is on by default for SentencePiece vocabularies
    assert tok.encode("hello world é") == ids[1:]
    assert tok.decode(ids) == "hello world é"
    # as in transformers' Llama tokenizer, the prefix space is only stripped at the very start of the text
    assert tok.decode(ids, skip_special_tokens=False) == "<s> hello world é"
    # A leading space is a second "▁" in front of the prefix one (as in llama.cpp and SentencePiece);
    # decoding strips only the prefix.
    assert tok.encode(" hello") == [259, 271]
    assert tok.decode([259, 271]) == " hello"
    # Text after a special token gets its own prefix space, as llama.cpp does.
    assert tok.encode("</s>hello") == [2, 271]
    assert tok.encode("") == []
    assert [tok.token_bytes(i) for i in ids[1:]] == [b" hello", b" world", b" ", b"\xc3", b"\xa9"]
    assert tok.eos_ids == {2} and tok.bos_token == "<s>" and tok.eos_token == "</s>"
    assert tok.encode("<s>hello") == [1, 271]  # control tokens in text are matched whole


def test_sentencepiece_flags() -> None:
    no_bos = Tokenizer.from_gguf_metadata(_spm_meta(**{"tokenizer.ggml.add_bos_token": False}), "x.gguf")
    assert no_bos.encode("hello", add_special_tokens=True) == [271]
    no_prefix = Tokenizer.from_gguf_metadata(_spm_meta(**{"tokenizer.ggml.add_space_prefix": False}), "x.gguf")
    assert no_prefix.encode("hello world") == [270, 276]
    assert no_prefix.decode([270, 276]) == "hello world"


def test_from_dir_reads_config_and_ignores_padding(tmp_path: Path) -> None:
    spm = Tokenizer.from_gguf_metadata(_spm_meta(), "tiny-spm.gguf")
    spm.backend.enable_padding(length=16)  # some tokenizer.json files ship with padding switched on
    spm.backend.save(str(tmp_path / "tokenizer.json"))
    config = {
        "bos_token": "<s>",
        "eos_token": {"content": "</s>"},
        "add_bos_token": True,
        "chat_template": "T",
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 259]}))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.encode("hello world é", add_special_tokens=True) == [1, 271, 276, 259, 198, 172]
    assert tok.decode([1, 271, 276, 259, 198, 172]) == "hello world é"
    assert tok.token_bytes(198) == b"\xc3" and tok.token_bytes(271) == b" hello"
    assert tok.bos_id == 1 and tok.eos_id == 2 and tok.eos_ids == {2, 259}
    assert tok.chat_template == "T"


def _byte_level_meta(pre: str) -> dict[str, Any]:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + ["12", "123", "45", "<|im_end|>"]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * (len(tokens) - 1) + [3],
        "tokenizer.ggml.merges": ["1 2", "12 3", "4 5"],
        "tokenizer.ggml.eos_token_id": len(tokens) - 1,
    }


@pytest.mark.parametrize(
    ("pre", "pieces"),
    [
        ("gpt-2", ["123", "45"]),  # " ?\p{N}+" keeps the number whole
        ("default", ["123", "45"]),
        ("olmo", ["123", "45"]),
        ("llama-bpe", ["123", "45"]),  # "\p{N}{1,3}"
        ("qwen2", ["1", "2", "3", "4", "5"]),  # "\p{N}"
        ("smollm", ["1", "2", "3", "4", "5"]),  # Digits(individual_digits=True)
    ],
)
def test_byte_level_pre_tokenizer_follows_ggml_pre(pre: str, pieces: list[str]) -> None:
    meta = _byte_level_meta(pre)
    tok = Tokenizer.from_gguf_metadata(meta, "tiny-bpe.gguf")
    ids = tok.encode("12345")
    assert [meta["tokenizer.ggml.tokens"][i] for i in ids] == pieces
    assert tok.decode(ids) == "12345"
    end = tok.encode("a<|im_end|>")
    assert end[-1] == len(meta["tokenizer.ggml.tokens"]) - 1 and len(end) == 2
    assert tok.eos_ids == {end[-1]}


def test_missing_chat_template_falls_back_to_chatml() -> None:
    tok = Tokenizer.from_gguf_metadata(_spm_meta(), "tiny-spm.gguf")
    assert tok.chat_template is None
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert "<|im_start|>" in CHATML_TEMPLATE


def test_template_helpers_and_variables() -> None:
    template = (
        "{% if messages[0]['role'] != 'user' %}"
        "{{ raise_exception('first message must be from the user') }}{% endif %}"
        "{{ bos_token }}\n{% for m in messages %}\n  {% if m['role'] == 'user' %}\n"
        "{{ m['content'] }}{{ eos_token }}\n  {% endif %}\n{% endfor %}"
    )
    tok = Tokenizer.from_gguf_metadata(_spm_meta(**{"tokenizer.chat_template": template}), "tiny-spm.gguf")
    # trim_blocks / lstrip_blocks as in transformers: block tags leave no newlines or indentation behind
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "<s>\nhi</s>\n"
    with pytest.raises(jinja2.TemplateError, match="must be from the user"):
        tok.apply_chat_template([{"role": "assistant", "content": "hi"}])


def test_sandbox_blocks_attribute_escapes() -> None:
    evil = "{{ messages.__class__.__mro__ }}"
    tok = Tokenizer.from_gguf_metadata(_spm_meta(**{"tokenizer.chat_template": evil}), "tiny-spm.gguf")
    with pytest.raises(jinja2.exceptions.SecurityError):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


# ---------------------------------------------------------------------------- errors


def test_unsupported_tokenizer_model_is_named() -> None:
    meta = _spm_meta(**{"tokenizer.ggml.model": "rwkv"})
    with pytest.raises(ModelLoadError, match="rwkv") as info:
        Tokenizer.from_gguf_metadata(meta, "/models/odd.gguf")
    assert info.value.path == "/models/odd.gguf"


def test_from_dir_without_tokenizer_json_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        Tokenizer.from_dir(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert "tokenizer.json" in str(info.value)
