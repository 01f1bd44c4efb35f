"""The shipped gate examples: every policy in examples/policies loads (910A and 310P are the same fp16
policy apart from the chip, 910B is bf16), the GitHub Actions workflow's matrix is exactly those
policies, and its "Gate" step — run as the runner would, with bash — passes SmolLM2-135M converted
for the 910B, and the fp16 ascend310p policy passes it converted for the 310P (both verified against
the GGUF they came from)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from safetensors import safe_open

from ascendkit.gate_policy import load_policy

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
POLICIES = sorted((EXAMPLES / "policies").glob("*.toml"))
WORKFLOW = EXAMPLES / "github-actions" / "ascend-gate.yml"
REPORTS = ("gate.json", "gate.junit.xml", "gate.sarif", "gate.md")


def test_every_example_policy_loads():
    assert [p.stem for p in POLICIES] == ["ascend310p", "ascend910a", "ascend910b"]
    policies = {p.stem: load_policy(p) for p in POLICIES}
    for soc, policy in policies.items():
        assert policy.target.soc == soc
        assert (policy.target.quantize, policy.target.torch_npu) == ("none", "2.14.0")
        assert policy.ops.model and policy.ops.runtime and policy.ops.manifest is None
        assert len(policy.smoke.prompts) == 4 and all(p.expect for p in policy.smoke.prompts)
        assert policy.sweep is None
    assert policies["ascend910b"].target.dtype == "bfloat16"
    assert policies["ascend910a"].target.dtype == policies["ascend310p"].target.dtype == "float16"


def test_910a_and_310p_differ_only_in_the_chip():
    a = load_policy(EXAMPLES / "policies" / "ascend910a.toml").model_dump()
    p = load_policy(EXAMPLES / "policies" / "ascend310p.toml").model_dump()
    assert (a["target"].pop("soc"), p["target"].pop("soc")) == ("ascend910a", "ascend310p")
    assert a == p


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


def gate_step(soc: str) -> str:
    """The "Gate" step's script with the matrix value in place, as the runner would run it."""
    steps = workflow()["jobs"]["gate"]["steps"]
    [step] = [s for s in steps if s.get("name") == "Gate"]
    script = step["run"].replace("${{ matrix.soc }}", soc)
    assert "${{" not in script, script
    return script


def test_workflow_matrix_is_exactly_the_example_policies():
    job = workflow()["jobs"]["gate"]
    socs = job["strategy"]["matrix"]["soc"]
    assert sorted(socs) == [p.stem for p in POLICIES] and len(set(socs)) == len(socs)
    assert job["strategy"]["fail-fast"] is False
    names = [s.get("name") for s in job["steps"]]
    assert names.index("Install ascend-deploy-kit (CPU torch)") < names.index("Gate")
    assert 'examples/policies/ascend310p.toml' in gate_step("ascend310p")
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("github/codeql-action/upload-sarif"))
    assert upload["with"]["sarif_file"] == "reports/${{ matrix.soc }}/gate.sarif"


def run_workflow_gate(soc: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    script = cwd / "gate-step.sh"
    script.write_text(gate_step(soc), encoding="utf-8")
    # GitHub's default shell for `run:` on Linux
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=cwd,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=600, check=False)


def assert_verified_against(data: dict, gguf: Path, soc: str, dtype: str) -> None:
    """The gate's convert stage verified the directory (made for `soc` in `dtype`) instead of converting:
    every file against the manifest, and each of SmolLM2's 272 tensors against its cast from the GGUF."""
    convert = data["stages"]["convert"]
    assert (convert["action"], convert["source"]) == ("verified", str(gguf.resolve()))
    assert (convert["target"]["soc"], convert["target"]["dtype"]) == (soc, dtype)
    assert convert["verify"]["ok"] and convert["verify"]["source_tensors"] == 272


