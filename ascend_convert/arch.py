"""Architecture specs: each model family is a JSON file in `specs/`, not a branch in code.

A spec names the HF tensor of every role (embed, q, k, v, fused qkv, gate, up, ...), with `{L}` for
the layer index and `{E}` for the expert index of a mixture-of-experts layer, the config keys where a
family spells them differently, and flags such as Baichuan2's NormHead. Two more tables serve MoE
checkpoints saved from transformers v5's in-memory modules: `fused_experts` (a layer's experts as one
3-D parameter, `mlp.experts.gate_up_proj` [E, 2I, H], which readers split into the per-expert Hub
names the spec's roles give) and `aliases` (v5 names of single tensors, e.g. Mixtral's router).

`convert` uses a spec to refuse unknown architectures and unknown tensors, to tag every tensor with
its role in the manifest, and to give a canonical (unfused, Llama/Qwen-named) view that the runtime,
the packed layout and the logits check share.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

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
    # mixture of experts: the router, each routed expert, the shared expert and its sigmoid gate
    "router": "model.layers.{L}.mlp.gate.weight",
    "expert_gate": "model.layers.{L}.mlp.experts.{E}.gate_proj.weight",
    "expert_up": "model.layers.{L}.mlp.experts.{E}.up_proj.weight",
    "expert_down": "model.layers.{L}.mlp.experts.{E}.down_proj.weight",
    "shared_gate": "model.layers.{L}.mlp.shared_expert.gate_proj.weight",
    "shared_up": "model.layers.{L}.mlp.shared_expert.up_proj.weight",
    "shared_down": "model.layers.{L}.mlp.shared_expert.down_proj.weight",
    "shared_expert_gate": "model.layers.{L}.mlp.shared_expert_gate.weight",
    # DeepSeek's router bias: added to the scores when experts are chosen, not to their weights
    "router_bias": "model.layers.{L}.mlp.gate.e_score_correction_bias",
    # multi-head latent attention (DeepSeek-V2/V3): the query through a low-rank pair (q_a, its norm,
    # q_b) or one projection (V2-Lite's q_proj, canonically `mla_q_proj`: it is not a q/k/v part);
    # keys and values through the compressed latent (kv_a: latent + rope key, its norm, kv_b)
    "mla_q": "model.layers.{L}.self_attn.mla_q_proj.weight",
    "q_a": "model.layers.{L}.self_attn.q_a_proj.weight",
    "q_a_norm": "model.layers.{L}.self_attn.q_a_layernorm.weight",
    "q_b": "model.layers.{L}.self_attn.q_b_proj.weight",
    "kv_a": "model.layers.{L}.self_attn.kv_a_proj_with_mqa.weight",
    "kv_a_norm": "model.layers.{L}.self_attn.kv_a_layernorm.weight",
    "kv_b": "model.layers.{L}.self_attn.kv_b_proj.weight",
    # a multi-token-prediction layer's own parts (layer num_hidden_layers + i; its decoder parts use
    # the ordinary roles): the two norms, the projection of [embedding; hidden], its head
    "mtp_enorm": "model.layers.{L}.enorm.weight",
    "mtp_hnorm": "model.layers.{L}.hnorm.weight",
    "mtp_eh_proj": "model.layers.{L}.eh_proj.weight",
    "mtp_embed": "model.layers.{L}.embed_tokens.weight",
    "mtp_head_norm": "model.layers.{L}.shared_head.norm.weight",
    "mtp_head": "model.layers.{L}.shared_head.head.weight",
}

#: Roles of a multi-head latent attention layer (a family with `kv_a` is MLA).
MLA_ROLES: tuple[str, ...] = ("mla_q", "q_a", "q_a_norm", "q_b", "kv_a", "kv_a_norm", "kv_b")
#: Roles only a multi-token-prediction layer has.
MTP_ROLES: tuple[str, ...] = ("mtp_enorm", "mtp_hnorm", "mtp_eh_proj", "mtp_embed", "mtp_head_norm", "mtp_head")
#: Roles written in float32 whatever the SoC's dtype: the router's correction bias decides which
#: experts a token gets by differences far below fp16's resolution near 1 (transformers keeps it fp32,
#: `_keep_in_fp32_modules_strict`; so do vLLM's DeepSeek layers).
FP32_ROLES: frozenset[str] = frozenset({"router_bias"})

#: Roles of one routed expert (each named with `{E}`), in the order a layer's experts are checked.
EXPERT_ROLES: tuple[str, ...] = ("expert_gate", "expert_up", "expert_down")
#: Roles of an MoE layer's shared expert.
SHARED_EXPERT_ROLES: tuple[str, ...] = ("shared_gate", "shared_up", "shared_down")

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
    # mixture of experts (absent: a dense model)
    "num_experts": ["num_experts", "num_local_experts", "n_routed_experts"],
    "num_experts_per_tok": ["num_experts_per_tok"],
    "moe_intermediate_size": ["moe_intermediate_size"],
    "shared_expert_intermediate_size": ["shared_expert_intermediate_size"],
    "norm_topk_prob": ["norm_topk_prob"],
    "decoder_sparse_step": ["decoder_sparse_step"],
    "mlp_only_layers": ["mlp_only_layers"],
    # DeepSeek-style mixture of experts (DeepSeek-V2/V3, GLM-4.5): dense first layers, shared experts
    # as a multiple of the expert width, routing within groups, a scaling of the routing weights
    "first_k_dense_replace": ["first_k_dense_replace"],
    "n_shared_experts": ["n_shared_experts"],
    "n_group": ["n_group"],
    "topk_group": ["topk_group"],
    "topk_method": ["topk_method"],
    "scoring_func": ["scoring_func"],
    "routed_scaling_factor": ["routed_scaling_factor"],
    # multi-head latent attention
    "q_lora_rank": ["q_lora_rank"],
    "kv_lora_rank": ["kv_lora_rank"],
    "qk_nope_head_dim": ["qk_nope_head_dim"],
    "qk_rope_head_dim": ["qk_rope_head_dim"],
    "v_head_dim": ["v_head_dim"],
    "rope_interleave": ["rope_interleave"],
    "partial_rotary_factor": ["partial_rotary_factor", "rope_parameters.partial_rotary_factor",
                              "rope_scaling.partial_rotary_factor"],
    # multi-token prediction: extra layers after the last decoder layer (the HF class does not load them)
    "num_nextn_predict_layers": ["num_nextn_predict_layers"],
}
CONFIG_DEFAULTS: dict[str, Any] = {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
                                   "norm_topk_prob": False, "decoder_sparse_step": 1, "mlp_only_layers": [],
                                   "first_k_dense_replace": 0, "routed_scaling_factor": 1.0,
                                   "scoring_func": "softmax", "topk_method": "greedy", "partial_rotary_factor": 1.0,
                                   "num_nextn_predict_layers": 0}
#: `topk_method`s that pick experts only within the best `topk_group` of `n_group` groups.
GROUPED_TOPK = ("group_limited_greedy", "noaux_tc")
#: Config keys of an MLA family that must be positive integers.
MLA_CONFIG = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
REQUIRED_CONFIG = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def _lookup(config: dict, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


class RoleMatch(NamedTuple):
    """What a tensor name is in a family: its role, its layer and, for a routed expert, its expert."""

    role: str
    layer: int | None
    expert: int | None = None


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
    config_defaults: dict[str, Any] = field(default_factory=dict)
    fused_experts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
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
                config_defaults=dict(data.get("config_defaults", {})),
                fused_experts={k: tuple(v) for k, v in data.get("fused_experts", {}).items()},
                aliases=dict(data.get("aliases", {})),
                origin=origin,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{origin}: invalid architecture spec (missing or malformed field {exc})") from None
        known = set(CANONICAL_NAMES) | set(FUSED_ROLES)
        unknown = (set(spec.tensors) | set(spec.aliases.values())
                   | {r for roles in spec.fused_experts.values() for r in roles}) - known
        if unknown:
            raise UserError(f"{origin}: unknown tensor role(s) {sorted(unknown)} (known: "
                            f"{', '.join(sorted(known))})")
        for roles in spec.fused_experts.values():
            missing = [r for r in roles if r not in EXPERT_ROLES or r not in spec.tensors]
            if missing:
                raise UserError(f"{origin}: fused_experts parts {missing} must be expert roles the spec names")
        return spec

    @cached_property
    def _patterns(self) -> list[tuple[re.Pattern[str], str]]:
        named = [(_compile(p), role) for role, p in self.tensors.items()]
        return named + [(_compile(p), role) for p, role in self.aliases.items()]

    @cached_property
    def _ignore_patterns(self) -> list[re.Pattern[str]]:
        return [_compile(p) for p in self.ignore]

    @property
    def is_moe(self) -> bool:
        return "router" in self.tensors

    @property
    def is_mla(self) -> bool:
        """Multi-head latent attention (DeepSeek-V2/V3): the family names a compressed kv projection."""
        return "kv_a" in self.tensors

    def role_of(self, name: str) -> RoleMatch | None:
        """(role, layer, expert) of an HF tensor name (a v5 alias included), or None if the spec
        does not describe it."""
        for pattern, role in self._patterns:
            m = pattern.fullmatch(name)
            if m:
                groups = m.groupdict()
                layer, expert = groups.get("L"), groups.get("E")
                return RoleMatch(role, int(layer) if layer is not None else None,
                                 int(expert) if expert is not None else None)
        return None

    def name_of(self, role: str, layer: int | None = None, expert: int | None = None) -> str:
        """The Hub name the family gives a role (what `convert` writes)."""
        return _format(self.tensors[role], layer, expert)

    def fused_expert_of(self, name: str) -> tuple[tuple[str, ...], int] | None:
        """(expert roles, layer) of a v5 fused 3-D experts parameter ([E, rows, cols], parts along
        dim 1 in the roles' order), or None."""
        for pattern, roles in self._fused_patterns:
            m = pattern.fullmatch(name)
            if m:
                return roles, int(m.group("L"))
        return None

    @cached_property
    def _fused_patterns(self) -> list[tuple[re.Pattern[str], tuple[str, ...]]]:
        return [(_compile(p), roles) for p, roles in self.fused_experts.items()]

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
                value = self.config_defaults.get(key, CONFIG_DEFAULTS.get(key))
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
        mtp = out["num_nextn_predict_layers"]
        if not isinstance(mtp, int) or isinstance(mtp, bool) or mtp < 0:
            raise UserError(f"{where}: num_nextn_predict_layers must be a non-negative integer, not {mtp!r}")
        if self.is_moe:
            if out["shared_expert_intermediate_size"] is None and isinstance(out["n_shared_experts"], int):
                out["shared_expert_intermediate_size"] = out["n_shared_experts"] * (out["moe_intermediate_size"] or 0)
            _check_moe_config(out, self.family, where)
        if self.is_mla:
            _check_mla_config(out, self.family, where)
        return out

    def moe_layers(self, cfg: dict[str, Any], with_mtp: bool = False) -> list[bool]:
        """Which layers are mixture-of-experts (the rest have the dense MLP), by the canonical
        config: Qwen's `mlp_only_layers` and `decoder_sparse_step`, DeepSeek's `first_k_dense_replace`;
        every layer for Mixtral. `with_mtp`: the multi-token-prediction layers after the decoder's too."""
        count = cfg["num_hidden_layers"] + (mtp_layer_count(cfg) if with_mtp else 0)
        if not self.is_moe:
            return [False] * count
        dense, step = set(cfg["mlp_only_layers"] or ()), cfg["decoder_sparse_step"] or 1
        first = cfg["first_k_dense_replace"] or 0
        return [i >= first and i not in dense and (i + 1) % step == 0 for i in range(count)]

    def split_sizes(self, fused_role: str, cfg: dict[str, Any]) -> list[int]:
        """Row counts of the parts of a fused tensor, from the canonical config."""
        if fused_role in ("qkv", "qkv_bias"):
            q = cfg["num_attention_heads"] * cfg["head_dim"]
            kv = cfg["num_key_value_heads"] * cfg["head_dim"]
            return [q, kv, kv]
        inter = cfg["intermediate_size"]
        return [inter, inter]


def mtp_layer_count(cfg: dict[str, Any]) -> int:
    """How many multi-token-prediction layers follow the decoder's (`num_nextn_predict_layers`,
    checked by `canonical_config`)."""
    return cfg.get("num_nextn_predict_layers") or 0


def is_mtp_layer(match: RoleMatch, cfg: dict[str, Any]) -> bool:
    """Whether a tensor belongs to a multi-token-prediction layer (one after the decoder's layers):
    converted or dropped by `convert --mtp`, never served by the runtime."""
    return match.layer is not None and match.layer >= cfg["num_hidden_layers"]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_moe_config(cfg: dict[str, Any], family: str, where: str) -> None:
    experts, top_k = cfg["num_experts"], cfg["num_experts_per_tok"]
    for key in ("num_experts", "num_experts_per_tok", "moe_intermediate_size"):
        if not _positive_int(cfg[key]):
            raise UserError(f"{where}: {key} must be a positive integer for a {family} model, not {cfg[key]!r}")
    if top_k > experts:
        raise UserError(f"{where}: num_experts_per_tok {top_k} is more than the {experts} experts")
    scaling = cfg["routed_scaling_factor"]
    if not isinstance(scaling, (int, float)) or isinstance(scaling, bool) or not scaling > 0:
        raise UserError(f"{where}: routed_scaling_factor must be a positive number, not {scaling!r}")
    if cfg["topk_method"] not in GROUPED_TOPK:
        return
    groups, chosen = cfg["n_group"], cfg["topk_group"]
    for key, value in (("n_group", groups), ("topk_group", chosen)):
        if not _positive_int(value):
            raise UserError(f"{where}: {key} must be a positive integer for {family}'s group-limited routing "
                            f"(topk_method {cfg['topk_method']!r}), not {value!r}")
    if experts % groups:
        raise UserError(f"{where}: n_group {groups} does not divide the {experts} routed experts")
    if chosen > groups:
        raise UserError(f"{where}: topk_group {chosen} is more than n_group {groups}")
    if top_k > chosen * (experts // groups):
        raise UserError(f"{where}: num_experts_per_tok {top_k} is more than the {chosen * (experts // groups)} "
                        f"experts of the topk_group {chosen} groups a token may use")


def _check_mla_config(cfg: dict[str, Any], family: str, where: str) -> None:
    """Multi-head latent attention's sizes; `q_lora_rank` is null when the query has one projection."""
    for key in MLA_CONFIG:
        if not _positive_int(cfg[key]):
            what = "missing" if cfg[key] is None else f"not a positive integer ({cfg[key]!r})"
            raise UserError(f"{where}: {key} is {what}; a {family} model's multi-head latent attention needs it")
    if cfg["q_lora_rank"] is not None and not _positive_int(cfg["q_lora_rank"]):
        raise UserError(f"{where}: q_lora_rank must be a positive integer or null, not {cfg['q_lora_rank']!r}")


def _compile(pattern: str) -> re.Pattern[str]:
    escaped = re.escape(pattern).replace(re.escape("{L}"), r"(?P<L>\d+)")
    return re.compile(escaped.replace(re.escape("{E}"), r"(?P<E>\d+)"))


def _format(pattern: str, layer: int | None, expert: int | None) -> str:
    if layer is not None:
        pattern = pattern.replace("{L}", str(layer))
    return pattern.replace("{E}", str(expert)) if expert is not None else pattern


def canonical_name(role: str, layer: int | None, expert: int | None = None) -> str:
    return _format(CANONICAL_NAMES[role], layer, expert)


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


def canonical_tensors(spec: ArchSpec, cfg: dict[str, Any], match: RoleMatch, tensor):
    """The unfused, Llama-named tensors a source tensor stands for: W_pack/c_attn/qkv_proj split into
    q, k, v; gate_up_proj into gate, up; Baichuan2's NormHead applied (rows L2-normalised); an
    expert's w1/w2/w3 under Qwen's per-expert names."""
    import torch

    role, layer, expert = match
    if role in FUSED_ROLES:
        parts = torch.split(tensor, spec.split_sizes(role, cfg), dim=0)
        return [(canonical_name(r, layer), p.contiguous()) for r, p in zip(FUSED_ROLES[role], parts)]
    if role == "lm_head" and spec.lm_head_norm:
        normed = torch.nn.functional.normalize(tensor.float(), dim=-1).to(tensor.dtype)
        return [(canonical_name(role, layer), normed)]
    return [(canonical_name(role, layer, expert), tensor)]


def canonical_names(match: RoleMatch) -> list[str]:
    """The canonical names `canonical_tensors` gives a source tensor, without reading it."""
    role, layer, expert = match
    return [canonical_name(r, layer, expert) for r in FUSED_ROLES.get(role, (role,))]
