"""The quantized layout's names and description file, msModelSlim v1 as vllm-ascend reads it
(`--quantization ascend`): `quant_model_weights*.safetensors` (an index past one shard),
and `quant_model_description.json` naming every tensor's type (`W8A16`/`W8A8` for each tensor of a
quantized linear, bias included; `W8A8_DYNAMIC` for its weight, scale and offset, its bias `FLOAT`
as msModelSlim's saver writes it; `FLOAT` for the rest) plus `model_quant_type`, `version`,
`group_size`. Names stay the checkpoint's own, unfused where the checkpoint is.

Which type each linear gets is decided here, by role (`QuantOptions.type_of`):
- `w8a16`: the dense linears W8A16. vllm-ascend registers W8A16 for linear layers only, not for
  fused MoE layers, so routed experts are refused (unless kept float).
- `w8a8-dynamic`: every linear, routed and shared experts included, W8A8_DYNAMIC (activations
  quantized per token at run time: no calibration).
- `w8a8`: msModelSlim's Qwen3-MoE recipe (`mix_cfg: {"*.mlp.*": w8a8_dynamic, "*": w8a8}`): dense
  linears W8A8 (static, calibrated), routed and shared experts W8A8_DYNAMIC — vllm-ascend has no
  static W8A8 method for MoE layers.
Routers and the shared-expert gate stay FLOAT (msModelSlim's `disable_names`), as do norms and
embeddings. The LM head stays FLOAT too (msModelSlim's `disable_last_linear`, default True) unless
`--quantize-lm-head`: vllm-ascend builds `lm_head` as a ParallelLMHead whose method is
`AscendEmbeddingMethod` (the linear scheme's weights and `apply`), so an int8 head loads and runs. The
embedding lookup cannot be int8 — `AscendEmbeddingMethod` has no `embedding()` — and a tied head is
replaced by the embedding's float weight (`ParallelLMHead.tie_weights`, and `lm_head.*` is skipped at
load), so a tied model's head is written as its own int8 `lm_head` and the config untied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ascend_common.errors import UserError

from .arch import EXPERT_ROLES, SHARED_EXPERT_ROLES
from .layout_names import QUANT_DESCRIPTION_NAME

if TYPE_CHECKING:  # torch stays unimported until tensors are planned: options are checked without it
    from .arch import ArchSpec
    from .safetensors_writer import PlannedTensor

DESCRIPTION_VERSION = "1.0.0"
#: `--quantize` choices and the msModelSlim type each names.
QUANT_TYPES = {"w8a16": "W8A16", "w8a8": "W8A8", "w8a8-dynamic": "W8A8_DYNAMIC"}
FLOAT = "FLOAT"
#: msModelSlim's `QUANT_TYPE_PRIORITY` (its AscendV1Saver), the types this converter writes: a mixed
#: model's `model_quant_type` is the highest of its types (W8A8 attention + W8A8_DYNAMIC experts: W8A8).
QUANT_TYPE_PRIORITY = ("FLOAT", "W8A16", "W8A8_DYNAMIC", "W8A8")

#: Spec roles of the linear weights that are quantized (embeddings, norms and lm_head stay FLOAT),
#: and of their biases, which stay float but belong to the quantized layer.
#: MLA's projections are quantized like q/k/v but for `kv_b`: vllm-ascend's MLA reads kv_b_proj's raw
#: weight to absorb it into the query and output (mla_v1.py asserts it has no quant method), and every
#: msModelSlim DeepSeek recipe excludes it, so it stays FLOAT. An MTP layer's own parts (eh_proj, its
#: norms and head) stay FLOAT too: vLLM builds eh_proj as a plain Linear and never looks them up.
LINEAR_ROLES = frozenset({"q", "k", "v", "o", "gate", "up", "down", "qkv", "gate_up", "mla_q", "q_a", "q_b", "kv_a"})
LINEAR_BIAS_ROLES = frozenset({f"{r}_bias" for r in LINEAR_ROLES})
#: Linear weights of mixture-of-experts layers: each routed expert's and the shared expert's. The
#: router and the shared expert's sigmoid gate are not among them: they stay FLOAT.
EXPERT_LINEAR_ROLES = frozenset(EXPERT_ROLES + SHARED_EXPERT_ROLES)
#: Every role --keep-float may name.
QUANTIZABLE_ROLES = LINEAR_ROLES | EXPERT_LINEAR_ROLES
#: Roles vllm-ascend loads as one module, so they must share one type (its packed_modules_mapping:
#: qkv_proj, gate_up_proj, `experts` = expert 0's gate/up/down standing for the whole layer, and
#: DeepSeek's fused_qkv_a_proj = q_a_proj + kv_a_proj_with_mqa).
FUSED_GROUPS: tuple[tuple[str, ...], ...] = (("q", "k", "v"), ("gate", "up"), EXPERT_ROLES,
                                             ("shared_gate", "shared_up"), ("q_a", "kv_a"))


@dataclass(frozen=True)
class QuantOptions:
    """`--quantize w8a16 [--group-size G] [--asymmetric]`, `--quantize w8a8 [--calib FILE]` or
    `--quantize w8a8-dynamic`."""

    kind: str  # "w8a16", "w8a8" or "w8a8-dynamic"
    group_size: int = 0  # 0: per output channel
    symmetric: bool = True
    calib: str | None = None  # w8a8: the calibration text file (None: the built-in texts)
    keep_float: tuple[str, ...] = ()  # linear roles left FLOAT (msModelSlim's disable_names, by role)
    smooth_alpha: float = 0.0  # w8a8: SmoothQuant's migration strength (0: no smoothing)
    lm_head: bool = False  # --quantize-lm-head: the head in the model's type too (w8a16, w8a8-dynamic)

    @property
    def quant_type(self) -> str:
        """The type `--quantize` names (a model may mix it with others: see `type_of`)."""
        return QUANT_TYPES[self.kind]

    def type_of(self, role: str) -> str | None:
        """The msModelSlim type a linear weight of `role` is written in; None: it stays FLOAT."""
        if role == "lm_head":
            return QUANT_TYPES[self.kind] if self.lm_head else None
        if role not in QUANTIZABLE_ROLES or role in self.keep_float:
            return None
        if role in EXPERT_LINEAR_ROLES and self.kind == "w8a8":
            return "W8A8_DYNAMIC"  # the Qwen3-MoE recipe: experts dynamic, vllm-ascend has no static MoE W8A8
        return QUANT_TYPES[self.kind]

    def recorded(self) -> dict:
        extra = {"calib": self.calib or "builtin", "smooth_alpha": self.smooth_alpha} if self.kind == "w8a8" else {}
        head = {"quantize_lm_head": True} if self.lm_head else {}  # absent when off: older manifests still match
        return {"quantize": self.kind, "group_size": self.group_size, "symmetric": self.symmetric,
                "keep_float": list(self.keep_float), **head, **extra}


#: What --keep-float means when it is not given: W8A8 leaves down_proj float, whose input (the
#: SwiGLU output) carries activations too large for one static int8 scale (see smoothing.py).
#: W8A8_DYNAMIC scales each token's activations on its own, so nothing needs to stay float.
DEFAULT_KEEP_FLOAT = {"w8a16": (), "w8a8": ("down",), "w8a8-dynamic": ()}
#: What --smooth-alpha means when it is not given (W8A8; see smoothing.py).
DEFAULT_ALPHA = 0.5


def quantized_parts(name: str, shape: tuple[int, ...], quant: QuantOptions, quant_type: str, model_dtype: str
                    ) -> list[PlannedTensor]:
    """W8A16: the int8 weight and its `weight_scale`/`weight_offset` (fp32, [out, 1] or [out, in/g]).
    W8A8_DYNAMIC: the same three, per channel and symmetric (offset 0), as msModelSlim's saver writes
    them (`on_w8a8_dynamic_per_channel`). W8A8 adds `input_scale`/`input_offset` (fp32 [1]),
    `deq_scale` ([out]: int64 holding fp32 bits for an fp16 model, fp32 otherwise) and `quant_bias`
    (int32 [out]); its weight_scale/offset are per channel (vllm-ascend declares them for W8A8 layers
    too)."""
    from .safetensors_writer import PlannedTensor

    out, width = shape
    groups = width // quant.group_size if quant.group_size else 1
    stem = name.removesuffix(".weight")
    parts = [PlannedTensor(name, "int8", shape), PlannedTensor(f"{stem}.weight_scale", "float32", (out, groups)),
             PlannedTensor(f"{stem}.weight_offset", "float32", (out, groups))]
    if quant_type == "W8A8":
        parts += [PlannedTensor(f"{stem}.input_scale", "float32", (1,)),
                  PlannedTensor(f"{stem}.input_offset", "float32", (1,)),
                  PlannedTensor(f"{stem}.deq_scale", "int64" if model_dtype == "float16" else "float32", (out,)),
                  PlannedTensor(f"{stem}.quant_bias", "int32", (out,))]
    return parts


def bias_type(linear_type: str | None) -> str:
    """The description's type of a linear's bias: msModelSlim's v1 saver writes a W8A8_DYNAMIC
    layer's bias as FLOAT; this converter's W8A16/W8A8 layers list it under their own type, as the
    msModelSlim v0 descriptions vllm-ascend was first written against do."""
    return FLOAT if linear_type in (None, "W8A8_DYNAMIC") else linear_type


def model_quant_type(types: dict[str, str], options: QuantOptions) -> str:
    """What msModelSlim's saver writes as `model_quant_type`: the highest-priority type among the
    tensors (W8A8 over W8A8_DYNAMIC over W8A16 over FLOAT); `--quantize`'s own when nothing is quantized."""
    found = [t for t in set(types.values()) if t != FLOAT]
    return max(found, key=QUANT_TYPE_PRIORITY.index) if found else options.quant_type


