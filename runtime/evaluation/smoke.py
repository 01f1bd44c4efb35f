"""`ascendkit smoke DIR`: one command that proves a converted model serves, and answers right.

1. Starts `ascendkit serve` on the model in a child process (the HTTP path a client meets, and
   figures not distorted by the checker sharing the server's interpreter).
2. Sends fixed prompts, plain and chat (the tokenizer's chat template), greedy, and reads the exact
   tokens back (`return_tokens_as_token_ids`).
3. Runs a short concurrent streaming load and measures it as vLLM's serving benchmark does.
4. Stops the server, loads the same weights in transformers and compares the greedy tokens
   (`runtime.evaluation.greedy_check`: equal, or diverging only at a near-tie of transformers' own logits).
The verdict is PASS only if every prompt agrees and no request of the load failed; exit 1 otherwise.
A quantized directory (W8A16/W8A8) is compared with the source it was converted from, which it is
not expected to equal token for token: its report gives the share of the source's greedy tokens it
reproduces, and its verdict is the load's (`ascendkit gate` sets a floor on that share).
"""

from __future__ import annotations

import asyncio
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from ascend_common.cli_support import debug_option, output_file
from ascend_common.errors import UserError
from runtime.engine.options import engine_args, engine_options
from runtime.evaluation.report_output import (
    emit_report,
    kv_cache_figures,
    kv_cache_line,
)

PLAIN_PROMPTS = ("The capital of France is", "def fibonacci(n):\n", "The three primary colors are",
                 "Water boils at a temperature of")
CHAT_PROMPTS = ("What is the capital of France?", "Name three primary colors.", "What is 12 times 7?")


@dataclass
class PromptResult:
    kind: str  # "plain" or "chat"
    prompt: str
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    status: str = "pending"  # match / tie / mismatch, or error (the server refused the prompt)
    index: int | None = None  # where a tie or mismatch is
    reference_text: str | None = None
    error: str | None = None
    agreeing_tokens: int = 0  # transformers' tokens reproduced before the first real difference
    reference_tokens: int = 0


class _Refused(Exception):
    pass


def _ask(client, kind: str, prompt: str, max_tokens: int) -> tuple[str, list[int]]:
    """The server's greedy answer and its exact token ids; _Refused with the server's message."""
    extra = {"temperature": 0, "max_tokens": max_tokens, "return_tokens_as_token_ids": True}
    if kind == "chat":
        r = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": prompt}], "logprobs": True, **extra})
    else:
        r = client.post("/v1/completions", json={"prompt": prompt, "logprobs": 0, **extra})
    if r.status_code != 200:
        raise _Refused(f"HTTP {r.status_code}: {r.json().get('error', {}).get('message', r.text[:200])}")
    choice = r.json()["choices"][0]
    if kind == "chat":
        tokens, text = [c["token"] for c in choice["logprobs"]["content"]], choice["message"]["content"]
    else:
        tokens, text = choice["logprobs"]["tokens"], choice["text"]
    return text, [int(t.split(":", 1)[1]) for t in tokens]


def _prompt_ids(tokenizer, kind: str, prompt: str) -> list[int]:
    from runtime.engine.llm_engine import chat_token_ids

    if kind == "chat":
        return chat_token_ids(tokenizer, [{"role": "user", "content": prompt}])
    return tokenizer.encode(prompt)


def _has_mtp_layers(model: Path) -> bool:
    import json

    config = model / "config.json"
    try:
        return model.is_dir() and bool(json.loads(config.read_text(encoding="utf-8")).get("num_nextn_predict_layers"))
    except (OSError, ValueError):
        return False


