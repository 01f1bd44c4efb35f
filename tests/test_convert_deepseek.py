"""DeepSeek-V3 end to end through convert: its FP8 release format (e4m3 linears, a float32
`weight_scale_inv` per block) dequantized while streaming to bf16 or straight to W8A8_DYNAMIC, its
MTP layer kept (converted and described with its real types) or dropped, the W8A8_DYNAMIC placement
msModelSlim's DeepSeek recipe gives, and the bad inputs of this family as one-line errors.

The fixture is the tiny seeded DeepSeek-V3 checkpoint from transformers' own class (3 decoder
layers, layer 0 dense, an MTP layer 3); this test quantizes its linears to FP8 blocks in DeepSeek's
file format, with a block that divides none of the shapes in both directions."""

from __future__ import annotations

import json
import re
import shutil
import struct
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, run_cli
from fp8_blocks import dequantized, fp8_copy
from safetensors.torch import load_file, save_file

from ascend_common.errors import UserError

BLOCK = (48, 40)  # rows 32/40/64/128 and cols 32/64/128: edge blocks cut short, one block wider than a row
#: The linears DeepSeek-V3 ships in FP8 (the decoder's, the MTP layer's decoder part included); the
#: router, norms, embeddings, lm_head and the MTP layer's own eh_proj and shared_head stay bf16.
FP8_LINEAR = re.compile(r"\.(q_a_proj|q_b_proj|q_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj|gate_proj|up_proj|"
                        r"down_proj)\.weight$")
MTP = "model.layers.3."  # num_hidden_layers 3: the MTP layer is stored as layer 3


def convert(src: Path, out: Path, *extra: str):
    return run_cli("convert", src, out, "--no-progress", *extra)


@pytest.fixture(scope="module")
def fp8_v3(checkpoint, tmp_path_factory) -> Path:
    """The DeepSeek-V3 fixture as DeepSeek publishes V3/R1: FP8 blocks + weight_scale_inv, quantization_config."""
    return fp8_copy(checkpoint("deepseek_v3"), tmp_path_factory.mktemp("deepseek") / "deepseek_v3-fp8",
                    lambda name: FP8_LINEAR.search(name) is not None, BLOCK)


@pytest.fixture(scope="module")
def source(fp8_v3) -> dict[str, torch.Tensor]:
    return load_file(str(fp8_v3 / "model.safetensors"))


def _converted(fp8_v3: Path, name: str, *extra: str) -> Path:
    out = fp8_v3.parent / name
    result = convert(fp8_v3, out, *extra)
    assert result.code == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def bf16_out(fp8_v3) -> Path:
    return _converted(fp8_v3, "bf16", "--dtype", "bfloat16")


@pytest.fixture(scope="module")
def w8a8_out(fp8_v3) -> Path:
    """msModelSlim's DeepSeek-V3 placement, the MTP layer's decoder part quantized like the others."""
    return _converted(fp8_v3, "w8a8-dynamic", "--quantize", "w8a8-dynamic", "--mtp", "quantize")


def value(source: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """A source tensor's float32 value: FP8 blocks dequantized block by block."""
    if source[name].dtype == torch.float8_e4m3fn:
        return dequantized(source[name], source[f"{name}_scale_inv"], BLOCK)
    return source[name].float()


def test_fp8_source_to_bf16_is_the_block_dequantization(fp8_v3, source, bf16_out):
    written = load_file(str(bf16_out / "model.safetensors"))
    fp8 = [n for n in source if source[n].dtype == torch.float8_e4m3fn]
    assert len(fp8) == 4 * 5 + 3 + 3 * (3 + 8 * 3)  # 4 layers' MLA; layer 0's MLP; 3 MoE layers' shared + 8 experts
    assert sorted(written) == sorted(n for n in source if not n.endswith("_scale_inv"))
    for name, tensor in written.items():
        if name.endswith("e_score_correction_bias"):  # the router's bias stays float32 (arch.FP32_ROLES)
            assert tensor.dtype == torch.float32 and torch.equal(tensor, source[name].float()), name
        else:
            assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, value(source, name).bfloat16()), name
    assert "quantization_config" not in json.loads((bf16_out / "config.json").read_text())
    records = json.loads((bf16_out / "ascend_manifest.json").read_text())["tensors"]
    for name in fp8:
        assert records[name]["source"]["dtype"] == "float8_e4m3fn"
        assert records[name]["transforms"][0] == "dequantize:fp8_e4m3_block48x40", name
    assert run_cli("verify", bf16_out, "--source", fp8_v3).code == 0


