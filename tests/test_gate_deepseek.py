"""DeepSeek-V3 through `ascendkit gate` and `ascendkit demo`. The shipped example policy
(examples/policies/deepseek-v3.toml: a real DeepSeek-V3/R1 FP8 checkpoint to W8A8_DYNAMIC for two
910B nodes) gates the tiny seeded DeepSeek-V3 fixture whose weights this test stores in FP8 blocks in
DeepSeek's file format: it converts, verifies against the FP8 source, preflights the layout and traces
the operators config-only, and says the smoke stage was not run (smoke.check = false: a 671B model is
served on the deployment). The one line changed is `ep`: the fixture has 8 experts, not 256. Then the
same fixture through every stage the gate runs for other MoE models (smoke and the sweep's bench too),
and the quantization the demo picks for it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli
from fp8_blocks import fp8_copy
from safetensors import safe_open
from safetensors.torch import load_file

from ascendkit.gate_policy import load_policy

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "policies" / "deepseek-v3.toml"
#: DeepSeek-V3 stores its decoder blocks' linears in FP8 (MLA's projections, dense and expert MLPs);
#: the router, norms, embeddings, lm_head and the MTP layer's own eh_proj/head stay bf16
BLOCK = (48, 32)  # blocks that do not divide the fixture's shapes: edge blocks cut short
FP8_WEIGHT = re.compile(r"model\.layers\.\d+\.(self_attn|mlp)\..*_proj(_with_mqa)?\.weight")


@pytest.fixture(scope="module")
def fp8_deepseek_v3(checkpoint, tmp_path_factory) -> Path:
    return fp8_copy(checkpoint("deepseek_v3"), tmp_path_factory.mktemp("fp8") / "deepseek-v3-fp8",
                    lambda name: FP8_WEIGHT.fullmatch(name) is not None, BLOCK)


def test_the_example_is_deepseek_v3_w8a8_dynamic_on_two_910b_nodes_not_served_here():
    policy = load_policy(EXAMPLE)
    assert (policy.target.soc, policy.target.dtype, policy.target.quantize) == ("ascend910b", "bfloat16",
                                                                                "w8a8-dynamic")
    assert (policy.target.tp, policy.target.ep, policy.convert.mtp) == (4, 16, "keep")
    assert policy.ops.model and policy.ops.runtime and policy.convert.verify_source and policy.preflight.check
    assert not policy.smoke.check and policy.sweep is None
    assert all(v in (None, False) for v in policy.performance.model_dump().values())
    assert all(p.expect for p in policy.smoke.prompts)  # kept for the deployment's run


def test_performance_without_the_smoke_load_is_one_line(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[target]\nsoc = "ascend910b"\ndtype = "bfloat16"\n\n[smoke]\ncheck = false\n\n'
                      '[performance]\nmax_memory_gb = 4\n', encoding="utf-8")
    r = run_cli("gate", tmp_path, "--policy", policy, "--report-dir", tmp_path / "r")
    assert_one_line_error(r, f"error: {policy}: performance.max_memory_gb: measured on the smoke load, which "
                             f"smoke.check = false does not run here (remove it, set smoke.check = true, or give the "
                             f"deployment's endpoint)")


def test_the_example_gates_an_fp8_deepseek_v3_checkpoint(fp8_deepseek_v3, tmp_path):
    policy = tmp_path / "deepseek-v3.toml"
    text, n = re.subn(r"^ep = 16 ", "ep = 8  ", EXAMPLE.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert n == 1
    policy.write_text(text, encoding="utf-8")
    report_dir, out = tmp_path / "reports", tmp_path / "out"
    r = run_cli("gate", fp8_deepseek_v3, "--policy", policy, "--report-dir", report_dir, "--output", out,
                timeout=600)
    data = json.loads((report_dir / "gate.json").read_text())
    messages = {x["id"]: x["message"] for x in data["rules"]}
    assert (r.code, data["verdict"], data["error"]) == (0, "PASS", None), (r.stderr[-2000:], messages)
    assert [(x["id"], x["status"]) for x in data["rules"]] == [
        ("doctor", "pass"), ("target.torch_npu", "pass"), ("target.soc", "pass"), ("target.dtype", "pass"),
        ("target.quantize", "pass"), ("convert.verify", "pass"), ("preflight", "pass"),
        ("ops.model", "pass"), ("ops.runtime", "pass"), ("smoke", "skip")]
    assert set(data["stages"]) == {"doctor", "convert", "preflight"}  # no smoke report: nothing was served
    assert messages["smoke"] == ("not served here (smoke.check = false): the prompts, the greedy agreement and the "
                                 "load are decided where the model is deployed")
    convert = data["stages"]["convert"]
    assert (convert["action"], convert["target"]["quantize"]) == ("converted", "W8A8_DYNAMIC")
    fp8 = sum(1 for name in load_file(str(fp8_deepseek_v3 / "model.safetensors")) if FP8_WEIGHT.fullmatch(name))
    assert fp8 == 4 * 5 + 3 + 3 * (8 + 1) * 3  # MLA's 5 in 4 layers (MTP's too), layer 0's MLP, 8 + 1 shared experts
    assert convert["verify"]["ok"] and convert["verify"]["source_tensors"] == convert["verify"]["tensors"] > fp8
    assert messages["convert.verify"].endswith(f"tensors equal the checked conversion of {fp8_deepseek_v3}")
    assert "EP 8" in messages["preflight"]
    for which in ("model", "runtime"):
        assert messages[f"ops.{which}"].endswith("calls against torch_npu 2.14.0 on ascend910b"), messages
    # the output as vllm-ascend loads it: no FP8 left, no quantization_config, the MTP layer described
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["num_nextn_predict_layers"] == 1
    description = json.loads((out / "quant_model_description.json").read_text())
    assert description["model.layers.2.self_attn.q_a_proj.weight"] == "W8A8_DYNAMIC"
    assert description["model.layers.3.self_attn.q_a_proj.weight"] == "FLOAT"  # the MTP layer, kept float
    assert description["model.layers.3.eh_proj.weight"] == description["model.layers.1.self_attn.kv_b_proj.weight"] \
        == "FLOAT"
    with safe_open(out / "quant_model_weights.safetensors", "pt") as f:  # msModelSlim's file name
        names = f.keys()
        assert not [n for n in names if n.endswith("_scale_inv")]
        assert {str(f.get_slice(n).get_dtype()) for n in names} <= {"BF16", "I8", "F32"}
    md = (report_dir / "gate.md").read_text(encoding="utf-8")
    assert md.startswith("## ascendkit gate: ✅ PASS\n") and "smoke.check = false" in md


def test_deepseek_v3_through_every_gate_stage(checkpoint, tmp_path):
    """Convert to W8A8_DYNAMIC, verify, preflight, smoke (the source's greedy tokens, the load) and the
    sweep's bench, as for other MoE models; check_ops is the example's run above."""
    policy = tmp_path / "policy.toml"
    policy.write_text('[target]\nsoc = "ascend910b"\ndtype = "bfloat16"\nquantize = "w8a8-dynamic"\n\n'
                      '[ops]\nmodel = false\nruntime = false\n\n[smoke]\nmax_tokens = 4\nmin_greedy_agreement = 0.0\n\n'
                      '[[smoke.prompts]]\nprompt = "Hello"\n\n[smoke.load]\nrequests = 2\nconcurrency = 1\n'
                      'prompt_len = 8\ntokens = 2\n\n[runtime]\ndevice = "cpu"\nkv_cache_memory = "64MiB"\n\n'
                      '[sweep]\nsizes = [1, 2]\nprompt_len = 8\nnew_tokens = 4\n', encoding="utf-8")
    report_dir = tmp_path / "reports"
    r = run_cli("gate", checkpoint("deepseek_v3"), "--policy", policy, "--report-dir", report_dir,
                "--output", tmp_path / "out", timeout=600)
    data = json.loads((report_dir / "gate.json").read_text())
    status = {x["id"]: x["status"] for x in data["rules"]}
    assert (r.code, data["verdict"]) == (0, "PASS"), (r.stderr[-2000:], data["rules"])
    assert status == {**dict.fromkeys(status, "pass"), "smoke.same_weights": "skip"}
    assert {"preflight", "smoke.min_greedy_agreement", "smoke.load"} <= set(status)
    smoke = data["stages"]["smoke"]
    assert smoke["quantized"] and smoke["load"]["failed"] == 0
    assert [size["batch"] for size in data["stages"]["sweep"]["sizes"]] == [1, 2]


def test_the_demo_quantizes_an_moe_model_to_w8a8_dynamic(checkpoint):
    """vllm-ascend's MoE layers have no W8A16 method, so the demo's quantized DeepSeek is W8A8_DYNAMIC."""
    from ascendkit.demo import Quantized, _quantized

    quant = _quantized(checkpoint("deepseek_v3"), "ascend910b")
    assert (quant.kind, quant.label, quant.engine) == ("w8a8-dynamic", "W8A8_DYNAMIC", "vllm-ascend")
    assert quant.note == ("note: vllm-ascend@182b75e has no W8A16 method for MoE layers; the quantized model is "
                          "W8A8_DYNAMIC (int8 weights per channel, activations per token)")
    assert _quantized(checkpoint("llama"), "ascend910b") == Quantized("w8a16", "W8A16", "vllm-ascend")


def test_convert_mtp_drop_leaves_the_mtp_layer_out(checkpoint, tmp_path):
    """`convert.mtp` is `convert --mtp`: dropped, layer 3 is gone from the files and the config says 0."""
    policy = tmp_path / "policy.toml"
    policy.write_text('[target]\nsoc = "ascend910b"\ndtype = "bfloat16"\n\n[convert]\nmtp = "drop"\n\n'
                      '[ops]\nmodel = false\nruntime = false\n\n[smoke]\ncheck = false\n', encoding="utf-8")
    out = tmp_path / "out"
    r = run_cli("gate", checkpoint("deepseek_v3"), "--policy", policy, "--report-dir", tmp_path / "r", "--output", out)
    assert r.code == 0, r.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["num_nextn_predict_layers"] == 0
    with safe_open(out / "model.safetensors", "pt") as f:
        names = f.keys()
        assert names and not [n for n in names if n.startswith("model.layers.3.")]
