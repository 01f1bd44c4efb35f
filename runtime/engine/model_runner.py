"""Owns the model and its KV cache on the device, and runs one scheduled step: builds the flat token
batch, slot mapping and block tables from the scheduler's sequences, runs the model, and returns the
logits of the rows that sample (and of the prompt rows whose request asked for prompt logprobs).

How the model is built (`build_model`), how a step's inputs are laid out (`prepare_step`) and how the
KV cache is shaped (`kv_caches`) are functions of their own: check_ops (`opcheck.runtime_trace`)
calls them to trace, on meta, exactly the model and the steps this runner runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from runtime.engine.compiled_decode import CompiledDecode
from runtime.engine.scheduler import ScheduledBatch
from runtime.engine.sequence import Sequence
from runtime.layers import cpu_attention
from runtime.layers.attention import AttentionGroup, AttentionMetadata
from runtime.layers.fused_ops import PLAIN, Kernels
from runtime.model.config import ModelConfig
from runtime.model.decoder import CausalLM, inverse_frequencies
from runtime.model.loader import Checkpoint, load_weights

log = logging.getLogger("runtime")


@dataclass
class PromptRows:
    """Batch entry `index` computes prompt positions `first_position`.. on flat rows `first_row`..; each
    row's logits score the prompt token after it."""

    index: int
    first_row: int
    first_position: int
    count: int


@dataclass
class StepLogits:
    """fp32 logits of one step: `sample` [sampling sequences, vocab] in batch order, and `prompt`
    {batch index: (first position, [rows, vocab])} for requests with prompt logprobs."""

    sample: torch.Tensor
    prompt: dict[int, tuple[int, torch.Tensor]] = field(default_factory=dict)


#: A prepared step: (input ids [T], attention metadata, row of each sampling sequence's last token in
#: batch order, the prompt rows to score).
PreparedStep = tuple[torch.Tensor, AttentionMetadata, list[int], list[PromptRows]]


def build_model(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype, kernels: Kernels = PLAIN) -> CausalLM:
    """The checkpoint's `CausalLM` in `dtype`, its parameters allocated on `device` but not loaded
    (`load_weights` fills every one; on meta, check_ops traces it as it is). Built on meta first, so
    no weight is initialised only to be overwritten; RoPE keeps its fp32 table through `.to(dtype)`."""
    inv_freq, scaling = inverse_frequencies(ckpt.config, ckpt.raw_config)
    with torch.device("meta"):
        model = CausalLM(ckpt.config, inv_freq, scaling, kernels)
    return model.to_empty(device=device).to(dtype)


