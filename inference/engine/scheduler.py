"""Continuous batching under a token budget.

Each step: running sequences first (decodes take one token, unfinished prefills take a chunk), then
waiting sequences are admitted while the budget, the sequence limit and the KV blocks allow. A
waiting sequence whose next uncached block is being computed right now by a running prefill waits
one step, then finds that block in the prefix cache instead of computing it again (a town submits
many prompts with the same long prefix at once). When a
running sequence needs a block and none is left, the youngest running sequence is preempted: its
blocks are freed and it goes back to the front of the queue to be recomputed later (its prefix is
usually still in the cache, so recomputing is cheap).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from simulacra.inference.engine.block_manager import BlockManager
from simulacra.inference.engine.sequence import Sequence, Status


@dataclass
class Chunk:
    seq: Sequence
    start: int  # tokens already in the cache
    num_tokens: int  # tokens computed this step

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the sequence's last token, so its logits give the next token."""
        return self.start + self.num_tokens == len(self.seq)


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_batched_tokens: int) -> None:
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0
        self.reused_tokens = 0  # prompt tokens whose K/V came from the prefix cache at admission

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status, seq.finish_reason = Status.FINISHED, reason
        if seq.block_table:
            self.blocks.release(seq)
        if seq in self.running:
            self.running.remove(seq)

    def drop_cancelled(self) -> list[Sequence]:
        dropped = [s for s in [*self.running, *self.waiting] if s.cancelled]
        for seq in dropped:
            if seq in self.waiting:
                self.waiting.remove(seq)
            self.finish(seq, "cancelled")
        return dropped

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.release(seq)
        self.running.remove(seq)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def _blocks_in_flight(self) -> set[int]:
        """Hashes of prompt blocks that running prefills have not finished computing."""
        pending: set[int] = set()
        for seq in self.running:
            if seq.num_computed < len(seq.prompt_ids):
                pending.update(self.blocks.prompt_hashes(seq)[seq.num_computed // self.blocks.block_size :])
        return pending

    def _waits_for(self, seq: Sequence, in_flight: set[int]) -> bool:
        if not in_flight:
            return False
        for h in self.blocks.prompt_hashes(seq):
            if h not in self.blocks.cached:
                return h in in_flight
        return False

    def schedule(self) -> list[Chunk]:
        budget = self.max_batched_tokens
        chunks: list[Chunk] = []
        for seq in list(self.running):
            if seq not in self.running or budget == 0:
                continue  # preempted below, or out of budget this step
            n = min(seq.num_pending, budget)
            while not self.blocks.ensure_room(seq, seq.num_computed + n):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq in self.running:
                chunks.append(Chunk(seq, seq.num_computed, n))
                budget -= n
        in_flight = self._blocks_in_flight() if self.waiting else set()
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self.blocks.can_admit(seq, reserve=len(self.running)) or self._waits_for(seq, in_flight):
                break
            self.waiting.popleft()
            self.blocks.admit(seq)
            self.reused_tokens += seq.num_cached
            in_flight.update(self.blocks.prompt_hashes(seq)[seq.num_computed // self.blocks.block_size :])
            seq.status = Status.RUNNING
            self.running.append(seq)
            n = min(seq.num_pending, budget)
            chunks.append(Chunk(seq, seq.num_computed, n))
            budget -= n
        return chunks
