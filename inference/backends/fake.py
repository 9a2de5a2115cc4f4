"""A scripted LLM for unit tests: answers you choose, with a real backend's contract.

Residents' tests need an LLM that says exactly what the test wants, and still behaves like the
engine where code depends on it: token counts, `max_tokens` cut-offs (finish_reason "length"),
`stop` strings, schemas (JSON text plus the parsed, validated object), streaming, errors for bad
arguments and over-long prompts, concurrency. Tokens are whitespace-separated words, which is
enough to make counts and cut-offs predictable in a test. With n > 1 each sample is one answer of
the script (see `ScriptedLLM`), and the result holds them as `samples`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from simulacra.inference.port import (
    GenerateResult,
    Prompt,
    RequestError,
    SamplingParams,
    Schema,
    StreamEvent,
    merge_samples,
    parse_output,
    prompt_text,
    result_events,
    sample_seed,
    split_request,
)

__all__ = ["ScriptExhaustedError", "ScriptedCall", "ScriptedLLM", "count_tokens"]

Script = Callable[[Prompt, Schema, SamplingParams], Any]

_TOKEN = re.compile(r"\s*\S+")


def count_tokens(text: str) -> int:
    """The fake's token count: whitespace-separated words."""
    return len(_TOKEN.findall(text))


class ScriptExhaustedError(RuntimeError):
    """A ScriptedLLM built from a list got more calls than the list has answers."""


@dataclass
class ScriptedCall:
    """One call the fake received, as the test wants to inspect it."""

    prompt: Prompt
    schema: Schema
    params: SamplingParams
    result: GenerateResult | None = None
    error: BaseException | None = None

    @property
    def text(self) -> str:
        """The prompt as one string (messages as `role: content` lines), for asserts."""
        return prompt_text(self.prompt)


