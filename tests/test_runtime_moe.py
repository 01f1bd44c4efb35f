"""The runtime's mixture-of-experts layers (Qwen3-MoE, Qwen2-MoE, Mixtral) against transformers'
own blocks on the same weights: the loader's mapping of per-expert names into 3-D parameters, the
routing rules each family has, and the grouped experts' numerics (bitwise, bf16 included). The
engine's greedy tokens for these families are in test_runtime_engine.py."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from greedy_reference import hf_model

import fixtures as fx
from ascend_common.errors import UserError
from runtime import LLM, SamplingParams
from runtime.engine.model_runner import build_model
from runtime.layers.moe import SparseMoE
from runtime.model.loader import load_weights, open_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
GREEDY = SamplingParams(temperature=0, max_tokens=12)


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
@pytest.mark.parametrize("family", fx.MOE_FAMILIES + fx.DEEPSEEK_FAMILIES)
def test_sparse_layers_are_transformers_bit_for_bit(checkpoint, family, dtype):
    """Every layer the config makes sparse is a SparseMoE (the others the dense MLP, as transformers
    builds them), and its output equals transformers' block bit for bit on 37 tokens: DeepSeek's and
    GLM-4.5's sigmoid scores with the correction bias, top-k within the best groups, the scaling
    factor and the shared expert, DeepSeek-V2's softmax within groups, included."""
    path = checkpoint(family)
    model, hf = runtime_model(path, DTYPES[dtype]), hf_model(str(path), DTYPES[dtype])
    cfg = model.cfg
    expected = {"qwen3_moe": (True, False, True), "qwen2_moe": (False, True, False, True), "mixtral": (True, True),
                "deepseek_v3": (False, True, True), "deepseek_v2": (False, True, True), "glm4_moe": (False, True, True)}
    assert cfg.moe_layers == expected[family]
    assert (cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size) == (8, 2, 32)
    assert cfg.shared_expert_intermediate_size == {"qwen2_moe": 64, "mixtral": 0, "qwen3_moe": 0}.get(family, 32)
    for i, sparse in enumerate(cfg.moe_layers):
        assert isinstance(model.model.layers[i].mlp, SparseMoE) == sparse
        assert hasattr(hf.model.layers[i].mlp, "experts") == sparse
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


@pytest.mark.parametrize("variant", ["safetensors", fx.FUSED_EXPERTS])
def test_experts_fill_3d_parameters_from_per_expert_names(checkpoint, variant):
    """Expert 5's gate, up and down (Hub names `experts.5.gate_proj` ...) land in rows 5 of the
    runtime's `experts.gate_up` [E, 2I, H] and `experts.down` [E, H, I], as transformers v5 holds them
    — from the Hub's per-expert files and from v5's fused 3-D ones (split by the readers) alike."""
    path = checkpoint("qwen3_moe", variant)
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


def test_tensor_parallel_splits_every_expert_by_its_width(checkpoint):
    """Rank 1 of 2 holds rows 16:32 of each expert's gate and up, columns 16:32 of its down, half of
    the shared expert, and the whole router and shared-expert gate."""
    from ascend_convert.tp_layout import rank_tensors
    from runtime.model.loader import runtime_tensors

    ckpt = open_model(checkpoint("qwen2_moe")).with_tensor_parallel(2, 1)
    assert (ckpt.config.moe_intermediate_size, ckpt.config.shared_expert_intermediate_size) == (16, 32)
    ours = rank_tensors(runtime_tensors(ckpt), ckpt.config.tp, 1)
    hf = hf_model(str(checkpoint("qwen2_moe")), torch.float32).model.layers[1].mlp
    p = "model.layers.1.mlp"
    full = hf.experts.gate_up_proj.detach()
    assert torch.equal(ours[f"{p}.experts.gate_up.weight"].float(), torch.cat([full[:, 16:32], full[:, 48:64]], dim=1))
    assert torch.equal(ours[f"{p}.experts.down.weight"].float(), hf.experts.down_proj.detach()[:, :, 16:32])
    assert tuple(ours[f"{p}.shared_expert.gate_up.weight"].shape) == (64, 64)
    assert tuple(ours[f"{p}.shared_expert.down.weight"].shape) == (64, 32)
    assert torch.equal(ours[f"{p}.gate.weight"].float(), hf.gate.weight.detach())
    assert torch.equal(ours[f"{p}.shared_expert_gate.weight"].float(), hf.shared_expert_gate.weight.detach())