def _compare(model: Path, dtype, results: list[PromptResult], max_tokens: int, trust_remote_code: bool,
             tokenizer) -> None:
    """Fill in each result's status from transformers' greedy tokens on `model`'s weights (the
    served checkpoint, or the source a quantized one was made from)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from ascend_common.model_paths import pretrained_args
    from runtime.evaluation.greedy_check import compare_greedy, hf_greedy

    hf_logging.disable_progress_bar()  # its bar would break the report
    verbosity = hf_logging.get_verbosity()
    if _has_mtp_layers(model):  # its load report lists an MTP layer's ~20 tensors (the class has none) as unexpected
        hf_logging.set_verbosity_error()
    try:
        hf = AutoModelForCausalLM.from_pretrained(**pretrained_args(model), dtype=dtype,
                                                  trust_remote_code=trust_remote_code).eval()
    finally:
        hf_logging.set_verbosity(verbosity)
    for r in results:
        if r.status == "error":
            continue
        ref_tokens, ref_logits = hf_greedy(hf, r.prompt_token_ids, max_tokens)
        agreement = compare_greedy(r.token_ids, ref_tokens, ref_logits, dtype)
        r.status, r.index = agreement.status, agreement.index
        r.reference_tokens = len(ref_tokens)
        r.agreeing_tokens = len(ref_tokens) if agreement.ok else min(agreement.index, len(ref_tokens))
        r.reference_text = tokenizer.decode(ref_tokens, skip_special_tokens=True)


def run_smoke(model: Path, *, max_tokens: int, requests: int, concurrency: int, prompt_len: int, load_tokens: int,
              prompts: list[tuple[str, str]] | None = None, **engine_kwargs: Any) -> dict[str, Any]:
    """`prompts`: (kind, text) pairs, kind "plain" or "chat" (default: the fixed ones; chat only where the
    tokenizer has a template). transformers loads `model` itself to compare with (the same weights),
    or, for a quantized directory, the source its manifest names; when that source is gone nothing is
    compared and the verdict is the load's."""
    import httpx
    import torch

    from ascend_convert.layout_names import QUANT_DESCRIPTION_NAME as DESCRIPTION_NAME
    from ascend_convert.manifest import MANIFEST_NAME, read_manifest, recorded_source
    from runtime.engine.llm_engine import load_tokenizer
    from runtime.engine.options import serve_args
    from runtime.evaluation.bench.load import run_load, server_memory, summarize_load
    from runtime.evaluation.bench.serving import served_model
    from runtime.server.process import ServerProcess

    if engine_kwargs.get("mla_decode", "auto") == "auto":
        # bf16 greedy tokens of an MoE model follow the op order (transformers' eager and SDPA attention
        # disagree on 11 of 24 prompts of the DeepSeek-V3 fixture): the comparison is made in transformers'
        engine_kwargs = {**engine_kwargs, "mla_decode": "decompressed"}
    quantized = model.is_dir() and (model / DESCRIPTION_NAME).is_file()
    reference = model
    if quantized:  # transformers cannot load msModelSlim's layout (one from msModelSlim itself has no manifest)
        reference = recorded_source(read_manifest(model)) if (model / MANIFEST_NAME).is_file() else None
    compare = reference is not None
    trust = engine_kwargs.get("trust_remote_code", False)
    tokenizer = load_tokenizer(model, trust)
    if tokenizer is None:
        raise UserError(f"{model}: no tokenizer, so no prompts to smoke-test; convert a checkpoint with its tokenizer")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if prompts is not None:
        kinds = list(prompts)
        if not has_template and any(kind == "chat" for kind, _ in kinds):
            raise UserError(f"{model}: the tokenizer has no chat template, so chat prompts cannot be sent")
    else:
        kinds = [("plain", p) for p in PLAIN_PROMPTS]
        kinds += [("chat", p) for p in CHAT_PROMPTS] if has_template else []
    with ServerProcess(model, serve_args(engine_kwargs)) as server, \
            httpx.Client(base_url=server.url, timeout=600) as client:
        card = served_model(server.url)
        results = []
        for kind, prompt in kinds:
            result = PromptResult(kind, prompt, _prompt_ids(tokenizer, kind, prompt), "", [])
            try:
                result.text, result.token_ids = _ask(client, kind, prompt, max_tokens)
            except _Refused as exc:
                result.status, result.error = "error", str(exc)
            results.append(result)
        rng = random.Random(0)
        vocab = card["ascendkit"]["vocab_size"]
        load_prompts = [[rng.randrange(1, vocab) for _ in range(prompt_len)] for _ in range(requests)]
        outcomes, wall = asyncio.run(run_load(server.url, card["id"], load_prompts, load_tokens, concurrency))
        load = {**summarize_load(outcomes, wall), **server_memory(server.url)}
    info = card["ascendkit"]
    if compare:
        _compare(reference, getattr(torch, info["dtype"]), results, max_tokens, trust, tokenizer)
    agreed = sum(r.status in ("match", "tie") for r in results)
    reference_tokens = sum(r.reference_tokens for r in results)
    passed = (agreed == len(results) or not compare or quantized) and load["failed"] == 0
    return {"model": str(model), "device": info["device"], "dtype": info["dtype"],
            "verdict": "PASS" if passed else "FAIL", "prompts_agreeing": agreed, "prompts": len(results),
            "quantized": quantized,
            "reference": str(reference) if compare else None,
            "greedy_agreement": sum(r.agreeing_tokens for r in results) / reference_tokens if reference_tokens else None,
            "chat_template": has_template, "results": [asdict(r) for r in results],
            "kv_cache": kv_cache_figures(info),
            "load": {"requests": requests, "concurrency": concurrency, "prompt_len": prompt_len,
                     "tokens_per_request": load_tokens, **load}}


