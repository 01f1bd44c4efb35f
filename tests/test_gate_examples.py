"""The shipped gate examples: every policy in examples/policies loads (the model examples, moe/ and
deepseek-v3.toml, are run on fixtures in test_gate_moe.py and test_gate_deepseek.py), the three SoC
policies are one policy apart from their [target] (910B bf16, 910A and 310P fp16), the GitHub Actions workflow's matrix is exactly
those policies, and its "Gate" step — run as the runner would, with bash — passes SmolLM2-135M
converted for the 310P (verified against the GGUF it came from)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from ascendkit.gate_policy import load_policy

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SOCS = ("ascend310p", "ascend910a", "ascend910b")
#: the SoC examples for SmolLM2, the workflow's matrix; the model examples sit beside them
POLICIES = sorted(p for p in (EXAMPLES / "policies").glob("*.toml") if p.stem in SOCS)
WORKFLOW = EXAMPLES / "github-actions" / "ascend-gate.yml"
REPORTS = ("gate.json", "gate.junit.xml", "gate.sarif", "gate.md")


def test_every_example_policy_loads():
    examples = sorted(p.relative_to(EXAMPLES / "policies").as_posix() for p in (EXAMPLES / "policies").rglob("*.toml"))
    assert examples == ["ascend310p.toml", "ascend910a.toml", "ascend910b.toml", "deepseek-v3.toml",
                        "deployment.toml", "moe/qwen3-30b-a3b-910b-w8a8.toml"]
    assert all(load_policy(EXAMPLES / "policies" / p) for p in examples)
    assert [p.stem for p in POLICIES] == list(SOCS)
    policies = {p.stem: load_policy(p) for p in POLICIES}
    for soc, policy in policies.items():
        assert policy.target.soc == soc
        assert (policy.target.quantize, policy.target.torch_npu) == ("none", "2.14.0")
        assert policy.ops.model and policy.ops.runtime and policy.ops.manifest is None
        assert len(policy.smoke.prompts) == 4 and all(p.expect for p in policy.smoke.prompts)
        assert policy.sweep is None


def test_the_policies_differ_only_in_their_target():
    """So the one end-to-end run below (the 310P's) exercises every rule of all three; the 910B's bf16
    target is what `ascendkit demo` converts, checks and serves (tests/test_demo.py)."""
    dumps = {p.stem: load_policy(p).model_dump() for p in POLICIES}
    targets = {soc: (d["target"].pop("soc"), d["target"].pop("dtype")) for soc, d in dumps.items()}
    assert targets == {"ascend310p": ("ascend310p", "float16"), "ascend910a": ("ascend910a", "float16"),
                       "ascend910b": ("ascend910b", "bfloat16")}
    allowed = {soc: [(a["rule"], a["subject"]) for a in d["preflight"].pop("allow")] for soc, d in dumps.items()}
    # vllm-ascend does not run on 910A: that policy accepts the one deployment finding it must, and no other
    assert allowed == {"ascend310p": [], "ascend910a": [("model.soc", "*")], "ascend910b": []}
    assert dumps["ascend310p"] == dumps["ascend910a"] == dumps["ascend910b"]


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


@pytest.mark.slow
def test_workflow_gate_step_passes_smollm2_on_ascend310p(tmp_path, smollm2_fp16, smollm2_gguf):
    """The "Gate" step for the ascend310p matrix entry, with MODEL set to SmolLM2 already converted for
    the 310P (the session's fp16 directory): the gate verifies it against its manifest and the GGUF
    instead of converting it again, serves the fp16 weights (in fp32 on a CPU) and passes every rule."""
    (tmp_path / "examples").symlink_to(EXAMPLES, target_is_directory=True)
    summary = tmp_path / "step-summary.md"
    result = run_workflow_gate("ascend310p", tmp_path,
                               {"MODEL": str(smollm2_fp16), "GITHUB_STEP_SUMMARY": str(summary)})
    assert result.returncode == 0, (result.stdout, result.stderr)
    report_dir = tmp_path / "reports" / "ascend310p"
    assert all((report_dir / name).is_file() for name in REPORTS)
    assert not (report_dir / "converted").exists()
    data = json.loads((report_dir / "gate.json").read_text())
    assert (data["verdict"], data["exit_code"], data["failed"], data["error"]) == ("PASS", 0, [], None)
    assert data["model"] == data["converted"] == str(smollm2_fp16)
    assert data["policy"] == "examples/policies/ascend310p.toml"
    convert = data["stages"]["convert"]
    assert (convert["action"], convert["source"]) == ("verified", str(smollm2_gguf.resolve()))
    assert (convert["target"]["soc"], convert["target"]["dtype"]) == ("ascend310p", "float16")
    assert convert["verify"]["ok"] and convert["verify"]["source_tensors"] == 272  # every tensor = the GGUF's cast
    with safe_open(smollm2_fp16 / "model.safetensors", "pt") as f:
        names = f.keys()
        assert {f.get_slice(name).get_dtype() for name in names} == {"F16"}
    assert {r["status"] for r in data["rules"]} == {"pass"}
    ids = [r["id"] for r in data["rules"]]
    # SmolLM2 is a Llama: vllm-ascend's matrix lists Llama for A2/A3, not for the 300I Duo (a warning, not a failure)
    assert ids[:10] == ["doctor", "target.torch_npu", "target.soc", "target.dtype", "target.quantize", "convert.verify",
                        "preflight", "preflight.model.support", "ops.model", "ops.runtime"]
    messages = {r["id"]: r["message"] for r in data["rules"]}
    assert messages["preflight.model.support"] == (
        "warning: model_type llama: Llama2/3/3.1/3.2 is listed for ascend910b, not for ascend310p (the loader: load "
        "untested; docs/source/user_guide/support_matrix/supported_models.md)")
    policy = load_policy(EXAMPLES / "policies" / "ascend310p.toml")
    ids = ids[:6] + ids[8:]
    assert ids[8:12] == [f"smoke.prompts[{i}]" for i in range(1, len(policy.smoke.prompts) + 1)]
    smoke = data["stages"]["smoke"]
    assert smoke["dtype"] == "float32"  # the runtime serves fp16 weights in fp32 on a CPU
    assert [r["prompt"] for r in smoke["results"]] == [p.prompt for p in policy.smoke.prompts]
    for prompt, answer in zip(policy.smoke.prompts, smoke["results"]):
        text = answer["text"].lower() if prompt.ignore_case else answer["text"]
        assert all((e.lower() if prompt.ignore_case else e) in text for e in prompt.expect), answer["text"]
    # what the later steps upload: the SARIF, with the policy as a repository-relative path
    sarif = json.loads((report_dir / "gate.sarif").read_text())
    assert {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in sarif["runs"][0]["results"]} == {
        "examples/policies/ascend310p.toml"}
    md = (report_dir / "gate.md").read_text(encoding="utf-8")
    assert md.startswith("## ascendkit gate: ✅ PASS\n") and summary.read_text(encoding="utf-8") == md
