"""`ascendkit bench --serve` / `--endpoint URL` (alias `--server`): vLLM's serving metrics from a real server
process. Other servers (`transformers serve`, a misbehaving one): tests/test_endpoint.py."""

from __future__ import annotations

import json

import pytest
from conftest import assert_one_line_error, run_cli
from server_process import TestServer

SHORT = ("--prompt-len", "8", "--new-tokens", "8", "--json")


def _check_level(level: dict, concurrency: int, requests: int) -> None:
    assert level["concurrency"] == concurrency
    assert (level["requests"], level["completed"], level["failed"]) == (requests, requests, 0), level["errors"]
    assert level["output_tokens"] == requests * 8
    assert level["request_throughput"] > 0 and level["output_throughput_tok_s"] > 0
    for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert 0 < level[metric]["p50"] <= level[metric]["p99"], (metric, level[metric])
    assert level["e2e_ms"]["p50"] >= level["ttft_ms"]["p50"]
    assert level["memory_gb"] > 0 and level["memory_kind"] == "process RSS"


def test_bench_serve_starts_a_server_and_reports_each_concurrency(checkpoint):
    result = run_cli("bench", checkpoint("llama"), "--serve", "--device", "cpu", "--concurrency", "1,4",
                     "--num-prompts", "8", *SHORT)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["started_here"] and report["request_rate"] == "inf"
    assert (report["model"], report["device"], report["vocab_size"]) == ("llama", "cpu", 320)
    assert [level["concurrency"] for level in report["levels"]] == [1, 4]
    for level in report["levels"]:
        _check_level(level, level["concurrency"], 8)


@pytest.fixture(scope="module")
def keyed_server(checkpoint):
    srv = TestServer(checkpoint("llama"), "--api-key", "k3y")
    yield srv
    assert srv.stop() == 0


def test_bench_against_a_running_server_with_its_key(keyed_server):
    result = run_cli("bench", "--server", keyed_server.url, "--api-key", "k3y", "--concurrency", "2",
                     "--num-prompts", "4", *SHORT)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["server"] == keyed_server.url and "started_here" not in report
    _check_level(report["levels"][0], 2, 4)
    assert (report["prompts"], report["exact_lengths"]) == ("token ids", True)
    sessions = report["stability"]["session_switch"]
    assert (sessions["sessions"], sessions["turns"], sessions["failed"]) == (4, 3, 0)
    assert sessions["first_turn_ttft_ms"]["p50"] > 0 and sessions["follow_up_ttft_ms"]["p50"] > 0
    table = run_cli("bench", "--server", keyed_server.url, "--api-key", "k3y", "--concurrency", "1",
                    "--num-prompts", "2", "--prompt-len", "4", "--new-tokens", "4")
    assert table.code == 0 and "TTFT" in table.stdout and "ITL" in table.stdout and "E2E" in table.stdout


@pytest.mark.parametrize(("args", "fragments"), [
    (("--server", "http://127.0.0.1:9"), ("--endpoint http://127.0.0.1:9: unreachable (ConnectError",)),
    (("--endpoint", "http://127.0.0.1:9", "MODEL"), ("MODEL: no such file or directory",)),
    (("--endpoint", "127.0.0.1:9"), ("--endpoint 127.0.0.1:9: not an http:// or https:// URL",)),
    (("--model", "m"), ("missing MODEL (or --endpoint URL)",)),
    (("--serve",), ("--serve needs MODEL",)),
    (("--server", "http://127.0.0.1:9", "--concurrency", "0"), ("--concurrency '0': sizes must be at least 1",)),
])
def test_bench_serving_bad_input_is_one_line(args, fragments):
    assert_one_line_error(run_cli("bench", *args), *fragments)


def test_bench_against_a_server_without_the_key(keyed_server):
    assert_one_line_error(run_cli("bench", "--server", keyed_server.url, "--concurrency", "1"),
                          f"--endpoint {keyed_server.url}: HTTP 401, the API key was refused")
