"""check_ops reports: SARIF valid against the official 2.1.0 schema, JUnit XML that parses, markdown
tables, and the --allow baseline."""

from __future__ import annotations

import json
import os
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import torch
from conftest import assert_one_line_error, run_cli
from test_opcheck_classify import Fallbacks

from opcheck.classify import Classifier
from opcheck.manifests import load_manifest, shipped_path
from opcheck.report import render
from opcheck.trace import findings, ops_in

SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sarif" / "sarif-schema-2.1.0.json"
TARGET = {"soc": "ascend910b", "dtype": "float32", "torch_npu": "2.14.0"}


@pytest.fixture(scope="module")
def report_inputs():
    program = torch.export.export(Fallbacks().eval(), (torch.rand(2, 8),), strict=False)
    uses = ops_in(program)
    classifier = Classifier(load_manifest(shipped_path("torch_npu-2.14.0.json"), "torch_npu"))
    return uses, findings(uses, classifier, ("float16", "bfloat16", "float32"))


@pytest.mark.skipif(not SCHEMA.is_file() and os.environ.get("CI") != "true", reason="../shared/data not beside")
def test_sarif_validates_against_the_official_schema(report_inputs):
    import jsonschema

    uses, found = report_inputs
    sarif = json.loads(render("sarif", "model", TARGET, uses, found))
    jsonschema.Draft4Validator(json.loads(SCHEMA.read_text())).validate(sarif)
    results = sarif["runs"][0]["results"]
    assert {r["properties"]["op"] for r in results} == {"aten::lgamma", "aten::logcumsumexp"}
    region = results[0]["locations"][0]["physicalLocation"]
    assert region["artifactLocation"]["uri"] == str(Path(__file__).parent / "test_opcheck_classify.py")
    assert region["region"]["startLine"] > 0


def test_junit_parses_with_one_case_per_op(report_inputs):
    uses, found = report_inputs
    root = ET.fromstring(render("junit", "model", TARGET, uses, found))
    suite = root.find("testsuite")
    assert int(suite.get("tests")) == len(uses) and int(suite.get("failures")) == 2
    failed = {c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None}
    assert failed == {"aten::lgamma", "aten::logcumsumexp"}


def test_markdown_is_a_table(report_inputs):
    uses, found = report_inputs
    lines = render("markdown", "model", TARGET, uses, found).splitlines()
    header = lines.index("| op | kind | count | dtypes | where | what to do |")
    assert lines[header + 1] == "|---|---|---:|---|---|---|"
    rows = lines[header + 2:]
    assert [r.split("|")[1].strip() for r in rows] == ["`aten::lgamma`", "`aten::logcumsumexp`"]
    assert all(r.count("|") == 7 for r in rows)


def test_allow_baseline_turns_exit_1_into_0(tmp_path, checkpoint):
    model = checkpoint("llama")
    report = tmp_path / "r.json"
    first = run_cli("check-ops", "--model", model, "--soc", "ascend310p", "--format", "json", "--output", report)
    assert first.code == 1
    ops = sorted({f["op"] for f in json.loads(report.read_text())["findings"]})
    allow = tmp_path / "allow.yaml"
    allow.write_text("allow:\n" + "".join(f"  - op: {op}\n    kind: unsupported\n    reason: converted to fp16 first\n"
                                          for op in ops))
    summary = tmp_path / "summary.md"
    second = run_cli("check-ops", "--model", model, "--soc", "ascend310p", "--allow", allow, "--format", "json",
                     "--summary-file", summary)
    assert second.code == 0, second.stderr
    data = json.loads(second.stdout)
    assert data["clean"] and sorted(a["op"] for a in data["target"]["allowed"]) == ops
    assert "**0 finding(s)**" in summary.read_text()


@pytest.mark.parametrize("content,message", [
    ("allow:\n  - op: aten::lgamma\n", "allow entry 1: missing 'reason'"),
    ("allow:\n  - op: aten::lgamma\n    reason: ok\n    until: 2027\n", "allow entry 1: unknown key(s) until"),
    ("- aten::lgamma\n", "expected a mapping with an 'allow' list"),
])
def test_bad_allow_file(tmp_path, checkpoint, content, message):
    allow = tmp_path / "allow.yaml"
    allow.write_text(content)
    assert_one_line_error(run_cli("check-ops", "--model", checkpoint("llama"), "--allow", allow), f"{allow}: {message}")
