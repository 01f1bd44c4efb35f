"""`convert --quantize w8a8-dynamic` (msModelSlim's W8A8_DYNAMIC) for every family, `--quantize w8a8`
on MoE models (msModelSlim's Qwen3-MoE recipe: static W8A8 attention, W8A8_DYNAMIC experts), the
W8A16 refusal on MoE models, `--keep-float` with expert roles, resume, and the description check
vllm-ascend's loader implies (one type per fused module and per layer's experts).

Expected types and values are worked out here from the spec's roles and the source tensors, not
through the converter's own rules: scales are max|w| / 127 per row, computed in the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import (
    assert_one_line_error,
    assert_resume_after_kill_is_byte_identical,
    run_cli,
)
from safetensors.torch import load_file

import fixtures as fx
from ascend_common.errors import UserError
from ascend_convert.arch import find_spec
from ascend_convert.calibrate import BUILTIN_TEXTS, calibrate
from ascend_convert.converter import ConvertOptions, convert
from ascend_convert.quant_layout import check_description
from ascend_convert.verify import verify

DENSE_LINEAR = {"q", "k", "v", "o", "gate", "up", "down", "qkv", "gate_up"}
EXPERT_LINEAR = {"expert_gate", "expert_up", "expert_down", "shared_gate", "shared_up", "shared_down"}
DYNAMIC_PARTS = ("weight_scale", "weight_offset")
STATIC_ONLY_PARTS = ("input_scale", "input_offset", "deq_scale", "quant_bias")


def load_dir(path: Path, pattern: str) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob(pattern)):
        found.update(load_file(file))
    return found


def spec_of(src: Path):
    return find_spec(json.loads((src / "config.json").read_text()))


def description_of(out: Path) -> dict:
    return json.loads((out / "quant_model_description.json").read_text())


def assert_dynamic(name: str, source: torch.Tensor, out: dict[str, torch.Tensor], description: dict) -> None:
    """An int8 weight with fp32 [out, 1] scale (max|w| / 127 per row) and zero offset, within half a
    step of the source per channel, all three described W8A8_DYNAMIC; nothing of static W8A8."""
    stem = name.removesuffix(".weight")
    weight, scale, offset = out[name], out[f"{stem}.weight_scale"], out[f"{stem}.weight_offset"]
    rows = source.shape[0]
    assert weight.dtype == torch.int8 and weight.shape == source.shape, name
    assert scale.dtype == offset.dtype == torch.float32 and scale.shape == offset.shape == (rows, 1), name
    expected_scale = source.float().abs().amax(dim=1, keepdim=True) / 127
    assert torch.equal(scale, expected_scale), name
    assert torch.equal(offset, torch.zeros(rows, 1)), name
    step_error = (weight.double() * scale.double() - source.double()).abs()
    # half a step, up to float32's rounding of w / scale at an exact half
    assert bool((step_error <= scale.double() / 2 * (1 + 1e-5)).all()), name
    for part in ("weight", *DYNAMIC_PARTS):
        assert description[f"{stem}.{part}"] == "W8A8_DYNAMIC", (stem, part)
    assert not any(f"{stem}.{part}" in out for part in STATIC_ONLY_PARTS), stem


#: vllm-ascend@182b75e's packed-module map has no `experts` entry for these model types: its loader looks
#: up `<layer>.experts.weight` and raises KeyError, so their quantized experts are published only for
#: ascendkit serve and other loaders (test_vllm_ascend_cannot_find_the_type_of_these_experts)
ENGINE_FOR = {"qwen2_moe": "none", "mixtral": "none"}


@pytest.mark.parametrize("family", sorted(ENGINE_FOR))
def test_vllm_ascend_cannot_find_the_type_of_these_experts(checkpoint, tmp_path, family):
    out = tmp_path / "out"
    result = run_cli("convert", checkpoint(family), out, "--quantize", "w8a8-dynamic", "--no-progress")
    layer = "model.layers.1.mlp.experts" if family == "qwen2_moe" else "model.layers.0.block_sparse_moe.experts"
    assert_one_line_error(result, f"{out}: vllm-ascend@182b75e would not load this output, so it is not published: "
                                  f"error quant.experts_lookup: {layer}: no 'experts' entry in the engine's packed "
                                  f"map for model_type {family}: it looks up {layer}.weight, which the description "
                                  f"cannot have (KeyError)", code=1)
    assert not out.exists()


@pytest.mark.parametrize("family", fx.FAMILIES + fx.MOE_FAMILIES)
def test_every_family_converts_to_w8a8_dynamic(checkpoint, tmp_path, family):
    src = checkpoint(family)
    out = tmp_path / "out"
    convert(src, out, ConvertOptions(quantize="w8a8-dynamic", engine=ENGINE_FOR.get(family, "vllm-ascend")))
    spec, source = spec_of(src), load_dir(src, "*.safetensors")
    written = load_dir(out, "quant_model_weights*.safetensors")
    description = description_of(out)
    model_keys = {"model_quant_type", "version", "group_size"}
    assert set(description) - model_keys == set(written)  # every tensor listed, nothing else
    assert (description["model_quant_type"], description["group_size"]) == ("W8A8_DYNAMIC", 0)
    roles = set()
    for name, tensor in source.items():
        match = spec.role_of(name)
        if match is None:  # ignored (rotary inv_freq)
            continue
        roles.add(match.role)
        if match.role in DENSE_LINEAR | EXPERT_LINEAR:
            assert_dynamic(name, tensor, written, description)
        else:  # router, shared_expert_gate, norms, embeddings, lm_head, biases: FLOAT, the plain cast
            assert description[name] == "FLOAT", name
            assert torch.equal(written[name], tensor.to(written[name].dtype)), name
    if family in fx.MOE_FAMILIES:
        assert {"router", "expert_gate", "expert_up", "expert_down"} <= roles
    if family == "qwen2_moe":
        assert {"shared_gate", "shared_up", "shared_down", "shared_expert_gate", "q_bias"} <= roles
    check_description(description, spec, str(out))
    manifest = json.loads((out / "ascend_manifest.json").read_text())
    assert manifest["target"]["quantize"] == "W8A8_DYNAMIC"
    assert {k: manifest["options"][k] for k in ("quantize", "group_size", "symmetric", "keep_float")} == {
        "quantize": "w8a8-dynamic", "group_size": 0, "symmetric": True, "keep_float": []}
    assert "calib" not in manifest["options"] and "smooth_alpha" not in manifest["options"]
    report = verify(out, source=src)
    assert report.ok and report.source_checked == len(written)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3_moe", "qwen2_moe"])
def test_w8a8_on_moe_follows_the_qwen3_moe_recipe(checkpoint, tmp_path, family):
    """Attention (and a dense layer's gate/up) static W8A8, calibrated; experts and the shared expert
    W8A8_DYNAMIC; router and shared-expert gate FLOAT; a dense layer's down_proj FLOAT (W8A8's
    default); model_quant_type W8A8, as msModelSlim's saver ranks W8A8 above W8A8_DYNAMIC."""
    src = checkpoint(family)
    out = tmp_path / "out"
    convert(src, out, ConvertOptions(quantize="w8a8", engine=ENGINE_FOR.get(family, "vllm-ascend")))
    spec, source = spec_of(src), load_dir(src, "*.safetensors")
    written = load_dir(out, "quant_model_weights*.safetensors")
    description = description_of(out)
    assert description["model_quant_type"] == "W8A8"
    assert set(description) - {"model_quant_type", "version", "group_size"} == set(written)
    seen = set()
    for name, tensor in source.items():
        match = spec.role_of(name)
        if match is None:
            continue
        stem = name.removesuffix(".weight")
        if match.role in EXPERT_LINEAR:
            assert_dynamic(name, tensor, written, description)  # not smoothed: the source weight itself
        elif match.role in {"q", "k", "v", "o", "gate", "up"}:
            assert all(description[f"{stem}.{p}"] == "W8A8" for p in ("weight", *DYNAMIC_PARTS, *STATIC_ONLY_PARTS))
            assert written[name].dtype == torch.int8 and written[f"{stem}.quant_bias"].dtype == torch.int32
        elif match.role in {"down", "router", "shared_expert_gate"}:
            assert description[name] == "FLOAT" and written[name].dtype == torch.bfloat16, name
        seen.add(match.role)
    assert {"expert_gate", "router", "q"} <= seen
    if family == "qwen3_moe":
        assert {"gate", "up", "down"} <= seen  # layer 1 is dense (mlp_only_layers)
    else:
        assert {"shared_gate", "shared_expert_gate"} <= seen
    check_description(description, spec, str(out))
    assert verify(out, source=src).ok


