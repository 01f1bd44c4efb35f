"""`ascendkit gate` on a fixture checkpoint: two real runs (shared by the tests of this module, since
each costs seconds) that fail exactly the rules chosen for them, with every report checked — gate.json,
JUnit, SARIF (against the official schema, pointing at the policy's line), markdown, the step summary
and the sweep plot — an ERROR run on an existing output directory, and the policy's one-line errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import textwrap
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import torch
from conftest import assert_one_line_error, run_cli

SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sarif" / "sarif-schema-2.1.0.json"
REPORTS = ("gate.json", "gate.junit.xml", "gate.sarif", "gate.md")
PROMPT = "Hello [/INST] [b]world"  # brackets: text, never markup, in the terminal table
MAX_TOKENS = 8

FIRST_RULES = ["doctor", "target.torch_npu", "target.soc", "target.dtype", "target.quantize", "convert.verify",
               "preflight", "ops.model", "ops.runtime", "smoke.prompts[1]", "smoke.same_weights", "smoke.min_greedy_agreement",
               "smoke.load", "smoke.sessions", "performance.min_throughput_tok_s", "performance.max_memory_gb"]
SECOND_RULES = ["doctor", "target.torch_npu", "target.soc", "target.dtype", "target.quantize", "convert.verify",
                "preflight", "preflight.model.tensor_dtype", "smoke.same_weights", "smoke.load", "smoke.sessions"]


def greedy_answer(model: Path, prompt: str, max_tokens: int) -> str:
    """transformers' own greedy answer to a plain prompt on the fixture's (bf16) weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.evaluation.greedy_check import hf_greedy

    tokenizer = AutoTokenizer.from_pretrained(model)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).eval()
    tokens, _ = hf_greedy(hf, tokenizer.encode(prompt), max_tokens)
    return tokenizer.decode(tokens, skip_special_tokens=True)


