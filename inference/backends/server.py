"""An OpenAI-compatible HTTP server over any `LLM` behind the port.

Why: so the town's engine can serve other tools (the official `openai` client, notebooks, other
simulators) and so two machines can share one engine through `OpenAIHTTPBackend`. The server knows
only the port: `create_app(llm, ...)` takes the local engine, a replay log or a scripted fake alike;
the CLI decides which.

Endpoints: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` (both with
`stream: true` as server-sent events ending in `data: [DONE]`), `GET /health`, `GET /v1/stats`.
Errors are OpenAI error objects (`{"error": {"message", "type", "param", "code"}}`): 400 for a bad
request (including a `RequestError` from the backend), 404 `model_not_found`, 500 for a backend
failure, after which the server goes on serving. Every string a request carries (message contents,
the prompt, stop strings, the model name, a schema's keys and values) must be valid Unicode: JSON
allows a lone surrogate (`"\\ud800"`, half of a pair), which no tokenizer can encode, so it is a 400
(`invalid_unicode`) naming the field, before anything reaches the backend.

Request fields beyond OpenAI's: `top_k` and `repetition_penalty` (as vLLM: (0, 10], 1 = off),
`guided_choice` (a list of strings, as vLLM: the output is exactly one of them, unquoted),
`no_repeat_ngram_size` (0 = off, up to 32) with `no_repeat_texts` (a list of strings: no N-gram of
them, nor of the output so far, is written). `response_format` `json_object` constrains to any JSON
object, `json_schema` to its schema. `n` (1 to 128) answers with n choices, `index` 0..n-1, usage
counting the prompt once and every choice's completion (streamed: each delta names its choice;
every choice's `finish_reason` comes at the end); `presence_penalty` and `frequency_penalty` are
OpenAI's, in [-2, 2]. Without `max_tokens` a request gets `default_max_tokens`; the default
temperature is OpenAI's 1.0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from simulacra.inference.port import (
    LLM,
    GenerateResult,
    RequestError,
    SamplingParams,
    Schema,
    StreamEvent,
    keyed_params,
)

__all__ = ["APIError", "ServerThread", "create_app", "running", "serve"]

logger = logging.getLogger(__name__)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown OpenAI fields are ignored, as vLLM does

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    no_repeat_texts: list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    logprobs: bool | int | None = None
    guided_choice: list[str] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_Body):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    top_logprobs: int | None = None


class CompletionRequest(_Body):
    prompt: str | list[str]
    response_format: dict[str, Any] | None = None  # not in OpenAI's completions API; vLLM accepts it
    echo: bool = False


class APIError(Exception):
    """An error the server answers with an OpenAI error object."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
    ) -> None:
        message, param = _printable(message), None if param is None else _printable(param)
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def _printable(text: str) -> str:
    """`text` with any lone surrogate spelled as `\\udXXX`: an error body must encode as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _lone_surrogate(text: str) -> int | None:
    """Index of the first lone surrogate in `text` (valid Unicode: None)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _check_unicode(value: Any, path: str) -> None:
    """Raise a 400 naming the first string under `value` (a request body, dumped) that is not valid Unicode."""
    if isinstance(value, str):
        at = _lone_surrogate(value)
        if at is not None:
            raise APIError(
                400,
                f"{path} is not valid Unicode: it holds a lone surrogate (U+{ord(value[at]):04X}) at character "
                f"{at}; a character outside the Basic Multilingual Plane must be sent as a whole surrogate pair "
                "(or as UTF-8), never as half of one",
                path,
                "invalid_unicode",
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and _lone_surrogate(key) is not None:
                _check_unicode(key, f"{path} (a key)" if path else "a key")
            _check_unicode(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_unicode(item, f"{path}[{i}]")


def _from_request_error(exc: RequestError) -> APIError:
    param = "response_format" if exc.param == "schema" else exc.param
    return APIError(400, str(exc), param, exc.code)


def _internal(exc: BaseException) -> APIError:
    return APIError(500, f"the backend failed: {type(exc).__name__}: {exc}", None, "internal_error", "server_error")


def _schema(body: ChatCompletionRequest | CompletionRequest) -> Schema:
    """The port schema from `response_format` / `guided_choice`."""
    fmt = body.response_format
    if fmt is not None and body.guided_choice is not None:
        raise APIError(400, "give either response_format or guided_choice, not both", "response_format")
    if body.guided_choice is not None:
        if not body.guided_choice:
            raise APIError(400, "guided_choice must list at least one string", "guided_choice")
        return list(body.guided_choice)
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise APIError(400, "response_format.json_schema.schema must be a JSON schema object", "response_format")
        return spec["schema"]
    raise APIError(
        400, f"response_format type must be text, json_object or json_schema, not {kind!r}", "response_format"
    )


def _sampling(body: ChatCompletionRequest | CompletionRequest, context_length: int, default_max: int) -> SamplingParams:
    if body.logprobs or getattr(body, "top_logprobs", None):
        raise APIError(400, "logprobs are not supported", "logprobs")
    max_tokens = getattr(body, "max_completion_tokens", None)
    param = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, param = body.max_tokens, "max_tokens"
    if max_tokens is None:
        max_tokens = min(default_max, context_length)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        seed=body.seed,
        stop=stop,
        n=1 if body.n is None else body.n,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        no_repeat_ngram_size=body.no_repeat_ngram_size or 0,
        no_repeat_texts=list(body.no_repeat_texts or []),
    )
    try:
        params.validate(context_length)
    except RequestError as exc:
        raise APIError(400, str(exc), param if exc.param == "max_tokens" else exc.param, "invalid_value") from exc
    return params


def _messages(body: ChatCompletionRequest) -> list[dict[str, str]]:
    if not body.messages:
        raise APIError(400, "messages must hold at least one message", "messages")
    out = []
    for i, msg in enumerate(body.messages):
        content = msg.content
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise APIError(400, "only text content parts are supported", f"messages[{i}].content")
                parts.append(part["text"])
            content = "".join(parts)
        role = "system" if msg.role == "developer" else msg.role
        out.append({"role": role, "content": content or ""})
    return out


def _usage(result: GenerateResult) -> dict[str, Any]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
    }


