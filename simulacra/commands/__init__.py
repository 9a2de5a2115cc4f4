"""The command line's commands, by what they work on; ``simulacra.cli`` puts them on the one ``app``.

- ``runs``: ``run``, ``resume``, ``replay``, ``measure``, ``interview``, ``export``, ``view``, ``runs``
- ``experiments``: ``fork``, ``compare``, ``plot`` (counterfactuals, docs/EXPERIMENTS.md)
- ``models``: ``models``, ``generate``, ``serve`` (the inference engine on its own)
- ``scenario``: the ``scenario`` group, ``scenario generate`` / ``check``

Here: the one ``console`` they print to, and the one way they report an error. Every command that
can fail on user input prints ``error: <what, where>; <how to fix>`` and exits 2, never a traceback.
Heavy imports (torch, the engine, the run loop) happen inside the commands, so ``--help`` is quick.
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

console = Console()


def error(message: str) -> None:
    """Print ``error: MESSAGE`` (the message as written: square brackets in it are not markup)."""
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)


def fail(message: str) -> NoReturn:
    """Print ``error: MESSAGE`` and exit with code 2."""
    error(message)
    raise typer.Exit(code=2)
