"""Hand-made checkpoint directories for `ascendkit preflight`'s tests: tiny Llama/Qwen-shaped
models (hidden 64, 2 layers, 4 heads, 2 KV heads, intermediate 128, vocab 320) written as real
files — config.json, the fixtures' tokenizer, safetensors written by `safetensors.torch.save_file`,
and msModelSlim's quant_model_description.json — so each real vllm-ascend load failure can be
rebuilt as the checkpoint that had it, in a few kilobytes.

A test takes the tensors and the description as plain dicts (`float_tensors`, `quantized`), breaks
them the way the issue's checkpoint was broken, and writes the directory with `write_dir`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from ascend_convert.preflight.run import run_preflight
from fixtures.tokenizer import save_tokenizer

HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE, VOCAB, HEAD_DIM = 64, 2, 4, 2, 128, 320, 16
FLOAT = "FLOAT"

#: the linear layers of one decoder layer: name -> (out, in)
LINEARS: dict[str, tuple[int, int]] = {
    "self_attn.q_proj": (HEADS * HEAD_DIM, HIDDEN),
    "self_attn.k_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
    "self_attn.v_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HEADS * HEAD_DIM),
    "mlp.gate_proj": (INTERMEDIATE, HIDDEN),
    "mlp.up_proj": (INTERMEDIATE, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTERMEDIATE),
}

Tensors = dict[str, torch.Tensor]
#: which quant type a linear weight gets (its full `.weight` name -> "FLOAT", "W8A8_DYNAMIC", ...)
TypeOf = Callable[[str], str]


def config(model_type: str = "llama", dtype: str = "bfloat16", **overrides) -> dict:
    """A tiny decoder's config.json; `overrides` set or (with None) remove keys."""
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": model_type, "hidden_size": HIDDEN,
           "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
           "head_dim": HEAD_DIM, "intermediate_size": INTERMEDIATE, "vocab_size": VOCAB, "rms_norm_eps": 1e-6,
           "max_position_embeddings": 512, "tie_word_embeddings": False, "torch_dtype": dtype}
    for key, value in overrides.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


