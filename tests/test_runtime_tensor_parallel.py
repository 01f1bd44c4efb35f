"""Tensor parallel: N worker processes on torch.distributed (gloo here) give the greedy tokens of one
rank — every fixture family at N = 2, KV heads duplicated at N = 4, SmolLM2-135M at N = 3 — a model
that does not split fails fast with the counts, and no worker outlives its engine: not after a
worker dies, not after a worker fails to load, not after Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from ascend_common.errors import UserError
from fixtures import checkpoints as fx
from runtime import LLM, SamplingParams

PROMPTS = [[5, 77, 12, 190, 33], [250, 3, 3, 41, 9, 100, 200, 17, 64, 31, 8], [301, 2, 44],
           [(i * 37 + 11) % 250 + 3 for i in range(40)]]
GREEDY = SamplingParams(temperature=0, max_tokens=12)


def tokens(llm: LLM, prompts=PROMPTS, params=GREEDY) -> list[list[int]]:
    return [o.token_ids for o in llm.generate(prompts, params, progress=False)]


def alive(pids: list[int]) -> list[int]:
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("family", fx.FAMILIES + fx.MOE_FAMILIES)
def test_two_ranks_give_the_tokens_of_one(checkpoint, family):
    """fp32, a mixed batch whose 40-token prompt is prefilled in chunks of 16. MoE families: each
    rank holds half of every expert's (and the shared expert's) width, the router replicated."""
    args = {"device": "cpu", "dtype": "float32", "block_size": 4, "kv_cache_memory": "2MiB",
            "max_num_batched_tokens": 16}
    want = tokens(LLM(checkpoint(family), **args))
    llm = LLM(checkpoint(family), tensor_parallel_size=2, **args)
    try:
        pids = llm.engine.runner.pids
        assert len(alive(pids)) == 1
        cfg = llm.engine.runner.cfg
        assert cfg.num_heads == 2 and cfg.num_kv_heads in (1, 2)
        assert cfg.moe_intermediate_size == (16 if family in fx.MOE_FAMILIES else 0)
        assert tokens(llm) == want
        llm.engine.block_manager.check_whole()
    finally:
        llm.engine.shutdown()
    assert alive(pids) == []


def test_kv_heads_are_duplicated_when_ranks_outnumber_them(checkpoint):
    """4 ranks, 4 query heads, 2 KV heads: each KV head lives on the two ranks whose queries use it."""
    args = {"device": "cpu", "dtype": "float32", "kv_cache_memory": "2MiB"}
    want = tokens(LLM(checkpoint("llama"), **args), PROMPTS[:2])
    llm = LLM(checkpoint("llama"), tensor_parallel_size=4, **args)
    try:
        assert (llm.engine.runner.cfg.num_heads, llm.engine.runner.cfg.num_kv_heads) == (1, 1)
        assert tokens(llm, PROMPTS[:2]) == want
    finally:
        llm.engine.shutdown()


def test_a_dropped_engine_stops_its_workers_and_a_second_one_waits_for_shutdown(checkpoint):
    args = {"device": "cpu", "dtype": "float32", "kv_cache_memory": "2MiB", "tensor_parallel_size": 2}
    llm = LLM(checkpoint("llama"), **args)
    with pytest.raises(UserError, match=r"^another tensor-parallel engine is running in this process"):
        LLM(checkpoint("qwen2"), **args)
    pids = llm.engine.runner.pids
    del llm  # no shutdown(): the finalizer stops the workers and leaves the process group
    import gc

    gc.collect()
    assert alive(pids) == []
    LLM(checkpoint("qwen2"), **args).engine.shutdown()


def test_a_model_that_does_not_split_fails_before_any_process_starts(checkpoint, smollm2_bf16):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(UserError, match=r"^tensor parallel size 2: the model's 9 attention heads are not divisible "
                                        r"by 2$"):
        LLM(smollm2_bf16, device="cpu", tensor_parallel_size=2)
    with pytest.raises(UserError, match=r"tensor parallel size 3: the model's 4 attention heads are not divisible"):
        LLM(checkpoint("llama"), device="cpu", tensor_parallel_size=3)
    with pytest.raises(UserError, match=r"tensor_parallel_size 0: expected an integer >= 1"):
        LLM(checkpoint("llama"), device="cpu", tensor_parallel_size=0)
    assert {p.pid for p in psutil.Process().children(recursive=True)} == before


def test_a_worker_that_dies_stops_every_rank(checkpoint):
    llm = LLM(checkpoint("llama"), device="cpu", dtype="float32", kv_cache_memory="2MiB", tensor_parallel_size=4)
    pids = llm.engine.runner.pids
    tokens(llm, PROMPTS[:1])
    os.kill(pids[0], signal.SIGKILL)
    with pytest.raises(UserError, match=r"^tensor parallel rank 1 exited \(code -9\); every rank has been stopped$"):
        tokens(llm, PROMPTS[:1])
    assert alive(pids) == []


def test_a_worker_that_cannot_load_stops_every_rank(checkpoint, monkeypatch):
    monkeypatch.setenv("ASCENDKIT_FAILPOINT", "tp-rank-load:2")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(UserError, match=r"^tensor parallel rank 2: RuntimeError: injected failure while loading$"):
        LLM(checkpoint("llama"), device="cpu", dtype="float32", kv_cache_memory="2MiB", tensor_parallel_size=4)
    time.sleep(0.2)
    assert alive([p.pid for p in psutil.Process().children(recursive=True) if p.pid not in before]) == []


def test_ctrl_c_leaves_no_worker_behind(checkpoint):
    # Python keeps SIGINT ignored when its parent ignored it (pytest started as `cmd &` by a
    # non-interactive shell): restore Ctrl-C's KeyboardInterrupt, as an interactive terminal has it.
    script = textwrap.dedent(f"""
        import signal
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from runtime import LLM, SamplingParams
        llm = LLM({str(checkpoint("llama"))!r}, device="cpu", dtype="float32", kv_cache_memory="2MiB",
                  tensor_parallel_size=2)
        print(*llm.engine.runner.pids, flush=True)
        params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
        while True:
            llm.generate([[5, 77, 12]], params, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(alive(workers)) == 1
        time.sleep(1.0)  # in the middle of generating
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        proc.wait(timeout=60)
    finally:  # a failed run must not leave a generating group behind for the rest of the suite
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr.read()
    deadline = time.time() + 10
    while alive(workers) and time.time() < deadline:
        time.sleep(0.1)
    assert alive(workers) == []


@pytest.mark.slow
def test_smollm2_on_three_ranks_gives_the_tokens_of_one(smollm2_bf16):
    """9 heads and 3 KV heads: 3 heads and 1 KV head per rank (fp32: the all-reduce's order of sums is
    exact enough there; in bf16 the partial sums round, as in any tensor-parallel engine)."""
    tokenizer_prompts = ["The capital of France is", "def fibonacci(n):", "Water boils at a temperature of"]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    args = {"device": "cpu", "dtype": "float32", "kv_cache_memory": "64MiB"}
    want = tokens(LLM(smollm2_bf16, **args), tokenizer_prompts, params)
    llm = LLM(smollm2_bf16, tensor_parallel_size=3, **args)
    try:
        assert (llm.engine.runner.cfg.num_heads, llm.engine.runner.cfg.num_kv_heads) == (3, 1)
        assert tokens(llm, tokenizer_prompts, params) == want
    finally:
        llm.engine.shutdown()


def test_the_server_serves_on_two_ranks_and_stops_them(checkpoint):
    from server_process import TestServer

    path = checkpoint("llama")
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    want = LLM(path, device="cpu", kv_cache_memory="2MiB").generate([PROMPTS[0]], params, progress=False)[0].text
    srv = TestServer(path, "--tensor-parallel-size", "2", "--kv-cache-memory", "4MiB")
    try:
        workers = [c.pid for c in psutil.Process(srv.pid).children(recursive=True)]
        assert len(alive(workers)) == 1
        model = srv.client.get("/v1/models").json()["data"][0]["id"]
        body = srv.client.post("/v1/completions", json={"model": model, "prompt": PROMPTS[0], "max_tokens": 6,
                                                        "temperature": 0, "ignore_eos": True}).json()
        assert body["usage"]["completion_tokens"] == 6 and body["choices"][0]["text"] == want
    finally:
        assert srv.stop() == 0
    assert alive(workers) == []