def _flip_a_byte(path: Path, tensor: str) -> None:
    """One byte of `tensor`'s data in a safetensors file, changed in place (to another finite e4m3)."""
    data = bytearray(path.read_bytes())
    header_len = struct.unpack("<Q", data[:8])[0]
    start = 8 + header_len + json.loads(data[8:8 + header_len])[tensor]["data_offsets"][0]
    data[start] ^= 0x01 if (data[start] ^ 0x01) & 0x7F != 0x7F else 0x02  # 0x7F/0xFF are e4m3fn's NaN
    path.write_bytes(bytes(data))


def test_verify_source_recomputes_the_dequantization(fp8_v3, bf16_out, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(fp8_v3, changed)
    _flip_a_byte(changed / "model.safetensors", "model.layers.1.self_attn.kv_b_proj.weight")
    result = run_cli("verify", bf16_out, "--source", changed)
    assert result.code != 0 and "model.layers.1.self_attn.kv_b_proj.weight" in result.stdout + result.stderr


def test_fp8_source_to_w8a8_dynamic_in_the_same_pass(fp8_v3, source, w8a8_out):
    written = load_file(str(w8a8_out / "quant_model_weights.safetensors"))
    for name in ("model.layers.0.self_attn.q_a_proj.weight", "model.layers.1.mlp.experts.7.down_proj.weight",
                 "model.layers.2.mlp.shared_experts.up_proj.weight", MTP + "self_attn.o_proj.weight"):
        w = value(source, name)  # quantized from the dequantized float32, not from a bf16 cast of it
        scale = w.abs().amax(1, keepdim=True) / 127
        assert torch.equal(written[name], torch.round(w / scale).to(torch.int8)), name
        assert torch.equal(written[name + "_scale"], scale), name
        assert torch.equal(written[name + "_offset"], torch.zeros_like(scale)), name
    kv_b = "model.layers.2.self_attn.kv_b_proj.weight"  # FP8 in the source, FLOAT in the output
    assert torch.equal(written[kv_b], value(source, kv_b).bfloat16())
    assert "quantization_config" not in json.loads((w8a8_out / "config.json").read_text())
    record = json.loads((w8a8_out / "ascend_manifest.json").read_text())["tensors"][
        "model.layers.0.self_attn.q_a_proj.weight"]
    assert record["transforms"][0] == "dequantize:fp8_e4m3_block48x40"
    assert run_cli("verify", w8a8_out, "--source", fp8_v3).code == 0


# msModelSlim 26.1.0's DeepSeek-V3 placement, lab_practice/deepseek_v3/deepseek_w4a8_per_channel.yaml:47-69
# (module names matched with fnmatch; only nn.Linear modules are quantized, every other parameter is
# written FLOAT by the saver, save/ascendv1.py:526-528): W8A8_DYNAMIC for "*self_attn*" but "*kv_b_proj"
# (MLA absorbs its raw weight; vllm-ascend's mla_v1.py asserts it unquantized), for "*mlp*" but "*gate"
# (the router) and the routed experts, and for the MTP layer's experts; the routed experts' W4A8_DYNAMIC
# step is W8A8_DYNAMIC here, as lab_practice/deepseek_v3_2/deepseek_w8a8.yaml:55-59 quantizes all of
# "*mlp*" but "*gate". The MTP layer's eh_proj and shared_head.head match neither: FLOAT.
RECIPE: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("W8A8_DYNAMIC", ("*self_attn*",), ("*kv_b_proj",)),
    ("W8A8_DYNAMIC", ("*mlp*",), ("*gate", "*mlp.experts.*")),
    ("W8A8_DYNAMIC", ("*mlp.experts*",), ()),
)


def recipe_type(module: str) -> str:
    for quant_type, include, exclude in RECIPE:
        if any(fnmatch(module, p) for p in include) and not any(fnmatch(module, p) for p in exclude):
            return quant_type
    return "FLOAT"