def test_an_expert_width_that_does_not_split_is_named(checkpoint):
    ckpt = open_model(checkpoint("mixtral"))
    with pytest.raises(UserError, match=r"tensor parallel size 3: the model's 4 attention heads"):
        ckpt.with_tensor_parallel(3, 0)
    odd = replace(ckpt, config=replace(ckpt.config, moe_intermediate_size=30))
    with pytest.raises(UserError, match=r"tensor parallel size 4: the model's expert intermediate size 30 is not "
                                        r"divisible by 4"):
        odd.with_tensor_parallel(4, 0)


def test_a_packed_moe_checkpoint_verifies_and_serves_the_tokens_of_the_source(checkpoint, tmp_path):
    """`convert --layout packed --tp 2 --nz` on Qwen2-MoE (sparse and dense layers, a shared
    expert): the experts' 3-D weights tiled to FRACTAL_NZ per expert, verify rebuilds every rank
    from the source, and two ranks answer with the source's tokens."""
    from safetensors import safe_open

    from ascend_convert.converter import ConvertOptions, convert
    from ascend_convert.verify import verify

    src = checkpoint("qwen2_moe")
    out = tmp_path / "packed"
    convert(src, out, ConvertOptions(layout="packed", tp=2, nz=True, dtype="float32"))
    report = verify(out, source=src)
    assert report.ok and report.source_checked == report.tensors_checked > 0
    with safe_open(str(out / "tp2" / "rank0.safetensors"), "pt") as f:
        nd = json.loads(f.metadata()["nd_shapes"])
    assert nd["model.layers.1.mlp.experts.gate_up.weight"] == [8, 32, 64]
    assert nd["model.layers.1.mlp.experts.down.weight"] == [8, 64, 16]
    assert "model.layers.1.mlp.gate.weight" not in nd  # the router: replicated, not a tiled operand
    prompts = [[5, 77, 12, 190, 33], [250, 3, 3, 41, 9, 100, 200, 17, 64, 31, 8]]
    args = {"device": "cpu", "kv_cache_memory": "2MiB"}
    want = [o.token_ids for o in LLM(src, dtype="float32", **args).generate(prompts, GREEDY)]
    llm = LLM(out, tensor_parallel_size=2, **args)
    try:
        assert [o.token_ids for o in llm.generate(prompts, GREEDY)] == want
    finally:
        llm.engine.shutdown()


def _symmetric_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.abs().amax(dim=-1, keepdim=True) / 127
    return torch.round(w / scale).to(torch.int8), scale


def _dynamic_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """W8A8_DYNAMIC in float64: each token quantized with max|x|/127, the integer product, both scales."""
    x = x.double()
    token_scale = x.abs().amax(dim=-1, keepdim=True) / 127
    token_scale[token_scale == 0] = 1  # an all-zero token is all zeros whatever its scale
    xq = torch.clamp(torch.round(x / token_scale), -128, 127)
    return (xq @ q.double().t()) * token_scale * scale.double().t()


