"""Architecture specs: each model family is a JSON file in `specs/`, not a branch in code.

A spec names the HF tensor of every role (embed, q, k, v, fused qkv, gate, up, ...), with `{L}` for
the layer index, the config keys where a family spells them differently, and flags such as
Baichuan2's NormHead. `convert` uses it to refuse unknown architectures and unknown tensors, to tag
every tensor with its role in the manifest, and to give a canonical (unfused, Llama-named) view that
the runtime, the packed layout and the logits check share.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from ascend_common.errors import UserError

# Canonical per-layer names: what the unfused roles are called in the Llama/Qwen2/Qwen3 layout.
CANONICAL_NAMES: dict[str, str] = {
    "embed": "model.embed_tokens.weight",
    "final_norm": "model.norm.weight",
    "lm_head": "lm_head.weight",
    "attn_norm": "model.layers.{L}.input_layernorm.weight",
    "mlp_norm": "model.layers.{L}.post_attention_layernorm.weight",
    "q": "model.layers.{L}.self_attn.q_proj.weight",
    "k": "model.layers.{L}.self_attn.k_proj.weight",
    "v": "model.layers.{L}.self_attn.v_proj.weight",
    "o": "model.layers.{L}.self_attn.o_proj.weight",
    "q_bias": "model.layers.{L}.self_attn.q_proj.bias",
    "k_bias": "model.layers.{L}.self_attn.k_proj.bias",
    "v_bias": "model.layers.{L}.self_attn.v_proj.bias",
    "o_bias": "model.layers.{L}.self_attn.o_proj.bias",
    "q_norm": "model.layers.{L}.self_attn.q_norm.weight",
    "k_norm": "model.layers.{L}.self_attn.k_norm.weight",
    "gate": "model.layers.{L}.mlp.gate_proj.weight",
    "up": "model.layers.{L}.mlp.up_proj.weight",
    "down": "model.layers.{L}.mlp.down_proj.weight",
    "gate_bias": "model.layers.{L}.mlp.gate_proj.bias",
    "up_bias": "model.layers.{L}.mlp.up_proj.bias",
    "down_bias": "model.layers.{L}.mlp.down_proj.bias",
}

# Fused roles and the unfused roles they split into, along dim 0, in order.
FUSED_ROLES: dict[str, tuple[str, ...]] = {
    "qkv": ("q", "k", "v"),
    "qkv_bias": ("q_bias", "k_bias", "v_bias"),
    "gate_up": ("gate", "up"),
}

# Canonical config keys and where HF configs keep them, first match wins.
DEFAULT_CONFIG_KEYS: dict[str, list[str]] = {
    "hidden_size": ["hidden_size"],
    "num_hidden_layers": ["num_hidden_layers"],
    "num_attention_heads": ["num_attention_heads"],
    "num_key_value_heads": ["num_key_value_heads"],
    "head_dim": ["head_dim"],
    "intermediate_size": ["intermediate_size"],
    "rms_norm_eps": ["rms_norm_eps"],
    "rope_theta": ["rope_theta", "rope_parameters.rope_theta"],
    "vocab_size": ["vocab_size"],
    "max_position_embeddings": ["max_position_embeddings"],
    "tie_word_embeddings": ["tie_word_embeddings"],
}
CONFIG_DEFAULTS: dict[str, Any] = {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
REQUIRED_CONFIG = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def _lookup(config: dict, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


@dataclass(frozen=True)
class ArchSpec:
    family: str
    description: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    tensors: dict[str, str]
    ignore: tuple[str, ...] = ()
    gguf_architectures: tuple[str, ...] = ()
    gguf_unpermute_qk: bool = False
    lm_head_norm: bool = False
    reference_architecture: str | None = None
    config_keys: dict[str, Any] = field(default_factory=dict)
    origin: str = ""

    @classmethod
    def from_dict(cls, data: dict, origin: str) -> "ArchSpec":
        try:
            gguf = data.get("gguf", {})
            spec = cls(
                family=str(data["family"]),
                description=str(data.get("description", "")),
                architectures=tuple(data["architectures"]),
                model_types=tuple(data.get("model_types", ())),
                tensors=dict(data["tensors"]),
                ignore=tuple(data.get("ignore", ())),
                gguf_architectures=tuple(gguf.get("architectures", ())),
                gguf_unpermute_qk=bool(gguf.get("unpermute_qk", False)),
                lm_head_norm=bool(data.get("lm_head_norm", False)),
                reference_architecture=data.get("reference_architecture"),
                config_keys=dict(data.get("config", {})),
                origin=origin,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{origin}: invalid architecture spec (missing or malformed field {exc})") from None
        unknown = set(spec.tensors) - set(CANONICAL_NAMES) - set(FUSED_ROLES)
        if unknown:
            raise UserError(f"{origin}: unknown tensor role(s) {sorted(unknown)} (known: "
                            f"{', '.join(sorted(set(CANONICAL_NAMES) | set(FUSED_ROLES)))})")
        return spec

    @cached_property
    def _patterns(self) -> list[tuple[re.Pattern[str], str]]:
        return [(_compile(p), role) for role, p in self.tensors.items()]

    @cached_property
    def _ignore_patterns(self) -> list[re.Pattern[str]]:
        return [_compile(p) for p in self.ignore]

    def role_of(self, name: str) -> tuple[str, int | None] | None:
        """(role, layer) of an HF tensor name, or None if the spec does not describe it."""
        for pattern, role in self._patterns:
            m = pattern.fullmatch(name)
            if m:
                layer = m.groupdict().get("L")
                return role, int(layer) if layer is not None else None
        return None

    def is_ignored(self, name: str) -> bool:
        return any(p.fullmatch(name) for p in self._ignore_patterns)

    def canonical_config(self, config: dict, where: str = "config.json") -> dict[str, Any]:
        """The model's shape in canonical keys, whatever the family calls them."""
        out: dict[str, Any] = {}
        for key, paths in DEFAULT_CONFIG_KEYS.items():
            rule = self.config_keys.get(key, paths)
            scale = 1.0
            if isinstance(rule, dict):
                scale = float(rule.get("scale", 1.0))
                rule = [rule["key"]]
            value = next((v for v in (_lookup(config, p) for p in rule) if v is not None), None)
            if value is None:
                value = CONFIG_DEFAULTS.get(key)
            elif scale != 1.0:
                value = int(value * scale)
            out[key] = value
        missing = [k for k in REQUIRED_CONFIG if not isinstance(out[k], int) or isinstance(out[k], bool)]
        if missing:
            raise UserError(f"{where}: missing or non-integer field(s) {', '.join(missing)} for a {self.family} model")
        if out["num_key_value_heads"] is None:
            out["num_key_value_heads"] = out["num_attention_heads"]
        if out["head_dim"] is None:
            out["head_dim"] = out["hidden_size"] // out["num_attention_heads"]
        return out

    def split_sizes(self, fused_role: str, cfg: dict[str, Any]) -> list[int]:
        """Row counts of the parts of a fused tensor, from the canonical config."""
        if fused_role in ("qkv", "qkv_bias"):
            q = cfg["num_attention_heads"] * cfg["head_dim"]
            kv = cfg["num_key_value_heads"] * cfg["head_dim"]
            return [q, kv, kv]
        inter = cfg["intermediate_size"]
        return [inter, inter]


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(re.escape(pattern).replace(re.escape("{L}"), r"(?P<L>\d+)"))


