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
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from ascend_common.cli_support import debug_option, output_file
from ascend_common.errors import UserError
from runtime.engine.options import engine_args, engine_options
from runtime.evaluation.endpoint import API_KEY_ENV
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
    finish_reason: str | None = None
    ids_from_text: bool = False  # the server gives no token ids: the answer's text, encoded by the tokenizer


def _prompt_ids(tokenizer, kind: str, prompt: str) -> list[int]:
    from runtime.engine.llm_engine import chat_token_ids

    if kind == "chat":
        return chat_token_ids(tokenizer, [{"role": "user", "content": prompt}])
    return tokenizer.encode(prompt)


def _has_mtp_layers(model: Path) -> bool:
    from ascend_convert.readers.base import read_config

    try:
        return model.is_dir() and bool(read_config(model).get("num_nextn_predict_layers"))
    except (OSError, ValueError, UserError):
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
        r.reference_text = tokenizer.decode(ref_tokens, skip_special_tokens=True)
        r.reference_tokens = len(ref_tokens)
        if r.ids_from_text and r.text == r.reference_text:  # re-encoded text can split differently: the text decides
            r.status, r.index, r.agreeing_tokens = "match", None, len(ref_tokens)
            continue
        agreement = compare_greedy(r.token_ids, ref_tokens, ref_logits, dtype)
        r.status, r.index = agreement.status, agreement.index
        r.agreeing_tokens = len(ref_tokens) if agreement.ok else min(agreement.index, len(ref_tokens))


@dataclass
class Measures:
    """What smoke measures besides the answers, the same for our server and any endpoint."""

    requests: int = 32
    concurrency: int = 8
    prompt_len: int = 64
    load_tokens: int = 64
    sessions: int = 4  # interleaved conversations for the session-switch figure (0: not measured)
    turns: int = 3
    session_tokens: int = 8  # each turn's answer
    long_context: bool = False  # requests at 50/90/100% of max_model_len beside a load


def _prompts(tokenizer, prompts: list[tuple[str, str]] | None, label: str,
             server_chat: bool = True) -> tuple[list[tuple[str, str]], bool]:
    """The (kind, text) prompts to ask, and whether chat prompts can be sent: the tokenizer here has a
    chat template, or (no tokenizer here) the server answers chat (`server_chat`)."""
    chat = bool(getattr(tokenizer, "chat_template", None)) if tokenizer is not None else server_chat
    if prompts is not None:
        if tokenizer is not None and not chat and any(kind == "chat" for kind, _ in prompts):
            raise UserError(f"{label}: the tokenizer has no chat template, so chat prompts cannot be sent")
        return list(prompts), chat
    kinds = [("plain", p) for p in PLAIN_PROMPTS]
    return kinds + ([("chat", p) for p in CHAT_PROMPTS] if chat else []), chat


def _ask_all(endpoint, tokenizer, kinds: list[tuple[str, str]], max_tokens: int) -> tuple[list[PromptResult], list]:
    """Every prompt once, greedy: the results, and (kind, prompt, prompt, answer) for the answer checks."""
    from runtime.evaluation.endpoint import ask

    results, asked = [], []
    with endpoint.client() as client:
        for kind, prompt in kinds:
            ids = _prompt_ids(tokenizer, kind, prompt) if tokenizer is not None else []
            result = PromptResult(kind, prompt, ids, "", [])
            answer = ask(client, endpoint, kind, prompt, max_tokens)
            if not answer.ok:
                result.status, result.error = "error", answer.error
            else:
                result.text, result.finish_reason = answer.text, answer.finish_reason
                result.token_ids = answer.token_ids or []
                if answer.token_ids is None:
                    result.ids_from_text = True
                    if tokenizer is not None:
                        result.token_ids = tokenizer.encode(answer.text, add_special_tokens=False)
            results.append(result)
            asked.append((kind, prompt, prompt, answer))
    return results, asked


