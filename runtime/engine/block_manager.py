"""The KV block pool: which block holds which tokens, who uses it, and which full blocks can be
shared between requests through the prefix cache.

A block is ref-counted: prefix-cache hits share one block between sequences. A full block whose K/V
is computed is registered under a hash chained from the hashes of the blocks before it, so a hit on
block i implies the whole prefix up to i matches. Freed blocks keep their hash and stay findable
until a fresh allocation needs the space; those are evicted least recently freed first, and blocks
that hold nothing reusable go before any of them. The block's tokens are kept beside its hash, so a
hash collision can never hand one request another's K/V.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from runtime.engine.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] = ()


def chain_hash(parent: int | None, token_ids: tuple[int, ...]) -> int:
    """Hash of a full block given its parent's: equal hashes mean equal token prefixes (modulo
    collisions, which the stored tokens rule out)."""
    return hash((parent, token_ids))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks: list[Block] = []
        self.free_plain: deque[int] = deque()  # free blocks holding nothing findable: used first
        self.free_cached: OrderedDict[int, None] = OrderedDict()  # free blocks still in the prefix cache, LRU first
        self.hash_to_block: dict[int, int] = {}
        self.grow(num_blocks)

    # -- size --------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_plain) + len(self.free_cached)

    def usage(self) -> float:
        """Fraction of the pool held by running sequences (free cached blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks if self.blocks else 0.0

    def grow(self, num_blocks: int) -> None:
        """Add `num_blocks` empty blocks (memory_policy="dynamic" grows the pool in chunks)."""
        start = len(self.blocks)
        self.blocks.extend(Block(i) for i in range(start, start + num_blocks))
        self.free_plain.extend(range(start, start + num_blocks))

    # -- allocation ----------------------------------------------------------------------------
    def _take_free(self) -> Block:
        if self.free_plain:
            block = self.blocks[self.free_plain.popleft()]
        else:
            block = self.blocks[self.free_cached.popitem(last=False)[0]]
            if self.hash_to_block.get(block.hash) == block.block_id:
                del self.hash_to_block[block.hash]
            block.hash, block.token_ids = None, ()
        block.ref_count = 1
        return block

    def allocate_prefix(self, seq: Sequence) -> int:
        """Give a sequence that holds no blocks the cached blocks of its longest cached prefix, and
        count them as computed. The last token is always left to compute: its logits are needed.
        Returns the number of tokens served from the cache."""
        assert not seq.block_table and seq.num_computed_tokens == 0, seq
        if not self.enable_prefix_caching or seq.params.prompt_logprobs is not None:
            return 0  # a cached block has K/V but no logits to score the prompt tokens it holds
        bs, parent = self.block_size, None
        for i in range((seq.num_tokens - 1) // bs):
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            h = chain_hash(parent, tokens)
            block_id = self.hash_to_block.get(h)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free_cached[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
            seq.block_hashes.append(h)
            parent = h
        cached = len(seq.block_table) * bs
        seq.num_computed_tokens = cached
        return cached

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = seq.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def ensure_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Blocks for the sequence's next `num_new_tokens` tokens: all of them, or none and False."""
        needed = self.blocks_needed(seq, num_new_tokens)
        if needed > self.num_free_blocks:
            return False
        seq.block_table.extend(self._take_free().block_id for _ in range(needed))
        return True

    def commit(self, seq: Sequence) -> None:
        """Register the sequence's newly completed full blocks in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        for i in range(len(seq.block_hashes), seq.num_computed_tokens // bs):
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            h = chain_hash(seq.block_hashes[-1] if seq.block_hashes else None, tokens)
            seq.block_hashes.append(h)
            if h not in self.hash_to_block:  # else another sequence computed the same block first
                block = self.blocks[seq.block_table[i]]
                block.hash, block.token_ids = h, tokens
                self.hash_to_block[h] = block.block_id

    def free(self, seq: Sequence) -> None:
        """Release a sequence's blocks (finished, aborted or preempted). Its last blocks are the least
        likely to be shared, so they are freed first and evicted first."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                if block.hash is not None:
                    self.free_cached[block_id] = None
                else:
                    self.free_plain.append(block_id)
        seq.block_table.clear()
        seq.block_hashes.clear()
        seq.num_computed_tokens = 0

    # -- invariants ------------------------------------------------------------------------------
    def check_whole(self) -> None:
        """Raise if any block is still held or the free lists and the cache disagree: after every
        request has finished, the pool must be exactly as large and as free as it started."""
        held = [b.block_id for b in self.blocks if b.ref_count != 0]
        if held:
            raise AssertionError(f"blocks still held: {held}")
        free = list(self.free_plain) + list(self.free_cached)
        if sorted(free) != list(range(self.num_blocks)):
            raise AssertionError(f"free lists hold {len(free)} entries for {self.num_blocks} blocks")
        for h, block_id in self.hash_to_block.items():
            if self.blocks[block_id].hash != h or block_id not in self.free_cached:
                raise AssertionError(f"prefix cache entry for block {block_id} is stale")
        if any(b.hash is not None for b in self.blocks if b.block_id in self.free_plain):
            raise AssertionError("a block with a hash sits on the plain free list")
