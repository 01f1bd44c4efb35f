#!/usr/bin/env python
"""MoE decode speed: the runtime against transformers `generate` on the same weights, at batch 1 and
batch 32, in one run, reported as ratios (runtime tokens/s ÷ transformers tokens/s).

    python benchmarks/bench_moe_decode.py [--workdir DIR] [--dtype bfloat16] [--new-tokens 32] [--reps 3]

Setup (not measured): a seeded Qwen3-MoE checkpoint built by transformers' own class and saved with
`save_pretrained` to `<workdir>/moe-bench` (Hub per-expert names): hidden 512, 4 layers, 8 heads on 2
KV heads, 32 experts of width 256, top-4, norm_topk_prob, vocabulary 4096 (~115M parameters, 105M of
them experts). Bigger than the test fixture (hidden 64, 8 experts), whose steps are all overhead.

Decode only: each system generates `--new-tokens`+1 tokens and 1 token from the same prompts (16
tokens each, all the same length, so transformers needs no padding); the difference is the time of
`--new-tokens` decode steps. Greedy, EOS ignored, so both produce the same number of tokens. The
runtime is `runtime.LLM` (paged KV cache, one engine step per token for the whole batch); transformers
is `model.generate` with its default (dynamic) cache and its default experts implementation
(grouped_mm on CPU). Medians over `--reps` interleaved repeats; a table on stdout and
`<workdir>/bench_moe_decode.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout first

CONFIG = {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
          "head_dim": 64, "intermediate_size": 1024, "moe_intermediate_size": 256, "num_experts": 32,
          "num_experts_per_tok": 4, "norm_topk_prob": True, "vocab_size": 4096, "max_position_embeddings": 2048,
          "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}
PROMPT_LEN = 16
BATCHES = (1, 32)


def build(workdir: Path, dtype: str) -> Path:
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    out = workdir / f"moe-bench-{dtype}"
    if (out / "config.json").is_file():
        return out
    print(f"setup: seeded Qwen3-MoE -> {out} (not measured) ...", flush=True)
    torch.manual_seed(20261203)
    model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**CONFIG, dtype=dtype)).to(getattr(torch, dtype))
    model.save_pretrained(str(out))
    return out


def prompts(batch: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(batch)
    return [torch.randint(3, CONFIG["vocab_size"], (PROMPT_LEN,), generator=g).tolist() for _ in range(batch)]


def runtime_seconds(llm, batch: int, tokens: int) -> float:
    from runtime import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    start = time.perf_counter()
    outs = llm.generate(prompts(batch), params)
    elapsed = time.perf_counter() - start
    assert all(len(o.token_ids) == tokens for o in outs)
    return elapsed


def hf_seconds(model, batch: int, tokens: int) -> float:
    import torch

    ids = torch.tensor(prompts(batch))
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                             do_sample=False, pad_token_id=0)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == PROMPT_LEN + tokens
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("bench-out"))
    ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both systems (default: torch's)")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = build(args.workdir, args.dtype)

    import torch
    from transformers import AutoModelForCausalLM

    from runtime import LLM

    if args.threads:
        torch.set_num_threads(args.threads)
    llm = LLM(path, device="cpu", dtype=args.dtype, max_num_seqs=max(BATCHES), kv_cache_memory="256MiB",
              enable_prefix_caching=False)  # transformers caches no prefix either
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, args.dtype)).eval()
    systems = {"runtime": lambda b, n: runtime_seconds(llm, b, n), "transformers": lambda b, n: hf_seconds(hf, b, n)}
    for run in systems.values():  # warm-up (one-time allocations, kernels' first calls per shape), not measured
        for batch in BATCHES:
            run(batch, 8)
    runs: dict[str, dict[int, list[float]]] = {s: {b: [] for b in BATCHES} for s in systems}
    for _ in range(args.reps):
        for batch in BATCHES:
            for name, run in systems.items():
                decode = run(batch, args.new_tokens + 1) - run(batch, 1)
                runs[name][batch].append(batch * args.new_tokens / decode)  # decode tokens per second
    rows = []
    print(f"MoE decode, {args.dtype}, {args.new_tokens} decode steps after a {PROMPT_LEN}-token prompt, "
          f"medians of {args.reps} (tokens/s, higher is better)")
    print(f"{'batch':>5}  {'runtime':>10}  {'transformers':>12}  {'ratio':>6}")
    for batch in BATCHES:
        ours, theirs = (statistics.median(runs[s][batch]) for s in systems)
        rows.append({"batch": batch, "runtime_tok_s": ours, "transformers_tok_s": theirs, "ratio": ours / theirs})
        print(f"{batch:>5}  {ours:>10.1f}  {theirs:>12.1f}  {ours / theirs:>5.2f}x")
    report = {"config": CONFIG, "dtype": args.dtype, "new_tokens": args.new_tokens, "prompt_len": PROMPT_LEN,
              "reps": args.reps, "threads": torch.get_num_threads(), "results": rows, "runs": runs}
    (args.workdir / "bench_moe_decode.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
