"""`ascendkit preflight`: each real vllm-ascend load failure rebuilt as the checkpoint that had it
(tests named after the issue), each failing with its rule and its exact line; the CLI's exit
codes, report formats, allow file and unusable-input errors; and the converter's own outputs clean.

The directories are hand-made real files (tests/preflight_dirs.py); the findings are compared as
whole lines, so a changed message fails here and is changed on purpose."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from xml.etree import ElementTree as ET

import preflight_dirs as pd
import pytest
import torch
from conftest import assert_one_line_error, conversion_cache, run_cli
from preflight_dirs import DESC, lines, quantized_dir

from ascend_convert.preflight.run import run_preflight

SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sarif" / "sarif-schema-2.1.0.json"
SOC_910A = ("error model.soc: ascend910a: Atlas 800 / 910A is not supported by the engine (docs/source/faqs.md:17-29 "
            "'Ascend 910, Ascend 910 Pro B ... unplanned yet'; vllm_ascend/device/hardware.py:64-75 raises "
            "'Cannot support runtime soc_version')")
LLAMA_910A = "warning model.support: model_type llama: Llama2/3/3.1/3.2 is listed for ascend910b, not for ascend910a"


def undescribed(name: str, what: str) -> str:
    return (f"error quant.undescribed: {name}: 1 weight(s) of {what} not in {DESC} ({name}): "
            f"KeyError: '{name}' at load")


# --------------------------------------------------------------------------- clean baselines


def test_hand_made_checkpoints_are_clean_as_built(tmp_path):
    """The base directories break no rule, so each issue's test sees only what it broke."""
    assert lines(quantized_dir(tmp_path / "w8a8-dynamic")) == []
    assert lines(quantized_dir(tmp_path / "w8a8", qtype="W8A8")) == []
    tensors, _ = pd.model_tensors()
    assert lines(pd.write_dir(tmp_path / "float", pd.config(), tensors)) == []


# --------------------------------------------------------------------------- the issues, one checkpoint each


def test_issue_8367_lm_head_not_in_description(tmp_path):
    model = quantized_dir(tmp_path, lambda t, types: types.pop("lm_head.weight"))
    assert lines(model) == [undescribed("lm_head.weight", "the LM head")]


def test_issue_8367_tied_lm_head_not_in_description(tmp_path):
    """A tied model stores no lm_head.weight, but the engine still builds the head with the quant
    config and looks its type up."""
    def untie(tensors, types):
        del tensors["lm_head.weight"], types["lm_head.weight"]
    model = quantized_dir(tmp_path / "tied", untie, cfg=pd.config(tie_word_embeddings=True))
    assert lines(model) == [
        ("error quant.undescribed: lm_head.weight: 1 weight(s) of the LM head (tied to the embedding: the engine still "
        "builds it with the quant config and looks its type up) not in quant_model_description.json (lm_head.weight): "
        "KeyError: 'lm_head.weight' at load")]
    described = quantized_dir(tmp_path / "described", lambda t, types: t.pop("lm_head.weight"),
                              cfg=pd.config(tie_word_embeddings=True))
    assert lines(described) == []


def test_issue_7350_embedding_described_under_another_name(tmp_path):
    def rename(_t, types):
        types["embed_tokens.weight"] = types.pop("model.embed_tokens.weight")
    cfg = pd.config("kimi_k2", architectures=["DeepseekV3ForCausalLM"])  # its embedding is looked up by name
    assert lines(quantized_dir(tmp_path, rename, cfg=cfg)) == [
        undescribed("model.embed_tokens.weight", "the embedding"),
        (f"warning quant.absent: embed_tokens.weight: 1 tensor(s) {DESC} lists are in no weight file "
        "(embed_tokens.weight)")]


