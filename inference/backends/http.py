"""The port over any OpenAI-compatible server: vLLM, SGLang, llama.cpp's server, Ollama, or ours.

Why: one machine's engine stops being enough at some town size; pointing the run at a remote
server is how a user scales out, and the residents' code does not change.

Wire mapping: chat messages go to `/v1/chat/completions`, a plain string to `/v1/completions`.
Everything else that differs between servers (`top_k`, seeds, `n`, penalties, no-repeat n-grams,
where cached tokens are reported) is decided by the server's `Dialect` (`dialects.py`, one table):
`dialect="generic"` (the default) sends every field under vLLM's or our name, as this client always
did; `"auto"` asks the server once (`GET /v1/models`) which row it is; a name picks one. A schema is
sent the same way to all of them, `response_format={"type": "json_schema", "json_schema": {"name",
"schema", "strict": true}}`. A list of choices is sent as the schema `{"type": "string", "enum":
[...]}` (portable, unlike vLLM's `guided_choice`); the server then writes a JSON string (`"cafe"`),
which is unquoted here, so `text` and `parsed` are the bare choice as with the local engine. A field
the server cannot take is left out with a one-time warning and counted in `stats()`
(`unsupported="skip"`), or refused with a `RequestError` naming it and the server
(`unsupported="refuse"`); it is never sent to be ignored. With n > 1 the choices become
`GenerateResult.samples` in `index` order; usage counts the whole request (llama.cpp's counts
choice 0 only, so the other choices are counted with its `/tokenize`), so a sample's own
`completion_tokens` is unknown here (0).

Connection errors, timeouts, 429 and 5xx are retried with exponential backoff (honouring
`Retry-After`); any other 4xx raises `RequestError` with the server's message, at once.

A server that misbehaves after saying 200 is reported, never taken at its word: a body that is
not an OpenAI answer, a stream that ends before `data: [DONE]` (or a final `finish_reason`), an
event that is not JSON, a connection dropped mid-answer. Each `HTTPBackendError` names the URL,
what was wrong and the first bytes received. Such a failure is retried while retrying is safe (a
non-streamed answer; a stream before its first delta reached the caller, since the request has
no side effects), and raised once a delta has been passed on, so a caller never gets half an
answer as if it were whole. Every attempt is bounded twice: `timeout` for each network operation
and `total_timeout` for the whole attempt (a server trickling keep-alive comments cannot hold a
request forever).
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx

from simulacra.inference.backends import dialects
from simulacra.inference.backends.dialects import GENERIC, Dialect, dialect_named
from simulacra.inference.port import (
    GenerateResult,
    Prompt,
    RequestError,
    SamplingParams,
    Schema,
    StreamEvent,
    merge_samples,
    parse_reply,
    split_request,
)

__all__ = ["HTTPBackendError", "HTTPBackendTimeout", "OpenAIHTTPBackend"]

_RETRY_STATUS = {408, 409, 425, 429}  # and every 5xx
log = logging.getLogger(__name__)


class HTTPBackendError(RuntimeError):
    """The server could not be reached or kept failing (after retries), or answered something unreadable."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class HTTPBackendTimeout(HTTPBackendError, TimeoutError):
    """Every attempt timed out."""


