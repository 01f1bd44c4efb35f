"""`ascendkit bench MODEL`: the runtime side by side with transformers (and llama.cpp) in one process.

Every system runs the same prompts (seeded token ids) on the same weights, in the same dtype, on the
same threads, and generates exactly the same number of tokens. Runs are interleaved and the medians
reported. What the seed article's table shows: throughput (tokens/s), average latency (ms/token),
memory (GB), plus TTFT and TPOT (p50, p99, standard deviation) and the ratio of the runtime to each
baseline. With --server/--serve: the serving benchmark over HTTP instead.

Here only the command: its options, their checks, and the dispatch to the workloads, the sweep or
the serving benchmark. Nothing heavy is imported at module level: `ascendkit --help` must stay fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ascend_common.cli_support import debug_option, output_file
from ascend_common.errors import UserError
from runtime.engine.options import DEVICE_CHOICES, DTYPE_CHOICES
from runtime.evaluation.bench.report import print_report
from runtime.evaluation.bench.runner import run_bench
from runtime.evaluation.bench.serving import (
    DEFAULT_CONCURRENCY,
    bench_server,
    bench_started_server,
    print_serving_report,
)
from runtime.evaluation.bench.workloads import (
    BASELINES,
    OPT_IN_BASELINES,
    DEFAULT_NEW_TOKENS,
    DEFAULT_PROMPT_LEN,
    PREFIX_FACTOR,
    SWEEP_SIZES,
    WORKLOADS,
    parse_list,
    parse_sizes,
)
from runtime.evaluation.endpoint import API_KEY_ENV
from runtime.evaluation.report_output import emit_report


@click.command("bench")
@click.argument("model", metavar="MODEL", required=False)
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="auto",
              show_default=True, help="auto: the dtype the checkpoint's config names.")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="cpu", show_default=True)
@click.option("--workloads", default=",".join(WORKLOADS), show_default=True,
              help="Comma list of: single (1 request), batch16, batch64 (mixed lengths), prefix (16 requests "
                   "sharing a long prefix, runtime with and without its prefix cache).")
@click.option("--baselines", default=",".join(BASELINES), show_default=True,
              help="Comma list of: hf (generate, static padded batch), hf-batch (generate_batch), llama-cpp "
                   "(llama-cpp-python on a GGUF), runtime-compiled (the runtime with --compile-decode; not "
                   "run unless named). Unavailable ones are skipped with a note.")
@click.option("--prompt-len", type=click.IntRange(min=1), default=None,
              help=f"Prompt length of `single` and the sweep; mixed lengths are 1/4x-2x it, the shared prefix "
                   f"{PREFIX_FACTOR}x it. [default: {DEFAULT_PROMPT_LEN}]")
@click.option("--new-tokens", type=click.IntRange(min=2), default=None,
              help=f"Tokens each request generates (the prefix workload: a quarter). [default: {DEFAULT_NEW_TOKENS}]")
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True,
              help="Interleaved runs of every system; medians are reported.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads [default: all cores].")
@click.option("--kv-cache-memory", default="auto", show_default=True,
              help="The runtime's KV pool (e.g. 2GiB); auto: what the largest workload needs.")
@click.option("--gguf", type=click.Path(path_type=Path), default=None,
              help="GGUF for the llama-cpp baseline [default: MODEL when it is a GGUF].")
@click.option("--sweep", is_flag=True, help="Instead of the workloads: batch sizes 1..128, and the max_num_seqs "
                                            "to use for a TPOT ceiling.")
@click.option("--sweep-sizes", default=",".join(map(str, SWEEP_SIZES)), show_default=True)
@click.option("--tpot-ms", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True,
              help="The sweep's ceiling on TPOT p50.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, callback=output_file, metavar="FILE.png",
              help="With --sweep: also draw throughput and TPOT against the batch size, the ceiling and the "
                   "recommendation, to this PNG (needs matplotlib: the [plot] extra).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prompts' token ids.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--output", type=click.Path(path_type=Path), default=None, callback=output_file,
              help="Also write the JSON report here.")
@click.option("--progress/--no-progress", default=True, help="Show progress (on a terminal).")
@click.option("--endpoint", "--server", "server_url", default=None, metavar="URL",
              help="Instead: vLLM's serving benchmark against the OpenAI-compatible server at URL (ours, vLLM, "
                   "vllm-ascend, MindIE, transformers serve); MODEL, if given, is the checkpoint it serves "
                   "(its tokenizer sizes the prompts).")
@click.option("--model", "served_model", default=None, metavar="NAME",
              help="With --endpoint: the served model [default: the only one /v1/models lists].")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(path_type=Path), default=None,
              help="With --endpoint: the tokenizer that sizes prompts and counts tokens [default: MODEL].")
@click.option("--sessions", type=click.IntRange(min=0), default=4, show_default=True,
              help="Serving benchmark: conversations interleaved turn by turn (the session-switch figure).")
@click.option("--turns", type=click.IntRange(min=2), default=3, show_default=True)
@click.option("--long-context", is_flag=True,
              help="Serving benchmark: also requests at 50/90/100% of max_model_len beside a load.")
@click.option("--serve", is_flag=True, help="Instead: the serving benchmark against MODEL served in this process.")
@click.option("--concurrency", default=",".join(map(str, DEFAULT_CONCURRENCY)), show_default=True,
              help="Serving benchmark: concurrency levels, request rate unbounded.")
@click.option("--num-prompts", type=click.IntRange(min=1), default=None,
              help="Serving benchmark: requests per level [default: max(8, 4 x concurrency)].")
@click.option("--api-key", envvar=API_KEY_ENV, default=None,
              help=f"Serving benchmark: the server's key [env: {API_KEY_ENV}].")
@debug_option
def bench_command(model: str | None, dtype: str, device: str, workloads: str, baselines: str, prompt_len: int | None,
                  new_tokens: int | None, repeat: int, threads: int | None, kv_cache_memory: str, gguf: Path | None,
                  sweep: bool, sweep_sizes: str, tpot_ms: float, plot: Path | None, seed: int, as_json: bool,
                  output: Path | None, progress: bool, server_url: str | None, served_model: str | None,
                  tokenizer_dir: Path | None, sessions: int, turns: int, long_context: bool, serve: bool,
                  concurrency: str, num_prompts: int | None, api_key: str | None) -> int:
    """Benchmark the runtime against transformers (and llama.cpp) on MODEL (a directory or a GGUF):
    throughput, latency, memory, TTFT and TPOT, side by side in one process. With --endpoint URL or
    --serve: vLLM's serving metrics (TTFT, TPOT, ITL, E2E, throughput) at each concurrency, and the
    stability figures (TPOT spread, session switch, long context)."""
    if plot is not None:
        _check_plot(sweep, server_url is not None or serve)  # its path: checked by output_file
    if server_url or serve:
        endpoint = {"served_model": served_model, "tokenizer_dir": tokenizer_dir, "sessions": sessions,
                    "turns": turns, "long_context": long_context, "api_key": api_key}
        report = _serving(model, server_url, dtype, device, kv_cache_memory, threads, concurrency, num_prompts,
                          prompt_len, new_tokens, seed, endpoint)
        emit_report(report, as_json, output, print_serving_report)
        return 0
    if model is None:
        raise UserError("missing MODEL (or --endpoint URL)")
    if served_model or tokenizer_dir:
        raise UserError("--model and --tokenizer name a deployment's model and tokenizer: add --endpoint URL")
    names = parse_list(workloads, WORKLOADS, "--workloads")
    wanted = parse_list(baselines, BASELINES + OPT_IN_BASELINES, "--baselines") if baselines.strip() else []
    sizes = parse_sizes(sweep_sizes) if sweep else None
    report = run_bench(Path(model), dtype=None if dtype == "auto" else dtype, device=device, workloads=names,
                       baselines=wanted, prompt_len=prompt_len, new_tokens=new_tokens, repeat=repeat,
                       threads=threads, kv_cache_memory=kv_cache_memory, sweep_sizes=sizes, tpot_ms=tpot_ms,
                       gguf=gguf, seed=seed, progress=progress and sys.stderr.isatty())
    if plot is not None:
        report["sweep"]["plot"] = str(plot)
    emit_report(report, as_json, output, print_report)
    if plot is not None:  # after the report: a failed drawing never costs the numbers
        from runtime.evaluation.bench.sweep_plot import plot_sweep

        plot_sweep(report["sweep"], plot, _plot_title(report))
        click.echo(f"wrote plot {plot}", err=True)
    return 0


def _check_plot(sweep: bool, serving: bool) -> None:
    """--plot's other mistakes, found before the minutes of benchmarking rather than after them."""
    if serving:
        raise UserError("--plot draws the batch-size sweep, not the serving benchmark: drop --endpoint/--serve")
    if not sweep:
        raise UserError("--plot draws the sweep: add --sweep")
    try:
        import matplotlib  # noqa: F401 - only whether it is there; the drawing imports what it uses
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'ascend-deploy-kit[plot]'") from None


