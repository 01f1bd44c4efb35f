#!/usr/bin/env python
"""Memory of 32 requests sharing a 2,048-token context on SmolLM2-135M (bf16): the KV pool, the KV the
requests wrote, and what attention took beside them, with its context gathered in one padded group
(what the runtime did before) and in runs of at most `MAX_GATHER_SLOTS` slots (what it does now).

    python benchmarks/bench_shared_context_memory.py [--workdir DIR] [--requests 32] [--context 2048]

Each bound runs in a process of its own (a process's peak RSS only goes up): the engine is loaded
with a 256 MiB pool, then metered while it serves the requests — one prefix of `--context` random
tokens, 16 tokens of each request's own, 32 generated. The pool's pages become resident as the KV
is written, so the peak above the loaded engine is the KV written (counted here from the tokens the
prefix cache kept) plus the transient rest; the rest is set beside the working set the engine
reports (`EngineInfo.attention_working_set_bytes`). The runs' tokens are compared: in bf16 a
different grouping pads the keys differently, which can flip a near-tie of these random-token
prompts' flat distributions (in fp32 all 32 requests are equal; `tests/test_runtime_*` hold the
grouping to transformers' tokens). The figures also go to `<workdir>/bench_shared_context_memory.json`.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_runtime import smollm2_bf16  # noqa: E402

ONE_GROUP = 10**9
MiB = 2**20


def measure(model: Path, bound: int, requests: int, context: int) -> dict:
    import torch

    from runtime import LLM, SamplingParams
    from runtime.evaluation.bench.metering import MemoryMeter

    llm = LLM(model, device="cpu", kv_cache_memory="256MiB", max_num_seqs=requests)
    llm.engine.runner.max_gather_slots = bound
    rng = random.Random(0)
    prefix = [rng.randint(100, 40000) for _ in range(context)]
    prompts = [prefix + [rng.randint(100, 40000) for _ in range(16)] for _ in range(requests)]
    params = SamplingParams(temperature=0, max_tokens=32, min_tokens=32, ignore_eos=True)
    meter = MemoryMeter("cpu")
    meter.start()
    start = time.perf_counter()
    outs = llm.generate(prompts, params, progress=False)
    wall = time.perf_counter() - start
    peak = meter.stop()
    engine = llm.engine
    written_tokens = context + requests * (16 + 32)  # the shared prefix once, each request's own
    return {"bound": bound, "threads": torch.get_num_threads(), "peak_above_loaded": peak, "wall_s": wall,
            "kv_written": written_tokens * engine.info.kv_bytes_per_token,
            "pool": engine.runner.num_blocks * engine.runner.block_bytes,
            "working_set": engine.info.attention_working_set_bytes,
            "prefix_hits": engine.stats()["prefix_cache_hit_tokens"], "tokens": [o.token_ids for o in outs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("bench-out"))
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--bound", type=int, default=None, help=argparse.SUPPRESS)  # one measurement, in a child
    args = ap.parse_args()
    model = smollm2_bf16(args.workdir)
    if args.bound is not None:
        print(json.dumps(measure(model, args.bound, args.requests, args.context)))
        return
    from runtime.engine.model_runner import MAX_GATHER_SLOTS

    results = []
    for bound in (ONE_GROUP, MAX_GATHER_SLOTS):
        out = subprocess.run([sys.executable, __file__, "--workdir", str(args.workdir), "--requests", str(args.requests),
                              "--context", str(args.context), "--bound", str(bound)],
                             check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    equal = sum(a == b for a, b in zip(results[0]["tokens"], results[1]["tokens"]))
    print(f"{args.requests} requests sharing {args.context} tokens (+16 own, 32 generated), SmolLM2 bf16, "
          f"{results[0]['threads']} threads; pool {results[0]['pool'] / MiB:.0f} MiB, KV written "
          f"{results[0]['kv_written'] / MiB:.1f} MiB, prefix-cache hits {results[0]['prefix_hits']:,} tokens; "
          f"requests with the same tokens under both: {equal} of {args.requests}")
    for r in results:
        name = "one padded group" if r["bound"] == ONE_GROUP else f"runs of <= {r['bound']} slots"
        rest = r["peak_above_loaded"] - r["kv_written"]
        print(f"  {name:24s} peak above the loaded engine {r['peak_above_loaded'] / MiB:6.1f} MiB = KV written + "
              f"{rest / MiB:5.1f} MiB (reported working set {r['working_set'] / MiB:.1f} MiB); {r['wall_s']:.1f} s")
    (args.workdir / "bench_shared_context_memory.json").write_text(json.dumps(
        {"requests": args.requests, "context": args.context, "default": MAX_GATHER_SLOTS, "same_tokens": equal,
         "runs": [{k: v for k, v in r.items() if k != "tokens"} for r in results]}, indent=1))


if __name__ == "__main__":
    main()
