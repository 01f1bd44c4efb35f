"""check_ops --target runtime: the project's own runtime model (paged attention, prefill and decode
steps) traced on meta and classified against torch_npu 2.14.0. It must find no fallback."""

from __future__ import annotations

import json
from xml.etree import ElementTree as ET

import pytest
from conftest import assert_one_line_error, run_cli

import fixtures as fx

# the targets: (SoC, dtype) the runtime must reach an NPU kernel for with every op
TARGETS = [("ascend910b", "float16"), ("ascend910b", "bfloat16"), ("ascend310p", "float16")]
PAGED_ATTENTION_OPS = {"aten::index_copy_", "aten::index.Tensor", "aten::scaled_dot_product_attention"}


def check_ops(*args, **kw):
    return run_cli(*args, script="check_ops", **kw)


@pytest.fixture
def invoke(monkeypatch):
    """The check_ops command in this process (a subprocess costs ~4 s of imports per case):
    (exit code, stdout). Errors propagate as exceptions, as `run_main` would see them."""
    from click.testing import CliRunner

    from ascend_common import cli_support
    from opcheck.cli import check_ops_command

    # the command asks run_main to skip heap teardown; nothing here goes through run_main, keep it so
    monkeypatch.setattr(cli_support, "_skip_teardown", False)

    def run(*args) -> tuple[int, str]:
        result = CliRunner().invoke(check_ops_command, [str(a) for a in args], catch_exceptions=False,
                                    standalone_mode=False)  # as run_main calls it: the return value is the exit code
        return result.return_value, result.output
    return run


@pytest.mark.parametrize("family", fx.FAMILIES + fx.MOE_FAMILIES + fx.DEEPSEEK_FAMILIES)
def test_runtime_model_is_clean_for_every_family_and_target(invoke, checkpoint, family):
    from runtime.model.loader import open_model

    model = checkpoint(family)
    layers = open_model(model).config.num_layers
    for soc, dtype in TARGETS:
        code, out = invoke("--target", "runtime", "--model", model, "--soc", soc, "--dtype", dtype, "--format", "json")
        report = json.loads(out)
        assert report["findings"] == [], (family, soc, dtype, report["findings"])
        assert code == 0 and report["clean"] is True
        target = report["target"]
        assert (target["soc"], target["dtype"], target["torch_npu"], target["model"]) == (soc, dtype, "2.14.0", "runtime")
        assert set(target["shapes"]) == {"prefill", "decode"}
        assert report["ops"]["distinct"] >= 25
        fusions = {f["pattern"]: f["count"] for f in report["fusions"]}  # found in the prefill program
        assert fusions.get("attention") == layers and fusions.get("RMSNorm", 0) >= 2 * layers + 1  # (+ final norm)


def test_real_cli_run_names_the_runtime_model(checkpoint, tmp_path):
    """One real process per output form: the table's target line, and JUnit's one case per op."""
    model = checkpoint("qwen2")
    table = check_ops("--target", "runtime", "--model", model, "--dtype", "float16")
    assert table.code == 0, table.stderr
    assert table.stderr == ""
    first = table.stdout.splitlines()[0]
    assert first.startswith(f"check_ops {model} (runtime model): ") and "target ascend910b float16" in first
    assert "no findings: every op reaches an NPU kernel" in table.stdout
    assert "runtime/model/decoder.py" in table.stdout  # the fusion table points into the runtime's own code

    out = tmp_path / "ops.xml"
    junit = run_cli("check-ops", "--target", "runtime", "--model", model, "--soc", "ascend310p", "--dtype", "float16",
                    "--format", "junit", "--output", out)
    assert junit.code == 0, junit.stderr
    cases = {c.get("name"): c for c in ET.parse(out).getroot().iter("testcase")}
    assert PAGED_ATTENTION_OPS <= set(cases)  # the cache write, the block-table gather, SDPA
    assert not any(c.find("failure") is not None for c in cases.values())


def test_both_phases_trace_the_paged_attention(checkpoint):
    """The uses carry the phase they come from; the cache write, the block-table gather and SDPA
    run in both steps, with the shapes of each step."""
    from opcheck.runtime_trace import open_runtime, trace_runtime

    ckpt = open_runtime(checkpoint("mistral"))  # 4 heads on 2 KV heads, sliding window 32
    uses, prefill = trace_runtime(ckpt, "float16", 2, 8)
    for op in ("index_copy_", "index.Tensor", "scaled_dot_product_attention", "embedding", "linear"):
        assert uses[op].phases == ["prefill", "decode"], (op, uses[op].phases)
    assert uses["index_copy_"].count == 2 * 2 * 2  # k and v, 2 layers, 2 steps
    where = uses["index_copy_"].locations[0]  # the runtime's own code, and the module that runs it
    assert "runtime/model/decoder.py:" in where and where.endswith("(model.layers.0.self_attn)"), where
    # SDPA [B, kv_heads, group x new tokens, head_dim]: 2 x 8 new tokens in the prefill, 2 x 1 in the decode
    assert uses["scaled_dot_product_attention"].shapes == [[2, 2, 2 * 8, 16], [2, 2, 2 * 1, 16]]
    assert uses["scaled_dot_product_attention"].dtypes == {"float16"}
    assert "sub.Tensor" in uses  # the sliding-window half of the mask
    targets = {str(n.target) for n in prefill.graph.nodes if n.op == "call_function"}
    assert "aten.index_copy_.default" in targets  # the cache write is kept as an input mutation