def test_issue_3534_deepseek_v3_fp8_e4m3_weights(tmp_path):
    """DeepSeek-V3's own release: FP8 E4M3 linear weights and `quant_method: fp8`; no FP8 matmul on A2."""
    tensors, _ = pd.model_tensors()
    for name in [n for n in tensors if ".self_attn." in n or ".mlp." in n]:
        tensors[name] = tensors[name].to(torch.float8_e4m3fn)
    cfg = pd.config("deepseek_v3", architectures=["DeepseekV3ForCausalLM"],
                    quantization_config={"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]})
    assert lines(pd.write_dir(tmp_path, cfg, tensors)) == [
        ("error model.tensor_dtype: model.layers.0.mlp.down_proj.weight, model.layers.0.mlp.gate_proj.weight, "
        "model.layers.0.mlp.up_proj.weight and 11 more: 14 float8_e4m3fn tensor(s): Atlas 800 A2 / 910B has no FP8 "
        "matmul; quantize from bf16 with msModelSlim (W8A8) instead")]  # fp8 itself is a method the NPU has (950)


def test_issue_4835_embed_tokens_not_in_description(tmp_path):
    cfg = pd.config("deepseek_v32", architectures=["DeepseekV32ForCausalLM"])
    model = quantized_dir(tmp_path, lambda t, types: types.pop("model.embed_tokens.weight"), cfg=cfg)
    assert lines(model) == [undescribed("model.embed_tokens.weight", "the embedding")]


def test_a_llama_embedding_is_looked_up_without_its_name(tmp_path):
    """vLLM builds Llama's embedding with no prefix: the loader asks for '' and finds it FLOAT when any
    weight is, so a description without the embedding loads; one without any FLOAT raises KeyError '.weight'."""
    model = quantized_dir(tmp_path / "a", lambda t, types: types.pop("model.embed_tokens.weight"))
    assert lines(model) == []

    def no_float(tensors, types):
        for name in [n for n, t in types.items() if t == "FLOAT"]:
            del types[name]
    assert lines(quantized_dir(tmp_path / "b", no_float)) == [
        ("error quant.undescribed: model.embed_tokens.weight: the llama embedding is looked up without a name: with no "
         "FLOAT entry in quant_model_description.json, KeyError: '.weight' at load"),
        ("error quant.undescribed: lm_head.weight: 1 weight(s) of the LM head not in quant_model_description.json "
         "(lm_head.weight): KeyError: 'lm_head.weight' at load"),
        ("warning quant.undescribed_other: model.layers.0.input_layernorm.weight, "
         "model.layers.0.post_attention_layernorm.weight, model.layers.1.input_layernorm.weight and 2 more: 5 tensor(s) "
         "not in quant_model_description.json")]


def test_issue_4313_vision_tower_weight_not_in_description(tmp_path):
    def add_vision(tensors, _types):
        tensors["visual.blocks.0.attn.qkv.weight"] = torch.zeros(3 * pd.HIDDEN, pd.HIDDEN, dtype=torch.bfloat16)
    model = quantized_dir(tmp_path, add_vision)
    assert lines(model) == [undescribed("visual.blocks.0.attn.qkv.weight", "the vision tower")]


def _mtp_dir(root: Path, cfg: dict) -> Path:
    """Three layers stored, `num_hidden_layers` 2: layer 2 is the MTP layer, left out of the description."""
    tensors, types = pd.quantized(layers=3)
    types = {n: t for n, t in types.items() if ".layers.2." not in n}
    return pd.write_dir(root, cfg, tensors, pd.description(types))


MTP_LINES = [
    ("warning quant.undescribed_mtp: model.layers.2.mlp.down_proj.weight: 7 weight(s) of the MTP layer (layer 2 >= "
    "num_hidden_layers 2) not in quant_model_description.json (model.layers.2.mlp.down_proj.weight, "
    "model.layers.2.mlp.gate_proj.weight, model.layers.2.mlp.up_proj.weight and 4 more): served with MTP speculative "
    "decoding, KeyError: 'model.layers.2.mlp.down_proj.weight'; add them as FLOAT"),
    ("warning quant.undescribed_other: model.layers.2.mlp.down_proj.weight_offset, "
    "model.layers.2.mlp.down_proj.weight_scale, model.layers.2.mlp.gate_proj.weight_offset and 13 more: "
    "16 tensor(s) not in quant_model_description.json")]


def test_issue_5794_mtp_layer_not_in_description(tmp_path):
    """The main model skips the MTP layer, so it loads; served with MTP speculative decoding it raises
    KeyError (#5794): a warning, which --strict makes fail."""
    model = _mtp_dir(tmp_path, pd.config())
    assert lines(model) == MTP_LINES
    assert run_cli("preflight", model).code == 0 and run_cli("preflight", model, "--strict").code == 1


def test_issue_5794_deepseek_msmodelslim_output_without_its_mtp_layer(tmp_path):
    cfg = pd.config("deepseek_v3", architectures=["DeepseekV3ForCausalLM"], num_nextn_predict_layers=1)
    assert lines(_mtp_dir(tmp_path, cfg)) == MTP_LINES


def msmodelslim_deepseek(name: str) -> str:
    """msModelSlim's DeepSeek placement: attention and MLPs W8A8_DYNAMIC but kv_b_proj; the MTP layer
    (layer 2 here) FLOAT, as vllm-ascend's NOTE asks."""
    return pd.FLOAT if ".kv_b_proj." in name or ".layers.2." in name else "W8A8_DYNAMIC"


def _mla_dir(root: Path, type_of=msmodelslim_deepseek, *, mtp: bool = True, soc_dtype: str = "bfloat16") -> Path:
    tensors, types = pd.mla_tensors(type_of, mtp, getattr(torch, soc_dtype))
    desc = None if type_of is pd.all_float else pd.description(types)
    return pd.write_dir(root, pd.mla_config(mtp=mtp, torch_dtype=soc_dtype), tensors, desc)


def test_deepseek_with_msmodelslims_placement_is_clean(tmp_path):
    assert lines(_mla_dir(tmp_path)) == []


def test_msmodelslim_default_recipe_quantizes_kv_b_proj(tmp_path):
    """default-w8a8.yaml includes "*": kv_b_proj too, which the MLA backend asserts unquantized."""
    assert lines(_mla_dir(tmp_path, lambda _n: "W8A8_DYNAMIC", mtp=False)) == [
        ("error quant.mla_kv_b_proj: model.layers.0.self_attn.kv_b_proj.weight: 2 kv_b_proj weight(s) described "
         "W8A8_DYNAMIC (model.layers.0.self_attn.kv_b_proj.weight, model.layers.1.self_attn.kv_b_proj.weight): the "
         "MLA backend absorbs kv_b_proj from its float weight and asserts it unquantized at load; describe and store "
         "it FLOAT (msModelSlim's DeepSeek recipes exclude *kv_b_proj)")]


def test_mla_on_310p_is_refused_after_the_weights_load(tmp_path):
    model = _mla_dir(tmp_path, pd.all_float, soc_dtype="float16")
    assert lines(model, soc="ascend310p") == [
        ("warning model.support: model_type deepseek_v3: DeepSeek V3/3.1, R1 is listed for ascend910b, not for "
         "ascend310p"),
        ("error model.mla_soc: model_type deepseek_v3: kv_lora_rank 32: MLA attention; Atlas 300I Duo / 310P refuses "
         "it when it allocates the KV cache, after loading the weights (MLAAttention is not supported for 310P.)")]
    assert lines(model, soc="ascend310p", scope="checkpoint") == []  # the files are fine: convert publishes them


def test_mtp_eh_proj_quantized_by_the_default_recipe(tmp_path):
    """msModelSlim's MTP graft makes eh_proj an nn.Linear, so "*" quantizes it; vLLM's MTP layer has a
    plain float eh_proj and no weight_scale to load into."""
    def eh_proj_too(name: str) -> str:
        return "W8A8_DYNAMIC" if ".eh_proj." in name else msmodelslim_deepseek(name)
    assert lines(_mla_dir(tmp_path, eh_proj_too)) == [
        ("error quant.mtp_float_parts: model.layers.2.eh_proj: model.layers.2.eh_proj.weight_offset in the files: the "
         "MTP layer builds eh_proj without a quant method; store and describe it FLOAT")]


def test_mtp_layer_q_a_and_kv_a_are_one_fused_module(tmp_path):
    """The draft's layers are looked up through the target's packed map (deepseek_v3: fused_qkv_a_proj),
    not deepseek_mtp's (which has none): the MTP layer's q_a_proj and kv_a_proj_with_mqa share one type."""
    def kv_a_quantized(name: str) -> str:
        return "W8A8_DYNAMIC" if ".layers.2.self_attn.kv_a_proj" in name else msmodelslim_deepseek(name)
    assert lines(_mla_dir(tmp_path, kv_a_quantized)) == [
        ("error quant.fused_mixed: model.layers.2.self_attn.fused_qkv_a_proj: Detected some but not all shards of "
         "model.layers.2.self_attn.fused_qkv_a_proj are quantized (q_a_proj FLOAT, kv_a_proj_with_mqa W8A8_DYNAMIC): "
         "all parts of a fused module need one precision"),
        ("warning quant.mtp_quantized: model.layers.2.self_attn.kv_a_proj_with_mqa.weight: 1 weight(s) of the MTP "
         "layer (layer 2 >= num_hidden_layers 2) described W8A8_DYNAMIC (model.layers.2.self_attn.kv_a_proj_with_mqa."
         "weight): served with MTP speculative decoding, a quantized MTP layer fails at run time on DeepSeek-R1 "
         "(vllm-ascend #2771: only W8A8 with a FLOAT MTP layer works); the main model skips the layer")]


def test_issue_3177_w8a8_tensors_without_description(tmp_path):
    tensors, _ = pd.quantized("W8A8")
    assert lines(pd.write_dir(tmp_path, pd.config(), tensors)) == [
        ("error quant.description: quant_model_description.json: missing, but the files hold quantized tensors "
        "(model.layers.0.mlp.down_proj.deq_scale, model.layers.0.mlp.down_proj.input_scale, "
        "model.layers.0.mlp.gate_proj.deq_scale and 67 more): the engine builds the model unquantized and refuses them")]


def test_issue_11368_fused_gate_up_part_missing_its_deq_scale(tmp_path):
    def drop(tensors, types):
        del tensors["model.layers.0.mlp.gate_proj.deq_scale"], types["model.layers.0.mlp.gate_proj.deq_scale"]
    assert lines(quantized_dir(tmp_path, drop, qtype="W8A8")) == [
        ("error quant.part_missing: model.layers.0.mlp.gate_proj.deq_scale: W8A8 layer model.layers.0.mlp.gate_proj "
        "lacks deq_scale")]


def test_issue_12907_w8a8_dynamic_in_a_float16_model_on_910b(tmp_path):
    tensors, types = pd.quantized(dtype=torch.float16)
    model = pd.write_dir(tmp_path, pd.config(dtype="float16"), tensors, pd.description(types))
    assert lines(model) == [
        ("error quant.kernel_dtype: model.layers.0.mlp.down_proj.weight, model.layers.0.mlp.gate_proj.weight, "
        "model.layers.0.mlp.up_proj.weight and 11 more: 14 layer(s): W8A8_DYNAMIC in a float16 model: the method "
        "hands npu_quant_matmul its weight_scale in the model's dtype, which the kernel refuses "
        "(aclnnQuantMatmulWeightNz: Tensor scale not implemented for DT_FLOAT16); serve in bfloat16")]
    assert lines(model, dtype="bfloat16") == [
        ("warning model.tensor_dtype: lm_head.weight, model.embed_tokens.weight, model.layers.0.input_layernorm.weight "
        "and 4 more: 7 float16 tensor(s) in a bfloat16 model: cast to bfloat16 at load")]


LEFTOVER_NO_METHOD = (
    "error quant.leftover_config: config.json quantization_config: present without quant_method: on an NPU the engine "
    "takes this block as the quantization description and never reads quant_model_description.json; delete it")
LEFTOVER_NO_DESCRIPTION = (
    "error quant.leftover_config: config.json quantization_config: present without quant_method: on an NPU the engine "
    "takes this block as the quantization description; delete it")


def test_issue_2296_msmodelslim_mindie_format_output(tmp_path):
    cfg = pd.config("deepseekv2", quantization_config={"group_size": 0, "kv_quant_type": None})
    model = quantized_dir(tmp_path, cfg=cfg, description_name="quant_model_description_w8a8_dynamic.json")
    assert lines(model) == [
        ("error model.type: config.json model_type: 'deepseekv2' is not a model type transformers or vLLM knows: "
        "DeepSeek-V2's is deepseek_v2, V3/R1's deepseek_v3 (msModelSlim's --mindie_format writes deepseekv2; "
        "vllm-ascend #2296, #1270)"),
        ("warning model.support: model_type deepseekv2: not in the engine's supported-models matrix: vLLM's own model "
        "class runs it, untested on NPU"),
        LEFTOVER_NO_DESCRIPTION,
        ("error quant.description: quant_model_description_w8a8_dynamic.json: the engine reads "
        "quant_model_description.json only: rename quant_model_description_w8a8_dynamic.json to "
        "quant_model_description.json")]


def test_issue_1270_leftover_quantization_config_without_quant_method(tmp_path):
    model = quantized_dir(tmp_path, cfg=pd.config(quantization_config={"group_size": 256}))
    assert lines(model) == [LEFTOVER_NO_METHOD]


def test_issue_9294_bf16_model_on_910a(tmp_path):
    tensors, _ = pd.model_tensors()
    assert lines(pd.write_dir(tmp_path, pd.config(), tensors), soc="ascend910a") == [
        SOC_910A, LLAMA_910A,
        ("error model.dtype: config.json torch_dtype: bfloat16 ('bfloat16' in config.json): Atlas 800 / 910A computes "
        "in float16, float32 only; serve with --dtype float16 and convert to it")]


def _fp16_with_bf16(root: Path, model_type: str, *bf16: str) -> Path:
    tensors, _ = pd.model_tensors(dtype=torch.float16)
    for name in bf16:
        tensors[name] = tensors[name].to(torch.bfloat16)
    return pd.write_dir(root, pd.config(model_type, dtype="float16"), tensors)


def test_issue_6490_bf16_tensors_left_in_an_fp16_model_warn_and_fail_only_strict(tmp_path):
    model = _fp16_with_bf16(tmp_path, "qwen3", "model.norm.weight", "model.layers.0.input_layernorm.weight")
    warning = ("warning model.tensor_dtype: model.layers.0.input_layernorm.weight, model.norm.weight: 2 bfloat16 "
               "tensor(s) in a float16 model: cast to float16 at load")
    assert lines(model) == [warning]
    plain = run_cli("preflight", model)
    assert plain.code == 0, plain.stderr
    assert warning in plain.stdout.splitlines()
    assert run_cli("preflight", model, "--strict").code == 1


def test_one_bf16_norm_in_an_fp16_checkpoint_on_910a(tmp_path):
    model = _fp16_with_bf16(tmp_path, "llama", "model.norm.weight")
    assert lines(model, soc="ascend910a") == [
        SOC_910A, LLAMA_910A,
        ("error model.tensor_dtype: model.norm.weight: 1 bfloat16 tensor(s) in a float16 model: Atlas 800 / 910A has "
        "no bfloat16")]


# --------------------------------------------------------------------------- fused parts, experts, part shapes


def _typed_dir(root: Path, type_of) -> Path:
    tensors, types = pd.model_tensors(type_of)
    return pd.write_dir(root, pd.config(), tensors, pd.description(types))


@pytest.mark.parametrize("layer", [0, 1])
def test_qkv_with_float_and_quantized_parts(tmp_path, layer):
    model = _typed_dir(tmp_path, lambda n: pd.FLOAT if f"layers.{layer}.self_attn.v_proj" in n else "W8A8_DYNAMIC")
    prefix = f"model.layers.{layer}.self_attn.qkv_proj"
    assert lines(model) == [
        (f"error quant.fused_mixed: {prefix}: Detected some but not all shards of {prefix} are quantized (q_proj "
        "W8A8_DYNAMIC, k_proj W8A8_DYNAMIC, v_proj FLOAT): all parts of a fused module need one precision")]


def test_qkv_with_two_quant_types(tmp_path):
    model = _typed_dir(tmp_path, lambda n: "W8A8" if "layers.0.self_attn.q_proj" in n else "W8A8_DYNAMIC")
    prefix = "model.layers.0.self_attn.qkv_proj"
    assert lines(model) == [
        (f"error quant.fused_mixed: {prefix}: Not all shards of {prefix} are quantized with same quant type "
        "(q_proj W8A8, k_proj W8A8_DYNAMIC, v_proj W8A8_DYNAMIC)")]


def test_qwen3_moe_experts_of_one_layer_in_mixed_types(tmp_path):
    tensors, types = pd.moe_tensors(lambda n: pd.FLOAT if "layers.0.mlp.experts.1." in n else "W8A8_DYNAMIC")
    model = pd.write_dir(tmp_path, pd.moe_config(), tensors, pd.description(types))
    assert lines(model) == [
        ("error quant.experts_mixed: model.layers.0.mlp.experts: experts of one layer in different types (expert 0 "
        "W8A8_DYNAMIC, expert 1 FLOAT): the engine loads them all with expert 0's method")]


def test_quantized_qwen2_moe_experts_have_no_packed_entry(tmp_path):
    tensors, types = pd.moe_tensors(lambda n: "W8A8_DYNAMIC" if "layers.0." in n else pd.FLOAT)
    model = pd.write_dir(tmp_path, pd.moe_config("qwen2_moe"), tensors, pd.description(types))
    assert lines(model) == [
        ("warning model.support: model_type qwen2_moe: not in the engine's supported-models matrix: vLLM's own model "
        "class runs it, untested on NPU"),
        ("error quant.experts_lookup: model.layers.0.mlp.experts: no 'experts' entry in the engine's packed map for "
        "model_type qwen2_moe: it looks up model.layers.0.mlp.experts.weight, which the description cannot have "
        "(KeyError)")]


def test_w8a16_per_group_scale_is_not_what_the_method_declares(tmp_path):
    def per_group(tensors, _types):
        tensors.update(pd.w8a8_dynamic("model.layers.0.self_attn.o_proj", pd.HIDDEN, pd.HIDDEN, scale_cols=2))
    stem = "model.layers.0.self_attn.o_proj"
    assert lines(quantized_dir(tmp_path, per_group, qtype="W8A16")) == [
        f"error quant.part_shape: {stem}.weight_scale: shape [64, 2], the W8A16 method declares [64, 1]",
        f"error quant.part_shape: {stem}.weight_offset: shape [64, 2], the W8A16 method declares [64, 1]"]


# --------------------------------------------------------------------------- tensor and expert parallel


@pytest.fixture
def float_llama(tmp_path) -> Path:
    tensors, _ = pd.model_tensors()
    return pd.write_dir(tmp_path / "float", pd.config(), tensors)


def test_tp_that_divides_neither_heads_nor_widths(float_llama):
    assert lines(float_llama, tp=3) == [
        "error tp.heads: config.json num_attention_heads: 4 attention heads do not divide by --tp 3",
        ("error tp.kv_heads: config.json num_key_value_heads: 2 KV heads cannot be replicated over --tp 3 "
        "(tp % kv != 0)"),
        "error tp.intermediate: config.json intermediate_size: 128 does not divide by --tp 3"]


def test_tp_above_the_kv_heads_replicates_them(float_llama):
    assert lines(float_llama, tp=4) == []


def test_kv_heads_that_do_not_split(tmp_path):
    tensors, _ = pd.model_tensors()
    model = pd.write_dir(tmp_path, pd.config(num_key_value_heads=3), tensors)
    assert lines(model, tp=2) == [
        "error tp.kv_heads: config.json num_key_value_heads: 3 KV heads cannot be split over --tp 2 (kv % tp != 0)"]


def test_intermediate_that_does_not_split(tmp_path):
    tensors, _ = pd.model_tensors(intermediate=129)
    model = pd.write_dir(tmp_path, pd.config(intermediate_size=129), tensors)
    assert lines(model, tp=2) == ["error tp.intermediate: config.json intermediate_size: 129 does not divide by --tp 2"]


def test_experts_that_do_not_divide_by_ep(tmp_path):
    tensors, _ = pd.moe_tensors()
    model = pd.write_dir(tmp_path, pd.moe_config(), tensors)
    assert lines(model, ep=3) == ["warning ep.experts: config.json num_experts: 4 experts do not divide by --ep 3"]
    assert lines(model, ep=2) == []


# --------------------------------------------------------------------------- FRACTAL_NZ at load


NZ_LINE = ("error nz.shape: model.layers.0.mlp.expert_gate.weight: 1 weight(s) with a dimension of 1 cast to NZ "
           "(model.layers.0.mlp.expert_gate.weight): aclnnMatmulWeightNz does not support n = 1 or k = 1")


def test_quantized_weight_with_one_output_row_is_cast_to_nz(tmp_path):
    def add_gate(tensors, types):
        parts = pd.w8a8_dynamic("model.layers.0.mlp.expert_gate", 1, pd.HIDDEN)
        tensors.update(parts)
        types.update({n: "W8A8_DYNAMIC" for n in parts})
    model = quantized_dir(tmp_path, add_gate)
    assert lines(model) == [NZ_LINE]
    assert lines(model, nz_mode=0) == []


def test_float_weight_with_one_output_row_is_cast_in_nz_mode_2_only(tmp_path):
    """#10014: with VLLM_ASCEND_ENABLE_NZ=2 float weights are cast too, a [1, hidden] gate among them. 310P
    casts every weight but keeps float n = 1 / k = 1 ones in ND (vllm_ascend/ops/linear.py)."""
    tensors, _ = pd.model_tensors(dtype=torch.float16)
    tensors["model.layers.0.mlp.expert_gate.weight"] = torch.zeros(1, pd.HIDDEN, dtype=torch.float16)
    model = pd.write_dir(tmp_path, pd.config(dtype="float16"), tensors)
    assert lines(model, nz_mode=2) == [NZ_LINE]
    assert lines(model) == []
    assert lines(model, soc="ascend310p") == [
        "warning model.support: model_type llama: Llama2/3/3.1/3.2 is listed for ascend910b, not for ascend310p"]


# --------------------------------------------------------------------------- files


@pytest.fixture
def sharded(tmp_path) -> Path:
    """The float Llama in two shards with HF's index."""
    tensors, _ = pd.model_tensors()
    return pd.write_dir(tmp_path / "sharded", pd.config(), tensors, files=2)


SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
INDEX = "model.safetensors.index.json"


def _weight_map(model: Path) -> dict[str, str]:
    return json.loads((model / INDEX).read_text())["weight_map"]


def test_sharded_checkpoint_is_clean(sharded):
    assert lines(sharded) == []


def test_shard_the_index_lists_is_missing(sharded):
    (sharded / SHARD2).unlink()
    found = lines(sharded)
    first = next(n for n, f in _weight_map(sharded).items() if f == SHARD2)
    assert found == [f"error files.index: {INDEX}: lists {SHARD2} (tensor {first}), which is missing"]


def test_tensor_stored_in_two_files(sharded):
    """The same tensor in both shards (the index lists it once): which copy loads is an accident."""
    from safetensors.torch import load_file, save_file

    name = "model.norm.weight"
    holder = _weight_map(sharded)[name]
    other = SHARD2 if holder == SHARD1 else SHARD1
    tensors = load_file(str(sharded / other))
    tensors[name] = load_file(str(sharded / holder))[name]
    save_file(tensors, str(sharded / other))
    assert lines(sharded) == [
        (f"error files.duplicate: {name}: stored in {SHARD1} and in {SHARD2}: which one loads depends on the order the "
        "files are read")]


def test_index_path_that_leaves_the_directory(sharded):
    weight_map = _weight_map(sharded)
    name = next(iter(weight_map))
    weight_map[name] = "../x.safetensors"
    pd.write_index(sharded, weight_map)
    assert lines(sharded) == [
        f"error files.index: {INDEX}: shard path '../x.safetensors' (tensor {name}) leaves the checkpoint directory"]


def _header_bytes(data: bytes) -> int:
    """A safetensors file's 8-byte length prefix plus the JSON header it announces."""
    return 8 + int.from_bytes(data[:8], "little")


def test_truncated_safetensors_file(tmp_path):
    tensors, _ = pd.model_tensors()
    model = pd.write_dir(tmp_path, pd.config(), tensors)
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[:-100])
    stored = len(data) - _header_bytes(data)
    assert lines(model) == [(f"error files.header: model.safetensors: truncated: its tensors need {stored} bytes of "
                             f"data, the file holds {stored - 100}")]


def test_no_tokenizer(tmp_path):
    tensors, _ = pd.model_tensors()
    model = pd.write_dir(tmp_path, pd.config(), tensors, tokenizer=False)
    assert lines(model) == [(f"error files.tokenizer: {model}: no tokenizer.json, tokenizer.model or vocab.json + "
                            "merges.txt")]


def test_only_the_packed_layout(tmp_path):
    tensors, _ = pd.model_tensors()
    model = pd.write_dir(tmp_path, pd.config(), tensors)
    (model / "tp2").mkdir()
    (model / "model.safetensors").rename(model / "tp2" / "rank0.safetensors")
    assert lines(model) == [
        (f"error files.weights: {model}: no *.safetensors at the top of the directory; found tp2/rank0.safetensors "
        "(ascendkit's packed layout, read by ascendkit serve only)")]


@pytest.fixture(scope="module")
def converted_llama(tmp_path_factory) -> Path:
    """`ascendkit convert` of the llama fixture (its manifest records every file's size and sha256)."""
    import fixtures as fx

    root = tmp_path_factory.mktemp("preflight-convert")
    out = root / "out"
    result = run_cli("convert", fx.build("llama", root / "src"), out)
    assert result.code == 0, result.stderr
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _weight_file(model: Path) -> Path:
    return min(model.glob("*.safetensors"))


def test_converted_weight_file_resaved_after_conversion(converted_llama, tmp_path):
    """Re-saved with a different header after conversion: still a valid file, but not the one recorded."""
    from safetensors.torch import load_file, save_file

    model = _copy(converted_llama, tmp_path / "out")
    weight = _weight_file(model)
    size = weight.stat().st_size
    save_file(load_file(str(weight)), str(weight), metadata={"edited": "by hand"})
    new_size = weight.stat().st_size
    assert new_size != size
    assert lines(model) == [
        (f"error files.manifest: {weight.name}: 1 file(s) differ from the manifest ({weight.name} ({new_size} bytes, "
        f"recorded {size}))")]


def test_converted_weight_file_byte_flipped_found_with_hash_only(converted_llama, tmp_path):
    model = _copy(converted_llama, tmp_path / "out")
    weight = _weight_file(model)
    data = bytearray(weight.read_bytes())
    data[-1] ^= 0xFF
    weight.write_bytes(bytes(data))
    assert lines(model) == []
    assert lines(model, rehash=True) == [
        f"error files.manifest: {weight.name}: 1 file(s) differ from the manifest ({weight.name} (sha256 differs))"]


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def broken(tmp_path) -> Path:
    """#8367's checkpoint: one error."""
    return quantized_dir(tmp_path / "broken", lambda t, types: types.pop("lm_head.weight"))


def test_cli_exit_codes_and_table(broken, float_llama):
    clean = run_cli("preflight", float_llama)
    assert clean.code == 0, clean.stderr
    assert clean.stdout.splitlines()[-1] == "no findings: the engine's loader rules all hold"
    found = run_cli("preflight", broken)
    assert found.code == 1, found.stderr
    assert undescribed("lm_head.weight", "the LM head") in found.stdout.splitlines()
    assert found.stdout.splitlines()[-1] == "1 error(s), 0 warning(s)"


def test_cli_json_report(broken):
    result = run_cli("preflight", broken, "--format", "json")
    assert result.code == 1
    report = json.loads(result.stdout)
    assert report["clean"] is False
    assert [(f["rule"], f["subject"], f["severity"], f["file"]) for f in report["findings"]] == [
        ("quant.undescribed", "lm_head.weight", "error", "model.safetensors")]


@pytest.mark.skipif(not SCHEMA.is_file() and os.environ.get("CI") != "true", reason="../shared/data not beside")
def test_cli_sarif_validates_against_the_official_schema(broken):
    import jsonschema

    result = run_cli("preflight", broken, "--format", "sarif")
    assert result.code == 1
    sarif = json.loads(result.stdout)
    jsonschema.Draft4Validator(json.loads(SCHEMA.read_text())).validate(sarif)
    run = sarif["runs"][0]
    assert [(r["ruleId"], r["level"]) for r in run["results"]] == [("quant.undescribed", "error")]
    assert run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == \
        f"{broken}/model.safetensors"
    assert all(rule["help"]["text"].startswith("Source: ") for rule in run["tool"]["driver"]["rules"])


def test_cli_junit_one_case_per_rule(broken):
    result = run_cli("preflight", broken, "--format", "junit")
    assert result.code == 1
    suite = ET.fromstring(result.stdout).find("testsuite")
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert len(cases) == len(suite.findall("testcase")) == int(suite.get("tests")) >= 30
    failed = {name for name, case in cases.items() if case.find("failure") is not None}
    assert failed == {"quant.undescribed"} and suite.get("failures") == "1"
    assert cases["quant.undescribed"].find("failure").get("message") == undescribed("lm_head.weight", "the LM head")


def test_cli_markdown_and_summary_file(broken, tmp_path):
    summary = tmp_path / "summary.md"
    result = run_cli("preflight", broken, "--format", "markdown", "--summary-file", summary)
    assert result.code == 1
    assert result.stdout == summary.read_text()
    assert "| error | `quant.undescribed` | `lm_head.weight` |" in result.stdout


def test_cli_allow_file_accepts_a_finding_with_its_reason(broken, tmp_path):
    allow = tmp_path / "allow.yaml"
    allow.write_text("allow:\n  - rule: quant.undescribed\n    subject: lm_head*\n    reason: served with a patched "
                     "loader\n")
    result = run_cli("preflight", broken, "--allow", allow)
    assert result.code == 0, result.stdout + result.stderr
    assert "accepted quant.undescribed: lm_head.weight (served with a patched loader)" in result.stdout.splitlines()
    report = json.loads(run_cli("preflight", broken, "--allow", allow, "--format", "json").stdout)
    assert report["findings"] == [] and report["clean"] is True
    assert report["accepted"] == [{"rule": "quant.undescribed", "subject": "lm_head.weight",
                                   "reason": "served with a patched loader"}]
    other = tmp_path / "other.yaml"
    other.write_text("allow:\n  - rule: quant.undescribed\n    subject: model.*\n    reason: not this one\n")
    assert run_cli("preflight", broken, "--allow", other).code == 1


def test_cli_unusable_input_is_one_line_exit_2(tmp_path, float_llama):
    bad_allow = tmp_path / "bad.yaml"
    bad_allow.write_text("allow:\n  - rule: quant.undescribed\n")
    assert_one_line_error(run_cli("preflight", float_llama, "--allow", bad_allow), "allow entry 1: missing 'reason'")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("preflight", empty), "config.json: missing")
    assert_one_line_error(run_cli("preflight", float_llama / "config.json"), "not a directory")
    assert_one_line_error(run_cli("preflight", float_llama, "--engine", "vllm-ascend@nope"),
                          "no shipped rules for vllm-ascend release nope")
    assert_one_line_error(run_cli("preflight", float_llama, "--engine", "nope"), "no shipped rules for nope")
    rules = json.loads((Path(__file__).resolve().parents[1] / "ascend_convert" / "preflight" / "rules"
                        / "vllm-ascend-182b75e.json").read_text())
    del rules["rules"]["tp.heads"]["source"]
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps(rules))
    assert_one_line_error(run_cli("preflight", float_llama, "--rules", rules_file),
                          "rule tp.heads: needs 'what', 'action' and 'source'")


