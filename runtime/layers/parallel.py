"""The collectives of a tensor-parallel forward pass (Megatron's): an all-reduce after each
row-parallel layer (o, down), a vocabulary-parallel embedding lookup, and an all-gather of the
vocabulary shards of the logits. With one rank each is the identity, so the model code is the same."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from runtime.model.config import ModelConfig


def all_reduce(x: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    if cfg.tp_size == 1:
        return x
    import torch.distributed as dist

    dist.all_reduce(x)
    return x


def embed(table: nn.Embedding, ids: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Each rank looks up the ids in its vocabulary rows (zeros elsewhere); the sum is the lookup."""
    if cfg.tp_size == 1:
        return table(ids)
    rows = cfg.vocab_rows
    local = ids - cfg.tp_rank * rows
    inside = (local >= 0) & (local < rows)
    x = table(local.clamp(0, rows - 1)) * inside.unsqueeze(-1).to(table.weight.dtype)
    return all_reduce(x, cfg)


def gather_vocab(logits: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """[rows, vocab shard] on each rank → [rows, vocab] (the padding cut off)."""
    if cfg.tp_size == 1:
        return logits
    import torch.distributed as dist

    shards = [torch.empty_like(logits) for _ in range(cfg.tp_size)]
    dist.all_gather(shards, logits.contiguous())
    return torch.cat(shards, dim=-1)[:, :cfg.vocab_size]
