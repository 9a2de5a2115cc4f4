"""What makes a conversation line not worth reading, as checks the mind and the measure share.

Four faults, each seen in runs of the packaged 135M model (docs/AGENTS.md, "Conversation lines"):

- echo: the line repeats the partner's line or an earlier line of the same conversation (nearly word
  for word, or a run of ``ECHO_RUN`` words taken from it);
- duplicate: the line is word for word one said earlier in the run, in another conversation;
- loop: a run of words repeats inside the line ("the island of the island of the island of");
- leak: the prompt shows through: a "Name:" speaker prefix or a sentence of the instructions.

``bench/line_quality.py`` counts them on any run; ``Citizen.utter`` uses them to drop bad candidates.
Comparisons are on normalised text (lower case, words only), so punctuation and case do not hide a copy.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from difflib import SequenceMatcher

from . import prompts

FAULTS = ("echo", "duplicate", "loop", "leak")
ECHO_RATIO = 0.8  # difflib ratio of two normalised lines above which one is a copy of the other
ECHO_RUN = 6  # words in a row taken from an earlier line of the conversation

_WORD = re.compile(r"[\w']+")
_GREETING = re.compile(r"^(?:hi|hello|hey|good (?:morning|afternoon|evening))[ ,]+[A-Z][\w'-]*\s*[!.,]\s*", re.I)
_PREFIX = re.compile(r"(?:^|[\s\"'(])([A-Z][\w'-]*(?: [A-Z][\w'-]*){0,2}):\s")


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def normalise(text: str) -> str:
    return " ".join(words(text))


def _runs(ws: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)}


def is_echo(line: str, earlier: Iterable[str]) -> bool:
    """Whether ``line`` copies one of ``earlier`` (the conversation's lines before it)."""
    norm, ws = normalise(line), words(line)
    mine = _runs(ws, ECHO_RUN)
    for other in earlier:
        o = normalise(other)
        if not o or not norm:
            continue
        if norm == o or SequenceMatcher(None, norm, o, autojunk=False).ratio() >= ECHO_RATIO:
            return True
        if mine and mine & _runs(o.split(), ECHO_RUN):
            return True
    return False


def is_loop(line: str) -> bool:
    """Whether a run of words repeats inside the line: a 2- or 3-word run three times, or a 4-word run twice."""
    ws = words(line)
    for n, times in ((2, 3), (3, 3), (4, 2)):
        counts = Counter(tuple(ws[i : i + n]) for i in range(len(ws) - n + 1))
        if counts and max(counts.values()) >= times:
            return True
    return False


def leaks(line: str, names: Iterable[str] = ()) -> bool:
    """Whether the prompt shows through: a speaker prefix ("Kenji Hoshino:", "Kenji:") or an instruction."""
    low = normalise(line)
    if any(normalise(p) in low for p in prompts.UTTERANCE_INSTRUCTIONS):
        return True
    known = {n for name in names for n in (name, name.split()[0])}
    for m in _PREFIX.finditer(line):
        if not known or m.group(1) in known:
            return True
    return False


def faults(line: str, conversation: Sequence[str], said_before: set[str], names: Iterable[str] = ()) -> set[str]:
    """The faults of ``line``: ``conversation`` holds the lines before it in its conversation, ``said_before``
    the normalised lines said earlier in the run elsewhere."""
    out = set()
    if is_echo(line, conversation):
        out.add("echo")
    if normalise(line) in said_before:
        out.add("duplicate")
    if is_loop(line):
        out.add("loop")
    if leaks(line, names):
        out.add("leak")
    return out


def strip_prefixes(line: str, names: Iterable[str]) -> str:
    """The line without leading speaker prefixes ("Elin Lindqvist: Hi Kenji!" -> "Hi Kenji!")."""
    known = sorted({n for name in names for n in (name, name.split()[0])}, key=len, reverse=True)
    text = line.strip()
    changed = True
    while changed:
        changed = False
        for n in known:
            if text.startswith(n + ":"):
                text = text[len(n) + 1 :].lstrip()
                changed = True
    return text


def strip_greeting(line: str) -> str:
    """The line without an opening "Hi Kenji!" (news passed on should not greet the first listener again)."""
    return _GREETING.sub("", line, count=1) or line
