"""`ascendkit serve` as a real process on 127.0.0.1, driven by the `openai` client (sync and async) and
httpx: greedy tokens against transformers, streaming, stops, concurrency, disconnects, the bounded
queue, bad requests, the API key, and a bounded soak. Every test that loads the server checks that
the KV pool is whole again afterwards, through /metrics."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time

import httpx
import openai
import psutil
import pytest
import torch
from conftest import assert_one_line_error, run_cli
from greedy_reference import assert_greedy_equal, hf_greedy
from server_process import TestServer
from transformers import AutoTokenizer

MODEL = "llama"
PROMPTS = [[5, 77, 12, 190, 33], [250, 3, 3, 41, 9, 100, 200, 17, 64, 31, 8], [301, 2]]


@pytest.fixture(scope="module")
def model_dir(checkpoint):
    return checkpoint("llama")


@pytest.fixture(scope="module")
def server(model_dir):
    srv = TestServer(model_dir, "--max-num-seqs", "8", "--max-queue", "128", "--kv-cache-memory", "16MiB")
    yield srv
    assert srv.stop() == 0, srv.stderr()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def settle(server: TestServer, timeout: float = 30) -> dict[str, float]:
    """Wait until no request runs or waits; return the metrics, with every KV block free."""
    deadline = time.monotonic() + timeout
    while True:
        m = server.metrics()
        if m["num_requests_running"] == 0 and m["num_requests_waiting"] == 0:
            break
        assert time.monotonic() < deadline, m
        time.sleep(0.05)
    assert m["kv_cache_blocks_free"] == m["kv_cache_blocks_total"], m
    assert m["kv_cache_usage_perc"] == 0, m
    return m


def token_ids(logprobs_tokens: list[str]) -> list[int]:
    assert all(t.startswith("token_id:") for t in logprobs_tokens), logprobs_tokens
    return [int(t.split(":", 1)[1]) for t in logprobs_tokens]


def test_models_health_and_the_warm_up_log(server):
    models = server.client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert models["data"][0]["max_model_len"] == 512
    assert server.client.get("/health").status_code == 200
    assert "cpu kernel launch success" in server.stderr()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_completion_greedy_tokens_equal_transformers(server, client, model_dir, prompt):
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, logprobs=0,
                                  extra_body={"return_tokens_as_token_ids": True})
    ours = token_ids(r.choices[0].logprobs.tokens)
    assert_greedy_equal(ours, hf_greedy(model_dir, torch.bfloat16, prompt, 16), torch.bfloat16, "server")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert r.choices[0].text == tokenizer.decode(ours, skip_special_tokens=True)
    assert r.usage.prompt_tokens == len(prompt) and r.usage.completion_tokens == len(ours)
    assert r.choices[0].finish_reason == ("length" if len(ours) == 16 else "stop")
    settle(server)


def test_chat_uses_the_chat_template_and_matches_transformers(server, client, model_dir):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello there"}]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0,
                                       logprobs=True, top_logprobs=2,
                                       extra_body={"return_tokens_as_token_ids": True})
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]
    content = r.choices[0].logprobs.content
    ours = token_ids([c.token for c in content])
    assert_greedy_equal(ours, hf_greedy(model_dir, torch.bfloat16, prompt, 12), torch.bfloat16, "chat")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == tokenizer.decode(ours, skip_special_tokens=True)
    assert r.usage.prompt_tokens == len(prompt)
    assert all(len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob >= c.top_logprobs[1].logprob
               for c in content)
    settle(server)


def test_streaming_equals_non_streaming_and_ends_with_done(server, client):
    full = client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=20, temperature=0)
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=20, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == full.usage.total_tokens
    assert all(c.usage is None for c in chunks[:-1])
    raw = server.client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}).text
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    settle(server)


def test_async_client_streams_chat(server):
    async def run() -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "tell me"}]
        stream = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10,
                                                      temperature=0, stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream]
        whole = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0)
        await client.close()
        return "".join(parts), whole.choices[0].message.content

    streamed, whole = asyncio.run(run())
    assert streamed == whole
    settle(server)


def _printable_stop(text: str) -> tuple[str, str]:
    """A 2-character stop string that first occurs a few characters into `text`, and the text before it."""
    for at in range(3, len(text) - 2):
        stop = text[at:at + 2]
        if stop.isprintable() and "\ufffd" not in stop and text.find(stop) == at:
            return stop, text[:at]
    raise AssertionError(f"no usable stop string in {text!r}: the seeded fixture's output changed")


def test_a_stop_string_is_never_streamed(server, client):
    full = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=40, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop, before = _printable_stop(full)
    for stream in (False, True):
        r = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=40, temperature=0, stop=[stop],
                                      stream=stream, extra_body={"ignore_eos": True})
        chunks = list(r) if stream else [r]
        assert "".join(c.choices[0].text for c in chunks) == before
        assert chunks[-1].choices[0].finish_reason == "stop"
    settle(server)


def test_seeded_sampling_is_reproducible(server, client):
    def sample(seed: int) -> str:
        return client.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=24, temperature=1.0,
                                         top_p=0.9, seed=seed,
                                         extra_body={"top_k": 50, "ignore_eos": True}).choices[0].text
    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in range(4)}) > 1
    settle(server)


def test_a_list_of_prompts_gets_one_choice_each_in_order(server, client):
    batch = client.completions.create(model=MODEL, prompt=PROMPTS, max_tokens=8, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1, 2]
    for prompt, choice in zip(PROMPTS, batch.choices):
        alone = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
        assert choice.text == alone.choices[0].text
    settle(server)


def test_64_concurrent_streams(server):
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str, int]:
        stream = await client.completions.create(model=MODEL, prompt=PROMPTS[i % 3], max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True})
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
            else:
                usage = chunk.usage
        return text, usage.completion_tokens

    async def run():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        results = await asyncio.gather(*(one(client, i) for i in range(64)))
        await client.close()
        return results

    results = asyncio.run(run())
    assert all(n == 12 for _, n in results)
    m = settle(server)
    assert m["generation_tokens_total"] >= 64 * 12


def test_clients_that_disconnect_free_their_blocks(server):
    """Streams dropped after a random number of chunks, and non-streaming requests whose client
    times out: every one is aborted and its blocks freed."""
    aborted_before = _aborted(server)
    rng = random.Random(0)

    async def drop_stream(client: httpx.AsyncClient, after: int) -> None:
        body = {"prompt": PROMPTS[after % 3], "max_tokens": 400, "stream": True, "ignore_eos": True}
        async with client.stream("POST", "/v1/completions", json=body) as response:
            seen = 0
            async for line in response.aiter_lines():
                seen += line.startswith("data: ")
                if seen > after:
                    return  # leaving the block closes the connection mid-stream

    async def drop_waiting(client: httpx.AsyncClient) -> None:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/completions", json={"prompt": PROMPTS[0], "max_tokens": 400, "ignore_eos": True},
                              timeout=0.5)

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            await asyncio.gather(*(drop_stream(client, rng.randint(0, 6)) for _ in range(24)),
                                 *(drop_waiting(client) for _ in range(6)))

    asyncio.run(run())
    settle(server)
    assert _aborted(server) - aborted_before == 30


def _aborted(server: TestServer) -> float:
    """ascendkit:request_success_total{finished_reason="abort"}."""
    for line in server.client.get("/metrics").text.splitlines():
        if line.startswith("ascendkit:request_success_total{") and 'finished_reason="abort"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_bad_requests_get_400_naming_the_field(server):
    def post(path: str, body: str | dict) -> tuple[int, dict]:
        content = body if isinstance(body, str) else json.dumps(body)
        r = server.client.post(path, content=content, headers={"content-type": "application/json"})
        return r.status_code, r.json()["error"]

    cases = [
        ("/v1/completions", '{"prompt": "hi",', 400, None, "malformed JSON body"),
        ("/v1/completions", {"prompt": "hi", "max_token": 3}, 400, "max_token", "Unrecognized request argument"),
        ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, 400, "temperature", "valid number"),
        ("/v1/completions", {"prompt": "hi", "top_p": 2}, 400, "top_p", "top_p must be in (0, 1]"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens", "max_tokens must be >= 1"),
        ("/v1/completions", {"prompt": "hi", "n": 2}, 400, "n", "n=2"),
        ("/v1/completions", {"prompt": "hi", "logprobs": 21}, 400, "logprobs", "<= 20"),
        ("/v1/completions", {"prompt": [1, 2, 999]}, 400, "prompt", "prompt token ids must be in [0, 320)"),
        ("/v1/completions", {"prompt": [7] * 600}, 400, "prompt", "does not fit max_model_len 512"),
        ("/v1/completions", {}, 400, "prompt", "Field required"),
        ("/v1/chat/completions", {"messages": []}, 400, "messages", "at least 1 item"),
        ("/v1/chat/completions", {"messages": [{"role": "bot", "content": "x"}]}, 400, "messages.0.role", "'user'"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "model": "gpt-4"}, 404, "model",
         "the model `gpt-4` does not exist"),
    ]
    for path, body, status, param, fragment in cases:
        code, error = post(path, body)
        assert (code, error["param"]) == (status, param), (body, error)
        assert fragment in error["message"], (body, error)
        assert error["type"] == "invalid_request_error"
    settle(server)


def test_queue_full_is_503_and_the_server_recovers(model_dir):
    srv = TestServer(model_dir, "--max-num-seqs", "1", "--max-queue", "1", "--kv-cache-memory", "4MiB")
    try:
        async def run() -> tuple[int, dict]:
            body = {"prompt": PROMPTS[0], "max_tokens": 480, "stream": True, "ignore_eos": True}
            async with httpx.AsyncClient(base_url=srv.url, timeout=120) as client, \
                    client.stream("POST", "/v1/completions", json=body) as first, \
                    client.stream("POST", "/v1/completions", json=body) as second:
                assert (first.status_code, second.status_code) == (200, 200)
                third = await client.post("/v1/completions", json={"prompt": "hi"})
                return third.status_code, third.json()

        status, body = asyncio.run(run())
        assert status == 503
        assert body["error"]["code"] == "queue_full" and "at capacity" in body["error"]["message"]
        settle(srv)
        assert srv.client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
    finally:
        assert srv.stop() == 0


def test_api_key(model_dir):
    srv = TestServer(model_dir, env={"ASCENDKIT_API_KEY": "s3cret"})
    try:
        body = {"prompt": "hi", "max_tokens": 2}
        missing = srv.client.post("/v1/completions", json=body)
        wrong = srv.client.post("/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
        assert (missing.status_code, wrong.status_code) == (401, 401)
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        assert srv.client.get("/v1/models").status_code == 401
        assert srv.client.get("/health").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="nope", max_retries=0).models.list()
        good = openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0)
        assert good.completions.create(model=MODEL, prompt="hi", max_tokens=2).usage.completion_tokens >= 1
    finally:
        assert srv.stop() == 0


def test_soak_has_no_errors_and_rss_stops_growing(model_dir):
    """Eight clients in a loop for 18 s on a server with a small KV pool (so the pool's pages and the
    prefix cache's index fill during the first third); its RSS, sampled each second, levels off:
    the last third grows less than 8 MiB over the middle third. (Measured here over 30 s: ~2,700
    requests, the RSS flat from the second second on, 373-374 MiB; 45 s showed nothing more.)

    In float32: on CPU, bf16 matmuls go through oneDNN, whose per-shape kernel caches grow with every
    new batch shape until they fill (measured: 898 -> 1065 MB over 19k requests of random lengths,
    levelling off; float32 stays flat at 360 MB), which would hide a leak of the server's own."""
    srv = TestServer(model_dir, "--max-num-seqs", "8", "--kv-cache-memory", "1MiB", "--dtype", "float32")
    proc = psutil.Process(srv.proc.pid)
    errors: list[str] = []
    samples: list[int] = []
    duration = 18.0

    async def worker(client: openai.AsyncOpenAI, i: int, end: float) -> int:
        done = 0
        while time.monotonic() < end:
            try:
                if i % 2:
                    stream = await client.completions.create(model=MODEL, prompt=PROMPTS[done % 3], max_tokens=16,
                                                             stream=True, extra_body={"ignore_eos": True})
                    async for _ in stream:
                        pass
                else:
                    await client.chat.completions.create(model=MODEL, max_tokens=16, temperature=0.8, messages=[
                        {"role": "user", "content": f"question {done}"}])
                done += 1
            except Exception as exc:  # noqa: BLE001 - counted, then asserted to be none
                errors.append(repr(exc))
        return done

    async def sampler(end: float) -> None:
        while time.monotonic() < end:
            samples.append(proc.memory_info().rss)
            await asyncio.sleep(1.0)

    async def run() -> int:
        end = time.monotonic() + duration
        client = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        counts = await asyncio.gather(*(worker(client, i, end) for i in range(8)), sampler(end))
        await client.close()
        return sum(counts[:-1])

    try:
        requests = asyncio.run(run())
        assert errors == []
        assert requests > 100
        third = len(samples) // 3
        middle, last = max(samples[third:2 * third]), max(samples[2 * third:])
        assert last - middle < 8 * 2**20, [s >> 20 for s in samples]
        settle(srv)
    finally:
        assert srv.stop() == 0


def test_serve_bad_input_is_one_line(tmp_path, model_dir):
    assert_one_line_error(run_cli("serve", tmp_path / "missing", "--device", "cpu"), "missing")
    assert_one_line_error(run_cli("serve", model_dir, "--device", "cpu", "--tensor-parallel-size", "3"),
                          "tensor parallel size 3: the model's 4 attention heads are not divisible by 3")
    assert_one_line_error(run_cli("serve", model_dir, "--device", "cpu", "--host", "203.0.113.7"),
                          "cannot listen on 203.0.113.7:8000: Cannot assign requested address")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        assert_one_line_error(run_cli("serve", model_dir, "--port", port),
                              f"cannot listen on 127.0.0.1:{port}: Address already in use")
    alias = run_cli("--help", script="smoke_serve")
    assert alias.code == 0 and "--max-queue" in alias.stdout and "--api-key" in alias.stdout