# --------------------------------------------------------------------------- the converter's outputs


CLEAN_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "qwen3_moe", "qwen2_moe", "mixtral")
NOT_IN_MATRIX_310P = {"llama", "mistral", "qwen2", "phi3"}
NOT_IN_MATRIX = {"qwen2_moe", "mixtral"}


@pytest.fixture(scope="module")
def converted(tmp_path_factory, checkpoint):
    return conversion_cache(tmp_path_factory.mktemp("preflight-outputs"), checkpoint)


def _expected_warnings(family: str, soc: str) -> list[str]:
    """model.support for families the engine's matrix does not list for the SoC."""
    rows = {"llama": "Llama2/3/3.1/3.2", "mistral": "Mistral/Mistral-Instruct", "qwen2": "Qwen2 / Qwen2.5",
            "phi3": "Phi-3/4"}
    if soc == "ascend310p" and family in NOT_IN_MATRIX_310P:
        return [(f"warning model.support: model_type {family}: {rows[family]} is listed for ascend910b, not for "
                "ascend310p")]
    if family in NOT_IN_MATRIX:
        return [(f"warning model.support: model_type {family}: not in the engine's supported-models matrix: vLLM's "
                 "own model class runs it, untested on NPU")]
    return []


@pytest.mark.parametrize("family", CLEAN_FAMILIES)
@pytest.mark.parametrize("soc,dtype", [("ascend910b", "bfloat16"), ("ascend310p", "auto")])
def test_converter_output_is_clean(converted, family, soc, dtype):
    out = converted(family, soc=soc, dtype=dtype)
    assert lines(out, soc=soc) == _expected_warnings(family, soc)


