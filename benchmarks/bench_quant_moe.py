#!/usr/bin/env python
"""Does `convert --quantize w8a8-dynamic` stream like a plain `convert`? Time and peak RSS on an MoE checkpoint.

    python benchmarks/bench_quant_moe.py [--workdir DIR] [--size-gb 1.0] [--shards 4] [--reps N] [--quick]

Source: a generated Qwen3-MoE checkpoint (synthetic_moe.py: Qwen3-30B-A3B's layer shapes, 32
per-expert Hub-named experts a layer) of at least --size-gb, in --shards shards; generated once in a
child process and reused. Systems, each in its own fresh child (process_measure.py, as
bench_convert measures): `ascendkit convert SRC OUT` (bf16 -> bf16) and `ascendkit convert SRC OUT
--quantize w8a8-dynamic` (W8A8_DYNAMIC needs no calibration, so it must stream one tensor at a
time just the same), both `--engine none` (the generated source has no tokenizer, which preflight
would refuse to publish; its check reads headers only). Runs are interleaved, the page cache warmed before each and the output
removed and synced after; --reps pairs (default 3, --quick 1), the ratios the medians of each
pair's. Peak RSS counts the source pages mapped in (safetensors reads through mmap), which vary
from run to run; its anonymous part is shown beside it.

Targets: quantized / plain wall time <= 1.5, and peak RSS at most 200 MB above plain's.
Results: a table on stdout and `<workdir>/bench_quant_moe.json`; exit 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from process_measure import GB, MB, drop, measure, warm
from synthetic_llama import generate
from synthetic_moe import layers_for, model_tensors, qwen3_moe_config

TIME_RATIO, RSS_EXTRA = 1.5, 200 * MB


def generated_checkpoint(workdir: Path, layers: int, shards: int) -> Path:
    out = workdir / f"gen-qwen3moe-L{layers}-s{shards}"
    if not (out / ".complete").is_file():
        subprocess.run([sys.executable, __file__, "--generate", str(out), str(layers), str(shards)], check=True)
    return out


def convert_cmd() -> list[str]:
    return [sys.executable, "-m", "ascendkit", "convert"]


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--generate":  # internal: the generator child
        layers = int(sys.argv[3])
        generate(Path(sys.argv[2]), layers, int(sys.argv[4]), model_tensors(layers), qwen3_moe_config(layers))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="./bench-out", help="source, outputs and results (default ./bench-out)")
    ap.add_argument("--size-gb", type=float, default=1.0, help="least size of the generated checkpoint (GB = 1e9 B)")
    ap.add_argument("--shards", type=int, default=4, help="shards of the generated checkpoint")
    ap.add_argument("--reps", type=int, default=None, help="runs per system (default 3; --quick: 1)")
    ap.add_argument("--quick", action="store_true", help="one run of each")
    args = ap.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    src = generated_checkpoint(workdir, layers_for(int(args.size_gb * GB)), args.shards)
    src_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    systems = {"convert": [], "convert --quantize w8a8-dynamic": ["--quantize", "w8a8-dynamic"]}
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    runs: dict[str, list] = {name: [] for name in systems}
    for rep in range(reps):
        for name, extra in systems.items():
            out = workdir / "out-moe"
            drop(out)
            warm(sorted(src.glob("*")) if src.is_dir() else [src])
            # --engine none: the generated source has no tokenizer, which preflight would refuse to publish
            run = measure([*convert_cmd(), str(src), str(out), "--engine", "none", "--no-progress", "--json", *extra],
                          workdir / f"log-{name.replace(' ', '_')}-{rep}.txt", env)
            if run.returncode != 0:
                raise SystemExit(f"{name} failed (exit {run.returncode}); see {workdir}/log-*-{rep}.txt")
            run.out_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
            runs[name].append(run)
            print(f"rep {rep + 1}/{reps} {name}: {run.wall_s:.1f} s, peak RSS {run.peak_rss / MB:.0f} MB "
                  f"(anonymous {run.peak_anon / MB:.0f} MB; ru_maxrss {run.ru_maxrss / MB:.0f} MB), "
                  f"output {run.out_bytes / GB:.2f} GB", flush=True)
            drop(out)
    summary = {name: {"wall_s": statistics.median(r.wall_s for r in rs),
                      "peak_rss_mb": statistics.median(r.peak_rss for r in rs) / MB,
                      "peak_anon_mb": statistics.median(r.peak_anon for r in rs) / MB,
                      "ru_maxrss_mb": statistics.median(r.ru_maxrss for r in rs) / MB,
                      "out_gb": rs[0].out_bytes / GB} for name, rs in runs.items()}
    plain, quant = summary["convert"], summary["convert --quantize w8a8-dynamic"]
    # each rep's quantized run against the plain run just before it, then the median: a shared
    # machine's load drifts between reps, less so between neighbours
    pairs = list(zip(runs["convert"], runs["convert --quantize w8a8-dynamic"]))
    ratios = {"time": statistics.median(q.wall_s / p.wall_s for p, q in pairs),
              "rss_extra_mb": statistics.median(q.peak_rss - p.peak_rss for p, q in pairs) / MB,
              "anon_extra_mb": statistics.median(q.peak_anon - p.peak_anon for p, q in pairs) / MB,
              "time_of_medians": quant["wall_s"] / plain["wall_s"]}
    ok = ratios["time"] <= TIME_RATIO and ratios["rss_extra_mb"] * MB <= RSS_EXTRA
    print(f"\nsource: {src.name}, {src_bytes / GB:.2f} GB bf16; medians of {reps}")
    print(f"{'system':34} {'wall s':>8} {'peak RSS MB':>12} {'anonymous MB':>13} {'output GB':>10}")
    for name, s in summary.items():
        print(f"{name:34} {s['wall_s']:8.1f} {s['peak_rss_mb']:12.0f} {s['peak_anon_mb']:13.0f} {s['out_gb']:10.2f}")
    print(f"quantized / plain (median of per-rep pairs): time x{ratios['time']:.2f} (target <= {TIME_RATIO}), "
          f"peak RSS {ratios['rss_extra_mb']:+.0f} MB (target <= +{RSS_EXTRA / MB:.0f}; anonymous "
          f"{ratios['anon_extra_mb']:+.0f} MB) -> {'PASS' if ok else 'MISS'}")
    (workdir / "bench_quant_moe.json").write_text(json.dumps(
        {"source": {"path": str(src), "bytes": src_bytes}, "reps": reps, "summary": summary, "ratios": ratios,
         "targets": {"time": TIME_RATIO, "rss_extra_mb": RSS_EXTRA / MB}, "ok": ok}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
