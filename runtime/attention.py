"""Paged attention in plain torch ops: the same code runs on CPU, CUDA and an Ascend NPU (every op it
uses has an NPU kernel in torch_npu 2.14.0 — `check_ops --target runtime` proves it).

One engine step is a flat batch of T new tokens from B sequences: prefill chunks and single decode
tokens mixed. Each layer writes the new tokens' K/V into its cache `[num_blocks, block_size,
kv_heads, head_dim]` at their slots, gathers each sequence's keys and values through its block
table, and attends causally (and within the sliding window, where the model has one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AttentionMetadata:
    """Where the step's tokens sit: built once per step by the model runner, shared by every layer."""

    positions: torch.Tensor  # [T] absolute position of each new token
    slot_mapping: torch.Tensor  # [T] cache slot (block * block_size + offset) each new token's K/V goes to
    query_index: torch.Tensor  # [B, max_q] index into the T tokens of each sequence's queries (padding: 0)
    output_rows: torch.Tensor  # [T] row of each new token in the padded [B * max_q] query layout
    query_positions: torch.Tensor  # [B, max_q] positions of the queries (padding: 0)
    block_tables: torch.Tensor  # [B, max_blocks] KV blocks of each sequence (padding: 0)
    max_context_len: int  # longest context of the step (cached + new tokens)


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Store the new tokens' keys and values [T, kv_heads, head_dim] at their slots."""
    flat_k = k_cache.view(-1, *k_cache.shape[2:])
    flat_v = v_cache.view(-1, *v_cache.shape[2:])
    flat_k.index_copy_(0, slot_mapping, key)
    flat_v.index_copy_(0, slot_mapping, value)


def _gather(cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
    """[B, kv_heads, max_context_len, head_dim]: each sequence's cached K or V, in position order."""
    blocks = cache[meta.block_tables]  # [B, max_blocks, block_size, kv_heads, head_dim]
    b, n, size, heads, dim = blocks.shape
    return blocks.reshape(b, n * size, heads, dim)[:, :meta.max_context_len].transpose(1, 2)


def causal_mask(meta: AttentionMetadata, sliding_window: int | None) -> torch.Tensor:
    """[B, 1, max_q, max_context_len] bool: key j is visible to a query at position p iff j <= p (and
    p - j < window). Keys past a sequence's context are never visible, since p < its context length."""
    keys = torch.arange(meta.max_context_len, device=meta.positions.device)
    pos = meta.query_positions.unsqueeze(-1)
    visible = keys <= pos
    if sliding_window is not None:
        visible = visible & (keys > pos - sliding_window)
    return visible.unsqueeze(1)


def paged_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, meta: AttentionMetadata, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """query [T, heads, head_dim], key/value [T, kv_heads, head_dim] → [T, heads * head_dim].

    Grouped-query attention is computed with the query heads that share a KV head stacked as extra
    query rows (`[B, kv_heads, group * max_q, head_dim]`), not with SDPA's `enable_gqa`: on CPU that
    flag repeats the keys and runs 5x slower, and torch_npu's SDPA does not take it at all."""
    write_kv(k_cache, v_cache, key, value, meta.slot_mapping)
    heads, kv_heads, dim = query.shape[1], key.shape[1], query.shape[2]
    group = heads // kv_heads
    keys, values = _gather(k_cache, meta), _gather(v_cache, meta)
    queries = query[meta.query_index]  # [B, max_q, heads, head_dim]
    b, max_q = queries.shape[:2]
    queries = queries.view(b, max_q, kv_heads, group, dim).permute(0, 2, 3, 1, 4).reshape(b, kv_heads, group * max_q, dim)
    if group > 1:
        mask = mask.unsqueeze(1).expand(b, group, 1, max_q, mask.shape[-1]).reshape(b, 1, group * max_q, -1)
    out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scale)
    out = out.view(b, kv_heads, group, max_q, dim).permute(0, 3, 1, 2, 4).reshape(b * max_q, heads * dim)
    # back to the T tokens, in their order: integer rows, not a boolean mask, whose data-dependent
    # length would cost a device-to-host sync per layer on an NPU
    return out.index_select(0, meta.output_rows)
