"""Multi-head latent attention (DeepSeek-V2/V3) over a paged latent cache.

Each layer's cache holds, per token, the normed latent `c` (`kv_lora_rank` values) and the rotated
rope key `k_pe` (`qk_rope_head_dim`): 576 values for DeepSeek-V3 instead of 128 heads x (192 + 128)
for full keys and values. The caches are shaped like the dense ones, `[num_blocks, block_size, 1,
width]`, so the block manager, prefix cache, chunked prefill and preemption see no difference.

`kv_b_proj` [heads * (nope + v), kv_lora_rank] turns a latent into each head's key part `k_nope` (its
first `nope` rows per head, W_UK) and value (the last `v`, W_UV). Two ways to attend:

- decompress (prefill chunks, as transformers does every step): `kv_b_proj` over the gathered
  latents, keys `[k_nope, k_pe]`, values, ordinary attention: its work grows with context x heads x
  (nope + v), paid once per chunk;
- absorbed (decode, as vLLM's MLA does): W_UK folded into the query, `q_nope @ W_UK` [heads, rank],
  so scores are `q_latent . c + q_pe . k_pe` against the cache as it is, one shared "KV head" of width
  rank + rope; the output stays a latent per head until W_UV brings it to `v`. Nothing of size
  context x heads is ever built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runtime.layers.attention import (
    AttentionGroup,
    AttentionMetadata,
    gather_context,
    is_decode,
    write_kv,
)


def mla_attention(q_nope: torch.Tensor, q_pe: torch.Tensor, latent: torch.Tensor, k_pe: torch.Tensor,
                  kv_b: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
                  masks: list[torch.Tensor], scale: float, v_dim: int, absorbed: bool = True) -> torch.Tensor:
    """q_nope [T, H, nope], q_pe [T, H, rope], latent [T, rank], k_pe [T, rope] (rotated), kv_b the
    `kv_b_proj` weight → [T, H * v]. Writes the step's latents and rope keys into `cache` first.
    `absorbed` False decodes the decompressed way too (`ModelConfig.mla_decode`)."""
    latent_cache, rope_cache = cache
    write_kv(latent_cache, rope_cache, latent.unsqueeze(1), k_pe.unsqueeze(1), meta.slot_mapping)
    heads, nope = q_nope.shape[1], q_nope.shape[2]
    weight = kv_b.view(heads, nope + v_dim, -1)  # per head: W_UK rows, then W_UV rows
    outs = []
    for group, mask in zip(meta.groups, masks):
        attend = _absorbed if absorbed and is_decode(group) else _decompressed
        outs.append(attend(q_nope, q_pe, latent_cache, rope_cache, weight, group, mask, scale))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _queries(x: torch.Tensor, group: AttentionGroup) -> torch.Tensor:
    """[B, H, max_q, d]: each sequence's queries of the group."""
    return x[group.query_index].transpose(1, 2)


def _rows(out: torch.Tensor, group: AttentionGroup) -> torch.Tensor:
    """[B, H, max_q, d] → the group's tokens [n, H * d], in their order."""
    b, heads, max_q, dim = out.shape
    return out.transpose(1, 2).reshape(b * max_q, heads * dim).index_select(0, group.output_rows)


def _decompressed(q_nope: torch.Tensor, q_pe: torch.Tensor, latent_cache: torch.Tensor, rope_cache: torch.Tensor,
                  weight: torch.Tensor, group: AttentionGroup, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """transformers' way: every context token's keys and values rebuilt from its latent."""
    heads, nope = q_nope.shape[1], q_nope.shape[2]
    latents = gather_context(latent_cache, group)[:, 0]  # [B, ctx, rank]
    rope_keys = gather_context(rope_cache, group)  # [B, 1, ctx, rope]
    kv = F.linear(latents, weight.flatten(0, 1)).unflatten(-1, (heads, -1)).transpose(1, 2)  # [B, H, ctx, nope + v]
    k_nope, values = kv.split((nope, kv.shape[-1] - nope), dim=-1)
    keys = torch.cat((k_nope, rope_keys.expand(-1, heads, -1, -1)), dim=-1)
    queries = torch.cat((_queries(q_nope, group), _queries(q_pe, group)), dim=-1)
    return _rows(F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scale), group)


def _absorbed(q_nope: torch.Tensor, q_pe: torch.Tensor, latent_cache: torch.Tensor, rope_cache: torch.Tensor,
              weight: torch.Tensor, group: AttentionGroup, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """vLLM's way for decode: W_UK absorbed into the query, W_UV applied to the latent output."""
    nope = q_nope.shape[2]
    w_uk, w_uv = weight[:, :nope], weight[:, nope:]  # [H, nope, rank], [H, v, rank]
    rows = group.query_index[:, 0]  # the group's decode tokens only: a step's prefill rows are not absorbed
    q_latent = torch.einsum("bhn,hnr->bhr", q_nope[rows], w_uk)
    queries = torch.cat((q_latent, q_pe[rows]), dim=-1).unsqueeze(1)  # [B, 1, H, rank + rope]
    values = gather_context(latent_cache, group)  # [B, 1, ctx, rank]: the latents are the values too
    keys = torch.cat((values, gather_context(rope_cache, group)), dim=-1)  # [B, 1, ctx, rank + rope]
    out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scale)  # [B, 1, H, rank]
    out = torch.einsum("bhr,hvr->bhv", out[:, 0], w_uv)  # [B, H, v]
    return out.flatten(1).index_select(0, group.output_rows)