class OpenAIHTTPBackend:
    """An `LLM` that forwards each request to an OpenAI-compatible server with `httpx.AsyncClient`.

    `base_url` is the server's root or its `/v1` URL (`http://host:8000` and `http://host:8000/v1`
    mean the same). `timeout` is httpx's per-operation timeout in seconds (connect, each read, ...);
    `max_retries` counts retries after the first attempt; the n-th waits `backoff * 2**n` seconds
    (with jitter, capped at `max_backoff`). `total_timeout` bounds one attempt end to end (sending,
    waiting and reading the whole answer or stream), whatever the server does. `transport` replaces
    the network (httpx.MockTransport in tests); `extra_body` is merged into every request body
    (server-specific fields). `dialect`: a row of `dialects.DIALECTS` by name, "auto" (asked of the
    server before the first call) or a `Dialect`; `unsupported`: "skip" (leave such a field out, warn
    once, count it as `skipped_<field>` in `stats()`) or "refuse" (a `RequestError`).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60,
        max_retries: int = 3,
        *,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        max_connections: int = 256,
        total_timeout: float = 600.0,
        transport: httpx.AsyncBaseTransport | None = None,
        extra_body: dict[str, Any] | None = None,
        dialect: str | Dialect = "generic",
        unsupported: str = "skip",
    ) -> None:
        url = base_url.rstrip("/")
        if not urlsplit(url).path.endswith("/v1"):
            url += "/v1"
        self.base_url = url
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.total_timeout = float(total_timeout)
        self.extra_body = dict(extra_body or {})
        if unsupported not in ("skip", "refuse"):
            raise ValueError(f"unsupported must be 'skip' or 'refuse', not {unsupported!r}")
        self.unsupported = unsupported
        self.dialect: Dialect | None = None if dialect == "auto" else dialect_named(dialect)
        self.detected = "" if dialect == "auto" else "given"  # why this dialect (after detection: the evidence)
        self._detecting: asyncio.Lock | None = None
        self.notes: dict[str, str] = {}  # field -> the one warning given about leaving it out
        self._transport = transport
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client: httpx.AsyncClient | None = None
        self._counters = {
            "requests": 0,
            "attempts": 0,
            "retries": 0,
            "errors": 0,
            "running": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cached_tokens": 0,
        }
        self._skipped: dict[str, int] = {}

    # ------------------------------------------------------------------ plumbing

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                timeout=httpx.Timeout(self.timeout),
                limits=self._limits,
                transport=self._transport,
            )
        return self._client

    def _body(self, prompt: Prompt, params: SamplingParams, schema: Schema, stream: bool) -> tuple[str, dict[str, Any]]:
        """The path and JSON body of a request, written in the server's dialect (`dialects.request_fields`)."""
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if isinstance(prompt, str):
            path, body["prompt"] = "/completions", prompt
        else:
            path, body["messages"] = "/chat/completions", prompt
        if params.stop:
            body["stop"] = list(params.stop)
        dialect = self.dialect or GENERIC
        fields, unsupported = dialects.request_fields(dialect, params, schema)
        for name in unsupported:
            self._unsupported(name, dialect)
        body.update(fields)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update(self.extra_body)
        return path, body

    def _unsupported(self, name: str, dialect: Dialect) -> None:
        """A field this server cannot take: refused, or left out with one warning per field (and counted)."""
        what = f"{self.base_url} ({dialect.name}, {self.detected or 'detected'}) does not support {name}"
        if self.unsupported == "refuse":
            raise RequestError(f"{what}; leave it unset for this server", name, "unsupported_by_server")
        self._skipped[name] = self._skipped.get(name, 0) + 1
        if name not in self.notes:
            self.notes[name] = f"{what}: sent without it"
            log.warning("%s: requests are sent without it (counted as skipped_%s in stats)", what, name)

    async def _ensure_dialect(self) -> None:
        """With dialect="auto", ask the server which it is, once, before its first request."""
        if self.dialect is not None:
            return
        if self._detecting is None:
            self._detecting = asyncio.Lock()
        async with self._detecting:
            if self.dialect is None:
                dialect, self.detected = await dialects.detect(self.client, min(self.timeout, 10.0))
                self.dialect = dialect

    def capabilities(self) -> dict[str, Any]:
        """The server's dialect row (after detection, if any), why it was chosen, and what was left out."""
        dialect = self.dialect or GENERIC
        return {
            "dialect": dialect.name,
            "why": self.detected,
            "no_repeat_ngram": dialect.no_repeat,
            "top_k": dialect.top_k != "unsupported",
            "repetition_penalty": dialect.repetition_penalty is not None,
            "n": dialect.n,
            "skipped": dict(self._skipped),
            "notes": dict(self.notes),
        }

    async def _back_off(self, attempt: int, response: httpx.Response | None) -> int:
        """Wait before the next attempt (the server's Retry-After, else jittered exponential); its number."""
        await asyncio.sleep(self._delay(attempt, response))
        self._counters["retries"] += 1
        return attempt + 1

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            after = response.headers.get("retry-after")
            if after is not None:
                try:
                    return min(max(float(after), 0.0), self.max_backoff)
                except ValueError:
                    pass
        return min(self.backoff * 2**attempt * (0.75 + 0.5 * random.random()), self.max_backoff)

    async def _send(self, path: str, body: dict[str, Any], stream: bool) -> httpx.Response:
        """POST with retries; returns a 2xx response (open, if streaming) or raises."""
        attempt = 0
        while True:
            self._counters["attempts"] += 1
            response: httpx.Response | None = None
            failure: str
            try:
                request = self.client.build_request("POST", path, json=body)
                response = await asyncio.wait_for(self.client.send(request, stream=stream), self.total_timeout)
            except httpx.TimeoutException as exc:
                failure, timed_out = f"timed out after {self.timeout} s ({type(exc).__name__})", True
            except TimeoutError:
                failure, timed_out = f"no whole answer within total_timeout={self.total_timeout} s", True
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                failure, timed_out = f"the connection broke mid-answer: {type(exc).__name__}: {exc}", False
            except (httpx.TransportError, OSError) as exc:
                failure, timed_out = f"could not reach the server: {type(exc).__name__}: {exc}", False
            else:
                if response.status_code < 300:
                    return response
                if stream:
                    await response.aread()
                    await response.aclose()
                status = response.status_code
                if not (status >= 500 or status in _RETRY_STATUS):
                    raise _request_error(response)
                failure, timed_out = f"HTTP {status}: {_error_message(response)}", False
            if attempt >= self.max_retries:
                self._counters["errors"] += 1
                cls = HTTPBackendTimeout if timed_out else HTTPBackendError
                raise cls(
                    f"{self.base_url}{path}: {failure} (gave up after {attempt + 1} attempt(s))",
                    None if response is None else response.status_code,
                )
            attempt = await self._back_off(attempt, response)

    def _result(
        self,
        choices: list[tuple[str, str | None]],
        usage: dict[str, Any] | None,
        schema: Schema,
        timings: dict[str, float],
        data: dict[str, Any] | None = None,
    ) -> GenerateResult:
        """The result of the choices (text, finish_reason) in index order, with the server's usage (and,
        from `data`, the answer's other fields: llama.cpp's `timings`)."""
        samples = []
        for text, finish in choices:
            finish = "length" if finish == "length" else ("stop" if finish in (None, "stop", "eos") else finish)
            text = _unquote_choice(text, schema)
            samples.append(GenerateResult(text, parse_reply(schema, text, finish), finish_reason=finish))
        usage, data = usage or {}, data or {}
        timings = {**timings, **dialects.server_timings(self.dialect or GENERIC, data)}
        result = merge_samples(samples)
        result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        result.completion_tokens = int(usage.get("completion_tokens") or 0)
        result.cached_tokens = dialects.cached_tokens(usage, data)
        result.timings = timings
        result.server = self.base_url
        for sample in result.samples:  # usage is the request's: each sample has its prompt, its own count is unknown
            sample.prompt_tokens, sample.cached_tokens, sample.timings = (
                result.prompt_tokens,
                result.cached_tokens,
                timings,
            )
        self._counters["prompt_tokens"] += result.prompt_tokens
        self._counters["completion_tokens"] += result.completion_tokens
        self._counters["cached_tokens"] += result.cached_tokens
        return result

    # ------------------------------------------------------------------ the port

    async def generate(self, prompt: Prompt, **kwargs: Any) -> GenerateResult:
        params, schema = split_request(kwargs)
        params.validate()
        await self._ensure_dialect()
        path, body = self._body(prompt, params, schema, stream=False)
        self._counters["requests"] += 1
        self._counters["running"] += 1
        t0 = time.perf_counter()
        try:
            attempt = 0
            while True:  # bounded: max_retries + 1 readable-answer attempts, each bounded by _send
                response = await self._send(path, body, stream=False)
                try:
                    choices, usage, data = _read_answer(response, params.n)
                    break
                except ValueError as exc:
                    failure = (
                        f"HTTP {response.status_code} but the body is not an OpenAI answer ({exc}); "
                        f"{len(response.content)} bytes, first bytes: {response.content[:200]!r}"
                    )
                if attempt >= self.max_retries:
                    self._counters["errors"] += 1
                    raise HTTPBackendError(
                        f"{self.base_url}{path}: {failure} (gave up after {attempt + 1} attempt(s))",
                        response.status_code,
                    )
                attempt = await self._back_off(attempt, None)
        finally:
            self._counters["running"] -= 1
        usage = await self._count_samples(usage, [text for text, _ in choices], first_counted=True)
        timings = {"total_s": time.perf_counter() - t0}
        return self._result(choices, usage, schema, timings, data)

    async def stream(self, prompt: Prompt, **kwargs: Any) -> AsyncIterator[StreamEvent]:
        """Server-sent events as deltas; the last event carries the result (with the server's usage).

        With a list of choices the deltas would be pieces of a quoted JSON string, so the whole
        (unquoted) choice comes as one delta at the end instead. A stream that breaks before its
        first delta reached the caller is retried; after that, the break is raised. With n > 1 each
        delta's `index` names its sample.
        """
        params, schema = split_request(kwargs)
        params.validate()
        await self._ensure_dialect()
        path, body = self._body(prompt, params, schema, stream=True)
        url = f"{self.base_url}{path}"
        self._counters["requests"] += 1
        self._counters["running"] += 1
        t0 = time.perf_counter()
        hold = isinstance(schema, list | tuple)
        yielded = 0
        attempt = 0
        try:
            while True:  # bounded: max_retries + 1 stream attempts, each bounded by total_timeout
                first_token_s: float | None = None
                parts: list[list[str]] = [[] for _ in range(params.n)]
                finishes: dict[int, str] = {}
                usage: dict[str, Any] | None = None
                last: dict[str, Any] = {}
                response = await self._send(path, body, stream=True)  # connection, status: retried in there
                reader = _SSEReader(response, url, self.total_timeout)
                failure: HTTPBackendError | None = None
                try:
                    async for data in reader.events():
                        deltas, finish_now, usage_now = _read_event(data, url, reader, params.n)
                        finishes.update(finish_now)
                        usage = usage_now or usage
                        if "timings" in data:  # llama.cpp's, on the last event of a choice
                            last = data
                        for index, delta in deltas:
                            if first_token_s is None:
                                first_token_s = time.perf_counter() - t0
                            parts[index].append(delta)
                            if not hold:
                                yielded += 1
                                yield StreamEvent(delta, index=index)
                    if not reader.done and not finishes:
                        what = "the stream ended before the answer was complete (no finish_reason, no [DONE])"
                        raise _StreamFault(reader.error(what))
                except _StreamFault as exc:
                    failure = exc.error
                except httpx.TimeoutException as exc:
                    what = f"the stream stalled for {self.timeout} s ({type(exc).__name__})"
                    failure = reader.error(what, timeout=True)
                except (httpx.TransportError, OSError) as exc:
                    failure = reader.error(f"the stream broke: {type(exc).__name__}: {exc}")
                finally:
                    await response.aclose()
                if failure is None:
                    break
                if yielded or attempt >= self.max_retries:
                    self._counters["errors"] += 1
                    why = (
                        f"; {yielded} delta(s) had already been passed on, so it was not retried"
                        if yielded
                        else f" (gave up after {attempt + 1} attempt(s))"
                    )
                    raise type(failure)(f"{failure}{why}", failure.status) from failure.__cause__
                attempt = await self._back_off(attempt, None)
        finally:
            self._counters["running"] -= 1
        timings = {"total_s": time.perf_counter() - t0}
        if first_token_s is not None:
            timings["first_token_s"] = first_token_s
        if usage is None:  # a server that sends no usage: one token per delta
            usage = {"completion_tokens": sum(len(p) for p in parts)}
        texts = ["".join(p) for p in parts]
        usage = await self._count_samples(usage, texts, first_counted=False)
        result = self._result([(t, finishes.get(i)) for i, t in enumerate(texts)], usage, schema, timings, last)
        if hold:
            for i, text in enumerate(result.texts[:-1]):
                yield StreamEvent(text, index=i)
        yield StreamEvent(result.texts[-1] if hold else "", result, params.n - 1 if hold else 0)

    async def _count_samples(self, usage: dict[str, Any] | None, texts: list[str], first_counted: bool) -> dict | None:
        """Usage with every choice's completion tokens, where the server counts one choice only (llama.cpp
        with n > 1): the uncounted choices are tokenized by the server (`/tokenize`, no generation)."""
        dialect = self.dialect or GENERIC
        if dialect.n != "first_usage" or len(texts) < 2 or dialect.tokenize_path is None:
            return usage
        usage = dict(usage or {})
        todo = texts[1:] if first_counted else texts
        url = self.base_url.removesuffix("/v1") + dialect.tokenize_path
        try:
            counts = await asyncio.gather(
                *(self.client.post(url, json={"content": t, "add_special": False}) for t in todo)
            )
            added = sum(len(r.json()["tokens"]) for r in counts)
        except (httpx.HTTPError, OSError, ValueError, KeyError, TypeError) as exc:
            self._counters["token_count_errors"] = self._counters.get("token_count_errors", 0) + 1
            log.warning("%s: could not count the tokens of %d choice(s): %s", url, len(todo), exc)
            return usage
        usage["completion_tokens"] = (int(usage.get("completion_tokens") or 0) if first_counted else 0) + added
        return usage

    def stats(self) -> dict[str, float]:
        out = {k: float(v) for k, v in self._counters.items()}
        out.update({f"skipped_{k}": float(v) for k, v in self._skipped.items()})
        return out

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# ----------------------------------------------------------------------------- helpers


