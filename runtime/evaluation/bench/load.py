"""Load on an OpenAI-compatible server, measured as vLLM's `benchmark_serving` measures it.

Each request streams `/v1/completions` (a token-id prompt and `ignore_eos`, so exactly `max_tokens` out,
where the server has those vLLM extras; a text prompt and an answer that may end early where not) and
its client-side clock gives: TTFT (request sent → first chunk with text), ITL (every gap between two
chunks), TPOT ((end − first token) / (tokens − 1), tokens from the usage chunk) and E2E latency.
Requests are sent as fast as the concurrency limit allows (request rate unbounded). The run's
request and output throughput are completed requests and generated tokens over its wall time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.evaluation.bench.stats import distribution
from runtime.evaluation.endpoint import Endpoint, StreamReader, request_body

#: the longest wait for a server's next bytes before a request counts as failed (a long prefill included)
STALL_S = 600.0


@dataclass
class RequestResult:
    ok: bool
    error: str | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    e2e: float | None = None
    done_marker: bool = True  # the stream ended with data: [DONE]
    counted: str = "usage"  # where output_tokens came from: the server's usage, the tokenizer, or chunks

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.e2e is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


async def one_request(client, endpoint: Endpoint, prompt: list[int] | str | list[dict], max_tokens: int,
                      kind: str = "plain", count_tokens: Callable[[str], int] | None = None) -> RequestResult:
    """One streamed greedy request, timed chunk by chunk. Token counts from the server's `usage`; where
    it gives none, from `count_tokens` (the tokenizer) on the text, else one per chunk."""
    route, body = request_body(endpoint, kind, prompt, max_tokens, stream=True, ignore_eos=True)
    result = RequestResult(ok=False)
    start = time.perf_counter()
    reader = StreamReader(kind, start)
    chunks, last = 0, None
    try:
        async with client.stream("POST", route, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                result.error = f"HTTP {response.status_code}: {text[:200]}"
                return result
            async for line in response.aiter_lines():
                going = reader.feed(line)
                if reader.piece:
                    now = time.perf_counter()
                    if last is not None:
                        result.itl.append(now - last)
                    last, chunks = now, chunks + 1
                if not going:
                    break
    except Exception as exc:  # noqa: BLE001 - a failed request is a result, counted and reported
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    answer = reader.finish()
    result.e2e, result.ttft, result.done_marker = time.perf_counter() - start, answer.ttft, bool(answer.done)
    if answer.error:
        result.error = answer.error
        return result
    if answer.usage:
        result.prompt_tokens = answer.usage.get("prompt_tokens", 0)
        result.output_tokens = answer.usage.get("completion_tokens", 0)
    elif count_tokens is not None:
        result.output_tokens, result.counted = count_tokens(answer.text), "tokenizer"
    else:
        result.output_tokens, result.counted = chunks, "chunks"
    result.ok = result.ttft is not None and result.output_tokens > 0
    if not result.ok:
        result.error = "the stream ended without text or usage"
    return result


async def run_load(endpoint: Endpoint, prompts: list[list[int]] | list[str], max_tokens: int, concurrency: int,
                   count_tokens: Callable[[str], int] | None = None) -> tuple[list[RequestResult], float]:
    """Every prompt once, at most `concurrency` in flight; the results (in prompt order) and the wall time."""
    async with load_client(endpoint, concurrency) as client:
        gate = asyncio.Semaphore(concurrency)

        async def limited(prompt):
            async with gate:
                return await one_request(client, endpoint, prompt, max_tokens, count_tokens=count_tokens)

        start = time.perf_counter()
        results = await asyncio.gather(*(limited(p) for p in prompts))
        return list(results), time.perf_counter() - start


def load_client(endpoint: Endpoint, concurrency: int):
    """An async client with `concurrency` connections; a request may take minutes (a long prompt), but no
    wait for the next chunk may take more than STALL_S."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # no limit on the whole request, but on each wait: a stalled deployment is a failed request, not a hang
    timeout = httpx.Timeout(None, connect=30, read=STALL_S, write=60)
    return httpx.AsyncClient(base_url=endpoint.url, headers=endpoint.headers, limits=limits, timeout=timeout)


def summarize_load(results: list[RequestResult], wall: float) -> dict[str, Any]:
    """vLLM's serving metrics in ms, plus the seed article's throughput and average ms/token."""
    done = [r for r in results if r.ok]
    output = sum(r.output_tokens for r in done)
    ms = 1000.0
    return {
        "requests": len(results), "completed": len(done), "failed": len(results) - len(done), "output_tokens": output,
        "errors": sorted({r.error for r in results if r.error})[:5], "duration_s": wall,
        "streams_without_done": sum(not r.done_marker for r in done),
        "tokens_counted_by": sorted({r.counted for r in done}),
        "request_throughput": len(done) / wall if wall > 0 else None,
        "output_throughput_tok_s": output / wall if wall > 0 else None,
        "total_token_throughput_tok_s": (output + sum(r.prompt_tokens for r in done)) / wall if wall > 0 else None,
        "latency_ms_per_token": (sum(r.e2e * ms / r.output_tokens for r in done) / len(done)) if done else None,
        "ttft_ms": distribution([r.ttft * ms for r in done]),
        "tpot_ms": distribution([r.tpot * ms for r in done if r.tpot is not None]),
        "itl_ms": distribution([gap * ms for r in done for gap in r.itl]),
        "e2e_ms": distribution([r.e2e * ms for r in done]),
    }
