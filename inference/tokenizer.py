"""Text <-> token ids for the engine, built from a GGUF file's metadata or a Hugging Face folder.

A GGUF carries no `tokenizer.json`: it stores the vocabulary, merges, token types and special ids
under llama.cpp's key names. We rebuild a fast `tokenizers.Tokenizer` from those, choosing the
pre-tokenizer the same way llama.cpp does (from `tokenizer.ggml.pre`), so the ids we feed the model
are the ids it was trained on. transformers is not needed at run time; the tests compare against it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer

from simulacra.inference.errors import ModelLoadError

logger = logging.getLogger(__name__)

__all__ = ["CHATML_TEMPLATE", "Tokenizer"]

# llama.cpp token types (gguf.TokenType).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# Used when a model ships no chat template: the de-facto standard most small chat models speak.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Tokens that end an assistant turn in common chat formats; they stop generation as well as EOS.
_CHAT_END_TOKENS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|endoftext|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_text|>",
)

# Split regexes llama.cpp uses per `tokenizer.ggml.pre` (llama-vocab.cpp), in the Oniguruma syntax
# `tokenizers` understands (the original `tokenizer.json` spelling, not llama.cpp's case-expanded one).
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# `tokenizer.ggml.pre` -> (pre-tokenizer family, split regex). Families:
#   "gpt2":   the GPT-2 regex alone;
#   "digits": every digit on its own, then the GPT-2 regex (StarCoder/SmolLM);
#   "split":  the given regex, then byte-level mapping without GPT-2's regex.
_PRE_TOKENIZERS: dict[str, tuple[str, str]] = {
    "default": ("gpt2", _GPT2_SPLIT),
    "gpt-2": ("gpt2", _GPT2_SPLIT),
    "gpt2": ("gpt2", _GPT2_SPLIT),
    "olmo": ("gpt2", _GPT2_SPLIT),
    "mpt": ("gpt2", _GPT2_SPLIT),
    "jais": ("gpt2", _GPT2_SPLIT),
    "smollm": ("digits", _GPT2_SPLIT),
    "starcoder": ("digits", _GPT2_SPLIT),
    "refact": ("digits", _GPT2_SPLIT),
    "command-r": ("digits", _GPT2_SPLIT),
    "codeshell": ("digits", _GPT2_SPLIT),
    "exaone": ("digits", _GPT2_SPLIT),
    "minerva-7b": ("digits", _GPT2_SPLIT),
    "llama-bpe": ("split", _LLAMA3_SPLIT),
    "llama3": ("split", _LLAMA3_SPLIT),
    "llama-v3": ("split", _LLAMA3_SPLIT),
    "falcon3": ("split", _LLAMA3_SPLIT),
    "dbrx": ("split", _LLAMA3_SPLIT),
    "smaug-bpe": ("split", _LLAMA3_SPLIT),
    "qwen2": ("split", _QWEN2_SPLIT),
    "deepseek-r1-qwen": ("split", _QWEN2_SPLIT),
    "stablelm2": ("split", _QWEN2_SPLIT),
    "megrez": ("split", _QWEN2_SPLIT),
    "gpt-4o": ("split", _GPT4O_SPLIT),
    "llama4": ("split", _GPT4O_SPLIT),
}

# llama.cpp matches whole vocabulary entries before merging for these (its `ignore_merges`).
_IGNORE_MERGES_PRE = {"llama-bpe", "llama3", "llama-v3", "falcon3"}

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable spelling of bytes, reversed: character -> the byte it stands for."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


@lru_cache(maxsize=16)
def _compile_template(source: str) -> jinja2.Template:
    """Chat templates come from model files, so they run sandboxed, with transformers' settings."""

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