def _read_answer(
    response: httpx.Response, n: int = 1
) -> tuple[list[tuple[str, str | None]], dict[str, Any] | None, dict[str, Any]]:
    """([(text, finish_reason)] of the n choices in index order, usage, the whole answer) of a non-streamed
    answer; ValueError saying what is missing. With n = 1 the first choice is the answer, whatever its index."""
    try:
        data = json.loads(response.content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices[:n]):
        raise ValueError("no choices")
    if n > 1:
        by_index = {c.get("index"): c for c in choices if isinstance(c, dict)}
        if set(by_index) != set(range(n)):
            raise ValueError(f"{n} choices were asked for, the answer's indices are {list(by_index)}")
        choices = [by_index[i] for i in range(n)]
    out = []
    for choice in choices[:n]:
        if "message" in choice:
            message = choice["message"]
            text = message.get("content") if isinstance(message, dict) else None
        elif "text" in choice:
            text = choice["text"]
        else:
            raise ValueError("the choice has neither message nor text")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"the answer's text is a {type(text).__name__}")
        out.append((text or "", choice.get("finish_reason")))
    usage = data.get("usage")
    return out, usage if isinstance(usage, dict) else None, data


class _StreamFault(Exception):
    def __init__(self, error: HTTPBackendError) -> None:
        super().__init__(str(error))
        self.error = error


