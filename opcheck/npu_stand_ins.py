"""torch_npu's quantized and mixture-of-experts kernels as traceable stand-ins, so check_ops sees what
the runtime's model runs on an NPU: `QuantLinear` calls `npu_weight_quant_batchmatmul` (W8A16),
`npu_quantize` + `npu_quant_matmul` (W8A8) or `npu_dynamic_quant` + `npu_quant_matmul` (W8A8_DYNAMIC)
there, not the CPU's `_weight_int8pack_mm` / `_int_mm`; an MoE layer calls
`npu_moe_gating_top_k_softmax`, `npu_moe_init_routing_v2`, `npu_grouped_matmul` and
`npu_moe_finalize_routing`, not the CPU's sort / grouped_mm.

The stand-ins are custom ops in their own namespace (`ascendkit_npu`, never torch_npu's `npu`, which
a machine with torch_npu already has) with shape-only fake kernels: they appear in the exported graph
under torch_npu's names, and the classifier looks those names up in the manifest's `npu_custom` list
(a torch_npu release without `npu_quant_matmul` is a finding).
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from runtime.layers.fused_ops import Kernels

NAMESPACE = "ascendkit_npu"


@torch.library.custom_op(f"{NAMESPACE}::npu_weight_quant_batchmatmul", mutates_args=())
def _weight_quant_batchmatmul(x: torch.Tensor, weight: torch.Tensor, antiquant_scale: torch.Tensor,
                              antiquant_offset: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    raise RuntimeError("a check_ops stand-in: traced, never run")


@_weight_quant_batchmatmul.register_fake
def _(x, weight, antiquant_scale, antiquant_offset, bias):
    return x.new_empty((x.shape[0], weight.shape[1]))


@torch.library.custom_op(f"{NAMESPACE}::npu_quantize", mutates_args=())
def _quantize(x: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("a check_ops stand-in: traced, never run")


@_quantize.register_fake
def _(x, scales, zero_points):
    return x.new_empty(x.shape, dtype=torch.int8)


@torch.library.custom_op(f"{NAMESPACE}::npu_quant_matmul", mutates_args=())
def _quant_matmul(x1: torch.Tensor, x2: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                  pertoken_scale: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("a check_ops stand-in: traced, never run")


@_quant_matmul.register_fake
def _(x1, x2, scale, bias, pertoken_scale, like):
    return like.new_empty((x1.shape[0], x2.shape[1]))


@torch.library.custom_op(f"{NAMESPACE}::npu_dynamic_quant", mutates_args=())
def _dynamic_quant(input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    raise RuntimeError("a check_ops stand-in: traced, never run")


@_dynamic_quant.register_fake
def _(input):
    return input.new_empty(input.shape, dtype=torch.int8), input.new_empty(input.shape[:-1], dtype=torch.float32)


@torch.library.custom_op(f"{NAMESPACE}::npu_moe_gating_top_k_softmax", mutates_args=())
def _gating_top_k_softmax(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    raise RuntimeError("a check_ops stand-in: traced, never run")


@_gating_top_k_softmax.register_fake
def _(x, k):
    shape = (*x.shape[:-1], k)
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.int32), x.new_empty(shape, dtype=torch.int32)


@torch.library.custom_op(f"{NAMESPACE}::npu_moe_init_routing_v2", mutates_args=())
def _init_routing_v2(x: torch.Tensor, expert_idx: torch.Tensor, expert_num: int, quant_mode: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    raise RuntimeError("a check_ops stand-in: traced, never run")


@_init_routing_v2.register_fake
def _(x, expert_idx, expert_num, quant_mode):
    rows = expert_idx.numel()
    expanded = x.new_empty((rows, x.shape[-1]), dtype=torch.int8 if quant_mode == 1 else x.dtype)
    return (expanded, x.new_empty((rows,), dtype=torch.int32), x.new_empty((expert_num,), dtype=torch.int64),
            x.new_empty((rows,), dtype=torch.float32))


@torch.library.custom_op(f"{NAMESPACE}::npu_grouped_matmul", mutates_args=())
def _grouped_matmul(x: list[torch.Tensor], weight: list[torch.Tensor], scale: list[torch.Tensor],
                    per_token_scale: list[torch.Tensor], group_list: torch.Tensor,
                    like: torch.Tensor) -> list[torch.Tensor]:
    raise RuntimeError("a check_ops stand-in: traced, never run")


@_grouped_matmul.register_fake
def _(x, weight, scale, per_token_scale, group_list, like):
    return [like.new_empty((x[0].shape[0], weight[0].shape[-1]))]


@torch.library.custom_op(f"{NAMESPACE}::npu_moe_finalize_routing", mutates_args=())
def _finalize_routing(expanded_permuted_rows: torch.Tensor, scales: torch.Tensor,
                      expanded_src_to_dst_row: torch.Tensor, export_for_source_row: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("a check_ops stand-in: traced, never run")


@_finalize_routing.register_fake
def _(expanded_permuted_rows, scales, expanded_src_to_dst_row, export_for_source_row):
    return expanded_permuted_rows.new_empty((scales.shape[0], expanded_permuted_rows.shape[-1]))


def _weight_quant_batchmatmul_call(x, weight, antiquant_scale, antiquant_offset, bias=None):
    return _weight_quant_batchmatmul(x, weight, antiquant_scale, antiquant_offset, bias)


def _quantize_call(x, scales, zero_points, dtype, axis=-1, div_mode=True):
    return _quantize(x, scales, zero_points)


def _quant_matmul_call(x1, x2, scale, bias=None, output_dtype=None, pertoken_scale=None):
    return _quant_matmul(x1, x2, scale, bias, pertoken_scale, torch.empty(0, dtype=output_dtype, device=x1.device))


def _dynamic_quant_call(input, **kwargs):
    return _dynamic_quant(input)


def _gating_top_k_softmax_call(x, finished=None, k=1):
    return _gating_top_k_softmax(x, k)


def _init_routing_v2_call(x, expert_idx, *, expert_num=-1, quant_mode=-1, **kwargs):
    return _init_routing_v2(x, expert_idx, expert_num, quant_mode)


def _grouped_matmul_call(x, weight, *, scale=None, per_token_scale=None, group_list=None, output_dtype=None,
                         **kwargs):
    like = torch.empty(0, dtype=output_dtype or x[0].dtype, device=x[0].device)
    return _grouped_matmul(x, weight, scale or [], per_token_scale or [], group_list, like)  # [] for None


def _finalize_routing_call(expanded_permuted_rows, skip1, skip2, bias, scales, expanded_src_to_dst_row,
                           export_for_source_row, drop_pad_mode=0):
    return _finalize_routing(expanded_permuted_rows, scales, expanded_src_to_dst_row, export_for_source_row)


#: The torch_npu functions `QuantLinear._npu_forward` and `runtime.layers.moe.npu_experts` call, with
#: torch_npu's argument names.
KERNELS = SimpleNamespace(npu_weight_quant_batchmatmul=_weight_quant_batchmatmul_call,
                          npu_quantize=_quantize_call, npu_quant_matmul=_quant_matmul_call,
                          npu_dynamic_quant=_dynamic_quant_call,
                          npu_moe_gating_top_k_softmax=_gating_top_k_softmax_call,
                          npu_moe_init_routing_v2=_init_routing_v2_call, npu_grouped_matmul=_grouped_matmul_call,
                          npu_moe_finalize_routing=_finalize_routing_call)


def tracing_kernels() -> Kernels:
    """The kernels of a model check_ops traces: the plain element-wise ones (what the runtime runs by
    default), and these stand-ins as its quantized matmuls and MoE kernels, so quantized linears and
    MoE layers take their NPU path."""
    from runtime.layers.fused_ops import PLAIN

    return dataclasses.replace(PLAIN, npu_quant=KERNELS, npu_moe=KERNELS)
