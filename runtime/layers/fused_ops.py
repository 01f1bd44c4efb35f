"""The runtime's three hot element-wise patterns, in plain torch and as torch_npu's fused kernels.

`ASCEND_OP_FUSION=1` on an NPU swaps RMSNorm, RoPE and SwiGLU for `npu_rms_norm`, `npu_rotary_mul`
and `npu_swiglu` (the ops `check_ops`' fusion finder names): one kernel launch each instead of five
to eight, which is what an NPU's launch-bound decode step needs. The plain versions are the
reference; they reproduce transformers' numerics bit for bit, which is why they are the default.
Attention stays on `scaled_dot_product_attention`, which torch_npu already serves with its fused
FlashAttentionScore kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: normalise in fp32, round, then scale."""
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: x [T, heads, head_dim], cos/sin [T, 1, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, with gate the first half of the fused projection."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class NpuQuantOps(Protocol):
    """torch_npu's quantized matmuls, as `QuantLinear` calls them (the torch_npu module itself fits)."""

    def npu_weight_quant_batchmatmul(self, x: torch.Tensor, weight: torch.Tensor, antiquant_scale: torch.Tensor,
                                     antiquant_offset: torch.Tensor, bias: torch.Tensor | None = None
                                     ) -> torch.Tensor: ...

    def npu_quantize(self, x: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, dtype: torch.dtype,
                     axis: int = -1, div_mode: bool = True) -> torch.Tensor: ...

    def npu_quant_matmul(self, x1: torch.Tensor, x2: torch.Tensor, scale: torch.Tensor,
                         bias: torch.Tensor | None = None, output_dtype: torch.dtype | None = None,
                         pertoken_scale: torch.Tensor | None = None) -> torch.Tensor: ...

    def npu_dynamic_quant(self, input: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]: ...


class NpuMoeOps(Protocol):
    """torch_npu's mixture-of-experts kernels, as `runtime.layers.moe` calls them (vllm-ascend's
    fused-MoE path; the torch_npu module itself fits). Signatures: op-plugin's op_plugin_functions.yaml."""

    def npu_moe_gating_top_k_softmax(self, x: torch.Tensor, finished: torch.Tensor | None = None, k: int = 1
                                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def npu_moe_init_routing_v2(self, x: torch.Tensor, expert_idx: torch.Tensor, **kwargs
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def npu_grouped_matmul(self, x: list[torch.Tensor], weight: list[torch.Tensor], **kwargs
                           ) -> list[torch.Tensor]: ...

    def npu_moe_finalize_routing(self, expanded_permuted_rows: torch.Tensor, skip1: torch.Tensor | None,
                                 skip2: torch.Tensor | None, bias: torch.Tensor | None, scales: torch.Tensor | None,
                                 expanded_src_to_dst_row: torch.Tensor, export_for_source_row: torch.Tensor | None,
                                 drop_pad_mode: int = 0) -> torch.Tensor: ...

    def npu_dynamic_quant(self, input: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class Kernels:
    """The functions the model's layers call for these patterns, chosen once and handed to every layer.

    `npu_quant`, when given, are the quantized matmuls `QuantLinear` calls on its NPU path whatever
    device its weights are on: check_ops passes traceable stand-ins of torch_npu's kernels, so a model
    built on meta traces what an NPU runs. None (serving): torch_npu's own, imported when the weights
    are on an NPU. `npu_moe` likewise for the mixture-of-experts layers (routing, grouped matmuls,
    W8A8_DYNAMIC's per-token quantization)."""

    rms_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    rotary: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    swiglu: Callable[[torch.Tensor], torch.Tensor]
    name: str = "plain"
    npu_quant: NpuQuantOps | None = None
    npu_moe: NpuMoeOps | None = None


PLAIN = Kernels(rms_norm, rotary, swiglu)


def npu_kernels() -> Kernels:
    """torch_npu's fused kernels (torch_npu must be importable). `npu_rotary_mul` takes 4-D
    [batch, seq, heads, dim] tensors, so the flat step gets a batch axis of 1."""
    import torch_npu

    def fused_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return torch_npu.npu_rms_norm(x, weight, eps)[0]

    def fused_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return torch_npu.npu_rotary_mul(x.unsqueeze(0), cos.unsqueeze(0), sin.unsqueeze(0)).squeeze(0)

    def fused_swiglu(gate_up: torch.Tensor) -> torch.Tensor:
        return torch_npu.npu_swiglu(gate_up.contiguous(), dim=-1)

    return Kernels(fused_rms_norm, fused_rotary, fused_swiglu, "torch_npu fused")
