"""int8 quantization in msModelSlim's conventions, as vllm-ascend and torch_npu compute with it.

W8A16 (`npu_weight_quant_batchmatmul`): the weight is int8 `q` [out, in] with `weight_scale` and
`weight_offset` per output channel ([out, 1]) or per group of `group_size` inputs ([out, in/g]),
and the matmul dequantizes as `w = (q + weight_offset) * weight_scale` (torch_npu's antiquant
formula). Symmetric: offset 0, scale = max|w| / 127. Asymmetric: the range [min(w, 0), max(w, 0)]
onto [-128, 127] — zero stays exactly representable, so zero weights stay zero.

W8A8 (`npu_quantize` + `npu_quant_matmul`): activations are quantized per tensor,
`x_q = clamp(round(x / input_scale + input_offset))`, the weight symmetric per channel; the
integer product is corrected and rescaled as `y = (x_q @ q.T + quant_bias) * deq_scale` with
`deq_scale = input_scale * weight_scale` and `quant_bias = round(bias / deq_scale - input_offset *
sum(q, in))`, which makes `y ≈ x @ w.T + bias`. For an fp16 model `deq_scale` is stored as the
fp32 bits in an int64 (what `npu_quant_matmul` takes there); for bf16 it stays fp32.

Everything is computed in float32 from the source weight, whatever its dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ascend_common.errors import UserError

from .dtypes import TORCH_DTYPES
from .threads import leaving_a_core

QMIN, QMAX = -128, 127
#: Steps an asymmetric range is split into: 254, not 255. The zero point is rounded to an integer,
#: which shifts the range by up to half a step; with one step of slack both ends still land inside
#: [-128, 127], so no value is clamped and every one is within half a step of its source.
ASYMMETRIC_STEPS = QMAX - QMIN - 1


@dataclass(frozen=True)
class QuantizedWeight:
    """`weight` int8 [out, in]; `scale`/`offset` fp32 [out, 1] or [out, in / group_size]."""

    weight: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    group_size: int  # 0: per channel

    def dequantize(self) -> torch.Tensor:
        """`(q + offset) * scale` in float32, as the NPU's antiquant computes it."""
        out, width = self.weight.shape
        groups = self.scale.shape[1]
        q = self.weight.float().view(out, groups, width // groups)
        return ((q + self.offset.unsqueeze(-1)) * self.scale.unsqueeze(-1)).view(out, width)


@dataclass(frozen=True)
class QuantError:
    """How far the dequantized weight is from the source: max |w - w'| and that over max |w|."""

    max_abs: float
    max_rel: float

    def to_dict(self) -> dict[str, float]:
        return {"max_abs": self.max_abs, "max_rel": self.max_rel}


def _grouped(w: torch.Tensor, group_size: int, name: str) -> torch.Tensor:
    if w.dim() != 2:
        raise UserError(f"{name}: only 2-D linear weights are quantized, got shape {tuple(w.shape)}")
    out, width = w.shape
    if group_size:
        if group_size < 1 or width % group_size:
            raise UserError(f"{name}: --group-size {group_size} does not divide its {width} input columns")
        return w.float().view(out, width // group_size, group_size)
    return w.float().view(out, 1, width)


def quantize_weight(w: torch.Tensor, *, symmetric: bool = True, group_size: int = 0,
                    name: str = "weight") -> QuantizedWeight:
    """int8 weight with per-channel (group_size 0) or per-group scale and offset."""
    return _quantize(w, symmetric, group_size, name)[0]


def _quantize(w: torch.Tensor, symmetric: bool, group_size: int, name: str) -> tuple[QuantizedWeight, QuantError]:
    """The quantized weight and its error, from one float32 copy: the rounded values dequantized in
    place to measure the error, and the peak |w| the range already found. A conversion
    quantizes every linear of the model, so each extra full-size temporary or pass shows in its time
    (an MoE layer holds hundreds of linears)."""
    g = _grouped(w, group_size, name)
    if symmetric:
        peak = g.abs().amax(-1, keepdim=True)  # max |w| per group
        scale = peak / QMAX
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group: any scale
        zero = torch.zeros_like(scale)
    else:
        lo = g.amin(-1, keepdim=True).clamp(max=0)
        hi = g.amax(-1, keepdim=True).clamp(min=0)
        peak = torch.maximum(hi, -lo)
        scale = (hi - lo) / ASYMMETRIC_STEPS
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(-lo / scale) + QMIN  # the integer that stands for 0.0
    r = g / scale
    r.round_()
    if not symmetric:  # symmetric needs no clamp: |w| / scale <= 127 up to rounding, which rounds to 127
        r.add_(zero).clamp_(QMIN, QMAX)
    out, width = w.shape
    quantized = QuantizedWeight(r.view(out, width).to(torch.int8), scale.squeeze(-1).contiguous(),
                                (-zero).add_(0.0).squeeze(-1).contiguous(), group_size)  # +0.0, not -0.0
    if not w.numel():
        return quantized, QuantError(0.0, 0.0)
    if not symmetric:
        r.sub_(zero)
    # |(q + offset) * scale - w| in place (not fused: the error of the dequantized value as a reader
    # computes it); per-row maxima first, a whole-tensor max is several times slower on CPU
    max_abs = r.mul_(scale).sub_(g).abs_().amax(-1).max().item()
    top = peak.max().item()
    return quantized, QuantError(max_abs, max_abs / top if top > 0 else 0.0)


def quant_error(w: torch.Tensor, dequantized: torch.Tensor) -> QuantError:
    w = w.float()
    max_abs = (w - dequantized).abs().max().item() if w.numel() else 0.0
    peak = w.abs().max().item() if w.numel() else 0.0
    return QuantError(max_abs, max_abs / peak if peak > 0 else 0.0)


@dataclass(frozen=True)
class ActivationQuant:
    """Per-tensor int8 activation quantization: `x_q = clamp(round(x / scale + offset))`."""

    scale: float
    offset: int

    @classmethod
    def from_range(cls, lo: float, hi: float) -> ActivationQuant:
        """The observed [lo, hi] (widened to hold 0) onto [-128, 127]."""
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = (hi - lo) / ASYMMETRIC_STEPS
        if not scale > 0:  # an input that was always zero (or NaN: refused by the caller's check)
            scale = 1.0
        # fp32 as stored: the offset is derived from the stored scale, so both sides agree exactly
        scale = float(torch.tensor(scale, dtype=torch.float32))
        return cls(scale, round(-lo / scale) + QMIN)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(x.float() / self.scale) + self.offset, QMIN, QMAX).to(torch.int8)


@dataclass(frozen=True)
class W8A8Linear:
    """One linear layer in W8A8: the tensors msModelSlim writes for it (fp32 deq_scale here; see
    `stored_deq_scale` for the dtype on disk)."""

    weight: torch.Tensor  # int8 [out, in]
    weight_scale: torch.Tensor  # fp32 [out, 1]
    weight_offset: torch.Tensor  # fp32 [out, 1], zeros: symmetric
    input_scale: torch.Tensor  # fp32 [1]
    input_offset: torch.Tensor  # fp32 [1]
    deq_scale: torch.Tensor  # fp32 [out]
    quant_bias: torch.Tensor  # int32 [out]

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """`x @ w.T + bias` computed as the NPU does: quantize x, integer matmul (int32 accumulate;
        exact in float64 for any realistic width), add quant_bias, rescale. Float32 result."""
        act = ActivationQuant(self.input_scale.item(), int(self.input_offset.item()))
        xq = act.quantize(x).double()
        acc = xq @ self.weight.double().t() + self.quant_bias.double()
        return (acc * self.deq_scale.double()).float()


def quantize_w8a8(w: torch.Tensor, bias: torch.Tensor | None, act: ActivationQuant,
                  name: str = "weight") -> W8A8Linear:
    qw = quantize_weight(w, symmetric=True, group_size=0, name=name)
    weight_scale = qw.scale  # [out, 1]
    input_scale = torch.tensor([act.scale], dtype=torch.float32)
    deq_scale = (input_scale * weight_scale.squeeze(1)).float()
    bias64 = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.double()
    row_sums = qw.weight.double().sum(dim=1)
    quant_bias = torch.round(bias64 / deq_scale.double() - act.offset * row_sums)
    return W8A8Linear(qw.weight, weight_scale, torch.zeros_like(weight_scale), input_scale,
                      torch.tensor([float(act.offset)], dtype=torch.float32), deq_scale,
                      quant_bias.to(torch.int32))


def stored_deq_scale(deq_scale: torch.Tensor, model_dtype: torch.dtype) -> torch.Tensor:
    """fp16 models: the fp32 bit pattern as an int64 (npu_quant_matmul's fp16 contract); else fp32."""
    if model_dtype == torch.float16:
        bits = deq_scale.float().contiguous().view(torch.int32).to(torch.int64)
        return bits & 0xFFFFFFFF  # zero-extended: the int64 holds exactly the 32 bits
    return deq_scale.float()


def loaded_deq_scale(stored: torch.Tensor) -> torch.Tensor:
    """The fp32 deq_scale back from what `stored_deq_scale` wrote."""
    if stored.dtype == torch.int64:
        return (stored & 0xFFFFFFFF).to(torch.int32).view(torch.float32)
    return stored.float()


def quantized_tensors(name: str, weight: torch.Tensor, *, symmetric: bool, group_size: int,
                      act: ActivationQuant | None, bias: torch.Tensor | None, model_dtype: str
                      ) -> tuple[dict[str, torch.Tensor], QuantError]:
    """What msModelSlim's layout stores for linear weight `name`, by suffix (`weight`,
    `weight_scale`, `weight_offset`; W8A8, when `act` is given: also `input_scale`, `input_offset`,
    `deq_scale` as stored for a `model_dtype` model and `quant_bias`, from the source `bias`), and
    the weight's quantization error. `convert` writes these and `verify --source` requires the same
    bytes, so both call this one function: the two can never quantize differently."""
    with leaving_a_core():
        return _quantized_tensors(name, weight, symmetric, group_size, act, bias, model_dtype)


def _quantized_tensors(name: str, weight: torch.Tensor, symmetric: bool, group_size: int,
                       act: ActivationQuant | None, bias: torch.Tensor | None, model_dtype: str
                       ) -> tuple[dict[str, torch.Tensor], QuantError]:
    if act is None:
        qw, error = _quantize(weight, symmetric, group_size, name)
        return {"weight": qw.weight, "weight_scale": qw.scale, "weight_offset": qw.offset}, error
    layer = quantize_w8a8(weight, bias, act, name=name)
    parts = {"weight": layer.weight, "weight_scale": layer.weight_scale, "weight_offset": layer.weight_offset,
             "input_scale": layer.input_scale, "input_offset": layer.input_offset,
             "deq_scale": stored_deq_scale(layer.deq_scale, TORCH_DTYPES[model_dtype]),
             "quant_bias": layer.quant_bias}
    return parts, quant_error(weight, layer.weight.float() * layer.weight_scale)