def _sse(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n".encode()


def create_app(
    llm: LLM,
    model_name: str,
    context_length: int,
    *,
    default_max_tokens: int = 256,
    close_llm_on_shutdown: bool = False,
) -> FastAPI:
    """The OpenAI-compatible app over `llm`, which serves under the name `model_name`.

    `context_length` bounds `max_tokens` (the backend still checks prompt + completion);
    `close_llm_on_shutdown` hands `llm.aclose()` to the app's lifespan, for `serve`.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if close_llm_on_shutdown:
            await llm.aclose()

    app = FastAPI(title="simulacra", lifespan=lifespan)
    app.state.llm = llm
    api = _Service(llm, model_name, context_length, default_max_tokens)
    _add_error_handlers(app, api.counters)
    app.get("/health")(api.health)
    app.get("/v1/stats")(api.stats)
    app.get("/v1/models")(api.models)
    app.get("/v1/models/{name:path}")(api.model)
    app.post("/v1/chat/completions", response_model=None)(api.chat)
    app.post("/v1/completions", response_model=None)(api.completions)
    return app


def _add_error_handlers(app: FastAPI, counters: dict[str, int]) -> None:
    """Every failure leaves as an OpenAI error object, and is counted."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        counters["errors"] += 1
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        counters["errors"] += 1
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            message, param = f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}", None
        else:
            message = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in errors)
            param = ".".join(loc) or None
        return APIError(400, message or "invalid request", param, "invalid_request").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        counters["errors"] += 1
        code = "not_found" if exc.status_code == 404 else None
        return APIError(exc.status_code, str(exc.detail), None, code).response()

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        counters["errors"] += 1
        logger.exception("request to %s failed", request.url.path)
        return _internal(exc).response()