@pytest.mark.slow
def test_calibration_reads_the_fused_experts_layout_as_the_per_expert_one(checkpoint):
    """transformers loads both layouts into the same model, so the static W8A8 linears (the only
    ones calibrated) see the same inputs."""
    names = {f"model.layers.{layer}.self_attn.{p}_proj.weight" for layer in range(3) for p in "qkvo"}
    names |= {"model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight"}
    texts = list(BUILTIN_TEXTS[:2])
    per_expert = calibrate(checkpoint("qwen3_moe"), names, texts, "bfloat16")
    fused = calibrate(checkpoint("qwen3_moe", fx.FUSED_EXPERTS), names, texts, "bfloat16")
    assert set(per_expert) == set(fused) == names
    for name in names:
        assert all(torch.equal(a, b) for a, b in zip(per_expert[name], fused[name])), name


@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral"])
def test_w8a16_on_moe_is_refused_in_one_line(checkpoint, tmp_path, family):
    src = checkpoint(family)
    out = tmp_path / "out"
    result = run_cli("convert", src, out, "--quantize", "w8a16", "--no-progress")
    assert_one_line_error(result, "is a routed expert, and --quantize w8a16 cannot serve it: vllm-ascend has "
                                  "W8A16 for linear layers only, no W8A16 method for MoE layers (use --quantize "
                                  "w8a8-dynamic or w8a8")
    assert not out.exists() and not (tmp_path / ".out.partial").exists()