@pytest.mark.parametrize("family,quantize,soc", [("llama", "w8a8-dynamic", "ascend910b"),
                                                 ("qwen3_moe", "w8a8-dynamic", "ascend910b"),
                                                 ("qwen3", "w8a8-dynamic", "ascend310p"),
                                                 ("qwen3", "w8a16", "ascend910b"), ("llama", "w8a8", "ascend910b")])
def test_quantized_converter_output_is_clean(converted, family, quantize, soc):
    out = converted(family, quantize=quantize, soc=soc)
    assert lines(out, soc=soc) == _expected_warnings(family, soc)


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe"])
@pytest.mark.parametrize("tp", [2, 4])
def test_converter_output_is_clean_at_the_tp_sizes_its_heads_allow(converted, family, tp):
    """The fixtures have 4 heads and 2 KV heads: --tp 2 splits both, --tp 4 replicates the KV heads."""
    assert lines(converted(family, soc="ascend910b", dtype="bfloat16"), tp=tp) == []


def test_w8a8_for_310p_is_clean(converted):
    """310P's W8A8 method declares deq_scale int64 whatever the model's dtype: the fp16 output has it."""
    out = converted("qwen3", quantize="w8a8", soc="ascend310p")
    assert lines(out, soc="ascend310p") == []


@pytest.mark.parametrize("family,arch", [("baichuan", "BaiChuanForCausalLM"), ("baichuan2", "BaichuanForCausalLM"),
                                         ("qwen", "QWenLMHeadModel")])
