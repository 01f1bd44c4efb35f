"""Continuous batching: each step picks which sequences run and how many of their tokens, under a
token budget and a cap on running sequences.

Running sequences go first — decodes (a token each) before the next chunk of a prefill that did not
fit in one step, which is always the newest: nothing is admitted behind it — then waiting ones in
arrival order, their prompts chunked to what is left of the budget. While any running sequence
decodes, a step's prompt tokens are capped further (`prefill_tokens_with_decodes`): a decode step
then carries at most that much prefill, so arrivals do not stall the tokens of running requests (on
the 64-request mixed load TPOT p99 fell from ~14x its p50 to 2-2.5x at the same throughput); when
nothing decodes, prompts are prefilled at the full budget.
When the pool has no block for a running sequence, the pool grows (memory_policy="dynamic") or the
most recently admitted sequence is preempted: its blocks are freed and it goes back to the front of
the queue, to be recomputed later. A full pool therefore slows requests down and never fails one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from runtime.engine.block_manager import BlockManager
from runtime.engine.sequence import Sequence, SequenceStatus

#: A step's prefill tokens while any running request decodes: on 64 mixed requests the whole
#: 2,048-token budget made TPOT p99 ~15-17x its p50, 512 ~4-5x, 256 2.6-3.0x once decode steps got
#: faster (the CPU decode-attention kernel), 192 2.2-2.5x within noise of 256's throughput, 128
#: 1.4-1.8x at a few % less
#: (benchmarks/bench_prefill_cap.py; benchmarks/README.md, "Prefill beside decodes").
DEFAULT_PREFILL_WITH_DECODES = 192


@dataclass
class ScheduledBatch:
    """One step's work: each sequence and how many of its uncomputed tokens run now."""

    seqs: list[Sequence]
    num_new_tokens: list[int]

    @property
    def is_empty(self) -> bool:
        return not self.seqs

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def samples(self, i: int) -> bool:
        """True when sequence i's tokens run to its end this step, so the step yields its next token
        (a prefill chunk short of the end only fills the cache)."""
        seq = self.seqs[i]
        return seq.num_computed_tokens + self.num_new_tokens[i] == seq.num_tokens


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 grow: Callable[[], bool] | None = None, max_blocks: int | None = None,
                 prefill_tokens_with_decodes: int | None = None) -> None:
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be at least 1, got {max_num_seqs}")
        if max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be at least 1, got {max_num_batched_tokens}")
        self.bm = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        if prefill_tokens_with_decodes is not None and prefill_tokens_with_decodes < 1:
            raise ValueError(f"prefill_tokens_with_decodes must be at least 1, got {prefill_tokens_with_decodes}")
        self.prefill_tokens_with_decodes = prefill_tokens_with_decodes or max_num_batched_tokens
        self.grow = grow or (lambda: False)
        self.max_blocks = max_blocks if max_blocks is not None else block_manager.num_blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.prefix_queries = 0  # tokens of admitted sequences looked up in the prefix cache
        self.prefix_hits = 0  # of those, tokens served from it

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        """Queue a sequence; refuse one the whole pool could not hold even alone."""
        needed = -(-(seq.num_tokens + seq.max_tokens) // self.bm.block_size)
        if needed > self.max_blocks:
            raise ValueError(f"a request of {seq.num_tokens} prompt tokens and up to {seq.max_tokens} new tokens "
                             f"needs {needed} KV blocks; the pool has {self.max_blocks} "
                             f"(raise kv_cache_memory or lower max_tokens)")
        self.waiting.append(seq)

    def _find(self, seq_id: int) -> Sequence | None:
        return next((s for s in (*self.running, *self.waiting) if s.seq_id == seq_id), None)

    def abort(self, seq_id: int) -> Sequence | None:
        """Drop a request wherever it is and free its blocks; None if it is not here."""
        seq = self._find(seq_id)
        if seq is not None:
            self.finish(seq, "abort")
        return seq

    def finish(self, seq: Sequence, reason: str) -> None:
        if seq in self.running:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason
        self.bm.free(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.bm.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def _room(self, seq: Sequence, n: int) -> bool:
        """Slots for n tokens of seq, growing the pool while it can."""
        while not self.bm.ensure_slots(seq, n):
            if not self.grow():
                return False
        return True

    def schedule(self) -> ScheduledBatch:
        seqs: list[Sequence] = []
        counts: list[int] = []
        budget = self.max_num_batched_tokens
        decoding = any(seq.num_tokens - seq.num_computed_tokens == 1 for seq in self.running)
        prefill_budget = min(budget, self.prefill_tokens_with_decodes) if decoding else budget
        preempted = False
        for seq in list(self.running):  # decodes first: a prefill still in chunks is always the newest
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:  # preempted earlier in this loop
                continue
            n = min(seq.num_tokens - seq.num_computed_tokens, budget, prefill_budget)
            while not self._room(seq, n):
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                seqs.append(seq)
                counts.append(n)
                budget -= n
                if n > 1:
                    prefill_budget -= n
        while self.waiting and not preempted and min(budget, prefill_budget) > 0 \
                and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            cached = self.bm.allocate_prefix(seq)
            n = min(seq.num_tokens - seq.num_computed_tokens, budget, prefill_budget)
            if not self._room(seq, n):
                self.bm.free(seq)  # the hit blocks go back; the sequence waits for room
                break
            self.waiting.popleft()
            self.prefix_queries += seq.num_tokens
            self.prefix_hits += cached
            if seq.num_preemptions == 0:
                seq.num_cached_tokens = cached
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            seqs.append(seq)
            counts.append(n)
            budget -= n
            prefill_budget -= n
        return ScheduledBatch(seqs, counts)

    def postprocess(self, batch: ScheduledBatch, tokens: list[int | None]) -> None:
        """After the model ran: the scheduled tokens are computed, full blocks join the prefix cache,
        and each sampling sequence gets its new token (None for prefill chunks short of the end)."""
        for seq, n, token in zip(batch.seqs, batch.num_new_tokens, tokens):
            seq.num_computed_tokens += n
            self.bm.commit(seq)
            if token is not None:
                seq.append_token(token)