def line_of(text: str, start: str) -> int:
    """The 1-based line of the policy text that starts with `start`."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if line.startswith(start))


def gate(model: Path, policy: Path, report_dir: Path, *extra: str | Path, summary: Path):
    return run_cli("gate", model, "--policy", policy, "--report-dir", report_dir, *extra,
                   env={"GITHUB_STEP_SUMMARY": str(summary)}, timeout=600)


def reports(report_dir: Path) -> dict:
    return {"json": json.loads((report_dir / "gate.json").read_text()),
            "junit": ET.parse(report_dir / "gate.junit.xml").getroot(),
            "sarif": json.loads((report_dir / "gate.sarif").read_text()),
            "md": (report_dir / "gate.md").read_text(encoding="utf-8")}


# -- run 1: convert the fixture, fail exactly one impossible ceiling -------------------------------------
@pytest.fixture(scope="module")
def first(tmp_path_factory, checkpoint):
    """One run that passes every rule but `performance.max_memory_gb = 0.001`; its output directory
    exists (a stale file in it) and --force replaces it."""
    model = checkpoint("llama")
    answer = greedy_answer(model, PROMPT, MAX_TOKENS)
    assert answer.strip(), "the fixture answers nothing: pick another prompt"
    root = tmp_path_factory.mktemp("gate-first")
    policy_text = textwrap.dedent(f"""\
        [target]
        soc = "ascend910b"
        dtype = "bfloat16"

        [smoke]
        max_tokens = {MAX_TOKENS}
        min_greedy_agreement = 0.9

        [[smoke.prompts]]
        prompt = "{PROMPT}"
        expect = [{json.dumps(answer)}]

        [smoke.load]
        requests = 4
        concurrency = 2
        prompt_len = 8
        tokens = 4

        [performance]
        min_throughput_tok_s = 0.01
        max_memory_gb = 0.001

        [runtime]
        device = "cpu"
        kv_cache_memory = "64MiB"

        [sweep]
        sizes = [2, 1]
        prompt_len = 8
        new_tokens = 4
        """)
    policy = root / "ascend-gate.toml"
    policy.write_text(policy_text, encoding="utf-8")
    output = root / "out"
    output.mkdir()
    (output / "stale.txt").write_text("from an earlier run\n")
    summary = root / "step-summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")
    report_dir = root / "reports"
    result = gate(model, policy, report_dir, "--output", output, "--force", summary=summary)
    return {"result": result, "model": model, "policy": policy, "policy_text": policy_text, "answer": answer,
            "output": output, "summary": summary, "report_dir": report_dir}


def test_first_run_fails_exactly_the_impossible_ceiling(first):
    result, report_dir = first["result"], first["report_dir"]
    assert result.code == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    stages = ["doctor", "convert", "preflight", "check_ops model", "check_ops runtime", "smoke", "sweep"]
    progress = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert progress == [f"[{i}/7] {name}" for i, name in enumerate(stages, 1)]
    fails = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("FAIL")]
    assert len(fails) == 1 and re.fullmatch(r"FAIL performance\.max_memory_gb: memory \d+\.\d\d GB, ceiling 0\.001",
                                            fails[0]), result.stderr
    assert "FAIL: 1 rule(s) failed: performance.max_memory_gb" in result.stdout
    row = rf"│ smoke\.prompts\[1\] +│ pass +│ {re.escape(repr(PROMPT))} → "
    assert re.search(row, result.stdout), result.stdout
    assert result.stdout.rstrip().splitlines()[-1] == "reports: " + ", ".join(
        [str(report_dir / name) for name in REPORTS] + [str(report_dir / "sweep.png")])


def test_first_run_gate_json(first):
    data = reports(first["report_dir"])["json"]
    model, output = first["model"], first["output"]
    assert (data["verdict"], data["exit_code"], data["error"]) == ("FAIL", 1, None)
    assert data["failed"] == ["performance.max_memory_gb"]
    assert [r["id"] for r in data["rules"]] == FIRST_RULES
    status = {r["id"]: r["status"] for r in data["rules"]}
    assert status == {rule: "fail" if rule == "performance.max_memory_gb" else "pass" for rule in FIRST_RULES}
    assert (data["model"], data["policy"], data["converted"]) == (str(model), str(first["policy"]), str(output))
    assert data["target"] == {"soc": "ascend910b", "dtype": "bfloat16", "quantize": "none", "torch_npu": "2.14.0",
                              "tp": 1, "ep": 1}
    assert data["plot"] == str(first["report_dir"] / "sweep.png")
    assert list(data["seconds"]) == ["doctor", "convert", "preflight", "check_ops model", "check_ops runtime", "smoke",
                                     "sweep"]
    messages = {r["id"]: r["message"] for r in data["rules"]}
    keys = {r["id"]: r["key"] for r in data["rules"]}
    assert messages["target.soc"] == "converted for ascend910b, the policy targets ascend910b"
    assert messages["target.dtype"] == "weights in bfloat16, the policy wants bfloat16"
    assert messages["target.quantize"] == "quantization none, the policy wants none"
    convert = data["stages"]["convert"]
    assert convert["action"] == "converted" and convert["output"] == str(output) and convert["source"] == str(model)
    assert convert["verify"]["ok"] and convert["verify"]["failures"] == []
    tensors = convert["verify"]["tensors"]
    assert tensors > 0 and convert["verify"]["source_tensors"] == tensors
    assert messages["convert.verify"] == (f"{convert['verify']['files']} files and {tensors} tensors match the "
                                          f"manifest's sha256; {tensors} tensors equal the checked conversion of {model}")
    for which in ("model", "runtime"):
        assert messages[f"ops.{which}"].endswith("calls against torch_npu 2.14.0 on ascend910b"), messages
        assert keys[f"ops.{which}"] == f"ops.{which}"
    assert set(data["check_ops"]) == {"model", "runtime"}
    answer = " ".join(first["answer"].split())
    assert messages["smoke.prompts[1]"] == f"{PROMPT!r} → {answer!r}"
    assert messages["smoke.same_weights"] == "1/1 prompts give transformers' greedy tokens on the same weights"
    assert messages["smoke.min_greedy_agreement"] == ("100.0% of the greedy tokens of transformers on the converted "
                                                      "weights reproduced (minimum 90%)")
    assert messages["smoke.load"] == "4/4 load requests answered"
    smoke = data["stages"]["smoke"]
    assert (smoke["device"], smoke["dtype"], smoke["prompts"], smoke["prompts_agreeing"]) == ("cpu", "bfloat16", 1, 1)
    assert smoke["results"][0]["text"] == first["answer"]
    load = smoke["load"]
    assert (load["requests"], load["concurrency"], load["prompt_len"], load["tokens_per_request"]) == (4, 2, 8, 4)
    assert messages["performance.min_throughput_tok_s"] == (f"throughput {load['output_throughput_tok_s']:.1f} tok/s, "
                                                            f"floor 0.01")
    assert messages["performance.max_memory_gb"] == f"memory {load['memory_gb']:.2f} GB, ceiling 0.001"
    assert keys["performance.max_memory_gb"] == "performance.max_memory_gb"
    sweep = data["stages"]["sweep"]
    assert [row["batch"] for row in sweep["sizes"]] == [1, 2]  # the policy's [2, 1], sorted
    assert (sweep["prompt_len"], sweep["new_tokens"]) == (8, 4)


def test_first_run_replaced_the_existing_output_with_force(first):
    output = first["output"]
    assert not (output / "stale.txt").exists()
    manifest = json.loads((output / "ascend_manifest.json").read_text())
    assert manifest["target"]["soc"] == "ascend910b" and manifest["target"]["dtype"] == "bfloat16"
    assert not (first["report_dir"] / "converted").exists()  # --output, not the default


def test_first_run_junit_has_one_case_per_rule(first):
    suite = reports(first["report_dir"])["junit"].find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("16", "1", "0", "0")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == FIRST_RULES
    assert [c.get("classname") for c in cases][:3] == ["gate.doctor", "gate.target", "gate.target"]
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["performance.max_memory_gb"]
    failure = failed[0].find("failure")
    messages = {r["id"]: r["message"] for r in reports(first["report_dir"])["json"]["rules"]}
    assert failure.get("message") == failure.text == messages["performance.max_memory_gb"]
    assert all(c.find("error") is None and c.find("skipped") is None for c in cases)


def test_first_run_sarif_points_at_the_policy_lines(first):
    sarif = reports(first["report_dir"])["sarif"]
    text, policy = first["policy_text"], first["policy"]
    gate_run = sarif["runs"][0]
    assert gate_run["tool"]["driver"]["name"] == "ascendkit gate"
    assert [r["id"] for r in gate_run["tool"]["driver"]["rules"]] == FIRST_RULES
    results = {r["ruleId"]: r for r in gate_run["results"]}
    assert list(results) == FIRST_RULES
    assert [r["ruleId"] for r in gate_run["results"] if r["level"] == "error"] == ["performance.max_memory_gb"]
    failed = results["performance.max_memory_gb"]
    assert failed["kind"] == "fail"
    location = failed["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"] == policy.as_posix()
    assert location["region"]["startLine"] == line_of(text, "max_memory_gb = ") == 21

    def start_line(rule: str) -> int | None:
        return results[rule]["locations"][0]["physicalLocation"].get("region", {}).get("startLine")

    assert start_line("target.dtype") == line_of(text, "dtype = ")
    assert start_line("performance.min_throughput_tok_s") == line_of(text, "min_throughput_tok_s = ")
    assert start_line("smoke.min_greedy_agreement") == line_of(text, "min_greedy_agreement = ")
    assert start_line("smoke.prompts[1]") == line_of(text, "[[smoke.prompts]]")  # the prompt's own table
    assert start_line("smoke.same_weights") == line_of(text, "[smoke]")  # a default: its section
    assert start_line("doctor") is None and start_line("convert.verify") is None  # no key / no [convert] written
    assert {r["kind"] for rule, r in results.items() if rule != "performance.max_memory_gb"} == {"pass"}
    assert "invocations" not in gate_run
    assert [r["automationDetails"]["id"] for r in sarif["runs"]] == [
        "ascendkit-gate/", "ascendkit-check-ops-model/", "ascendkit-check-ops-runtime/"]


def test_first_run_markdown_and_step_summary(first):
    report_dir = first["report_dir"]
    md = reports(report_dir)["md"]
    lines = md.splitlines()
    assert lines[0] == "## ascendkit gate: ❌ FAIL"
    assert lines[2] == (f"Model `{first['model']}` → `{first['output']}`, target ascend910b bfloat16, torch_npu "
                        f"2.14.0; policy `{first['policy']}`.")
    assert "**Failed rules:** `performance.max_memory_gb`" in lines
    assert sum(line.startswith("| `performance.max_memory_gb` | ❌ |") for line in lines) == 1
    assert sum(line.startswith("| `smoke.prompts[1]` | ✅ |") for line in lines) == 1
    assert "![throughput and TPOT against batch size](sweep.png)" in lines
    assert "Plot: [`sweep.png`](sweep.png) (in the report directory)." in lines
    assert (report_dir / "sweep.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert first["summary"].read_text(encoding="utf-8") == "earlier step\n" + md


# -- run 2: a copy of the converted directory with one bit changed, against a policy that wants fp16 ------
#: one prompt, a two-request load on the CPU: the cheapest smoke stage (appended after a [smoke] table)
SMALL_SMOKE = textwrap.dedent("""
    [[smoke.prompts]]
    prompt = "Hello"

    [smoke.load]
    requests = 2
    concurrency = 2
    prompt_len = 4
    tokens = 2

    [runtime]
    device = "cpu"
    kv_cache_memory = "64MiB"
    """)


@pytest.fixture(scope="module")
def second(first, tmp_path_factory):
    root = tmp_path_factory.mktemp("gate-second")
    policy_text = textwrap.dedent("""\
        [target]
        soc = "ascend910b"
        dtype = "float16"

        [ops]
        model = false
        runtime = false

        [smoke]
        max_tokens = 4
        """) + SMALL_SMOKE
    policy = root / "float16.toml"
    policy.write_text(policy_text, encoding="utf-8")
    model = root / "converted"
    shutil.copytree(first["output"], model)
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-2] ^= 1  # the last bf16 value's lowest mantissa bit: the same model to a smoke test, not to verify
    weights.write_bytes(bytes(data))
    manifest = (model / "ascend_manifest.json").read_bytes()
    report_dir = root / "reports"
    result = gate(model, policy, report_dir, summary=root / "summary.md")
    return {"result": result, "policy": policy, "policy_text": policy_text, "report_dir": report_dir,
            "manifest": manifest, "model": model, "source": first["model"]}


def test_second_run_verifies_the_converted_directory_and_fails_its_dtype_and_the_changed_bit(second):
    """A converted directory is verified, not converted again; a changed bit in it is a failed rule
    (exit 1, every rule still decided), not an error."""
    result, report_dir, model = second["result"], second["report_dir"], second["model"]
    assert result.code == 1, (result.stdout, result.stderr)
    progress = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert progress == ["[1/4] doctor", "[2/4] convert", "[3/4] preflight", "[4/4] smoke"]
    weights = model / "model.safetensors"
    fails = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("FAIL")]
    assert fails[0] == "FAIL target.dtype: weights in bfloat16, the policy wants float16"
    assert fails[1].startswith(f"FAIL convert.verify: {weights}: sha256 ") and len(fails) == 2
    assert "FAIL: 2 rule(s) failed: target.dtype, convert.verify" in result.stdout
    data = reports(report_dir)["json"]
    assert (data["verdict"], data["exit_code"], data["failed"]) == ("FAIL", 1, ["target.dtype", "convert.verify"])
    assert [r["id"] for r in data["rules"]] == SECOND_RULES
    messages = {r["id"]: r["message"] for r in data["rules"]}
    assert messages["target.dtype"] == "weights in bfloat16, the policy wants float16"
    # served as the policy says (fp16) the bf16 weights are cast at load: preflight's warning, not a failure
    assert messages["preflight.model.tensor_dtype"] == (
        "warning: lm_head.weight, model.embed_tokens.weight, model.layers.0.input_layernorm.weight and 18 more: 21 "
        "bfloat16 tensor(s) in a float16 model: cast to float16 at load (the loader: cast (to the model's dtype at "
        "load); vLLM weight loaders: param.data.copy_(loaded_weight) converts the dtype; vllm-ascend #6490, #9294, "
        "#3534)")
    assert messages["smoke.same_weights"] == "1/1 prompts give transformers' greedy tokens on the same weights"
    assert messages["smoke.load"] == "2/2 load requests answered"
    convert = data["stages"]["convert"]
    assert (convert["action"], convert["output"], convert["source"]) == ("verified", str(model), str(second["source"]))
    assert convert["target"]["dtype"] == "bfloat16" and not convert["verify"]["ok"]
    # the file's sha256, the tensor's, and the tensor against its source: every mismatch, not just the first
    failures = convert["verify"]["failures"]
    assert len(failures) == 3 and failures[0] == messages["convert.verify"].split("; ")[0]
    assert failures[1].startswith(f"{weights}: tensor ") and failures[1].endswith(" sha256 differs from the manifest")
    assert failures[2].startswith("tensor ") and "differs from the source beyond the cast" in failures[2]
    assert data["converted"] == str(model) and data["check_ops"] == {} and data["plot"] is None
    assert data["stages"]["smoke"]["dtype"] == "bfloat16"
    # verified in place: nothing converted, the directory untouched
    assert not (report_dir / "converted").exists()
    assert (model / "ascend_manifest.json").read_bytes() == second["manifest"]
    sarif = reports(report_dir)["sarif"]
    failed = [r for r in sarif["runs"][0]["results"] if r["level"] == "error"]
    assert [r["ruleId"] for r in failed] == ["target.dtype", "convert.verify"]
    assert failed[0]["locations"][0]["physicalLocation"]["region"]["startLine"] == 3
    assert "region" not in failed[1]["locations"][0]["physicalLocation"]  # a default: no line to point at
    assert len(sarif["runs"]) == 1
    md = reports(report_dir)["md"]
    assert md.startswith("## ascendkit gate: ❌ FAIL\n") and "**Failed rules:** `target.dtype`, `convert.verify`" in md
    assert f"Model `{model}`, target ascend910b float16" in md  # verified: no arrow to a conversion


# -- an existing output directory without --force: the gate cannot decide ---------------------------------
ERROR_POLICY = """\
[target]
soc = "ascend910b"
dtype = "bfloat16"