def _token_content(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken-like dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _as_id_list(value: Any) -> list[int]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(path, f"could not read it as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(path, "expected a JSON object")
    return data


def _read_optional_json(path: Path) -> dict[str, Any]:
    return _read_json(path) if path.is_file() else {}


def _merges_from_scores(tokens: Sequence[str], scores: Sequence[float], types: Sequence[int]) -> list[tuple[str, str]]:
    """SentencePiece BPE merges implied by the vocabulary: best-scored result first.

    llama.cpp's SPM tokenizer repeatedly merges the adjacent pair whose joined text is the
    highest-scored vocabulary entry; a BPE whose merge ranks follow that score does the same.
    Control, byte and unused entries are never merge results (they are matched whole or via fallback).
    """
    vocab = {t: i for i, t in enumerate(tokens)}
    mergeable = [ty in (_NORMAL, _USER_DEFINED) for ty in types] if types else [True] * len(tokens)
    found: list[tuple[float, int, int, str, str]] = []
    for i, token in enumerate(tokens):
        if not mergeable[i] or len(token) < 2:
            continue
        score = float(scores[i]) if i < len(scores) else 0.0
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            li, ri = vocab.get(left), vocab.get(right)
            if li is not None and ri is not None and mergeable[li] and mergeable[ri]:
                found.append((score, len(left), len(right), left, right))
    found.sort(key=lambda m: (m[0], m[1], m[2]), reverse=True)
    return [(m[3], m[4]) for m in found]


def _spelled_as_bytes(token: str) -> bytes:
    decoder = _byte_decoder()
    try:
        return bytes(decoder[c] for c in token)
    except KeyError:
        return token.encode("utf-8")


def _byte_level_backend(
    vocab: dict[str, int], merges: list | None, pre: str | None, path: str | Path
) -> tuple[BackendTokenizer, str, bool]:
    """A GPT-2 style byte-level BPE: (backend, spelling, whether BOS is added unless the file says)."""
    ignore = pre in _IGNORE_MERGES_PRE
    backend = BackendTokenizer(models.BPE(vocab=vocab, merges=merges or [], fuse_unk=False, ignore_merges=ignore))
    backend.pre_tokenizer = _byte_level_pre_tokenizer(pre, path)
    backend.decoder = decoders.ByteLevel()
    # llama.cpp turns BOS on for Llama-3 style vocabularies unless the file says otherwise
    return backend, "byte_level", pre in _IGNORE_MERGES_PRE


def _sentencepiece_backend(
    vocab: dict[str, int], merges: list, unk: str | None, add_prefix: bool
) -> tuple[BackendTokenizer, str, bool]:
    """A SentencePiece BPE with byte fallback: (backend, spelling, whether BOS is added unless the file says)."""
    backend = BackendTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    # Spaces become "▁" and, as in llama.cpp and SentencePiece, every text segment (the start, and
    # the text after each special token) gets one more in front, even if it starts with a space.
    spaces = normalizers.Replace(" ", "\u2581")
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), spaces]) if add_prefix else spaces
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(steps)
    # llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise
    return backend, "sentencepiece", True


