"""Load on an OpenAI-compatible server, measured as vLLM's `benchmark_serving` measures it.

Each request streams `/v1/completions` (token-id prompt, `ignore_eos`, exactly `max_tokens` out) and
its client-side clock gives: TTFT (request sent → first chunk with text), ITL (every gap between two
chunks), TPOT ((end − first token) / (tokens − 1), tokens from the usage chunk) and E2E latency.
Requests are sent as fast as the concurrency limit allows (request rate unbounded). The run's
request and output throughput are completed requests and generated tokens over its wall time.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from runtime.evaluation.bench.stats import distribution


@dataclass
class RequestResult:
    ok: bool
    error: str | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    e2e: float | None = None

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.e2e is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


async def _one(client, model: str, prompt: list[int] | str, max_tokens: int) -> RequestResult:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    result = RequestResult(ok=False)
    start = time.perf_counter()
    last = None
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                result.error = f"HTTP {response.status_code}: {text[:200]}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    result.error = chunk["error"].get("message", "error in stream")
                    return result
                if chunk.get("usage"):
                    result.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    result.output_tokens = chunk["usage"]["completion_tokens"]
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    now = time.perf_counter()
                    if last is None:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
    except Exception as exc:  # noqa: BLE001 - a failed request is a result, counted and reported
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.e2e = time.perf_counter() - start
    result.ok = result.ttft is not None and result.output_tokens > 0
    if not result.ok:
        result.error = "the stream ended without text or usage"
    return result


async def run_load(url: str, model: str, prompts: list[list[int]] | list[str], max_tokens: int, concurrency: int,
                   api_key: str | None = None) -> tuple[list[RequestResult], float]:
    """Every prompt once, at most `concurrency` in flight; the results (in prompt order) and the wall time."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=None) as client:
        async def limited(prompt):
            async with gate:
                return await _one(client, model, prompt, max_tokens)

        start = time.perf_counter()
        results = await asyncio.gather(*(limited(p) for p in prompts))
        return list(results), time.perf_counter() - start


def summarize_load(results: list[RequestResult], wall: float) -> dict[str, Any]:
    """vLLM's serving metrics in ms, plus the seed article's throughput and average ms/token."""
    done = [r for r in results if r.ok]
    output = sum(r.output_tokens for r in done)
    ms = 1000.0
    return {
        "requests": len(results), "completed": len(done), "failed": len(results) - len(done), "output_tokens": output,
        "errors": sorted({r.error for r in results if r.error})[:5], "duration_s": wall,
        "request_throughput": len(done) / wall if wall > 0 else None,
        "output_throughput_tok_s": output / wall if wall > 0 else None,
        "total_token_throughput_tok_s": (output + sum(r.prompt_tokens for r in done)) / wall if wall > 0 else None,
        "latency_ms_per_token": (sum(r.e2e * ms / r.output_tokens for r in done) / len(done)) if done else None,
        "ttft_ms": distribution([r.ttft * ms for r in done]),
        "tpot_ms": distribution([r.tpot * ms for r in done if r.tpot is not None]),
        "itl_ms": distribution([gap * ms for r in done for gap in r.itl]),
        "e2e_ms": distribution([r.e2e * ms for r in done]),
    }


def server_memory(url: str) -> dict[str, float | None]:
    """The server's memory from its /metrics: the device allocator's peak on CUDA/NPU, else the
    process's resident set (on CPU the KV pool is allocated up front, so that is its high level)."""
    import httpx

    values: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name, _, value = line.rpartition(" ")
        key = name.split("{", 1)[0]
        if key in ("process_resident_memory_bytes", "ascendkit:device_memory_peak_bytes"):
            values[key] = float(value)
    device = values.get("ascendkit:device_memory_peak_bytes")
    rss = values.get("process_resident_memory_bytes")
    chosen = device if device is not None else rss
    return {"memory_gb": chosen / 1e9 if chosen is not None else None,
            "memory_kind": "device peak" if device is not None else "process RSS"}