def _measure(endpoint, tokenizer, measures: Measures, pid: int | None = None) -> dict[str, Any]:
    """The concurrent load, its memory, and the stability figures."""
    from runtime.evaluation.bench.load import run_load, summarize_load
    from runtime.evaluation.load_prompts import PromptMaker
    from runtime.evaluation.server_memory import server_memory

    m = measures
    maker = PromptMaker(endpoint, tokenizer)
    count = (lambda text: len(tokenizer.encode(text, add_special_tokens=False))) if tokenizer is not None else None
    outcomes, wall = asyncio.run(run_load(endpoint, [maker.random(m.prompt_len) for _ in range(m.requests)],
                                          m.load_tokens, m.concurrency, count_tokens=count))
    load = {"requests": m.requests, "concurrency": m.concurrency, "prompt_len": m.prompt_len,
            "tokens_per_request": m.load_tokens, **summarize_load(outcomes, wall), **server_memory(endpoint, pid)}
    return {"load": load, "stability": stability_figures(endpoint, tokenizer, maker, load, m)}


def stability_figures(endpoint, tokenizer, maker, load: dict[str, Any], m: Measures) -> dict[str, Any]:
    """The seed article's three: TPOT's spread under `load` (measured), the session switch and, when
    `m.long_context`, requests near max_model_len beside a load."""
    from runtime.evaluation.stability import long_context, session_switch

    stability: dict[str, Any] = {"tpot_std_ms": load["tpot_ms"]["std"], "tpot_p99_ms": load["tpot_ms"]["p99"]}
    if m.sessions:
        chat = bool(getattr(tokenizer, "chat_template", None)) if tokenizer is not None else endpoint.chat
        stability["session_switch"] = session_switch(endpoint, sessions=m.sessions, turns=m.turns,
                                                     max_tokens=m.session_tokens, chat=chat)
    if m.long_context:
        limit = endpoint.max_model_len or _tokenizer_limit(tokenizer)
        why_not = ("the server reports no max_model_len and the tokenizer here says none" if limit is None else
                   f"max_model_len {limit} leaves no room for a prompt beside {LONG_CONTEXT_NEW_TOKENS} new tokens"
                   if limit < LONG_CONTEXT_NEW_TOKENS + 4 else
                   "no tokenizer here to size prompts near max_model_len: give MODEL or --tokenizer"
                   if not maker.exact else None)
        stability["long_context"] = {"ok": False, "error": why_not} if why_not else long_context(
            endpoint, maker, max_model_len=limit, new_tokens=LONG_CONTEXT_NEW_TOKENS,
            background=max(1, m.concurrency // 2), background_prompt_len=m.prompt_len)
    return stability


LONG_CONTEXT_NEW_TOKENS = 8  # each long request's answer: enough to see decode run at that context


def _tokenizer_limit(tokenizer) -> int | None:
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10**7 else None  # transformers' "no limit" is 1e30


def stability_ok(stability: dict[str, Any]) -> bool:
    """No failed turn of the sessions and, where measured, every long-context request answered."""
    sessions = stability.get("session_switch")
    long = stability.get("long_context")
    return (sessions is None or sessions["failed"] == 0) and (long is None or long["ok"])


def _agreement(results: list[PromptResult]) -> tuple[int, float | None]:
    agreed = sum(r.status in ("match", "tie") for r in results)
    reference_tokens = sum(r.reference_tokens for r in results)
    share = sum(r.agreeing_tokens for r in results) / reference_tokens if reference_tokens else None
    return agreed, share


def run_smoke(model: Path, *, max_tokens: int, measures: Measures | None = None,
              prompts: list[tuple[str, str]] | None = None, **engine_kwargs: Any) -> dict[str, Any]:
    """`prompts`: (kind, text) pairs, kind "plain" or "chat" (default: the fixed ones; chat only where the
    tokenizer has a template). transformers loads `model` itself to compare with (the same weights),
    or, for a quantized directory, the source its manifest names; when that source is gone nothing is
    compared and the verdict is the load's."""
    import torch

    from ascend_convert.layout_names import QUANT_DESCRIPTION_NAME as DESCRIPTION_NAME
    from ascend_convert.manifest import MANIFEST_NAME, read_manifest, recorded_source
    from runtime.engine.llm_engine import load_tokenizer
    from runtime.engine.options import serve_args
    from runtime.evaluation.endpoint import open_endpoint
    from runtime.server.process import ServerProcess

    measures = measures or Measures()
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
    kinds, has_template = _prompts(tokenizer, prompts, str(model))
    with ServerProcess(model, serve_args(engine_kwargs)) as server:
        # the server was started with this environment: it wants the key ASCENDKIT_API_KEY holds, if any
        endpoint = open_endpoint(server.url, api_key=os.environ.get(API_KEY_ENV) or None, label="the started server")
        results, _ = _ask_all(endpoint, tokenizer, kinds, max_tokens)
        measured = _measure(endpoint, tokenizer, measures, pid=server.pid)
    info = endpoint.ours
    if compare:
        _compare(reference, getattr(torch, info["dtype"]), results, max_tokens, trust, tokenizer)
    agreed, share = _agreement(results)
    load = measured["load"]
    passed = ((agreed == len(results) or not compare or quantized) and load["failed"] == 0
              and stability_ok(measured["stability"]))
    return {"model": str(model), "device": info["device"], "dtype": info["dtype"],
            "verdict": "PASS" if passed else "FAIL", "prompts_agreeing": agreed, "prompts": len(results),
            "quantized": quantized,
            "reference": str(reference) if compare else None,
            "greedy_agreement": share,
            "chat_template": has_template, "results": [asdict(r) for r in results],
            "kv_cache": kv_cache_figures(info), **measured}


def run_endpoint_smoke(url: str, *, served_model: str | None = None, api_key: str | None = None,
                       directory: Path | None = None, tokenizer_dir: Path | None = None, max_tokens: int,
                       measures: Measures | None = None, prompts: list[tuple[str, str]] | None = None,
                       trust_remote_code: bool = False, key_hint: str | None = None) -> dict[str, Any]:
    """The smoke test against a deployment at `url` (any OpenAI-compatible server): the answers and their
    checks, the load, the stability figures. `directory` is the checkpoint it serves, here: its tokenizer
    counts tokens (or `tokenizer_dir`'s), and where its weights fit this machine transformers gives the
    greedy tokens to compare with (a quantized directory: the source its manifest names). An endpoint
    that cannot be reached, refuses the key or lacks the model is the report's `error`, verdict FAIL."""
    import torch

    from runtime.evaluation.answer_checks import check_answers, summarize_checks
    from runtime.evaluation.endpoint import EndpointError, open_endpoint

    measures = measures or Measures()
    tokenizer = endpoint_tokenizer(tokenizer_dir, directory, trust_remote_code)
    try:
        endpoint = open_endpoint(url, served_model, api_key, **({"key_hint": key_hint} if key_hint else {}))
    except EndpointError as exc:
        return {"endpoint": {"url": url.rstrip("/"), "model": served_model}, "model": url, "device": "endpoint",
                "dtype": None, "verdict": "FAIL", "error": str(exc), "prompts": 0, "prompts_agreeing": 0,
                "results": [], "answer_checks": {}, "load": None, "stability": {}, "chat_template": None,
                "quantized": False, "reference": None, "greedy_agreement": None, "kv_cache": {}}
    kinds, chat = _prompts(tokenizer, prompts, str(tokenizer_dir or directory or url), endpoint.chat)
    results, asked = _ask_all(endpoint, tokenizer, kinds, max_tokens)
    with endpoint.client() as client:  # no tokenizer here: the server's /tokenize, where it has one
        def prompt_tokens(kind: str, prompt: str) -> int | None:
            if tokenizer is not None:
                return len(_prompt_ids(tokenizer, kind, prompt))
            return endpoint.count_tokens(client, kind, prompt)

        def count(text: str) -> int | None:
            if tokenizer is not None:
                return len(tokenizer.encode(text, add_special_tokens=False))
            return endpoint.count_tokens(client, "plain", text, add_special_tokens=False)

        counter = "the tokenizer" if tokenizer is not None else "the server's /tokenize"
        counting = tokenizer is not None or endpoint.has("tokenize")
        rows = check_answers(endpoint, asked, max_tokens, prompt_tokens, count if counting else None, counter)
    measured = _measure(endpoint, tokenizer, measures)
    reference, quantized, dtype, why_not = _endpoint_reference(directory, endpoint)
    compared = reference is not None and tokenizer is not None
    if compared:
        _compare(reference, getattr(torch, dtype or "float32"), results, max_tokens, trust_remote_code, tokenizer)
    agreed, share = _agreement(results)
    failed_checks = sorted({r["check"] for r in rows if not r["ok"]})
    passed = (all(r.status != "error" for r in results) and not failed_checks
              and (not compared or quantized or agreed == len(results))
              and measured["load"]["failed"] == 0 and stability_ok(measured["stability"]))
    info = endpoint.ours or {}
    return {"endpoint": endpoint.summary(), "model": endpoint.model, "device": info.get("device", "endpoint"),
            "dtype": info.get("dtype", dtype), "verdict": "PASS" if passed else "FAIL", "error": None,
            "prompts_agreeing": agreed, "prompts": len(results), "quantized": quantized,
            "reference": str(reference) if compared else None,
            "not_compared": None if compared else (why_not or "no tokenizer here: give MODEL or --tokenizer"),
            "greedy_agreement": share, "chat_template": chat, "results": [asdict(r) for r in results],
            "answer_checks": summarize_checks(rows), "failed_checks": failed_checks, "answer_check_rows": rows,
            "kv_cache": kv_cache_figures(info), **measured}


def endpoint_tokenizer(tokenizer_dir: Path | None, directory: Path | None, trust_remote_code: bool = False):
    """The tokenizer that counts a deployment's tokens: `tokenizer_dir`'s (it must have one), else the
    served checkpoint's here (a checkpoint without one: None, and the server's counts are taken)."""
    from runtime.engine.llm_engine import load_tokenizer

    if tokenizer_dir is not None:
        tokenizer = load_tokenizer(tokenizer_dir, trust_remote_code)
        if tokenizer is None:
            raise UserError(f"--tokenizer {tokenizer_dir}: no tokenizer there (tokenizer.json or tokenizer_config.json)")
        return tokenizer
    return load_tokenizer(directory, trust_remote_code) if directory is not None else None


def _endpoint_reference(directory: Path | None, endpoint) -> tuple[Path | None, bool, str | None, str | None]:
    """What transformers runs to compare with a deployment's answers: (weights or None, quantized, dtype
    or None where nothing says it, why not). The weights must be here and fit this machine's free
    memory twice over (transformers' load holds a copy while it builds the model)."""
    from ascend_common.proc_memory import available_memory
    from ascend_convert.layout_names import QUANT_DESCRIPTION_NAME
    from ascend_convert.manifest import MANIFEST_NAME, read_manifest, recorded_source
    from ascend_convert.readers.base import read_config

    if directory is None or not directory.exists():
        return None, False, (endpoint.ours or {}).get("dtype"), "no checkpoint here to compare with (give MODEL)"
    config = read_config(directory) if (directory / "config.json").is_file() else {}
    dtype = (endpoint.ours or {}).get("dtype") or config.get("torch_dtype") or config.get("dtype")
    quantized = (directory / QUANT_DESCRIPTION_NAME).is_file()
    reference: Path | None = directory
    if quantized:
        reference = recorded_source(read_manifest(directory)) if (directory / MANIFEST_NAME).is_file() else None
        if reference is None:
            return None, True, dtype, "quantized weights whose source is not here: answers not compared"
    reference = Path(reference)
    weights = (sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin") for f in reference.glob(pattern))
               if reference.is_dir() else reference.stat().st_size)  # a GGUF: transformers dequantizes it
    free = available_memory()
    if free is not None and weights * 2 > free:
        return None, quantized, dtype, (f"{weights / 1e9:.1f} GB of weights do not fit this machine's "
                                        f"{free / 1e9:.1f} GB free twice over: answers not compared")
    return reference, quantized, dtype, None


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
    endpoint = report.get("endpoint")
    if report.get("error"):
        console.print(f"[bold red]FAIL[/]: {escape(report['error'])}")
        return
    where = (f"{endpoint['url']} · model {endpoint['model']}" if endpoint
             else f"{report['model']} ({report['device']}, {report['dtype']})")
    table = Table(title=f"greedy answers vs transformers — {escape(where)}")
    for column in ("kind", "prompt", "answer", "tokens", "vs transformers"):
        table.add_column(column)
    for r in report["results"]:
        status = answer_status(r, "MISMATCH")
        answer = " ".join(r["text"].split())
        # prompts and answers are text, not markup: a chat model's "[/INST]" would stop the report
        table.add_row(r["kind"], escape(r["prompt"].strip()), escape(answer[:70]) + ("…" if len(answer) > 70 else ""),
                      str(len(r["token_ids"])), status)
    console.print(table)
    if report.get("not_compared"):
        console.print(f"answers not compared with transformers: {escape(report['not_compared'])}")
    if endpoint:
        _print_endpoint(console, report)
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
    for line in stability_lines(report.get("stability", {})):
        console.print(escape(line))
    kv_line = kv_cache_line(report.get("kv_cache", {}))
    if kv_line:
        console.print(kv_line)
    if not report["chat_template"]:
        console.print("no chat template (in the tokenizer here, or the server refuses chat): chat prompts skipped")
    colour = "green" if report["verdict"] == "PASS" else "red"
    failed = f"{load['failed']} of {load['requests']} load requests failed"
    if endpoint:
        said = (f"{report['prompts_agreeing']}/{report['prompts']} prompts agree with transformers"
                if report.get("not_compared") is None else "answers not compared with transformers")
        checks = report["failed_checks"]
        console.print(f"[bold {colour}]{report['verdict']}[/]: {said}, "
                      + (f"answer checks failed: {', '.join(checks)}, " if checks else "every answer check passed, ")
                      + failed)
    elif report.get("quantized"):
        agreement = report["greedy_agreement"]
        said = (f"quantized weights reproduce {agreement:.0%} of the greedy tokens of their source {report['reference']}"
                if agreement is not None else "quantized weights whose source is gone: answers not compared")
        console.print(f"[bold {colour}]{report['verdict']}[/]: {said}; {failed}")
    else:
        console.print(f"[bold {colour}]{report['verdict']}[/]: {report['prompts_agreeing']}/{report['prompts']} "
                      f"prompts agree with transformers, {failed}")


def _print_endpoint(console, report: dict[str, Any]) -> None:
    """The answer checks and which of vLLM's extras the endpoint has."""
    from rich.markup import escape

    extras = report["endpoint"]["extras"]
    console.print("extras: " + ", ".join(f"{name} {'present' if there else 'absent'}" for name, there in extras.items()))
    for check, summary in report["answer_checks"].items():
        colour = "green" if summary["first_failure"] is None else "red"
        said = summary["first_failure"] or summary["detail"]
        console.print(f"[{colour}]{check}[/]: {summary['passed']}/{summary['checked']} — {escape(said)}")


def stability_lines(stability: dict[str, Any]) -> list[str]:
    """The seed article's three stability figures, a line each (smoke and the serving benchmark)."""
    lines = []
    if stability.get("tpot_std_ms") is not None:
        lines.append(f"latency spread: TPOT std {stability['tpot_std_ms']:.2f} ms, p99 {stability['tpot_p99_ms']:.1f} ms")
    sessions = stability.get("session_switch")
    if sessions:
        first, follow = sessions["first_turn_ttft_ms"], sessions["follow_up_ttft_ms"]
        line = (f"session switch: {sessions['sessions']} conversations x {sessions['turns']} turns, follow-up TTFT "
                + (f"p50 {follow['p50']:.1f} / p99 {follow['p99']:.1f} ms" if follow["p50"] is not None else "-")
                + (f" (first turns p50 {first['p50']:.1f} ms)" if first["p50"] is not None else ""))
        if sessions["failed"]:
            line += f"; {sessions['failed']} turn(s) failed: {sessions['errors'][0]}"
        lines.append(line)
    long = stability.get("long_context")
    if long:
        if "requests" not in long:
            lines.append(f"long context: not measured ({long['error']})")
        else:
            parts = [f"{r['prompt_tokens']} tokens " + ("ok" if r["ok"] else f"FAILED ({r['error']})")
                     for r in long["requests"]]
            lines.append(f"long context (max_model_len {long['max_model_len']}): " + ", ".join(parts)
                         + f"; beside them {long['background']['requests']} requests, "
                           f"{long['background']['failed']} failed")
    return lines


@click.command("smoke")
@click.argument("model", type=click.Path(path_type=Path), required=False)
@click.option("--max-tokens", type=click.IntRange(min=1), default=32, show_default=True,
              help="Greedy tokens per fixed prompt.")
@click.option("--requests", type=click.IntRange(min=1), default=32, show_default=True,
              help="Requests in the concurrent load.")
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--prompt-len", type=click.IntRange(min=1), default=64, show_default=True,
              help="Prompt tokens of each load request.")
@click.option("--load-tokens", type=click.IntRange(min=2), default=64, show_default=True,
              help="Tokens each load request generates.")
@click.option("--sessions", type=click.IntRange(min=0), default=4, show_default=True,
              help="Multi-turn conversations interleaved turn by turn (the session-switch figure; 0: none).")
@click.option("--turns", type=click.IntRange(min=2), default=3, show_default=True, help="Turns of each conversation.")
@click.option("--long-context", is_flag=True,
              help="Also send requests at 50%, 90% and 100% of max_model_len while a load runs.")
@click.option("--endpoint", default=None, metavar="URL",
              help="Smoke-test a deployment (any OpenAI-compatible server) instead of serving MODEL here; "
                   "MODEL, if given, is the checkpoint it serves (tokenizer, and weights to compare with).")
@click.option("--model", "served_model", default=None, metavar="NAME",
              help="With --endpoint: the served model [default: the only one /v1/models lists].")
@click.option("--api-key", envvar=API_KEY_ENV, default=None, help=f"With --endpoint: its key [env: {API_KEY_ENV}].")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(path_type=Path), default=None,
              help="With --endpoint: the tokenizer that counts tokens [default: MODEL].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--output", type=click.Path(path_type=Path), default=None, callback=output_file,
              help="Also write the JSON report here.")
