"""Which LLM a simulation talks to, named so a run can make the same one again on resume.

``Backend`` is what ``run.db`` records (the local engine and its model, a replay of another run's
calls, or a caller's own object); ``make_llm`` makes the LLM it names. ``Simulation`` uses it for
its default (the scenario's model on the local engine), ``Run`` to rebuild a run's backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from simulacra.inference.backends.recording import ReplayLLM
from simulacra.inference.port import LLM
from simulacra.storage import RunError, RunStore


@dataclass
class Backend:
    """Which LLM a run used, enough to make the same one again on resume."""

    kind: str  # "engine" | "replay" | "custom"
    model: str = ""  # engine: model path ("" = packaged default)
    source: str = ""  # replay: the run directory whose calls answer
    settings: dict[str, Any] = field(default_factory=dict)


def make_llm(backend: Backend, after_step: int = -1) -> LLM:
    """The LLM ``backend`` names; a replay answers from its source's calls after ``after_step`` (the step a
    resumed or forked run continues from), so a request repeated from an earlier step gets its later answer."""
    if backend.kind == "engine":
        from simulacra.inference.engine import Engine, EngineConfig

        return Engine(backend.model or None, EngineConfig(**backend.settings))
    if backend.kind == "replay":
        return ReplayLLM(RunStore(backend.source).calls(after_step))
    raise RunError(f"this run used a {backend.kind!r} backend; pass the same LLM object to resume it")
