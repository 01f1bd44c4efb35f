"""BlockManager and Scheduler on their own: the bookkeeping the engine's correctness rests on,
checked step by step without a model (the engine tests check the same paths against transformers)."""

from __future__ import annotations

import pytest

from runtime.engine.block_manager import BlockManager
from runtime.engine.scheduler import Scheduler
from runtime.engine.sequence import Sequence, SequenceStatus
from runtime.sampling_params import SamplingParams

BS = 4


def seq(tokens: list[int], max_tokens: int = 4) -> Sequence:
    return Sequence(tokens, SamplingParams(max_tokens=max_tokens), max_tokens)


def run_step(scheduler: Scheduler, next_token: int = 7):
    """What the engine does around the model: schedule, pretend the model ran, append a token to
    every sequence that sampled."""
    batch = scheduler.schedule()
    sampled = [batch.samples(i) for i in range(len(batch.seqs))]
    scheduler.postprocess(batch, [next_token if s else None for s in sampled])
    return batch, sampled


def finish_done(scheduler: Scheduler) -> None:
    for s in list(scheduler.running):
        if s.num_completion_tokens >= s.max_tokens:
            scheduler.finish(s, "length")


def test_prefix_blocks_are_shared_and_the_last_token_is_always_computed():
    bm = BlockManager(16, BS)
    first = seq(list(range(10)))
    assert bm.allocate_prefix(first) == 0 and bm.ensure_slots(first, 10)
    assert first.block_table == [0, 1, 2]
    first.num_computed_tokens = 10
    bm.commit(first)  # blocks 0 and 1 are full: registered; block 2 holds 2 tokens: not
    assert len(bm.hash_to_block) == 2

    second = seq(list(range(8)) + [99, 98])
    assert bm.allocate_prefix(second) == 8
    assert second.block_table == [0, 1] and bm.blocks[0].ref_count == 2

    exact = seq(list(range(8)))  # a prompt that is wholly cached still computes its last block
    assert bm.allocate_prefix(exact) == 4 and exact.block_table == [0]

    other = seq([5] + list(range(1, 10)))  # differs in the first block: nothing shared
    assert bm.allocate_prefix(other) == 0
    for s in (first, second, exact, other):
        bm.free(s)
    bm.check_whole()


def test_freed_cached_blocks_are_found_again_and_evicted_least_recently_freed_first():
    bm = BlockManager(4, BS)
    a = seq(list(range(8)) + [50])
    bm.allocate_prefix(a)
    assert bm.ensure_slots(a, 9)
    a.num_computed_tokens = 9
    bm.commit(a)
    bm.free(a)  # blocks 0, 1 stay findable; block 2 (partial) goes to the plain list
    assert list(bm.free_cached) == [1, 0] and list(bm.free_plain) == [3, 2]

    b = seq(list(range(8)) + [60])
    assert bm.allocate_prefix(b) == 8 and b.block_table == [0, 1]
    bm.free(b)

    c = seq([9] * 17)  # needs 5 blocks: more than the pool
    assert not bm.ensure_slots(c, 17) and c.block_table == []  # all or nothing
    d = seq([9] * 13)  # 4 blocks: both plain ones, then the cached ones, block 1 (freed first) first
    assert bm.ensure_slots(d, 13)
    assert d.block_table == [3, 2, 1, 0] and bm.hash_to_block == {}
    bm.free(d)
    bm.check_whole()


def test_identical_blocks_computed_twice_are_registered_once():
    bm = BlockManager(8, BS)
    a, b = seq([1, 2, 3, 4, 5]), seq([1, 2, 3, 4, 6])
    for s in (a, b):
        bm.allocate_prefix(s)
        bm.ensure_slots(s, 5)
        s.num_computed_tokens = 5
        bm.commit(s)
    assert len(bm.hash_to_block) == 1 and a.block_hashes == b.block_hashes
    bm.free(a)
    bm.free(b)
    bm.check_whole()
    assert len(bm.free_cached) == 1


def test_prefix_caching_off_shares_nothing():
    bm = BlockManager(8, BS, enable_prefix_caching=False)
    a = seq(list(range(9)))
    bm.allocate_prefix(a)
    bm.ensure_slots(a, 9)
    a.num_computed_tokens = 9
    bm.commit(a)
    bm.free(a)
    assert bm.allocate_prefix(seq(list(range(9)))) == 0 and not bm.free_cached


def test_token_budget_chunks_a_long_prompt_and_decodes_go_first():
    sched = Scheduler(BlockManager(64, BS), max_num_seqs=8, max_num_batched_tokens=8)
    short, long = seq([1, 2, 3]), seq(list(range(100, 120)))
    sched.add(short)
    sched.add(long)
    batch, sampled = run_step(sched)
    assert batch.num_new_tokens == [3, 5] and sampled == [True, False]
    batch, _ = run_step(sched)  # short decodes first (1 token), long gets the remaining 7
    assert [s.seq_id for s in batch.seqs] == [short.seq_id, long.seq_id] and batch.num_new_tokens == [1, 7]
    batch, _ = run_step(sched)
    assert batch.num_new_tokens == [1, 7]
    batch, sampled = run_step(sched)  # the long prompt's last chunk samples its first token
    assert batch.num_new_tokens == [1, 1] and sampled == [True, True] and long.num_completion_tokens == 1


