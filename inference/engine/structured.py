"""Grammar-constrained decoding: a schema becomes a per-step token mask, so the output always parses.

A request's `schema` (a pydantic model, a JSON schema dict, or a list of choices) is compiled once
into an llguidance grammar and cached per engine. Each request gets a fresh `Constraint`; before
every sampling step the engine masks the logits (`apply_masks`, all constrained rows of a batch at
once on llguidance's thread pool), and after it feeds the sampled token back (`Constraint.accept`).
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

The token budget. A value cut off by `max_tokens` would not parse, so every constraint keeps a
*close*: tokens that complete a valid value from its current state (`_Closer.close`: greedy, on the
request's own matcher, rolled back afterwards). The engine hands each sampled token to
`Constraint.accept` with the budget left after it. The close from the new state is the old one, or
a tail of it, when that still completes the value (one `validate_tokens` call, ~20 us: the common
case, another character of a free string), else a fresh one (~0.1-1 ms). If it does not fit the
budget, the token is refused and the close from the previous state, which fits by induction, is
forced instead (`next_forced`): the engine ends the request once it is written, finish_reason
"length", and the value parses. The close from the start is the shortest value the engine can
write, so a smaller `max_tokens` is refused up front (`check_budget`). A schema without a close (a
pattern the greedy rules cannot finish, a value over `MAX_CLOSE` tokens) is not guarded.
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

__all__ = ["JSON_OPTIONS", "MAX_CLOSE", "Constraint", "GrammarCompiler", "apply_masks", "parse_output"]

# Defaults for llguidance's JSON compiler (a schema's own "x-guidance" wins); see the module docstring.
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}

_CACHE_SIZE = 256
MAX_CLOSE = 256  # longest close searched for (tokens); a state needing more counts as one that cannot close
_ENCODE_MEMO = 4096  # texts whose token ids the llguidance tokenizer callback remembers
_REUSE = 4  # tails of the previous close tried before a fresh one
_STALL = 32  # picks in a row from the whole mask (no closer, value or separator fits) before giving up


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
        # llguidance tokenizes every forced string (a fixed key, `": "`) each time it forces it, ~45 us
        # (the budget's closes force many): the same text always gives the same ids, so remember them
        self._memo: dict[str, list[int]] = {}

    def __call__(self, text: str) -> list[int]:
        if not isinstance(text, str):  # TokenizerWrapper probes with bytes; a TypeError makes it pass str
            raise TypeError("text, not bytes")
        ids = self._memo.get(text)
        if ids is None:
            ids = self._backend.encode(text, add_special_tokens=False).ids
            if len(self._memo) >= _ENCODE_MEMO:
                self._memo.clear()
            self._memo[text] = ids
        return list(ids)


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
    """A grammar, a pristine matcher for it (requests get deep copies, which skips re-building the
    lexer) and the close from its start: the fewest tokens a complete value takes (None: unknown)."""

    def __init__(
        self, grammar: str, template: llguidance.LLMatcher, syntax: Syntax | None, close: list[int] | None
    ) -> None:
        self.grammar = grammar
        self.template = template
        self.syntax = syntax  # _START for a JSON grammar, None for choices
        self.close = close


Syntax = tuple[bool, bool, str, bool]
"""The JSON text so far, as the closer needs it: inside a string; just after a backslash in one;
the open brackets, outermost first; and (outside strings) whether a value may start here."""
_START: Syntax = (False, False, "", True)
_QUOTE, _BACKSLASH = 0x22, 0x5C
_OPEN, _CLOSE = {0x7B: "{", 0x5B: "["}, (0x7D, 0x5D)
_BEFORE_VALUE = frozenset(b"[:, ")  # a value starts after these (in either layout: `: `, `, `, `:`, `,`)


def _feed(state: Syntax, data: bytes) -> Syntax:
    """The syntax state after `data` (valid JSON text: the grammar saw to that)."""
    in_string, escaped, stack, at_value = state
    for b in data:
        if in_string:
            if escaped:
                escaped = False
            elif b == _BACKSLASH:
                escaped = True
            elif b == _QUOTE:
                in_string = False
            continue
        if b == _QUOTE:
            in_string = True
        elif b in _OPEN:
            stack += _OPEN[b]
        elif b in _CLOSE:
            stack = stack[:-1]
        at_value = b in _BEFORE_VALUE
    return in_string, escaped, stack, at_value


def _closing_bytes(state: Syntax) -> bytes:
    """What ends everything open, syntax only: the string's quote, then the brackets inside out."""
    in_string, escaped, stack, _ = state
    if escaped:
        return b""
    return (b'"' if in_string else b"") + "".join("}" if c == "{" else "]" for c in reversed(stack)).encode()


