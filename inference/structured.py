"""Grammar-constrained decoding: a schema becomes a per-step token mask, so the output always parses.

A request's `schema` (a pydantic model, a JSON schema dict, or a list of choices) is compiled once
into an llguidance grammar and cached per engine. Each request gets a fresh `Constraint`; before
every sampling step the engine masks the logits (`apply_masks`, all constrained rows of a batch at
once on llguidance's thread pool), and after it feeds the sampled token back (`Constraint.advance`).
EOS (and the chat format's other stop ids) is allowed only once the grammar is complete, so the
sequence ends exactly when the value does; `parse_output` then turns the text into the object.

JSON layout. llguidance's default allows any run of whitespace between JSON tokens, and a small
model left with that freedom can emit newlines and indentation forever (each still "valid JSON").
We compile with `whitespace_flexible: false` and fixed separators `", "` and `": "` instead: exactly
one layout, `{"place": "cafe", "minutes": 30}`, which is what `json.dumps` writes and so likely the
form models saw most in training (in a quick check, SmolLM2 closed a free-text field sooner under it
than under the compact `","`/`":"` form), and every separator byte is forced, so it costs the model
no choices. A JSON schema can override this with its own `x-guidance` options (ours are defaults).

Pydantic models also get `additionalProperties: false` on every object that does not say otherwise:
pydantic ignores unknown keys by default, so forbidding them changes nothing that validates, and it
stops a model from inventing keys. A raw JSON schema keeps JSON Schema's meaning (absent = allowed).
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from functools import cache
from typing import Any

import llguidance
import llguidance.torch as llg_torch
import numpy as np
import torch
from pydantic import BaseModel

from simulacra.inference.port import RequestError, Schema, parse_output
from simulacra.inference.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

__all__ = ["JSON_OPTIONS", "Constraint", "GrammarCompiler", "apply_masks", "parse_output"]

# Defaults for llguidance's JSON compiler (a schema's own "x-guidance" wins); see the module docstring.
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}

_CACHE_SIZE = 256


class _Vocabulary:
    """What `llguidance.TokenizerWrapper` reads: token bytes, special ids, EOS, and an encoder.

    llguidance re-tokenizes forced text (e.g. a fixed key) to pick natural tokens for it, so the
    encoder must treat `<|im_start|>` written in text as plain characters, never as the special token:
    it runs on a copy of the backend with `encode_special_tokens` switched on.
    """

    def __init__(self, tokenizer: Tokenizer, eos_ids: list[int]) -> None:
        n = tokenizer.vocab_size
        self.eos_token_id = eos_ids[0]
        self.bos_token_id = tokenizer.bos_id
        self.special_token_ids = sorted(i for i in tokenizer.special_ids if i < n)
        self.tokens = [_token_bytes(tokenizer, i) for i in range(n)]
        self._backend = type(tokenizer.backend).from_str(tokenizer.backend.to_str())
        self._backend.encode_special_tokens = True

    def __call__(self, text: str) -> list[int]:
        if not isinstance(text, str):  # TokenizerWrapper probes with bytes; a TypeError makes it pass str
            raise TypeError("text, not bytes")
        return self._backend.encode(text, add_special_tokens=False).ids


def _token_bytes(tokenizer: Tokenizer, token_id: int) -> bytes:
    try:
        return tokenizer.token_bytes(token_id)
    except IndexError:  # a hole in the id range: an empty token, which no grammar can produce
        return b""


@cache
def _executor() -> llguidance.LLExecutor:
    """One thread pool per process for batched mask computation (llguidance sizes it to the CPUs)."""
    return llguidance.LLExecutor()


class _Compiled:
    """A grammar and a pristine matcher for it; requests get deep copies, which skips re-building the lexer."""

    def __init__(self, grammar: str, template: llguidance.LLMatcher) -> None:
        self.grammar = grammar
        self.template = template


class GrammarCompiler:
    """One per engine (per tokenizer): builds llguidance's tokenizer once, caches compiled grammars by schema."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        """`vocab_size` is the model's logits width; ids the tokenizer does not have are always masked."""
        eos_ids = sorted(tokenizer.eos_ids)
        if tokenizer.eos_id is not None:  # the model's own EOS first: llguidance's "main" EOS
            eos_ids = [tokenizer.eos_id] + [i for i in eos_ids if i != tokenizer.eos_id]
        if not eos_ids:
            raise ValueError("structured output needs an EOS token, and this tokenizer has none")
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = eos_ids
        self.ll_tokenizer = llguidance.LLTokenizer(
            llguidance.TokenizerWrapper(_Vocabulary(tokenizer, eos_ids)), eos_token=eos_ids
        )
        self.mask_words = (self.ll_tokenizer.vocab_size + 31) // 32  # int32 words per bitmask row
        self._cache: OrderedDict[Hashable, _Compiled] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, schema: Schema) -> str:
        """The llguidance grammar for `schema` (cached); an unusable schema raises RequestError("invalid_schema")."""
        return self._compiled(schema).grammar

    def matcher(self, schema: Schema) -> Constraint:
        """A fresh constraint for one request."""
        return Constraint(self._compiled(schema).template.deep_copy(), self)

    def _compiled(self, schema: Schema) -> _Compiled:
        key = _cache_key(schema)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        compiled = self._build(schema)
        with self._lock:
            compiled = self._cache.setdefault(key, compiled)  # a racing compile of the same schema keeps one
            self._cache.move_to_end(key)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def _build(self, schema: Schema) -> _Compiled:
        grammar = grammar_for(schema)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.ll_tokenizer)
        if is_error:
            raise _invalid(f"the schema cannot be used for constrained output: {messages[0] if messages else '?'}")
        if messages:
            logger.warning("structured output: %s", "; ".join(messages))
        template = llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0)
        if template.is_error():
            raise _invalid(f"the schema cannot be used for constrained output: {template.get_error()}")
        return _Compiled(grammar, template)


class Constraint:
    """One request's grammar state: masks its logits row, consumes its sampled tokens."""

    def __init__(self, matcher: llguidance.LLMatcher, compiler: GrammarCompiler) -> None:
        self.matcher = matcher
        self.compiler = compiler
        self.mask_seconds = 0.0  # wall time this request waited on mask steps (a batched step counts whole)

    def fill_mask(self, logits_row: torch.Tensor) -> None:
        """Set disallowed tokens of this row (length vocab_size) to -inf, in place."""
        apply_masks([self], logits_row.unsqueeze(0))

    def advance(self, token_id: int) -> None:
        """Consume the sampled token; a token the grammar rejects is a bug in masking, so it raises."""
        if not self.matcher.consume_token(int(token_id)):
            reason = self.matcher.get_error().split("\n<state>")[0] or "no reason"  # drop the state dump
            raise RuntimeError(f"token {token_id} rejected by the grammar: {reason}")

    def is_done(self) -> bool:
        """The value is complete and nothing but EOS/stop may follow (the engine may end the request)."""
        return self.matcher.is_stopped() and not self.matcher.is_error()

    def is_accepting(self) -> bool:
        """The text so far is a complete value (EOS is allowed), though it could still go on (choices)."""
        return self.matcher.is_accepting()


