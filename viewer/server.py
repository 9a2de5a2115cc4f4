"""The viewer's websocket server: a snapshot on connect, a delta per step, answers to requests.

The simulation calls ``publish()`` after each step. It never waits for a viewer: publish builds the
step's delta once and puts it on each client's bounded queue without awaiting. A client's own task
drains its queue onto the socket; when a client falls behind and its queue is full, the queue is
cleared and replaced by one marker, and that client is sent a fresh snapshot (``resync: true``)
when its socket is ready again, instead of a backlog. Deltas queued behind such a marker would be
stale by the time the snapshot goes out, so publish skips those clients (and, when every client is
waiting for a snapshot, skips computing the delta at all).

Deltas are built at publish time (the source moves on) but encoded lazily, once, by the first
client ready to send them; clients share the text.

Sequence numbers are the server's publish count: a snapshot carries the seq of the last step it
includes, and each delta after it is seq + 1, seq + 2, ... A client that sees a gap has a bug.

Requests (``get_step``, ``details``, ``interview``, ``control``, ``live``) are validated
(``simulacra.viewer.protocol``), rate-limited per connection, and answered on the same socket; any
failure becomes an ``error`` frame.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import sys
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .protocol import (
    Control,
    GetDetails,
    GetStep,
    Interview,
    Live,
    ProtocolError,
    TokenBucket,
    error_frame,
    parse_request,
)
from .source import NoMindError, ViewSource
from .web import WILDCARD_HOSTS, WS_PATH, Gate, is_loopback

log = logging.getLogger("simulacra.viewer")

MAX_MESSAGE = 64 * 1024  # client messages are small; bigger ones close the connection with 1009
QUEUE_SIZE = 64  # steps a client may fall behind before it is resynced with a snapshot
INTERVIEWS_IN_FLIGHT = 2  # per connection
INTERVIEW_TIMEOUT = 120.0


class _Message:
    """A queued message shared by every client; encoded once, by the first client ready to send it.

    A client that never reads never gets to it, so a stalled viewer costs the simulation nothing.
    ``seq`` None: not part of the delta stream (e.g. a control note), always sent.
    """

    __slots__ = ("seq", "_obj", "_text")

    def __init__(self, seq: int | None, obj: dict | None = None, text: bytes | None = None) -> None:
        self.seq, self._obj, self._text = seq, obj, text

    def text(self) -> bytes:
        """UTF-8 bytes, sent as a text frame (so the text is not re-encoded for every client)."""
        if self._text is None:
            self._text, self._obj = dumps(self._obj).encode(), None
        return self._text


class _Snapshot:
    """Queue marker: send a snapshot built when the socket is ready (``resync``: after an overflow)."""

    def __init__(self, resync: bool) -> None:
        self.resync = resync


def dumps(obj: Any) -> str:
    """Compact JSON a browser can parse: non-finite floats (which JSON.parse rejects) become null."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(obj), ensure_ascii=False, separators=(",", ":"))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


@dataclass(eq=False)
class _Client:
    ws: ServerConnection
    queue: asyncio.Queue
    bucket: TokenBucket
    snapshot_pending: bool = False
    sent_seq: int = -1
    tasks: set[asyncio.Task] = field(default_factory=set)

    def offer(self, item: Any) -> None:
        """Queue without waiting; a full queue is dropped for a fresh snapshot."""
        if isinstance(item, _Snapshot):
            if self.snapshot_pending:
                return
            self.snapshot_pending = True
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.snapshot_pending = True
            self.queue.put_nowait(_Snapshot(resync=True))