def description(types: dict[str, str], options: QuantOptions) -> dict:
    """Every tensor name → its type, then the model-level keys."""
    return {**dict(sorted(types.items())), "model_quant_type": model_quant_type(types, options),
            "version": DESCRIPTION_VERSION, "group_size": options.group_size}


def read_description(model_dir: Path) -> dict | None:
    """A converted directory's `quant_model_description.json` (None without one). One reader for
    verify, the runtime's loader and check_ops, so a broken file is the same one-line error in each."""
    path = Path(model_dir) / QUANT_DESCRIPTION_NAME
    if not path.is_file():
        return None
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable quantization description ({exc})") from None
    if not isinstance(description, dict):
        raise UserError(f"{path}: not a quantization description (a JSON object of tensor name -> type)")
    return description


def check_description(description: dict, spec: ArchSpec, where: str) -> None:
    """Refuse a description vllm-ascend would refuse to load: every linear weight of a fused module
    (q/k/v, gate/up, the shared expert's gate/up, an expert's gate/up/down) and every expert of one
    layer in one quant type (vllm-ascend builds one fused MoE method per layer from expert 0's type,
    and refuses fused shards that differ). `where` names the description in the error."""
    groups: dict[tuple, dict[str, str]] = {}  # (layer, group, expert) -> role -> type
    for name, qtype in description.items():
        if not name.endswith(".weight") or not isinstance(qtype, str):
            continue
        match = spec.role_of(name)
        if match is None:
            continue
        group = next((g for g in FUSED_GROUPS if match.role in g), None)
        if group is not None:
            groups.setdefault((match.layer, group, match.expert), {})[match.role] = qtype
    def order(key: tuple) -> tuple:
        layer, group, expert = key
        return layer or 0, FUSED_GROUPS.index(group), expert or 0

    for (layer, group, expert), types in sorted(groups.items(), key=lambda kv: order(kv[0])):
        if len(set(types.values())) > 1:
            whose = f"layer {layer} expert {expert}" if expert is not None else f"layer {layer}"
            listing = ", ".join(f"{role} {types[role]}" for role in group if role in types)
            raise UserError(f"{where}: {whose} mixes quant types in one fused module: {listing}; vllm-ascend "
                            f"needs one type for all parts of a fused module")
    by_layer: dict[int | None, dict[int, str]] = {}
    for (layer, group, expert), types in groups.items():
        if expert is not None:
            by_layer.setdefault(layer, {})[expert] = next(iter(types.values()))
    for layer, experts in sorted(by_layer.items(), key=lambda kv: kv[0] or 0):
        if len(set(experts.values())) > 1:
            first = experts[min(experts)]
            odd = [e for e in sorted(experts) if experts[e] != first]
            listing = ", ".join(f"expert {e} {experts[e]}" for e in [min(experts), *odd])
            raise UserError(f"{where}: layer {layer} experts mix quant types: {listing}; vllm-ascend needs one "
                            f"type for all experts of a layer")
