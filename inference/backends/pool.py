"""Several OpenAI-compatible servers behind one `LLM`: sticky routing by an opaque key, failover.

Why: a town bigger than one server fans its calls out over several; each caller (in a town, a
resident) keeps talking to the same server, so its long shared prompt prefix stays in that server's
prefix cache, and a server that dies costs a retry, not the run.

Routing, per call: `affinity()` (default: the `affinity` tag of `port.call_meta`; the caller decides
what it means) names the call's key. A key keeps the server it was given while that server is up;
a new key goes to the up server with the fewest keys (ties: the first in the list), so the mapping
depends only on the order keys first appear and on which servers failed, not on load or latency.
A call with no key goes to the up server with the fewest calls in flight (ties: the first).

A server whose call fails with `HTTPBackendError` after its own retries (refused, reset, timed out,
5xx, unreadable answers) is marked down: its keys move, in the order they were first seen, to the
up servers with the fewest keys, and the call is retried on the key's new server. A `RequestError`
is the request's fault and is raised as it is. When every server is down, `PoolDownError` names
each with why. A down server stays down for the pool's life (a resumed run probes every server
again). A stream fails over only before its first delta reached the caller.

Outputs equal across servers only if the servers are deterministic (same model, same settings, a
batch-invariant engine: `simulacra serve --deterministic`); otherwise which server answered can change
an answer. A run records every answer with its server (`GenerateResult.server`), so its replay reads
the recorded calls, whichever servers made them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx

from simulacra.inference.backends.http import HTTPBackendError, OpenAIHTTPBackend
from simulacra.inference.port import LLM, GenerateResult, Prompt, StreamEvent, current_meta

__all__ = ["PoolDownError", "ServerPool", "meta_affinity", "probe"]


def meta_affinity() -> str | None:
    """The default affinity: the `affinity` tag the caller set with `port.call_meta(affinity=...)`."""
    key = current_meta().get("affinity")
    return None if key is None else str(key)


class PoolDownError(HTTPBackendError):
    """Every server of the pool is down."""


class ServerPool:
    """An `LLM` over several backends (usually `OpenAIHTTPBackend`s), named by `names` (default: their URLs)."""

    def __init__(
        self,
        backends: Sequence[LLM],
        *,
        names: Sequence[str] | None = None,
        affinity: Callable[[], str | None] = meta_affinity,
    ) -> None:
        if not backends:
            raise ValueError("a ServerPool needs at least one backend")
        self.backends = list(backends)
        self.names = (
            list(names) if names is not None else [str(getattr(b, "base_url", i)) for i, b in enumerate(backends)]
        )
        if len(self.names) != len(self.backends):
            raise ValueError(f"{len(self.backends)} backends but {len(self.names)} names")
        self.model = str(getattr(self.backends[0], "model", ""))
        self.affinity = affinity
        self.assigned: dict[str, int] = {}  # key -> server index, in the order keys were first seen
        self.down: dict[int, str] = {}  # server index -> why it was marked down
        self.running = [0] * len(self.backends)
        self.calls = [0] * len(self.backends)
        self.failovers = 0

    # ------------------------------------------------------------------ routing

    def up(self) -> list[int]:
        return [i for i in range(len(self.backends)) if i not in self.down]

    def keys_of(self, index: int) -> list[str]:
        return [k for k, i in self.assigned.items() if i == index]

    def _least_keys(self) -> int:
        up = self.up()
        if not up:
            raise self._all_down()
        counts = {i: 0 for i in up}
        for i in self.assigned.values():
            if i in counts:
                counts[i] += 1
        return min(up, key=lambda i: (counts[i], i))

    def route(self, key: str | None) -> int:
        """The server a call with `key` goes to now (assigning a new key); `PoolDownError` if none is up."""
        if key is None:
            up = self.up()
            if not up:
                raise self._all_down()
            return min(up, key=lambda i: (self.running[i], i))
        index = self.assigned.get(key)
        if index is not None and index not in self.down:
            return index
        index = self._least_keys()
        self.assigned[key] = index
        return index

    def mark_down(self, index: int, why: str) -> None:
        """Take server `index` out; its keys move (in first-seen order) to the up servers with the fewest keys."""
        if index in self.down:
            return
        self.down[index] = why
        if not self.up():
            return
        for key in self.keys_of(index):
            del self.assigned[key]
            self.assigned[key] = self._least_keys()

    def _all_down(self) -> PoolDownError:
        whys = "; ".join(f"{self.names[i]}: {self.down.get(i, '?')}" for i in range(len(self.backends)))
        return PoolDownError(f"every LLM server is down ({whys})")

    # ------------------------------------------------------------------ the port

    async def generate(self, prompt: Prompt, **kwargs: Any) -> GenerateResult:
        key = self.affinity()
        while True:
            index = self.route(key)
            self.running[index] += 1
            self.calls[index] += 1
            try:
                result = await self.backends[index].generate(prompt, **kwargs)
            except HTTPBackendError as exc:
                self._failed(index, exc)
                continue
            finally:
                self.running[index] -= 1
            if getattr(result, "server", None) is None:
                result.server = self.names[index]
            return result

    async def stream(self, prompt: Prompt, **kwargs: Any) -> AsyncIterator[StreamEvent]:
        key = self.affinity()
        while True:
            index = self.route(key)
            self.running[index] += 1
            self.calls[index] += 1
            passed = 0
            try:
                async for event in self.backends[index].stream(prompt, **kwargs):
                    if event.result is not None and getattr(event.result, "server", None) is None:
                        event.result.server = self.names[index]
                    passed += 1
                    yield event
                return
            except HTTPBackendError as exc:
                if passed:  # the caller has part of an answer: it cannot be retried elsewhere
                    self.mark_down(index, str(exc))
                    raise
                self._failed(index, exc)
            finally:
                self.running[index] -= 1

    def _failed(self, index: int, exc: HTTPBackendError) -> None:
        self.mark_down(index, str(exc))
        self.failovers += 1
        if not self.up():
            raise self._all_down() from exc

    def server_stats(self) -> list[dict[str, Any]]:
        """Per server: its name, whether it is up (and why not), its keys and calls."""
        return [
            {
                "server": self.names[i],
                "up": i not in self.down,
                "why_down": self.down.get(i, ""),
                "keys": len(self.keys_of(i)),
                "calls": self.calls[i],
            }
            for i in range(len(self.backends))
        ]

    def capabilities(self) -> list[dict[str, Any]]:
        """Per server: its name and what its dialect takes or left out (`OpenAIHTTPBackend.capabilities`)."""
        return [
            {"server": name, **backend.capabilities()}
            for name, backend in zip(self.names, self.backends, strict=True)
            if hasattr(backend, "capabilities")
        ]

    def stats(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for backend in self.backends:
            for k, v in backend.stats().items():
                out[k] = out.get(k, 0.0) + float(v)
        out.update(
            servers=float(len(self.backends)), servers_down=float(len(self.down)), failovers=float(self.failovers)
        )
        return out

    async def aclose(self) -> None:
        for backend in self.backends:
            await backend.aclose()


def probe(url: str, api_key: str | None = None, timeout: float = 5.0) -> list[str]:
    """The model ids an OpenAI-compatible server at `url` lists (`GET /v1/models`); `HTTPBackendError`
    naming the URL if it cannot be reached or does not answer like one."""
    base = OpenAIHTTPBackend(url, "").base_url
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{base}/models", headers=headers, timeout=timeout)
    except (httpx.HTTPError, OSError) as exc:
        raise HTTPBackendError(f"cannot reach the LLM server at {url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code in (401, 403):
        raise HTTPBackendError(
            f"the LLM server at {url} refused the API key (HTTP {response.status_code})", response.status_code
        )
    if response.status_code >= 300:
        raise HTTPBackendError(
            f"the LLM server at {url} answered GET {base}/models with HTTP {response.status_code}",
            response.status_code,
        )
    try:
        data = response.json()
        return [str(m["id"]) for m in data.get("data", []) if isinstance(m, dict) and "id" in m]
    except (ValueError, AttributeError, TypeError) as exc:
        raise HTTPBackendError(f"{url} is not an OpenAI-compatible server (GET {base}/models: {exc})") from exc
