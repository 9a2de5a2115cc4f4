"""The one small port every consumer of language models uses.

Residents, the research API and the HTTP server all call `await llm.generate(...)`; behind it sit
the local engine, an OpenAI-compatible HTTP backend, a replay backend and a scripted fake. Nothing
outside `inference` needs to know which. Besides the protocol, the port holds what every backend
shares: how a request is read (`split_request`, `schema_json`), keyed (`request_key`) and parsed
(`parse_output`), and who made it (`call_meta`: purpose, resident, step, for records and errors).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError

Messages = list[dict[str, str]]
Prompt = str | Messages | list[int]  # raw text, chat messages (rendered with the model's template), or token ids
Schema = type[BaseModel] | dict[str, Any] | list[str] | None  # pydantic model, JSON schema, or choices


class RequestError(ValueError):
    """A request the backend refuses (bad arguments, prompt too long, invalid schema).

    `param` names the offending argument; `code` is a short machine-readable reason, as in
    OpenAI's error objects. Backends raise it before any work is done, so nothing is left behind.
    """

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # generate exactly max_tokens (benchmarks)

    def validate(self, context_length: int | None = None) -> None:
        if not 1 <= self.max_tokens <= (context_length or 1 << 20):
            raise RequestError(
                f"max_tokens must be between 1 and {context_length}, got {self.max_tokens}", "max_tokens"
            )
        if not 0.0 <= self.temperature <= 10.0:
            raise RequestError(f"temperature must be in [0, 10], got {self.temperature}", "temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        if self.top_k < 0:
            raise RequestError(f"top_k must be >= 0, got {self.top_k}", "top_k")


@dataclass
class GenerateResult:
    text: str
    parsed: Any = None  # the validated object when a schema was given
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    finish_reason: str = "stop"  # "stop" | "length"
    timings: dict[str, float] = field(default_factory=dict)  # queue_s, first_token_s, total_s, mask_s


@dataclass
class StreamEvent:
    delta: str
    result: GenerateResult | None = None  # set on the last event only


@runtime_checkable
class LLM(Protocol):
    async def generate(
        self,
        prompt: Prompt,
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: list[str] | None = None,
        schema: Schema = None,
    ) -> GenerateResult: ...

    def stream(self, prompt: Prompt, **kwargs: Any) -> AsyncIterator[StreamEvent]: ...

    def stats(self) -> dict[str, float]: ...

    async def aclose(self) -> None: ...


def parse_output(schema: Schema, text: str) -> Any:
    """The value constrained output stands for: a validated model instance, the decoded JSON, or the chosen string.

    Constrained text always parses, so a failure here (`invalid_output`) means the output was cut
    short (max_tokens) or a bug; None as schema gives None (no parsed value).
    """
    if schema is None:
        return None
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        try:
            return schema.model_validate_json(text)
        except ValidationError as exc:
            raise RequestError(
                f"output does not validate as {schema.__name__}: {exc}", "schema", "invalid_output"
            ) from exc
    if isinstance(schema, dict):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise RequestError(f"output is not JSON: {exc}", "schema", "invalid_output") from exc
    if isinstance(schema, list | tuple):
        if text in schema:
            return text
        raise RequestError(f"output {text[:80]!r} is none of the {len(schema)} choices", "schema", "invalid_output")
    raise RequestError(f"unsupported schema type {type(schema).__name__}", "schema", "invalid_schema")


def parse_reply(schema: Schema, text: str, finish_reason: str) -> Any:
    """`parsed` of a finished reply: a whole reply must parse; one ended by its budget may (the engine
    closes constrained output within the budget, other servers may cut it), else None."""
    if schema is None or finish_reason not in ("stop", "length"):
        return None
    if finish_reason == "stop":
        return parse_output(schema, text)
    try:
        return parse_output(schema, text)
    except RequestError:
        return None


# What every backend shares: how a request is read and named, and who made it (`call_meta`).


def schema_json(schema: Schema) -> dict[str, Any] | None:
    """The JSON schema a request constrains to (choices become a string enum), for keys, logs and the wire."""
    if schema is None:
        return None
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema.model_json_schema()
    if isinstance(schema, dict):
        return schema
    if isinstance(schema, list | tuple):
        return {"type": "string", "enum": list(schema)}
    raise RequestError(f"unsupported schema type {type(schema).__name__}", "schema", "invalid_schema")


def schema_name(schema: Schema) -> str | None:
    """A short human name for a schema: the model's class name, a dict schema's title, or "choice"."""
    if schema is None:
        return None
    if isinstance(schema, type):
        return schema.__name__
    if isinstance(schema, dict):
        return str(schema.get("title") or "json_schema")
    return "choice"


def jsonable(value: Any) -> Any:
    """A parsed value as plain JSON data (model instances dumped), for records and logs."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def prompt_text(prompt: Prompt) -> str:
    """A prompt as one readable string (messages as `role: content` lines), for messages and counting."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in prompt)


_SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}


def split_request(kwargs: dict[str, Any]) -> tuple[SamplingParams, Schema]:
    """The port's keyword arguments as (SamplingParams, schema); an unknown keyword is a RequestError."""
    kwargs = dict(kwargs)
    schema = kwargs.pop("schema", None)
    unknown = set(kwargs) - _SAMPLING_FIELDS
    if unknown:
        raise RequestError(f"unknown generation argument(s): {', '.join(sorted(unknown))}", sorted(unknown)[0])
    if kwargs.get("stop") is None:
        kwargs.pop("stop", None)
    elif isinstance(kwargs["stop"], str):
        kwargs["stop"] = [kwargs["stop"]]
    else:
        kwargs["stop"] = list(kwargs["stop"])
    return SamplingParams(**kwargs), schema


def request_key(prompt: Prompt, params: SamplingParams, schema: Schema) -> str:
    """A stable sha256 of the canonical JSON of the whole request: equal requests, equal keys, across runs."""
    canonical = json.dumps(
        {"prompt": prompt, "params": dataclasses.asdict(params), "schema": schema_json(schema)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def split_deltas(text: str, pieces: int = 3) -> list[str]:
    """`text` cut into about `pieces` consecutive deltas at whitespace, so a fake stream looks like a real one."""
    if not text:
        return [""]
    cuts = [i for i in range(1, len(text)) if text[i].isspace() and not text[i - 1].isspace()]
    if len(cuts) < pieces:
        cuts = list(range(1, len(text)))
    step = max(len(cuts) // pieces, 1) if cuts else 1
    chosen = cuts[step - 1 :: step][: pieces - 1] if cuts else []
    bounds = [0, *chosen, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


_META: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("simulacra_llm_call_meta", default={})  # noqa: B039


@contextlib.contextmanager
def call_meta(**meta: Any) -> Iterator[dict[str, Any]]:
    """Tag the LLM calls made inside this block (and tasks started in it): purpose, resident, step, ....

    Nested blocks add to (and override) the outer tags. Context variables follow each asyncio task,
    so concurrent residents each see their own tags.
    """
    merged = {**_META.get(), **meta}
    token = _META.set(merged)
    try:
        yield merged
    finally:
        _META.reset(token)


def current_meta() -> dict[str, Any]:
    """The tags `call_meta` set for the current task (a copy)."""
    return dict(_META.get())