def kv_caches(cfg: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype,
              device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's (keys, values) cache of `num_blocks` blocks: [num_blocks, block_size, kv_heads, head_dim];
    for multi-head latent attention its (latents, rope keys): [num_blocks, block_size, 1, kv_lora_rank]
    and [..., 1, qk_rope_head_dim] (`runtime.layers.mla`)."""
    if cfg.mla is not None:
        widths = ((1, cfg.mla.kv_lora_rank), (1, cfg.mla.qk_rope_head_dim))
    else:
        widths = ((cfg.num_kv_heads, cfg.head_dim),) * 2
    return [tuple(torch.zeros((num_blocks, block_size, *w), dtype=dtype, device=device) for w in widths)
            for _ in range(cfg.num_layers)]


def uniform_batch(num_seqs: int, new_tokens: int, cached: int, block_size: int) -> ScheduledBatch:
    """A step of `num_seqs` sequences, each running `new_tokens` new tokens after `cached` cached ones
    (token id 0) on blocks of its own: a prefill when `cached` is 0, a decode when `new_tokens` is 1.
    check_ops traces one of each."""
    from runtime.sampling_params import SamplingParams

    blocks = -(-(cached + new_tokens) // block_size)
    seqs = []
    for k in range(num_seqs):
        seq = Sequence([0] * (cached + new_tokens), SamplingParams(max_tokens=1))
        seq.num_computed_tokens = cached
        seq.block_table = list(range(k * blocks, (k + 1) * blocks))
        seqs.append(seq)
    return ScheduledBatch(seqs, [new_tokens] * num_seqs)


#: Context slots (tokens, padding included) one attention group gathers at most: a step whose
#: sequences need more is split into several groups, so the per-layer copy of their keys and values
#: is bounded whatever the batch (`gather_slots`), and the engine reports those bytes beside the KV
#: pool. Measured with benchmarks/bench_decode_attention.py (one SmolLM2 layer, bf16, 2 threads): 64
#: decodes of 40-382 tokens take 6.0 ms in one padded group, 2.3 ms in runs of <= 4,096 slots (2.7x),
#: 2.4 ms at 2,048, 2.6 ms at 8,192, 3.9 ms at 16,384; 32 decodes of ~2,075 tokens 14.0 ms in one
#: group, 13.8 ms at 4,096. Runs of similar length pad less; many more groups cost their own calls.
MAX_GATHER_SLOTS = 4096
ONE_GROUP = 2**62  # a bound no step reaches


def gather_slots(max_model_len: int, block_size: int, bound: int = MAX_GATHER_SLOTS) -> int:
    """The most context slots any attention group gathers: the bound, or one sequence of the longest
    context (a sequence is never split)."""
    return max(bound, -(-max_model_len // block_size) * block_size)


def _chunks(members: list[int], contexts: dict[int, int], bs: int, limit: int) -> list[list[int]]:
    """`members` sorted by context length, cut into runs whose padded gather (sequences × the run's
    longest context, in whole blocks) stays within `limit` slots: sorting pads each run only to a
    length close to its own, so less is copied than when every row pads to the step's longest."""
    out: list[list[int]] = []
    for i in sorted(members, key=lambda i: contexts[i]):
        width = -(-contexts[i] // bs) * bs  # the longest of the run so far: the members are sorted
        if out and (len(out[-1]) + 1) * width <= limit:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def prepare_step(batch: ScheduledBatch, block_size: int, device: torch.device,
                 max_gather_slots: int = MAX_GATHER_SLOTS, decode_gather_slots: int | None = None) -> PreparedStep:
    """(input ids [T], attention metadata, row of each sampling sequence's last token in batch
    order, the prompt rows to score), the tensors on `device`. Decode tokens are laid out first and
    prefill chunks after them, each kind in attention groups of sequences of similar context length
    that gather at most `max_gather_slots` slots: no decode row is padded to a prefill chunk's length,
    and no group's copy of K/V grows with the batch. `decode_gather_slots` bounds the decode groups
    instead, where they gather nothing (the CPU kernel reads the cache in place: one group, one call)."""
    bs = block_size
    lengths = batch.num_new_tokens
    contexts = {i: seq.num_computed_tokens + n for i, (seq, n) in enumerate(zip(batch.seqs, lengths))}
    decodes = _chunks([i for i, n in enumerate(lengths) if n == 1], contexts, bs,
                      max_gather_slots if decode_gather_slots is None else decode_gather_slots)
    prefills = _chunks([i for i, n in enumerate(lengths) if n > 1], contexts, bs, max_gather_slots)
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    starts: dict[int, int] = {}
    for i in (i for members in decodes + prefills for i in members):
        seq, n = batch.seqs[i], lengths[i]
        start = seq.num_computed_tokens
        starts[i] = len(ids)
        ids.extend(seq.token_ids[start:start + n])
        span = range(start, start + n)
        positions.extend(span)
        slots.extend(seq.block_table[p // bs] * bs + p % bs for p in span)
    sample_rows = [starts[i] + lengths[i] - 1 for i in range(len(lengths)) if batch.samples(i)]
    groups = [_group(batch, members, starts, positions, bs, device) for members in decodes + prefills]
    meta = AttentionMetadata(positions=_tensor(positions, device), slot_mapping=_tensor(slots, device), groups=groups)
    return _tensor(ids, device), meta, sample_rows, _prompt_rows(batch, starts)


def _prompt_rows(batch: ScheduledBatch, starts: dict[int, int]) -> list[PromptRows]:
    """Rows whose next token is still a prompt token, for requests that asked for prompt logprobs."""
    out = []
    for i, seq in enumerate(batch.seqs):
        if seq.params.prompt_logprobs is None:
            continue
        first = seq.num_computed_tokens
        count = min(first + batch.num_new_tokens[i], seq.num_prompt_tokens - 1) - first
        if count > 0:
            out.append(PromptRows(i, starts[i], first, count))
    return out


def _tensor(data, device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    return torch.tensor(data, dtype=dtype).to(device, non_blocking=True)


def _group(batch: ScheduledBatch, members: list[int], starts: dict[int, int], positions: list[int],
           bs: int, device: torch.device) -> AttentionGroup:
    lengths = [batch.num_new_tokens[i] for i in members]
    firsts = [starts[i] for i in members]
    contexts = [batch.seqs[i].num_computed_tokens + n for i, n in zip(members, lengths)]
    tables = [batch.seqs[i].block_table[:(c + bs - 1) // bs] for i, c in zip(members, contexts)]
    max_q, max_blocks = max(lengths), max(len(t) for t in tables)
    return AttentionGroup(
        query_index=_tensor([[s + j if j < n else 0 for j in range(max_q)] for s, n in zip(firsts, lengths)], device),
        output_rows=_tensor([k * max_q + j for k, n in enumerate(lengths) for j in range(n)], device),
        query_positions=_tensor([[positions[s + j] if j < n else 0 for j in range(max_q)]
                                 for s, n in zip(firsts, lengths)], device),
        block_tables=_tensor([t + [0] * (max_blocks - len(t)) for t in tables], device),
        max_context_len=max(contexts))


class ModelRunner:
    def __init__(self, ckpt: Checkpoint, device: torch.device, dtype: torch.dtype, block_size: int,
                 kernels: Kernels = PLAIN, compile_decode: bool = False) -> None:
        cfg = ckpt.config
        self.cfg, self.device, self.dtype, self.block_size = cfg, device, dtype, block_size
        model = build_model(ckpt, device, dtype, kernels)
        load_weights(model, ckpt)
        self.model = model.eval()
        self.compiled: CompiledDecode | None = CompiledDecode(self.model) if compile_decode else None
        if device.type == "cpu":
            cpu_attention.kernel()  # built (or loaded from torch's cache) now, not in the first request
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.num_blocks = 0
        self.max_gather_slots = MAX_GATHER_SLOTS

    @property
    def block_bytes(self) -> int:
        """KV bytes one block holds across all layers (keys and values)."""
        return self.cfg.kv_block_bytes(self.block_size, self.dtype)

    def allocate(self, num_blocks: int) -> None:
        """Add `num_blocks` blocks to every layer's cache (the first call allocates it)."""
        fresh = kv_caches(self.cfg, num_blocks, self.block_size, self.dtype, self.device)
        if self.kv_caches:
            fresh = [(torch.cat((k, nk)), torch.cat((v, nv))) for (k, v), (nk, nv) in zip(self.kv_caches, fresh)]
        self.kv_caches = fresh
        self.num_blocks += num_blocks

    def prepare(self, batch: ScheduledBatch) -> PreparedStep:
        """`prepare_step` on this runner's block size and device."""
        # The CPU kernel reads decodes in place: they need no gather bound, and one call serves them
        # all. The compiled decode traces the plain path, so it keeps the bound.
        in_place = self.compiled is None and cpu_attention.serves(self.device)
        return prepare_step(batch, self.block_size, self.device, self.max_gather_slots,
                            ONE_GROUP if in_place else None)

    def run(self, batch: ScheduledBatch) -> StepLogits:
        return self.execute(self.prepare(batch))

    @torch.inference_mode()
    def execute(self, prepared: PreparedStep) -> StepLogits:
        """Run a prepared step (under tensor parallel every rank runs the one rank 0 prepared)."""
        ids, meta, rows, prompt = prepared
        compiled = self.compiled is not None and CompiledDecode.applies(meta)
        hidden = (self.compiled if compiled else self.model)(ids, meta, self.kv_caches)
        extra = [r for p in prompt for r in range(p.first_row, p.first_row + p.count)]
        if not rows and not extra:
            return StepLogits(hidden.new_empty((0, self.cfg.vocab_size), dtype=torch.float32))
        logits = self.model.logits(hidden[torch.tensor(rows + extra, device=hidden.device)])
        out = StepLogits(logits[:len(rows)])
        offset = len(rows)
        for p in prompt:
            out.prompt[p.index] = (p.first_position, logits[offset:offset + p.count])
            offset += p.count
        return out
