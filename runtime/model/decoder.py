"""The runtime's decoder: one model for every family `convert` supports (Llama 1/2/3, Mistral, Qwen v1,
Qwen2, Qwen3, Baichuan/Baichuan2, Phi-3, and the mixture-of-experts Qwen3-MoE, Qwen2-MoE, Mixtral).
Their differences are data in `ModelConfig` — qkv bias, q/k norms, tied embeddings, sliding window,
RoPE type, which layers are sparse and how they route (`runtime.layers.moe`) — not subclasses.

Fused `qkv` and `gate_up` projections (one GEMM each instead of three and two). The numerics follow
transformers' modeling code step for step (RMSNorm in fp32, RoPE tables in fp32 cast to the model
dtype, residual adds in the model dtype), so greedy tokens match `generate` on the same weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from runtime.layers import parallel
from runtime.layers.attention import AttentionMetadata, causal_mask, paged_attention
from runtime.layers.fused_ops import PLAIN, Kernels
from runtime.layers.mla import mla_attention
from runtime.layers.moe import SparseMoE
from runtime.layers.rope import partial, rotation
from runtime.model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, kernels: Kernels) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernels.rms_norm(x, self.weight, self.eps)


def inverse_frequencies(cfg: ModelConfig, raw_config: dict) -> tuple[torch.Tensor, float]:
    """(inv_freq fp32, attention scaling) of the model's RoPE. Scaled types (llama3, yarn, linear,
    longrope) are computed by transformers' own functions from the checkpoint's config."""
    if cfg.rope_type == "default":
        dim = cfg.rotary_dim or cfg.head_dim
        exponents = torch.arange(0, dim, 2, dtype=torch.float) / dim
        return 1.0 / (cfg.rope_theta ** exponents), 1.0
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    fields = {k: v for k, v in raw_config.items() if k != "model_type"}
    hf_config = AutoConfig.for_model(raw_config["model_type"], **fields)
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[cfg.rope_type](hf_config, "cpu")
    return inv_freq.float(), float(scaling)


class Rotary(nn.Module):
    def __init__(self, inv_freq: torch.Tensor, scaling: float, fp32_angles: bool = False) -> None:
        super().__init__()
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._exact = inv_freq.float()  # not a buffer: `.to(dtype)` must not round it
        self.scaling = scaling
        self.fp32_angles = fp32_angles  # cos/sin kept fp32 (the `complex` RoPE style rotates in fp32)

    def _apply(self, fn, recurse=True):
        """`.to(bfloat16)` moves the table but keeps it exact fp32: RoPE angles from a bf16 table
        drift (transformers keeps them fp32 too)."""
        super()._apply(fn, recurse)
        self.inv_freq = self._exact.to(self.inv_freq.device)
        return self

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, 1, head_dim] for the step's positions (computed as transformers does)."""
        freqs = positions[:, None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        dtype = torch.float32 if self.fp32_angles else dtype
        return ((emb.cos() * self.scaling).to(dtype).unsqueeze(1), (emb.sin() * self.scaling).to(dtype).unsqueeze(1))


def linear(cfg: ModelConfig, in_features: int, out_features: int, bias: bool, kernels: Kernels) -> nn.Module:
    """A projection: float, or int8 when the checkpoint is msModelSlim's quantized layout (see `QuantLinear`)."""
    if cfg.quant is None:
        return nn.Linear(in_features, out_features, bias=bias)
    from runtime.layers.quant_linear import QuantLinear

    return QuantLinear(in_features, out_features, bias, cfg.quant, kernels)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, kernels: Kernels) -> None:
        super().__init__()
        self.cfg = cfg
        self.kernels = kernels
        self.qkv = linear(cfg, cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, cfg.qkv_bias, kernels)
        self.o = linear(cfg, cfg.q_size, cfg.hidden_size, cfg.o_bias, kernels)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, kernels)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, kernels)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta: AttentionMetadata,
                masks: list[torch.Tensor], cache: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        cfg = self.cfg
        q, k, v = self.qkv(x).split((cfg.q_size, cfg.kv_size, cfg.kv_size), dim=-1)
        q = q.view(-1, cfg.num_heads, cfg.head_dim)
        k = k.view(-1, cfg.num_kv_heads, cfg.head_dim)
        v = v.view(-1, cfg.num_kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        rotate = rotation(cfg.rope_style, self.kernels)
        q, k = partial(rotate, q, cos, sin), partial(rotate, k, cos, sin)
        out = paged_attention(q, k, v, cache[0], cache[1], meta, masks, cfg.scale, cfg.sliding_window)
        return parallel.all_reduce(self.o(out), cfg)


class LatentAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2/V3; `runtime.layers.mla`): the query through q_a, its
    norm and q_b (or V2-Lite's one projection), the latent and rope key through kv_a and its norm,
    keys and values through kv_b_proj, which stays a plain float matrix (its absorbed halves are views
    of it; vllm-ascend requires it unquantized too). Modules keep the checkpoint's names."""

    def __init__(self, cfg: ModelConfig, kernels: Kernels) -> None:
        super().__init__()
        mla = cfg.mla
        self.cfg, self.kernels = cfg, kernels
        q_out = cfg.num_heads * mla.qk_head_dim
        if mla.q_lora_rank:
            self.q_a_proj = linear(cfg, cfg.hidden_size, mla.q_lora_rank, False, kernels)
            self.q_a_layernorm = RMSNorm(mla.q_lora_rank, 1e-6, kernels)
            self.q_b_proj = linear(cfg, mla.q_lora_rank, q_out, False, kernels)
        else:
            self.mla_q_proj = linear(cfg, cfg.hidden_size, q_out, False, kernels)
        self.kv_a_proj_with_mqa = linear(cfg, cfg.hidden_size, mla.kv_lora_rank + mla.qk_rope_head_dim, False, kernels)
        self.kv_a_layernorm = RMSNorm(mla.kv_lora_rank, 1e-6, kernels)
        self.kv_b_proj = nn.Linear(mla.kv_lora_rank, cfg.num_heads * (mla.qk_nope_head_dim + mla.v_head_dim), bias=False)
        self.o = linear(cfg, cfg.num_heads * mla.v_head_dim, cfg.hidden_size, cfg.o_bias, kernels)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta: AttentionMetadata,
                masks: list[torch.Tensor], cache: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        mla = self.cfg.mla
        if mla.q_lora_rank:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        else:
            q = self.mla_q_proj(x)
        q_nope, q_pe = q.view(-1, self.cfg.num_heads, mla.qk_head_dim).split((mla.qk_nope_head_dim, mla.qk_rope_head_dim), -1)
        latent, k_pe = self.kv_a_proj_with_mqa(x).split((mla.kv_lora_rank, mla.qk_rope_head_dim), dim=-1)
        latent = self.kv_a_layernorm(latent)
        rotate = rotation(self.cfg.rope_style, self.kernels)
        q_pe, k_pe = rotate(q_pe, cos, sin), rotate(k_pe.unsqueeze(1), cos, sin).squeeze(1)
        out = mla_attention(q_nope, q_pe, latent, k_pe, self.kv_b_proj.weight, cache, meta, masks, self.cfg.scale,
                            mla.v_head_dim, absorbed=self.cfg.mla_decode == "absorbed")
        return self.o(out)


class MLP(nn.Module):
    """SwiGLU MLP with fused gate/up. `reduce=False` for a shared expert, whose partial sums under
    tensor parallel join the routed experts' before the MoE layer's one all-reduce."""

    def __init__(self, cfg: ModelConfig, kernels: Kernels, width: int | None = None, bias: bool | None = None,
                 reduce: bool = True) -> None:
        super().__init__()
        width = cfg.intermediate_size if width is None else width
        bias = cfg.mlp_bias if bias is None else bias
        self.gate_up = linear(cfg, cfg.hidden_size, 2 * width, bias, kernels)
        self.down = linear(cfg, width, cfg.hidden_size, bias, kernels)
        self.kernels = kernels
        self.cfg = cfg
        self.reduce = reduce

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.down(self.kernels.swiglu(self.gate_up(x)))
        return parallel.all_reduce(out, self.cfg) if self.reduce else out


def sparse_mlp(cfg: ModelConfig, kernels: Kernels, layer: int) -> SparseMoE:
    """Layer `layer`'s MoE block; its routed experts are int8 when the checkpoint's description
    makes them W8A8_DYNAMIC (vllm-ascend's one quantized fused-MoE method for them), float when it
    keeps them FLOAT. The shared expert is a pair of linears like any other."""
    module = f"model.layers.{layer}.mlp.experts.gate_up"
    kind = cfg.quant.type_of(module) if cfg.quant is not None else "FLOAT"
    if kind not in ("FLOAT", "W8A8_DYNAMIC"):
        from ascend_common.errors import UserError

        raise UserError(f"{module}: {kind} experts: the runtime serves routed experts FLOAT or W8A8_DYNAMIC")
    experts_int8 = kind == "W8A8_DYNAMIC"
    shared = None
    if cfg.shared_expert_intermediate_size:
        shared = MLP(cfg, kernels, cfg.shared_expert_intermediate_size, bias=False, reduce=False)
    return SparseMoE(cfg, kernels, experts_int8, shared)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, kernels: Kernels, layer: int = 0) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, kernels)
        self.self_attn = LatentAttention(cfg, kernels) if cfg.mla is not None else Attention(cfg, kernels)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, kernels)
        sparse = cfg.moe_layers[layer] if cfg.moe_layers else False
        self.mlp = sparse_mlp(cfg, kernels, layer) if sparse else MLP(cfg, kernels)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta: AttentionMetadata,
                masks: list[torch.Tensor], cache: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, meta, masks, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig, kernels: Kernels) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_rows, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, kernels, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, kernels)