[ops]
model = false
runtime = false
"""


@pytest.fixture(scope="module")
def refused(tmp_path_factory, checkpoint):
    root = tmp_path_factory.mktemp("gate-refused")
    policy = root / "p.toml"
    policy.write_text(ERROR_POLICY)
    report_dir = root / "reports"
    (report_dir / "converted").mkdir(parents=True)
    (report_dir / "converted" / "keep.txt").write_text("not the gate's to remove\n")
    result = gate(checkpoint("llama"), policy, report_dir, summary=root / "summary.md")
    return {"result": result, "report_dir": report_dir, "policy": policy}


def test_existing_output_without_force_is_an_error(refused):
    result, report_dir = refused["result"], refused["report_dir"]
    converted = report_dir / "converted"
    error = f"convert: {converted}: already exists (use --force to overwrite it)"
    assert result.code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "[1/4] doctor", "[2/4] convert", f"error: {error}"]
    assert f"ERROR {error}" in result.stdout
    data = reports(report_dir)["json"]
    assert (data["verdict"], data["exit_code"], data["error"], data["failed"]) == ("ERROR", 2, error, [])
    assert [r["id"] for r in data["rules"]] == ["doctor", "target.torch_npu"]
    assert list(data["seconds"]) == ["doctor", "convert"] and "convert" not in data["stages"]
    assert (converted / "keep.txt").read_text() == "not the gate's to remove\n"
    assert sorted(p.name for p in converted.iterdir()) == ["keep.txt"]
    suite = reports(report_dir)["junit"].find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "0", "1")
    errors = [c for c in suite.findall("testcase") if c.find("error") is not None]
    assert [c.get("name") for c in errors] == ["gate"] and errors[0].find("error").get("message") == error
    invocation = reports(report_dir)["sarif"]["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is False
    assert invocation["toolExecutionNotifications"][0]["message"]["text"] == error
    md = reports(report_dir)["md"]
    assert md.startswith("## ascendkit gate: ⚠️ ERROR\n")
    assert f"**The gate could not decide:** {error}" in md.splitlines()


@pytest.mark.skipif(not SCHEMA.is_file() and os.environ.get("CI") != "true", reason="../shared/data not beside")
@pytest.mark.parametrize("run", ["first", "second", "refused"])
def test_sarif_validates_against_the_official_schema(run, request):
    import jsonschema

    sarif = reports(request.getfixturevalue(run)["report_dir"])["sarif"]
    jsonschema.Draft4Validator(json.loads(SCHEMA.read_text())).validate(sarif)
    assert sarif["version"] == "2.1.0"


# -- policy errors: one line naming the file and the key, before any stage ---------------------------------
TARGET = '[target]\nsoc = "ascend910b"\ndtype = "bfloat16"\n'
POLICY_ERRORS = {
    "unknown key": (TARGET + "[performance]\nmin_throughput = 10\n",
                    ("performance.min_throughput: unknown key (known: min_throughput_tok_s, max_ms_per_token, "
                     "max_ttft_p99_ms, max_tpot_p50_ms, max_tpot_p99_ms, max_tpot_std_ms, max_session_switch_ms, "
                     "max_memory_gb, long_context)")),
    "unknown key in a prompt": (TARGET + '[[smoke.prompts]]\nprompt = "Hi"\nexpected = ["x"]\n',
                                "smoke.prompts[1].expected: unknown key (known: prompt, chat, expect, ignore_case)"),
    "unknown section": (TARGET + "[smoke_test]\nmax_tokens = 4\n",
                        ("smoke_test: unknown key (known: target, convert, preflight, ops, smoke, performance, "
                         "deployment, runtime, sweep)")),
    "wrong type": (TARGET + '[smoke]\nmax_tokens = "16"\n',
                   "smoke.max_tokens: input should be a valid integer (got '16')"),
    "missing soc": ('[target]\ndtype = "bfloat16"\n', "target.soc: missing (required)"),
    "missing target": ("[smoke]\nmax_tokens = 4\n", "target: missing (required)"),
    "bf16 on 310p": ('[target]\nsoc = "ascend310p"\ndtype = "bfloat16"\n',
                     "target.dtype: ascend310p (Atlas 300I Duo / 310P) has no bfloat16; it supports float16, float32"),
    "empty reason": (TARGET + '[[ops.allow]]\nop = "aten::lgamma"\nreason = ""\n',
                     "ops.allow[1].reason: string should have at least 1 character (got '')"),
    "blank reason": (TARGET + '[[ops.allow]]\nop = "aten::lgamma"\nreason = "   "\n',
                     "ops.allow[1].reason: every accepted op needs a reason (got '   ')"),
    "invalid TOML": (TARGET + "[smoke\n", ("not valid TOML (Expected ']' at the end of a table declaration "
                                          "(at line 4, column 7))")),
    "unknown torch_npu": ('[target]\nsoc = "ascend910b"\ndtype = "bfloat16"\ntorch_npu = "2.99.0"\n',
                          ("target.torch_npu 2.99.0: no shipped operator manifest (shipped: 2.14.0, 2.1.0); build one "
                           "with `ascendkit manifest build` and name it in ops.manifest")),
    "onnx as torch_npu": ('[target]\nsoc = "ascend910b"\ndtype = "bfloat16"\ntorch_npu = "onnx"\n',
                          "target.torch_npu: onnx is check_ops' ATC (ONNX) target, not a torch_npu release (got 'onnx')"),
}


@pytest.mark.parametrize("case", list(POLICY_ERRORS))
def test_policy_errors_are_one_line(case, tmp_path, checkpoint):
    text, message = POLICY_ERRORS[case]
    policy = tmp_path / "ascend-gate.toml"
    policy.write_text(text, encoding="utf-8")
    report_dir = tmp_path / "reports"
    result = gate(checkpoint("llama"), policy, report_dir, summary=tmp_path / "summary.md")
    assert_one_line_error(result, f"{policy}: {message}")
    assert result.stderr.strip() == f"error: {policy}: {message}"
    assert result.stdout == "" and not report_dir.exists() and not (tmp_path / "summary.md").exists()


def test_missing_policy_file(tmp_path, checkpoint):
    policy = tmp_path / "nope.toml"
    result = gate(checkpoint("llama"), policy, tmp_path / "reports", summary=tmp_path / "summary.md")
    assert_one_line_error(result)
    assert result.stderr.strip() == f"error: {policy}: no such policy file"
    assert not (tmp_path / "reports").exists()


def test_missing_model(tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text(TARGET)
    model = tmp_path / "no-such-model"
    result = gate(model, policy, tmp_path / "reports", summary=tmp_path / "summary.md")
    assert_one_line_error(result)
    assert result.stderr.strip() == f"error: {model}: no such file or directory"
    assert not (tmp_path / "reports").exists()


# -- a W8A16 conversion: quantized rules, the runtime check on torch_npu's quantized kernel, the source --------
def test_w8a16_policy_converts_quantizes_and_compares_with_the_source(tmp_path, checkpoint):
    src = checkpoint("llama")
    policy = tmp_path / "w8a16.toml"
    policy.write_text(textwrap.dedent("""\
        [target]
        soc = "ascend910b"
        dtype = "bfloat16"
        quantize = "w8a16"

        [ops]
        model = false

        [smoke]
        max_tokens = 4
        min_greedy_agreement = 1.0  # on this fixture W8A16 keeps every greedy token of the source
        """) + SMALL_SMOKE, encoding="utf-8")
    result = gate(src, policy, tmp_path / "reports", summary=tmp_path / "summary.md")
    assert result.code == 0, (result.stdout, result.stderr)
    data = reports(tmp_path / "reports")["json"]
    status = {r["id"]: (r["status"], r["message"]) for r in data["rules"]}
    assert status["target.quantize"] == ("pass", "quantization w8a16, the policy wants w8a16")
    assert status["smoke.same_weights"][0] == "skip"
    assert status["ops.runtime"][0] == "pass"
    assert data["stages"]["smoke"]["greedy_agreement"] == 1.0
    assert status["smoke.min_greedy_agreement"] == (
        "pass", f"100.0% of the greedy tokens of the source {src} reproduced (minimum 100%)")
    assert data["stages"]["smoke"]["quantized"] and data["stages"]["smoke"]["reference"] == str(src)
    assert (tmp_path / "reports" / "converted" / "quant_model_description.json").is_file()
