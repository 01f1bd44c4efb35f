"""check_ops as users run it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import assert_one_line_error, run_cli


def check_ops(*args, **kw):
    return run_cli(*args, script="check_ops", **kw)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_fp16_fixture_for_910b_is_clean(checkpoint, family):
    """Prefill and decode (with a KV cache) of the transformers models: no fallback, views are not findings."""
    result = check_ops("--model", checkpoint(family), "--dtype", "float16")
    assert result.code == 0, result.stderr
    assert "no findings: every op reaches an NPU kernel" in result.stdout
    assert result.stderr == ""  # the profiler's backend chatter stays hidden


def test_bf16_for_310p_has_dtype_findings_and_exits_1(checkpoint, tmp_path):
    out = tmp_path / "report.json"
    result = run_cli("check-ops", "--model", checkpoint("llama"), "--soc", "ascend310p", "--format", "json",
                     "--output", out)
    assert result.code == 1, result.stderr
    report = json.loads(out.read_text())
    assert report["target"]["dtype"] == "bfloat16" and not report["clean"]  # auto: the config's dtype
    assert {f["kind"] for f in report["findings"]} == {"unsupported"}
    assert "aten::linear" in {f["op"] for f in report["findings"]}
    table = check_ops("--model", checkpoint("llama"), "--soc", "ascend310p")
    assert table.code == 1 and "unsupported op: aten::linear" in table.stdout.splitlines()


def test_python_dash_m(checkpoint):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "opcheck", "--model", str(checkpoint("qwen2")), "--dtype", "float16",
                           "--format", "json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["clean"] is True


def test_missing_config(tmp_path):
    (tmp_path / "m").mkdir()
    assert_one_line_error(check_ops("--model", tmp_path / "m"), f"{tmp_path / 'm' / 'config.json'}: missing")


def test_unknown_model_type(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    assert_one_line_error(check_ops("--model", model), f"{model / 'config.json'}: transformers cannot read this config")


def test_config_transformers_cannot_build(tmp_path, checkpoint):
    model = tmp_path / "m"
    shutil.copytree(checkpoint("llama"), model)
    config = json.loads((model / "config.json").read_text())
    config["num_attention_heads"] = 0
    (model / "config.json").write_text(json.dumps(config))
    result = check_ops("--model", model)
    assert result.code == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {model / 'config.json'}") and len(result.stderr.strip().splitlines()) == 1


def test_invalid_manifest(tmp_path, checkpoint):
    bad = tmp_path / "manifest.json"
    bad.write_text('{"format": "nope"}')
    assert_one_line_error(check_ops("--model", checkpoint("llama"), "--manifest", bad),
                          f"{bad}: invalid manifest (field 'format'")


def test_unknown_torch_npu_version(checkpoint):
    assert_one_line_error(check_ops("--model", checkpoint("llama"), "--torch-npu", "2.9.0"),
                          "--torch-npu 2.9.0: no shipped manifest (shipped: 2.14.0, 2.1.0)")
