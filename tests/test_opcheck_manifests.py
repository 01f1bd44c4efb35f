"""Operator manifests: generated from the real sources, shipped, and equal to a fresh generation."""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli

from ascend_common.errors import UserError
from opcheck.manifests import (
    CODEGEN_IN_WHEEL,
    SHIPPED,
    _versions_in,
    build_from_codegen,
    build_from_op_plugin,
    build_onnx,
    load_manifest,
    shipped_path,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CODEGEN = DATA / "torch_npu-2.14.0" / "npu_native_functions_by_codegen.yaml"
OP_PLUGIN = DATA / "op-plugin" / "op_plugin_functions.yaml"
ONNX_YAML = DATA / "msit" / "onnx.yaml"
# CI always has shared/ beside the clone: there a missing data folder is a failure, not a skip.
needs_data = pytest.mark.skipif(not DATA.is_dir() and os.environ.get("CI") != "true",
                                reason="../shared/data is not beside this checkout")
VERSIONS = ["v2.1", "v2.2", "v2.3", "v2.14", "v2.15"]


@needs_data
@pytest.mark.parametrize("name,build", [
    ("torch_npu-2.14.0.json", lambda: build_from_codegen(CODEGEN, "2.14.0")),
    ("torch_npu-2.1.0.json", lambda: build_from_op_plugin(OP_PLUGIN, "2.1.0")),
    ("atc-onnx.json", lambda: build_onnx(ONNX_YAML)),
])
def test_shipped_manifests_equal_a_fresh_generation(name, build):
    assert json.loads(shipped_path(name).read_text()) == build()


def test_shipped_2_14_manifest_holds_the_known_facts():
    aten = set(load_manifest(shipped_path(SHIPPED["2.14.0"]), "torch_npu")["aten"])
    without = ["lgamma", "digamma", "polygamma", "i0", "special_i0e", "igamma", "hypot", "hypot.out", "nextafter.out",
               "logcumsumexp", "_logcumsumexp", "cummax", "mode", "index_reduce", "segment_reduce",
               "_weight_int8pack_mm", "_int_mm", "_fused_rms_norm", "_scaled_dot_product_flash_attention_for_cpu"]
    present = ["gelu.out", "argmax.out", "erfinv", "_embedding_bag", "isin.Tensor_Tensor", "_unique2",
               "scaled_dot_product_attention", "_cummax_helper", "mm", "embedding", "rsqrt"]
    assert [op for op in without if op in aten] == []
    assert [op for op in present if op not in aten] == []


def test_shipped_onnx_manifest_counts_and_skips():
    onnx = load_manifest(shipped_path(SHIPPED["onnx"]), "atc_onnx")
    assert onnx["counts"]["entries"] + onnx["counts"]["malformed_skipped"] == 2221
    assert onnx["counts"]["malformed_skipped"] == len(onnx["malformed_skipped"]) == 4
    assert onnx["ops"]["ai.onnx"]["ArgMax"]["11"] == "PartitionedCall"
    assert "com.microsoft" not in onnx["ops"]


@pytest.mark.parametrize("spec,expected", [
    ("all_version", VERSIONS),
    ("v2.2", ["v2.2"]),
    ("v2.1, v2.3", ["v2.1", "v2.3"]),
    (["v2.2", "newest"], ["v2.2", "v2.3", "v2.14", "v2.15"]),
    ([" v2.1", "v2.3 "], ["v2.1", "v2.2", "v2.3"]),
    (["v2.1", "v2.3", "v2.15"], ["v2.1", "v2.3", "v2.15"]),
    (None, []),
])
def test_op_plugin_version_specs(spec, expected):
    assert _versions_in(spec, VERSIONS, "x") == set(expected)


def test_op_plugin_unknown_version_is_an_error():
    with pytest.raises(UserError, match=r"x: unknown torch_npu version\(s\) \['v3.0'\]"):
        _versions_in(["v2.1", "v3.0"], VERSIONS, "x")


def test_op_plugin_per_version(tmp_path):
    yaml_text = """all_version: [v2.1, v2.2, v2.3]
official:
  - func: old_op(Tensor self) -> Tensor
    acl_op: [v2.1, v2.2]
  - func: new_op.out(Tensor self, *, Tensor(a!) out) -> Tensor(a!)
    op_api: [v2.3, newest]
  - func: everywhere(Tensor self) -> Tensor
    acl_op: all_version
  - func: no_kernel(Tensor self) -> Tensor
custom:
  - func: npu_thing(Tensor self) -> Tensor
    op_api: v2.2, v2.3
"""
    path = tmp_path / "op_plugin_functions.yaml"
    path.write_text(yaml_text)
    assert build_from_op_plugin(path, "2.1.0")["aten"] == ["everywhere", "old_op"]
    m = build_from_op_plugin(path, "2.3.1")
    assert (m["aten"], m["npu_custom"]) == (["everywhere", "new_op.out"], ["npu_thing"])
    with pytest.raises(UserError, match=r"--torch-npu 2.9.0: op-plugin knows v2.1, v2.2, v2.3"):
        build_from_op_plugin(path, "2.9.0")


@needs_data
def test_codegen_from_a_wheel_equals_the_file(tmp_path):
    wheel = tmp_path / "torch_npu-2.14.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(CODEGEN_IN_WHEEL, CODEGEN.read_bytes())
    a, b = build_from_codegen(wheel, "2.14.0"), build_from_codegen(CODEGEN, "2.14.0")
    assert a["aten"] == b["aten"] and a["provenance"][0]["sha256"] == b["provenance"][0]["sha256"]
    assert a["provenance"][0]["file"].endswith("!" + CODEGEN_IN_WHEEL)


@needs_data
def test_cli_builds_a_manifest(tmp_path):
    out = tmp_path / "m.json"
    result = run_cli("manifest", "build", "--onnx", ONNX_YAML, "--out", out)
    assert result.code == 0, result.stderr
    assert "malformed skipped 4" in result.stdout
    assert json.loads(out.read_text()) == build_onnx(ONNX_YAML)


def test_cli_needs_exactly_one_source(tmp_path):
    assert_one_line_error(run_cli("manifest", "build", "--out", tmp_path / "m.json"), "give exactly one source")


def test_not_a_codegen_yaml(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("just: a mapping\n")
    assert_one_line_error(run_cli("manifest", "build", "--codegen", path, "--out", tmp_path / "m.json"),
                          f"{path.name}: not torch_npu's npu_native_functions_by_codegen.yaml")


@pytest.mark.parametrize("content,message", [
    ("{not json", "invalid manifest (not JSON"),
    ('{"format": "other"}', "invalid manifest (field 'format'"),
    ('{"format": "ascend-deploy-kit/op-manifest", "format_version": 1, "kind": "torch_npu"}',
     "invalid manifest (missing field 'aten')"),
])
def test_invalid_manifest(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match="^" + re.escape(f"{path}: {message}")):
        load_manifest(path, "torch_npu")