def test_w8a8_dynamic_placement_is_msmodelslims_and_the_mtp_layer_is_described(source, w8a8_out):
    description = json.loads((w8a8_out / "quant_model_description.json").read_text())
    written = load_file(str(w8a8_out / "quant_model_weights.safetensors"))
    assert description["model_quant_type"] == "W8A8_DYNAMIC"
    described = {k: v for k, v in description.items() if k not in ("model_quant_type", "version", "group_size")}
    assert sorted(described) == sorted(written)  # every written tensor described, nothing else
    originals = [n for n in source if not n.endswith("_scale_inv")]
    assert {n for n in originals if n.startswith(MTP)} <= set(described)  # MTP kept and quantized
    for name in originals:
        linear = name.endswith(".weight") and source[name].ndim == 2 and "embed_tokens" not in name
        want = recipe_type(name.removesuffix(".weight")) if linear else "FLOAT"
        assert described[name] == want, name
        if want != "FLOAT":
            assert described[name + "_scale"] == described[name + "_offset"] == want, name
            assert written[name].dtype == torch.int8, name
    # the facts the recipe encodes, spelled out
    for layer in range(4):
        attn = f"model.layers.{layer}.self_attn."
        assert described[attn + "kv_b_proj.weight"] == "FLOAT"
        assert described[attn + "q_a_proj.weight"] == described[attn + "kv_a_proj_with_mqa.weight"] == "W8A8_DYNAMIC"
    assert described["model.layers.0.mlp.gate_proj.weight"] == "W8A8_DYNAMIC"  # dense first layer: "*gate" ends a name
    for layer in (1, 2, 3):
        assert described[f"model.layers.{layer}.mlp.gate.weight"] == "FLOAT"
        assert described[f"model.layers.{layer}.mlp.gate.e_score_correction_bias"] == "FLOAT"
        assert written[f"model.layers.{layer}.mlp.gate.e_score_correction_bias"].dtype == torch.float32
        assert described[f"model.layers.{layer}.mlp.shared_experts.down_proj.weight"] == "W8A8_DYNAMIC"
        assert described[f"model.layers.{layer}.mlp.experts.7.up_proj.weight"] == "W8A8_DYNAMIC"
    for part in ("eh_proj", "enorm", "hnorm", "shared_head.norm", "shared_head.head", "embed_tokens"):
        assert described[f"{MTP}{part}.weight"] == "FLOAT", part
        assert written[f"{MTP}{part}.weight"].dtype == torch.bfloat16, part
    for name in ("lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"):
        assert described[name] == "FLOAT"


def test_mtp_keep_converts_the_layer_float_and_describes_it(fp8_v3, source, tmp_path):
    """The default: the MTP layer converted, FLOAT when quantizing (vllm-ascend 182b75e expects MTP
    unquantized; only W8A8 + float MTP serves DeepSeek-R1 there, #2771), each tensor described FLOAT,
    the decoder's layers quantized as ever; verify --source recomputes both."""
    out = tmp_path / "out"
    assert convert(fp8_v3, out, "--quantize", "w8a8-dynamic").code == 0
    description = json.loads((out / "quant_model_description.json").read_text())
    written = load_file(str(out / "quant_model_weights.safetensors"))
    mtp = [n for n in source if n.startswith(MTP) and not n.endswith("_scale_inv")]
    assert mtp and all(description[n] == "FLOAT" and written[n].dtype != torch.int8 for n in mtp)
    assert not any(n.startswith(MTP) and n.endswith(("_scale", "_offset")) for n in written)
    assert description["model.layers.2.self_attn.o_proj.weight"] == "W8A8_DYNAMIC"
    assert torch.equal(written[MTP + "self_attn.o_proj.weight"], value(source, MTP + "self_attn.o_proj.weight").bfloat16())
    assert run_cli("verify", out, "--source", fp8_v3).code == 0


def test_mtp_drop_leaves_the_layer_out(fp8_v3, source, tmp_path):
    out = tmp_path / "out"
    assert convert(fp8_v3, out, "--mtp", "drop").code == 0
    written = load_file(str(out / "model.safetensors"))
    assert not any(n.startswith(MTP) for n in written)
    assert sorted(written) == sorted(n for n in source if not n.endswith("_scale_inv") and not n.startswith(MTP))
    config = json.loads((out / "config.json").read_text())
    assert config["num_nextn_predict_layers"] == 0 and config["num_hidden_layers"] == 3
    assert run_cli("verify", out, "--source", fp8_v3).code == 0


def _without(tensor: str):
    def damage(src: Path) -> None:
        tensors = load_file(str(src / "model.safetensors"))
        del tensors[tensor]
        save_file(tensors, str(src / "model.safetensors"))
    return damage


def _scale_cut(src: Path) -> None:
    tensors = load_file(str(src / "model.safetensors"))
    name = "model.layers.1.self_attn.q_b_proj.weight_scale_inv"  # [96, 32] in 48x40 blocks: [2, 1]
    tensors[name] = torch.ones(1, 1)
    save_file(tensors, str(src / "model.safetensors"))