class ScriptedLLM:
    """An LLM whose answers come from a script: a list (one per call, in order), a string, or a function.

    `script` is a list of answers, a single string (every call), or `f(prompt, schema, params)`
    (sync or async). An answer is the output text (str), a pydantic instance or JSON-able value
    (serialised to JSON; with a schema it is validated and returned parsed), or an exception
    instance, which the call raises (e.g. a RequestError, to test error paths).

    With `context_length`, a prompt whose tokens plus `max_tokens` exceed it raises
    `RequestError(code="context_length_exceeded")` as the engine does. `latency` (seconds) makes
    each call wait, so tests can see concurrency; `stats()["max_in_flight"]` shows how much there was.
    `validate=True` checks scripted output against dict schemas too (a subset of JSON Schema), so a
    test cannot script output the engine could never produce.

    A call with n > 1 takes n answers: the next n of a list (a call still counts as one, so the
    answer after it is the list's next), or n calls of a function, sample i's with `n=1` and, when the
    request has a seed, `seed=sample_seed(seed, i)`, as an engine would sample it.
    """

    def __init__(
        self,
        script: Sequence[Any] | str | Script,
        *,
        context_length: int = 8192,
        latency: float = 0.0,
        cycle: bool = False,
        validate: bool = True,
        stream_pieces: int = 3,
    ) -> None:
        if isinstance(script, str):
            self._fn: Script | None = lambda prompt, schema, params: script
            self._answers: list[Any] = []
        elif callable(script):
            self._fn, self._answers = script, []
        elif not isinstance(script, Sequence):
            raise TypeError(f"script must be a list of answers, a string or a function, not {type(script).__name__}")
        else:
            self._fn, self._answers = None, list(script)
        self.context_length = context_length
        self.latency = latency
        self.cycle = cycle
        self.validate = validate
        self.stream_pieces = stream_pieces
        self.calls: list[ScriptedCall] = []
        self.closed = False
        self._in_flight = 0
        self._max_in_flight = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._cached_tokens = 0
        self._seen: list[list[str]] = []  # recent prompts as tokens, to simulate prefix caching
        self._extra_answers = 0  # answers beyond one per call, taken by calls with n > 1

    @property
    def prompts(self) -> list[str]:
        """Every prompt received so far, as text."""
        return [call.text for call in self.calls]

    async def generate(self, prompt: Prompt, **kwargs: Any) -> GenerateResult:
        params, schema = split_request(kwargs)
        call = ScriptedCall(prompt, schema, params)
        self.calls.append(call)
        try:
            call.result = await self._generate(call)
        except BaseException as exc:
            call.error = exc
            raise
        return call.result

    async def _generate(self, call: ScriptedCall) -> GenerateResult:
        if self.closed:
            raise RuntimeError("ScriptedLLM is closed")
        params, prompt = call.params, call.prompt
        params.validate(self.context_length)
        prompt_tokens = _TOKEN.findall(prompt_text(prompt))
        if len(prompt_tokens) + params.max_tokens > self.context_length:
            raise RequestError(
                f"This model's maximum context length is {self.context_length} tokens. However, you requested "
                f"{len(prompt_tokens) + params.max_tokens} tokens ({len(prompt_tokens)} in the prompt, "
                f"{params.max_tokens} for the completion).",
                "messages" if isinstance(prompt, list) else "prompt",
                "context_length_exceeded",
            )
        t0 = time.perf_counter()
        self._in_flight += 1
        self._max_in_flight = max(self._max_in_flight, self._in_flight)
        first = len(self.calls) - 1 + self._extra_answers
        self._extra_answers += params.n - 1
        try:
            await asyncio.sleep(self.latency)  # also yields once at 0, as a real backend would
            answers = [await self._answer(call, first + i, i) for i in range(params.n)]
        finally:
            self._in_flight -= 1
        cached = self._cached(prompt_tokens)
        samples = []
        for answer in answers:
            text, finish = _cut(_render(answer, call.schema, self.validate), params)
            parsed = parse_output(call.schema, text) if call.schema is not None and finish == "stop" else None
            timings = {"queue_s": 0.0, "total_s": time.perf_counter() - t0}
            samples.append(
                GenerateResult(text, parsed, len(prompt_tokens), count_tokens(text), cached, finish, timings)
            )
        result = merge_samples(samples)
        self._prompt_tokens += result.prompt_tokens
        self._completion_tokens += result.completion_tokens
        self._cached_tokens += result.cached_tokens
        return result

    async def _answer(self, call: ScriptedCall, n: int, sample: int) -> Any:
        """Answer `n` of the script (its n-th entry; a function is simply called) for sample `sample`."""
        if self._fn is not None:
            params = call.params
            if params.n > 1:
                seed = None if params.seed is None else sample_seed(params.seed, sample)
                params = dataclasses.replace(params, n=1, seed=seed)
            answer = self._fn(call.prompt, call.schema, params)
            if inspect.isawaitable(answer):
                answer = await answer
        else:
            if n >= len(self._answers) and not (self.cycle and self._answers):
                raise ScriptExhaustedError(
                    f"ScriptedLLM has {len(self._answers)} scripted answer(s) and got call {len(self.calls)}"
                    f"{f' (answer {n + 1})' if call.params.n > 1 else ''}: {call.text[:80]!r}"
                )
            answer = self._answers[n % len(self._answers)]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _cached(self, tokens: list[str]) -> int:
        best = 0
        for seen in self._seen:
            n = 0
            for a, b in zip(tokens, seen, strict=False):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        self._seen.append(tokens)
        del self._seen[:-64]
        return min(best, max(len(tokens) - 1, 0))  # the last prompt token is always computed

    async def stream(self, prompt: Prompt, **kwargs: Any) -> AsyncIterator[StreamEvent]:
        """The answer in a few deltas (each sample's, with its index); the last event carries the result."""
        result = await self.generate(prompt, **kwargs)
        events = result_events(result, self.stream_pieces)
        for event in events[:-1]:
            await asyncio.sleep(0)
            yield event
        yield events[-1]

    def stats(self) -> dict[str, float]:
        return {
            "requests": float(len(self.calls)),
            "running": float(self._in_flight),
            "max_in_flight": float(self._max_in_flight),
            "prompt_tokens": float(self._prompt_tokens),
            "completion_tokens": float(self._completion_tokens),
            "cached_tokens": float(self._cached_tokens),
        }

    async def aclose(self) -> None:
        self.closed = True


