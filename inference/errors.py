"""Errors a user can act on: what went wrong, where, and how to fix it."""

from __future__ import annotations

from pathlib import Path


class ModelLoadError(Exception):
    """A model file or folder could not be used; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str, hint: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        self.hint = hint
        message = f"{self.path}: {problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)