class ViewerServer:
    """Serves the page and ``/ws`` for one ``ViewSource``. Start with ``await start()`` or ``serve_source``.

    A host other than loopback needs a token (one is made if none is given); ``url`` carries it.
    """

    def __init__(
        self,
        source: ViewSource,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        *,
        queue_size: int = QUEUE_SIZE,
        max_size: int = MAX_MESSAGE,
        rate: float = 20.0,
        burst: float = 40.0,
        origins: tuple[str, ...] = (),
    ) -> None:
        self.source = source
        self.host = host
        self.port = port
        self.token_generated = token is None and not is_loopback(host)
        self.token = secrets.token_urlsafe(18) if self.token_generated else token
        self.queue_size = queue_size
        self.max_size = max_size
        self.rate, self.burst = rate, burst
        self.gate = Gate(host=host, token=self.token, extra_origins=tuple(origins))
        self.seq = 0
        self._last_step = source.step
        self._clients: set[_Client] = set()
        self._server: Server | None = None
        self._snap_cache: tuple[int, bytes] | None = None

    async def start(self) -> ViewerServer:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self.gate.process_request,
            max_size=self.max_size,
            compression=None,  # per-client deflate costs the event loop CPU for every client, every step
            logger=log,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.gate.port = self.port
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> ViewerServer:
        return await self.start() if self._server is None else self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _address(self, scheme: str, path: str) -> str:
        host = "127.0.0.1" if self.host in WILDCARD_HOSTS else self.host
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{self.port}{path}" + (f"?token={self.token}" if self.token else "")

    @property
    def url(self) -> str:
        """The page's address (with ``?token=`` when one is needed); wildcard binds show 127.0.0.1."""
        return self._address("http", "/")

    @property
    def ws_url(self) -> str:
        """The websocket endpoint (with the token when one is needed)."""
        return self._address("ws", WS_PATH)

    @property
    def client_count(self) -> int:
        return len(self._clients)

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait (up to ``timeout`` s) until every client's queue is empty, e.g. before closing at a run's end."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while any(not c.queue.empty() for c in self._clients):
            if loop.time() > end:
                return False
            await asyncio.sleep(0.01)
        return True

    def publish(self, step: int | None = None) -> None:
        """Send the source's latest step to every client; synchronous and never blocks (``step`` is informative)."""
        self.seq += 1
        targets = [c for c in self._clients if not c.snapshot_pending]
        if not targets:
            self._last_step = self.source.step
            return
        frame = self.source.delta(self._last_step)
        self._last_step = frame["step"]
        item = _Message(self.seq, {"type": "delta", "seq": self.seq, "frame": frame})
        for c in targets:
            c.offer(item)

    def _snapshot_message(self, resync: bool) -> tuple[int, bytes]:
        """The current snapshot; the frame's JSON is built once per seq however many clients need it."""
        if self._snap_cache is None or self._snap_cache[0] != self.seq:
            self._snap_cache = (self.seq, dumps(self.source.snapshot()).encode())
        control = getattr(self.source, "control_state", None)
        head = {"type": "snapshot", "seq": self.seq, "live": True, "resync": resync, "control": control and control()}
        return self.seq, dumps(head)[:-1].encode() + b',"frame":' + self._snap_cache[1] + b"}"

    async def _handle(self, ws: ServerConnection) -> None:
        client = _Client(ws, asyncio.Queue(self.queue_size), TokenBucket(self.rate, self.burst))
        client.offer(_Snapshot(resync=False))
        self._clients.add(client)
        sender = asyncio.create_task(self._sender(client))
        try:
            async for raw in ws:
                await self._on_message(client, raw)
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            sender.cancel()
            for t in list(client.tasks):
                t.cancel()

    async def _sender(self, client: _Client) -> None:
        try:
            while True:
                item = await client.queue.get()
                if isinstance(item, _Snapshot):
                    client.snapshot_pending = False
                    seq, msg = self._snapshot_message(item.resync)
                else:
                    seq = item.seq
                    if seq is not None and seq <= client.sent_seq:
                        continue  # already in the snapshot sent before it
                    msg = item.text()
                if seq is not None:
                    client.sent_seq = seq
                await client.ws.send(msg, text=True)
        except ConnectionClosed:
            pass
        except Exception:  # a source failing to build a snapshot must not kill the server
            log.exception("viewer: sending to a client failed")
            await client.ws.close(1011, "server error")

    async def _reply(self, client: _Client, message: dict) -> None:
        try:
            await client.ws.send(dumps(message))
        except ConnectionClosed:
            pass

    async def _on_message(self, client: _Client, raw: str | bytes) -> None:
        if not client.bucket.take():
            limit = f"too many messages: at most {self.rate:g}/s (bursts of {self.burst:g}); slow down"
            await self._reply(client, error_frame("rate_limited", limit))
            return
        rid = None
        try:
            req = parse_request(raw)
            rid = req.id
            answer = await self._answer(client, req)
        except ProtocolError as e:
            answer = error_frame(e.code, e.message, e.request_id)
        except Exception as e:
            log.exception("viewer: request failed")
            answer = error_frame("server_error", f"the server failed to answer: {e}", rid)
        if answer is not None:
            await self._reply(client, answer)

    async def _answer(self, client: _Client, req: Any) -> dict | None:
        src = self.source
        if isinstance(req, GetStep):
            try:
                frame = src.snapshot_at(req.step)
            except (KeyError, ValueError, IndexError) as e:
                raise ProtocolError("unknown_step", _msg(e), req.id) from None
            frame = {k: v for k, v in frame.items() if k != "map"}
            return {"type": "frame", "id": req.id, "step": req.step, "frame": frame}
        if isinstance(req, GetDetails):
            try:
                details = src.resident_details(req.name)
            except KeyError as e:
                raise ProtocolError("unknown_resident", _msg(e), req.id) from None
            return {"type": "details", "id": req.id, "name": req.name, "details": details}
        if isinstance(req, Interview):
            if len(client.tasks) >= INTERVIEWS_IN_FLIGHT:
                busy = f"at most {INTERVIEWS_IN_FLIGHT} interviews at a time; wait for an answer"
                raise ProtocolError("busy", busy, req.id)
            task = asyncio.create_task(self._interview(client, req))
            client.tasks.add(task)
            task.add_done_callback(client.tasks.discard)
            return None
        if isinstance(req, Control):
            try:
                state = src.control(req.command, req.value)
            except ValueError as e:
                raise ProtocolError("invalid", _msg(e), req.id) from None
            except NotImplementedError:
                raise ProtocolError("unsupported", "this run cannot be controlled (it is a replay)", req.id) from None
            note = _Message(None, text=dumps({"type": "control", "id": None, "state": state}).encode())
            for c in self._clients:
                if c is not client:
                    c.offer(note)
            return {"type": "control", "id": req.id, "state": state}
        if isinstance(req, Live):
            client.offer(_Snapshot(resync=False))
            return None
        raise ProtocolError("unknown_type", f"unhandled message {req!r}", req.id)

    async def _interview(self, client: _Client, req: Interview) -> None:
        try:
            answer = await asyncio.wait_for(self.source.interview(req.name, req.question), INTERVIEW_TIMEOUT)
            msg = {"type": "interview", "id": req.id, "name": req.name, "question": req.question, "answer": answer}
        except KeyError as e:
            msg = error_frame("unknown_resident", _msg(e), req.id)
        except NoMindError as e:
            msg = error_frame("no_mind", str(e), req.id)
        except TimeoutError:
            msg = error_frame("timeout", f"no answer within {INTERVIEW_TIMEOUT:g} s; try again", req.id)
        except Exception as e:
            log.exception("viewer: interview failed")
            msg = error_frame("source_error", f"the interview failed: {e}", req.id)
        await self._reply(client, msg)


def _msg(e: BaseException) -> str:
    """KeyError's str() is the repr of its argument; show the sentence."""
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


async def serve_source(
    source: ViewSource, host: str = "127.0.0.1", port: int = 0, token: str | None = None
) -> ViewerServer:
    """Start a viewer for ``source``; print ``server.url`` for the user (it carries the token if any)."""
    server = await ViewerServer(source, host, port, token).start()
    if server.token_generated:
        print(f"viewer on {host}:{server.port} needs a token; open {server.url}", file=sys.stderr)
    return server
