"""Paged KV blocks with prefix sharing.

A full block is identified by a chained hash of (hash of the previous block, its tokens); the
stored tokens are compared too, so a hash collision can never hand out the wrong K/V. A block is
published in the prefix cache only after its K/V have been computed, so two requests admitted in
the same step never read a block that nobody has written yet. Unreferenced published blocks stay
cached and are evicted least-recently-used when free blocks run out.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from simulacra.inference.engine.sequence import Sequence


@dataclass
class Block:
    id: int
    ref_count: int = 0
    hash: int | None = None  # set once the block is full, computed and published
    tokens: tuple[int, ...] = ()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: list[int] = list(range(num_blocks - 1, -1, -1))  # never-used or evicted, pop() from the end
        self.cached: dict[int, int] = {}  # hash -> block id, for published blocks
        self.evictable: OrderedDict[int, None] = OrderedDict()  # published blocks with ref 0, LRU first

    @property
    def num_available(self) -> int:
        return len(self.free) + len(self.evictable)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    @staticmethod
    def chain_hash(prev: int | None, tokens: tuple[int, ...]) -> int:
        return hash((prev, tokens))

    def _take_free(self) -> Block:
        if self.free:
            block = self.blocks[self.free.pop()]
        else:
            block = self.blocks[self.evictable.popitem(last=False)[0]]
            del self.cached[block.hash]
            block.hash, block.tokens = None, ()
        block.ref_count = 1
        return block

    def prompt_hashes(self, seq: Sequence) -> list[int]:
        """Chain hashes of the prompt's full blocks, in order."""
        hashes, prev = [], None
        for i in range(len(seq.prompt_ids) // self.block_size):
            prev = self.chain_hash(prev, tuple(seq.prompt_ids[i * self.block_size : (i + 1) * self.block_size]))
            hashes.append(prev)
        return hashes

    def _lookup(self, seq: Sequence) -> list[Block]:
        """Published blocks matching the prompt's leading full blocks (never the block holding the
        last prompt token: its logits must be computed)."""
        hits, prev = [], None
        usable = (len(seq.prompt_ids) - 1) // self.block_size
        for i in range(usable):
            tokens = tuple(seq.prompt_ids[i * self.block_size : (i + 1) * self.block_size])
            h = self.chain_hash(prev, tokens)
            block_id = self.cached.get(h)
            if block_id is None or self.blocks[block_id].tokens != tokens:
                break
            hits.append(self.blocks[block_id])
            prev = h
        return hits

    def can_admit(self, seq: Sequence, reserve: int = 0) -> bool:
        """Room for the whole of `seq` plus one token, keeping `reserve` blocks for running decodes."""
        hits = self._lookup(seq)
        new = self.blocks_needed(len(seq) + 1) - len(hits)
        in_evictable = sum(1 for b in hits if b.ref_count == 0)
        return self.num_available - in_evictable - new >= reserve

    def admit(self, seq: Sequence) -> None:
        """Give `seq` its block table: cached prefix blocks first, fresh blocks for the rest."""
        hits = self._lookup(seq)
        for block in hits:
            if block.ref_count == 0:
                del self.evictable[block.id]
            block.ref_count += 1
        seq.block_table = [b.id for b in hits]
        seq.num_cached = seq.num_computed = len(hits) * self.block_size
        for _ in range(self.blocks_needed(len(seq) + 1) - len(hits)):
            seq.block_table.append(self._take_free().id)

    def ensure_room(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow the block table to hold `num_tokens`; False when no block can be had."""
        while len(seq.block_table) * self.block_size < num_tokens:
            if not self.num_available:
                return False
            seq.block_table.append(self._take_free().id)
        return True

    def publish(self, seq: Sequence) -> None:
        """Publish every full, computed block of `seq` not yet in the prefix cache."""
        tokens, prev = seq.token_ids, None
        for i in range(seq.num_computed // self.block_size):
            block = self.blocks[seq.block_table[i]]
            if block.hash is not None:
                prev = block.hash
                continue
            chunk = tuple(tokens[i * self.block_size : (i + 1) * self.block_size])
            h = self.chain_hash(prev, chunk)
            if h not in self.cached:  # an identical block published by another sequence wins
                block.hash, block.tokens = h, chunk
                self.cached[h] = block.id
            prev = h

    def release(self, seq: Sequence) -> None:
        """Drop `seq`'s references; published blocks stay cached until evicted."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                if block.hash is not None:
                    self.evictable[block.id] = None
                else:
                    self.free.append(block.id)
        seq.block_table = []

    def check_invariants(self, live: list[Sequence]) -> None:
        """For tests: reference counts equal the live block tables; every block is in exactly one place."""
        refs = [0] * len(self.blocks)
        for seq in live:
            for block_id in seq.block_table:
                refs[block_id] += 1
        for block in self.blocks:
            assert block.ref_count == refs[block.id], (block, refs[block.id])
        free, evictable = set(self.free), set(self.evictable)
        assert len(free) == len(self.free) and not free & evictable
        in_use = {b.id for b in self.blocks if b.ref_count > 0}
        assert not in_use & (free | evictable)
        assert len(in_use) + len(free) + len(evictable) == len(self.blocks)
        for h, block_id in self.cached.items():
            assert self.blocks[block_id].hash == h
