"""Mixture-of-experts checkpoints (Qwen3-MoE, Qwen2-MoE, Mixtral) convert from the Hub's per-expert
layout and from transformers v5's fused 3-D experts alike, always to the Hub's per-expert names; the
output loads in transformers with the source's logits; verify, --resume and the manifest work as for
dense models; a broken expert layout is refused before anything is written, naming layer and expert."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import (
    assert_one_line_error,
    assert_resume_after_kill_is_byte_identical,
    conversion_cache,
    run_cli,
)
from safetensors.torch import load_file, save_file
from test_convert_bad_input import assert_nothing_written
from test_convert_families import logits_of
from transformers import AutoModelForCausalLM, AutoTokenizer

import fixtures as fx
from ascend_common.errors import UserError
from ascend_convert.arch import EXPERT_ROLES, find_spec
from ascend_convert.converter import ConvertOptions, convert
from ascend_convert.manifest import MANIFEST_NAME
from ascend_convert.readers import open_checkpoint
from ascend_convert.verify import verify

EXPERTS = 8  # every MoE fixture has 8 experts, top-2


@pytest.fixture(scope="module")
def converted(tmp_path_factory, checkpoint):
    """converted(family, variant, soc) -> output dir, converted once per module."""
    get = conversion_cache(tmp_path_factory.mktemp("moe"), checkpoint)
    return lambda family, variant="safetensors", soc="ascend910b": get(family, variant, soc=soc)


def spec_and_config(src: Path):
    config = json.loads((src / "config.json").read_text())
    spec = find_spec(config)
    return spec, spec.canonical_config(config)


def first_sparse_layer(src: Path) -> int:
    spec, cfg = spec_and_config(src)
    return spec.moe_layers(cfg).index(True)


def manifest_of(out: Path) -> dict:
    return json.loads((out / MANIFEST_NAME).read_text())


@pytest.mark.parametrize("family", fx.MOE_FAMILIES)
@pytest.mark.parametrize("variant", fx.MOE_VARIANTS)
def test_every_layout_converts_to_the_hub_per_expert_names(converted, checkpoint, family, variant):
    base = manifest_of(converted(family))["tensors"]
    got = manifest_of(converted(family, variant))["tensors"]
    assert {k: v["sha256"] for k, v in got.items()} == {k: v["sha256"] for k, v in base.items()}
    spec, cfg = spec_and_config(checkpoint(family))
    expected = {spec.name_of(role, layer, e): (role, layer, e) for layer, sparse in enumerate(spec.moe_layers(cfg))
                if sparse for e in range(EXPERTS) for role in EXPERT_ROLES}
    assert len(expected) == EXPERTS * 3 * sum(spec.moe_layers(cfg)) > 0
    for name, (role, layer, expert) in expected.items():
        record = got[name]
        assert (record["role"], record["layer"], record["expert"]) == (role, layer, expert), name
        assert record["source"]["name"] == name
        if variant != fx.FUSED_EXPERTS:
            assert record["transforms"] == []
            continue
        inter = cfg["moe_intermediate_size"]
        stored, rows = {"expert_gate": ("gate_up_proj", (0, inter)), "expert_up": ("gate_up_proj", (inter, 2 * inter)),
                        "expert_down": ("down_proj", (0, cfg["hidden_size"]))}[role]
        assert record["transforms"] == [f"split_experts:model.layers.{layer}.mlp.experts.{stored}[{expert}]"
                                        f"[{rows[0]}:{rows[1]}]"]
    routers = {n: r for n, r in got.items() if r["role"] == "router"}
    assert sorted(routers) == sorted(spec.name_of("router", layer) for layer, s in enumerate(spec.moe_layers(cfg)) if s)
    renamed = variant == fx.FUSED_EXPERTS and "router" in spec.aliases.values()  # Mixtral's v5 `mlp.gate`
    for name, record in routers.items():
        assert "expert" not in record
        assert record["transforms"] == ([f"rename:model.layers.{record['layer']}.mlp.gate.weight"] if renamed else [])


@pytest.mark.parametrize("family", fx.MOE_FAMILIES)
def test_bf16_output_loads_in_transformers_with_the_exact_source_logits(converted, checkpoint, family):
    src, out = checkpoint(family), converted(family, fx.FUSED_EXPERTS)
    assert manifest_of(out)["target"]["dtype"] == "bfloat16"
    tokenizer = AutoTokenizer.from_pretrained(out)
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    got = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    for a, b in zip(logits_of(ref, tokenizer), logits_of(got, tokenizer)):
        assert a.std() > 0.5
        assert torch.equal(a, b)


@pytest.mark.parametrize("family", fx.MOE_FAMILIES)
def test_fp16_output_verifies_against_the_fused_source_with_logits(converted, checkpoint, family):
    src, out = checkpoint(family, fx.FUSED_EXPERTS), converted(family, fx.FUSED_EXPERTS, "ascend910a")
    manifest = manifest_of(out)
    assert manifest["target"] == {"soc": "ascend910a", "dtype": "float16", "layout": "default"}
    split = [r for r in manifest["tensors"].values() if "expert" in r]
    assert split and all(r["transforms"][0].startswith("split_experts:")
                         and r["transforms"][1:] == ["cast:bfloat16->float16"] for r in split)
    assert {p.dtype for p in AutoModelForCausalLM.from_pretrained(out, dtype="auto").parameters()} == {torch.float16}
    report = verify(out, source=src, logits=True)
    assert report.ok and report.source_checked == report.tensors_checked == manifest["summary"]["tensors"]
    assert report.max_abs_error <= 2.0 ** -25
    assert report.logits["ok"] and report.logits["top1_agreement"] == 1.0
    assert 0 < report.logits["max_abs_diff"] <= report.logits["tolerance"]


def test_ascend310p_gets_checked_float16(converted):
    manifest = manifest_of(converted("mixtral", "bin", "ascend310p"))
    assert manifest["target"]["dtype"] == "float16"
    record = manifest["tensors"]["model.layers.1.block_sparse_moe.experts.7.w2.weight"]
    assert record["transforms"] == ["cast:bfloat16->float16"] and record["cast"]["overflow"] == 0


@pytest.mark.parametrize("variant", ["safetensors", "bin"])
def test_a_fused_expert_is_read_alone(tmp_path, checkpoint, variant):
    """Each presented expert is only its own rows: the loaded tensor owns no more storage than
    them (safetensors reads just their bytes), and equals that slice of the stored 3-D tensor."""
    src = checkpoint("qwen3_moe", fx.FUSED_EXPERTS)
    if variant == "bin":
        state = load_file(src / "model.safetensors")
        torch.save(state, tmp_path / "pytorch_model.bin")
        (tmp_path / "config.json").write_bytes((src / "config.json").read_bytes())
        src = tmp_path
    stored = load_file(checkpoint("qwen3_moe", fx.FUSED_EXPERTS) / "model.safetensors")
    reader = open_checkpoint(src)
    infos = {i.name: i for i in reader.tensors()}
    assert not any(".experts.gate_up_proj" in n or ".experts.down_proj" in n for n in infos)
    gate_up = stored["model.layers.2.mlp.experts.gate_up_proj"]
    for e in (0, 5, 7):
        up = reader.load(infos[f"model.layers.2.mlp.experts.{e}.up_proj.weight"])
        assert torch.equal(up, gate_up[e, 32:64])
        if variant == "safetensors":
            assert up.untyped_storage().nbytes() == up.numel() * up.element_size() == 32 * 64 * 2
    reader.close()


def test_resume_after_kill_is_byte_identical(tmp_path, checkpoint):
    assert_resume_after_kill_is_byte_identical(checkpoint("qwen2_moe", fx.FUSED_EXPERTS), tmp_path,
                                               ["--max-shard-size", "40KB", "--no-progress"], "model-*.safetensors")


# ---------------------------------------------------------------------------------------- bad input


def _edit(src: Path, edit) -> None:
    """Rewrite the checkpoint's model.safetensors with `edit(tensors, spec, cfg, layer)` applied."""
    path = src / "model.safetensors"
    tensors = load_file(path)
    spec, cfg = spec_and_config(src)
    edit(tensors, spec, cfg, first_sparse_layer(src))
    save_file(tensors, path, metadata={"format": "pt"})