def answer_status(r: dict[str, Any], differs: str = "differs", markup: bool = True) -> str:
    """One result's comparison in words: a match, a near-tie, a refusal, not compared, or where it
    `differs`; as rich markup (coloured, the words escaped: an error is text) unless `markup` is off."""
    words = {"match": "match", "tie": f"tie at token {r['index']}", "pending": "not compared",
             "error": f"refused: {r['error'] or ''}"}.get(r["status"], f"{differs} at token {r['index']}")
    if not markup:
        return words
    from rich.markup import escape

    colour = {"match": "green", "tie": "yellow", "pending": None}.get(r["status"], "red")
    return f"[{colour}]{escape(words)}[/]" if colour else words


def print_smoke(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=140)
    table = Table(title=f"greedy answers vs transformers — {escape(report['model'])} ({report['device']}, "
                        f"{report['dtype']})")
    for column in ("kind", "prompt", "answer", "tokens", "vs transformers"):
        table.add_column(column)
    for r in report["results"]:
        status = answer_status(r, "MISMATCH")
        answer = " ".join(r["text"].split())
        # prompts and answers are text, not markup: a chat model's "[/INST]" would stop the report
        table.add_row(r["kind"], escape(r["prompt"].strip()), escape(answer[:70]) + ("…" if len(answer) > 70 else ""),
                      str(len(r["token_ids"])), status)
    console.print(table)
    load = report["load"]
    seed = Table(title=f"concurrent load: {load['requests']} requests, concurrency {load['concurrency']}, "
                       f"{load['prompt_len']} in / {load['tokens_per_request']} out")
    for column in ("throughput (tokens/s)", "average latency (ms/token)", "memory (GB)", "TTFT p50 / p99 (ms)",
                   "TPOT p50 / p99 (ms)", "TPOT std (ms)", "failed"):
        seed.add_column(column, justify="right")

    def f(value, digits=1):
        return "-" if value is None else f"{value:.{digits}f}"

    seed.add_row(f(load["output_throughput_tok_s"]), f(load["latency_ms_per_token"], 2), f(load["memory_gb"], 2),
                 f"{f(load['ttft_ms']['p50'])} / {f(load['ttft_ms']['p99'])}",
                 f"{f(load['tpot_ms']['p50'])} / {f(load['tpot_ms']['p99'])}", f(load["tpot_ms"]["std"], 2),
                 str(load["failed"]))
    console.print(seed)
    for error in load["errors"]:
        console.print(f"[red]load error:[/] {escape(error)}")
    kv_line = kv_cache_line(report.get("kv_cache", {}))
    if kv_line:
        console.print(kv_line)
    if not report["chat_template"]:
        console.print("no chat template in the tokenizer: chat prompts skipped")
    colour = "green" if report["verdict"] == "PASS" else "red"
    failed = f"{load['failed']} of {load['requests']} load requests failed"
    if report.get("quantized"):
        agreement = report["greedy_agreement"]
        said = (f"quantized weights reproduce {agreement:.0%} of the greedy tokens of their source {report['reference']}"
                if agreement is not None else "quantized weights whose source is gone: answers not compared")
        console.print(f"[bold {colour}]{report['verdict']}[/]: {said}; {failed}")
    else:
        console.print(f"[bold {colour}]{report['verdict']}[/]: {report['prompts_agreeing']}/{report['prompts']} "
                      f"prompts agree with transformers, {failed}")


@click.command("smoke")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--max-tokens", type=click.IntRange(min=1), default=32, show_default=True,
              help="Greedy tokens per fixed prompt.")
@click.option("--requests", type=click.IntRange(min=1), default=32, show_default=True,
              help="Requests in the concurrent load.")
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--prompt-len", type=click.IntRange(min=1), default=64, show_default=True,
              help="Prompt tokens of each load request.")
@click.option("--load-tokens", type=click.IntRange(min=2), default=64, show_default=True,
              help="Tokens each load request generates.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--output", type=click.Path(path_type=Path), default=None, callback=output_file,
              help="Also write the JSON report here.")
@engine_options
@debug_option
def smoke_command(model: Path, max_tokens: int, requests: int, concurrency: int, prompt_len: int, load_tokens: int,
                  as_json: bool, output: Path | None, **kwargs: Any) -> int:
    """Start MODEL's engine and server, check its greedy answers against transformers, run a short
    concurrent load; print a verdict and the figures. Exit 1 on any mismatch or failed request."""
    if not model.exists():
        raise UserError(f"{model}: no such file or directory")
    report = run_smoke(model, max_tokens=max_tokens, requests=requests, concurrency=concurrency,
                       prompt_len=prompt_len, load_tokens=load_tokens, **engine_args(kwargs))
    emit_report(report, as_json, output, print_smoke)
    sys.stdout.flush()
    return 0 if report["verdict"] == "PASS" else 1