def test_moe_layers_trace_torch_npus_fused_moe_kernels(checkpoint):
    """An MoE layer takes its NPU path under check_ops: routing, the two grouped matmuls and the
    finalize are torch_npu's kernels (4 per sparse layer and step), not the CPU's sort / grouped_mm."""
    from opcheck.runtime_trace import open_runtime, trace_runtime

    ckpt = open_runtime(checkpoint("qwen3_moe"))  # layers 0 and 2 sparse, norm_topk_prob
    uses, _ = trace_runtime(ckpt, "float16", 2, 8)
    for op, per_layer in (("npu_moe_gating_top_k_softmax", 1), ("npu_moe_init_routing_v2", 1),
                          ("npu_grouped_matmul", 2), ("npu_moe_finalize_routing", 1)):
        assert uses[op].phases == ["prefill", "decode"] and uses[op].count == per_layer * 2 * 2, (op, uses[op].count)
    assert not {"sort", "histc", "_grouped_mm", "topk"} & set(uses)


def test_a_w8a8_dynamic_moe_model_traces_per_token_quantization_and_is_clean(invoke, checkpoint, tmp_path):
    """`convert --quantize w8a8-dynamic` on Qwen2-MoE: its linears call npu_dynamic_quant +
    npu_quant_matmul, its int8 experts npu_moe_init_routing_v2 (quantizing) and npu_grouped_matmul
    with per-token scales, npu_dynamic_quant between the two; every target is clean."""
    from ascend_convert.converter import ConvertOptions, convert
    from opcheck.runtime_trace import open_runtime, trace_runtime

    model = tmp_path / "w8a8-dynamic"
    # engine none: for ascendkit serve (vllm-ascend@182b75e has no `experts` entry for qwen2_moe)
    convert(checkpoint("qwen2_moe"), model, ConvertOptions(quantize="w8a8-dynamic", engine="none"))
    uses, _ = trace_runtime(open_runtime(model), "float16", 2, 8)
    layers, sparse = 4, 2  # qwen2_moe: layers 1 and 3 sparse, each with a shared expert
    linears = layers * 2 + (layers - sparse) * 2 + sparse * 2  # qkv, o; the dense MLPs; the shared experts
    assert uses["npu_quant_matmul"].count == linears * 2  # both steps
    assert uses["npu_dynamic_quant"].count == (linears + sparse) * 2  # + one between each layer's expert matmuls
    assert uses["npu_grouped_matmul"].count == sparse * 2 * 2
    assert "_int_mm" not in uses
    for soc, dtype in TARGETS:
        code, out = invoke("--target", "runtime", "--model", model, "--soc", soc, "--dtype", dtype, "--format", "json")
        assert code == 0 and json.loads(out)["findings"] == [], (soc, dtype, out)


def test_auto_dtype_is_the_config_dtype_as_for_hf(invoke, checkpoint):
    """auto: the checkpoint's dtype (bf16 here), as the HF path picks it; on a chip without bf16
    that is an `unsupported` finding in both phases, exit 1."""
    from opcheck.hf_trace import config_dtype

    model = checkpoint("llama")
    code, out = invoke("--target", "runtime", "--model", model, "--soc", "ascend310p", "--format", "json")
    report = json.loads(out)
    assert code == 1 and report["target"]["dtype"] == config_dtype(model) == "bfloat16"
    kinds = {(f["op"], f["kind"]) for f in report["findings"]}
    assert ("aten::linear", "unsupported") in kinds and ("aten::scaled_dot_product_attention", "unsupported") in kinds
    assert {f["kind"] for f in report["findings"]} == {"unsupported"}
    assert {"aten::index_copy_", "aten::index.Tensor"} <= {op for op, _ in kinds}  # the bf16 cache write and gather
    assert "aten::sym_size.int" not in {op for op, _ in kinds}  # export's size read computes nothing
    assert all(f["phases"] == ["prefill", "decode"] for f in report["findings"])
    code, out = invoke("--model", model, "--soc", "ascend310p", "--format", "json")  # the HF path
    assert code == 1 and json.loads(out)["target"]["dtype"] == "bfloat16"


def test_hf_target_needs_model():
    assert_one_line_error(check_ops("--dtype", "float16"), "--model is required with --target hf")


def test_runtime_target_refuses_what_is_not_a_checkpoint(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    assert_one_line_error(check_ops("--target", "runtime", "--model", onnx),
                          f"{onnx}: --target runtime traces the runtime's own model")
    assert_one_line_error(check_ops("--target", "runtime", "--model", tmp_path / "missing"),
                          f"{tmp_path / 'missing'}: no such file or directory")


@pytest.mark.slow
def test_runtime_target_defaults_to_smollm2(smollm2_gguf, tmp_path):
    """No --model: the SmolLM2-135M GGUF (30 layers) gives the shapes (its config read by transformers
    from the GGUF's metadata)."""
    out = tmp_path / "report.json"
    result = check_ops("--target", "runtime", "--dtype", "float16", "--format", "json", "--output", out)
    assert result.code == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["model"] == str(smollm2_gguf) and report["clean"] is True
    assert report["target"]["model"] == "runtime" and report["target"]["dtype"] == "float16"
    fusions = {f["pattern"]: f["count"] for f in report["fusions"]}
    assert fusions["attention"] == 30 and fusions["SwiGLU"] == 30