def _config(**changes):
    def damage(src: Path) -> None:
        config = json.loads((src / "config.json").read_text())
        config.update(changes)
        (src / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return damage


BAD = {
    "fp8 weight without its scale": (_without("model.layers.2.mlp.experts.3.up_proj.weight_scale_inv"),
                                     ("tensor model.layers.2.mlp.experts.3.up_proj.weight is float8_e4m3fn without "
                                     "its model.layers.2.mlp.experts.3.up_proj.weight_scale_inv (one float32 scale "
                                     "per 48x40 block)")),
    "scale of the wrong block shape": (_scale_cut, ("tensor model.layers.1.self_attn.q_b_proj.weight_scale_inv is "
                                                   "float32 [1, 1]; the [96, 32] weight's 48x40 blocks need float32 "
                                                   "[2, 1]")),
    "n_group not dividing the experts": (_config(n_group=3), ("config.json: n_group 3 does not divide the 8 routed "
                                                             "experts")),
    "topk_group above n_group": (_config(topk_group=5), "config.json: topk_group 5 is more than n_group 4"),
    "kv_lora_rank missing": (_config(kv_lora_rank=None), ("config.json: kv_lora_rank is missing; a deepseek_v3 "
                                                         "model's multi-head latent attention needs it")),
    "MTP layer without eh_proj": (_without(MTP + "eh_proj.weight"), ("multi-token-prediction layer 3 is incomplete: "
                                                                    "model.layers.3.eh_proj.weight missing")),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_deepseek_input_is_one_line_and_writes_nothing(case, fp8_v3, tmp_path):
    damage, message = BAD[case]
    src = tmp_path / "src"
    shutil.copytree(fp8_v3, src)
    damage(src)
    out = tmp_path / "out"
    assert_one_line_error(convert(src, out, "--quantize", "w8a8-dynamic"), message)
    assert not out.exists() and not (tmp_path / ".out.partial").exists()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("num_nextn_predict_layers", "1", "num_nextn_predict_layers must be a non-negative integer, not '1'"),
    ("routed_scaling_factor", "x", "routed_scaling_factor must be a positive number, not 'x'"),
])
def test_mtp_count_and_scaling_factor_of_the_wrong_type_are_named(checkpoint, field, value, message):
    """Read from config.json as they are: a string is not silently 0 MTP layers (then blamed on the
    layer's tensors) nor a crash when the runtime multiplies by it."""
    from ascend_convert.arch import find_spec

    config = json.loads((checkpoint("deepseek_v3") / "config.json").read_text())
    with pytest.raises(UserError, match=f"^config.json: {re.escape(message)}$"):
        find_spec(config).canonical_config({**config, field: value})


def test_w8a8_cannot_quantize_an_mtp_layer(fp8_v3, tmp_path):
    """W8A8's calibration runs transformers' model, which has no MTP layer: refused before anything is read."""
    result = convert(fp8_v3, tmp_path / "out", "--quantize", "w8a8", "--mtp", "quantize")
    assert_one_line_error(result, "--quantize w8a8 --mtp quantize: W8A8's calibration runs transformers' model, which "
                                  "has no MTP layer to calibrate (use --quantize w8a8-dynamic, or --mtp keep)")


def test_the_packed_layout_refuses_mla_and_leaves_mtp_out(fp8_v3, checkpoint, tmp_path):
    """`--layout packed` splits heads the Llama way, which MLA's q_b/kv_b/o are not: refused in one line
    (the runtime refuses tensor parallel for MLA too). GLM-4.5 packs, without its MTP layer (the
    runtime that reads the packed layout never serves one): rank 0 of 2 loads."""
    from ascend_convert.converter import ConvertOptions
    from ascend_convert.converter import convert as convert_in_process
    from runtime.engine.model_runner import build_model
    from runtime.model.loader import load_weights, open_model

    result = convert(fp8_v3, tmp_path / "mla", "--layout", "packed")
    assert_one_line_error(result, "--layout packed does not split multi-head latent attention (deepseek_v3): convert "
                                  "with --layout default (vllm-ascend splits it at load)")
    out = tmp_path / "glm"
    convert_in_process(checkpoint("glm4_moe"), out, ConvertOptions(layout="packed", tp=2, engine="none"))
    assert json.loads((out / "config.json").read_text())["num_nextn_predict_layers"] == 0
    ckpt = open_model(out).with_tensor_parallel(2, 0)
    load_weights(build_model(ckpt, torch.device("cpu"), torch.float32), ckpt)  # every tensor placed, none left over