def test_remote_code_families_are_no_longer_in_the_engines_vllm(converted, family, arch):
    """The one finding on these outputs is about the deployment, not the files: vLLM dropped these
    architectures after v0.23.0 and vllm-ascend@182b75e runs on v0.27.1 (its support matrix still lists
    Baichuan). convert publishes them (for ascendkit serve and MindIE); preflight says so."""
    found = run_preflight(converted(family, soc="ascend910b", dtype="bfloat16")).findings
    assert [f.line for f in found if f.severity == "error"] == [
        (f"error model.architecture: config.json architectures {arch}: vLLM supported {arch} until v0.23.0; the engine "
         "runs on vLLM v0.27.1")]
    assert {f.rule for f in found} <= {"model.architecture", "model.support"}


DEEPSEEK_FAMILIES = ("deepseek_v3", "deepseek_v2", "glm4_moe")  # V2's fixture has no MTP layer
V2_910B = "warning model.support: model_type deepseek_v2: DeepSeek V2.5: untested on ascend910b"


def _quantized_mtp() -> str:
    """The one warning a W8A8_DYNAMIC conversion that keeps the MTP layer (layer 3) gets: #2771."""
    first = "model.layers.3.mlp.experts.0"
    return (f"warning quant.mtp_quantized: {first}.down_proj.weight: 31 weight(s) of the MTP layer (layer 3 >= "
            f"num_hidden_layers 3) described W8A8_DYNAMIC ({first}.down_proj.weight, {first}.gate_proj.weight, "
            f"{first}.up_proj.weight and 28 more): served with MTP speculative decoding, a quantized MTP layer fails at "
            "run time on DeepSeek-R1 (vllm-ascend #2771: only W8A8 with a FLOAT MTP layer works); the main model "
            "skips the layer")


