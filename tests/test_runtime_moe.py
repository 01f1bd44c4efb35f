"""The runtime's mixture-of-experts layers (Qwen3-MoE, Qwen2-MoE, Mixtral) against transformers'
own blocks on the same weights: the loader's mapping of per-expert names into 3-D parameters, the
routing rules each family has, and the grouped experts' numerics (bitwise, bf16 included). The
engine's greedy tokens for these families are in test_runtime_engine.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from greedy_reference import hf_model

import fixtures as fx
from ascend_common.errors import UserError
from runtime import LLM
from runtime.engine.model_runner import build_model
from runtime.layers.moe import SparseMoE
from runtime.model.loader import load_weights, open_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def runtime_model(path, dtype: torch.dtype, **config_changes):
    ckpt = open_model(path)
    if config_changes:
        ckpt = replace(ckpt, config=replace(ckpt.config, **config_changes))
    model = build_model(ckpt, torch.device("cpu"), dtype)
    load_weights(model, ckpt)
    return model.eval()


def layer_outputs(model, hf, layer: int, dtype: torch.dtype, tokens: int = 37) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(tokens, model.cfg.hidden_size, generator=torch.Generator().manual_seed(layer)).to(dtype)
    with torch.no_grad():
        return model.model.layers[layer].mlp(x), hf.model.layers[layer].mlp(x.unsqueeze(0)).squeeze(0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", fx.MOE_FAMILIES)
def test_sparse_layers_are_transformers_bit_for_bit(checkpoint, family, dtype):
    """Every layer the config makes sparse is a SparseMoE (the others the dense MLP, as transformers
    builds them), and its output equals transformers' block bit for bit on 37 tokens."""
    path = checkpoint(family)
    model, hf = runtime_model(path, DTYPES[dtype]), hf_model(str(path), DTYPES[dtype])
    cfg = model.cfg
    expected = {"qwen3_moe": (True, False, True), "qwen2_moe": (False, True, False, True), "mixtral": (True, True)}
    assert cfg.moe_layers == expected[family]
    assert (cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size) == (8, 2, 32)
    assert cfg.shared_expert_intermediate_size == (64 if family == "qwen2_moe" else 0)
    for i, sparse in enumerate(cfg.moe_layers):
        assert isinstance(model.model.layers[i].mlp, SparseMoE) == sparse
        assert ("SparseMoeBlock" in type(hf.model.layers[i].mlp).__name__) == sparse
        if sparse:
            ours, theirs = layer_outputs(model, hf, i, DTYPES[dtype])
            assert ours.dtype == theirs.dtype == DTYPES[dtype]
            assert torch.equal(ours, theirs), (family, dtype, i, (ours.float() - theirs.float()).abs().max())


@pytest.mark.parametrize("family", fx.MOE_FAMILIES)
def test_each_family_keeps_its_routing_weights_dtype(checkpoint, family):
    """Mixtral's router keeps the top-k weights fp32 into the weighted sum; Qwen's cast them to the
    model dtype (transformers 5.24). The other choice changes bf16 results: the rule is data the
    runtime must read right (the mixtral spec's `moe_routing_weights_dtype`)."""
    path = checkpoint(family)
    model = runtime_model(path, torch.bfloat16)
    assert model.cfg.routing_weights_fp32 == (family == "mixtral")
    flipped = runtime_model(path, torch.bfloat16, routing_weights_fp32=not model.cfg.routing_weights_fp32)
    hf = hf_model(str(path), torch.bfloat16)
    layer = model.cfg.moe_layers.index(True)
    ours, theirs = layer_outputs(model, hf, layer, torch.bfloat16, tokens=64)
    wrong, _ = layer_outputs(flipped, hf, layer, torch.bfloat16, tokens=64)
    assert torch.equal(ours, theirs)
    assert not torch.equal(wrong, theirs)


def test_experts_fill_3d_parameters_from_per_expert_names(checkpoint):
    """Expert 5's gate, up and down (Hub names `experts.5.gate_proj` ...) land in rows 5 of the
    runtime's `experts.gate_up` [E, 2I, H] and `experts.down` [E, H, I], as transformers v5 holds them."""
    path = checkpoint("qwen3_moe")
    model, hf = runtime_model(path, torch.float32), hf_model(str(path), torch.float32)
    ours, theirs = model.model.layers[0].mlp.experts, hf.model.layers[0].mlp.experts
    assert tuple(ours.gate_up.weight.shape) == (8, 64, 64) and tuple(ours.down.weight.shape) == (8, 64, 32)
    assert torch.equal(ours.gate_up.weight, theirs.gate_up_proj) and torch.equal(ours.down.weight, theirs.down_proj)


def test_a_missing_expert_is_named(copy_checkpoint):
    from safetensors.torch import load_file, save_file

    path = copy_checkpoint("mixtral")
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.block_sparse_moe.experts.7.w3.weight"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"weights missing for model\.layers\.1\.mlp\.experts\.gate_up\.weight"):
        LLM(path, device="cpu", dtype="float32", block_size=4, kv_cache_memory="1MiB")


def test_tensor_parallel_on_an_moe_model_is_a_one_line_error(checkpoint):
    with pytest.raises(UserError, match=r"tensor parallel size 2: the runtime serves qwen2_moe \(mixture of "
                                        r"experts\) on one rank \(tensor_parallel_size=1\)"):
        open_model(checkpoint("qwen2_moe")).with_tensor_parallel(2, 0)
