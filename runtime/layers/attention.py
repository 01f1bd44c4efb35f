"""Paged attention in plain torch ops: the same code runs on CPU, CUDA and an Ascend NPU (every op it
uses has an NPU kernel in torch_npu 2.14.0 — `check_ops --target runtime` proves it).

One engine step is a flat batch of T new tokens from B sequences: prefill chunks and single decode
tokens mixed. Each layer writes the new tokens' K/V into its cache `[num_blocks, block_size,
kv_heads, head_dim]` at their slots, gathers each sequence's keys and values through its block
table, and attends causally (and within the sliding window, where the model has one). On a CPU the
decode groups skip the gather: `cpu_attention`'s kernel reads the cache in place, and in a step of
decodes only the same call writes the new keys and values (the plain path stays the reference, and
what CUDA, an NPU, check_ops' trace and a compiled decode run).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from runtime.layers import cpu_attention


@dataclass
class AttentionGroup:
    """Sequences attended to together, their queries padded to the group's longest. A step has at
    most two: its decode tokens (one query each) and its prefill chunks — padding a decode row to a
    prefill chunk's length would multiply its attention work by that length."""

    query_index: torch.Tensor  # [B, max_q] index into the step's T tokens of each sequence's queries (padding: 0)
    output_rows: torch.Tensor  # [n] row of each of the group's tokens in the padded [B * max_q] layout
    query_positions: torch.Tensor  # [B, max_q] positions of the queries (padding: 0)
    block_tables: torch.Tensor  # [B, max_blocks] KV blocks of each sequence (padding: 0)
    max_context_len: int  # longest context in the group (cached + new tokens)

    @cached_property
    def context_lens(self) -> torch.Tensor:
        """[B] each decode's context (cached + its one new token): the CPU kernel's lengths, made by the
        first layer that asks and reused by the rest."""
        return self.query_positions[:, 0] + 1


@dataclass
class AttentionMetadata:
    """Where the step's tokens sit: built once per step by the model runner, shared by every layer.
    The T tokens are laid out group after group, so the groups' outputs concatenate in token order."""

    positions: torch.Tensor  # [T] absolute position of each new token
    slot_mapping: torch.Tensor  # [T] cache slot (block * block_size + offset) each new token's K/V goes to
    groups: list[AttentionGroup]


def is_decode(group: AttentionGroup) -> bool:
    """A step's decode groups hold one query per sequence (`prepare_step` never mixes decodes with
    prefill chunks, two or more tokens each, in one group)."""
    return group.query_index.shape[1] == 1


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Store the new tokens' keys and values [T, kv_heads, head_dim] at their slots."""
    flat_k = k_cache.view(-1, *k_cache.shape[2:])
    flat_v = v_cache.view(-1, *v_cache.shape[2:])
    flat_k.index_copy_(0, slot_mapping, key)
    flat_v.index_copy_(0, slot_mapping, value)


def gather_context(cache: torch.Tensor, group: AttentionGroup) -> torch.Tensor:
    """[B, kv_heads, max_context_len, head_dim]: each sequence's cached K or V, in position order.
    `index_select` over the flat block list, not `cache[block_tables]`: the same copy, 6-8x faster on
    the CPU (64 sequences x 14 blocks: 0.12 against 0.88 ms per layer and tensor)."""
    b, n = group.block_tables.shape
    size, heads, dim = cache.shape[1:]
    blocks = cache.index_select(0, group.block_tables.flatten())  # [B * max_blocks, block_size, kv_heads, head_dim]
    return blocks.view(b, n * size, heads, dim)[:, :group.max_context_len].transpose(1, 2)