@pytest.mark.parametrize("family", DEEPSEEK_FAMILIES)
@pytest.mark.parametrize("quantize", [None, "w8a8-dynamic"])
@pytest.mark.parametrize("mtp", ["keep", "quantize", "drop"])
def test_deepseek_style_converter_output_on_910b(converted, family, quantize, mtp):
    """kv_b_proj FLOAT and the MTP layer's own parts FLOAT: nothing refused; an MTP layer quantized
    like the others (`--mtp quantize`) gets #2771's warning, one kept float (the default) none, and V2
    the support matrix's 'untested'."""
    out = converted(family, soc="ascend910b", dtype="bfloat16", mtp=mtp,
                    **({"quantize": quantize} if quantize else {}))
    expected = [V2_910B] if family == "deepseek_v2" else []
    if quantize and mtp == "quantize" and family != "deepseek_v2":
        expected.append(_quantized_mtp())
    assert lines(out) == expected


@pytest.mark.parametrize("family", DEEPSEEK_FAMILIES)
def test_deepseek_style_converter_output_on_310p(converted, family):
    """DeepSeek V2/V3 are MLA and refused by 310P's runner (a deployment error: convert still
    publishes the files); GLM-4.5's attention is GQA."""
    out = converted(family, soc="ascend310p")
    rows = {"deepseek_v3": "DeepSeek V3/3.1, R1", "deepseek_v2": "DeepSeek V2.5", "glm4_moe": "GLM-4.x"}
    expected = [(f"warning model.support: model_type {family}: {rows[family]} is listed for ascend910b, not for "
                 "ascend310p")]
    if family != "glm4_moe":
        expected.append(f"error model.mla_soc: model_type {family}: kv_lora_rank 32: MLA attention; Atlas 300I Duo / "
                        "310P refuses it when it allocates the KV cache, after loading the weights (MLAAttention is "
                        "not supported for 310P.)")
    assert lines(out, soc="ascend310p") == expected
    assert run_preflight(out, soc="ascend310p", scope="checkpoint").errors == []


