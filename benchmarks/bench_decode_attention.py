#!/usr/bin/env python
"""Decode attention over a paged KV cache, as the runtime lays a step out: the options side by side,
in one run, on one layer's shapes.

    python benchmarks/bench_decode_attention.py [--batch 64] [--min-context 40] [--max-context 384]
                                                [--heads 9 --kv-heads 3 --head-dim 64] [--dtype bfloat16]
                                                [--bounds 4096,8192,16384] [--repeat 30]

A decode step of `--batch` sequences (contexts drawn between the two bounds, their blocks scattered
over the pool) goes through `prepare_step` and `paged_attention` — the runtime's own code — once with
every sequence in one attention group (each sequence's blocks gathered into one dense tensor padded
to the longest context, then SDPA: what the runtime did before), and once per bound on the slots a
group may gather (`max_gather_slots`: sequences sorted by context length and gathered in runs padded
to their own longest), and through the CPU kernel that reads the cache in place (`cpu_attention`, the
runtime's default on a CPU). Every option's output is checked against the first before it is timed.
Reported: the median time of one layer's decode attention, the ratio to the single group, and the
largest per-layer temporary copy of K and V (what the KV budget must leave room for). The caches are
refilled with other data before each timed call (`--warm`: not), as a real step finds them; the same in
`<workdir>/bench_decode_attention.json`.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from runtime.engine.model_runner import MAX_GATHER_SLOTS, ONE_GROUP, prepare_step  # noqa: E402
from runtime.engine.scheduler import ScheduledBatch  # noqa: E402
from runtime.engine.sequence import Sequence  # noqa: E402
from runtime.layers import cpu_attention  # noqa: E402
from runtime.layers.attention import causal_mask, paged_attention  # noqa: E402
from runtime.sampling_params import SamplingParams  # noqa: E402



def _decode_step(contexts: list[int], tables: list[list[int]]) -> ScheduledBatch:
    seqs = []
    for context, table in zip(contexts, tables):
        seq = Sequence([0] * context, SamplingParams(max_tokens=1))
        seq.num_computed_tokens = context - 1
        seq.block_table = table
        seqs.append(seq)
    return ScheduledBatch(seqs, [1] * len(seqs))


def _time(fn, repeat: int, evict: torch.Tensor | None) -> float:
    """Median ms of `fn`; with `evict`, the caches are refilled with other data before each call (a
    layer's K/V is cold in a real step: the weights' pass has gone through the cache since)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        if evict is not None:
            evict.add_(1)
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--min-context", type=int, default=40)
    ap.add_argument("--max-context", type=int, default=384)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--bounds", default="2048,4096,8192,16384")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--warm", action="store_true", help="time with K/V left in the cache between calls (flatters)")
    ap.add_argument("--workdir", type=Path, default=Path("bench-out"), help="where bench_decode_attention.json goes")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    rng = random.Random(0)
    contexts = [rng.randint(args.min_context, args.max_context) for _ in range(args.batch)]
    bs = args.block_size
    needed = [-(-c // bs) for c in contexts]
    slots = list(range(sum(needed) + 8))
    rng.shuffle(slots)  # blocks scattered over the pool, as after a while of serving
    tables, at = [], 0
    for n in needed:
        tables.append(slots[at:at + n])
        at += n
    pool = len(slots)
    k_cache = torch.randn(pool, bs, args.kv_heads, args.head_dim, dtype=dtype)
    v_cache = torch.randn(pool, bs, args.kv_heads, args.head_dim, dtype=dtype)
    query = torch.randn(args.batch, args.heads, args.head_dim, dtype=dtype)
    key = torch.randn(args.batch, args.kv_heads, args.head_dim, dtype=dtype)
    value = torch.randn(args.batch, args.kv_heads, args.head_dim, dtype=dtype)
    step = _decode_step(contexts, tables)
    scale = args.head_dim ** -0.5
    token_bytes = 2 * args.kv_heads * args.head_dim * dtype.itemsize
    print(f"{args.batch} sequences, contexts {min(contexts)}-{max(contexts)} (mean {statistics.fmean(contexts):.0f}), "
          f"{args.heads} heads / {args.kv_heads} KV heads x {args.head_dim}, {args.dtype}, "
          f"{torch.get_num_threads()} threads; KV held: {sum(contexts) * token_bytes / 1e6:.2f} MB per layer")
    reference = base = None
    options = []
    evict = None if args.warm else torch.zeros(32 * 2**20 // 4)  # 128 MiB, past any L3 here
    runs = [("sdpa", bound) for bound in (ONE_GROUP, *(int(b) for b in args.bounds.split(",")))]
    for choice, bound in runs + [("kernel", ONE_GROUP)]:
        cpu_attention.use(choice)
        if choice == "kernel" and cpu_attention.kernel() is None:
            print("  the CPU kernel could not be built here: no row for it")
            continue
        _, meta, rows, _ = prepare_step(step, bs, torch.device("cpu"), max_gather_slots=bound,
                                        decode_gather_slots=ONE_GROUP if choice == "kernel" else None)
        masks = [causal_mask(g, None, dtype, args.heads // args.kv_heads) for g in meta.groups]
        order = torch.empty(len(rows), dtype=torch.long)
        order[torch.tensor(rows)] = torch.arange(len(rows))  # token row -> the sequence it belongs to
        q, k, v = query[order], key[order], value[order]

        def run(meta=meta, masks=masks, q=q, k=k, v=v) -> torch.Tensor:
            return paged_attention(q, k, v, k_cache, v_cache, meta, masks, scale)

        out = run()[torch.tensor(rows)]  # back in sequence order
        if reference is None:
            reference = out
        torch.testing.assert_close(out, reference, rtol=2e-2, atol=2e-2)
        ms = _time(run, args.repeat, evict)
        base = base or ms
        temp = 0 if choice == "kernel" else max(
            len(g.output_rows) * g.block_tables.shape[1] * bs for g in meta.groups) * token_bytes
        name = ("CPU kernel, in place" if choice == "kernel" else
                "one group (padded)" if bound == ONE_GROUP else f"runs of <= {bound} slots")
        options.append({"attention": choice, "bound": bound, "groups": len(meta.groups), "ms": ms,
                        "largest_copy_bytes": temp})
        print(f"  {name:24s} {len(meta.groups):3d} groups {ms:8.3f} ms  {base / ms:5.2f}x  "
              f"largest K/V copy {temp / 1e6:.2f} MB")
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "bench_decode_attention.json").write_text(json.dumps(
        {"batch": args.batch, "contexts": contexts, "dtype": args.dtype, "threads": torch.get_num_threads(),
         "cold_cache": not args.warm,
         "repeat": args.repeat, "default": MAX_GATHER_SLOTS, "options": options}, indent=1))


if __name__ == "__main__":
    main()
