"""`ascendkit bench --endpoint URL` (alias `--server`; or `bench MODEL --serve`): the serving benchmark.

vLLM's `benchmark_serving` metrics against any OpenAI-compatible server — TTFT, TPOT, ITL and E2E
latency (p50, p99), request and output throughput — at each concurrency level with the request rate
unbounded, so the figures compare with vLLM's own. Prompts are seeded random token ids (vLLM's
"random" dataset) of `prompt_len` tokens where the server takes token-id prompts (ours, vLLM), else
their text (`--tokenizer`); every request generates exactly `new_tokens` where the server honours
`ignore_eos`. Then the seed article's stability figures: TPOT's spread under the load, the session
switch and (asked for) long context (`runtime.evaluation.stability`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from runtime.evaluation.bench.load import run_load, summarize_load
from runtime.evaluation.endpoint import open_endpoint

DEFAULT_CONCURRENCY = (1, 4, 16)


def bench_server(url: str, *, concurrency: list[int], num_prompts: int | None, prompt_len: int, new_tokens: int,
                 seed: int = 0, api_key: str | None = None, served_model: str | None = None,
                 tokenizer_dir: Path | None = None, warmup: int = 2, sessions: int = 4, turns: int = 3,
                 long_context: bool = False, pid: int | None = None) -> dict[str, Any]:
    """Each concurrency level in turn (after `warmup` requests), then the stability figures; the
    report `--json` prints."""
    from runtime.evaluation.load_prompts import PromptMaker
    from runtime.evaluation.server_memory import server_memory
    from runtime.evaluation.smoke import Measures, endpoint_tokenizer, stability_figures

    tokenizer = endpoint_tokenizer(None, tokenizer_dir)  # a checkpoint without a tokenizer: prompts as words
    endpoint = open_endpoint(url, served_model, api_key)
    maker = PromptMaker(endpoint, tokenizer, seed)
    count = (lambda text: len(tokenizer.encode(text, add_special_tokens=False))) if tokenizer is not None else None

    def prompts(n: int) -> list:
        return [maker.random(prompt_len) for _ in range(n)]

    asyncio.run(run_load(endpoint, prompts(warmup), new_tokens, warmup, count))
    levels = []
    for c in concurrency:
        n = num_prompts or max(8, 4 * c)
        results, wall = asyncio.run(run_load(endpoint, prompts(n), new_tokens, c, count))
        levels.append({"concurrency": c, **summarize_load(results, wall), **server_memory(endpoint, pid)})
    busiest = levels[-1]
    stability = stability_figures(endpoint, tokenizer, maker, busiest, Measures(
        concurrency=max(concurrency), prompt_len=prompt_len, sessions=sessions, turns=turns,
        long_context=long_context))
    ours = endpoint.ours or {}
    return {"server": endpoint.url, "model": endpoint.model, "endpoint": endpoint.summary(), **ours,
            "device": ours.get("device", "endpoint"), "dtype": ours.get("dtype"),
            "max_num_seqs": ours.get("max_num_seqs"), "prompt_len": prompt_len, "new_tokens": new_tokens,
            "prompts": "token ids" if maker.vocab is not None else "text" if maker.exact else "words (no tokenizer)",
            "exact_lengths": endpoint.has("ignore_eos"), "request_rate": "inf", "levels": levels,
            "stability": stability}


def bench_started_server(model: Path, engine_kwargs: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """`bench MODEL --serve`: the same benchmark against `ascendkit serve MODEL` started for it."""
    from runtime.engine.options import serve_args
    from runtime.server.process import ServerProcess

    with ServerProcess(model, serve_args(engine_kwargs)) as server:
        report = bench_server(server.url, pid=server.pid, tokenizer_dir=model if model.is_dir() else None, **kwargs)
    report["started_here"] = True
    return report


def print_serving_report(report: dict[str, Any]) -> None:
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 170)
    served = (f" on {report['device']} ({report['dtype']}, max_num_seqs {report['max_num_seqs']})"
              if report.get("max_num_seqs") else "")
    console.print(f"[bold]ascendkit bench --endpoint[/] {report['server']}"
                  + (" (started for this run)" if report.get("started_here") else "")
                  + f" · model {report['model']}{served} · {report['prompt_len']} in / {report['new_tokens']} out"
                    f" ({report['prompts']}" + ("" if report["exact_lengths"] else "; answers may end early: no "
                                                                                    "ignore_eos")
                  + ") · request rate unbounded")
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
    from runtime.evaluation.smoke import stability_lines

    for line in stability_lines(report.get("stability", {})):
        console.print(escape(line))
    absent = [name for name, there in report["endpoint"]["extras"].items() if not there]
    if absent:
        console.print("absent on this server (vLLM's extras): " + ", ".join(absent))