def test_cli_on_a_converter_output(converted):
    result = run_cli("preflight", converted("qwen3", soc="ascend910b", dtype="bfloat16"), "--tp", "2")
    assert result.code == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "no findings: the engine's loader rules all hold"


# --------------------------------------------------------------------------- what the loader does take (review)


def test_registered_types_without_read_parts_are_not_refused(tmp_path):
    """W4A8_DYNAMIC is registered for MoE layers (methods/w4a8.py): not refused, its tensors not judged."""
    tensors, types = pd.moe_tensors(lambda n: "W8A8_DYNAMIC" if ".experts." in n else pd.FLOAT)
    types = {n: "W4A8_DYNAMIC" if t == "W8A8_DYNAMIC" else t for n, t in types.items()}
    model = pd.write_dir(tmp_path, pd.moe_config(), tensors, pd.description(types, "W4A8_DYNAMIC"))
    result = run_preflight(model)
    assert [f.line for f in result.findings] == []
    assert ("registered, but their tensors not checked (the method's parameters were not read into the rules): "
            "W4A8_DYNAMIC moe") in result.notes


def test_310p_runs_its_own_loader(tmp_path):
    """310P's ModelSlim loader registers W8A8, W8A8_DYNAMIC, W8A8S and W8A8SC (no W8A16) and never looks
    an embedding up (_310p/quantization/modelslim_config.py)."""
    tensors, types = pd.quantized("W8A8", dtype=torch.float16)
    del types["model.embed_tokens.weight"], types["lm_head.weight"]
    model = pd.write_dir(tmp_path / "w8a8", pd.config(dtype="float16"), tensors, pd.description(types, "W8A8"))
    support = "warning model.support: model_type llama: Llama2/3/3.1/3.2 is listed for ascend910b, not for ascend310p"
    assert lines(model, soc="ascend310p") == [
        support, ("warning quant.undescribed_other: lm_head.weight, model.embed_tokens.weight: 2 tensor(s) not in "
                  "quant_model_description.json")]
    w8a16 = {n: "W8A16" if t == "W8A8_DYNAMIC" else t for n, t in pd.quantized(dtype=torch.float16)[1].items()}
    tensors16, _ = pd.quantized(dtype=torch.float16)
    model16 = pd.write_dir(tmp_path / "w8a16", pd.config(dtype="float16"), tensors16, pd.description(w8a16, "W8A16"))
    assert lines(model16, soc="ascend310p") == [
        support, ("warning quant.model_quant_type: quant_model_description.json model_quant_type: 'W8A16' is not a "
                  "quant type the engine registers on this SoC"),
        ("error quant.unsupported_type: model.layers.0.mlp.down_proj.weight: 14 linear layer(s) in W8A16 "
         "(model.layers.0.mlp.down_proj.weight, model.layers.0.mlp.gate_proj.weight, model.layers.0.mlp.up_proj.weight "
         "and 11 more): the engine registers no W8A16 method for linear layers on ascend310p")]


