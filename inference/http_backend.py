"""The port over any OpenAI-compatible server: vLLM, SGLang, llama.cpp's server, Ollama, or ours.

Why: one machine's engine stops being enough at some town size; pointing the run at a remote
server is how a user scales out, and the residents' code does not change.

Wire mapping: chat messages go to `/v1/chat/completions`, a plain string to `/v1/completions`.
A schema becomes `response_format={"type": "json_schema", "json_schema": {"name", "schema",
"strict": true}}`, which all four servers accept. A list of choices is sent the same way, as the
schema `{"type": "string", "enum": [...]}` (portable, unlike vLLM's `guided_choice`); the server
then writes a JSON string (`"cafe"`), which is unquoted here, so `text` and `parsed` are the bare
choice as with the local engine. `top_k` (when > 0) goes as a top-level body field, as vLLM,
SGLang and llama.cpp read it; `seed` and `stop` are OpenAI fields.

Connection errors, timeouts, 429 and 5xx are retried with exponential backoff (honouring
`Retry-After`); any other 4xx raises `RequestError` with the server's message, at once.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx

from simulacra.inference.port import (
    GenerateResult,
    Prompt,
    RequestError,
    SamplingParams,
    Schema,
    StreamEvent,
    parse_output,
)
from simulacra.inference.recording import schema_json, schema_name, split_request

__all__ = ["HTTPBackendError", "HTTPBackendTimeout", "OpenAIHTTPBackend"]

_RETRY_STATUS = {408, 409, 425, 429}  # and every 5xx


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
    (with jitter, capped at `max_backoff`). `transport` replaces the network (httpx.MockTransport in
    tests); `extra_body` is merged into every request body (server-specific fields).
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
        transport: httpx.AsyncBaseTransport | None = None,
        extra_body: dict[str, Any] | None = None,
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
        self.extra_body = dict(extra_body or {})
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
        if params.top_k:
            body["top_k"] = params.top_k
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if schema is not None:
            name = schema_name(schema) or "output"
            name = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:64]
            spec = schema_json(schema)
            if isinstance(schema, type):  # a pydantic model: no invented keys, as the local engine compiles it
                spec = _forbid_extra_keys(spec)
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": name, "schema": spec, "strict": True},
            }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update(self.extra_body)
        return path, body

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
                response = await self.client.send(request, stream=stream)
            except httpx.TimeoutException as exc:
                failure, timed_out = f"timed out after {self.timeout} s ({type(exc).__name__})", True
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
            await asyncio.sleep(self._delay(attempt, response))
            attempt += 1
            self._counters["retries"] += 1

    def _result(
        self, text: str, finish: str | None, usage: dict[str, Any] | None, schema: Schema, timings: dict[str, float]
    ) -> GenerateResult:
        finish = "length" if finish == "length" else ("stop" if finish in (None, "stop", "eos") else finish)
        text = _unquote_choice(text, schema)
        parsed = parse_output(schema, text) if schema is not None and finish == "stop" else None
        usage = usage or {}
        details = usage.get("prompt_tokens_details") or {}
        result = GenerateResult(
            text=text,
            parsed=parsed,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
            finish_reason=finish,
            timings=timings,
        )
        self._counters["prompt_tokens"] += result.prompt_tokens
        self._counters["completion_tokens"] += result.completion_tokens
        self._counters["cached_tokens"] += result.cached_tokens
        return result

    # ------------------------------------------------------------------ the port

    async def generate(self, prompt: Prompt, **kwargs: Any) -> GenerateResult:
        params, schema = split_request(kwargs)
        params.validate()
        path, body = self._body(prompt, params, schema, stream=False)
        self._counters["requests"] += 1
        self._counters["running"] += 1
        t0 = time.perf_counter()
        try:
            response = await self._send(path, body, stream=False)
        finally:
            self._counters["running"] -= 1
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] if "message" in choice else choice["text"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise HTTPBackendError(f"{self.base_url}{path}: unreadable answer: {response.text[:200]!r}") from exc
        timings = {"total_s": time.perf_counter() - t0}
        return self._result(text or "", choice.get("finish_reason"), data.get("usage"), schema, timings)

    async def stream(self, prompt: Prompt, **kwargs: Any) -> AsyncIterator[StreamEvent]:
        """Server-sent events as deltas; the last event carries the result (with the server's usage).

        With a list of choices the deltas would be pieces of a quoted JSON string, so the whole
        (unquoted) choice comes as one delta at the end instead.
        """
        params, schema = split_request(kwargs)
        params.validate()
        path, body = self._body(prompt, params, schema, stream=True)
        self._counters["requests"] += 1
        self._counters["running"] += 1
        t0 = time.perf_counter()
        first_token_s: float | None = None
        parts: list[str] = []
        finish: str | None = None
        usage: dict[str, Any] | None = None
        hold = isinstance(schema, list | tuple)
        try:
            response = await self._send(path, body, stream=True)
            try:
                async for data in _sse_events(response):
                    if data.get("error"):
                        err = data["error"]
                        message = err.get("message", err) if isinstance(err, dict) else err
                        raise HTTPBackendError(f"{self.base_url}{path}: the stream failed: {message}")
                    if data.get("usage"):
                        usage = data["usage"]
                    for choice in data.get("choices") or []:
                        delta = choice.get("delta", {}).get("content") if "delta" in choice else choice.get("text")
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                        if delta:
                            if first_token_s is None:
                                first_token_s = time.perf_counter() - t0
                            parts.append(delta)
                            if not hold:
                                yield StreamEvent(delta)
            except httpx.TimeoutException as exc:
                raise HTTPBackendTimeout(f"{self.base_url}{path}: the stream stalled for {self.timeout} s") from exc
            except (httpx.TransportError, OSError) as exc:
                raise HTTPBackendError(f"{self.base_url}{path}: the stream broke: {exc}") from exc
            finally:
                await response.aclose()
        finally:
            self._counters["running"] -= 1
        timings = {"total_s": time.perf_counter() - t0}
        if first_token_s is not None:
            timings["first_token_s"] = first_token_s
        if usage is None:
            usage = {"completion_tokens": len(parts)}  # a server that sends no usage: one token per delta
        result = self._result("".join(parts), finish, usage, schema, timings)
        yield StreamEvent(result.text if hold else "", result)

    def stats(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._counters.items()}

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# ----------------------------------------------------------------------------- helpers


async def _sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON payloads of a server-sent event stream, up to `data: [DONE]`."""
    data_lines: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data_lines.append(line[5:].lstrip(" "))
            continue
        if line.strip() or not data_lines:  # comments (": ping"), event names, ids, or a stray blank line
            continue
        payload = "\n".join(data_lines)
        data_lines = []
        if payload.strip() == "[DONE]":
            return
        try:
            yield json.loads(payload)
        except ValueError as exc:
            raise HTTPBackendError(f"unreadable server-sent event: {payload[:200]!r}") from exc
    if data_lines and "\n".join(data_lines).strip() != "[DONE]":
        yield json.loads("\n".join(data_lines))


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


def _forbid_extra_keys(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy where each object schema with properties and no `additionalProperties` gets `false`.

    Mirrors what the engine does to pydantic schemas (pydantic ignores unknown keys anyway), and is
    what OpenAI's strict mode requires.
    """
    if isinstance(schema, dict):
        out = {k: _forbid_extra_keys(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_forbid_extra_keys(v) for v in schema]
    return schema


def _unquote_choice(text: str, schema: Schema) -> str:
    """A choice the server wrote as a JSON string becomes the bare choice, as the local engine returns it."""
    if not isinstance(schema, list | tuple) or text in schema:
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text