def causal_mask(group: AttentionGroup, sliding_window: int | None, dtype: torch.dtype = torch.bool,
                query_rows: int = 1) -> torch.Tensor:
    """[B, 1, query_rows * max_q, max_context_len]: key j is visible to a query at position p iff j <= p
    (and p - j < window). Keys past a sequence's context are never visible, since p < its context length.

    Built once per step, in the form every layer hands to SDPA: `query_rows` > 1 tiles the rows for
    the query heads that share a KV head (`_attend` stacks them that way), and a floating `dtype` gives
    the additive mask (0 or -inf) that SDPA would otherwise make from a bool one on every call. Both
    are what each layer used to build itself (the bool → additive conversion was 0.4 s of a 19 s
    64-request run), so the attention's results are unchanged."""
    keys = torch.arange(group.max_context_len, device=group.query_positions.device)
    pos = group.query_positions.unsqueeze(-1)
    visible = keys <= pos
    if sliding_window is not None:
        visible = visible & (keys > pos - sliding_window)
    if query_rows > 1:
        visible = visible.repeat(1, query_rows, 1)  # [B, query_rows * max_q, ctx]: the block once per stacked head
    visible = visible.unsqueeze(1)
    if dtype == torch.bool:
        return visible
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(~visible, float("-inf"))


def paged_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, meta: AttentionMetadata, masks: list[torch.Tensor],
                    scale: float, sliding_window: int | None = None) -> torch.Tensor:
    """query [T, heads, head_dim], key/value [T, kv_heads, head_dim] → [T, heads * head_dim]. A decode
    group on the CPU is read in place by `cpu_attention`'s kernel; the rest gathers for SDPA."""
    in_place = cpu_attention.applies(query)
    if in_place and len(meta.groups) == 1 and is_decode(meta.groups[0]):
        # a step of decodes only: its tokens are the group's queries in order, and one kernel call
        # writes their keys and values and attends. The separate write, query gather and lengths
        # cost a SmolLM2 bf16 forward 1.1 ms at batch 16 and 2.1-5.4 ms at 64 (1.02-1.04x); at batch 1
        # the difference was within noise
        return _attend_in_place(query, k_cache, v_cache, meta.groups[0], scale, sliding_window,
                                (key, value, meta.slot_mapping))
    write_kv(k_cache, v_cache, key, value, meta.slot_mapping)
    outs = [_attend_in_place(query.index_select(0, group.query_index[:, 0]), k_cache, v_cache, group, scale,
                             sliding_window)
            if in_place and is_decode(group) else _attend(query, k_cache, v_cache, group, mask, scale)
            for group, mask in zip(meta.groups, masks)]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _attend_in_place(queries: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, group: AttentionGroup,
                     scale: float, sliding_window: int | None,
                     new_kv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = ()) -> torch.Tensor:
    """A decode group's queries [B, heads, head_dim] through the CPU kernel: each attends to the
    `position + 1` keys its block table holds (its own included), within the window → [B, heads *
    head_dim], in the group's token order (a decode group's `output_rows` are 0..B-1). `new_kv`, the
    step's (keys, values, slots), are written by the same call, before it attends."""
    decode_kernel = cpu_attention.kernel()
    assert decode_kernel is not None  # `applies` built it
    out = decode_kernel(queries, k_cache, v_cache, group.block_tables, group.context_lens, scale, sliding_window or 0,
                        *new_kv)
    return out.flatten(1)


def _attend(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, group: AttentionGroup,
            mask: torch.Tensor, scale: float) -> torch.Tensor:
    """One group's attention over its cached keys and values → [its tokens, heads * head_dim]; `mask`
    is `causal_mask(group, window, dtype, heads // kv_heads)`.

    Grouped-query attention is computed with the query heads that share a KV head stacked as extra
    query rows (`[B, kv_heads, group * max_q, head_dim]`), not with SDPA's `enable_gqa`: on CPU that
    flag repeats the keys and runs 5x slower, and torch_npu's SDPA does not take it at all."""
    heads, dim = query.shape[1], query.shape[2]
    kv_heads = k_cache.shape[2]
    per_kv = heads // kv_heads
    keys, values = gather_context(k_cache, group), gather_context(v_cache, group)
    queries = query[group.query_index]  # [B, max_q, heads, head_dim]
    b, max_q = queries.shape[:2]
    queries = queries.view(b, max_q, kv_heads, per_kv, dim).permute(0, 2, 3, 1, 4).reshape(b, kv_heads, per_kv * max_q, dim)
    out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scale)
    out = out.view(b, kv_heads, per_kv, max_q, dim).permute(0, 3, 1, 2, 4).reshape(b * max_q, heads * dim)
    # back to the group's tokens, in their order: integer rows, not a boolean mask, whose
    # data-dependent length would cost a device-to-host sync per layer on an NPU
    return out.index_select(0, group.output_rows)