class CausalLM(nn.Module):
    """`forward` runs one engine step over the flat batch of new tokens and returns their hidden
    states; `logits` turns the rows that sample into fp32 logits."""

    def __init__(self, cfg: ModelConfig, inv_freq: torch.Tensor, rope_scaling: float = 1.0,
                 kernels: Kernels = PLAIN) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = Decoder(cfg, kernels)
        self.rotary = Rotary(inv_freq, rope_scaling, fp32_angles=cfg.rope_style == "complex")
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_rows, bias=False)
        self._retype_linears(kernels)

    def _retype_linears(self, kernels: Kernels) -> None:
        """Give each linear of a quantized checkpoint its own type from the description: float where it
        keeps FLOAT (convert --keep-float), or a type other than `model_quant_type` (msModelSlim's MoE
        recipe: W8A8 attention, W8A8_DYNAMIC shared experts). The LM head is built float and made int8
        where the description quantizes it (`convert --quantize-lm-head`)."""
        from runtime.layers.quant_linear import QuantLinear

        scheme = self.cfg.quant
        for name, kind in sorted(scheme.module_types.items() if scheme is not None else ()):
            old = self.get_submodule(name)
            retype = (old.kind != kind if isinstance(old, QuantLinear)
                      else isinstance(old, nn.Linear) and kind != "FLOAT")
            if not retype:
                continue  # already its type; routed experts are typed when built (`sparse_mlp`)
            bias = old.bias is not None
            new = (nn.Linear(old.in_features, old.out_features, bias=bias) if kind == "FLOAT"
                   else QuantLinear(old.in_features, old.out_features, bias, scheme, kernels, kind))
            parent, _, child = name.rpartition(".")
            setattr(self.get_submodule(parent), child, new)

    def forward(self, input_ids: torch.Tensor, meta: AttentionMetadata,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        x = parallel.embed(self.model.embed_tokens, input_ids, self.cfg)
        cos, sin = self.rotary(meta.positions, x.dtype)
        cfg = self.cfg
        query_rows = 1 if cfg.mla else cfg.num_heads // cfg.num_kv_heads  # MLA's queries are not stacked
        masks = [causal_mask(group, cfg.sliding_window, x.dtype, query_rows) for group in meta.groups]
        for layer, cache in zip(self.model.layers, kv_caches):
            x = layer(x, cos, sin, meta, masks, cache)
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.cfg.tie_word_embeddings:
            logits = F.linear(hidden, self.model.embed_tokens.weight)
        else:
            logits = self.lm_head(hidden)  # float, or int8 (`convert --quantize-lm-head`)
        return parallel.gather_vocab(logits.float(), self.cfg)

    def fused_slice(self, name: str, part: int) -> tuple[int, int]:
        """(start, length) along dim 0 of part `part` of the fused parameter `name`; for a 3-D
        experts parameter, of its [E * rows, cols] view (expert E's gate is part 2E, see
        `tp_layout.parameter_for`)."""
        cfg = self.cfg
        if ".experts.gate_up." in name:
            return part * cfg.moe_intermediate_size, cfg.moe_intermediate_size
        if ".experts.down." in name:
            return part * cfg.hidden_size, cfg.hidden_size
        if ".qkv." in name:
            sizes = (cfg.q_size, cfg.kv_size, cfg.kv_size)
        elif ".shared_expert." in name:
            sizes = (cfg.shared_expert_intermediate_size,) * 2
        else:
            sizes = (cfg.intermediate_size,) * 2
        return sum(sizes[:part]), sizes[part]

    @staticmethod
    def fully_filled(name: str, parts: set[int | None], num_experts: int = 0) -> bool:
        if ".experts.gate_up." in name:
            return parts == set(range(2 * num_experts))
        if ".experts.down." in name:
            return parts == set(range(num_experts))
        if ".qkv." in name:
            return parts == {0, 1, 2}
        if ".gate_up." in name:
            return parts == {0, 1}
        return parts == {None}
