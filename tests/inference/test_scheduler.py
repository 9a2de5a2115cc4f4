"""Scheduler and block-manager invariants under any mix of admit / finish / cancel / preempt."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from simulacra.inference.engine.block_manager import BlockManager
from simulacra.inference.engine.sampling import make_generator
from simulacra.inference.engine.scheduler import Scheduler
from simulacra.inference.engine.sequence import Sequence, Status
from simulacra.inference.port import SamplingParams

BLOCK = 4


def make_seq(prompt: list[int], max_tokens: int) -> Sequence:
    return Sequence(prompt, SamplingParams(max_tokens=max_tokens), make_generator(0))


def run_step(sched: Scheduler, next_token: int) -> None:
    """What the engine does after a forward, without a model: mark computed, publish, sample, finish."""
    chunks = sched.schedule()
    for c in chunks:
        assert c.seq.num_computed == c.start and c.num_tokens >= 1
        assert len(c.seq.block_table) * BLOCK >= c.start + c.num_tokens  # room for what is written
        c.seq.num_computed += c.num_tokens
        sched.blocks.publish(c.seq)
    assert sum(c.num_tokens for c in chunks) <= sched.max_batched_tokens
    for c in chunks:
        if c.samples:
            c.seq.output_ids.append(next_token)
            if len(c.seq.output_ids) >= c.seq.params.max_tokens:
                sched.finish(c.seq, "length")


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 30), st.integers(1, 12), st.integers(0, 2)),
        st.tuples(st.just("step"), st.integers(0, 5)),
        st.tuples(st.just("cancel"), st.integers(0, 50)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, num_blocks=st.integers(12, 40), budget=st.integers(8, 64))
def test_no_block_leaks_after_any_mix(ops, num_blocks: int, budget: int) -> None:
    blocks = BlockManager(num_blocks, BLOCK)
    sched = Scheduler(blocks, max_num_seqs=6, max_batched_tokens=budget)
    seqs: list[Sequence] = []
    prefixes = [[1, 2, 3, 4, 5, 6, 7, 8], [9, 9, 9, 9], []]  # shared prefixes make cache hits happen
    for op in ops:
        if op[0] == "add":
            _, length, max_tokens, prefix = op
            prompt = (prefixes[prefix] + list(range(100, 100 + length)))[: max(length, 1)]
            seq = make_seq(prompt, max_tokens)
            if blocks.blocks_needed(len(prompt) + max_tokens + 1) <= num_blocks:  # the engine refuses the rest
                seqs.append(seq)
                sched.add(seq)
        elif op[0] == "step":
            run_step(sched, next_token=op[1])
        elif seqs:
            seqs[op[1] % len(seqs)].cancelled = True
            sched.drop_cancelled()
        blocks.check_invariants(sched.running)
        for seq in sched.waiting:
            assert not seq.block_table
    for _ in range(2000):  # drain: everything not cancelled finishes
        if not sched.has_work:
            break
        run_step(sched, next_token=7)
        blocks.check_invariants(sched.running)
    assert not sched.has_work
    assert all(s.status is Status.FINISHED for s in seqs)
    assert all(b.ref_count == 0 for b in blocks.blocks)
    assert blocks.num_available == num_blocks
    for s in seqs:
        if s.finish_reason == "length":
            assert len(s.output_ids) == s.params.max_tokens


def test_prefix_blocks_are_shared_and_published_only_when_computed() -> None:
    blocks = BlockManager(16, BLOCK)
    sched = Scheduler(blocks, max_num_seqs=4, max_batched_tokens=64)
    shared = list(range(1, 13))  # three full blocks
    a, b = make_seq(shared + [50, 51], 2), make_seq(shared + [60], 2)
    sched.add(a)
    sched.add(b)
    chunks = sched.schedule()  # b waits: the blocks it needs are being computed by a, not yet published
    assert [c.seq for c in chunks] == [a] and list(sched.waiting) == [b]
    assert not blocks.cached
    a.num_computed = len(a)
    blocks.publish(a)
    sched.schedule()
    assert b.num_cached == 12 and b.block_table[:3] == a.block_table[:3]
    assert blocks.blocks[a.block_table[0]].ref_count == 2


def test_a_whole_cached_prompt_still_computes_its_last_token() -> None:
    blocks = BlockManager(16, BLOCK)
    sched = Scheduler(blocks, max_num_seqs=4, max_batched_tokens=64)
    a = make_seq(list(range(8)), 1)
    sched.add(a)
    run_step(sched, 0)
    b = make_seq(list(range(8)), 1)
    sched.add(b)
    chunks = sched.schedule()
    assert b.num_cached == 4 and chunks[-1].start == 4 and chunks[-1].num_tokens == 4


def test_preemption_recomputes_and_keeps_generated_tokens() -> None:
    blocks = BlockManager(6, BLOCK)  # 24 slots
    sched = Scheduler(blocks, max_num_seqs=4, max_batched_tokens=64)
    a, b = make_seq(list(range(10, 17)), 12), make_seq(list(range(20, 27)), 12)
    sched.add(a)
    sched.add(b)
    for step in range(40):
        if not sched.has_work:
            break
        run_step(sched, next_token=step)
        blocks.check_invariants(sched.running)
    assert sched.preemptions >= 1
    assert a.finish_reason == b.finish_reason == "length"
    assert len(a.output_ids) == len(b.output_ids) == 12


def test_lru_eviction_of_unreferenced_blocks() -> None:
    blocks = BlockManager(4, BLOCK)
    sched = Scheduler(blocks, max_num_seqs=1, max_batched_tokens=64)
    first = make_seq(list(range(9)), 1)  # 2 full blocks get published
    sched.add(first)
    run_step(sched, 0)
    assert len(blocks.evictable) == 2 and len(blocks.cached) == 2
    other = make_seq(list(range(100, 113)), 1)  # needs all 4 blocks: both cached ones get evicted
    sched.add(other)
    run_step(sched, 0)
    blocks.check_invariants(sched.running)
    again = make_seq(list(range(9)), 1)
    sched.add(again)
    sched.schedule()
    assert again.num_cached == 0  # its prefix was evicted
