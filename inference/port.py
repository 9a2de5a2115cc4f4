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


MAX_N = 128  # most samples one request may ask for (OpenAI's limit)
MAX_NGRAM = 32  # longest no_repeat_ngram_size


@dataclass
class SamplingParams:
    """How to sample. The fields after `ignore_eos` are keyed and recorded only when set (`keyed_params`).

    `n` independent samples of one prompt (`GenerateResult.samples`); OpenAI's `presence_penalty` and
    `frequency_penalty` (logit -= presence * (count > 0) + frequency * count, over the tokens this
    sample generated); HF/vLLM's `repetition_penalty` (a token of the prompt or the output: logit / p
    if positive, else logit * p); `no_repeat_ngram_size` N > 0 bans every N-gram of `no_repeat_texts`
    and of the output so far from being written again (see `engine.sampling.NgramBans`).
    """

    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # generate exactly max_tokens (benchmarks)
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1 = off
    no_repeat_ngram_size: int = 0  # 0 = off
    no_repeat_texts: list[str] = field(default_factory=list)

    @property
    def penalised(self) -> bool:
        """Whether any penalty or n-gram ban changes the logits (else they are left untouched)."""
        return bool(
            self.presence_penalty
            or self.frequency_penalty
            or self.repetition_penalty != 1.0
            or self.no_repeat_ngram_size
        )

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
        if not 1 <= self.n <= MAX_N:
            raise RequestError(f"n must be between 1 and {MAX_N}, got {self.n}", "n")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                raise RequestError(f"{name} must be in [-2, 2], got {value}", name)
        if not 0.0 < self.repetition_penalty <= 10.0:
            raise RequestError(
                f"repetition_penalty must be in (0, 10] (1 = off), got {self.repetition_penalty}", "repetition_penalty"
            )
        if not 0 <= self.no_repeat_ngram_size <= MAX_NGRAM:
            raise RequestError(
                f"no_repeat_ngram_size must be between 0 (off) and {MAX_NGRAM}, got {self.no_repeat_ngram_size}",
                "no_repeat_ngram_size",
            )
        if self.no_repeat_texts and not self.no_repeat_ngram_size:
            raise RequestError("no_repeat_texts needs no_repeat_ngram_size > 0", "no_repeat_texts")


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` of a request seeded `seed`, fixed by the two alone (never by the batch).

    Sample 0 keeps the request's seed, so an n=1 request samples as it always did and sample i of
    a request equals an n=1 request with seed `sample_seed(seed, i)`. Sample i adds i golden-ratio
    steps (SplitMix64's increment) modulo 2**64; torch's CPU generator reads only the low 32 bits
    of a seed, and the increment's low half is odd, so up to 2**32 samples get distinct streams.
    """
    return seed if index == 0 else (seed + index * 0x9E37_79B9_7F4A_7C15) & 0xFFFF_FFFF_FFFF_FFFF


@dataclass
class GenerateResult:
    text: str
    parsed: Any = None  # the validated object when a schema was given
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    finish_reason: str = "stop"  # "stop" | "length"
    timings: dict[str, float] = field(default_factory=dict)  # queue_s, first_token_s, total_s, mask_s
    # n > 1: every sample in index order, each a result of its own; this result's text, parsed and
    # finish_reason are sample 0's, its token counts the request's usage (see `merge_samples`)
    samples: list[GenerateResult] = field(default_factory=list)
    server: str | None = None  # which server answered (remote backends); a run records it with the call

    @property
    def texts(self) -> list[str]:
        """The text of every sample (one for n=1)."""
        return [s.text for s in self.samples] if self.samples else [self.text]


def merge_samples(samples: list[GenerateResult]) -> GenerateResult:
    """One result for the n samples of a request, counted as OpenAI's usage counts them.

    A caller that ignores `n` still reads a whole answer (sample 0's text, parsed value and finish
    reason); the prompt is counted once (sample 0's prompt and cached tokens), completion tokens
    over all samples. One sample is returned as it is, so n=1 results are unchanged.
    """
    if len(samples) == 1:
        return samples[0]
    first = samples[0]
    return GenerateResult(
        text=first.text,
        parsed=first.parsed,
        prompt_tokens=first.prompt_tokens,
        completion_tokens=sum(s.completion_tokens for s in samples),
        cached_tokens=first.cached_tokens,
        finish_reason=first.finish_reason,
        timings={k: max(s.timings.get(k, 0.0) for s in samples) for k in first.timings},
        samples=list(samples),
    )


@dataclass
class StreamEvent:
    delta: str
    result: GenerateResult | None = None  # set on the last event only
    index: int = 0  # the sample this delta belongs to (n > 1)


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
        n: int = 1,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        no_repeat_texts: list[str] | None = None,
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
# fields added after recorded runs existed: at their defaults they stay out of keys and records,
# so every request made without them keeps its key (a recorded run still replays)
_LATER_FIELDS = (
    "n",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "no_repeat_texts",
)
_DEFAULTS = dataclasses.asdict(SamplingParams())


def keyed_params(params: SamplingParams) -> dict[str, Any]:
    """`params` as a dict for keys and records: the later fields only where they differ from their defaults."""
    out = dataclasses.asdict(params)
    for name in _LATER_FIELDS:
        if out[name] == _DEFAULTS[name]:
            del out[name]
    return out


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
    if kwargs.get("no_repeat_texts") is None:
        kwargs.pop("no_repeat_texts", None)
    else:
        kwargs["no_repeat_texts"] = list(kwargs["no_repeat_texts"])
    return SamplingParams(**kwargs), schema


def request_key(prompt: Prompt, params: SamplingParams, schema: Schema) -> str:
    """A stable sha256 of the canonical JSON of the whole request: equal requests, equal keys, across runs."""
    canonical = json.dumps(
        {"prompt": prompt, "params": keyed_params(params), "schema": schema_json(schema)},
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


def result_events(result: GenerateResult, pieces: int = 3) -> list[StreamEvent]:
    """A finished result as the events a real stream would have sent: each sample's text in about
    `pieces` deltas (tagged with its index), the last event carrying the last delta and the result."""
    events = [StreamEvent(d, None, i) for i, text in enumerate(result.texts) for d in split_deltas(text, pieces)]
    events[-1].result = result
    return events


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