def missing_expert(tensors, spec, cfg, layer):
    del tensors[spec.name_of("expert_up", layer, 5)]


def misshapen_expert(tensors, spec, cfg, layer):
    name = spec.name_of("expert_gate", layer, 3)
    tensors[name] = tensors[name][:16].clone()


def narrow_router(tensors, spec, cfg, layer):
    name = spec.name_of("router", layer)
    tensors[name] = tensors[name][:7].clone()


def extra_expert(tensors, spec, cfg, layer):
    tensors[spec.name_of("expert_down", layer, EXPERTS)] = tensors[spec.name_of("expert_down", layer, 0)].clone()


def seven_fused_experts(tensors, spec, cfg, layer):
    name = f"model.layers.{layer}.mlp.experts.gate_up_proj"
    tensors[name] = tensors[name][:7].clone()


def odd_fused_rows(tensors, spec, cfg, layer):
    name = f"model.layers.{layer}.mlp.experts.gate_up_proj"
    tensors[name] = tensors[name][:, :63].clone()


def _message(case: str, src: Path) -> str:
    spec, cfg = spec_and_config(src)
    layer, file, config = first_sparse_layer(src), src / "model.safetensors", src / "config.json"
    fused = f"{file}: tensor model.layers.{layer}.mlp.experts.gate_up_proj (layer {layer}'s fused experts)"
    return {
        "missing_expert": f"{file}: layer {layer} expert 5 has no expert_up tensor ({spec.name_of('expert_up', layer, 5)} "
                          f"is missing; {config} has num_experts 8)",
        "misshapen_expert": f"{file}: tensor {spec.name_of('expert_gate', layer, 3)} (layer {layer} expert 3) has shape "
                            f"[16, 64], but expert 0 of the layer has [32, 64]",
        "narrow_router": f"{file}: tensor {spec.name_of('router', layer)} (layer {layer}'s router) has 7 rows; "
                         f"{config} has num_experts 8",
        "extra_expert": f"{file}: tensor {spec.name_of('expert_down', layer, 8)} is expert 8 of layer {layer}; "
                        f"{config} has num_experts 8 (experts 0-7)",
        "seven_fused_experts": f"{fused} has shape [7, 64, 64]: its first dim 7 is not the num_experts 8 of {config}",
        "odd_fused_rows": f"{fused} has shape [8, 63, 64]: its 63 rows do not split into 2 equal parts "
                          f"(expert_gate, expert_up)",
    }[case]


