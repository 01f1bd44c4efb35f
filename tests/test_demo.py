"""`ascendkit demo`: the whole flow on a fixture checkpoint (`--model`), as a user runs it; the default
SmolLM2 run is the README's first command (timed in the issue note, not here: it takes minutes)."""

from __future__ import annotations

import json

from conftest import assert_one_line_error, run_cli

from ascendkit.demo import QUESTIONS


def test_demo_on_a_fixture_converts_checks_serves_and_compares(checkpoint, tmp_path):
    out, report = tmp_path / "demo", tmp_path / "demo.json"
    r = run_cli("demo", "--model", checkpoint("llama"), "--out", out, "--report", report, timeout=600)
    assert r.code == 0, (r.stdout[-3000:], r.stderr[-3000:])
    for step in ("[1/8] convert to bfloat16 for ascend910b", "[2/8] convert to W8A16", "[3/8] check_ops: transformers",
                 "[4/8] check_ops: runtime model", "[5/8] check_ops: runtime model, W8A16", "[6/8] smoke-serve bfloat16",
                 "[7/8] smoke-serve W8A16", "[8/8] benchmark"):
        assert step in r.stdout, step
    data = json.loads(report.read_text())
    conv = data["conversions"]
    assert conv["bfloat16"]["target"] == {"dtype": "bfloat16", "layout": "default", "soc": "ascend910b"}
    assert conv["w8a16"]["target"]["quantize"] == "W8A16"
    assert conv["bfloat16"]["verified"] and conv["bfloat16"]["source_checked"] == 21  # every tensor = the source's
    assert conv["w8a16"]["verified"] and conv["w8a16"]["source_checked"] > 0
    assert (out / "llama-ascend910b-w8a16" / "quant_model_description.json").is_file()
    assert set(data["check_ops"]) == {"transformers (bfloat16)", "runtime (bfloat16)", "runtime (W8A16)"}
    assert all(c["clean"] for c in data["check_ops"].values())
    # the fixture's tokenizer has a chat template: the demo's questions as chat, every answer = transformers'
    base = data["smoke"]["bfloat16"]
    assert [(x["kind"], x["prompt"]) for x in base["results"]] == [("chat", q) for q in QUESTIONS]
    assert base["verdict"] == "PASS" and all(x["status"] in ("match", "tie") for x in base["results"])
    assert data["smoke"]["w8a16"]["reference"] == str(out / "llama-ascend910b-bfloat16")
    assert 0 <= data["smoke"]["w8a16"]["greedy_agreement"] <= 1
    for workload in ("single", "batch16"):
        entry = data["bench"]["workloads"][workload]
        assert set(entry["systems"]) == {"runtime", "hf"} and entry["tokens_equal"]
    assert f"outputs kept in {out}" in r.stdout

    again = run_cli("demo", "--model", checkpoint("llama"), "--out", out)
    assert_one_line_error(again, f"{out / 'llama-ascend910b-bfloat16'}: already exists (pass --force to replace it)")


def test_demo_bad_model_is_one_line(tmp_path):
    assert_one_line_error(run_cli("demo", "--model", tmp_path / "nope"), f"{tmp_path / 'nope'}: no such file or directory")