def test_w8a8_dynamic_linear_and_experts_are_the_per_token_int8_matmul():
    """QuantLinear (W8A8_DYNAMIC) and the int8 experts compute what npu_dynamic_quant +
    npu_quant_matmul / npu_grouped_matmul do: per-token int8 activations, int32 products, scales."""
    from runtime.layers.moe import ExpertWeights
    from runtime.layers.quant_linear import QuantLinear, QuantScheme

    g = torch.Generator().manual_seed(3)
    w, bias, x = torch.randn(40, 96, generator=g) * 0.05, torch.randn(40, generator=g), torch.randn(7, 96, generator=g)
    x[3] = 0  # an all-zero token (its scale would be 0)
    q, scale = _symmetric_int8(w)
    layer = QuantLinear(96, 40, True, QuantScheme("W8A8_DYNAMIC", 0))
    with torch.no_grad():
        for name, value in {"weight": q, "weight_scale": scale, "weight_offset": torch.zeros_like(scale),
                            "bias": bias}.items():
            getattr(layer, name).copy_(value)
    torch.testing.assert_close(layer(x).double(), _dynamic_reference(x, q, scale) + bias.double(), rtol=1e-6, atol=1e-6)
    assert not hasattr(layer, "input_scale")  # nothing calibrated: activations are scaled per token

    experts = ExpertWeights(3, 96, 40, quantized=True)
    ws = [_symmetric_int8(torch.randn(40, 96, generator=g) * 0.05) for _ in range(3)]
    with torch.no_grad():
        experts.weight.copy_(torch.stack([q for q, _ in ws]))
        experts.weight_scale.copy_(torch.stack([s for _, s in ws]))
        experts.weight_offset.zero_()
    counts = torch.tensor([3, 0, 4])  # rows sorted by expert; expert 1 got none
    got = experts.grouped(x, torch.tensor([3, 3, 7], dtype=torch.int32), counts)
    want = torch.cat([_dynamic_reference(x[:3], *ws[0]), _dynamic_reference(x[3:], *ws[2])])
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("family", "quantize"), [(f, "w8a8-dynamic") for f in fx.MOE_FAMILIES]
                         + [("qwen3_moe", "w8a8")])
def test_quantized_moe_perplexity_is_within_two_percent_of_float(checkpoint, tmp_path, family, quantize):
    """`convert --quantize w8a8-dynamic` (every linear W8A8_DYNAMIC, experts included) and `w8a8`
    (msModelSlim's Qwen3-MoE recipe: W8A8 attention and dense MLPs, W8A8_DYNAMIC experts): the
    description gives each layer its type, and the prompt-logprob perplexity of the fixture text
    (3,934 tokens in windows of 256) stays within 2% of the float model's. Measured: 0.03-0.74%.
    The tiny random models sit near perplexity 1,000-1,400, where the bound is loose; the exact
    arithmetic is the test above."""
    from runtime.evaluation.perplexity import DEFAULT_TEXT, perplexity
    from runtime.layers.quant_linear import QuantLinear

    src = checkpoint(family)
    out = tmp_path / quantize
    from ascend_convert.converter import ConvertOptions, convert

    convert(src, out, ConvertOptions(quantize=quantize, dtype="float32", engine="none"))  # the runtime's test
    args = {"device": "cpu", "dtype": "float32", "kv_cache_memory": "16MiB"}
    quantized = LLM(out, **args)
    model = quantized.engine.runner.model
    layer = model.cfg.moe_layers.index(True)
    assert model.model.layers[layer].mlp.experts.gate_up.quantized
    assert model.model.layers[layer].mlp.gate.weight.dtype == torch.float32  # the router stays FLOAT
    attention = model.model.layers[0].self_attn.qkv
    assert isinstance(attention, QuantLinear) and attention.kind == quantize.upper().replace("-", "_")
    text = DEFAULT_TEXT.read_text()
    base = perplexity(LLM(src, **args), text, window=256).value
    value = perplexity(quantized, text, window=256).value
    assert value != base and abs(value / base - 1) < 0.02, (family, quantize, base, value)


def test_routed_experts_in_another_int8_type_are_refused(checkpoint, tmp_path):
    """vllm-ascend quantizes fused MoE layers as W8A8_DYNAMIC only; so does the runtime."""
    from ascend_convert.converter import ConvertOptions, convert

    out = tmp_path / "q"
    convert(checkpoint("mixtral"), out, ConvertOptions(quantize="w8a8-dynamic", dtype="float32", engine="none"))
    path = out / "quant_model_description.json"
    description = json.loads(path.read_text())
    for name in description:
        if ".experts." in name and description[name] == "W8A8_DYNAMIC":
            description[name] = "W8A16"
    path.write_text(json.dumps(description))
    with pytest.raises(UserError, match=r"model\.layers\.0\.mlp\.experts\.gate_up: W8A16 experts: the runtime "
                                        r"serves routed experts FLOAT or W8A8_DYNAMIC"):
        LLM(out, device="cpu", dtype="float32", kv_cache_memory="16MiB")