class _SSEReader:
    """The JSON payloads of one server-sent event stream, up to `data: [DONE]`.

    Keeps the first bytes received and a count, for messages; every read is bounded by the
    attempt's deadline (`total_timeout`) as well as by httpx's per-read timeout.
    """

    HEAD = 200

    def __init__(self, response: httpx.Response, url: str, total_timeout: float) -> None:
        self.response = response
        self.url = url
        self.deadline = asyncio.get_running_loop().time() + total_timeout
        self.total_timeout = total_timeout
        self.head = b""
        self.received = 0
        self.done = False

    def error(self, what: str, *, timeout: bool = False) -> HTTPBackendError:
        cls = HTTPBackendTimeout if timeout else HTTPBackendError
        return cls(
            f"{self.url}: {what}; {self.received} bytes received, first bytes: {self.head!r}",
            self.response.status_code,
        )

    async def _chunks(self) -> AsyncIterator[bytes]:
        it = self.response.aiter_bytes()
        loop = asyncio.get_running_loop()
        while True:
            left = self.deadline - loop.time()
            try:
                if left <= 0:
                    raise TimeoutError
                chunk = await asyncio.wait_for(it.__anext__(), left)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise _StreamFault(
                    self.error(f"the stream was not finished within total_timeout={self.total_timeout} s", timeout=True)
                ) from None
            if len(self.head) < self.HEAD:
                self.head += chunk[: self.HEAD - len(self.head)]
            self.received += len(chunk)
            yield chunk

    def _payload(self, lines: list[str]) -> dict[str, Any] | None:
        payload = "\n".join(lines)
        if payload.strip() == "[DONE]":
            self.done = True
            return None
        try:
            data = json.loads(payload)
        except ValueError as exc:
            raise _StreamFault(self.error(f"a server-sent event that is not JSON: {payload[:200]!r}")) from exc
        if not isinstance(data, dict):
            raise _StreamFault(self.error(f"a server-sent event that is not a JSON object: {payload[:200]!r}"))
        return data

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        buf = ""
        data_lines: list[str] = []
        async for chunk in self._chunks():
            try:
                buf += decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise _StreamFault(self.error(f"the stream is not UTF-8 text ({exc.reason})")) from exc
            while "\n" in buf:
                line, buf = buf.split("\n", 1)
                line = line.rstrip("\r")
                if line.startswith("data:"):
                    data_lines.append(line[5:].lstrip(" "))
                    continue
                if line.strip() or not data_lines:  # comments (": ping"), event names, ids, a stray blank line
                    continue
                data, data_lines = self._payload(data_lines), []
                if self.done:
                    return
                yield data
        tail = buf.rstrip("\r")
        if tail.startswith("data:"):
            data_lines.append(tail[5:].lstrip(" "))
        if data_lines:  # a last event without its blank line
            data = self._payload(data_lines)
            if data is not None:
                yield data