def apply_masks(constraints: Sequence[Constraint | None], logits: torch.Tensor) -> float:
    """Mask row i of `logits` [B, V] by `constraints[i]` (None = unconstrained) in place; returns seconds spent.

    Masks are computed into one int32 bitmask on llguidance's thread pool (GIL released), turned
    into an additive 0/-inf bias by a byte lookup, and added to all constrained rows in one op on the
    logits' device. All constraints must come from one `GrammarCompiler` (one tokenizer).
    """
    start = time.perf_counter()
    if logits.dim() != 2 or logits.shape[0] != len(constraints):
        raise ValueError(f"logits {tuple(logits.shape)} do not match {len(constraints)} constraints")
    rows = [i for i, c in enumerate(constraints) if c is not None]
    if not rows:
        return 0.0
    compiler = constraints[rows[0]].compiler  # type: ignore[union-attr]
    bitmask = torch.empty((len(rows), compiler.mask_words), dtype=torch.int32)
    if len(rows) == 1:
        llg_torch.fill_next_token_bitmask(constraints[rows[0]].matcher, bitmask, 0)  # type: ignore[union-attr]
    else:
        matchers = [(constraints[i].matcher, k) for k, i in enumerate(rows)]  # type: ignore[union-attr]
        llg_torch.fill_next_token_bitmask_par(_executor(), matchers, bitmask)
    bias = _mask_bias(bitmask, min(compiler.ll_tokenizer.vocab_size, logits.shape[1]), logits.shape[1], logits)
    if len(rows) == logits.shape[0]:
        logits.add_(bias)
    else:
        logits.index_add_(0, torch.tensor(rows, device=logits.device), bias)
    elapsed = time.perf_counter() - start
    for i in rows:
        constraints[i].mask_seconds += elapsed  # type: ignore[union-attr]
    return elapsed


