"""The quantized layout's names and description file, msModelSlim v1 as vllm-ascend reads it
(`--quantization ascend`): `quant_model_weights*.safetensors` (an index past one shard),
and `quant_model_description.json` naming every tensor's type (`W8A16`/`W8A8` for each tensor of a
quantized linear, bias included; `FLOAT` for the rest) plus `model_quant_type`, `version`,
`group_size`. Names stay the checkpoint's own, unfused where the checkpoint is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays unimported until tensors are planned: options are checked without it
    from .safetensors_writer import PlannedTensor

DESCRIPTION_VERSION = "1.0.0"
QUANT_TYPES = {"w8a16": "W8A16", "w8a8": "W8A8"}

#: Spec roles of the linear weights that are quantized (embeddings, norms and lm_head stay FLOAT),
#: and of their biases, which stay float but belong to the quantized layer.
LINEAR_ROLES = frozenset({"q", "k", "v", "o", "gate", "up", "down", "qkv", "gate_up"})
LINEAR_BIAS_ROLES = frozenset({f"{r}_bias" for r in LINEAR_ROLES})


@dataclass(frozen=True)
class QuantOptions:
    """`--quantize w8a16 [--group-size G] [--asymmetric]` or `--quantize w8a8 [--calib FILE]`."""

    kind: str  # "w8a16" or "w8a8"
    group_size: int = 0  # 0: per output channel
    symmetric: bool = True
    calib: str | None = None  # w8a8: the calibration text file (None: the built-in texts)
    keep_float: tuple[str, ...] = ()  # linear roles left FLOAT (msModelSlim's disable_names, by role)
    smooth_alpha: float = 0.0  # w8a8: SmoothQuant's migration strength (0: no smoothing)

    @property
    def quant_type(self) -> str:
        return QUANT_TYPES[self.kind]

    def recorded(self) -> dict:
        extra = {"calib": self.calib or "builtin", "smooth_alpha": self.smooth_alpha} if self.kind == "w8a8" else {}
        return {"quantize": self.kind, "group_size": self.group_size, "symmetric": self.symmetric,
                "keep_float": list(self.keep_float), **extra}


#: What --keep-float means when it is not given: W8A8 leaves down_proj float, whose input (the
#: SwiGLU output) carries activations too large for one static int8 scale (see smoothing.py).
DEFAULT_KEEP_FLOAT = {"w8a16": (), "w8a8": ("down",)}
#: What --smooth-alpha means when it is not given (W8A8; see smoothing.py).
DEFAULT_ALPHA = 0.5


def quantized_parts(name: str, shape: tuple[int, ...], quant: QuantOptions, model_dtype: str) -> list[PlannedTensor]:
    """W8A16: the int8 weight and its `weight_scale`/`weight_offset` (fp32, [out, 1] or [out, in/g]).
    W8A8 adds `input_scale`/`input_offset` (fp32 [1]), `deq_scale` ([out]: int64 holding fp32 bits
    for an fp16 model, fp32 otherwise) and `quant_bias` (int32 [out]); its weight_scale/offset are
    per channel (vllm-ascend declares them for W8A8 layers too)."""
    from .safetensors_writer import PlannedTensor

    out, width = shape
    groups = width // quant.group_size if quant.group_size else 1
    stem = name.removesuffix(".weight")
    parts = [PlannedTensor(name, "int8", shape), PlannedTensor(f"{stem}.weight_scale", "float32", (out, groups)),
             PlannedTensor(f"{stem}.weight_offset", "float32", (out, groups))]
    if quant.kind == "w8a8":
        parts += [PlannedTensor(f"{stem}.input_scale", "float32", (1,)),
                  PlannedTensor(f"{stem}.input_offset", "float32", (1,)),
                  PlannedTensor(f"{stem}.deq_scale", "int64" if model_dtype == "float16" else "float32", (out,)),
                  PlannedTensor(f"{stem}.quant_bias", "int32", (out,))]
    return parts


def description(types: dict[str, str], options: QuantOptions) -> dict:
    """Every tensor name → its type, then the model-level keys."""
    return {**dict(sorted(types.items())), "model_quant_type": options.quant_type, "version": DESCRIPTION_VERSION,
            "group_size": options.group_size}