class Tokenizer:
    """A fast tokenizer plus what the engine needs around it: BOS policy, stop ids, chat format, bytes."""

    def __init__(
        self,
        backend: BackendTokenizer,
        *,
        spelling: str,
        bos_id: int | None = None,
        eos_id: int | None = None,
        eos_ids: Iterable[int] = (),
        pad_id: int | None = None,
        unk_id: int | None = None,
        add_bos: bool = False,
        chat_template: str | None = None,
        source: str | Path = "",
    ) -> None:
        """Use `from_gguf_metadata` or `from_dir`. `spelling` ("byte_level", "sentencepiece" or "plain")
        says how vocabulary strings map to bytes; `eos_id` is the model's EOS, `eos_ids` other stop ids."""
        # A tokenizer.json may switch on padding/truncation (e.g. to 128 for an embedder); the engine
        # wants the ids of exactly the text it passed.
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        self.spelling = spelling
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.eos_ids: set[int] = set(eos_ids) | ({eos_id} if eos_id is not None else set())
        self.pad_id = pad_id
        self.unk_id = unk_id
        self.add_bos = add_bos and bos_id is not None
        self.chat_template = chat_template
        self.source = str(source)
        self._added: dict[int, AddedToken] = dict(backend.get_added_tokens_decoder())
        self._vocab: list[str] | None = None

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping[str, Any], path: str | Path) -> Tokenizer:
        """Build from GGUF metadata (key -> `GGUFReader` field `.contents()`); `path` names errors."""
        model_kind = meta.get("tokenizer.ggml.model")
        tokens = meta.get("tokenizer.ggml.tokens")
        if model_kind not in ("gpt2", "llama"):
            raise ModelLoadError(
                path,
                f"unsupported tokenizer model tokenizer.ggml.model={model_kind!r}",
                "supported: 'gpt2' (byte-level BPE) and 'llama' (SentencePiece BPE)",
            )
        if not tokens:
            raise ModelLoadError(path, "the file has no tokenizer.ggml.tokens vocabulary")
        tokens = [str(t) for t in tokens]
        types = [int(t) for t in meta.get("tokenizer.ggml.token_type") or []]
        if types and len(types) != len(tokens):
            raise ModelLoadError(path, f"{len(types)} token types for {len(tokens)} tokens")
        vocab = {}
        for i, t in enumerate(tokens):
            vocab.setdefault(t, i)  # a duplicate keeps its first id, as llama.cpp's token_to_id does
        merges_meta = meta.get("tokenizer.ggml.merges")
        merges = [tuple(m.split(" ", 1)) for m in merges_meta or [] if " " in m] or None

        def special_id(name: str) -> int | None:
            value = meta.get(f"tokenizer.ggml.{name}")
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(tokens):
                return value
            return None

        bos_id, eos_id = special_id("bos_token_id"), special_id("eos_token_id")
        unk_id, pad_id = special_id("unknown_token_id"), special_id("padding_token_id")
        pre = meta.get("tokenizer.ggml.pre")

        if model_kind == "gpt2":
            backend, spelling, default_add_bos = _byte_level_backend(vocab, merges, pre, path)
        else:
            if merges is None:
                merges = _merges_from_scores(tokens, meta.get("tokenizer.ggml.scores") or [], types)
            unk = tokens[unk_id] if unk_id is not None else None
            add_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
            backend, spelling, default_add_bos = _sentencepiece_backend(vocab, merges, unk, add_prefix)

        # Control tokens (chat markers, BOS/EOS) and user-defined ones must be matched whole in text,
        # never cut into pieces by the regex; control ones are also what skip_special_tokens drops.
        control = [
            AddedToken(tokens[i], special=True, normalized=False)
            for i, ty in enumerate(types)
            if ty == _CONTROL and vocab[tokens[i]] == i
        ]
        user = [
            AddedToken(tokens[i], special=False, normalized=False)
            for i, ty in enumerate(types)
            if ty == _USER_DEFINED and vocab[tokens[i]] == i
        ]
        if control:
            backend.add_special_tokens(control)
        if user:
            backend.add_tokens(user)

        add_bos_meta = meta.get("tokenizer.ggml.add_bos_token")
        add_bos = bool(add_bos_meta) if add_bos_meta is not None else default_add_bos
        template = meta.get("tokenizer.chat_template")
        template = template if isinstance(template, str) and template.strip() else None

        stops = {i for i in (special_id("eot_token_id"), special_id("eom_token_id")) if i is not None}
        stops |= _chat_end_ids(vocab, template)
        return cls(
            backend,
            spelling=spelling,
            bos_id=bos_id,
            eos_id=eos_id,
            eos_ids=stops,
            pad_id=pad_id,
            unk_id=unk_id,
            add_bos=add_bos,
            chat_template=template,
            source=path,
        )

    @classmethod
    def from_gguf(cls, path: str | Path) -> Tokenizer:
        """Read a GGUF file's metadata (not its tensors) and build from it."""
        import gguf

        try:
            reader = gguf.GGUFReader(str(path), "r")
        except (OSError, ValueError) as exc:
            raise ModelLoadError(path, f"could not read it as GGUF: {exc}") from exc
        meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
        return cls.from_gguf_metadata(meta, path)

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Build from a Hugging Face model folder (`tokenizer.json`, plus its config files when present)."""
        folder = Path(path)
        tok_file = folder / "tokenizer.json"
        if not tok_file.is_file():
            raise ModelLoadError(
                folder,
                "no tokenizer.json in this folder",
                "only fast (tokenizer.json) tokenizers are supported",
            )
        try:
            backend = BackendTokenizer.from_file(str(tok_file))
        except Exception as exc:  # the Rust side raises plain Exception subclasses
            raise ModelLoadError(tok_file, f"could not load the tokenizer: {exc}") from exc

        config = _read_optional_json(folder / "tokenizer_config.json")
        model_config = _read_optional_json(folder / "config.json")
        gen_config = _read_optional_json(folder / "generation_config.json")
        special_map = _read_optional_json(folder / "special_tokens_map.json")

        def token_id(name: str) -> int | None:
            content = _token_content(config.get(name)) or _token_content(special_map.get(name))
            return backend.token_to_id(content) if content is not None else None

        bos_id = token_id("bos_token")
        if bos_id is None:
            bos_id = next(iter(_as_id_list(model_config.get("bos_token_id"))), None)
        pad_id = token_id("pad_token")
        if pad_id is None:
            pad_id = next(iter(_as_id_list(model_config.get("pad_token_id"))), None)
        unk_id = token_id("unk_token")

        template = _dir_chat_template(folder, config)
        config_eos = _as_id_list(gen_config.get("eos_token_id")) + _as_id_list(model_config.get("eos_token_id"))
        eos_id = token_id("eos_token")
        if eos_id is None and config_eos:
            eos_id = config_eos[0]
        stops = set(config_eos) | _chat_end_ids(backend.get_vocab(with_added_tokens=True), template)

        if "add_bos_token" in config:
            add_bos = bool(config["add_bos_token"])
        else:  # the post-processor in tokenizer.json is how most fast tokenizers say it
            with_special = backend.encode("a", add_special_tokens=True).ids
            add_bos = bos_id is not None and len(with_special) > 1 and with_special[0] == bos_id

        decoder = json.dumps(json.loads(backend.to_str()).get("decoder"))
        if '"ByteLevel"' in decoder:
            spelling = "byte_level"
        elif '"ByteFallback"' in decoder or "\u2581" in decoder or "\\u2581" in decoder:
            spelling = "sentencepiece"
        else:
            spelling = "plain"
        return cls(
            backend,
            spelling=spelling,
            bos_id=bos_id,
            eos_id=eos_id,
            eos_ids=stops,
            pad_id=pad_id,
            unk_id=unk_id,
            add_bos=add_bos,
            chat_template=template,
            source=folder,
        )

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids for `text`; special tokens written in the text (e.g. `<|im_start|>`) stay whole.

        With `add_special_tokens`, BOS is prepended when the model asks for it (and only BOS: the
        engine decides about EOS itself).
        """
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """`encode` over many texts at once, using the backend's thread pool."""
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=False)
        prefix = [self.bos_id] if add_special_tokens and self.add_bos and self.bos_id is not None else []
        return [prefix + e.ids for e in encodings]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text for `ids`; control tokens (BOS, chat markers) are dropped unless asked for."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the model's embedding rows may be more)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab(self) -> list[str]:
        """Token strings by id, spelled as in the vocabulary (byte-level `Ġ`, SentencePiece `▁`, `<0x0A>`)."""
        if self._vocab is None:
            size = self.vocab_size
            self._vocab = [self.backend.id_to_token(i) or "" for i in range(size)]
        return self._vocab

    @property
    def special_ids(self) -> set[int]:
        """Ids of special (control) tokens: never produced from plain text, dropped by `decode`."""
        return {i for i, tok in self._added.items() if tok.special}

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes token `token_id` stands for, as a grammar matcher needs them.

        A byte-fallback token `<0xE4>` is one byte that may be part of a UTF-8 character, which is
        why this returns bytes and not text.
        """
        added = self._added.get(token_id)
        if added is not None:
            return added.content.encode("utf-8")
        token = self.backend.id_to_token(token_id)
        if token is None:
            raise IndexError(f"token id {token_id} is outside the vocabulary of {self.vocab_size}")
        if self.spelling == "byte_level":
            return _spelled_as_bytes(token)
        if self.spelling == "sentencepiece":
            byte = _BYTE_TOKEN.match(token)
            if byte:
                return bytes([int(byte.group(1), 16)])
            return token.replace("\u2581", " ").encode("utf-8")
        return token.encode("utf-8")

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary string (e.g. `<|im_end|>`), or None."""
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary string of an id, or None."""
        return self.backend.id_to_token(token_id)

    @property
    def bos_token(self) -> str | None:
        """The BOS string (what templates call `bos_token`)."""
        return self.backend.id_to_token(self.bos_id) if self.bos_id is not None else None

    @property
    def eos_token(self) -> str | None:
        """The model's EOS string (what templates call `eos_token`)."""
        return self.backend.id_to_token(self.eos_id) if self.eos_id is not None else None

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """Render a conversation as the prompt text the model was tuned on (ChatML if it has no template).

        Extra keyword arguments (e.g. `tools`) are visible to the template, as in transformers.
        """
        template = _compile_template(self.chat_template or CHATML_TEMPLATE)
        context: dict[str, Any] = {
            "tools": None,
            "documents": None,
            "bos_token": self.bos_token or "",
            "eos_token": self.eos_token or "",
            "unk_token": self._token_or_empty(self.unk_id),
            "pad_token": self._token_or_empty(self.pad_id),
        }
        context.update(kwargs)
        context["messages"] = [dict(m) for m in messages]
        context["add_generation_prompt"] = add_generation_prompt
        return template.render(**context)

    def _token_or_empty(self, token_id: int | None) -> str:
        return (self.backend.id_to_token(token_id) or "") if token_id is not None else ""

    def __repr__(self) -> str:
        return (
            f"Tokenizer(source={self.source!r}, spelling={self.spelling!r}, vocab_size={self.vocab_size}, "
            f"bos_id={self.bos_id}, eos_ids={sorted(self.eos_ids)}, add_bos={self.add_bos})"
        )


def _byte_level_pre_tokenizer(pre: Any, path: str | Path) -> pre_tokenizers.PreTokenizer:
    """The split llama.cpp applies before byte-level BPE for this `tokenizer.ggml.pre`."""
    if pre is None:
        pre = "default"
    family, split = _PRE_TOKENIZERS.get(pre, (None, _GPT2_SPLIT))
    if family is None:
        logger.warning("%s: unknown tokenizer.ggml.pre %r; splitting text like GPT-2", path, pre)
        family = "gpt2"
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=family != "split")
    if family == "gpt2":
        return byte_level
    if family == "digits":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"), byte_level])


def _chat_end_ids(vocab: Mapping[str, int], template: str | None) -> set[int]:
    """Ids of end-of-turn tokens the chat format writes: generation must stop on them, not only on EOS."""
    source = template or CHATML_TEMPLATE
    return {vocab[t] for t in _CHAT_END_TOKENS if t in vocab and t in source}


def _dir_chat_template(folder: Path, config: Mapping[str, Any]) -> str | None:
    """The chat template of a HF folder: `chat_template.jinja` (newer) or `tokenizer_config.json` (older)."""
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) and template.strip() else None