@engine_options
@debug_option
def smoke_command(model: Path | None, max_tokens: int, requests: int, concurrency: int, prompt_len: int,
                  load_tokens: int, sessions: int, turns: int, long_context: bool, endpoint: str | None,
                  served_model: str | None, api_key: str | None, tokenizer_dir: Path | None, as_json: bool,
                  output: Path | None, **kwargs: Any) -> int:
    """Start MODEL's engine and server (or, with --endpoint, use a deployment), check its greedy answers
    against transformers, run a short concurrent load and the stability figures; print a verdict and
    the figures. Exit 1 on any mismatch, failed check or failed request."""
    measures = Measures(requests=requests, concurrency=concurrency, prompt_len=prompt_len, load_tokens=load_tokens,
                        sessions=sessions, turns=turns, long_context=long_context)
    for path in (model, tokenizer_dir):
        if path is not None and not path.exists():
            raise UserError(f"{path}: no such file or directory")
    if endpoint:
        report = run_endpoint_smoke(endpoint, served_model=served_model, api_key=api_key, directory=model,
                                    tokenizer_dir=tokenizer_dir, max_tokens=max_tokens, measures=measures,
                                    trust_remote_code=kwargs.get("trust_remote_code", False))
    else:
        if model is None:
            raise UserError("missing MODEL (or --endpoint URL)")
        if served_model or tokenizer_dir:
            raise UserError("--model and --tokenizer name a deployment's model and tokenizer: add --endpoint URL")
        report = run_smoke(model, max_tokens=max_tokens, measures=measures, **engine_args(kwargs))
    emit_report(report, as_json, output, print_smoke)
    sys.stdout.flush()
    return 0 if report["verdict"] == "PASS" else 1