class _Closer:
    """Finds a short token sequence that completes a valid value from a matcher's state.

    Greedy, one token at a time, on the matcher itself (consumed, then rolled back): the bytes the
    grammar forces (`compute_ff_tokens`: a fixed key, `": "`, the rest of an enum value), else the
    first candidate the grammar accepts, from a JSON syntax state tracked along the text:

    1. a closing token: one spelling a prefix of what ends everything open (`"`, then a `}` or `]`
       per open container), longest first: `"}]}` closes a string and three containers at once;
    2. inside a string that cannot end yet (a minimum length): the longest token the mask allows;
    3. where a value starts: a minimal value (`0`, `""`, `{}`, `[]`, `null`, `false`, `true`, with
       or without a leading space), else a digit after which the number may end (`7` where the
       minimum is 7), else the first digit allowed;
    4. after a value: `,` (an object missing a required key, whose key is then forced; an array
       short of its minimum items), else a digit (a number that must grow: `1` -> `10` for >= 5);
    5. else the longest token the mask allows (a choice of key or enum value, a choice grammar).

    So it closes open strings, arrays and objects and fills required fields minimally. A candidate
    costs one `validate_tokens` call (~1-3 us), a pick from the mask ~30 us; the close from inside a
    free string (`"}`) costs ~20-40 us, one from the start of a 10-field object ~0.5 ms. The result
    is short, not provably the shortest, and a pattern the rules cannot finish (an e-mail address)
    gives no close at all (`None`: that schema is not guarded).
    """

    def __init__(self, vocab: _Vocabulary, n: int, eos_ids: list[int]) -> None:
        self.tokens = tokens = vocab.tokens
        banned = set(vocab.special_token_ids) | set(eos_ids)

        def ids_of(*texts: bytes) -> list[int]:
            want = {t: i for i, t in enumerate(texts)}
            found = sorted((want[b], i) for i, b in enumerate(tokens) if b in want and i not in banned)
            return [i for _, i in found]

        closing = [i for i, b in enumerate(tokens) if b and set(b) <= set(b'"]}') and i not in banned]
        self.closing = sorted(closing, key=lambda i: (-len(tokens[i]), i))
        values = (b"0", b'""', b"{}", b"[]", b"null", b"false", b"true")
        self.values = ids_of(*values, *(b" " + v for v in values))
        digits = tuple(str(d).encode() for d in range(10))
        self.digits = ids_of(*digits, *(b" " + d for d in digits))
        self.separators = ids_of(b",", b", ", b" ")
        self.lengths = np.full(32 * ((n + 31) // 32), -1, dtype=np.int64)  # per bit of a mask: bytes, -1 = never
        for i, b in enumerate(tokens[:n]):
            if b and i not in banned:
                self.lengths[i] = len(b)

    def feed(self, state: Syntax | None, token: int) -> Syntax | None:
        return None if state is None or token >= len(self.tokens) else _feed(state, self.tokens[token])

    def close(self, matcher: llguidance.LLMatcher, limit: int, state: Syntax | None) -> list[int] | None:
        """Tokens that take `matcher` to an accepting state, at most `limit` of them; None if none is found.

        `state` is the syntax state of the text so far (None: not a JSON grammar). The matcher is
        left as it was (everything consumed is rolled back).
        """
        out: list[int] = []
        stalled = 0
        try:
            while not matcher.is_accepting():
                if matcher.is_error() or matcher.is_stopped():
                    return None
                step = matcher.compute_ff_tokens()
                if not step:
                    token, from_mask = self._pick(matcher, state)
                    if token is None:
                        return None
                    stalled = stalled + 1 if from_mask else 0
                    if stalled > _STALL:
                        return None
                    step = [token]
                if len(out) + len(step) > limit or matcher.validate_tokens(step) != len(step):
                    return None
                matcher.consume_tokens(step)
                out.extend(step)
                for t in step:
                    state = self.feed(state, t)
            return out
        finally:
            if out:
                matcher.rollback(len(out))

    def _closing(self, state: Syntax | None) -> list[int]:
        end = b"" if state is None else _closing_bytes(state)
        return [t for t in self.closing if end.startswith(self.tokens[t])] if end else []

    def _pick(self, matcher: llguidance.LLMatcher, state: Syntax | None) -> tuple[int | None, bool]:
        """The next token of the close, and whether it came from the whole mask (no rule fitted)."""
        for t in self._closing(state):
            if matcher.validate_tokens([t]) == 1:
                return t, False
        if state is not None and not state[0]:  # outside strings
            at_value = state[3]
            first = self.values if at_value else self.separators
            for t in first:
                if matcher.validate_tokens([t]) == 1:
                    return t, False
            digit = self._digit(matcher, state)
            if digit is not None:
                return digit, False
            for t in self.separators if at_value else ():  # the space of `": "` the forced bytes left over
                if matcher.validate_tokens([t]) == 1:
                    return t, False
        return self._longest(matcher)

    def _digit(self, matcher: llguidance.LLMatcher, state: Syntax) -> int | None:
        """A digit after which the number may end (a closing token or a separator fits), else the first
        digit allowed, else None."""
        first = None
        for t in self.digits:
            if matcher.validate_tokens([t]) != 1:
                continue
            first = t if first is None else first
            matcher.consume_token(t)
            after = [*self._closing(self.feed(state, t)), *self.separators]
            ends = matcher.is_accepting() or any(matcher.validate_tokens([c]) == 1 for c in after)
            matcher.rollback(1)
            if ends:
                return t
        return first

    def _longest(self, matcher: llguidance.LLMatcher) -> tuple[int | None, bool]:
        """The longest token the mask allows (None if it allows none but EOS and specials)."""
        mask = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
        words = np.flatnonzero(mask)  # unpack only the bytes with a bit set: most are 0
        bits = np.unpackbits(mask[words, None], axis=1, bitorder="little")
        rows, cols = np.nonzero(bits)
        allowed = words[rows] * 8 + cols
        allowed = allowed[allowed < len(self.lengths)]
        if allowed.size == 0:
            return None, True
        lengths = self.lengths[allowed]
        best = int(allowed[int(np.argmax(lengths))])
        return (best, True) if lengths.max() > 0 else (None, True)


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
        vocabulary = _Vocabulary(tokenizer, eos_ids)
        self.ll_tokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(vocabulary), eos_token=eos_ids)
        self.mask_words = (self.ll_tokenizer.vocab_size + 31) // 32  # int32 words per bitmask row
        self.closer = _Closer(vocabulary, self.ll_tokenizer.vocab_size, eos_ids)
        self._cache: OrderedDict[Hashable, _Compiled] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, schema: Schema) -> str:
        """The llguidance grammar for `schema` (cached); an unusable schema raises RequestError("invalid_schema")."""
        return self._compiled(schema).grammar

    def matcher(self, schema: Schema) -> Constraint:
        """A fresh constraint for one request."""
        compiled = self._compiled(schema)
        close = None if compiled.close is None else list(compiled.close)
        return Constraint(compiled.template.deep_copy(), self, close, compiled.syntax)

    def min_tokens(self, schema: Schema) -> int | None:
        """Tokens of the shortest value the engine can write for `schema` (None: the close is unknown)."""
        close = self._compiled(schema).close
        return None if close is None else len(close)

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
        syntax = None if isinstance(schema, list | tuple) else _START
        close = self.closer.close(template.deep_copy(), MAX_CLOSE, syntax)
        if close is None:
            logger.warning("structured output: no close found for this schema; max_tokens can cut its values short")
        return _Compiled(grammar, template, syntax, close)