def _plot_title(report: dict[str, Any]) -> str:
    """What ran, in a line: the plot may travel without its JSON report."""
    return (f"ascendkit bench --sweep: {Path(report['model']).name} · {report['dtype']} · {report['device']} · "
            f"{report['threads']} threads · median of {report['repeat']}")


def _serving(model: str | None, server_url: str | None, dtype: str, device: str, kv_cache_memory: str,
             threads: int | None, concurrency: str, num_prompts: int | None, prompt_len: int | None,
             new_tokens: int | None, seed: int, endpoint: dict[str, Any]) -> dict[str, Any]:
    """The serving benchmark (runtime.evaluation.bench.serving), against a running server or one started here."""
    levels = parse_sizes(concurrency, "--concurrency")
    kwargs = {"concurrency": levels, "num_prompts": num_prompts, "prompt_len": prompt_len or DEFAULT_PROMPT_LEN,
              "new_tokens": new_tokens or DEFAULT_NEW_TOKENS, "seed": seed, **endpoint}
    if server_url:
        tokenizer = endpoint["tokenizer_dir"] or (Path(model) if model is not None else None)
        for path in (model, tokenizer):
            if path is not None and not Path(path).exists():
                raise UserError(f"{path}: no such file or directory")
        return bench_server(server_url, **{**kwargs, "tokenizer_dir": tokenizer})
    if model is None:
        raise UserError("--serve needs MODEL")
    if endpoint["served_model"] or endpoint["tokenizer_dir"]:
        raise UserError("--model and --tokenizer name a deployment's model and tokenizer: use --endpoint URL")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    engine_kwargs = {"device": device, "dtype": None if dtype == "auto" else dtype, "max_num_seqs": max(levels),
                     "kv_cache_memory": None if kv_cache_memory == "auto" else kv_cache_memory}
    del kwargs["served_model"], kwargs["tokenizer_dir"]
    return bench_started_server(Path(model), engine_kwargs, **kwargs)
