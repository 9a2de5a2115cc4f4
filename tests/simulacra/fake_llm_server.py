"""A scripted OpenAI-compatible server in its own process, for remote-run tests.

Run as `python -m tests.simulacra.fake_llm_server`.

It answers town3's calls as `test_run.chatty()` does, from the prompt alone (so every server gives
the same answer), each after `FAKE_LLM_DELAY_S` seconds, and prints its URL on the first line of
stdout; it runs until killed.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from simulacra.inference.backends.fake import ScriptedLLM
from simulacra.inference.backends.server import running
from simulacra.inference.port import prompt_text

from ..agents.fakes import fill
from .test_run import chatty_answers

MODEL = "town-model"


DELAY_S = float(os.environ.get("FAKE_LLM_DELAY_S", "0"))  # each answer takes this long (calls are in flight)


async def script(prompt: Any, schema: Any, params: Any) -> Any:
    """The server sees each schema as JSON schema: answer by its title (the pydantic class name)."""
    if DELAY_S:
        await asyncio.sleep(DELAY_S)
    answer = chatty_answers().get(schema.get("title", "")) if isinstance(schema, dict) else None
    if answer is not None:
        return answer(prompt_text(prompt), schema)
    return fill(schema) if isinstance(schema, dict) else "fine"


def main() -> None:
    with running(ScriptedLLM(script), MODEL, 8192) as srv:
        print(srv.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