def _error_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    if isinstance(err, str):
        return err
    if isinstance(data, dict) and "detail" in data:
        return str(data["detail"])
    return response.text[:500]


def _request_error(response: httpx.Response) -> RequestError:
    """A refused request (4xx) as the port's RequestError, keeping the server's param and code."""
    param, code = None, f"http_{response.status_code}"
    try:
        err = response.json().get("error")
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict):
        param = err.get("param")
        code = err.get("code") or code
    return RequestError(f"HTTP {response.status_code}: {_error_message(response)}", param, str(code))


def _unquote_choice(text: str, schema: Schema) -> str:
    """A choice the server wrote as a JSON string becomes the bare choice, as the local engine returns it."""
    if not isinstance(schema, list | tuple) or text in schema:
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def _read_event(
    data: dict[str, Any], url: str, reader: _SSEReader, n: int = 1
) -> tuple[list[tuple[int, str]], dict[int, str], dict | None]:
    """One server-sent event's (choice index, text delta)s, finish reasons by index and usage; a malformed
    one is a `_StreamFault`. With n = 1 every choice is choice 0, whatever index it names."""
    if data.get("error"):
        err = data["error"]
        message = err.get("message", err) if isinstance(err, dict) else err
        raise HTTPBackendError(f"{url}: the stream failed: {message}")
    deltas: list[tuple[int, str]] = []
    finishes: dict[int, str] = {}
    for choice in data.get("choices") or []:
        if not isinstance(choice, dict):
            raise _StreamFault(reader.error(f"a choice that is not an object: {choice!r:.100}"))
        index = choice.get("index", 0) if n > 1 else 0
        if not isinstance(index, int) or not 0 <= index < n:
            raise _StreamFault(reader.error(f"a choice index {index!r:.20} outside 0..{n - 1}"))
        delta = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
        if delta is not None and not isinstance(delta, str):
            raise _StreamFault(reader.error(f"a delta that is not text: {delta!r:.100}"))
        if choice.get("finish_reason"):
            finishes[index] = choice["finish_reason"]
        if delta:
            deltas.append((index, delta))
    return deltas, finishes, data.get("usage") or None
