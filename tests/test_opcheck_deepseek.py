"""check_ops on the published DeepSeek-V3, DeepSeek-V2-Lite and GLM-4.5 configs (examples/models):
transformers' classes built on meta from config.json alone, one decoder layer of each kind traced and
counted for every layer of its kind, every op against torch_npu 2.14.0, MLA and group-limited routing
named against the torch_npu kernels that serve them; and configs transformers takes but cannot run."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from ascend_common.errors import UserError
from opcheck.check import run_check
from opcheck.fusion import find_fusions
from opcheck.hf_trace import build_model, export_prefill, load_config
from opcheck.layers import sample_layers
from opcheck.manifests import load_manifest, shipped_path
from opcheck.trace import ops_in

MODELS = Path(__file__).resolve().parents[1] / "examples" / "models"
MANIFEST = load_manifest(shipped_path("torch_npu-2.14.0.json"), "torch_npu")
V3_GATING = ("found: sigmoid scores + correction bias, 8 groups scored by top-2 sum, top-4 groups kept, top-8 "
             "experts; call npu_moe_gating_top_k(x, k=8, bias=the bias, k_group=4, group_count=8, "
             "group_select_mode=1, norm_type=1, renorm=0, routed_scaling_factor=the model's)")


@cache
def checked(name: str):
    return run_check(str(MODELS / name))


def rows(fusions, *patterns) -> dict:
    by_name = {f["pattern"] if isinstance(f, dict) else f.pattern: f for f in fusions}
    get = (lambda f, k: f[k] if isinstance(f, dict) else getattr(f, k))
    return {p: (get(by_name[p], "count"), get(by_name[p], "fused_op"), get(by_name[p], "in_release"))
            for p in patterns if p in by_name}


def test_deepseek_v3_real_config_through_the_cli(tmp_path):
    """61 layers of which 4 traced (3 dense + the first of 58 MoE layers of 256 experts), the MTP layer
    and the FP8 quantization named, every op on an NPU kernel, MLA and grouped gating per layer."""
    out = tmp_path / "v3.json"
    result = run_cli("--model", MODELS / "deepseek-v3", "--format", "json", "--output", out, script="check_ops")
    assert result.code == 0, result.stderr
    report = json.loads(out.read_text())
    target = report["target"]
    assert (target["layers"], target["moe"], target["mtp_layers"], target["source_quantization"]) == (
        {"total": 61, "traced": 4, "kinds": 2}, {"layers": 58, "routed_experts": 256}, 1, "fp8")
    assert target["dtype"] == "bfloat16" and target["experts"] == "batched_mm"
    assert report["clean"] is True and report["findings"] == []
    assert rows(report["fusions"], "RoPE", "RoPE (interleaved)", "MLA prolog", "MLA KV prolog", "MLA attention",
                "MoE gating", "MoE grouped gating", "MoE init routing", "MoE grouped matmul",
                "MoE finalize routing") == {
        "RoPE (interleaved)": (122, "torch_npu.npu_interleave_rope", True),  # q and k, every layer
        "MLA prolog": (61, "torch_npu.npu_mla_prolog_v3", True),
        "MLA attention": (61, "torch_npu.npu_fused_infer_attention_score_v2", True),
        "MoE grouped gating": (58, "torch_npu.npu_moe_gating_top_k", True),
        "MoE init routing": (58, "torch_npu.npu_moe_init_routing_v2", True),
        "MoE grouped matmul": (58, "torch_npu.npu_grouped_matmul", True),
        "MoE finalize routing": (58, "torch_npu.npu_moe_finalize_routing", True),
    }
    gating = next(f for f in report["fusions"] if f["pattern"] == "MoE grouped gating")
    assert gating["note"].endswith(V3_GATING)
    assert gating["locations"][0].endswith("(model.layers.3.mlp.gate)")


def test_glm_4_5_real_config():
    """GQA attention (no MLA), sigmoid routing with the correction bias in one group: grouped gating."""
    r = checked("glm-4.5")
    assert r.found == []
    assert (r.target["layers"], r.target["moe"], r.target["mtp_layers"]) == (
        {"total": 92, "traced": 4, "kinds": 2}, {"layers": 89, "routed_experts": 160}, 1)
    assert "source_quantization" not in r.target
    assert rows(r.fusions, "MLA prolog", "MLA KV prolog", "MLA attention", "MoE gating", "MoE grouped gating",
                "attention", "RoPE") == {
        "MoE grouped gating": (89, "torch_npu.npu_moe_gating_top_k", True),
        "attention": (92, "torch_npu.npu_fused_infer_attention_score", None),
        "RoPE": (184, "torch_npu.npu_rotary_mul", None),
    }
    gating = next(f for f in r.fusions if f.pattern == "MoE grouped gating")
    assert "found: sigmoid scores + correction bias, 1 groups scored by top-2 sum, top-1 groups kept, top-8" in gating.note


def test_deepseek_v2_lite_real_config():
    """MLA without q_lora_rank (only the KV half fuses) and softmax greedy routing (plain gating)."""
    r = checked("deepseek-v2-lite")
    assert r.found == []
    assert (r.target["layers"], r.target["moe"]) == ({"total": 27, "traced": 2, "kinds": 2},
                                                     {"layers": 26, "routed_experts": 64})
    assert "mtp_layers" not in r.target
    assert rows(r.fusions, "MLA prolog", "MLA KV prolog", "MLA attention", "MoE gating", "MoE grouped gating") == {
        "MLA KV prolog": (27, "torch_npu.npu_kv_rmsnorm_rope_cache_v2", True),
        "MLA attention": (27, "torch_npu.npu_fused_infer_attention_score_v2", True),
        "MoE gating": (26, "torch_npu.npu_moe_gating_top_k_softmax", True),
    }


def test_an_older_release_gets_the_newest_kernel_it_has():
    program = checked_program("glm-4.5")
    custom = set(MANIFEST["npu_custom"]) - {"npu_moe_gating_top_k"}
    assert rows(find_fusions(program, custom), "MoE grouped gating") == {
        "MoE grouped gating": (1, "torch_npu.npu_moe_gating_top_k", False)}


@cache
def checked_program(name: str):
    model_dir = MODELS / name
    model = build_model(model_dir, load_config(model_dir), "bfloat16")
    sample_layers(model)
    return export_prefill(model, model_dir, 1, 4)


TINY_V3 = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 64,
           "intermediate_size": 96, "moe_intermediate_size": 32, "num_hidden_layers": 10, "num_attention_heads": 4,
           "num_key_value_heads": 4, "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2,
           "n_group": 4, "topk_group": 2, "first_k_dense_replace": 2, "q_lora_rank": 24, "kv_lora_rank": 16,
           "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8, "vocab_size": 128,
           "max_position_embeddings": 256, "torch_dtype": "float32"}


def test_one_layer_per_kind_counts_as_the_whole_model(tmp_path):
    """A 10-layer DeepSeek-V3 config: every op count and fusion count of the sampled prefill (2 dense
    layers + 1 MoE layer weighted 8) equals the whole model's."""
    (tmp_path / "config.json").write_text(json.dumps(TINY_V3))
    whole = build_model(tmp_path, load_config(tmp_path), "float32")
    full = export_prefill(whole, tmp_path, 1, 4)
    cut = build_model(tmp_path, load_config(tmp_path), "float32")
    sample = sample_layers(cut)
    assert (sample.total, sample.traced, sample.kinds, sample.weights) == (10, 3, 2, {0: 1, 1: 1, 2: 8})
    sampled = export_prefill(cut, tmp_path, 1, 4)
    assert {k: u.count for k, u in ops_in(sampled, sample.weight).items()} == {k: u.count for k, u in ops_in(full).items()}
    counts = (lambda fusions: {f.pattern: f.count for f in fusions})
    assert counts(find_fusions(sampled, MANIFEST["npu_custom"], weight=sample.weight)) == counts(
        find_fusions(full, MANIFEST["npu_custom"]))
    assert all(p.dtype == torch.float32 for p in whole.parameters())


@pytest.mark.parametrize("change,message", [
    ({"n_group": 3}, "n_group 3 does not divide the 8 routed experts"),
    ({"topk_group": 5}, "topk_group 5 is more than n_group 4"),
    ({"kv_lora_rank": None}, "kv_lora_rank is missing; a deepseek_v3 model's multi-head latent attention needs it"),
    ({"kv_lora_rank": 0}, ("kv_lora_rank is not a positive integer (0); a deepseek_v3 model's multi-head latent "
                           "attention needs it")),
])
def test_bad_routing_and_mla_fields(tmp_path, change, message):
    """Fields transformers takes without a word: one line naming config.json and the field, the very
    check `convert` makes (the family's spec; the CLI prints a UserError as its one `error:` line and
    exits 2, tests/test_opcheck_cli.py)."""
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in {**TINY_V3, **change}.items() if v is not None}))
    with pytest.raises(UserError) as err:
        run_check(str(tmp_path))
    assert str(err.value) == f"{tmp_path / 'config.json'}: {message}"