def test_max_num_seqs_caps_the_running_set():
    sched = Scheduler(BlockManager(64, BS), max_num_seqs=2, max_num_batched_tokens=100)
    seqs = [seq([i, i + 1]) for i in range(3)]
    for s in seqs:
        sched.add(s)
    batch, _ = run_step(sched)
    assert batch.seqs == seqs[:2] and sched.num_waiting == 1


def test_a_full_pool_preempts_the_newest_and_resumes_it():
    bm = BlockManager(4, BS)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64)
    old, new = seq([1, 2, 3, 4, 5, 6, 7, 8], max_tokens=6), seq([9] * 8, max_tokens=6)
    sched.add(old)
    sched.add(new)
    run_step(sched)  # both prefilled: 2 blocks each, the pool is full
    assert bm.num_free_blocks == 0
    batch, _ = run_step(sched)  # old's 9th token needs a third block: new is preempted
    assert batch.seqs == [old] and sched.num_preemptions == 1 and new.num_preemptions == 1
    assert new.status is SequenceStatus.WAITING and new.block_table == [] and new.num_computed_tokens == 0
    assert sched.waiting[0] is new
    steps = 0
    while sched.has_unfinished():
        run_step(sched)
        finish_done(sched)
        steps += 1
        assert steps < 50
    assert old.num_completion_tokens == 6 and new.num_completion_tokens == 6
    bm.check_whole()


def test_a_sequence_that_preempts_itself_waits_instead_of_failing():
    bm = BlockManager(3, BS)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64)
    lone = seq([1] * 8, max_tokens=4)  # 12 tokens: exactly the pool
    sched.add(lone)
    while sched.has_unfinished():
        run_step(sched)
        finish_done(sched)
    assert lone.num_completion_tokens == 4 and sched.num_preemptions == 0
    bm.check_whole()


def test_dynamic_growth_is_tried_before_preemption():
    bm = BlockManager(2, BS)
    grown = []

    def grow() -> bool:
        if bm.num_blocks >= 6:
            return False
        bm.grow(2)
        grown.append(bm.num_blocks)
        return True

    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64, grow=grow, max_blocks=6)
    a, b = seq([1] * 7, max_tokens=4), seq([2] * 7, max_tokens=4)
    sched.add(a)
    sched.add(b)
    while sched.has_unfinished():
        run_step(sched)
        finish_done(sched)
    assert grown == [4, 6] and sched.num_preemptions == 0
    bm.check_whole()


def test_a_request_the_whole_pool_cannot_hold_is_refused():
    sched = Scheduler(BlockManager(4, BS), max_num_seqs=4, max_num_batched_tokens=64)
    with pytest.raises(ValueError, match=r"a request of 10 prompt tokens and up to 8 new tokens needs 5 KV blocks; "
                                         r"the pool has 4 \(raise kv_cache_memory or lower max_tokens\)"):
        sched.add(seq([1] * 10, max_tokens=8))
    assert not sched.has_unfinished()


def test_abort_frees_blocks_wherever_the_request_is():
    bm = BlockManager(8, BS)
    sched = Scheduler(bm, max_num_seqs=1, max_num_batched_tokens=64)
    running, waiting = seq([1, 2, 3]), seq([4, 5, 6])
    sched.add(running)
    sched.add(waiting)
    run_step(sched)
    assert sched.abort(running.seq_id) is running and running.finish_reason == "abort"
    assert sched.abort(waiting.seq_id) is waiting and sched.abort(12345) is None
    assert not sched.has_unfinished()
    bm.check_whole()


def test_while_a_request_decodes_prefill_is_capped_and_gets_the_whole_budget_when_none_does():
    sched = Scheduler(BlockManager(64, BS), max_num_seqs=8, max_num_batched_tokens=32, prefill_tokens_with_decodes=6)
    short = seq([1, 2, 3], max_tokens=3)
    sched.add(short)
    batch, _ = run_step(sched)
    assert batch.num_new_tokens == [3]  # nothing decodes yet: the whole budget
    first, second = seq(list(range(100, 120))), seq(list(range(200, 204)))
    sched.add(first)
    sched.add(second)
    batch, _ = run_step(sched)  # short decodes; the two prompts share 6 tokens, arrival order
    assert batch.seqs == [short, first] and batch.num_new_tokens == [1, 6]
    batch, _ = run_step(sched)
    assert batch.seqs == [short, first] and batch.num_new_tokens == [1, 6]
    finish_done(sched)  # short has its 3 tokens: nothing decodes
    batch, sampled = run_step(sched)
    assert batch.seqs == [first, second] and batch.num_new_tokens == [8, 4] and sampled == [True, True]


def test_a_prefill_cap_below_one_token_is_refused():
    with pytest.raises(ValueError, match="prefill_tokens_with_decodes must be at least 1, got 0"):
        Scheduler(BlockManager(8, BS), max_num_seqs=1, max_num_batched_tokens=8, prefill_tokens_with_decodes=0)