def _byte_table() -> np.ndarray:
    """[256, 8] fp32: for each byte of a bitmask, the 8 tokens' additive bias (0 allowed, -inf not)."""
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")
    return np.where(bits == 1, 0.0, -np.inf).astype(np.float32)


_BYTE_BIAS = _byte_table()
_BYTE_BIAS_T: dict[torch.device, torch.Tensor] = {}


def _mask_bias(bitmask: torch.Tensor, n: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """int32 bitmask [R, W] (bit k of word w = token 32w + k) -> additive bias [R, width]: 0 or -inf.

    Adding a looked-up bias (8 tokens per bitmask byte) is 3-4x faster on CPU than unpacking to
    bools and `masked_fill_`; ids from `n` on (unknown to the tokenizer) get -inf.
    """
    known = _bias_numpy(bitmask) if like.device.type == "cpu" else _bias_torch(bitmask, like.device)
    known = known[:, :n]
    if n == width and known.dtype == like.dtype:
        return known
    bias = torch.full((bitmask.shape[0], width), float("-inf"), dtype=like.dtype, device=like.device)
    bias[:, :n] = known
    return bias


def _bias_numpy(bitmask: torch.Tensor) -> torch.Tensor:
    table = np.take(_BYTE_BIAS, bitmask.numpy().view(np.uint8), axis=0)
    return torch.from_numpy(table).view(bitmask.shape[0], -1)


def _bias_torch(bitmask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The same lookup with torch ops, for logits on an accelerator (the bitmask is copied over, 6 KB a row)."""
    table = _BYTE_BIAS_T.get(device)
    if table is None:
        table = _BYTE_BIAS_T.setdefault(device, torch.from_numpy(_BYTE_BIAS).to(device))
    idx = bitmask.to(device, non_blocking=True).view(torch.uint8).view(-1).long()
    return table.index_select(0, idx).view(bitmask.shape[0], -1)


def grammar_for(schema: Schema) -> str:
    """The llguidance grammar text for a schema (not validated against a tokenizer: `GrammarCompiler` does that)."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        try:
            json_schema = schema.model_json_schema()
        except Exception as exc:  # pydantic raises several error types for types it cannot describe
            raise _invalid(f"{schema.__name__} has no JSON schema: {exc}") from exc
        return _json_grammar(_forbid_extra_keys(json_schema))
    if isinstance(schema, dict):
        return _json_grammar(schema)
    if isinstance(schema, list | tuple):
        return _choices_grammar(schema)
    if schema is None:
        raise ValueError("no schema: an unconstrained request needs no grammar")
    raise _invalid(
        f"schema must be a pydantic model class, a JSON schema dict or a list of strings, not {type(schema).__name__}"
    )


def _json_grammar(json_schema: dict[str, Any]) -> str:
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(json_schema), defaults=JSON_OPTIONS)
    except (TypeError, ValueError) as exc:
        raise _invalid(f"the JSON schema is not a JSON object: {exc}") from exc


def _choices_grammar(choices: Sequence[Any]) -> str:
    """Exactly one of the strings, bare (no JSON quotes): a Lark alternation of string literals.

    llguidance's Lark literals take JSON string escapes, so `json.dumps` quotes any text safely
    (quotes, backslashes, newlines, `|`, non-ASCII); an empty string is a valid choice too.
    """
    _check_choices(choices)
    unique = list(dict.fromkeys(choices))
    return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in unique))


def _check_choices(choices: Sequence[Any]) -> None:
    if not choices:
        raise _invalid("the list of choices is empty")
    bad = [c for c in choices if not isinstance(c, str)]
    if bad:
        raise _invalid(f"choices must be strings, got {bad[0]!r}")


def _forbid_extra_keys(json_schema: dict[str, Any]) -> dict[str, Any]:
    """A copy where every object schema with properties and no `additionalProperties` gets `false`."""
    out = copy.deepcopy(json_schema)
    stack: list[Any] = [out]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


def _cache_key(schema: Schema) -> Hashable:
    """Equal schemas share a key: a model class by identity, a dict by its canonical JSON, choices by value."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return ("model", schema)
    if isinstance(schema, dict):
        try:
            return ("json", json.dumps(schema, sort_keys=True))
        except (TypeError, ValueError) as exc:
            raise _invalid(f"the JSON schema is not serializable: {exc}") from exc
    if isinstance(schema, list | tuple):
        _check_choices(schema)
        return ("choices", tuple(schema))
    grammar_for(schema)  # raises: not a kind of schema we know
    raise AssertionError("unreachable")


def _invalid(message: str) -> RequestError:
    return RequestError(message, "schema", "invalid_schema")
