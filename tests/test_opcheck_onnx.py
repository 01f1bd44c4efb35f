"""check_ops on ONNX models: each node's (domain, op type, opset) against ATC's list (msit's onnx.yaml).

The clean model is the tiny llama fixture exported by `torch.onnx.export` (dynamo, opset 18, weights
in an external data file); the others are edits of it or small graphs built with `onnx.helper`."""

from __future__ import annotations

import random
import shutil
import warnings
from pathlib import Path

import onnx
import pytest
import torch
from conftest import assert_one_line_error, run_cli
from onnx import TensorProto, helper

from ascend_common.errors import UserError
from opcheck.manifests import load_manifest, shipped_path
from opcheck.onnx_check import check_onnx

# What the dynamo exporter makes of the llama fixture at opset 18 (embedding → Gather, RMSNorm →
# Pow/ReduceMean/Sqrt/Reciprocal, RoPE → Slice/Neg/Concat, SDPA → MatMul/Softmax with IsNaN/Where
# guarding fully masked rows, GQA → Unsqueeze/Expand, SiLU → Sigmoid): all listed by ATC at 18.
LLAMA_OPS = {f"onnx::{op}" for op in (
    "Add", "Concat", "Expand", "Gather", "IsNaN", "MatMul", "Mul", "Neg", "Pow", "Reciprocal", "ReduceMean",
    "Reshape", "Sigmoid", "Slice", "Softmax", "Sqrt", "Transpose", "Unsqueeze", "Where")}
INVALID = "not a valid ONNX model ("


class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False).logits


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> Path:
    """The llama fixture as `model.onnx` + `model.onnx.data` (fp32, batch 1, 8 tokens)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint("llama"), dtype=torch.float32).eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation warnings about torch internals
        torch.onnx.export(_Logits(model).eval(), (torch.zeros(1, 8, dtype=torch.long),), str(path), dynamo=True,
                          opset_version=18, external_data=True, verbose=False)
    assert (path.parent / "model.onnx.data").is_file()
    return path


@pytest.fixture(scope="module")
def manifest() -> dict:
    return load_manifest(shipped_path("atc-onnx.json"), "atc_onnx")


def _proto(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=False)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    """The proto as is: external tensors keep pointing at their data file, which is not rewritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def contrib(exported, tmp_path_factory) -> Path:
    """The export plus one onnxruntime contrib node, `com.microsoft::FusedMatMul`, beside its data file."""
    model = _proto(exported)
    first = next(n for n in model.graph.node if n.op_type == "MatMul")
    model.graph.node.append(helper.make_node("FusedMatMul", [first.input[0], first.input[1]], ["fused_out"],
                                             name="fused_0", domain="com.microsoft", alpha=1.0))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    folder = tmp_path_factory.mktemp("contrib")
    shutil.copy(exported.parent / "model.onnx.data", folder)
    return _save(model, folder / "model.onnx")


def _small(nodes, opset: int = 18, extra_opsets=(), functions=(), inputs=("X", "Y")) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 2]) for n in inputs],
                              [helper.make_tensor_value_info("Z", TensorProto.FLOAT, [2, 2])])
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions))


def test_llama_export_is_clean(exported, manifest):
    uses, found = check_onnx(exported, manifest)
    assert set(uses) == LLAMA_OPS
    assert found == []
    assert {u.opset for u in uses.values()} == {18}
    assert uses["onnx::MatMul"].atc_type == "BatchMatMulV2"  # the IR type ATC converts it to
    assert uses["onnx::Transpose"].atc_type == "PartitionedCall"  # ATC decomposes it
    assert "float32" in uses["onnx::MatMul"].dtypes and uses["onnx::MatMul"].count >= 15  # 2 × 7 linears + lm_head


