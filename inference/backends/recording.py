"""Record every LLM call of a run, and answer a later run from that record.

A run is reproducible only if its LLM calls are: `RecordingLLM` wraps any backend and hands each
call, as a `CallRecord`, to a sink (the run's database, a JSONL file, a list). `ReplayLLM` answers
from such a log without any model, so a run can be re-stepped, inspected or debugged exactly,
in milliseconds. Requests are matched by `request_key`, a hash of the whole request (prompt,
sampling parameters, schema); the n-th identical request gets the n-th recorded answer.
A call for n > 1 samples records each of them (`CallRecord.samples`), and its replay returns them all.

Who made a call (purpose, resident, step) is not an argument of `generate`, so the caller sets it
around its calls with `port.call_meta(...)`; it lands in `CallRecord.meta`, and a replay miss names it.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from simulacra.inference.port import (
    LLM,
    GenerateResult,
    Prompt,
    RequestError,
    SamplingParams,
    Schema,
    StreamEvent,
    current_meta,
    jsonable,
    keyed_params,
    parse_reply,
    prompt_text,
    request_key,
    result_events,
    schema_json,
    schema_name,
    split_request,
)

__all__ = [
    "CallRecord",
    "SampleRecord",
    "JsonlSink",
    "RecordingLLM",
    "ReplayLLM",
    "ReplayMissError",
    "read_jsonl",
    "request_key",
    "write_jsonl",
]


class SampleRecord(BaseModel):
    """One of the n samples of a call with n > 1."""

    text: str = ""
    parsed: Any = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str = "stop"
    timings: dict[str, float] = Field(default_factory=dict)

    @classmethod
    def of(cls, result: GenerateResult) -> SampleRecord:
        return cls(
            text=result.text,
            parsed=jsonable(result.parsed),
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cached_tokens=result.cached_tokens,
            finish_reason=result.finish_reason,
            timings=dict(result.timings),
        )

    def to_result(self, schema: Schema = None) -> GenerateResult:
        return GenerateResult(
            text=self.text,
            parsed=parse_reply(schema, self.text, self.finish_reason),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_tokens=self.cached_tokens,
            finish_reason=self.finish_reason,
            timings=dict(self.timings),
        )


class CallRecord(BaseModel):
    """One LLM call as data: enough to replay it exactly and to study it later."""

    key: str  # request_key(prompt, params, schema)
    prompt: str | list[dict[str, Any]]
    params: dict[str, Any]  # SamplingParams as a dict (`port.keyed_params`: later fields only when set)
    schema_name: str | None = None
    json_schema: dict[str, Any] | None = None
    text: str = ""
    parsed: Any = None  # JSON data (a model instance is dumped)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str = "stop"
    timings: dict[str, float] = Field(default_factory=dict)  # the backend's, plus wall_s measured here
    started_at: float = 0.0  # unix time
    error: dict[str, Any] | None = None  # a RequestError the backend raised: message, param, code
    meta: dict[str, Any] = Field(default_factory=dict)  # purpose, resident, step, ... (see call_meta)
    samples: list[SampleRecord] = Field(default_factory=list)  # n > 1: every sample; the fields above: the result's

    def to_result(self, schema: Schema = None) -> GenerateResult:
        """The recorded answer as a fresh result; `parsed` is re-parsed with the caller's schema."""
        return GenerateResult(
            text=self.text,
            parsed=parse_reply(schema, self.text, self.finish_reason),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_tokens=self.cached_tokens,
            finish_reason=self.finish_reason,
            timings=dict(self.timings),
            samples=[s.to_result(schema) for s in self.samples],
        )

    def raise_error(self) -> None:
        """Raise the recorded RequestError, if this call failed with one."""
        if self.error is not None:
            raise RequestError(self.error.get("message", ""), self.error.get("param"), self.error.get("code", ""))


