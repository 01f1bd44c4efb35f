"""`compile_decode` (`--compile-decode`): decode steps run the model's forward compiled by
`torch.compile` (Inductor), on the CPU or a CUDA GPU. Off by default.

Why: at batch 1 a decode step is the weights' matmuls plus thousands of small ATen calls (RMSNorm,
RoPE, the KV write and gather, residual adds; 6,800 with the nested ones on SmolLM2), each 1-5 us
whatever its size. On SmolLM2-135M bf16, 2 CPU threads, the matmuls take 20.6 ms of a 30-31 ms step
(the floor pass: 18.5 ms); compiled, Inductor fuses the element-wise chains into a few loops and
TPOT p50 drops from 30.8 to 23.9 ms, 60 % to 77 % of the floor
(`ascendkit bench MODEL --workloads single --baselines runtime-compiled`).

Why opt-in: Inductor computes a fused chain in fp32 and rounds once, eager rounds after every op,
and its reductions sum in another order. Even with `emulate_precision_casts` (which puts eager's
roundings back where it can) the bf16 hidden states differ from eager's in the last bits, so greedy
tokens can part from transformers' at a near-tie (1 step in 198 on SmolLM2 under teacher forcing).
The default path reproduces transformers op for op and the greedy tests hold it to that; this one is
held to accuracy instead: against fp64, its error is eager's (tests/test_runtime_compiled_decode.py).

Why only decode steps of one attention group: Dynamo specializes a graph on the number of groups (a
Python list). One group covers batch 1 and any batch whose padded context fits `MAX_GATHER_SLOTS`; a
prefill chunk is matmul-bound and gains little. Every size is symbolic (`SHAPE_OPTIONS`) but the
batch, which a view in the attention specializes to 1 or more: two graphs in all, which the engine
builds at start-up (`LLMEngine._warm_up_compiled`), not in a user's first request.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.fx.experimental import _config as shape_config  # torch's own, private: pinned torch

from runtime.layers.attention import AttentionMetadata, is_decode
from runtime.model.config import ModelConfig

#: Inductor settings: eager's intermediate roundings kept where a fused chain would skip them.
INDUCTOR_OPTIONS = {"emulate_precision_casts": True}

#: How Dynamo treats sizes while it traces. Without these, equal sizes share a symbol (duck sizing: a
#: step whose block count equals the KV heads' builds a graph the next block count fails) and sizes
#: 0 and 1 are specialized (a one-block context gets a graph of its own): on the Llama fixture, five
#: graphs for four requests instead of two.
SHAPE_OPTIONS = {"use_duck_shape": False, "backed_size_oblivious": True}

#: Where Inductor generates code: the CPU (C++, needs a compiler) and CUDA (Triton).
DEVICES = ("cpu", "cuda")


class CompiledDecode:
    """The model's forward compiled once, called for the steps it applies to (`applies`)."""

    def __init__(self, model: nn.Module) -> None:
        self.forward: Callable[..., torch.Tensor] = torch.compile(model.forward, dynamic=True,
                                                                 options=INDUCTOR_OPTIONS)
        self.steps = 0  # steps run compiled (tests and benchmarks check the path was taken)

    @staticmethod
    def applies(meta: AttentionMetadata) -> bool:
        """A step of decodes only, attending as one group."""
        return len(meta.groups) == 1 and is_decode(meta.groups[0])

    def __call__(self, ids: torch.Tensor, meta: AttentionMetadata,
                 kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        self.steps += 1
        with shape_config.patch(**SHAPE_OPTIONS):
            return self.forward(ids, meta, kv_caches)


def refusal(device: str, tensor_parallel: bool, cfg: ModelConfig | None = None) -> str | None:
    """Why `compile_decode` cannot run here, or None. Dense models only: the grouped matmul of
    mixture-of-experts layers has no bf16-free fake-tensor rule in torch 2.13 and, left out of the
    graph, splits it where the RoPE tables' size-1 axis can no longer be assumed; multi-head latent
    attention has not been traced. Every dense fixture family is (fp32: eager's tokens)."""
    if device not in DEVICES:
        return (f"compile_decode: torch.compile's Inductor generates no {device} code (an Ascend NPU compiles "
                "with torchair; ASCEND_OP_FUSION=1 gives the fused kernels): drop --compile-decode")
    if tensor_parallel:
        return "compile_decode runs on one device: drop --compile-decode or use tensor_parallel_size 1"
    if cfg is not None and (cfg.mla is not None or cfg.is_moe):
        kind = "multi-head latent attention" if cfg.mla is not None else "mixture-of-experts layers"
        return f"compile_decode serves dense models; this one has {kind}: drop --compile-decode"
    return None
