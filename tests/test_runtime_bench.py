"""`ascendkit bench` through the real CLI on a tiny fixture checkpoint, with tiny sizes: the report's
shape and its arithmetic (ratios, token counts, the sweep's recommendation), never its timings —
performance is measured in benchmarks/, side by side with the baselines, not in timed tests."""

from __future__ import annotations

import json

import pytest
from conftest import BENCH_TINY, assert_one_line_error, run_cli

from runtime.evaluation.bench.figures import Run, recommend, summarize
from runtime.evaluation.bench.report import print_report
from runtime.evaluation.bench.workloads import WORKLOADS

METRICS = ("throughput_tok_s", "latency_ms_per_token", "memory_gb", "generated_tokens", "tokens_per_request",
           "wall_s", "runs")


@pytest.fixture(scope="module")
def report(checkpoint):
    """One run of every workload against both transformers baselines (llama-cpp: skipped, MODEL is a
    directory), one repeat."""
    result = run_cli("bench", checkpoint("llama"), *BENCH_TINY, "--repeat", "1", "--baselines", "hf,hf-batch,llama-cpp")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def test_every_workload_and_system_is_reported(report):
    assert set(report["workloads"]) == set(WORKLOADS)
    assert "llama-cpp" in report["skipped"]
    assert report["systems"]["runtime"]["kv_pool_gb"] > 0
    for name, entry in report["workloads"].items():
        expected = {"runtime", "hf", "hf-batch"} | ({"runtime-no-cache"} if name == "prefix" else set())
        assert set(entry["systems"]) == expected, name
        assert set(entry["ratios"]) == expected - {"runtime"}
        for system, m in entry["systems"].items():
            for key in METRICS:
                assert key in m, (name, system, key)
            for dist in ("ttft_ms", "tpot_ms"):
                assert set(m[dist]) == {"mean", "p50", "p99", "std"}
                assert m[dist]["p50"] <= m[dist]["p99"] + 1e-9
            assert len(m["runs"]) == report["repeat"] == 1


def test_ratios_are_ours_over_theirs(report):
    for entry in report["workloads"].values():
        ours = entry["systems"]["runtime"]
        for baseline, ratio in entry["ratios"].items():
            theirs = entry["systems"][baseline]
            assert ratio["throughput"] == pytest.approx(ours["throughput_tok_s"] / theirs["throughput_tok_s"])
            assert ratio["ttft_p50"] == pytest.approx(theirs["ttft_ms"]["p50"] / ours["ttft_ms"]["p50"])
    for target in report["targets"]:
        bar = target.get("at_least", target.get("at_most"))
        assert target["pass"] == (target["value"] >= bar if "at_least" in target else target["value"] <= bar)
    spread = next(t for t in report["targets"] if t["target"] == "runtime TPOT p99 <= 3x its p50")
    tpot = report["workloads"]["batch64"]["systems"]["runtime"]["tpot_ms"]
    assert spread["value"] == pytest.approx(tpot["p99"] / tpot["p50"])


def test_every_system_generates_the_same_tokens(report):
    for name, entry in report["workloads"].items():
        counts = [m["tokens_per_request"] for m in entry["systems"].values()]
        assert entry["tokens_equal"]
        assert all(c == [entry["new_tokens"]] * entry["requests"] for c in counts), name
        assert {m["generated_tokens"] for m in entry["systems"].values()} == {entry["requests"] * entry["new_tokens"]}


def test_the_prefix_workload_hits_the_cache_only_when_it_is_on(report):
    entry = report["workloads"]["prefix"]
    assert entry["prefix_len"] == 16 and entry["requests"] == 16
    cached, plain = entry["systems"]["runtime"], entry["systems"]["runtime-no-cache"]
    block = report["systems"]["runtime"]["block_size"]
    assert cached["prefix_cache_hit_tokens"] == 16 // block * block * entry["requests"] > 0  # full prefix blocks
    assert plain["prefix_cache_hit_tokens"] == 0
    assert entry["prefix_cache"]["ttft_speedup"] == pytest.approx(plain["ttft_ms"]["p50"] / cached["ttft_ms"]["p50"])
    for name in ("single", "batch16", "batch64"):  # fresh prompts every run: nothing is served from the cache
        assert report["workloads"][name]["systems"]["runtime"]["prefix_cache_hit_tokens"] == 0


def test_the_table_shows_every_workload(report, capsys):
    print_report(report)
    out = capsys.readouterr().out
    for name in WORKLOADS:
        assert f"{name}: " in out
    assert "transformers generate (static batch)" in out and "skipped llama-cpp" in out
    assert "prefix cache: TTFT p50" in out


def test_an_moe_model_is_benched_against_transformers(checkpoint):
    """Qwen2-MoE (routed experts, a shared expert, dense layers between) through the same bench: each
    workload's runtime and transformers figures, their ratio, the KV pool of its attention layers."""
    result = run_cli("bench", checkpoint("qwen2_moe"), *BENCH_TINY, "--repeat", "1", "--baselines", "hf,runtime-compiled",
                     "--workloads", "single,batch16")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["skipped"] == {"runtime-compiled": "compile_decode serves dense models; this one has "
                                                     "mixture-of-experts layers: drop --compile-decode"}
    assert set(report["workloads"]) == {"single", "batch16"} and report["systems"]["runtime"]["kv_pool_gb"] > 0
    for name, entry in report["workloads"].items():
        assert set(entry["systems"]) == {"runtime", "hf"} and set(entry["ratios"]) == {"hf"}, name
        assert entry["tokens_equal"], name
        assert {m["generated_tokens"] for m in entry["systems"].values()} == {entry["requests"] * entry["new_tokens"]}


