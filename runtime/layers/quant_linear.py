"""Linear layers whose weights are int8, loaded from msModelSlim's layout (`convert --quantize`).

W8A16: `y = x @ ((q + weight_offset) * weight_scale).T + bias`. Symmetric per-channel weights run
through `torch._weight_int8pack_mm` (int8 weights read from memory, half the bytes of bf16: a
decode step is bound by weight reads); asymmetric or per-group ones are dequantized per call.
W8A8: activations are quantized with the layer's calibrated scale and offset, the product is an
integer matmul (`torch._int_mm`, int32 accumulation), then `(acc + quant_bias) * deq_scale` — the
NPU's `npu_quant_matmul` arithmetic. W8A8_DYNAMIC (msModelSlim's type for MoE models): per-channel
symmetric int8 weights, activations quantized per token at run time (`dynamic_quant`: scale =
max|x| / 127), the integer matmul, then `acc * token_scale * weight_scale`. On an NPU the same layers call torch_npu's kernels as
vllm-ascend does: `npu_weight_quant_batchmatmul` (W8A16 per channel; `(q + offset) * scale` is its
antiquant) and `npu_quantize` + `npu_quant_matmul` (W8A8, the fp32 deq_scale bits as int64 for fp16
models), and `npu_dynamic_quant` + `npu_quant_matmul(pertoken_scale=...)` (W8A8_DYNAMIC), with the
weight transposed to [in, out]. Nothing here has an NPU, so that path is checked
only by the NPU-only test beside the CPU ones; elsewhere off the CPU, W8A16 dequantizes per layer.

The fused qkv and gate_up layers concatenate their parts' rows (scales are per row, so fusing
changes nothing); their parts read the same input, so W8A8 calibration gave them the same input
scale and offset, which the loader checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ascend_convert.layout_names import QUANT_DESCRIPTION_NAME as DESCRIPTION_NAME
from ascend_convert.quantize import stored_deq_scale
from runtime.layers.fused_ops import PLAIN, Kernels

#: Tensors a quantized linear has besides `weight` and `bias`, as msModelSlim names them.
QUANT_SUFFIXES = ("weight_scale", "weight_offset", "input_scale", "input_offset", "deq_scale", "quant_bias")
PER_TENSOR = ("input_scale", "input_offset")  # one value for the layer, not one per output row
_FLOAT32 = ("weight_scale", "weight_offset", "input_scale", "input_offset", "deq_scale")
KINDS = ("W8A16", "W8A8", "W8A8_DYNAMIC")


def dynamic_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric int8 (`npu_dynamic_quant`'s "pertoken" mode): (int8 [rows, in], fp32
    scale [rows, 1]) with x ≈ q * scale; an all-zero row gets scale 1 (its q is 0 anyway)."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True) / 127.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.clamp(torch.round(x / scale), -128, 127).to(torch.int8), scale


@dataclass(frozen=True)
class QuantScheme:
    """A quantized checkpoint's description as the runtime needs it. `kind` is `model_quant_type`;
    a model may mix types (msModelSlim's Qwen3-MoE recipe: W8A8 attention, W8A8_DYNAMIC experts),
    so each runtime linear module's own type is in `module_types` (the loader fills it)."""

    kind: str  # "W8A16", "W8A8" or "W8A8_DYNAMIC"
    group_size: int
    description: dict = field(default_factory=dict, compare=False)  # every tensor name -> its type
    module_types: dict = field(default_factory=dict, compare=False)  # runtime linear module -> its type

    @property
    def float_names(self) -> frozenset[str]:
        """Every tensor the description types FLOAT."""
        return frozenset(n for n, t in self.description.items() if t == "FLOAT")

    @property
    def float_modules(self) -> frozenset[str]:
        """Runtime linear modules left float (msModelSlim's disable_names, `convert --keep-float`)."""
        return frozenset(m for m, t in self.module_types.items() if t == "FLOAT")

    def type_of(self, module: str) -> str:
        """The type of runtime linear module `module` (`kind` for one the description does not list)."""
        return self.module_types.get(module, self.kind)

    @classmethod
    def read(cls, model_dir: Path) -> QuantScheme | None:
        """The scheme of a converted directory's `quant_model_description.json` (None without one)."""
        from ascend_common.errors import UserError
        from ascend_convert.quant_layout import read_description

        description = read_description(model_dir)
        if description is None:
            return None
        path = Path(model_dir) / DESCRIPTION_NAME
        try:
            kind, group = description["model_quant_type"], int(description.get("group_size", 0))
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: not a readable quantization description ({exc})") from None
        if kind not in KINDS:
            raise UserError(f"{path}: model_quant_type {kind!r}: the runtime serves {', '.join(KINDS)}")
        return cls(kind, group, description)


class QuantLinear(nn.Module):
    """An int8 linear; which NPU kernels it calls comes with the model's `Kernels` (see `npu_quant`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, scheme: QuantScheme,
                 kernels: Kernels = PLAIN, kind: str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.scheme, self.kernels = in_features, out_features, scheme, kernels
        self.kind = kind or scheme.kind  # this layer's type (a mixed model's layers differ)
        groups = in_features // scheme.group_size if scheme.group_size else 1

        def frozen(*shape: int, dtype: torch.dtype = torch.float32) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)

        self.weight = frozen(out_features, in_features, dtype=torch.int8)
        self.weight_scale = frozen(out_features, groups)
        self.weight_offset = frozen(out_features, groups)
        if self.kind == "W8A8":
            self.input_scale, self.input_offset = frozen(1), frozen(1)
            self.deq_scale = frozen(out_features)
            self.quant_bias = frozen(out_features, dtype=torch.int32)
        self.bias = frozen(out_features) if bias else None
        self._prepared: dict[str, torch.Tensor] = {}

    def _apply(self, fn, recurse=True):
        """`.to(bfloat16)` must not round the scales: they stay fp32 (the bias follows the model)."""
        super()._apply(fn, recurse)
        for name in _FLOAT32:
            param = getattr(self, name, None)
            if param is not None and param.dtype != torch.float32:
                param.data = param.data.float()
        self._prepared.clear()
        return self

    def _npu_prepare(self, dtype: torch.dtype) -> dict[str, torch.Tensor] | None:
        """torch_npu's operands (vllm-ascend's process_weights_after_loading), or None where its
        kernels do not apply (not on an NPU; per-group W8A16)."""
        on_npu = self.weight.device.type == "npu" or self.kernels.npu_quant is not None
        if not on_npu or (self.kind == "W8A16" and self.weight_scale.shape[1] != 1):
            return None
        prepared = {"npu_weight": self.weight.t().contiguous()}
        if self.kind == "W8A16":
            prepared["antiquant_scale"] = self.weight_scale.flatten().to(dtype)
            prepared["antiquant_offset"] = self.weight_offset.flatten().to(dtype)
        elif self.kind == "W8A8_DYNAMIC":  # npu_quant_matmul wants an fp32 scale for fp16 output
            prepared["weight_scale"] = self.weight_scale.flatten().to(torch.float32 if dtype == torch.float16 else dtype)
        else:
            width = self.in_features  # npu_quantize multiplies by a per-channel scale: the reciprocal
            prepared["input_scale_reciprocal"] = (1 / self.input_scale).repeat(width).to(dtype)
            prepared["input_offset"] = self.input_offset.repeat(width).to(dtype)
            prepared["deq_scale"] = stored_deq_scale(self.deq_scale, dtype)
        return prepared

    def _prepare(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """What forward needs, derived once from the loaded tensors (in the activations' dtype)."""
        key = f"{dtype}"
        if self.kernels.npu_quant is not None:  # check_ops' stand-ins trace fakes: nothing to keep
            return self._npu_prepare(dtype) or self._host_prepare(dtype)
        if key not in self._prepared:
            self._prepared = {key: self._npu_prepare(dtype) or self._host_prepare(dtype)}
        return self._prepared[key]

    def _host_prepare(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        if self.kind in ("W8A8", "W8A8_DYNAMIC"):
            return {"weight_t": self.weight.t().contiguous()}
        per_channel = self.weight_scale.shape[1] == 1 and not bool(self.weight_offset.any())
        if per_channel and self.weight.device.type == "cpu":
            return {"scale": self.weight_scale.squeeze(1).to(dtype)}
        groups = self.weight_scale.shape[1]
        q = self.weight.float().view(self.out_features, groups, -1)
        w = (q + self.weight_offset.unsqueeze(-1)) * self.weight_scale.unsqueeze(-1)
        return {"dequantized": w.view(self.out_features, self.in_features).to(dtype)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        prepared = self._prepare(x.dtype)
        if "npu_weight" in prepared:
            y = self._npu_forward(x2.contiguous(), prepared)
        elif self.kind == "W8A16":
            if "scale" in prepared:
                y = torch._weight_int8pack_mm(x2.contiguous(), self.weight, prepared["scale"])
            else:
                y = x2 @ prepared["dequantized"].t()
            if self.bias is not None:
                y = y + self.bias
        elif self.kind == "W8A8_DYNAMIC":
            xq, token_scale = dynamic_quant(x2)
            acc = torch._int_mm(xq, prepared["weight_t"])
            y = (acc.float() * token_scale * self.weight_scale.t()).to(x.dtype)
            if self.bias is not None:
                y = y + self.bias
        else:
            xq = torch.clamp(torch.round(x2.float() / self.input_scale + self.input_offset), -128, 127)
            acc = torch._int_mm(xq.to(torch.int8), prepared["weight_t"])
            y = ((acc + self.quant_bias).float() * self.deq_scale).to(x.dtype)
        return y.view(*shape[:-1], self.out_features)

    def _npu_forward(self, x: torch.Tensor, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        torch_npu = self.kernels.npu_quant
        if torch_npu is None:
            import torch_npu

        if self.kind == "W8A16":
            return torch_npu.npu_weight_quant_batchmatmul(
                x=x, weight=prepared["npu_weight"], antiquant_scale=prepared["antiquant_scale"],
                antiquant_offset=prepared["antiquant_offset"],
                bias=self.bias.to(x.dtype) if self.bias is not None else None)
        if self.kind == "W8A8_DYNAMIC":
            xq, token_scale = torch_npu.npu_dynamic_quant(x)
            return torch_npu.npu_quant_matmul(xq, prepared["npu_weight"], prepared["weight_scale"],
                                              pertoken_scale=token_scale.flatten(),
                                              bias=self.bias.to(x.dtype) if self.bias is not None else None,
                                              output_dtype=x.dtype)
        xq = torch_npu.npu_quantize(x, prepared["input_scale_reciprocal"], prepared["input_offset"], torch.qint8, -1,
                                    False)
        return torch_npu.npu_quant_matmul(xq, prepared["npu_weight"], prepared["deq_scale"], bias=self.quant_bias,
                                          output_dtype=x.dtype)
