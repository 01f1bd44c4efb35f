"""`ascendkit bench --server URL` (or `bench MODEL --serve`): the serving benchmark.

vLLM's `benchmark_serving` metrics against an OpenAI-compatible server — TTFT, TPOT, ITL and E2E
latency (p50, p99), request and output throughput — at each concurrency level with the request rate
unbounded, so the figures compare with vLLM's own. Prompts are seeded random token ids (vLLM's
"random" dataset) of `prompt_len` tokens; every request generates exactly `new_tokens` (ignore_eos).
The vocabulary comes from the server's `/v1/models` (`vocab_size`, which `ascendkit serve` reports).
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from ascend_common.errors import UserError
from runtime.evaluation.bench.load import run_load, server_memory, summarize_load

DEFAULT_CONCURRENCY = (1, 4, 16)


def served_model(url: str, api_key: str | None = None) -> dict[str, Any]:
    """The server's model card (`/v1/models`); its "ascendkit" entry has vocab_size, dtype, device."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/v1/models", headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise UserError(f"--server {url}: cannot reach it ({type(exc).__name__}: {exc})") from None
    if response.status_code != 200:
        raise UserError(f"--server {url}: /v1/models answered HTTP {response.status_code}: {response.text[:200]}")
    card = response.json()["data"][0]
    if "ascendkit" not in card:
        raise UserError(f"--server {url}: its /v1/models has no vocab_size; bench --server drives `ascendkit serve`")
    return card


def bench_server(url: str, *, concurrency: list[int], num_prompts: int | None, prompt_len: int, new_tokens: int,
                 seed: int = 0, api_key: str | None = None, warmup: int = 2) -> dict[str, Any]:
    """Each concurrency level in turn (after `warmup` requests); the report `--json` prints."""
    url = url.rstrip("/")
    card = served_model(url, api_key)
    model, vocab = card["id"], card["ascendkit"]["vocab_size"]
    rng = random.Random(seed)

    def prompts(n: int) -> list[list[int]]:
        return [[rng.randrange(1, vocab) for _ in range(prompt_len)] for _ in range(n)]

    asyncio.run(run_load(url, model, prompts(warmup), new_tokens, warmup, api_key))
    levels = []
    for c in concurrency:
        count = num_prompts or max(8, 4 * c)
        results, wall = asyncio.run(run_load(url, model, prompts(count), new_tokens, c, api_key))
        levels.append({"concurrency": c, **summarize_load(results, wall), **server_memory(url)})
    return {"server": url, "model": model, **card["ascendkit"], "prompt_len": prompt_len, "new_tokens": new_tokens,
            "request_rate": "inf", "levels": levels}


def bench_started_server(model: Path, engine_kwargs: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """`bench MODEL --serve`: the same benchmark against `ascendkit serve MODEL` started for it."""
    from runtime.engine.options import serve_args
    from runtime.server.process import ServerProcess

    with ServerProcess(model, serve_args(engine_kwargs)) as server:
        report = bench_server(server.url, **kwargs)
    report["started_here"] = True
    return report


def print_serving_report(report: dict[str, Any]) -> None:
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 170)
    console.print(f"[bold]ascendkit bench --server[/] {report['server']}"
                  + (" (started for this run)" if report.get("started_here") else "")
                  + f" · model {report['model']} on {report['device']} ({report['dtype']}, max_num_seqs "
                    f"{report['max_num_seqs']}) · {report['prompt_len']} in / {report['new_tokens']} out · "
                    f"request rate unbounded")
    table = Table(title="serving benchmark (times in ms, p50 / p99)", title_justify="left")
    for col in ("concurrency", "requests", "failed", "req/s", "output tok/s", "TTFT", "TPOT", "ITL", "E2E",
                "memory GB"):
        table.add_column(col, justify="right")

    def pair(d: dict) -> str:
        return "-" if d["p50"] is None else f"{d['p50']:.1f} / {d['p99']:.1f}"

    for level in report["levels"]:
        table.add_row(str(level["concurrency"]), str(level["requests"]), str(level["failed"]),
                      f"{level['request_throughput']:.2f}", f"{level['output_throughput_tok_s']:.1f}",
                      pair(level["ttft_ms"]), pair(level["tpot_ms"]), pair(level["itl_ms"]), pair(level["e2e_ms"]),
                      "-" if level["memory_gb"] is None else f"{level['memory_gb']:.2f}")
    console.print(table)
    for level in report["levels"]:
        for error in level["errors"]:
            console.print(f"[red]concurrency {level['concurrency']}: {escape(error)}[/]")