Chunk = Callable[..., dict[str, Any]]  # (delta, finish, start=False, usage=None, index=0) -> one streamed object


def _chat_chunk(rid: str, now: int, model: str) -> Chunk:
    def chunk(
        delta: str | None, finish: str | None, start: bool = False, usage: Any = None, index: int = 0
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model}
        if usage is not None:
            out["choices"], out["usage"] = [], usage
            return out
        d: dict[str, Any] = {"role": "assistant", "content": ""} if start else {}
        if delta is not None:
            d["content"] = delta
        out["choices"] = [{"index": index, "delta": d, "logprobs": None, "finish_reason": finish}]
        return out

    return chunk


def _completion_chunk(rid: str, now: int, model: str) -> Chunk:
    def chunk(
        delta: str | None, finish: str | None, start: bool = False, usage: Any = None, index: int = 0
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"id": rid, "object": "text_completion", "created": now, "model": model}
        if usage is not None:
            out["choices"], out["usage"] = [], usage
            return out
        out["choices"] = [{"index": index, "text": delta or "", "logprobs": None, "finish_reason": finish}]
        return out

    return chunk


class _Service:
    """The routes of one served model: requests become `llm.generate` / `llm.stream` calls."""

    def __init__(self, llm: LLM, model_name: str, context_length: int, default_max_tokens: int) -> None:
        self.llm, self.model_name, self.context_length = llm, model_name, context_length
        self.default_max_tokens = default_max_tokens
        self.counters = {"requests": 0, "errors": 0, "in_flight": 0}
        self.created = int(time.time())

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(
                404,
                f"The model `{name}` does not exist; this server serves `{self.model_name}`.",
                "model",
                "model_not_found",
            )

    @staticmethod
    def _kwargs(params: SamplingParams, schema: Schema) -> dict[str, Any]:
        """The port's arguments: the sampling fields a request sets (n, penalties, bans only when set)."""
        kwargs = keyed_params(params)
        del kwargs["ignore_eos"]
        return {**kwargs, "schema": schema}

    async def run(self, prompt: Any, params: SamplingParams, schema: Schema) -> GenerateResult:
        self.counters["requests"] += 1
        self.counters["in_flight"] += 1
        try:
            return await self.llm.generate(prompt, **self._kwargs(params, schema))
        except RequestError as exc:
            raise _from_request_error(exc) from exc
        except Exception as exc:
            logger.exception("backend failed")
            raise _internal(exc) from exc
        finally:
            self.counters["in_flight"] -= 1

    async def run_stream(
        self, prompt: Any, params: SamplingParams, schema: Schema, chunk: Chunk, include_usage: bool
    ) -> StreamingResponse:
        """Start the stream before answering, so a refused request still gets a 400, not a broken stream."""
        self.counters["requests"] += 1
        events = self.llm.stream(prompt, **self._kwargs(params, schema)).__aiter__()
        try:
            first = await events.__anext__()
        except RequestError as exc:
            raise _from_request_error(exc) from exc
        except StopAsyncIteration as exc:
            raise _internal(RuntimeError("the backend's stream ended without a result")) from exc
        except Exception as exc:
            logger.exception("backend stream failed")
            raise _internal(exc) from exc
        body = self._stream_body(events, first, chunk, include_usage, params.n)
        return StreamingResponse(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _stream_body(
        self, events: AsyncIterator[StreamEvent], first: StreamEvent, chunk: Chunk, include_usage: bool, n: int = 1
    ) -> AsyncIterator[bytes]:
        self.counters["in_flight"] += 1
        try:
            for i in range(n):
                yield _sse(chunk(None, None, start=True, index=i))
            event = first
            while True:
                if event.delta:
                    yield _sse(chunk(event.delta, None, index=event.index))
                if event.result is not None:
                    for i, sample in enumerate(event.result.samples or [event.result]):
                        yield _sse(chunk(None, sample.finish_reason, index=i))
                    if include_usage:
                        yield _sse(chunk(None, None, usage=_usage(event.result)))
                    break
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    yield _sse(chunk(None, "stop"))
                    break
            yield _sse("[DONE]")
        except Exception as exc:  # mid-stream: headers are gone, so the error travels as an event
            self.counters["errors"] += 1
            logger.exception("backend stream failed")
            err = _from_request_error(exc) if isinstance(exc, RequestError) else _internal(exc)
            yield _sse(err.body())
            yield _sse("[DONE]")
        finally:
            self.counters["in_flight"] -= 1
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()  # a client that went away cancels the backend's request

    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.model_name, **self.counters}

    async def stats(self) -> dict[str, float]:
        return self.llm.stats()

    def model_card(self) -> dict[str, Any]:
        return {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "simulacra",
            "max_model_len": self.context_length,
        }

    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model_card()]}

    async def model(self, name: str) -> dict[str, Any]:
        self.check_model(name)
        return self.model_card()

    async def chat(self, body: ChatCompletionRequest) -> dict[str, Any] | StreamingResponse:
        _check_unicode(body.model_dump(), "")
        self.check_model(body.model)
        if body.tools:
            raise APIError(400, "tools are not supported", "tools")
        messages = _messages(body)
        params = _sampling(body, self.context_length, self.default_max_tokens)
        schema = _schema(body)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return await self.run_stream(
                messages, params, schema, _chat_chunk(rid, now, self.model_name), include_usage
            )
        result = await self.run(messages, params, schema)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": sample.text, "refusal": None},
                "logprobs": None,
                "finish_reason": sample.finish_reason,
            }
            for i, sample in enumerate(result.samples or [result])
        ]
        return {
            "id": rid,
            "object": "chat.completion",
            "created": now,
            "model": self.model_name,
            "choices": choices,
            "usage": _usage(result),
        }

    async def completions(self, body: CompletionRequest) -> dict[str, Any] | StreamingResponse:
        _check_unicode(body.model_dump(), "")
        self.check_model(body.model)
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(400, f"only one prompt per request is supported, got {len(prompt)}", "prompt")
            prompt = prompt[0]
        if body.echo:
            raise APIError(400, "echo is not supported", "echo")
        params = _sampling(body, self.context_length, self.default_max_tokens)
        schema = _schema(body)
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            chunk = _completion_chunk(rid, now, self.model_name)
            return await self.run_stream(prompt, params, schema, chunk, include_usage)
        result = await self.run(prompt, params, schema)
        choices = [
            {"index": i, "text": sample.text, "logprobs": None, "finish_reason": sample.finish_reason}
            for i, sample in enumerate(result.samples or [result])
        ]
        return {
            "id": rid,
            "object": "text_completion",
            "created": now,
            "model": self.model_name,
            "choices": choices,
            "usage": _usage(result),
        }


def serve(
    llm: LLM,
    model_name: str,
    context_length: int,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    default_max_tokens: int = 256,
) -> None:
    """Serve `llm` until interrupted (blocking); the LLM is closed on shutdown."""
    import uvicorn

    app = create_app(llm, model_name, context_length, default_max_tokens=default_max_tokens, close_llm_on_shutdown=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


class ServerThread:
    """An app served by uvicorn on a background thread, on a free local port: for tests and notebooks.

    `with ServerThread(create_app(llm, "m", 4096)) as srv: OpenAI(base_url=srv.base_url, ...)`.
    The app runs on the thread's own event loop, so the LLM behind it must not be tied to another loop.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, start_timeout: float = 10.0) -> None:
        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = host, self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True, name=f"uvicorn-{self.port}"
        )
        self._start_timeout = start_timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI client's base URL (`.../v1`)."""
        return f"{self.url}/v1"

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(
    llm: LLM, model_name: str = "test-model", context_length: int = 4096, **kwargs: Any
) -> Iterator[ServerThread]:
    """`create_app` + `ServerThread` in one: `with running(llm) as srv: ...`."""
    with ServerThread(create_app(llm, model_name, context_length, **kwargs)) as srv:
        yield srv