def test_keep_float_takes_expert_roles_as_whole_modules(checkpoint, tmp_path):
    src = checkpoint("qwen2_moe")
    out = tmp_path / "out"
    keep = "expert_gate,expert_up,expert_down,shared_down"
    assert run_cli("convert", src, out, "--quantize", "w8a8-dynamic", "--keep-float", keep, "--no-progress").code == 0
    spec, description = spec_of(src), description_of(out)
    for name, qtype in description.items():
        match = spec.role_of(name) if name.endswith(".weight") else None
        if match is not None and match.role in EXPERT_LINEAR | DENSE_LINEAR:
            kept = match.role in keep.split(",")
            assert qtype == ("FLOAT" if kept else "W8A8_DYNAMIC"), name
    check_description(description, spec, str(out))
    manifest = json.loads((out / "ascend_manifest.json").read_text())
    assert manifest["options"]["keep_float"] == sorted(keep.split(","))
    # W8A16 with the routed experts kept float: what vllm-ascend can load (MoE unquantized)
    out16 = tmp_path / "w8a16"
    assert run_cli("convert", src, out16, "--quantize", "w8a16", "--keep-float",
                   "expert_gate,expert_up,expert_down", "--no-progress").code == 0
    assert description_of(out16)["model.layers.1.mlp.experts.0.up_proj.weight"] == "FLOAT"
    assert description_of(out16)["model.layers.1.mlp.shared_expert.up_proj.weight"] == "W8A16"


@pytest.mark.parametrize(("args", "message"), [
    (["--keep-float", "expert_gate"], "--keep-float expert_gate: vllm-ascend loads expert_gate/expert_up/"
                                      "expert_down as one module, so they are kept float together or not at all"),
    (["--keep-float", "q,v"], "--keep-float q,v: vllm-ascend loads q/k/v as one module"),
    (["--keep-float", "router"], "--keep-float router: not a linear layer role (choose from "),
    (["--calib", "x.txt"], "--calib is for --quantize w8a8 (w8a8-dynamic quantizes activations per token"),
    (["--group-size", "16"], "--quantize w8a8-dynamic quantizes weights symmetrically per channel"),
    (["--asymmetric"], "--quantize w8a8-dynamic quantizes weights symmetrically per channel"),
    (["--smooth-alpha", "0.3"], "--smooth-alpha is for --quantize w8a8"),
])
def test_bad_w8a8_dynamic_options_are_one_line(tmp_path, args, message):
    out = tmp_path / "out"
    assert_one_line_error(run_cli("convert", tmp_path / "nowhere", out, "--quantize", "w8a8-dynamic", *args), message)
    assert not out.exists()


