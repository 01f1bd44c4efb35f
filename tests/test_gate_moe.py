"""The shipped MoE example policy (Qwen3-30B-A3B, msModelSlim's Qwen3-MoE W8A8 recipe on a 910B) gates a
real Qwen3-MoE checkpoint end to end. The tiny seeded fixture stands in for the 30B model, so what a
30B model has and a random 3-layer one cannot is changed: the prompts (the fixture knows no capitals;
its prompt has no `expect`), the load's size, the KV pool, and the greedy-agreement floor, set to 0 so
the agreement is still measured and reported but not judged — on a random model the int8 model's greedy
continuation parts from the source's at its first flipped token and never returns (measured: 5 of 8
tokens, 62.5%), which says nothing of quantization quality; the runtime's tests hold W8A8 MoE models'
prompt perplexity within 2% of the float model's instead. Every other line is the one users copy: the
target (W8A8 with W8A8_DYNAMIC experts), verify against the source, check_ops on the transformers
model and on the runtime's MoE model, and the performance rules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import run_cli
from test_gate import PROMPT

from ascendkit.gate_policy import load_policy

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "policies" / "moe" / "qwen3-30b-a3b-910b-w8a8.toml"
MAX_TOKENS = 8


def fixture_policy() -> str:
    """The example with the fixture's prompt, a small load and a small KV pool in place."""
    text = EXAMPLE.read_text(encoding="utf-8")
    head, rest = text.split("\n[[smoke.prompts]]\n", 1)
    _, tail = rest.split("\n[smoke.load]", 1)
    prompt = f'\n[[smoke.prompts]]\nprompt = "{PROMPT}"\n'
    text = head + prompt + "\n[smoke.load]" + tail
    for key, value in {"max_tokens": MAX_TOKENS, "requests": 4, "concurrency": 2, "prompt_len": 8, "tokens": 4,
                       "kv_cache_memory": '"64MiB"', "min_greedy_agreement": 0}.items():
        text, n = re.subn(rf"^{key} = \S+", f"{key} = {value}", text, flags=re.M)
        assert n == 1, key
    return text


def test_the_example_is_the_qwen3_moe_w8a8_recipe_on_a_910b():
    policy = load_policy(EXAMPLE)
    assert (policy.target.soc, policy.target.dtype, policy.target.quantize) == ("ascend910b", "bfloat16", "w8a8")
    assert policy.ops.model and policy.ops.runtime and policy.convert.verify_source
    assert all(p.expect for p in policy.smoke.prompts)


@pytest.mark.slow
def test_the_example_gates_a_qwen3_moe_checkpoint(checkpoint, tmp_path):
    model = checkpoint("qwen3_moe")
    policy = tmp_path / "policy.toml"
    policy.write_text(fixture_policy(), encoding="utf-8")
    report_dir = tmp_path / "reports"
    result = run_cli("gate", model, "--policy", policy, "--report-dir", report_dir, "--output", tmp_path / "out",
                     env={"GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}, timeout=900)
    data = json.loads((report_dir / "gate.json").read_text())
    status = {r["id"]: r["status"] for r in data["rules"]}
    messages = {r["id"]: r["message"] for r in data["rules"]}
    assert (result.code, data["verdict"]) == (0, "PASS"), (result.stdout, result.stderr, messages)
    assert status == {**dict.fromkeys(status, "pass"), "smoke.same_weights": "skip"}, messages
    assert data["target"] == {"soc": "ascend910b", "dtype": "bfloat16", "quantize": "w8a8", "torch_npu": "2.14.0",
                              "tp": 4, "ep": 1}
    description = json.loads((tmp_path / "out" / "quant_model_description.json").read_text())
    assert description["model.layers.0.self_attn.q_proj.weight"] == "W8A8"
    assert description["model.layers.0.mlp.experts.7.down_proj.weight"] == "W8A8_DYNAMIC"
    assert description["model.layers.0.mlp.gate.weight"] == "FLOAT"
    for which in ("model", "runtime"):
        assert messages[f"ops.{which}"].endswith("calls against torch_npu 2.14.0 on ascend910b"), messages
    assert re.fullmatch(rf"\d+\.\d% of the greedy tokens of the source {re.escape(str(model))} reproduced "
                        r"\(minimum 0%\)", messages["smoke.min_greedy_agreement"]), messages
    assert [r["prompt"] for r in data["stages"]["smoke"]["results"]] == [PROMPT]


def test_a_w8a8_dynamic_policy_matches_the_manifests_type_name(checkpoint, tmp_path):
    """`quantize = "w8a8-dynamic"` in a policy (the `--quantize` spelling) matches the W8A8_DYNAMIC
    that the manifest records (msModelSlim's type name), here on Mixtral (every layer sparse). And the
    gate says what vllm-ascend@182b75e would do with it: its packed map has no `experts` entry for
    mixtral, so it looks each layer's type up as `<layer>.experts.weight` (KeyError) — one failed rule
    per layer, every other rule passing."""
    policy = tmp_path / "policy.toml"
    policy.write_text('[target]\nsoc = "ascend910b"\ndtype = "bfloat16"\nquantize = "w8a8-dynamic"\n\n'
                      '[ops]\nmodel = false\nruntime = false\n\n[smoke]\nmax_tokens = 4\n'
                      'min_greedy_agreement = 0.0\n\n[[smoke.prompts]]\nprompt = "Hello"\n\n'
                      '[smoke.load]\nrequests = 2\nconcurrency = 1\nprompt_len = 8\ntokens = 2\n\n'
                      '[runtime]\ndevice = "cpu"\nkv_cache_memory = "64MiB"\n', encoding="utf-8")
    report_dir = tmp_path / "reports"
    result = run_cli("gate", checkpoint("mixtral"), "--policy", policy, "--report-dir", report_dir,
                     "--output", tmp_path / "out", timeout=600)
    data = json.loads((report_dir / "gate.json").read_text())
    messages = {r["id"]: r["message"] for r in data["rules"]}
    assert (result.code, data["failed"]) == (1, ["preflight", "preflight.quant.experts_lookup",
                                                 "preflight.quant.experts_lookup"]), (result.stderr, messages)
    assert messages["target.quantize"] == "quantization w8a8-dynamic, the policy wants w8a8-dynamic"
    lookups = [r["message"] for r in data["rules"] if r["id"] == "preflight.quant.experts_lookup"]
    assert lookups[0].startswith("error: model.layers.0.block_sparse_moe.experts: no 'experts' entry in the engine's "
                                 "packed map for model_type mixtral: it looks up "
                                 "model.layers.0.block_sparse_moe.experts.weight")
    assert json.loads((tmp_path / "out" / "ascend_manifest.json").read_text())["target"]["quantize"] == "W8A8_DYNAMIC"
