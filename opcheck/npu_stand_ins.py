"""torch_npu's quantized kernels as traceable stand-ins, so check_ops sees what a quantized runtime
model runs on an NPU: `QuantLinear` calls `npu_weight_quant_batchmatmul` (W8A16) or `npu_quantize` +
`npu_quant_matmul` (W8A8) there, not the CPU's `_weight_int8pack_mm` / `_int_mm`.

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
                  like: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("a check_ops stand-in: traced, never run")


@_quant_matmul.register_fake
def _(x1, x2, scale, bias, like):
    return like.new_empty((x1.shape[0], x2.shape[1]))


def _weight_quant_batchmatmul_call(x, weight, antiquant_scale, antiquant_offset, bias=None):
    return _weight_quant_batchmatmul(x, weight, antiquant_scale, antiquant_offset, bias)


def _quantize_call(x, scales, zero_points, dtype, axis=-1, div_mode=True):
    return _quantize(x, scales, zero_points)


def _quant_matmul_call(x1, x2, scale, bias=None, output_dtype=None):
    return _quant_matmul(x1, x2, scale, bias, torch.empty(0, dtype=output_dtype, device=x1.device))


#: The torch_npu functions `QuantLinear._npu_forward` calls, with torch_npu's argument names.
KERNELS = SimpleNamespace(npu_weight_quant_batchmatmul=_weight_quant_batchmatmul_call,
                          npu_quantize=_quantize_call, npu_quant_matmul=_quant_matmul_call)


def tracing_kernels() -> Kernels:
    """The kernels of a model check_ops traces: the plain element-wise ones (what the runtime runs by
    default), and these stand-ins as its quantized matmuls, so quantized linears take their NPU path."""
    from runtime.layers.fused_ops import PLAIN

    return dataclasses.replace(PLAIN, npu_quant=KERNELS)
