"""What the runtime's decoder needs to know about a checkpoint, read through the architecture specs
of `ascend_convert` (one JSON per family), so the runtime serves every family `convert` writes.

Read from config.json (or a GGUF's metadata) and from the tensor names present: a family's optional
parts (qkv bias, q/k norms, a shared expert) exist exactly when their tensors do. A mixture-of-experts
family (the spec has a router) adds its experts, top-k, expert width, renormalisation and which layers
are sparse (`ArchSpec.moe_layers`); the rest of the decoder is the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ascend_common.errors import UserError
from ascend_convert.arch import GROUPED_TOPK, ArchSpec

DTYPES = ("float32", "float16", "bfloat16")


#: How RoPE pairs a head's dimensions: `neox` rotates halves (Llama, Qwen; transformers' rotate_half),
#: `interleave` rotates adjacent pairs in the model dtype (DeepSeek-V3's rope_interleave), `complex`
#: rotates adjacent pairs as complex numbers in fp32 (DeepSeek-V2's apply_rotary_emb).
ROPE_STYLES = ("neox", "interleave", "complex")


#: How multi-head latent attention's decode tokens attend: `absorbed` (vLLM's: up-projections folded
#: into the query and output, the latent cache used as it is) or `decompressed` (transformers' op order:
#: keys and values rebuilt from every cached latent each step, for bit-level comparisons).
MLA_DECODE = ("absorbed", "decompressed")


@dataclass(frozen=True)
class Routing:
    """How a mixture-of-experts layer picks each token's experts (transformers' routers, as data):
    `scoring` softmax or sigmoid over fp32 or model-dtype logits; `method` greedy top-k, or within the best
    `topk_group` of `n_group` groups (`group_limited_greedy`: a group's best score; `noaux_tc`: its best
    two, with the correction bias added for the choice only); renormalised or not, then scaled."""

    scoring: str = "softmax"
    method: str = "greedy"
    n_group: int = 1
    topk_group: int = 1
    scaling: float = 1.0
    logits_fp32: bool = False  # DeepSeek's and GLM's routers keep fp32 weights and compute fp32 logits
    bias: bool = False  # e_score_correction_bias
    sorted: bool = True  # topk(sorted=...): the order of a token's experts decides the order they are summed in


@dataclass(frozen=True)
class MLAShape:
    """Multi-head latent attention's sizes (DeepSeek-V2/V3): the query through a rank-`q_lora_rank`
    pair (0: one projection), keys and values from a per-token latent of `kv_lora_rank` plus a
    shared rope key of `qk_rope_head_dim`: the whole KV cache entry of a token, per layer."""

    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


@dataclass(frozen=True)
class ModelConfig:
    family: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    sliding_window: int | None
    rope_type: str = "default"
    rope_parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"  # what the checkpoint says it computes in
    eos_token_ids: tuple[int, ...] = ()
    quant: Any = None  # a QuantScheme for msModelSlim's int8 layout (runtime.layers.quant_linear), else None
    # mixture of experts (num_experts 0: a dense model)
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0  # 0: no shared expert (Qwen2-MoE has one)
    norm_topk_prob: bool = False  # renormalise the top-k routing weights to sum to 1
    moe_layers: tuple[bool, ...] = ()  # per layer: sparse (experts) or the dense MLP
    routing_weights_fp32: bool = False  # the weighted sum takes fp32 routing weights (Mixtral) or model-dtype ones
    shared_expert_gated: bool = False  # the shared expert scaled by sigmoid(shared_expert_gate(x)) (Qwen2-MoE)
    routing: Routing | None = None  # how a token's experts are chosen (None: dense)
    mla: MLAShape | None = None  # multi-head latent attention (DeepSeek-V2/V3), else None
    rotary_dim: int = 0  # dimensions RoPE rotates (0: the whole head; GLM-4.5 half of it, MLA its rope part)
    rope_style: str = "neox"  # ROPE_STYLES: rotate-half pairs, interleaved pairs, or complex pairs in fp32
    attention_scale: float = 0.0  # softmax scale (0: 1/sqrt(head_dim)); MLA's includes YaRN's mscale twice
    mla_decode: str = "absorbed"  # MLA_DECODE: how MLA's decode tokens attend (runtime.layers.mla)
    tp: Any = None  # tensor parallel: the TPLayout this rank's sizes come from (None: one rank)
    tp_rank: int = 0

    @property
    def tp_size(self) -> int:
        return self.tp.size if self.tp is not None else 1

    @property
    def is_moe(self) -> bool:
        return any(self.moe_layers)

    @property
    def vocab_rows(self) -> int:
        """Embedding / lm_head rows this rank holds (the padded vocabulary's shard under TP)."""
        return self.tp.vocab_shard if self.tp is not None else self.vocab_size

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def scale(self) -> float:
        return self.attention_scale or 1.0 / math.sqrt(self.head_dim)

    @property
    def kv_values_per_token(self) -> int:
        """Values one token's cache entry holds per layer: keys and values of every KV head, or MLA's
        latent and rope key (576 for DeepSeek-V3, against 128 heads x (192 + 128) = 40,960)."""
        if self.mla is not None:
            return self.mla.kv_lora_rank + self.mla.qk_rope_head_dim
        return 2 * self.kv_size

    @property
    def full_kv_values_per_token(self) -> int:
        """What a full per-head K/V cache would hold per token and layer (the same as
        `kv_values_per_token` but for MLA, which decompresses them from its latent instead)."""
        if self.mla is not None:
            return self.num_heads * (self.mla.qk_head_dim + self.mla.v_head_dim)
        return self.kv_values_per_token

    def kv_token_bytes(self, dtype: Any, full: bool = False) -> int:
        """KV-cache bytes one token takes across all layers in `dtype` (a torch dtype or its name); `full`:
        what per-head keys and values would take (what `smoke` and `bench` set beside it for MLA)."""
        values = self.full_kv_values_per_token if full else self.kv_values_per_token
        return self.num_layers * values * _element_size(dtype)

    def attention_gather_bytes(self, slots: int, dtype: Any) -> int:
        """The temporary bytes one layer's attention over `slots` gathered context slots takes beside
        the pool: the cached values copied out of their blocks and, for MLA, the per-head keys and
        values decompressed from them (its prefill path). Layers run one after another, so this is
        the whole step's attention working set."""
        values = self.kv_values_per_token + (self.full_kv_values_per_token if self.mla is not None else 0)
        return slots * values * _element_size(dtype)

    def kv_block_bytes(self, block_size: int, dtype: Any) -> int:
        """Bytes one KV-cache block of `block_size` tokens takes across all layers, in `dtype`: one
        formula for the engine's pool and for the benchmark that sizes a pool before any engine exists."""
        return block_size * self.kv_token_bytes(dtype)


def _element_size(dtype: Any) -> int:
    import torch

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return torch.empty((), dtype=dtype).element_size()


def tp_config(cfg: ModelConfig, size: int, rank: int) -> ModelConfig:
    """Rank `rank`'s view of `cfg` split over `size` ranks: its heads, KV heads and intermediate
    slices, the experts' and the shared expert's included (the vocabulary stays the global one;
    `vocab_rows` is the shard). A clear error when the model does not split that way."""
    from ascend_convert.tp_layout import TPLayout

    if cfg.mla is not None and size > 1:
        raise UserError(f"tensor parallel does not split multi-head latent attention yet ({cfg.family}); serve "
                        f"it with tensor_parallel_size=1")
    layout = TPLayout(size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size,
                      cfg.num_experts, cfg.moe_intermediate_size, cfg.shared_expert_intermediate_size)
    return replace(cfg, num_heads=layout.heads, num_kv_heads=layout.kv_heads,
                   intermediate_size=cfg.intermediate_size // size, moe_intermediate_size=cfg.moe_intermediate_size // size,
                   shared_expert_intermediate_size=cfg.shared_expert_intermediate_size // size, tp=layout, tp_rank=rank)


def _rope(raw: dict) -> tuple[str, dict]:
    """(rope type, its parameters) whichever way the config spells it: transformers 5's
    `rope_parameters`, or the older `rope_scaling`."""
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    kind = params.get("rope_type") or params.get("type") or "default"
    return kind, params


def _eos(raw: dict, model_dir: Path) -> tuple[int, ...]:
    ids: list[int] = []
    for source in (raw, _generation_config(model_dir)):
        value = source.get("eos_token_id")
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and v not in ids:
                ids.append(v)
    return tuple(ids)


def _generation_config(model_dir: Path) -> dict:
    import json

    path = model_dir / "generation_config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        return {}


def model_config(raw: dict, spec: ArchSpec, tensor_names: set[str], model_dir: Path,
                 where: str = "config.json") -> ModelConfig:
    """The runtime's view of a checkpoint: `raw` is its config.json (or GGUF-derived config),
    `tensor_names` the canonical (Llama-named) tensors it holds."""
    c = spec.canonical_config(raw, where)
    rope_type, rope_params = _rope(raw)
    if rope_type not in ("default", "llama3", "linear", "yarn", "longrope"):
        raise UserError(f"{where}: rope type {rope_type!r} is not supported by the runtime "
                        f"(default, llama3, linear, yarn, longrope)")
    window = raw.get("sliding_window")
    if raw.get("use_sliding_window") is False:  # Qwen2 configs name a window but switch it off
        window = None
    dtype = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    mla = _mla(spec, c)
    head_dim = c["head_dim"] if mla is None else mla.qk_rope_head_dim
    return replace(ModelConfig(
        family=spec.family,
        hidden_size=c["hidden_size"], num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
        num_kv_heads=c["num_key_value_heads"], head_dim=c["head_dim"], intermediate_size=c["intermediate_size"],
        vocab_size=c["vocab_size"], rms_norm_eps=float(c["rms_norm_eps"]), rope_theta=float(c["rope_theta"]),
        max_position_embeddings=int(c["max_position_embeddings"] or 4096),
        tie_word_embeddings=bool(c["tie_word_embeddings"]) or "lm_head.weight" not in tensor_names,
        qkv_bias="model.layers.0.self_attn.q_proj.bias" in tensor_names,
        o_bias="model.layers.0.self_attn.o_proj.bias" in tensor_names,
        mlp_bias="model.layers.0.mlp.gate_proj.bias" in tensor_names,
        qk_norm="model.layers.0.self_attn.q_norm.weight" in tensor_names,
        sliding_window=int(window) if isinstance(window, int) and window > 0 else None,
        rope_type=rope_type, rope_parameters=rope_params,
        dtype=dtype if dtype in DTYPES else "float32",
        eos_token_ids=_eos(raw, model_dir),
        mla=mla, rotary_dim=int(head_dim * float(c["partial_rotary_factor"] or 1.0)),
        rope_style=spec.config_defaults.get("rope_style") or ("interleave" if c["rope_interleave"] else "neox"),
        attention_scale=_mla_scale(mla, rope_type, rope_params),
    ), **_moe_fields(spec, c, tensor_names))


def _mla(spec: ArchSpec, c: dict[str, Any]) -> MLAShape | None:
    if not spec.is_mla:
        return None
    return MLAShape(int(c["q_lora_rank"] or 0), c["kv_lora_rank"], c["qk_nope_head_dim"], c["qk_rope_head_dim"],
                    c["v_head_dim"])


def _mla_scale(mla: MLAShape | None, rope_type: str, params: dict) -> float:
    """MLA's softmax scale as transformers' DeepSeek attention computes it (`yarn_apply_mscale`): 1 /
    sqrt(qk_head_dim), times YaRN's mscale(factor, mscale_all_dim) squared when the config sets it."""
    if mla is None:
        return 0.0
    scale = mla.qk_head_dim ** -0.5
    all_dim = params.get("mscale_all_dim") or 0
    factor = float(params.get("factor") or 1.0)
    if rope_type != "default" and all_dim and factor > 1:
        mscale = 0.1 * all_dim * math.log(factor) + 1.0
        scale = scale * mscale * mscale
    return scale


#: A spec's `config_defaults` key: the dtype its routing weights keep into the weighted sum of the
#: experts ("float32": Mixtral's router never casts them back; absent: the model's dtype, as Qwen's do).
ROUTING_WEIGHTS_DTYPE = "moe_routing_weights_dtype"
#: A spec's `config_defaults` key: "float32" when the router keeps fp32 weights and logits and picks
#: with `topk(sorted=False)` (transformers' DeepSeek-V2/V3 and GLM-4.5 routers), else the model's dtype.
ROUTER_DTYPE = "router_dtype"


def _moe_fields(spec: ArchSpec, c: dict[str, Any], tensor_names: set[str]) -> dict[str, Any]:
    """The MoE fields of a mixture-of-experts family's config (none for a dense one)."""
    if not spec.is_moe:
        return {}
    shared = any(".mlp.shared_expert." in n for n in tensor_names)
    defaults = spec.config_defaults
    grouped = c["topk_method"] in GROUPED_TOPK
    routing = Routing(scoring=c["scoring_func"], method=c["topk_method"],
                      n_group=c["n_group"] if grouped else 1, topk_group=c["topk_group"] if grouped else 1,
                      scaling=float(c["routed_scaling_factor"]), logits_fp32=defaults.get(ROUTER_DTYPE) == "float32",
                      bias=any(n.endswith(".mlp.gate.e_score_correction_bias") for n in tensor_names),
                      sorted=defaults.get(ROUTER_DTYPE) != "float32")
    return {"num_experts": c["num_experts"], "num_experts_per_tok": c["num_experts_per_tok"],
            "moe_intermediate_size": c["moe_intermediate_size"],
            "shared_expert_intermediate_size": int(c["shared_expert_intermediate_size"] or 0) if shared else 0,
            "shared_expert_gated": any(".mlp.shared_expert_gate." in n for n in tensor_names),
            "norm_topk_prob": bool(c["norm_topk_prob"]), "moe_layers": tuple(spec.moe_layers(c)),
            "routing_weights_fp32": defaults.get(ROUTING_WEIGHTS_DTYPE) == "float32", "routing": routing}
