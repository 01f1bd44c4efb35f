"""`ascendkit smoke`: the real command on a fixture — its verdict, the tokens it reports (checked here
against transformers once more), the load figures, and exit 1 on a difference. A quantized directory
against its source, and SmolLM2-135M, are smoke-tested inside `ascendkit demo` and the example gate
(tests/test_demo.py, tests/test_gate_examples.py)."""

from __future__ import annotations

import json

import torch
from conftest import assert_one_line_error, run_cli
from greedy_reference import assert_greedy_equal, hf_greedy
from transformers import AutoTokenizer

from runtime.evaluation.smoke import CHAT_PROMPTS, PLAIN_PROMPTS

QUICK = ("--device", "cpu", "--json", "--requests", "8", "--concurrency", "4", "--prompt-len", "16",
         "--load-tokens", "8")


def test_smoke_passes_on_a_fixture_and_reports_real_tokens(checkpoint, tmp_path):
    """One run, as CI would log it: the table and verdict on stdout (no terminal), the JSON in --output."""
    model = checkpoint("llama")
    result = run_cli("smoke", model, *[a for a in QUICK if a != "--json"], "--max-tokens", "8",
                     "--output", tmp_path / "smoke.json")
    assert result.code == 0, result.stderr
    for fragment in ("greedy answers vs transformers", "throughput (tokens/s)", "average latency (ms/token)",
                     "memory (GB)", "TPOT std (ms)", "PASS: 7/7 prompts agree with transformers"):
        assert fragment in result.stdout, fragment
    report = json.loads((tmp_path / "smoke.json").read_text())
    assert report["verdict"] == "PASS" and report["prompts_agreeing"] == report["prompts"] == 7
    assert [r["prompt"] for r in report["results"]] == [*PLAIN_PROMPTS, *CHAT_PROMPTS]
    assert (report["device"], report["dtype"], report["chat_template"]) == ("cpu", "bfloat16", True)
    tokenizer = AutoTokenizer.from_pretrained(model)
    for r in report["results"]:
        assert r["status"] in ("match", "tie"), r
        assert_greedy_equal(r["token_ids"], hf_greedy(model, torch.bfloat16, r["prompt_token_ids"], 8),
                            torch.bfloat16, r["prompt"])
        assert r["text"] == tokenizer.decode(r["token_ids"], skip_special_tokens=True)
    load = report["load"]
    assert (load["requests"], load["completed"], load["failed"], load["output_tokens"]) == (8, 8, 0, 64)
    assert load["output_throughput_tok_s"] > 0 and load["latency_ms_per_token"] > 0 and load["memory_gb"] > 0
    for metric in ("ttft_ms", "tpot_ms"):
        assert 0 < load[metric]["p50"] <= load[metric]["p99"], load[metric]
    assert load["tpot_ms"]["std"] >= 0


def test_smoke_exits_1_when_the_served_answers_differ(checkpoint):
    """A context too short for the answers: the server stops where transformers goes on (a plain
    prompt's answer is cut: a mismatch), and a chat prompt longer than the context is refused."""
    model = checkpoint("llama")
    tokenizer = AutoTokenizer.from_pretrained(model)
    longest_plain = max(len(tokenizer.encode(p)) for p in PLAIN_PROMPTS)
    result = run_cli("smoke", model, *QUICK, "--max-tokens", "16", "--max-model-len", str(longest_plain + 4))
    assert result.code == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == "FAIL"
    statuses = {r["status"] for r in report["results"]}
    assert "mismatch" in statuses, report["results"]
    refused = [r for r in report["results"] if r["status"] == "error"]
    assert refused and all("does not fit max_model_len" in r["error"] for r in refused)


def test_smoke_bad_input_is_one_line(tmp_path):
    assert_one_line_error(run_cli("smoke", tmp_path / "nowhere", "--device", "cpu"), "nowhere: no such file")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("smoke", tmp_path / "empty", "--device", "cpu"), "empty")


def test_smoke_on_deepseek_v3_compares_in_transformers_op_order_and_reports_the_latent_cache(checkpoint):
    """A DeepSeek-V3 checkpoint in bf16: smoke serves MLA's decode decompressed (`--mla-decode auto`),
    the op order its answers are compared in, so all 7 agree; the KV cache a token takes is its latent
    and rope key (3 layers x (32 + 8) x 2 bytes = 240), a quarter of full keys and values (960). (With
    `--mla-decode absorbed` 4 of the 7 bf16 answers differ: a bf16 MoE's tokens follow the op order, see
    test_runtime_deepseek.)"""
    model = checkpoint("deepseek_v3")
    result = run_cli("smoke", model, *QUICK, "--max-tokens", "32")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["verdict"], report["prompts_agreeing"], report["dtype"]) == ("PASS", 7, "bfloat16")
    # attention's working set: 4,096 gathered slots x (the 40 cached values + the 160 decompressed
    # per-head keys and values of its prefill path) x 2 bytes, in one layer at a time
    assert report["kv_cache"] == {"bytes_per_token": 240, "full_kv_bytes_per_token": 960, "ratio": 4.0,
                                  "attention_working_set_bytes": 4096 * (40 + 160) * 2}