def _render(answer: Any, schema: Schema, validate: bool) -> str:
    """The full output text for a scripted answer (before max_tokens and stop strings)."""
    if isinstance(answer, BaseModel):  # the engine's JSON layout: json.dumps separators, fields in order
        value: Any = answer.model_dump(mode="json")
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(answer, str):
        text, value = answer, None
        if isinstance(schema, dict) and validate:
            try:
                value = json.loads(answer)
            except ValueError:
                if not _accepts_string(schema):
                    raise ValueError(f"scripted output for a JSON schema is not JSON: {answer[:80]!r}") from None
                text, value = (
                    json.dumps(answer, ensure_ascii=False),
                    answer,
                )  # a bare string where the schema wants a JSON string
    else:
        try:
            text = json.dumps(answer, ensure_ascii=False)
        except TypeError as exc:
            raise TypeError(f"scripted answer of type {type(answer).__name__} is not str or JSON data") from exc
        value = answer
    if isinstance(schema, dict) and validate and value is not None:
        problem = check_json_schema(value, schema)
        if problem:
            raise ValueError(f"scripted output does not match the JSON schema: {problem}")
    return text


def _accepts_string(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "string" or all(isinstance(v, str) for v in schema.get("enum", [0]))


def _cut(text: str, params: SamplingParams) -> tuple[str, str]:
    """Apply max_tokens (finish "length") then stop strings (finish "stop", the stop string left out)."""
    finish = "stop"
    words = list(_TOKEN.finditer(text))
    if len(words) > params.max_tokens:
        text, finish = text[: words[params.max_tokens - 1].end()], "length"
    hits = [i for i in (text.find(s) for s in params.stop if s) if i >= 0]
    if hits:
        text, finish = text[: min(hits)], "stop"
    return text, finish


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
    "object": (dict,),
    "array": (list,),
}


def check_json_schema(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, path: str = "$") -> str:
    """Why `value` does not match `schema` ("" when it does): the subset of JSON Schema structured output uses.

    Covers type, enum, const, properties/required/additionalProperties, items, min/max length,
    items and values, anyOf/oneOf/allOf and local `$ref`s, which is what pydantic models produce.
    """
    root = schema if root is None else root
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {}) if part else target
        return check_json_schema(value, target, root, path)
    for key in ("anyOf", "oneOf"):
        if key in schema and all(check_json_schema(value, s, root, path) for s in schema[key]):
            return f"{path}: matches none of {key}"
    for sub in schema.get("allOf", []):
        problem = check_json_schema(value, sub, root, path)
        if problem:
            return problem
    if "enum" in schema and value not in schema["enum"]:
        return f"{path}: {value!r} is not one of {schema['enum']}"
    if "const" in schema and value != schema["const"]:
        return f"{path}: {value!r} is not {schema['const']!r}"
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        ok = any(
            isinstance(value, _TYPES.get(t, (object,))) and not (isinstance(value, bool) and t in ("integer", "number"))
            for t in names
        )
        if not ok:
            return f"{path}: {value!r} is not of type {types}"
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                return f"{path}: missing required property {name!r}"
        for name, item in value.items():
            if name in props:
                problem = check_json_schema(item, props[name], root, f"{path}.{name}")
            elif schema.get("additionalProperties") is False:
                problem = f"{path}: unexpected property {name!r}"
            elif isinstance(schema.get("additionalProperties"), dict):
                problem = check_json_schema(item, schema["additionalProperties"], root, f"{path}.{name}")
            else:
                problem = ""
            if problem:
                return problem
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            return f"{path}: {len(value)} items is outside [minItems, maxItems]"
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                problem = check_json_schema(item, schema["items"], root, f"{path}[{i}]")
                if problem:
                    return problem
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            return f"{path}: string length {len(value)} is outside [minLength, maxLength]"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{path}: {value} < minimum {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{path}: {value} > maximum {schema['maximum']}"
    return ""