CASES = {"missing_expert": (missing_expert, "safetensors"), "misshapen_expert": (misshapen_expert, "safetensors"),
         "narrow_router": (narrow_router, "safetensors"), "extra_expert": (extra_expert, "safetensors"),
         "seven_fused_experts": (seven_fused_experts, fx.FUSED_EXPERTS),
         "odd_fused_rows": (odd_fused_rows, fx.FUSED_EXPERTS)}


@pytest.mark.parametrize("family", fx.MOE_FAMILIES)
@pytest.mark.parametrize("case", CASES)
def test_a_broken_expert_layout_is_refused_before_anything_is_written(tmp_path, copy_checkpoint, family, case):
    edit, variant = CASES[case]
    src = copy_checkpoint(family, variant)
    _edit(src, edit)
    out = tmp_path / "out"
    with pytest.raises(UserError) as raised:
        convert(src, out, ConvertOptions(max_shard_size="20KB"))
    assert str(raised.value) == _message(case, src)
    assert_nothing_written(out)


@pytest.mark.parametrize("case,family", [("missing_expert", "qwen3_moe"), ("misshapen_expert", "mixtral"),
                                         ("narrow_router", "qwen2_moe"), ("seven_fused_experts", "mixtral"),
                                         ("odd_fused_rows", "qwen3_moe")])
def test_the_cli_refuses_a_broken_expert_layout_in_one_line(tmp_path, copy_checkpoint, case, family):
    edit, variant = CASES[case]
    src = copy_checkpoint(family, variant)
    _edit(src, edit)
    out = tmp_path / "out"
    result = run_cli("convert", src, out, "--no-progress")
    assert_one_line_error(result)
    assert result.stderr.strip() == f"error: {_message(case, src)}"
    assert_nothing_written(out)


def test_experts_in_a_layer_the_config_makes_dense_are_refused(tmp_path, copy_checkpoint):
    src = copy_checkpoint("qwen3_moe")  # mlp_only_layers=[1]

    def experts_in_dense_layer(tensors, spec, cfg, layer):
        for role in EXPERT_ROLES:
            for e in range(EXPERTS):
                tensors[spec.name_of(role, 1, e)] = tensors[spec.name_of(role, 0, e)].clone()
    _edit(src, experts_in_dense_layer)
    out = tmp_path / "out"
    with pytest.raises(UserError) as raised:
        convert(src, out, ConvertOptions())
    assert str(raised.value) == (f"{src / 'model.safetensors'}: tensor model.layers.1.mlp.experts.0.down_proj.weight "
                                 f"is an expert of layer 1, which {src / 'config.json'} makes a dense layer")
    assert_nothing_written(out)


def test_a_router_under_its_hub_name_and_its_v5_alias_is_refused(tmp_path, copy_checkpoint):
    src = copy_checkpoint("mixtral", fx.FUSED_EXPERTS)

    def both_names(tensors, spec, cfg, layer):
        tensors["model.layers.1.block_sparse_moe.gate.weight"] = tensors["model.layers.1.mlp.gate.weight"].clone()
    _edit(src, both_names)
    out = tmp_path / "out"
    result = run_cli("convert", src, out, "--no-progress")
    assert_one_line_error(result)
    assert result.stderr.strip() == ("error: tensor model.layers.1.block_sparse_moe.gate.weight is stored twice: in "
                                     "model.safetensors and in model.safetensors as model.layers.1.mlp.gate.weight")
    assert_nothing_written(out)


def test_more_experts_per_token_than_experts_is_refused(tmp_path, copy_checkpoint):
    src = copy_checkpoint("mixtral")
    config = json.loads((src / "config.json").read_text())
    config["num_experts_per_tok"] = 9
    (src / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    result = run_cli("convert", src, out, "--no-progress")
    assert_one_line_error(result)
    assert result.stderr.strip() == f"error: {src / 'config.json'}: num_experts_per_tok 9 is more than the 8 experts"
    assert_nothing_written(out)


def test_manifest_hashes_cover_every_expert(converted):
    out = converted("qwen2_moe", fx.FUSED_EXPERTS)
    manifest = manifest_of(out)
    for name, record in manifest["files"].items():
        assert record["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest(), name
    assert sum(1 for r in manifest["tensors"].values() if "expert" in r) == 2 * EXPERTS * 3