def _float(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return (torch.arange(int(torch.tensor(shape).prod()), dtype=torch.float32).reshape(shape) % 7 / 100).to(dtype)


def float_linear(stem: str, out: int, inp: int, dtype: torch.dtype = torch.bfloat16) -> Tensors:
    return {f"{stem}.weight": _float((out, inp), dtype)}


def w8a8_dynamic(stem: str, out: int, inp: int, scale_cols: int = 1) -> Tensors:
    """msModelSlim's W8A8_DYNAMIC (and W8A16) linear: int8 weight, float32 per-channel scale/offset
    (`scale_cols` > 1: a per-group scale [out, in / g], which these methods do not declare)."""
    return {f"{stem}.weight": torch.ones(out, inp, dtype=torch.int8),
            f"{stem}.weight_scale": torch.full((out, scale_cols), 0.01, dtype=torch.float32),
            f"{stem}.weight_offset": torch.zeros(out, scale_cols, dtype=torch.float32)}


def w8a8(stem: str, out: int, inp: int, model_dtype: str = "bfloat16") -> Tensors:
    """msModelSlim's static W8A8 linear: the dynamic parts plus the activation's scale/offset, the
    int32 quant_bias and deq_scale (float32 in a bf16 model, int64 in an fp16 one)."""
    deq = torch.float32 if model_dtype == "bfloat16" else torch.int64
    return {**w8a8_dynamic(stem, out, inp), f"{stem}.input_scale": torch.ones(1, dtype=torch.float32),
            f"{stem}.input_offset": torch.zeros(1, dtype=torch.int8),
            f"{stem}.quant_bias": torch.zeros(out, dtype=torch.int32),
            f"{stem}.deq_scale": torch.ones(out, dtype=deq)}


def linear(stem: str, out: int, inp: int, qtype: str, dtype: torch.dtype = torch.bfloat16) -> Tensors:
    if qtype == FLOAT:
        return float_linear(stem, out, inp, dtype)
    if qtype == "W8A8":
        return w8a8(stem, out, inp, "bfloat16" if dtype == torch.bfloat16 else "float16")
    return w8a8_dynamic(stem, out, inp)


def add_linear(tensors: Tensors, types: dict[str, str], stem: str, out: int, inp: int, type_of: TypeOf,
               dtype: torch.dtype) -> None:
    """One linear's tensors in the type `type_of` gives its weight, each listed with that type."""
    qtype = type_of(f"{stem}.weight")
    parts = linear(stem, out, inp, qtype, dtype)
    tensors.update(parts)
    types.update({name: qtype for name in parts})


def all_float(_name: str) -> str:
    return FLOAT


def model_tensors(type_of: TypeOf = all_float, dtype: torch.dtype = torch.bfloat16, layers: int = LAYERS,
                  intermediate: int = INTERMEDIATE) -> tuple[Tensors, dict[str, str]]:
    """(tensors, their quant types) of a Llama-shaped decoder whose linear layers are typed by `type_of`
    (embedding, norms and lm_head FLOAT, as msModelSlim leaves them)."""
    tensors: Tensors = {"model.embed_tokens.weight": _float((VOCAB, HIDDEN), dtype),
                        "model.norm.weight": torch.ones(HIDDEN, dtype=dtype),
                        "lm_head.weight": _float((VOCAB, HIDDEN), dtype)}
    types = {name: FLOAT for name in tensors}
    for layer in range(layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{layer}.{norm}.weight"] = torch.ones(HIDDEN, dtype=dtype)
            types[f"model.layers.{layer}.{norm}.weight"] = FLOAT
        for short, (out, inp) in LINEARS.items():
            if short == "mlp.down_proj":
                inp = intermediate
            elif short.startswith("mlp."):
                out = intermediate
            add_linear(tensors, types, f"model.layers.{layer}.{short}", out, inp, type_of, dtype)
    return tensors, types


def quantized(qtype: str = "W8A8_DYNAMIC", dtype: torch.dtype = torch.bfloat16, layers: int = LAYERS
              ) -> tuple[Tensors, dict[str, str]]:
    """Every decoder linear in `qtype`: what msModelSlim writes for a dense model."""
    return model_tensors(lambda _name: qtype, dtype, layers)


def description(types: dict[str, str], model_quant_type: str = "W8A8_DYNAMIC") -> dict:
    """quant_model_description.json as msModelSlim's v1 saver writes it."""
    return {"model_quant_type": model_quant_type, "version": "1.0.0", **types}


def write_dir(root: Path, cfg: dict, tensors: Tensors, desc: dict | None = None, *, tokenizer: bool = True,
              description_name: str = "quant_model_description.json", files: int = 1) -> Path:
    """The checkpoint directory: config.json, the tokenizer (with its chat template), the tensors
    in `files` safetensors files (with HF's index when more than one), the description if given."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if tokenizer:
        save_tokenizer(root)
    names = list(tensors)
    if files == 1:
        save_file({n: tensors[n].contiguous() for n in names}, str(root / "model.safetensors"))
    else:
        weight_map = {}
        for i in range(files):
            shard = f"model-{i + 1:05d}-of-{files:05d}.safetensors"
            part = names[i::files]
            save_file({n: tensors[n].contiguous() for n in part}, str(root / shard))
            weight_map.update({n: shard for n in part})
        write_index(root, weight_map)
    if desc is not None:
        (root / description_name).write_text(json.dumps(desc, indent=2) + "\n")
    return root


def write_index(root: Path, weight_map: dict[str, str]) -> None:
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def moe_tensors(type_of: TypeOf = all_float, experts: int = 4, moe_intermediate: int = 32,
                dtype: torch.dtype = torch.bfloat16) -> tuple[Tensors, dict[str, str]]:
    """A Qwen-MoE-shaped decoder: attention as `model_tensors`, then per layer a router
    (`mlp.gate`, never quantized) and `experts` experts of gate/up/down projections."""
    dense, types = model_tensors(type_of, dtype)
    tensors = {n: t for n, t in dense.items() if ".mlp." not in n}
    types = {n: t for n, t in types.items() if ".mlp." not in n}
    for layer in range(LAYERS):
        tensors[f"model.layers.{layer}.mlp.gate.weight"] = _float((experts, HIDDEN), dtype)
        types[f"model.layers.{layer}.mlp.gate.weight"] = FLOAT
        for e in range(experts):
            for proj, (out, inp) in {"gate_proj": (moe_intermediate, HIDDEN), "up_proj": (moe_intermediate, HIDDEN),
                                     "down_proj": (HIDDEN, moe_intermediate)}.items():
                add_linear(tensors, types, f"model.layers.{layer}.mlp.experts.{e}.{proj}", out, inp, type_of, dtype)
    return tensors, types


def moe_config(model_type: str = "qwen3_moe", experts: int = 4, **overrides) -> dict:
    return config(model_type, architectures=["Qwen3MoeForCausalLM"], num_experts=experts, num_experts_per_tok=2,
                  moe_intermediate_size=32, **overrides)


# --------------------------------------------------------------------------- DeepSeek-shaped (MLA, MTP)

Q_LORA, KV_LORA, NOPE, ROPE, V_HEAD = 32, 32, 16, 8, 16

#: one MLA decoder layer's linears (DeepSeek-V3: q through a low-rank q_a/q_b pair, keys and values
#: through the shared latent kv_a_proj_with_mqa and its up-projection kv_b_proj) and a dense MLP
MLA_LINEARS: dict[str, tuple[int, int]] = {
    "self_attn.q_a_proj": (Q_LORA, HIDDEN),
    "self_attn.q_b_proj": (HEADS * (NOPE + ROPE), Q_LORA),
    "self_attn.kv_a_proj_with_mqa": (KV_LORA + ROPE, HIDDEN),
    "self_attn.kv_b_proj": (HEADS * (NOPE + V_HEAD), KV_LORA),
    "self_attn.o_proj": (HIDDEN, HEADS * V_HEAD),
    "mlp.gate_proj": (INTERMEDIATE, HIDDEN),
    "mlp.up_proj": (INTERMEDIATE, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTERMEDIATE),
}


def mla_config(model_type: str = "deepseek_v3", mtp: bool = True, **overrides) -> dict:
    """A tiny DeepSeek-V3's config.json (MLA; `mtp`: one MTP layer stored after the decoder's)."""
    return config(model_type, architectures=["DeepseekV3ForCausalLM"], num_key_value_heads=HEADS, head_dim=None,
                  q_lora_rank=Q_LORA, kv_lora_rank=KV_LORA, qk_nope_head_dim=NOPE, qk_rope_head_dim=ROPE,
                  v_head_dim=V_HEAD, num_nextn_predict_layers=1 if mtp else 0, **overrides)


def mla_tensors(type_of: TypeOf = all_float, mtp: bool = True, dtype: torch.dtype = torch.bfloat16
                ) -> tuple[Tensors, dict[str, str]]:
    """(tensors, their quant types) of a DeepSeek-V3-shaped decoder, its linears typed by `type_of`
    (norms, embedding and lm_head FLOAT); `mtp`: layer LAYERS is the MTP layer, a decoder layer plus
    enorm, hnorm, eh_proj, shared_head (norm, head) and its own embed_tokens, as DeepSeek ships it."""
    tensors: Tensors = {"model.embed_tokens.weight": _float((VOCAB, HIDDEN), dtype),
                        "model.norm.weight": torch.ones(HIDDEN, dtype=dtype),
                        "lm_head.weight": _float((VOCAB, HIDDEN), dtype)}
    norms = {"input_layernorm": HIDDEN, "post_attention_layernorm": HIDDEN, "self_attn.q_a_layernorm": Q_LORA,
             "self_attn.kv_a_layernorm": KV_LORA}
    types = {name: FLOAT for name in tensors}
    for layer in range(LAYERS + (1 if mtp else 0)):
        stem = f"model.layers.{layer}"
        for norm, size in norms.items():
            tensors[f"{stem}.{norm}.weight"] = torch.ones(size, dtype=dtype)
        for short, (out, inp) in MLA_LINEARS.items():
            add_linear(tensors, types, f"{stem}.{short}", out, inp, type_of, dtype)
        if layer == LAYERS:
            for norm in ("enorm", "hnorm", "shared_head.norm"):
                tensors[f"{stem}.{norm}.weight"] = torch.ones(HIDDEN, dtype=dtype)
            tensors[f"{stem}.embed_tokens.weight"] = _float((VOCAB, HIDDEN), dtype)
            add_linear(tensors, types, f"{stem}.eh_proj", HIDDEN, 2 * HIDDEN, type_of, dtype)
            add_linear(tensors, types, f"{stem}.shared_head.head", VOCAB, HIDDEN, type_of, dtype)
    types.update({name: FLOAT for name in tensors if name not in types})
    return tensors, types


DESC = "quant_model_description.json"


def lines(model: Path, **target) -> list[str]:
    """Every finding's line, in report order (what the table prints and CI greps)."""
    return [f.line for f in run_preflight(model, **target).findings]


def quantized_dir(root: Path, breaks=None, cfg: dict | None = None, qtype: str = "W8A8_DYNAMIC", **write) -> Path:
    """A W8A8_DYNAMIC (or `qtype`) Llama with msModelSlim's description, broken by `breaks(tensors, types)`."""
    tensors, types = quantized(qtype)
    if breaks is not None:
        breaks(tensors, types)
    return write_dir(root, cfg or config(), tensors, description(types, qtype), **write)
