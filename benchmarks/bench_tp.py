#!/usr/bin/env python
"""Tensor parallel on this machine: tokens/s and memory per rank at TP = 1 and the TP sizes a model splits into.

    python benchmarks/bench_tp.py [--workdir DIR] [--reps 3]

Models: the llama fixture (4 heads, 2 KV heads: TP 1, 2) and SmolLM2-135M converted to bf16 (9 heads,
3 KV heads: TP 1, 3 — it does not split in 2). Workloads, greedy, fixed lengths: 1 request (64-token
prompt, 64 new tokens) and 16 requests (64 + 64 each). The TP sizes of a model are run interleaved,
--reps times, medians reported. Memory per rank: resident set size of each rank's process after
loading and the warm-up (rank 0 is this process: it also holds Python, the tokenizer and the engine).

Results: a table on stdout and `<workdir>/bench_tp.json`.
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

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout first: its packages, fixtures/

NEW_TOKENS, PROMPT_LEN = 64, 64
WORKLOADS = {"1 request": 1, "16 requests": 16}


def setup(workdir: Path) -> dict[str, tuple[Path, str, tuple[int, ...]]]:
    import fixtures as fx
    from ascend_common.smollm2 import smollm2_gguf

    llama = fx.build("llama", workdir / "fixtures", "safetensors")
    smol = workdir / "smollm2-bf16"
    if not smol.exists():
        subprocess.run([sys.executable, "-m", "ascendkit", "convert", str(smollm2_gguf()), str(smol), "--dtype",
                        "bfloat16", "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    return {"llama fixture (fp32)": (llama, "float32", (1, 2)), "SmolLM2-135M (bf16)": (smol, "bfloat16", (1, 3))}


def rss_per_rank(llm) -> list[float]:
    pids = [psutil.Process().pid, *getattr(llm.engine.runner, "pids", [])]
    return [psutil.Process(p).memory_info().rss / 1e6 for p in pids]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench-out"))
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    from runtime import LLM, SamplingParams

    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    report: dict = {}
    for model_name, (path, dtype, sizes) in setup(args.workdir).items():
        vocab = 300 if "fixture" in model_name else 49000
        rng = random.Random(0)
        prompts = {w: [[rng.randrange(3, vocab) for _ in range(PROMPT_LEN)] for _ in range(n)]
                   for w, n in WORKLOADS.items()}
        engines = {n: LLM(path, device="cpu", dtype=dtype, kv_cache_memory="256MiB", tensor_parallel_size=n)
                   for n in sizes}
        memory = {n: rss_per_rank(llm) for n, llm in engines.items()}
        times: dict[tuple[str, int], list[float]] = {}
        outputs: dict[tuple[str, int], list[list[int]]] = {}
        for rep in range(args.reps):
            for workload in WORKLOADS:
                for n, llm in engines.items():
                    start = time.perf_counter()
                    outs = llm.generate(prompts[workload], params, progress=False)
                    times.setdefault((workload, n), []).append(time.perf_counter() - start)
                    outputs[(workload, n)] = [o.token_ids for o in outs]
            print(f"{model_name}: rep {rep + 1}/{args.reps}", flush=True)
        for llm in engines.values():
            llm.engine.shutdown()
        rows = {}
        for (workload, n), t in times.items():
            tokens = WORKLOADS[workload] * NEW_TOKENS
            base = statistics.median(times[(workload, sizes[0])])
            rows[f"{workload}, TP {n}"] = {
                "tok_s": tokens / statistics.median(t), "vs_tp1": base / statistics.median(t),
                "same_tokens_as_tp1": outputs[(workload, n)] == outputs[(workload, sizes[0])],
                "rss_mb_per_rank": [round(m) for m in memory[n]], "runs_s": t}
        report[model_name] = rows
    print("\n| model | workload | tok/s | vs TP 1 | tokens = TP 1 | RSS per rank (MB) |")
    print("|---|---|---:|---:|---|---|")
    for model_name, rows in report.items():
        for label, r in rows.items():
            print(f"| {model_name} | {label} | {r['tok_s']:.1f} | {r['vs_tp1']:.2f}x | {r['same_tokens_as_tp1']} | "
                  f"{' / '.join(map(str, r['rss_mb_per_rank']))} |")
    (args.workdir / "bench_tp.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