def test_check_reads_no_external_data(exported, manifest, tmp_path, monkeypatch):
    """The weights are not needed to name operators: the `.onnx` alone is checked, from any directory."""
    shutil.copy(exported, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx.data").exists()
    assert any(t.data_location == TensorProto.EXTERNAL for t in _proto(exported).graph.initializer)
    monkeypatch.chdir(tmp_path)
    uses, found = check_onnx(tmp_path / "model.onnx", manifest)
    assert set(uses) == LLAMA_OPS and found == []


def test_contrib_op_is_unsupported(contrib, manifest):
    uses, found = check_onnx(contrib, manifest)
    assert set(uses) == LLAMA_OPS | {"com.microsoft::FusedMatMul"}
    [finding] = found
    assert (finding.op, finding.kind, finding.count) == ("com.microsoft::FusedMatMul", "unsupported", 1)
    assert finding.locations == ("model.onnx: node fused_0",)
    assert finding.dtypes == ("float32",)  # its inputs' types, from the graph's value_info
    assert "onnxruntime contrib op" in finding.advice and "ai.onnx, npu, onnxinfer" in finding.advice


def test_opset_atc_lacks(manifest, tmp_path):
    path = _save(_small([helper.make_node("MatMul", ["X", "Y"], ["Z"], name="mm")], opset=21), tmp_path / "m21.onnx")
    uses, found = check_onnx(path, manifest)
    assert uses["onnx::MatMul"].opset == 21 and uses["onnx::MatMul"].atc_type is None
    [finding] = found
    assert (finding.op, finding.kind, finding.locations) == ("onnx::MatMul", "unsupported", ("m21.onnx: node mm",))
    assert "only at opsets 8-18, the model has opset 21: re-export with opset_version=18" in finding.advice


def test_subgraphs_are_walked(manifest, tmp_path):
    """ATC parses the branches of an If too: an op it lacks inside one is a finding, named by its path."""
    branch = {name: helper.make_graph([node], name, [], [helper.make_tensor_value_info("B", TensorProto.FLOAT, None)])
              for name, node in (("then", helper.make_node("DFT", ["X"], ["B"], name="dft")),
                                 ("else", helper.make_node("Identity", ["X"], ["B"], name="same")))}
    cond = helper.make_tensor_value_info("C", TensorProto.BOOL, [])
    node = helper.make_node("If", ["C"], ["Z"], name="branch", then_branch=branch["then"], else_branch=branch["else"])
    model = _small([node], inputs=("X",))
    model.graph.input.append(cond)
    uses, found = check_onnx(_save(model, tmp_path / "if.onnx"), manifest)
    assert set(uses) == {"onnx::If", "onnx::DFT", "onnx::Identity"}
    [finding] = found
    assert finding.op == "onnx::DFT" and finding.locations == ("if.onnx: node branch/then_branch/dft",)
    assert finding.dtypes == ("float32",)  # X, declared by the outer graph
    assert "no converter for ai.onnx DFT at any opset" in finding.advice


def test_model_local_function_is_unsupported(manifest, tmp_path):
    double = helper.make_function("custom.fn", "Double", ["x"], ["y"], [helper.make_node("Add", ["x", "x"], ["y"])],
                                  [helper.make_opsetid("", 18)])
    model = _small([helper.make_node("Double", ["X"], ["Z"], name="d", domain="custom.fn")], inputs=("X",),
                   extra_opsets=[("custom.fn", 1)], functions=[double])
    _, found = check_onnx(_save(model, tmp_path / "fn.onnx"), manifest)
    assert [f.op for f in found] == ["custom.fn::Double"]
    assert "onnx.inliner.inline_local_functions" in found[0].advice


def test_constant_nodes_are_parsed_by_atc_itself(manifest, tmp_path):
    """msit's list has no `Constant`: ATC's parser maps it to a Const node itself, at any opset."""
    value = helper.make_tensor("v", TensorProto.FLOAT, [2, 2], [1.0] * 4)
    nodes = [helper.make_node("Constant", [], ["K"], name="k", value=value), helper.make_node("Add", ["X", "K"], ["Z"])]
    uses, found = check_onnx(_save(_small(nodes, inputs=("X",)), tmp_path / "c.onnx"), manifest)
    assert set(uses) == {"onnx::Constant", "onnx::Add"} and found == []


def _cut_before(data: bytes, model: onnx.ModelProto, field: str) -> bytes:
    """`data` cut at the top-level boundary before `field` (and the fields serialized after it)."""
    head = onnx.ModelProto()
    head.CopyFrom(model)
    names = [f.name for f in sorted(onnx.ModelProto.DESCRIPTOR.fields, key=lambda f: f.number)]  # wire order
    for name in names[names.index(field):]:
        head.ClearField(name)
    prefix = head.SerializeToString()
    assert data.startswith(prefix)
    return prefix


@pytest.mark.parametrize("content, reason", [
    (lambda data, model: random.Random(0).randbytes(4096), "DecodeError: Error parsing message"),
    (lambda data, model: data[:len(data) // 2], "DecodeError: Error parsing message"),
    (lambda data, model: _cut_before(data, model, "opset_import"), "no opset_import)"),
    (lambda data, model: _cut_before(data, model, "graph"), "no graph)"),
    (lambda data, model: b"", "no graph)"),
], ids=["random-bytes", "half", "cut-before-opset_import", "cut-before-graph", "empty"])
def test_invalid_file_is_a_user_error(exported, manifest, tmp_path, content, reason):
    data = exported.read_bytes()
    path = tmp_path / "bad.onnx"
    path.write_bytes(content(data, _proto(exported)))
    with pytest.raises(UserError) as error:
        check_onnx(path, manifest)
    message = str(error.value)
    assert message.startswith(f"{path}: {INVALID}") and reason in message, message
    assert "\n" not in message


def test_checker_rules_apply(manifest, tmp_path):
    """A node reading a value nothing defines parses, but onnx.checker rejects it."""
    path = _save(_small([helper.make_node("Add", ["X", "nowhere"], ["Z"])], inputs=("X",)), tmp_path / "m.onnx")
    with pytest.raises(UserError, match=r"m\.onnx: not a valid ONNX model \(.*nowhere"):
        check_onnx(path, manifest)


def test_missing_file(manifest, tmp_path):
    with pytest.raises(UserError, match="no such file"):
        check_onnx(tmp_path / "absent.onnx", manifest)


def check_ops(*args):
    return run_cli(*args, script="check_ops")


def test_cli_clean_export_exits_0(exported):
    result = check_ops("--model", exported)
    assert result.code == 0, (result.stdout, result.stderr)


def test_cli_contrib_op_exits_1(contrib):
    result = check_ops("--model", contrib)
    assert result.code == 1, (result.stdout, result.stderr)
    assert "unsupported op: com.microsoft::FusedMatMul" in result.stdout.splitlines()


def test_cli_truncated_file_is_a_one_line_error(exported, tmp_path):
    path = tmp_path / "cut.onnx"
    path.write_bytes(exported.read_bytes()[:exported.stat().st_size // 2])
    assert_one_line_error(check_ops("--model", path), f"{path}: {INVALID}")