class Constraint:
    """One request's grammar state: masks its logits row, consumes its sampled tokens, and keeps the
    value closable within the request's token budget (see the module docstring)."""

    def __init__(
        self,
        matcher: llguidance.LLMatcher,
        compiler: GrammarCompiler,
        close: list[int] | None = None,
        syntax: Syntax | None = None,
    ) -> None:
        self.matcher = matcher
        self.compiler = compiler
        self.mask_seconds = 0.0  # wall time this request waited on mask steps (a batched step counts whole)
        self.close_seconds = 0.0  # wall time spent finding closes (`accept`)
        self.close = close  # tokens completing a valid value from the current state; None: unguarded
        self.syntax = syntax  # JSON syntax state of the text so far (None: not JSON)
        self.forced: list[int] | None = None  # once the budget forced the close: its tokens still to write

    def check_budget(self, max_tokens: int) -> None:
        """Raise RequestError("max_tokens_too_small") when no value the engine can write fits into `max_tokens`."""
        if self.close is not None and len(self.close) > max_tokens:
            raise RequestError(
                f"max_tokens is {max_tokens}, but the shortest value this schema allows takes {len(self.close)} "
                "tokens; raise max_tokens",
                "max_tokens",
                "max_tokens_too_small",
            )

    @property
    def forcing(self) -> bool:
        """The budget forced the close: the next tokens are `next_forced`'s, not the model's."""
        return self.forced is not None

    @property
    def closed(self) -> bool:
        """The forced close is fully written: the value is complete, the request ends ("length")."""
        return self.forced is not None and not self.forced

    def next_forced(self) -> int:
        """The next token of the forced close, consumed; EOS if nothing is left to write."""
        if self.forced is None:
            raise RuntimeError("no close is being forced")
        if not self.forced:
            return self.compiler.eos_ids[0]
        token = self.forced.pop(0)
        self._consume(token)
        self.close = list(self.forced)
        return token

    def fill_mask(self, logits_row: torch.Tensor) -> None:
        """Set disallowed tokens of this row (length vocab_size) to -inf, in place."""
        apply_masks([self], logits_row.unsqueeze(0))

    def advance(self, token_id: int) -> None:
        """Consume the sampled token, with no budget (the close becomes unknown: `accept` keeps it)."""
        self._consume(token_id)
        self.close = None

    def accept(self, token_id: int, budget: int) -> int:
        """Consume the sampled (non-EOS) token if a valid value can still be completed within `budget`
        tokens after it, and return it; else refuse it, start forcing the close from the state before
        it (which fits: `budget` + 1 tokens) and return the close's first token (EOS if it is empty).
        A token the grammar rejects is a bug in masking and raises. Unguarded, the token is just consumed.
        """
        if self.forced is not None:
            raise RuntimeError("the close is being forced: take next_forced()")
        if self.close is None:
            self._consume(token_id)
            return token_id
        syntax, previous = self.syntax, self.close
        self._consume(token_id)
        start = time.perf_counter()
        close = None
        if previous and previous[0] == token_id:  # the model wrote the close's first token
            close = previous[1:]
        else:  # the old close, or its tail once the token did its first steps (closed the string itself)
            for k in range(min(_REUSE, len(previous) + 1)):
                if len(previous) - k <= budget and self._closes(previous[k:]):
                    close = previous[k:]
                    break
        if close is None or len(close) > budget:
            close = self.compiler.closer.close(self.matcher, min(budget, MAX_CLOSE), self.syntax)
        self.close_seconds += time.perf_counter() - start
        if close is not None:
            self.close = close
            return token_id
        self.matcher.rollback(1)
        self.syntax = syntax
        self.forced = list(self.close)
        return self.next_forced()

    def _closes(self, tokens: list[int]) -> bool:
        """`tokens` take the current state to a complete value (EOS is allowed after them): one ~20 us call."""
        eos = self.compiler.eos_ids[0]
        return self.matcher.validate_tokens([*tokens, eos]) == len(tokens) + 1

    def _consume(self, token_id: int) -> None:
        if not self.matcher.consume_token(int(token_id)):
            reason = self.matcher.get_error().split("\n<state>")[0] or "no reason"  # drop the state dump
            raise RuntimeError(f"token {token_id} rejected by the grammar: {reason}")
        self.syntax = self.compiler.closer.feed(self.syntax, int(token_id))

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
