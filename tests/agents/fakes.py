"""Test doubles for minds: a schema-filling script for ScriptedLLM and a bag-of-words embedder."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel

from simulacra.inference.port import prompt_text


def fill(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> Any:
    """The smallest valid value of a JSON schema (first enum value, minimum list length, "text")."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return fill(defs[schema["$ref"].split("/")[-1]], defs)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    t = schema.get("type")
    if t == "object":
        return {k: fill(v, defs) for k, v in schema.get("properties", {}).items()}
    if t == "array":
        return [fill(schema["items"], defs) for _ in range(max(schema.get("minItems", 1), 1))]
    if t == "string":
        return "text"
    if t == "integer":
        return schema.get("minimum", 1)
    if t == "boolean":
        return False
    raise ValueError(f"cannot fill {schema}")


Answer = Callable[[str, type[BaseModel]], Any]


def by_kind(answers: dict[str, Answer] | None = None) -> Callable:
    """A ScriptedLLM script: answers[schema name](prompt text, schema) when given, else the minimal valid value."""
    answers = answers or {}

    def script(prompt, schema, params):
        fn = answers.get(schema.__name__)
        if fn is not None:
            return fn(prompt_text(prompt), schema)
        return fill(schema.model_json_schema())

    return script


class WordEmbedder:
    """Bag of hashed words, L2-normalised: texts sharing words are similar, deterministically and fast."""

    dim = 256

    def __init__(self) -> None:
        self.calls: list[int] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z]+", t.lower()):
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-9)


def who(prompt: str) -> str:
    """The resident a prompt is written for ("You are Ada Quill, …")."""
    return re.search(r"You are ([A-Z][a-z]+ [A-Z][a-z]+)", prompt).group(1)


def talk(prompt: str, schema: Any) -> dict:
    """A Reaction answer: always start a conversation."""
    return {"decision": "talk", "reason": "say hello"}


def saying(speaker: str, line: str, others: str) -> Answer:
    """An Utterance answer: ``speaker`` says ``line``, everyone else ``others``; nobody ends the talk."""

    def says(prompt: str, schema: Any) -> dict:
        return {"says": line if who(prompt) == speaker else others, "end": False}

    return says