def _record(
    prompt: Prompt,
    params: SamplingParams,
    schema: Schema,
    started_at: float,
    wall_s: float,
    meta: dict[str, Any],
    result: GenerateResult | None = None,
    error: RequestError | None = None,
) -> CallRecord:
    rec = CallRecord(
        key=request_key(prompt, params, schema),
        prompt=prompt,
        params=keyed_params(params),
        schema_name=schema_name(schema),
        json_schema=schema_json(schema),
        started_at=started_at,
        meta=meta,
    )
    if result is not None:
        if result.server is not None:  # which server answered (remote backends)
            rec.meta = {**meta, "server": result.server}
        rec.text = result.text
        rec.parsed = jsonable(result.parsed)
        rec.prompt_tokens = result.prompt_tokens
        rec.completion_tokens = result.completion_tokens
        rec.cached_tokens = result.cached_tokens
        rec.finish_reason = result.finish_reason
        rec.timings = {**result.timings, "wall_s": wall_s}
        rec.samples = [SampleRecord.of(s) for s in result.samples]
    if error is not None:
        rec.finish_reason = "error"
        rec.error = {"message": str(error), "param": error.param, "code": error.code}
        rec.timings = {"wall_s": wall_s}
    return rec


class RecordingLLM:
    """Forwards to any LLM and hands a `CallRecord` of each finished call to `sink`.

    Calls that fail with RequestError are recorded too (and replay raises them again); other
    exceptions are infrastructure failures, not answers, and are not recorded. A stream is recorded
    when its last event arrives; a stream the caller abandons is not. `meta` (a dict, or a function
    returning one) is merged under the tags of `call_meta`.
    """

    def __init__(
        self,
        inner: LLM,
        sink: Callable[[CallRecord], None],
        *,
        meta: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.inner = inner
        self.sink = sink
        self._meta = meta
        self.recorded = 0

    def _meta_now(self) -> dict[str, Any]:
        base = self._meta() if callable(self._meta) else dict(self._meta or {})
        return {**base, **current_meta()}

    def _emit(self, record: CallRecord) -> None:
        self.sink(record)
        self.recorded += 1

    async def generate(self, prompt: Prompt, **kwargs: Any) -> GenerateResult:
        params, schema = split_request(kwargs)
        meta, started, t0 = self._meta_now(), time.time(), time.perf_counter()
        try:
            result = await self.inner.generate(prompt, **kwargs)
        except RequestError as exc:
            self._emit(_record(prompt, params, schema, started, time.perf_counter() - t0, meta, error=exc))
            raise
        self._emit(_record(prompt, params, schema, started, time.perf_counter() - t0, meta, result=result))
        return result

    async def stream(self, prompt: Prompt, **kwargs: Any) -> AsyncIterator[StreamEvent]:
        params, schema = split_request(kwargs)
        meta, started, t0 = self._meta_now(), time.time(), time.perf_counter()
        try:
            async for event in self.inner.stream(prompt, **kwargs):
                if event.result is not None:
                    wall = time.perf_counter() - t0
                    self._emit(_record(prompt, params, schema, started, wall, meta, result=event.result))
                yield event
        except RequestError as exc:
            self._emit(_record(prompt, params, schema, started, time.perf_counter() - t0, meta, error=exc))
            raise

    def stats(self) -> dict[str, float]:
        return {**self.inner.stats(), "recorded_calls": float(self.recorded)}

    async def aclose(self) -> None:
        await self.inner.aclose()


class ReplayMissError(RuntimeError):
    """A request the recorded log has no (more) answers for: the run diverged from the recording."""

    def __init__(self, message: str, key: str, meta: dict[str, Any]) -> None:
        super().__init__(message)
        self.key = key
        self.meta = meta


class ReplayLLM:
    """Answers from a recorded log instead of a model: same request, same answer, in recorded order.

    The n-th request with a given key gets the n-th record with that key. A request the log cannot
    answer raises `ReplayMissError`, which says who asked (from `call_meta`), how the prompt starts,
    and where it departs from the nearest recorded prompt, which is usually the bug.
    """

    def __init__(self, records: Iterable[CallRecord], *, stream_pieces: int = 3) -> None:
        self._by_key: dict[str, list[CallRecord]] = defaultdict(list)
        self._prompts: dict[str, str] = {}  # one rendered prompt per key, for miss diagnostics
        for rec in records:
            self._by_key[rec.key].append(rec)
            self._prompts.setdefault(rec.key, prompt_text(rec.prompt))
        self._used: Counter[str] = Counter()
        self.stream_pieces = stream_pieces
        self.hits = 0
        self.misses = 0

    def _lookup(self, prompt: Prompt, params: SamplingParams, schema: Schema) -> CallRecord:
        key = request_key(prompt, params, schema)
        recs = self._by_key.get(key, [])
        n = self._used[key]
        if n >= len(recs):
            self.misses += 1
            raise self._miss(key, prompt, n, len(recs))
        self._used[key] += 1
        self.hits += 1
        return recs[n]

    def _miss(self, key: str, prompt: Prompt, n: int, recorded: int) -> ReplayMissError:
        meta = current_meta()
        who = ", ".join(f"{k}={meta[k]!r}" for k in ("purpose", "resident", "step") if k in meta)
        text = prompt_text(prompt)
        head = f"prompt {text[:80]!r}" + ("..." if len(text) > 80 else "")
        if recorded:
            why = f"the log answers this exact request {recorded} time(s) and this is call {n + 1}"
        else:
            why = "no recorded request has this key" + self._nearest(text)
        return ReplayMissError(f"replay miss ({who or 'no call_meta'}): {head}: {why}", key, meta)

    def _nearest(self, text: str) -> str:
        best_key, best = None, -1
        for key, other in self._prompts.items():
            common = len(_common_prefix(text, other))
            if common > best:
                best_key, best = key, common
        if best_key is None:
            return " (the log is empty)"
        other = self._prompts[best_key]
        space = max(text.rfind(" ", 0, best), text.rfind("\n", 0, best))
        if best - space <= 20:  # show the difference from the start of its word
            best = space + 1
        if text == other:
            return "; a recorded request has the same prompt, so the sampling parameters or schema differ"
        return (
            f"; the nearest recorded prompt agrees for {best} characters, then has {other[best : best + 40]!r} "
            f"where this one has {text[best : best + 40]!r}"
        )

    async def generate(self, prompt: Prompt, **kwargs: Any) -> GenerateResult:
        params, schema = split_request(kwargs)
        rec = self._lookup(prompt, params, schema)
        rec.raise_error()
        return rec.to_result(schema)

    async def stream(self, prompt: Prompt, **kwargs: Any) -> AsyncIterator[StreamEvent]:
        result = await self.generate(prompt, **kwargs)
        for event in result_events(result, self.stream_pieces):
            yield event

    def unused(self) -> list[CallRecord]:
        """Records no request has consumed yet (a complete replay leaves none)."""
        return [rec for key, recs in self._by_key.items() for rec in recs[self._used[key] :]]

    def stats(self) -> dict[str, float]:
        total = sum(len(r) for r in self._by_key.values())
        return {
            "replay_hits": float(self.hits),
            "replay_misses": float(self.misses),
            "replay_left": float(total - self.hits),
        }

    async def aclose(self) -> None:
        return None


def _common_prefix(a: str, b: str) -> str:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return a[:i]


def write_jsonl(records: Iterable[CallRecord], path: str | Path) -> int:
    """Write records, one JSON object per line (overwrites); returns how many."""
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(rec.model_dump_json() + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> list[CallRecord]:
    """Records from a JSONL file; blank lines are skipped, a bad line is named by its number."""
    out: list[CallRecord] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(CallRecord.model_validate_json(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: not a call record: {exc}") from exc
    return out


class JsonlSink:
    """A sink for `RecordingLLM` that appends each record to a JSONL file as it arrives (flushed per line)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the sink

    def __call__(self, record: CallRecord) -> None:
        self._fh.write(record.model_dump_json() + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