def test_check_description_names_the_layer_experts_and_types(checkpoint, tmp_path):
    src = checkpoint("qwen3_moe")
    out = tmp_path / "out"
    convert(src, out, ConvertOptions(quantize="w8a8-dynamic"))
    spec, description = spec_of(src), description_of(out)
    check_description(description, spec, "desc.json")  # as written: accepted

    def edited(**types: str) -> dict:
        return {**description, **{f"model.layers.{k.replace('__', '.')}.weight": v for k, v in types.items()}}

    expert3 = {f"0__mlp__experts__3__{p}_proj": "FLOAT" for p in ("gate", "up", "down")}
    with pytest.raises(UserError) as err:
        check_description(edited(**expert3), spec, "desc.json")
    assert str(err.value) == ("desc.json: layer 0 experts mix quant types: expert 0 W8A8_DYNAMIC, expert 3 FLOAT; "
                              "vllm-ascend needs one type for all experts of a layer")
    with pytest.raises(UserError) as err:
        check_description(edited(**{"2__mlp__experts__5__up_proj": "FLOAT"}), spec, "desc.json")
    assert str(err.value) == ("desc.json: layer 2 expert 5 mixes quant types in one fused module: expert_gate "
                              "W8A8_DYNAMIC, expert_up FLOAT, expert_down W8A8_DYNAMIC; vllm-ascend needs one type "
                              "for all parts of a fused module")
    with pytest.raises(UserError) as err:
        check_description(edited(**{"1__self_attn__k_proj": "FLOAT"}), spec, "desc.json")
    assert str(err.value) == ("desc.json: layer 1 mixes quant types in one fused module: q W8A8_DYNAMIC, k FLOAT, "
                              "v W8A8_DYNAMIC; vllm-ascend needs one type for all parts of a fused module")
    # the dense layer's gate/up (layer 1 of this fixture) form a fused module too
    with pytest.raises(UserError, match="layer 1 mixes quant types in one fused module: gate FLOAT, up W8A8_DYNAMIC"):
        check_description(edited(**{"1__mlp__gate_proj": "FLOAT"}), spec, "desc.json")


def test_verify_refuses_a_description_that_mixes_a_layers_expert_types(checkpoint, tmp_path):
    """What vllm-ascend's loader would refuse on the NPU, `verify` says first, naming layer and experts
    (an edited description also fails its sha256; the loader's rule is the more useful line)."""
    out = tmp_path / "out"
    convert(checkpoint("qwen2_moe"), out, ConvertOptions(quantize="w8a8-dynamic", engine="none"))
    assert run_cli("verify", out).code == 0
    path = out / "quant_model_description.json"
    description = description_of(out)
    description["model.layers.3.mlp.experts.6.up_proj.weight"] = "FLOAT"
    description["model.layers.3.mlp.experts.6.gate_proj.weight"] = "FLOAT"
    description["model.layers.3.mlp.experts.6.down_proj.weight"] = "FLOAT"
    path.write_text(json.dumps(description, indent=2))
    result = run_cli("verify", out)
    assert result.code == 1, result.stderr
    assert f"{path}: layer 3 experts mix quant types: expert 0 W8A8_DYNAMIC, expert 6 FLOAT; vllm-ascend needs one " \
           f"type for all experts of a layer" in result.stderr + result.stdout


@pytest.mark.slow
def test_resume_after_kill_is_byte_identical(checkpoint, tmp_path):
    assert_resume_after_kill_is_byte_identical(
        checkpoint("qwen3_moe", "sharded"), tmp_path,
        ["--quantize", "w8a8-dynamic", "--max-shard-size", "40KB", "--no-progress"], "quant_model_weights*.safetensors")
