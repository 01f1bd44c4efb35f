"""The runtime on msModelSlim's int8 layout: each quantized linear computes what its definition says
(W8A16 through int8pack or per-layer dequantization, W8A8 as the NPU's integer matmul), a W8A16
model's greedy tokens equal transformers' on the dequantized weights, and a W8A8 model's tokens and prompt
logprobs equal transformers' with its W8A8 layers computed in the NPU's integer arithmetic."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from greedy_reference import assert_greedy_equal, dequantized_checkpoint, hf_greedy, hf_model
from safetensors.torch import load_file, save_file

from ascend_common.errors import UserError
from ascend_convert.converter import ConvertOptions, convert
from ascend_convert.quantize import (
    ActivationQuant,
    W8A8Linear,
    loaded_deq_scale,
    quantize_w8a8,
    quantize_weight,
)
from runtime import LLM, SamplingParams
from runtime.layers.quant_linear import QuantLinear, QuantScheme

PROMPTS = [[5, 77, 12, 190, 33], [250, 3, 3, 41, 9, 100, 200, 17, 64, 31, 8], [301, 2, 44]]


def _layer(scheme: QuantScheme, tensors: dict[str, torch.Tensor], bias: torch.Tensor | None) -> QuantLinear:
    out, width = tensors["weight"].shape
    layer = QuantLinear(width, out, bias is not None, scheme)
    with torch.no_grad():
        for name, value in {**tensors, **({"bias": bias} if bias is not None else {})}.items():
            getattr(layer, name).copy_(value)
    return layer


@pytest.mark.parametrize(("symmetric", "group_size"), [(True, 0), (False, 0), (True, 16), (False, 32)])
def test_w8a16_linear_is_x_times_the_dequantized_weight(symmetric, group_size):
    g = torch.Generator().manual_seed(0)
    w, bias, x = torch.randn(48, 64, generator=g) * 0.05, torch.randn(48, generator=g), torch.randn(3, 64, generator=g)
    qw = quantize_weight(w, symmetric=symmetric, group_size=group_size)
    layer = _layer(QuantScheme("W8A16", group_size), {"weight": qw.weight, "weight_scale": qw.scale,
                                                      "weight_offset": qw.offset}, bias)
    want = x @ qw.dequantize().t() + bias
    assert torch.allclose(layer(x), want, rtol=1e-5, atol=1e-5)
    layer = layer.to(torch.bfloat16)
    assert layer.weight_scale.dtype == torch.float32  # the scales are never rounded to the model dtype
    assert torch.allclose(layer(x.bfloat16()).float(), want, rtol=0.02, atol=0.05)


def test_w8a8_linear_is_the_npu_integer_matmul():
    g = torch.Generator().manual_seed(1)
    w, bias, x = torch.randn(40, 96, generator=g) * 0.05, torch.randn(40, generator=g), torch.randn(5, 96, generator=g)
    ref = quantize_w8a8(w, bias, ActivationQuant.from_range(x.min().item(), x.max().item()))
    layer = _layer(QuantScheme("W8A8", 0), {
        "weight": ref.weight, "weight_scale": ref.weight_scale, "weight_offset": ref.weight_offset,
        "input_scale": ref.input_scale, "input_offset": ref.input_offset, "deq_scale": ref.deq_scale,
        "quant_bias": ref.quant_bias}, bias)
    assert torch.allclose(layer(x), ref.matmul(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("options", [{}, {"group_size": 16, "symmetric": False}])
def test_w8a16_greedy_tokens_equal_transformers_on_the_dequantized_weights(checkpoint, tmp_path, options):
    src = checkpoint("llama")
    quantized = tmp_path / "w8a16"
    convert(src, quantized, ConvertOptions(quantize="w8a16", dtype="float32", engine="none", **options))  # per group too
    reference = tmp_path / "dequantized"
    dequantized_checkpoint(quantized, reference)
    llm = LLM(quantized, device="cpu", kv_cache_memory="16MiB")
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=12))
    for prompt, out in zip(PROMPTS, outs):
        assert_greedy_equal(out.token_ids, hf_greedy(reference, torch.float32, prompt, 12), torch.float32, "w8a16")
    llm.engine.block_manager.check_whole()


def test_w8a8_greedy_tokens_equal_transformers_with_the_npu_arithmetic(checkpoint, tmp_path):
    """The default W8A8 (smoothed q/k/v and gate/up, down_proj left float) served by the runtime gives
    the tokens, and the prompt logprobs, of transformers on the converted weights with each W8A8 layer
    computed by `W8A8Linear.matmul` (the NPU's arithmetic: int8 input, int32 accumulation, quant_bias,
    deq_scale, in float64)."""
    src = checkpoint("qwen2")  # q/k/v biases: quant_bias carries them
    quantized, reference = tmp_path / "w8a8", tmp_path / "dequantized"
    convert(src, quantized, ConvertOptions(quantize="w8a8", dtype="float32"))
    dequantized_checkpoint(quantized, reference)
    q = load_file(quantized / "quant_model_weights.safetensors")
    model = hf_model(str(reference), torch.float32)
    hooked = 0
    for name, module in model.named_modules():
        if f"{name}.input_scale" in q:
            layer = W8A8Linear(*(q[f"{name}.{part}"] for part in ("weight", "weight_scale", "weight_offset",
                                                                  "input_scale", "input_offset")),
                               loaded_deq_scale(q[f"{name}.deq_scale"]), q[f"{name}.quant_bias"])
            module.register_forward_hook(
                lambda _m, args, out, layer=layer: layer.matmul(args[0].reshape(-1, args[0].shape[-1]))
                .view(out.shape))
            hooked += 1
    assert hooked == 6 * model.config.num_hidden_layers  # all but down_proj
    llm = LLM(quantized, device="cpu", kv_cache_memory="16MiB")
    assert isinstance(llm.engine.runner.model.model.layers[0].mlp.down, torch.nn.Linear)
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=12, prompt_logprobs=0))
    for prompt, out in zip(PROMPTS, outs):
        assert_greedy_equal(out.token_ids, hf_greedy(reference, torch.float32, prompt, 12), torch.float32, "w8a8")
        with torch.no_grad():
            want = torch.log_softmax(model(torch.tensor([prompt])).logits[0], -1)
        got = [entry[token] for entry, token in zip(out.prompt_logprobs[1:], prompt[1:])]
        torch.testing.assert_close(torch.tensor(got), want[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])],
                                   rtol=1e-5, atol=1e-5)
    llm.engine.block_manager.check_whole()


def test_w8a8_fused_parts_must_share_their_input_scale_and_their_type(checkpoint, tmp_path):
    quantized = tmp_path / "w8a8"
    convert(checkpoint("qwen2"), quantized, ConvertOptions(quantize="w8a8"))
    path = quantized / "quant_model_weights.safetensors"
    tensors = load_file(path)
    tensors["model.layers.0.self_attn.k_proj.input_scale"] *= 2
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"the parts of model\.layers\.0\.self_attn\.qkv have different "
                                        r"input_scale values"):
        LLM(quantized, device="cpu", kv_cache_memory="16MiB")
    path = quantized / "quant_model_description.json"
    description = json.loads(path.read_text())
    description["model.layers.1.self_attn.k_proj.weight"] = "FLOAT"
    path.write_text(json.dumps(description))
    with pytest.raises(UserError, match=r"quant_model_description\.json: layer 1 mixes quant types in one fused "
                                        r"module: q W8A8, k FLOAT, v W8A8; vllm-ascend needs one type"):
        LLM(quantized, device="cpu", kv_cache_memory="16MiB")


@pytest.mark.skipif(not torch.__dict__.get("npu"), reason="torch_npu's quantized matmuls need an Ascend NPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_npu_quantized_matmuls_match_the_cpu_layers(dtype):
    """On an NPU, W8A16 runs npu_weight_quant_batchmatmul, W8A8 npu_quantize + npu_quant_matmul and
    W8A8_DYNAMIC npu_dynamic_quant + npu_quant_matmul(pertoken_scale); each gives what the CPU layer gives."""
    g = torch.Generator().manual_seed(2)
    w, bias, x = torch.randn(48, 64, generator=g) * 0.05, torch.randn(48, generator=g), torch.randn(5, 64, generator=g)
    qw = quantize_weight(w)
    w8a16 = _layer(QuantScheme("W8A16", 0), {"weight": qw.weight, "weight_scale": qw.scale,
                                            "weight_offset": qw.offset}, bias)
    ref = quantize_w8a8(w, bias, ActivationQuant.from_range(x.min().item(), x.max().item()))
    w8a8 = _layer(QuantScheme("W8A8", 0), {
        "weight": ref.weight, "weight_scale": ref.weight_scale, "weight_offset": ref.weight_offset,
        "input_scale": ref.input_scale, "input_offset": ref.input_offset, "deq_scale": ref.deq_scale,
        "quant_bias": ref.quant_bias}, bias)
    dynamic_scale = w.abs().amax(dim=-1, keepdim=True) / 127
    w8a8_dynamic = _layer(QuantScheme("W8A8_DYNAMIC", 0), {
        "weight": torch.round(w / dynamic_scale).to(torch.int8), "weight_scale": dynamic_scale,
        "weight_offset": torch.zeros_like(dynamic_scale)}, bias)
    for layer in (w8a16, w8a8, w8a8_dynamic):
        want = layer.to(dtype)(x.to(dtype)).float()
        got = layer.to("npu")(x.to("npu", dtype)).float().cpu()
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
