"""The generated checkpoint of bench_quant_moe: a Qwen3-MoE with Qwen3-30B-A3B's layer shapes.

Qwen3-30B-A3B's hidden size, heads, head_dim and expert width (hidden 2048, 32 heads of 128, 4 kv
heads, moe_intermediate 768, top-8), with 32 experts per layer instead of 128 and a 32,000-token
vocabulary, so that a few layers reach a benchmark's size while each layer keeps the real model's
many small expert tensors (3 MB each in bf16). Every expert is written under its Hub name
(`model.layers.{L}.mlp.experts.{E}.gate_proj.weight`), as `save_pretrained` writes it. Written
tensor by tensor like synthetic_llama's checkpoint (whose writer this reuses), so generating it
costs little memory.
"""

from __future__ import annotations

from typing import Any

from synthetic_llama import BF16, TensorSpec, numel

HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 2048, 32, 4, 128
EXPERTS, TOP_K, MOE_INTERMEDIATE, VOCAB = 32, 8, 768, 32000


def layer_tensors(layer: int) -> list[TensorSpec]:
    """One Qwen3-MoE decoder layer, in the order transformers saves it."""
    p = f"model.layers.{layer}."
    out: list[TensorSpec] = [(p + "input_layernorm.weight", (HIDDEN,))]
    for e in range(EXPERTS):
        out += [(p + f"mlp.experts.{e}.down_proj.weight", (HIDDEN, MOE_INTERMEDIATE)),
                (p + f"mlp.experts.{e}.gate_proj.weight", (MOE_INTERMEDIATE, HIDDEN)),
                (p + f"mlp.experts.{e}.up_proj.weight", (MOE_INTERMEDIATE, HIDDEN))]
    out += [
        (p + "mlp.gate.weight", (EXPERTS, HIDDEN)),
        (p + "post_attention_layernorm.weight", (HIDDEN,)),
        (p + "self_attn.k_norm.weight", (HEAD_DIM,)),
        (p + "self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
        (p + "self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM)),
        (p + "self_attn.q_norm.weight", (HEAD_DIM,)),
        (p + "self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN)),
        (p + "self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
    ]
    return out


def model_tensors(layers: int) -> list[TensorSpec]:
    out: list[TensorSpec] = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        out += layer_tensors(i)
    return out + [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def layers_for(size_bytes: int) -> int:
    """The fewest layers whose bf16 checkpoint holds at least `size_bytes`."""
    layers = 1
    while sum(numel(s) for _, s in model_tensors(layers)) * BF16 < size_bytes:
        layers += 1
    return layers


def qwen3_moe_config(layers: int) -> dict[str, Any]:
    """config.json of the generated model (every layer sparse)."""
    return {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "torch_dtype": "bfloat16",
        "hidden_size": HIDDEN, "intermediate_size": 6144, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "num_hidden_layers": layers, "vocab_size": VOCAB,
        "num_experts": EXPERTS, "num_experts_per_tok": TOP_K, "moe_intermediate_size": MOE_INTERMEDIATE,
        "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu", "attention_bias": False,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "use_cache": True,
    }