def canonical_name(role: str, layer: int | None) -> str:
    name = CANONICAL_NAMES[role]
    return name.replace("{L}", str(layer)) if layer is not None else name


def builtin_specs() -> list[ArchSpec]:
    root = resources.files("ascend_convert") / "specs"
    specs = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            specs.append(ArchSpec.from_dict(json.loads(entry.read_text()), origin=f"spec {entry.name}"))
    return specs


def load_spec_file(path: Path) -> ArchSpec:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: architecture spec file not found") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a valid JSON architecture spec ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: an architecture spec must be a JSON object")
    return ArchSpec.from_dict(data, origin=str(path))


def find_spec(config: dict, extra: list[ArchSpec] | None = None, where: str = "config.json") -> ArchSpec:
    """The spec for a config: user specs first (so they can override), by architecture, then model_type."""
    specs = list(extra or []) + builtin_specs()
    archs = config.get("architectures") or []
    for spec in specs:
        if any(a in spec.architectures for a in archs):
            return spec
    model_type = config.get("model_type")
    if not archs:
        for spec in specs:
            if model_type in spec.model_types:
                return spec
    supported = ", ".join(a for s in specs for a in s.architectures)
    named = ", ".join(archs) if archs else f"model_type {model_type!r}"
    raise UserError(f"{where}: unsupported architecture {named} (supported: {supported}; "
                    f"add one with --arch-spec FILE)")


def find_spec_for_gguf(gguf_arch: str, model_name: str, extra: list[ArchSpec] | None = None) -> ArchSpec:
    specs = list(extra or []) + builtin_specs()
    # llama.cpp files Mistral models under the llama architecture; transformers tells them apart by name.
    if gguf_arch == "llama" and "mistral" in model_name.lower():
        gguf_arch = "mistral"
    for spec in specs:
        if gguf_arch in spec.gguf_architectures:
            return spec
    supported = ", ".join(a for s in specs for a in s.gguf_architectures)
    raise UserError(f"GGUF architecture {gguf_arch!r} is not supported (supported: {supported})")


def canonical_tensors(spec: ArchSpec, cfg: dict[str, Any], role: str, layer: int | None, tensor):
    """The unfused, Llama-named tensors a source tensor stands for: W_pack/c_attn/qkv_proj split into
    q, k, v; gate_up_proj into gate, up; Baichuan2's NormHead applied (rows L2-normalised)."""
    import torch

    if role in FUSED_ROLES:
        parts = torch.split(tensor, spec.split_sizes(role, cfg), dim=0)
        return [(canonical_name(r, layer), p.contiguous()) for r, p in zip(FUSED_ROLES[role], parts)]
    if role == "lm_head" and spec.lm_head_norm:
        normed = torch.nn.functional.normalize(tensor.float(), dim=-1).to(tensor.dtype)
        return [(canonical_name(role, layer), normed)]
    return [(canonical_name(role, layer), tensor)]
