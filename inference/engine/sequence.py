"""One sample's state inside the engine: a request with n > 1 is n sequences over the same prompt."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from simulacra.inference.port import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator
    constraint: Any = None  # structured.Constraint, or None
    penalties: Any = None  # sampling.Penalties, or None (no penalty, no n-gram ban)
    index: int = 0  # which of its request's n samples
    id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    num_computed: int = 0  # tokens whose K/V are in the cache
    num_cached: int = 0  # prompt tokens found in the prefix cache at admission
    block_table: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    cancelled: bool = False
    error: BaseException | None = None
    text: str = ""  # decoded output so far (stop strings cut it)
    arrived: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    mask_seconds: float = 0.0
    preemptions: int = 0

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_pending(self) -> int:
        """Tokens still without K/V: the whole prompt at first, then the last sampled token."""
        return len(self) - self.num_computed

    def reset_for_recompute(self) -> None:
        """Preemption by recompute: drop the cache, keep the tokens generated so far."""
        self.num_computed = 0
        self.num_cached = 0
        self.block_table = []
        self.status = Status.WAITING
        self.preemptions += 1