def test_the_compiled_runtime_is_benched_when_named(checkpoint):
    """`--baselines runtime-compiled`: the runtime with --compile-decode beside the runtime, its ratio
    and its share of the floor reported like any system's."""
    result = run_cli("bench", checkpoint("llama"), *BENCH_TINY, "--repeat", "1", "--baselines", "runtime-compiled",
                     "--workloads", "single")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    entry = report["workloads"]["single"]
    assert set(entry["systems"]) == {"runtime", "runtime-compiled"} and set(entry["ratios"]) == {"runtime-compiled"}
    assert entry["tokens_equal"] and report["systems"]["runtime-compiled"]["label"] == "runtime, compiled decode"
    assert set(report["floor"]["decode_share"]) == {"runtime", "runtime-compiled"}


def test_sweep_recommends_a_batch_size_under_the_ceiling(checkpoint):
    result = run_cli("bench", checkpoint("llama"), *BENCH_TINY, "--sweep", "--sweep-sizes", "1,2,4", "--repeat", "2",
                     "--baselines", "hf", "--tpot-ms", "100000")
    assert result.code == 0, result.stderr
    sweep = json.loads(result.stdout)["sweep"]
    assert [s["batch"] for s in sweep["sizes"]] == [1, 2, 4]
    rec = sweep["recommended"]
    chosen = next(s for s in sweep["sizes"] if s["batch"] == rec["max_num_seqs"])
    assert chosen["runtime"]["tpot_ms"]["p50"] <= sweep["tpot_ms_ceiling"] == 100000
    assert rec["throughput_tok_s"] == max(s["runtime"]["throughput_tok_s"] for s in sweep["sizes"])
    for s in sweep["sizes"]:
        assert len(s["runtime"]["runs"]) == 2
        assert s["runtime"]["generated_tokens"] == s["hf"]["generated_tokens"] == 3 * s["batch"]
        assert s["ratios"]["hf"]["throughput"] == pytest.approx(
            s["runtime"]["throughput_tok_s"] / s["hf"]["throughput_tok_s"])


def _size(batch: int, tok_s: float, tpot: float | None) -> dict:
    return {"batch": batch, "runtime": {"throughput_tok_s": tok_s, "tpot_ms": {"p50": tpot}}}


def test_recommend_picks_the_fastest_size_under_the_ceiling():
    sizes = [_size(1, 10, 5), _size(8, 60, 20), _size(32, 90, 45), _size(64, 95, 80)]
    assert recommend(sizes, 50)["max_num_seqs"] == 32
    assert recommend(sizes, 100)["max_num_seqs"] == 64
    none = recommend(sizes, 1)
    assert none["max_num_seqs"] is None and "above 1 ms" in none["reason"]


def test_summary_of_a_run():
    """Two requests arriving at 0: TTFT from arrival, TPOT from every gap, throughput over the wall."""
    run = Run([0.0, 0.0], [[0.1, 0.2, 0.4], [0.3, 0.4, 0.5]], [[1, 2, 3], [4, 5, 6]], 0.0, 0.5)
    m = summarize(run)
    assert m["generated_tokens"] == 6 and m["throughput_tok_s"] == pytest.approx(12)
    assert m["ttft_ms"]["p50"] == pytest.approx(200) and m["ttft_ms"]["mean"] == pytest.approx(200)
    assert m["tpot_ms"]["p50"] == pytest.approx(100) and m["tpot_ms"]["p99"] == pytest.approx(197)
    assert m["latency_ms_per_token"] == pytest.approx((400 / 3 + 500 / 3) / 2)


def test_missing_model_is_a_one_line_error(tmp_path):
    assert_one_line_error(run_cli("bench", tmp_path / "nope"), f"{tmp_path / 'nope'}: no such file or directory")


@pytest.mark.parametrize("args, fragments", [
    (("--workloads", "single,bogus"), ("--workloads", "'bogus'", "single, batch16, batch64, prefix")),
    (("--baselines", "vllm"), ("--baselines", "'vllm'")),
    (("--sweep", "--sweep-sizes", "0,4"), ("--sweep-sizes",)),
])
def test_bad_options_are_one_line_errors(checkpoint, args, fragments):
    assert_one_line_error(run_cli("bench", checkpoint("llama"), *args), *fragments)


def _decode_weight_elements(config: dict) -> int:
    """The weights one batch-1 decode step of a dense Llama reads: q, k, v, o, gate, up, down per
    layer, and the output projection (the tied embedding or lm_head) — from its config alone."""
    h, heads, kv = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    dim = config.get("head_dim") or h // heads
    per_layer = h * heads * dim + 2 * h * kv * dim + heads * dim * h + 3 * h * config["intermediate_size"]
    return config["num_hidden_layers"] * per_layer + config["vocab_size"] * h


def test_the_floor_reads_every_decode_weight_once_and_each_system_is_a_share_of_it(report, checkpoint):
    config = json.loads((checkpoint("llama") / "config.json").read_text())
    floor = report["floor"]
    itemsize = {"float32": 4, "bfloat16": 2, "float16": 2}[report["dtype"]]
    assert floor["weight_bytes"] == _decode_weight_elements(config) * itemsize
    assert floor["formats"] == {report["dtype"]: floor["weight_bytes"]}
    assert floor["passes"] == 5 * report["repeat"] and 0 < floor["min_ms"] <= floor["ms"]
    assert floor["tok_s"] == pytest.approx(1000 / floor["ms"])
    single = report["workloads"]["single"]["systems"]
    assert set(floor["decode_share"]) == set(single)
    for name, share in floor["decode_share"].items():
        assert share == pytest.approx(floor["ms"] / single[name]["tpot_ms"]["p50"])