def test_glm4_moe_and_mixtral_build_their_embedding_without_the_quant_config(tmp_path):
    model = quantized_dir(tmp_path, lambda t, types: types.pop("model.embed_tokens.weight"),
                          cfg=pd.config("glm4_moe", architectures=["Glm4MoeForCausalLM"]))
    assert lines(model) == [  # msModelSlim lists every tensor: a warning, not a KeyError
        "warning quant.undescribed_other: model.embed_tokens.weight: 1 tensor(s) not in quant_model_description.json"]


def test_qwen3_moe_router_is_looked_up(tmp_path):
    """Qwen3-MoE builds its router with the quant config (qwen3_moe.py:170-174): undescribed, a KeyError."""
    tensors, types = pd.moe_tensors(lambda n: "W8A8_DYNAMIC" if ".experts." in n else pd.FLOAT)
    del types["model.layers.0.mlp.gate.weight"]
    model = pd.write_dir(tmp_path, pd.moe_config(), tensors, pd.description(types))
    assert lines(model) == [undescribed("model.layers.0.mlp.gate.weight", "a linear layer")]


def test_norm_biases_need_the_description_to_name_them(tmp_path):
    """vllm-ascend gives RMSNorm a bias only when a description key names norm.bias (anti-outlier m4)."""
    def add_bias(tensors, _types):
        tensors["model.layers.0.input_layernorm.bias"] = torch.zeros(pd.HIDDEN, dtype=torch.bfloat16)
    assert lines(quantized_dir(tmp_path / "a", add_bias)) == [
        ("error quant.norm_bias: model.layers.0.input_layernorm.bias: 1 norm bias(es) "
         "(model.layers.0.input_layernorm.bias) and no key of quant_model_description.json names norm.bias: the norms "
         "get no bias parameter and the biases are dropped")]

    def describe_bias(tensors, types):
        add_bias(tensors, types)
        types["model.layers.0.input_layernorm.bias"] = pd.FLOAT
    assert lines(quantized_dir(tmp_path / "b", describe_bias)) == []


def test_w8a16_bias_in_a_bf16_model(tmp_path):
    """#7039: npu_weight_quant_batchmatmul refuses a bf16 bias."""
    def w8a16_with_bias(tensors, types):
        for name in list(types):
            if types[name] == "W8A8_DYNAMIC":
                types[name] = "W8A16"
        tensors["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(pd.HIDDEN, dtype=torch.bfloat16)
        types["model.layers.0.self_attn.q_proj.bias"] = "W8A16"
    assert lines(quantized_dir(tmp_path, w8a16_with_bias)) == [
        ("error quant.kernel_dtype: model.layers.0.self_attn.q_proj.weight: 1 layer(s): W8A16 with a bias in a "
         "bfloat16 model: npu_weight_quant_batchmatmul takes the bias in the model's dtype and refuses bfloat16 "
         "(biasOptional's dtype should be [DT_FLOAT])")]


def test_expert_zero_parts_are_one_fused_module(tmp_path):
    tensors, types = pd.moe_tensors(lambda n: pd.FLOAT if n.endswith("down_proj.weight") and ".experts." in n
                                    else "W8A8_DYNAMIC" if ".experts." in n else pd.FLOAT)
    model = pd.write_dir(tmp_path, pd.moe_config(), tensors, pd.description(types))
    assert lines(model) == [
        (f"error quant.fused_mixed: model.layers.{layer}.mlp.experts.0: Detected some but not all shards of "
         f"model.layers.{layer}.mlp.experts.0 are quantized (gate_proj W8A8_DYNAMIC, up_proj W8A8_DYNAMIC, down_proj "
         "FLOAT): all parts of a fused module need one precision") for layer in (0, 1)]


def test_a_0d_input_scale_is_reshaped_by_the_loader(tmp_path):
    def scalars(tensors, _types):
        for name in [n for n in tensors if n.endswith((".input_scale", ".input_offset"))]:
            tensors[name] = tensors[name].reshape(())
    assert lines(quantized_dir(tmp_path, scalars, qtype="W8A8")) == []


def test_a_compressed_tensors_config_is_not_a_leftover(tmp_path):
    tensors, _ = pd.quantized()
    cfg = pd.config(quantization_config={"quant_method": "compressed-tensors", "format": "int-quantized"})
    assert lines(pd.write_dir(tmp_path, cfg, tensors)) == []


def test_a_file_the_index_does_not_list_is_skipped_not_refused(sharded):
    shutil.copyfile(sharded / SHARD1, sharded / "consolidated.safetensors")
    assert lines(sharded) == [
        f"warning files.index: consolidated.safetensors: not listed in {INDEX}: the engine skips this file"]


@pytest.mark.parametrize(("entry", "message"), [
    ({"dtype": ["BF16"], "shape": [2], "data_offsets": [0, 4]}, "malformed entry"),
    ({"dtype": "BF16", "shape": [2], "data_offsets": [0, "4"]}, "malformed entry"),
])
def test_odd_headers_are_findings_not_crashes(tmp_path, entry, message):
    tensors, _ = pd.model_tensors()
    model = pd.write_dir(tmp_path, pd.config(), tensors)
    header = json.dumps({"x": entry}).encode()
    (model / "odd.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    [finding] = run_preflight(model).findings
    assert (finding.rule, finding.subject) == ("files.header", "odd.safetensors") and message in finding.message


def test_odd_description_values_are_findings_not_crashes(tmp_path):
    def odd(_tensors, types):
        types["model_quant_type"] = ["W8A8_DYNAMIC"]
    model = quantized_dir(tmp_path, odd)
    assert lines(model) == [
        ("warning quant.model_quant_type: quant_model_description.json model_quant_type: ['W8A8_DYNAMIC'] is not a "
         "quant type the engine registers on this SoC")]
