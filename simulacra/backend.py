"""Which LLM a simulation talks to, named so a run can make the same one again on resume.

``Backend`` is what ``run.db`` records (the local engine and its model, a replay of another run's
calls, OpenAI-compatible servers, or a caller's own object); ``make_llm`` makes the LLM it names.
``Simulation`` uses it for its default (the scenario's model on the local engine), ``Run`` to
rebuild a run's backend.

An ``http`` backend records its server URLs, the model name and the *name* of the environment
variable holding the API key, never the key; ``make_llm`` reads the variable and checks every
server answers before the run starts (or resumes). Several URLs make a ``ServerPool`` whose calls
stick to a server per resident (the pool's affinity key), so each resident's prompt prefix stays
cached on one server, and move to the others when a server fails.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from simulacra.inference.backends.recording import ReplayLLM
from simulacra.inference.port import LLM, current_meta
from simulacra.storage import RunError, RunStore


@dataclass
class Backend:
    """Which LLM a run used, enough to make the same one again on resume."""

    kind: str  # "engine" | "replay" | "http" | "custom"
    model: str = ""  # engine: model path ("" = packaged default); http: model name ("" = the server's first)
    source: str = ""  # replay: the run directory whose calls answer
    settings: dict[str, Any] = field(default_factory=dict)  # engine: EngineConfig; http: OpenAIHTTPBackend options
    urls: list[str] = field(default_factory=list)  # http: the servers' URLs
    api_key_env: str | None = None  # http: the environment variable holding the API key (never the key)


def make_llm(backend: Backend, after_step: int = -1, *, probe: bool = True) -> LLM:
    """The LLM ``backend`` names; a replay answers from its source's calls after ``after_step`` (the step a
    resumed or forked run continues from), so a request repeated from an earlier step gets its later answer.
    ``probe``: check remote servers answer now (``False``: a viewer that may never call them)."""
    if backend.kind == "engine":
        from simulacra.inference.engine import Engine, EngineConfig

        return Engine(backend.model or None, EngineConfig(**backend.settings))
    if backend.kind == "replay":
        return ReplayLLM(RunStore(backend.source).calls(after_step))
    if backend.kind == "http":
        return _remote(backend, probe)
    raise RunError(f"this run used a {backend.kind!r} backend; pass the same LLM object to resume it")


def resident_affinity() -> str | None:
    """A call's routing key in a server pool: the resident who makes it (``call_meta``'s tag)."""
    resident = current_meta().get("resident")
    return None if resident is None else str(resident)


def _remote(backend: Backend, probe_first: bool = True) -> LLM:
    """OpenAI-compatible servers: one ``OpenAIHTTPBackend``, or a ``ServerPool`` over several; every server
    is probed first, so a wrong URL or a server that is not up is a clear error, not a failed step."""
    from simulacra.inference.backends.http import HTTPBackendError, OpenAIHTTPBackend
    from simulacra.inference.backends.pool import ServerPool, probe

    if not backend.urls:
        raise RunError("an http backend needs at least one server URL (--llm-url http://HOST:PORT)")
    key = None
    if backend.api_key_env:
        key = os.environ.get(backend.api_key_env)
        if not key:
            raise RunError(
                f"the LLM servers' API key is read from the environment variable {backend.api_key_env}, which is "
                f"not set; `export {backend.api_key_env}=<key>` and run the command again"
            )
    listed: list[str] = []
    for url in backend.urls if probe_first else ():
        try:
            models = probe(url, key, timeout=float(backend.settings.get("timeout", 10.0)))
        except HTTPBackendError as exc:
            raise RunError(
                f"{exc}; start the server (e.g. `simulacra serve --port PORT`) or fix --llm-url, then run again"
            ) from exc
        listed = listed or models
    model = backend.model or (listed[0] if listed else "")
    if not model and probe_first:
        raise RunError(f"{backend.urls[0]} lists no model; name the one to use with --llm-model NAME")
    settings = {"dialect": "auto", **backend.settings}  # each server's dialect is asked of it (dialects.py)
    clients = [OpenAIHTTPBackend(url, model, key, **settings) for url in backend.urls]
    if len(clients) == 1:
        return clients[0]
    return ServerPool(clients, affinity=resident_affinity)
