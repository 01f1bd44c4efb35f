"""Block-FP8 sources (DeepSeek-V3/R1's and Qwen3-FP8's format): each linear weight float8_e4m3fn with
a float32 `weight_scale_inv` per [bo, bi] block; converted to the SoC's dtype (or quantized) from the
dequantized value, the scales and `quantization_config` gone, the transform in the manifest and
`verify --source` recomputing it. The fixture is a real Llama checkpoint whose linears this test
quantizes to FP8 blocks in DeepSeek's file format, with blocks that do not divide the shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, run_cli
from fp8_blocks import dequantized, fp8_copy, to_fp8_blocks
from safetensors.torch import load_file, save_file

BLOCK = (48, 32)  # rows 64 and 128 are not multiples of 48: edge blocks are cut short
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture
def fp8_source(checkpoint, tmp_path) -> Path:
    return fp8_copy(checkpoint("llama"), tmp_path / "llama-fp8", lambda n: n.rsplit(".", 2)[-2] in LINEARS, BLOCK)


def test_fp8_blocks_convert_to_the_dequantized_value_cast(fp8_source, tmp_path):
    out = tmp_path / "out"
    assert run_cli("convert", fp8_source, out, "--no-progress").code == 0
    source, written = load_file(str(fp8_source / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert not any(n.endswith("_scale_inv") for n in written) and len(written) == len(source) - 14
    assert {t.dtype for t in written.values()} == {torch.bfloat16}  # auto: the bf16 of the tensors not in FP8
    for name, tensor in written.items():
        if source[name].dtype == torch.float8_e4m3fn:
            want = dequantized(source[name], source[f"{name}_scale_inv"], BLOCK).to(tensor.dtype)
        else:
            want = source[name].to(tensor.dtype)
        assert torch.equal(tensor, want), name
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    manifest = json.loads((out / "ascend_manifest.json").read_text())
    record = manifest["tensors"]["model.layers.0.mlp.down_proj.weight"]
    assert record["source"]["dtype"] == "float8_e4m3fn"
    assert record["transforms"][0] == "dequantize:fp8_e4m3_block48x32"
    assert run_cli("verify", out, "--source", fp8_source).code == 0
    assert run_cli("preflight", out).code == 0


def test_fp8_blocks_quantize_to_w8a8_dynamic_in_the_same_pass(fp8_source, tmp_path):
    out = tmp_path / "out"
    assert run_cli("convert", fp8_source, out, "--quantize", "w8a8-dynamic", "--no-progress").code == 0
    written = load_file(str(out / "quant_model_weights.safetensors"))
    assert written["model.layers.0.mlp.down_proj.weight"].dtype == torch.int8
    assert run_cli("verify", out, "--source", fp8_source).code == 0


def test_an_fp8_weight_without_its_scale_is_one_line(fp8_source, tmp_path):
    tensors = load_file(str(fp8_source / "model.safetensors"))
    del tensors["model.layers.1.self_attn.o_proj.weight_scale_inv"]
    save_file(tensors, str(fp8_source / "model.safetensors"))
    out = tmp_path / "out"
    assert_one_line_error(run_cli("convert", fp8_source, out, "--no-progress"),
                          f"{fp8_source / 'model.safetensors'}: tensor model.layers.1.self_attn.o_proj.weight is "
                          "float8_e4m3fn without its model.layers.1.self_attn.o_proj.weight_scale_inv (one float32 "
                          "scale per 48x32 block)")
    assert not out.exists() and not (tmp_path / ".out.partial").exists()


def test_an_fp8_scale_of_the_wrong_block_shape_is_one_line(fp8_source, tmp_path):
    tensors = load_file(str(fp8_source / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight_scale_inv"
    tensors[name] = tensors[name][:, :1].contiguous()
    save_file(tensors, str(fp8_source / "model.safetensors"))
    assert_one_line_error(run_cli("convert", fp8_source, tmp_path / "out", "--no-progress"),
                          f"tensor {name} is float32 [3, 1]; the [128, 64] weight's 48x32 blocks need float32 [3, 2]")


def test_fp8_tensors_without_a_block_config_are_one_line(fp8_source, tmp_path):
    config = json.loads((fp8_source / "config.json").read_text())
    del config["quantization_config"]
    (fp8_source / "config.json").write_text(json.dumps(config))
    assert_one_line_error(run_cli("convert", fp8_source, tmp_path / "out", "--no-progress"),
                          "is float8_e4m3fn, but config.json has no block-FP8 quantization_config")


@pytest.mark.parametrize("shape", [(96, 64), (100, 70)])  # whole 48x32 blocks (one broadcast) and cut ones
def test_the_readers_dequantization_is_the_block_by_block_one(shape):
    from ascend_convert.readers.fp8_blocks import dequantize

    q, scale = to_fp8_blocks(torch.randn(shape, generator=torch.Generator().manual_seed(7)), BLOCK)
    assert torch.equal(dequantize(q, scale, BLOCK), dequantized(q, scale, BLOCK))