@pytest.mark.slow
def test_workflow_gate_step_passes_smollm2_on_ascend910b(tmp_path, smollm2_bf16, smollm2_gguf):
    """MODEL is SmolLM2 already converted for the 910B (the session's bf16 directory): the gate verifies
    it against its manifest and the GGUF instead of converting it again."""
    (tmp_path / "examples").symlink_to(EXAMPLES, target_is_directory=True)
    summary = tmp_path / "step-summary.md"
    result = run_workflow_gate("ascend910b", tmp_path, {"MODEL": str(smollm2_bf16), "GITHUB_STEP_SUMMARY": str(summary)})
    assert result.returncode == 0, (result.stdout, result.stderr)
    report_dir = tmp_path / "reports" / "ascend910b"
    assert all((report_dir / name).is_file() for name in REPORTS)
    data = json.loads((report_dir / "gate.json").read_text())
    assert (data["verdict"], data["exit_code"], data["failed"], data["error"]) == ("PASS", 0, [], None)
    assert data["model"] == data["converted"] == str(smollm2_bf16)
    assert data["policy"] == "examples/policies/ascend910b.toml"
    assert_verified_against(data, smollm2_gguf, "ascend910b", "bfloat16")
    assert not (report_dir / "converted").exists()
    assert {r["status"] for r in data["rules"]} == {"pass"}
    ids = [r["id"] for r in data["rules"]]
    assert ids[:8] == ["doctor", "target.torch_npu", "target.soc", "target.dtype", "target.quantize", "convert.verify",
                       "ops.model", "ops.runtime"]
    assert ids[8:12] == [f"smoke.prompts[{i}]" for i in range(1, 5)]
    # what the later steps upload: the SARIF, with the policy as a repository-relative path
    sarif = json.loads((report_dir / "gate.sarif").read_text())
    assert {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in sarif["runs"][0]["results"]} == {
        "examples/policies/ascend910b.toml"}
    md = (report_dir / "gate.md").read_text(encoding="utf-8")
    assert md.startswith("## ascendkit gate: ✅ PASS\n") and summary.read_text(encoding="utf-8") == md


@pytest.mark.slow
def test_ascend310p_policy_passes_smollm2_in_float16(tmp_path, smollm2_fp16, smollm2_gguf):
    """The fp16 policy on SmolLM2 converted for the 310P: verified against the GGUF, its prompts
    answered as the policy expects with fp16 weights (served in fp32 on a CPU)."""
    policy_path = EXAMPLES / "policies" / "ascend310p.toml"
    report_dir = tmp_path / "reports"
    result = run_cli("gate", smollm2_fp16, "--policy", policy_path, "--report-dir", report_dir, timeout=900,
                     env={"GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")})
    assert result.code == 0, (result.stdout, result.stderr)
    data = json.loads((report_dir / "gate.json").read_text())
    assert (data["verdict"], data["failed"]) == ("PASS", [])
    assert data["converted"] == str(smollm2_fp16)
    assert_verified_against(data, smollm2_gguf, "ascend310p", "float16")
    with safe_open(smollm2_fp16 / "model.safetensors", "pt") as f:
        names = f.keys()
        assert {f.get_slice(name).get_dtype() for name in names} == {"F16"}
    assert data["stages"]["smoke"]["dtype"] == "float32"  # the runtime serves fp16 weights in fp32 on a CPU
    policy = load_policy(policy_path)
    results = data["stages"]["smoke"]["results"]
    assert [r["prompt"] for r in results] == [p.prompt for p in policy.smoke.prompts]
    for prompt, answer in zip(policy.smoke.prompts, results):
        text = answer["text"].lower() if prompt.ignore_case else answer["text"]
        for expected in prompt.expect:
            assert (expected.lower() if prompt.ignore_case else expected) in text, (prompt.prompt, answer["text"])
    status = {r["id"]: r["status"] for r in data["rules"]}
    assert all(status[f"smoke.prompts[{i}]"] == "pass" for i in range(1, len(policy.smoke.prompts) + 1))
