"""The client → server messages (pydantic, one discriminated union), error frames and the rate limiter.

Every client message is JSON with a ``type`` and an optional ``id`` that the answer echoes. Anything
that does not parse becomes a ``ProtocolError`` with a stable ``code`` the page can show; nothing a
client sends can raise out of the connection handler.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

MAX_QUESTION = 500
MAX_NAME = 200
RequestId = Annotated[str, Field(max_length=64)] | Annotated[int, Field(ge=-(2**53), le=2**53)] | None


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: RequestId = None


class GetStep(_Request):
    """The full frame of a past step (the map left out: the page has it)."""

    type: Literal["get_step"]
    step: int = Field(ge=0)


class GetDetails(_Request):
    """A resident's persona, plan, memories and relationships."""

    type: Literal["details"]
    name: str = Field(min_length=1, max_length=MAX_NAME)


class Interview(_Request):
    """Ask a resident a question; answered by the source's mind."""

    type: Literal["interview"]
    name: str = Field(min_length=1, max_length=MAX_NAME)
    question: str = Field(min_length=1, max_length=MAX_QUESTION)


class Control(_Request):
    """Pause, resume or set the speed of a live run."""

    type: Literal["control"]
    command: Literal["pause", "resume", "speed"]
    value: float | None = Field(default=None, allow_inf_nan=False)


class Live(_Request):
    """Back to live: the server answers with a fresh snapshot."""

    type: Literal["live"]


Request = Annotated[GetStep | GetDetails | Interview | Control | Live, Field(discriminator="type")]
REQUEST_TYPES = ("get_step", "details", "interview", "control", "live")
_adapter: TypeAdapter[Request] = TypeAdapter(Request)


class ProtocolError(Exception):
    """A client mistake, answered with an ``error`` frame (``code`` is stable, ``message`` says what to fix)."""

    def __init__(self, code: str, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def _request_id(data: Any) -> Any:
    """The request's ``id`` if it is one we can echo safely, else None."""
    rid = data.get("id") if isinstance(data, dict) else None
    if isinstance(rid, bool) or not isinstance(rid, str | int):
        return None
    return rid if isinstance(rid, int) or len(rid) <= 64 else None


def parse_request(raw: str | bytes) -> GetStep | GetDetails | Interview | Control | Live:
    """Parse and validate one client message; raises ``ProtocolError`` for anything else."""
    if isinstance(raw, bytes):
        raise ProtocolError("bad_message", "binary messages are not accepted; send JSON text")
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise ProtocolError("bad_json", f"message is not valid JSON: {e}") from None
    rid = _request_id(data)
    if not isinstance(data, dict):
        raise ProtocolError("bad_message", "a message must be a JSON object with a 'type'", rid)
    kind = data.get("type")
    if kind not in REQUEST_TYPES:
        raise ProtocolError(
            "unknown_type", f"unknown message type {kind!r}; expected one of {', '.join(REQUEST_TYPES)}", rid
        )
    try:
        return _adapter.validate_python(data)
    except ValidationError as e:
        problems = "; ".join(f"{_field(err['loc'])}: {err['msg']}" for err in e.errors())
        raise ProtocolError("invalid", f"bad {kind!r} message: {problems}", rid) from None


def _field(loc: tuple) -> str:
    return ".".join(str(p) for p in loc[1:]) or "message"  # loc[0] is the union's tag


def error_frame(code: str, message: str, request_id: Any = None) -> dict:
    return {"type": "error", "code": code, "message": message, "id": request_id}


class TokenBucket:
    """Per-connection rate limit: ``rate`` messages a second on average, bursts up to ``burst``."""

    def __init__(self, rate: float = 20.0, burst: float = 40.0, clock=time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
